"""Backbones for real photos: AlexNet's canonical geometry, strict weight loading, ImageNet MobileNetV2
converted from the offline wheel without torch (checked by classifying real photos), and the paper
preset end to end (train 2 steps at 224 px, export, index, one search over HTTP)."""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import keras
import numpy as np
import pytest
from PIL import Image

from dsrhn.config import get_preset
from trainer import models
from trainer.pretrained import convert_mobilenetv2, load_weights_strict


def _params(layer) -> int:
    return int(sum(np.prod(v.shape) for v in layer.weights))


def test_alexnet_has_the_canonical_geometry():
    preset = get_preset("paper")
    backbone = models.Backbone(preset)
    shapes = {name: tuple(backbone.get_layer(name).output.shape[1:]) for name in ("c1", "pool1", "c2", "pool2", "c5")}
    assert shapes == {
        "c1": (55, 55, 96),
        "pool1": (27, 27, 96),
        "c2": (27, 27, 256),
        "pool2": (13, 13, 256),
        "c5": (13, 13, 256),
    }
    head = models.HashHead(preset, backbone.output_shape[1:])
    assert tuple(head.get_layer("pool5").output.shape[1:]) == (6, 6, 256)
    assert tuple(head.get_layer("flatten").output.shape[1:]) == (9216,)
    convs = sum(_params(backbone.get_layer(f"c{i}")) for i in range(1, 6))
    fcs = _params(head.get_layer("fc6")) + _params(head.get_layer("fc7"))
    assert convs == 3_747_200 and fcs == 37_752_832 + 16_781_312  # c1-c5, fc6 (9,216 x 4,096), fc7
    assert convs + fcs + 4096 * 1000 + 1000 == 62_378_344  # with ImageNet's fc8: one-tower AlexNet


def _small_weights(preset, path, change=None, drop=()):
    donor = models.HashNet(preset)
    arrays = {}
    for layer in models_weighted(donor):
        for v in layer.weights:
            arrays[f"{layer.name}/{v.name}"] = np.array(v)
    for k in drop:
        del arrays[k]
    for k, shape in (change or {}).items():
        arrays[k] = np.zeros(shape, np.float32)
    np.savez(path, **arrays)
    return arrays


def models_weighted(model):
    from trainer.pretrained import _weighted_layers

    return _weighted_layers(model)


def test_weight_loading_is_strict_and_lists_every_mismatch(tmp_path):
    preset = get_preset("cpu", bits=12, seed=3)
    good = tmp_path / "good.npz"
    arrays = _small_weights(preset, good)
    model = models.HashNet(preset.replace(seed=4, pretrained_weights=str(good)))  # loads while building
    c1 = next(v for v in model.get_layer("backbone").get_layer("c1").weights)
    assert np.array_equal(np.array(c1), arrays["c1/kernel"])
    bad = tmp_path / "bad.npz"
    _small_weights(preset, bad, change={"c1/kernel": (3, 3, 3, 32)}, drop=("c2/kernel",))
    with pytest.raises(ValueError) as e:
        models.HashNet(preset.replace(pretrained_weights=str(bad)))
    msg = str(e.value)
    assert "2 problems" in msg
    assert "c1/kernel: expected (5, 5, 3, 32), found (3, 3, 3, 32)" in msg
    assert "c2/kernel: expected (3, 3, 32, 64), missing in the file" in msg
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        models.HashNet(preset.replace(pretrained_weights=str(tmp_path / "nope.npz")))


def test_imagenet_mobilenetv2_from_the_wheel_classifies_real_photos(tmp_path):
    from skimage import data

    path = convert_mobilenetv2(str(tmp_path / "mnv2.npz"))
    preset = get_preset("cpu", hashnet="mobilenetv2", hr_size=224)
    backbone = models.Backbone(preset)
    x = keras.layers.GlobalAveragePooling2D()(backbone.output)
    classifier = keras.Model(backbone.input, keras.layers.Dense(1000, name="classifier_1")(x))
    assert load_weights_strict(classifier, path) == 262 and classifier.count_params() == 3_538_984
    for name, imagenet_class, floor in (("chelsea", 285, 0.6), ("coffee", 967, 0.95)):  # Egyptian cat, espresso
        img = Image.fromarray(getattr(data, name)())
        scale = 256 / min(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
        left, top = (img.size[0] - 224) // 2, (img.size[1] - 224) // 2
        batch = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32)[None] / 255
        probs = keras.ops.convert_to_numpy(keras.ops.softmax(classifier(batch)))[0]
        assert probs.argmax() == imagenet_class and probs.max() > floor, (name, probs.argmax(), probs.max())


def test_paper_preset_trains_exports_indexes_and_serves(tmp_path):
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig
    from serving.indexer import gallery_from_examples, run_indexing
    from serving.server import BackgroundServer
    from serving.store import ModelStore
    from trainer.task import train_and_export

    ex = str(tmp_path / "ex")
    run_ingest(
        {"kind": "fashion-mnist", "n_train": 8, "query_per_class": 1, "n_gallery": 6},
        ex,
        224,
        LRConfig(scale=4),
        beam_args=["--runner=DirectRunner"],
    )
    preset = get_preset("paper", epochs=1, steps_per_epoch=2, batch_size=2, sr_warmup_epochs=0)
    export = str(tmp_path / "serving" / "dsrhn" / "1")
    train_and_export(ex, preset, str(tmp_path / "work"), export, verbose=0)
    s = run_indexing(export, gallery_from_examples(ex), beam_args=["--runner=DirectRunner"], batch_size=4)
    assert s.manifest["count"] == 6 and s.manifest["bits"] == preset.bits
    store = ModelStore(str(tmp_path / "serving"), "dsrhn", poll_seconds=3600)
    store.refresh()
    server = BackgroundServer(store)
    try:
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), (120, 30, 200)).save(buf, format="PNG")
        r = httpx.post(
            f"{server.url}/v1/models/dsrhn:search",
            json={"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}], "k": 3},
            timeout=120,
        )
        assert r.status_code == 200 and len(r.json()["results"][0]["ids"]) == 3
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
