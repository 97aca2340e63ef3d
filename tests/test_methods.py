"""The method registry's contract, for every registered method: each phase updates only what its
optimizers own, and a killed run resumes exactly (trained, exported and served: test_methods_trained.py).
Plus the new methods' pieces: pixel masks at ingestion, the PSP branch, the point-wise and center losses."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dsrhn.config import METHODS as PRESET_METHODS
from dsrhn.config import get_preset, parse_overrides
from dsrhn.records import DatasetInfo, read_split
from dsrhn.registry import METHODS, SPECS, get_method, method_help
from trainer.train import build_trainer, train, training_dataset

ALL = list(METHODS)


def _tiny(mode: str, teacher: str = "", **kw):
    options = {
        "pointwise-seg": {"options.seg_epochs": 1},
        "fsr-gan": {"options.hash_epochs": 1},
        "student": {"options.teacher_weights": teacher},
    }.get(mode, {})
    return get_preset("cpu", method=mode, bits=12, batch_size=8, sr_blocks=1, sr_filters=8, **{**options, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A teacher HashNet's weights for the student method (untrained: the contract tests only need its shapes)."""
    from trainer.models import HashNet

    path = str(tmp_path_factory.mktemp("teacher") / "hashnet.weights.h5")
    HashNet(_tiny("dsrhn")).save_weights(path)
    return path


def test_the_registry_is_the_only_list_of_methods():
    assert PRESET_METHODS == tuple(METHODS)
    ap_help = subprocess.run([sys.executable, "-m", "cli", "train", "--help"], capture_output=True, text=True)
    for name in METHODS:
        assert get_method(name).name == name
        assert name in method_help() and name in ap_help.stdout
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="method must be one of"):
        get_preset("cpu", method="nope")
    assert get_preset("cpu", mode="center").method == "center"  # the field's old name still reads
    from cli.main import build_parser

    assert build_parser().parse_args(["train", "--examples", "e", "-o", "o", "--mode", "center"]).method == "center"


def test_every_method_class_matches_its_registry_record(mosaic_examples, teacher):
    """Each class's facts are its record's, and what the record promises the class does: an SR stage (srnet_weights)
    is taken only by sr_stage methods, options.query_fuse only by sr_views methods, query_flip only where it applies."""
    info = DatasetInfo.read(mosaic_examples)
    for s in SPECS:
        cls = get_method(s.name)
        assert cls.spec is s and (cls.query_path, cls.query_input) == (s.query_path, s.query_input)
        srnet = "/nowhere/srnet.weights.h5"
        if s.sr_stage:
            assert _tiny(s.name, teacher, srnet_weights=srnet).srnet_weights == srnet
        else:
            with pytest.raises(ValueError, match="srnet_weights"):
                _tiny(s.name, teacher, srnet_weights=srnet)
        if s.query_flip:
            assert _tiny(s.name, teacher, query_flip=True).query_flip
        else:
            with pytest.raises(ValueError, match="query_flip does not apply"):
                _tiny(s.name, teacher, query_flip=True)
        if s.sr_views:
            assert cls(_tiny(s.name, teacher, **{"options.query_fuse": "true"}), info).options.query_fuse
        elif "query_fuse" in {f.name for f in dataclasses.fields(cls.Options)}:
            with pytest.raises(ValueError, match="options.query_fuse applies to the methods"):
                cls(_tiny(s.name, teacher, **{"options.query_fuse": "true"}), info)


def test_a_segmentation_method_on_data_without_masks_is_refused_with_the_fix():
    from trainer.train import build_method

    info = DatasetInfo(source="list", label_names=["a", "b"], hr_size=56, lr_size=14, scale=4)
    with pytest.raises(ValueError, match="has none: ingest fashion-mnist-mosaic or coco"):
        build_method(_tiny("pointwise-seg"), info)
    assert build_method(_tiny("pointwise"), info).multi_label  # a list source is multi-label (NUS-WIDE)


