"""The blind degradation sampler, the any-size query path and the config that drives them."""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dsrhn.config import Degradation, get_preset, parse_overrides, preset_from_dict, with_overrides
from dsrhn.degrade import degrade, example_seed, to_hr_space
from tests.conftest import BEAM, LiveServer

OFF = dict(
    blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, shuffle_prob=0.0, kernels=("area",), scale_min=4.0, scale_max=4.0
)


@pytest.fixture(scope="module")
def hr() -> tf.Tensor:
    from skimage import data

    img = tf.constant(data.astronaut()[::4, ::4] / 255.0, tf.float32)  # a real photo, 128 px
    return tf.image.resize(img, (56, 56), antialias=True)


def _lr(hr, seed=(0, 0), **fields) -> np.ndarray:
    return degrade(hr, tf.constant(seed), Degradation(**{**OFF, **fields})).numpy()


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_with_every_component_off_the_sampler_is_a_plain_resize(hr):
    plain = np.round(tf.image.resize(hr, (14, 14), "area").numpy() * 255) / 255
    np.testing.assert_allclose(_lr(hr), plain, atol=1e-6)
    for kernel in ("bilinear", "bicubic"):
        ref = np.round(np.clip(tf.image.resize(hr, (14, 14), kernel, antialias=True).numpy(), 0, 1) * 255) / 255
        np.testing.assert_allclose(_lr(hr, kernels=(kernel,)), ref, atol=1e-6)


def test_each_component_switches_on_alone(hr):
    off = _lr(hr)
    blurred = _lr(hr, blur_prob=1.0, blur_sigma_min=2.0, blur_sigma_max=2.0)
    grad = lambda x: np.abs(np.diff(x, axis=0)).mean()  # noqa: E731
    assert grad(blurred) < 0.8 * grad(off)  # blur removes detail
    noisy = _lr(hr, noise_prob=1.0, noise_sigma_min=8.0, noise_sigma_max=8.0)
    assert abs(np.std(noisy - off) * 255 - 8.0) < 1.5  # resize, then noise of sigma 8 (fixed order)
    gray = _lr(hr, noise_prob=1.0, noise_sigma_min=8.0, noise_sigma_max=8.0, gray_noise_prob=1.0)
    resid = gray - off
    unclipped = (off > 0.1).all(-1) & (off < 0.9).all(-1)
    np.testing.assert_allclose(resid[unclipped][:, 0], resid[unclipped][:, 1], atol=1.5 / 255)
    jpeg = _lr(hr, jpeg_prob=1.0, jpeg_quality_min=30, jpeg_quality_max=30)
    np.testing.assert_allclose(jpeg, tf.image.adjust_jpeg_quality(off, 30).numpy(), atol=1e-6)
    assert not np.array_equal(jpeg, off)
    # anisotropic blur: a direction-dependent loss of detail on a texture without direction (noise), which
    # isotropic blur of the same sigma range does not show
    tex = np.random.default_rng(0).random((56, 56, 3)).astype(np.float32)

    def skew(aniso_prob):
        out = []
        for i in range(12):
            x = degrade(
                tex,
                tf.constant([3, i]),
                Degradation(
                    scale_min=1.0,
                    scale_max=1.0,
                    blur_prob=1.0,
                    blur_sigma_min=0.5,
                    blur_sigma_max=3.0,
                    aniso_prob=aniso_prob,
                    noise_prob=0.0,
                    jpeg_prob=0.0,
                    shuffle_prob=0.0,
                ),
            ).numpy()
            gy, gx = np.abs(np.diff(x, axis=0)).mean(), np.abs(np.diff(x, axis=1)).mean()
            out.append(abs(np.log(gx / gy)))
        return np.mean(out)

    assert skew(1.0) > 0.15 > 3 * skew(0.0)


