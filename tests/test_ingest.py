"""Ingestion on real files of every kind users hold, through Beam's DirectRunner."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.ingest import run_ingest
from dsrhn import sources
from dsrhn.config import LRConfig
from dsrhn.images import ImageError, decode_image, make_lr, prepare_hr
from dsrhn.records import DatasetInfo, read_split, read_split_raw
from tests.conftest import BEAM

RNG = np.random.default_rng(0)


def photo(size=(80, 64)) -> Image.Image:
    """A real photograph (scikit-image's bundled astronaut), resized to `size`."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize(size, Image.BICUBIC)


def save(img: Image.Image, path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """Good and bad images, a NUS-style list with bad lines, as users hold them."""
    root = tmp_path_factory.mktemp("nus")
    (root / "images").mkdir()
    good = {
        "rgb.jpg": lambda p: save(photo(), p, quality=95),
        "rgba.png": lambda p: save(photo().convert("RGBA"), p),
        "palette.png": lambda p: save(photo().convert("P"), p),
        "gray.png": lambda p: save(photo().convert("L"), p),
        "cmyk.jpg": lambda p: save(photo().convert("CMYK"), p),
        "sixteen.png": lambda p: save(Image.fromarray(np.full((40, 40), 32768, np.uint16)), p),
        "tiny.png": lambda p: save(photo((5, 3)), p),
        "exif.jpg": lambda p: save(photo((60, 40)), p, exif=_orientation_exif(6)),
    }
    for name, make in good.items():
        make(root / "images" / name)
    data = (root / "images" / "rgb.jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "images" / "empty.jpg").write_bytes(b"")
    (root / "images" / "notes.jpg").write_text("this is not an image\n")
    lines = [f"images/{n} {' '.join(str(int(i % 3 == j)) for j in range(3))}" for i, n in enumerate(good)]
    lines += [
        "images/truncated.jpg 1 0 0",
        "images/empty.jpg 0 1 0",
        "images/notes.jpg 0 0 1",
        "images/missing.jpg 1 1 0",
        "images/rgb.jpg 1 0",
        "images/gray.png 1 x 0",
        "",
    ]
    (root / "list.txt").write_text("\n".join(lines))
    return root


def _orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_unusual_images_are_converted_not_rejected(image_tree):
    img = root = image_tree / "images"
    for name in ("rgba.png", "palette.png", "gray.png", "cmyk.jpg", "sixteen.png", "tiny.png"):
        img = decode_image((root / name).read_bytes())
        assert img.mode == "RGB", name
    sixteen = np.asarray(decode_image((root / "sixteen.png").read_bytes()))
    assert abs(int(sixteen[0, 0, 0]) - 128) <= 1  # 32768/65535 of full scale
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert np.asarray(decode_image(buf.getvalue()))[0, 0].tolist() == [255, 255, 255]  # transparent -> white


def test_exif_orientation_is_applied(image_tree):
    img = decode_image((image_tree / "images" / "exif.jpg").read_bytes())
    assert img.size == (40, 60)  # stored 60x40 with "rotate 90 CW"


@pytest.mark.parametrize("payload,reason", [(b"", "empty file"), (b"GIF89a-no", "not a readable image")])
def test_bad_bytes_raise_clear_errors(payload, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(payload)


def test_list_ingestion_round_trip_and_report(image_tree, tmp_path):
    out = str(tmp_path / "ex")
    spec = {
        "kind": "list",
        "image_root": str(image_tree),
        "single_list": str(image_tree / "list.txt"),
        "rule": "random",
        "n_query": 2,
        "n_train": 3,
    }
    s = run_ingest(spec, out, 32, LRConfig(scale=4), beam_args=BEAM)
    r = s.report
    assert r["in"] == 14 and r["written"] == 8 and r["rejected"] == 6
    assert r["in"] == r["written"] + r["rejected"]
    reasons = {os.path.basename(x["path"]) if x["path"] else x["id"]: x["reason"] for x in r["rejections"]}
    assert "truncated" in reasons["truncated.jpg"] or "not a readable image" in reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "empty file"
    assert "not a readable image" in reasons["notes.jpg"]
    assert reasons["missing.jpg"] == "missing file"
    assert any("line 13: 2 labels, expected 3" in v for v in reasons.values())
    assert any("line 14: label value 'x' is not 0 or 1" in v for v in reasons.values())
    assert json.load(open(s.report_path))["rejected"] == 6
    # roles are drawn over the 11 parseable lines before images are read, so an image
    # that turns out unreadable takes its role with it; every written image has one
    ids = {sp: [x["id"].numpy().decode() for x in read_split(out, sp)] for sp in ("train", "query", "gallery")}
    assert len(ids["query"]) + len(ids["gallery"]) == 8 and len(ids["query"]) <= 2 and len(ids["train"]) <= 3
    assert not set(ids["query"]) & set(ids["gallery"]) and set(ids["train"]) <= set(ids["gallery"])
    # labels round trip
    expected = {}
    for line in (image_tree / "list.txt").read_text().splitlines()[:8]:
        path, *labs = line.split()
        expected[path] = [float(x) for x in labs]  # ids are paths relative to --image-root
    for rec in read_split(out, "gallery"):
        assert rec["labels"].numpy().tolist() == expected[rec["id"].numpy().decode()]
        assert rec["hr"].shape == (32, 32, 3) and rec["lr"].shape == (8, 8, 3)
    assert DatasetInfo.read(out).num_labels == 3


def test_lr_matches_reference_resizes():
    hr = prepare_hr(photo((96, 80)), 64)
    arr = np.asarray(hr, np.float64)
    area = np.asarray(make_lr(hr, LRConfig(scale=4, kernel="area"), "x"), np.float64)
    block_mean = arr.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(area - block_mean).max() <= 1.0  # exact up to rounding
    bicubic = np.asarray(make_lr(hr, LRConfig(scale=4), "x"), np.float64)
    ref = tf.image.resize(arr, (16, 16), method="bicubic", antialias=True).numpy()
    assert np.abs(bicubic - ref).mean() < 2.0  # Pillow's and TF's antialiased Keys kernels agree
    for scale in (2, 8):
        assert make_lr(hr, LRConfig(scale=scale), "x").size == (64 // scale, 64 // scale)


def test_degradations_are_deterministic_per_seed_and_id():
    hr = prepare_hr(photo(), 32)
    cfg = LRConfig(scale=2, blur_sigma=1.0, noise_sigma=5.0, jpeg_quality=30, seed=3)
    a, b = np.asarray(make_lr(hr, cfg, "id-1")), np.asarray(make_lr(hr, cfg, "id-1"))
    c = np.asarray(make_lr(hr, cfg, "id-2"))
    assert (a == b).all() and not (a == c).all()
    assert not (a == np.asarray(make_lr(hr, LRConfig(scale=2), "id-1"))).all()


def test_bad_lr_config_is_refused():
    with pytest.raises(ValueError, match="scale"):
        LRConfig(scale=3)
    with pytest.raises(ValueError, match="kernel"):
        LRConfig(kernel="lanczos")


def test_split_rules():
    labels = np.zeros((300, 3), int)
    labels[np.arange(300), np.arange(300) % 3] = 1
    roles = sources.split_per_class(labels, 10, 20, seed=0)
    q = np.array([r == ("query",) for r in roles])
    t = np.array(["train" in r for r in roles])
    for c in range(3):
        assert q[labels[:, c] == 1].sum() == 10 and t[labels[:, c] == 1].sum() == 20
    assert all("gallery" in r for r in roles if r != ("query",))
    roles = sources.split_random(100, 7, 11, seed=1)
    assert sum(r == ("query",) for r in roles) == 7 and sum("train" in r for r in roles) == 11
    with pytest.raises(ValueError, match="no gallery"):
        sources.split_random(5, 5, 0, seed=0)


def test_coco_json_and_directory_sources(image_tree, tmp_path):
    coco = {
        "images": [
            {"id": 1, "file_name": "rgb.jpg"},
            {"id": 2, "file_name": "gray.png"},
            {"id": 3, "file_name": "rgba.png"},
            {"id": 4, "file_name": "cmyk.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 18},
            {"image_id": 1, "category_id": 1},
            {"image_id": 2, "category_id": 18},
            {"image_id": 4, "category_id": 90},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
    }
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(coco))
    out = str(tmp_path / "coco")
    s = run_ingest(
        {"kind": "coco", "pairs": [[str(path), str(image_tree / "images")]], "n_query": 1, "n_train": 1},
        out,
        32,
        LRConfig(),
        beam_args=BEAM,
    )
    assert (s.report["in"], s.report["written"], s.report["rejected"]) == (4, 3, 1)
    assert "no category annotations" in s.report["rejections"][0]["reason"]
    info = DatasetInfo.read(out)
    assert info.label_names == ["person", "dog", "toothbrush"]
    labels = {
        r["id"].decode().rsplit("/", 1)[-1]: r["labels"].tolist()
        for sp in ("query", "gallery")
        for r in read_split_raw(out, sp).as_numpy_iterator()
    }
    assert labels["rgb.jpg"] == [1, 1, 0] and labels["cmyk.jpg"] == [0, 0, 1]

    tree = tmp_path / "tree"
    for cls in ("cats", "dogs"):
        (tree / cls).mkdir(parents=True)
        for i in range(4):
            save(photo((30 + i, 30)), tree / cls / f"{i}.jpg")
    (tree / "dogs" / "readme.txt").write_text("not an image")
    out = str(tmp_path / "dir")
    s = run_ingest(
        {"kind": "directory", "root": str(tree), "query_per_class": 1, "train_per_class": 2},
        out,
        32,
        LRConfig(scale=2),
        beam_args=BEAM,
    )
    assert (s.report["in"], s.report["written"], s.report["rejected"]) == (9, 8, 1)
    assert s.report["per_split"] == {"train": 4, "query": 2, "gallery": 6}


def test_fashion_mnist_mosaic_labels_are_the_union(mosaic_examples):
    from dsrhn.sources import fashion_mnist_pixels, load_fashion_mnist

    info = DatasetInfo.read(mosaic_examples)
    assert (info.hr_size, info.lr_size, info.num_labels) == (56, 14, 10)
    test_labels = load_fashion_mnist()["test"][1]
    n = 0
    for rec in read_split_raw(mosaic_examples, "query").as_numpy_iterator():
        idx = [int(i) for i in rec["id"].decode().rsplit("/", 1)[1].split("+")]
        assert rec["labels"].tolist() == [int(c in set(test_labels[idx])) for c in range(10)]
        hr = tf.io.decode_png(rec["hr"]).numpy()[..., 0]
        ref = fashion_mnist_pixels(f"fmnist:{sources.FASHION_MNIST_DIR}:test:{','.join(map(str, idx))}")
        assert (hr == ref).all()
        n += 1
    assert n == 16