def test_method_options_are_typed_and_checked():
    preset = get_preset("cpu", method="center", **parse_overrides(["options.center_weight=0.5"]))
    assert get_method("center").parse_options(preset.options).center_weight == 0.5
    with pytest.raises(ValueError, match="has no options \\['center_weight'\\]"):
        get_method("pointwise").parse_options({"center_weight": "1"})
    with pytest.raises(ValueError, match="options.center_weight of method 'center' must be float"):
        get_method("center").parse_options({"center_weight": "heavy"})
    with pytest.raises(ValueError, match="finite number"):
        get_method("center").parse_options({"center_weight": "nan"})
    with pytest.raises(ValueError, match="psp_bins"):
        get_method("pointwise-seg").parse_options({"psp_bins": "0,x"})


@pytest.mark.parametrize("mode", ["hashnet-lr", "two-stage", "dsrhn"])
def test_an_sr_hashing_row_can_start_from_a_trained_hashnet(mode, mosaic_examples, teacher):
    """options.hashnet_weights (e.g. HashNet-HR's): HashNet starts as exactly that network."""
    from trainer.models import HashNet

    info = DatasetInfo.read(mosaic_examples)
    given = HashNet(_tiny("dsrhn"))
    given.load_weights(teacher)
    nets = build_trainer(_tiny(mode, **{"options.hashnet_weights": teacher}), info).nets
    plain = build_trainer(_tiny(mode), info).nets
    assert all(np.array_equal(a, b) for a, b in zip(nets["hashnet"].get_weights(), given.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(plain["hashnet"].get_weights(), given.get_weights()))
    with pytest.raises(FileNotFoundError, match="options.hashnet_weights /nowhere.weights.h5 does not exist"):
        build_trainer(_tiny(mode, **{"options.hashnet_weights": "/nowhere.weights.h5"}), info)


def test_the_sr_stage_can_train_against_hashnet_features(mosaic_examples):
    """options.sr_stage_lam > 0: the SR stage (sr-mse) is Eq. 5 against HashNet's starting features, SRNet alone
    trains; 0 (the default) keeps it L_mse alone."""
    info = DatasetInfo.read(mosaic_examples)
    for lam in (0.0, 100.0):
        preset = _tiny("two-stage", epochs=1, steps_per_epoch=1, **{"options.sr_stage_lam": lam})
        trainer = build_trainer(preset, info)
        trainer.build_optimizers()
        batch = next(iter(training_dataset(mosaic_examples, preset, 0, 1, 1, info, trainer.method.needs_masks)))
        hashnet_before = [np.array(v) for v in trainer.nets["hashnet"].weights]
        trainer.phase = "sr-mse"
        out = {k: float(v) for k, v in trainer.train_step(batch).items()}
        assert all(np.array_equal(a, np.array(b)) for a, b in zip(hashnet_before, trainer.nets["hashnet"].weights))
        if lam:
            assert out["l_per"] > 0 and out["l_sr"] == pytest.approx(out["l_per"] + lam * out["l_mse"], rel=1e-5)
        else:
            assert set(out) == {"l_mse"}
    with pytest.raises(ValueError, match="options.sr_stage_lam must be a finite number >= 0"):
        build_trainer(_tiny("two-stage", **{"options.sr_stage_lam": -1}), info)


def _two_stage_one_step(examples: str, hash_views: str):
    """(preset, trainer with its optimizers, one training batch) of a tiny two-stage run with query_fuse and
    `hash_views`, for one step B by hand."""
    info = DatasetInfo.read(examples)
    preset = _tiny(
        "two-stage",
        epochs=1,
        steps_per_epoch=1,
        hash_lr=0.1,
        **{"options.hash_views": hash_views, "options.query_fuse": "true"},
    )
    trainer = build_trainer(preset, info)
    trainer.build_optimizers()
    batch = next(iter(training_dataset(examples, preset, 0, 1, 1, info, trainer.method.needs_masks)))
    return preset, trainer, batch


def test_hashnet_can_train_on_sr_and_bicubic_and_the_query_paths_vote(mosaic_examples):
    """options.hash_views=query+bicubic: step B's joint batch is [HR; SR; bicubic] (L_dis the mean of both queries'
    Eq. 12); options.query_fuse: the query's logits are the sum of the SR and the bicubic query's; preset.query_flip:
    the sum of the query's and its mirror image's (so a query and its mirror image get the same code)."""
    from trainer import losses
    from trainer.methods.base import joint_hash_terms

    info = DatasetInfo.read(mosaic_examples)
    preset, trainer, batch = _two_stage_one_step(mosaic_examples, "query+bicubic")
    method, nets = trainer.method, trainer.nets
    trainer.phase = "hash-sr"
    before = [np.array(v) for v in nets["hashnet"].weights]
    out = {k: float(v) for k, v in trainer.train_step(batch).items()}
    assert np.isfinite(out["l_hash"]) and out["l_dis"] >= 0
    assert not all(np.array_equal(a, np.array(b)) for a, b in zip(before, nets["hashnet"].weights))

    v = tf.random.stateless_normal([6, 12], seed=[1, 2])  # three views of two images
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    l_hs, l_dis = joint_hash_terms(preset, v, labels, views=3)
    hr, sr, bic = tf.split(v, 3)
    expect = (losses.margin_loss(hr, sr, preset.margin) + losses.margin_loss(hr, bic, preset.margin)) / 2
    assert float(l_dis) == pytest.approx(float(expect), rel=1e-6) and np.isfinite(float(l_hs))

    x = tf.random.stateless_uniform([3, preset.hr_size, preset.hr_size, 3], seed=[3, 4])
    sr_x = method.query_image(nets, x)
    fused = method.query_code_outputs(nets, x)["code"]
    assert np.allclose(fused, method.code_logits(nets, sr_x) + method.code_logits(nets, x), atol=1e-4)
    flip = get_method("two-stage")(preset.replace(query_flip=True), info)
    mirrored = tf.image.flip_left_right(x)
    v_x, v_m = (flip.query_code_outputs(nets, t)["code"].numpy() for t in (x, mirrored))
    assert np.allclose(v_x, v_m, atol=1e-4) and np.allclose(
        v_x, fused + method.query_code_outputs(nets, mirrored)["code"], atol=1e-4
    )
    for mode, key, value in (("hashnet-lr", "options.query_fuse", "true"), ("dsrhn", "options.hash_views", "all")):
        with pytest.raises(ValueError, match=f"{key}"):
            build_trainer(_tiny(mode, **{key: value}), info)
    with pytest.raises(ValueError, match="query_flip does not apply to method multi-level"):
        _tiny("multi-level", query_flip=True)


def test_two_stage_can_train_hashnet_on_bicubic_and_super_resolve_only_its_queries(mosaic_examples):
    """options.hash_views=bicubic: two-stage's step B is HashNet-LR's ([HR; bicubic], SRNet never run, never
    updated), while its queries still go through SRNet (fused with the bicubic query under query_fuse); dsrhn
    refuses it (Eq. 5 needs HashNet on SRNet's output)."""
    info = DatasetInfo.read(mosaic_examples)
    preset, trainer, batch = _two_stage_one_step(mosaic_examples, "bicubic")
    assert [p.name for p in trainer.method.phases()] == ["sr-mse", "hash-bicubic"]
    method, nets = trainer.method, trainer.nets
    trainer.phase = "hash-bicubic"
    sr_before = [np.array(v) for v in nets["srnet"].weights]
    calls = []
    real_call = nets["srnet"].call
    nets["srnet"].call = lambda *a, **k: calls.append(1) or real_call(*a, **k)
    out = {k: float(v) for k, v in trainer.train_step(batch).items()}
    assert np.isfinite(out["l_hash"]) and not calls  # step B never ran SRNet
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(sr_before, nets["srnet"].weights))
    x = tf.random.stateless_uniform([2, preset.hr_size, preset.hr_size, 3], seed=[5, 6])
    fused = method.query_code_outputs(nets, x)["code"]
    expect = method.code_logits(nets, method.query_image(nets, x)) + method.code_logits(nets, x)
    assert calls and np.allclose(fused, expect, atol=1e-4)  # the query did
    with pytest.raises(ValueError, match="options.hash_views=bicubic trains HashNet without SRNet's output"):
        build_trainer(_tiny("dsrhn", **{"options.hash_views": "bicubic"}), info)