def test_ranges_are_respected_and_scales_are_not_only_integers(hr):
    cfg = Degradation()
    fn = tf.function(lambda s: degrade(hr, s, cfg))
    sides = set()
    for i in range(150):
        x = fn(tf.constant([5, i])).numpy()
        assert x.shape[0] == x.shape[1] and x.dtype == np.float32
        assert np.allclose(x * 255, np.round(x * 255), atol=1e-3) and x.min() >= 0 and x.max() <= 1
        sides.add(x.shape[0])
    lo, hi = cfg.query_sizes(56)
    assert (lo, hi) == (7, 56) and min(sides) >= lo and max(sides) <= hi
    assert min(sides) <= 9 and max(sides) >= 40  # both ends of x1..x8 are drawn
    assert sides - {56 // s for s in (1, 2, 4, 7, 8)}  # and sides that no integer scale gives (x3.1, x5.6, ...)
    narrow = Degradation(
        scale_min=2.0,
        scale_max=3.0,
        blur_prob=1.0,
        blur_sigma_min=0.5,
        blur_sigma_max=1.0,
        noise_prob=1.0,
        noise_sigma_min=2.0,
        noise_sigma_max=3.0,
    )
    for i in range(20):
        assert 19 <= degrade(hr, tf.constant([6, i]), narrow).shape[0] <= 28


def test_draws_are_seeded_and_reproducible(hr):
    cfg = Degradation()
    a = degrade(hr, example_seed(3, 1, 17), cfg).numpy()
    assert np.array_equal(a, degrade(hr, example_seed(3, 1, 17), cfg).numpy())
    others = [degrade(hr, example_seed(3, e, i), cfg).numpy() for e, i in ((2, 17), (1, 18))]
    assert all(o.shape != a.shape or not np.array_equal(o, a) for o in others)


def test_training_batches_hold_only_the_degraded_lr_and_repeat_exactly(mosaic_examples):
    from dsrhn.records import DatasetInfo, read_split
    from trainer.train import training_dataset

    preset = get_preset("cpu", batch_size=8, seed=2, **{"degradation.scale_min": 2.0})
    info = DatasetInfo.read(mosaic_examples)
    first = list(training_dataset(mosaic_examples, preset, 1, 2, 3, info).as_numpy_iterator())
    again = list(training_dataset(mosaic_examples, preset, 1, 2, 3, info).as_numpy_iterator())
    for x, y in zip(first, again):
        assert all(np.array_equal(x[k], y[k]) for k in ("hr", "lr_up", "labels"))
    other = next(training_dataset(mosaic_examples, preset, 2, 3, 1, info).as_numpy_iterator())
    assert not np.array_equal(other["lr_up"], first[0]["lr_up"])  # a fresh draw every epoch
    # no HR leakage: each lr_up is exactly to_hr_space of a degraded LR smaller than HR, drawn from
    # that example's seed (epoch 1, position i), which the shuffle of epoch 1 put there
    records = {r["hr"].tobytes(): r for r in read_split(mosaic_examples, "train", info).as_numpy_iterator()}
    for i in range(8):
        hr = first[0]["hr"][i]
        assert hr.tobytes() in records
        lr = degrade(hr, example_seed(2, 1, i), preset.degradation)
        assert lr.shape[0] <= 28
        np.testing.assert_allclose(first[0]["lr_up"][i], to_hr_space(lr, 56).numpy(), atol=1e-5)
        assert _psnr(first[0]["lr_up"][i], hr) < 45


def test_fixed_degradation_trains_on_the_stored_partners(mosaic_examples):
    from dsrhn.records import DatasetInfo, read_split
    from trainer.train import training_dataset

    preset = get_preset("cpu", batch_size=4, **{"degradation.kind": "fixed"})
    info = DatasetInfo.read(mosaic_examples)
    batch = next(training_dataset(mosaic_examples, preset, 0, 1, 1, info).as_numpy_iterator())
    stored = {r["hr"].tobytes(): r["lr"] for r in read_split(mosaic_examples, "train", info).as_numpy_iterator()}
    for hr, lr_up in zip(batch["hr"], batch["lr_up"]):
        np.testing.assert_allclose(lr_up, to_hr_space(stored[hr.tobytes()], 56).numpy(), atol=1e-6)


def test_degradation_config_is_validated_and_overridable():
    overrides = parse_overrides(
        ["degradation.scale_max=4", "degradation.kernels=area,bicubic", "degradation.kind=fixed"]
    )
    p = get_preset("cpu", **overrides)
    assert p.degradation.scale_max == 4.0 and p.degradation.kernels == ("area", "bicubic") and not p.blind
    assert get_preset("cpu").blind and get_preset("paper").blind
    assert preset_from_dict(json.loads(json.dumps(p.to_dict()))) == p
    old = {k: v for k, v in get_preset("cpu").to_dict().items() if k != "degradation"}
    assert preset_from_dict(old).degradation.kind == "fixed"  # written before blind training existed
    for bad in (
        dict(scale_min=0.5),
        dict(scale_min=4.0, scale_max=2.0),
        dict(blur_prob=1.5),
        dict(kernels=("nearest",)),
        dict(jpeg_quality_min=0),
        dict(kind="random"),
        dict(noise_sigma_max=float("nan")),
    ):
        with pytest.raises(ValueError, match="degradation"):
            Degradation(**bad)
    with pytest.raises(ValueError, match="unknown preset fields"):
        get_preset("cpu", **{"degradation.scale": 3.0})
    q = with_overrides(p, {"degradation.noise_prob": 0.2, "bits": 16})  # any preset, not only a named one
    assert (q.degradation.noise_prob, q.degradation.scale_max, q.bits, p.degradation.noise_prob) == (0.2, 4.0, 16, 0.5)
    with pytest.raises(ValueError, match="unknown preset fields"):
        with_overrides(p, {"views.nope": 1})
    with pytest.raises(ValueError, match="must be float"):
        parse_overrides(["degradation.blur_sigma_max=inf"])


def _png(side_w: int, side_h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side_h, side_w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _float(png: bytes) -> tf.Tensor:
    return tf.cast(tf.io.decode_png(png, channels=3), tf.float32) / 255.0


def test_queries_of_any_size_are_resized_once(trained_model, tiny_preset):
    from trainer.export import CodeFunctions
    from trainer.train import build_trainer

    q14, q28 = _png(14, 14, 1), _png(28, 28, 2)
    # the trained LR size and a 28 px query each take one bicubic resize straight to HR size
    once14 = tf.image.resize(_float(q14), (56, 56), "bicubic", antialias=True).numpy().clip(0, 1)
    np.testing.assert_allclose(to_hr_space(_float(q14), 56).numpy(), once14, atol=1e-6)
    direct28 = to_hr_space(_float(q28), 56)
    squeezed28 = to_hr_space(tf.image.resize(_float(q28), (14, 14), "bicubic", antialias=True), 56)
    assert _psnr(direct28, squeezed28) < 60  # squeezing to 14 px first (the old path) is another image
    hr56 = _float(_png(56, 56, 3))
    assert np.array_equal(to_hr_space(hr56, 56).numpy(), hr56.numpy())  # HR size: no resize at all
    # the query image of an SR model is SRNet of exactly that single resize
    t = build_trainer(tiny_preset)
    fns = CodeFunctions(t.method, t.nets)
    for png in (q14, q28):
        want = t.srnet(to_hr_space(_float(png), 56)[None]).numpy()[0]
        np.testing.assert_allclose(fns.query_image(tf.constant([png])).numpy()[0], want, atol=1e-5)
    # in the exported model: a non-square query is its centre square, a 7 px query (x8) works,
    # and queries of different sizes share one call without changing each other's codes
    wide = _png(31, 20, 4)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(io.BytesIO(wide)))[:, 5:25]).save(buf, "PNG")
    batch = [q14, q28, wide, buf.getvalue(), _png(7, 7, 5), _png(100, 80, 6)]
    encode = tf.saved_model.load(trained_model).signatures["serving_default"]
    codes = encode(images=tf.constant(batch))["codes"].numpy()
    assert codes.shape == (6, 2)
    assert np.array_equal(codes[2], codes[3])
    alone = [encode(images=tf.constant([b]))["codes"].numpy()[0] for b in batch]
    assert np.array_equal(np.stack(alone), codes)