@pytest.mark.parametrize("mode", ALL)
def test_each_phase_updates_only_what_its_optimizers_own(mode, mosaic_examples, teacher):
    info = DatasetInfo.read(mosaic_examples)
    preset = _tiny(
        mode, teacher, epochs=1, steps_per_epoch=1, hash_lr=0.1, sr_warmup_epochs=1 if mode == "dsrhn" else 0
    )
    trainer = build_trainer(preset, info)
    trainer.build_optimizers()
    method = trainer.method
    batch = next(iter(training_dataset(mosaic_examples, preset, 0, 1, 1, info, method.needs_masks)))
    every = {id(v): v for net in trainer.nets.values() for v in net.trainable_variables}
    for phase in method.phases():
        owned = {id(v) for opt in phase.updates for v in trainer.variables_for(opt)}
        before = {k: np.array(v) for k, v in every.items()}
        trainer.phase = phase.name
        trainer.train_step(batch)
        changed = {k for k, v in every.items() if not np.array_equal(before[k], np.array(v))}
        assert changed, f"{mode}/{phase.name}: nothing trained"
        assert changed <= owned, f"{mode}/{phase.name}: updated variables its optimizers do not own: " + str(
            [every[k].path for k in changed - owned][:5]
        )


@pytest.mark.parametrize("mode", ALL)
def test_every_method_resumes_exactly(mode, mosaic_examples, tmp_path, teacher):
    # two epochs (pointwise-seg: its seg phase, then its hash phase), killed after the first; fsr-gan: one
    # HashNet epoch, then two of G and D, killed between those two. Dropout draws random masks and cosine
    # decay reads the optimizers' step counters: both must resume
    preset = _tiny(
        mode,
        teacher,
        epochs=1 if mode == "pointwise-seg" else 2,
        steps_per_epoch=2,
        dropout=0.5,
        lr_decay="cosine",
        sr_warmup_epochs=0,
    )
    stop = 2 if mode == "fsr-gan" else 1
    straight = train(mosaic_examples, preset, str(tmp_path / "a"), verbose=0, tensorboard=False).trainer
    train(mosaic_examples, preset, str(tmp_path / "b"), verbose=0, tensorboard=False, stop_after_epochs=stop)
    resumed = train(mosaic_examples, preset, str(tmp_path / "b"), verbose=0, tensorboard=False)
    assert resumed.resumed_from == stop
    assert sorted(straight.nets) == sorted(resumed.trainer.nets)
    for name in straight.nets:
        for x, y in zip(straight.nets[name].variables, resumed.trainer.nets[name].variables):
            np.testing.assert_allclose(
                np.array(x), np.array(y), rtol=1e-5, atol=1e-6, err_msg=f"{mode} {name} {x.path}"
            )
    for name in straight.opts:
        for x, y in zip(straight.opts[name].variables, resumed.trainer.opts[name].variables):
            np.testing.assert_allclose(
                np.array(x), np.array(y), rtol=1e-5, atol=1e-6, err_msg=f"{mode} optimizer {name}"
            )
        if straight.method.optimizer_updates(2).get(name):  # cosine decay read the restored step counters
            for opt in (straight.opts[name], resumed.trainer.opts[name]):
                assert float(opt.learning_rate) == pytest.approx(0.0, abs=1e-9), (mode, name)


def test_a_checkpoint_of_another_method_is_refused(mosaic_examples, tmp_path):
    train(
        mosaic_examples, _tiny("hashnet-lr", epochs=1, steps_per_epoch=1), str(tmp_path), verbose=0, tensorboard=False
    )
    with pytest.raises(ValueError, match="holds method 'hashnet-lr'"):
        train(
            mosaic_examples, _tiny("center", epochs=2, steps_per_epoch=1), str(tmp_path), verbose=0, tensorboard=False
        )


# ---------------------------------------------------------------- masks and the new methods' parts


def test_mosaic_masks_mark_each_tile_class_where_the_item_is_drawn(mosaic_examples):
    from dsrhn.sources import FASHION_MNIST_DRAWN

    info = DatasetInfo.read(mosaic_examples)
    assert info.masks and info.multi_label
    for rec in read_split(mosaic_examples, "train").take(8):
        mask, hr = rec["mask"].numpy(), rec["hr"].numpy()[..., 0] * 255.0
        drawn = np.rint(hr) > FASHION_MNIST_DRAWN
        assert ((mask > 0) == drawn).all()
        present = {int(c) - 1 for c in np.unique(mask) if c > 0}
        assert present == set(np.flatnonzero(rec["labels"].numpy()).tolist())
        for tile in (mask[:28, :28], mask[:28, 28:], mask[28:, :28], mask[28:, 28:]):
            assert len(set(np.unique(tile).tolist()) - {0}) == 1  # one item, one class per tile