def test_metadata_states_the_trained_query_sizes(trained_model, mosaic_examples, tiny_preset, tmp_path):
    from dsrhn.contracts import read_metadata
    from trainer.task import train_and_export

    meta = read_metadata(trained_model)
    assert meta["degradation"] == "blind" and meta["query_sizes"] == [7, 56]
    fixed = tiny_preset.replace(degradation=Degradation(kind="fixed"), steps_per_epoch=1)
    train_and_export(mosaic_examples, fixed, str(tmp_path / "w"), str(tmp_path / "m"), verbose=0)
    meta = read_metadata(str(tmp_path / "m"))
    assert meta["degradation"] == "fixed" and meta["query_sizes"] == [14, 14]


def test_server_answers_queries_of_different_sizes_in_one_batch(trained_model, mosaic_examples, tmp_path):
    from serving.indexer import gallery_from_examples, run_indexing
    from serving.store import ModelStore

    v1 = tmp_path / "dsrhn" / "1"
    shutil.copytree(trained_model, v1)
    run_indexing(str(v1), gallery_from_examples(mosaic_examples), beam_args=BEAM, batch_size=16)
    store = ModelStore(str(tmp_path), "dsrhn", poll_seconds=60)
    store.start()
    srv = LiveServer(store)
    try:
        sizes = [(14, 14), (28, 28), (7, 7), (31, 20), (4, 4), (56, 56), (120, 90)]
        body = {
            "instances": [{"b64": base64.b64encode(_png(w, h, i)).decode()} for i, (w, h) in enumerate(sizes)],
            "k": 3,
        }
        r = httpx.post(f"{srv.url}/v1/models/dsrhn:search", json=body, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(sizes) and all(len(x["ids"]) == 3 for x in results)
        warned = [i for i, x in enumerate(results) if "warning" in x]
        assert warned == [4, 6], results  # 4 px and a 90 px side are outside the trained 7..56 px
        assert "7..56 px" in results[4]["warning"]
        hr = httpx.post(f"{srv.url}/v1/models/dsrhn:search", json={**body, "signature_name": "encode_hr"}, timeout=60)
        assert hr.status_code == 200 and not any("warning" in x for x in hr.json()["results"])
    finally:
        srv.stop()
        store.stop()