def test_coco_polygons_and_rle_are_rasterised_through_the_hr_geometry(tmp_path):
    from PIL import Image

    from components.ingest import run_ingest
    from components.masks import rle_counts
    from dsrhn.config import LRConfig

    root = tmp_path / "img"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (80, 40), (120, 90, 60)).save(root / name)
    # a: a polygon over x 20..39 (the left half of the centre square x 20..59) for category 7, and an
    # uncompressed RLE (iscrowd) over rows 0..9, x 50..79 for category 3;
    # b: a compressed RLE string (pycocotools' encoding of 10 zeros, 5 ones, then zeros)
    crowd = np.zeros((40, 80), bool)
    crowd[:10, 50:] = True
    flat = crowd.T.reshape(-1)
    runs, value, n = [], False, 0
    for bit in flat:
        if bit != value:
            runs.append(n)
            value, n = bit, 0
        n += 1
    runs.append(n)
    rle = {"size": [40, 80], "counts": runs}
    assert rle_counts(":5") == [10, 5]
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 80, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 80, "height": 40},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 7, "segmentation": [[20, 0, 39, 0, 39, 39, 20, 39]]},
            {"image_id": 1, "category_id": 3, "segmentation": rle, "iscrowd": 1},
            {"image_id": 2, "category_id": 3, "segmentation": {"size": [40, 80], "counts": ":5"}},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = str(tmp_path / "ex")
    run_ingest(
        {"kind": "coco", "pairs": [[str(tmp_path / "coco.json"), str(root)]], "n_query": 1, "n_train": 1},
        out,
        40,
        LRConfig(scale=2),
        beam_args=["--runner=DirectRunner"],
    )
    info = DatasetInfo.read(out)
    assert info.masks and info.label_names == ["car", "train"]
    masks = {
        r["id"].numpy().decode().rsplit("/", 1)[-1]: r["mask"].numpy()
        for sp in ("query", "gallery")
        for r in read_split(out, sp, info)
    }
    a, b = masks["a.png"], masks["b.png"]  # the centre 40x40 square: x 20..60 of the 80-px image
    a_expected = np.zeros((40, 40), np.uint8)
    a_expected[:, :20] = 2  # the polygon (train = column 1 -> 2)
    a_expected[:10, 30:] = 1  # the crowd RLE (car = column 0 -> 1), cut by the centre crop
    assert (a == a_expected).all()
    b_full = np.zeros((40, 80), np.uint8)
    b_full[10:15, 0] = 1  # column-major runs: x = 0, y = 10..14, outside the centre crop
    assert (b == b_full[:, 20:60]).all()


def test_pyramid_pooling_bins_and_shapes():
    from trainer.models import AdaptiveAvgPool, PyramidPooling

    x = tf.constant(np.arange(2 * 7 * 7 * 4, dtype=np.float32).reshape(2, 7, 7, 4))
    pooled = AdaptiveAvgPool(3)(x).numpy()
    np.testing.assert_allclose(pooled[:, 0, 0], x.numpy()[:, 0:3, 0:3].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pooled[:, 1, 2], x.numpy()[:, 2:5, 4:7].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(AdaptiveAvgPool(1)(x).numpy()[:, 0, 0], x.numpy().mean(axis=(1, 2)), rtol=1e-6)
    psp = PyramidPooling((7, 7, 64), (1, 2, 3, 4))
    assert psp.output_shape == (None, 7, 7, 64 + 4 * 16)
