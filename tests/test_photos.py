"""Real photos: the offline corpus (Debian packages; set-up fetches a two-package subset into data/photos-mini),
the resource-bundle readers, a plain photo folder ingested as instances (each photo its own identity, views
as queries), training on fresh pairs of views, and the collapse check."""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from components import photo_corpus
from components.containers import ContainerError, read_eet, read_rcc, write_eet, write_rcc
from dsrhn.config import Views, data_dir, get_preset
from dsrhn.health import code_health
from tests.conftest import BEAM

MINI = os.path.join(data_dir(), "photos-mini")


def jpeg(seed: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_qt_resource_and_eet_readers_round_trip_and_name_broken_files():
    files = [("a/one.webp", b"\x00" * 100 + jpeg(1)), ("two.jpg", jpeg(2))]
    for compress in (True, False):
        assert read_rcc(write_rcc(files, compress)) == [(n, b) for n, b in files]
    entries = [("edje/images/0", jpeg(3, (32, 32))), ("edje/images/1", jpeg(4, (64, 64))), ("edje/file", b"xyz")]
    assert read_eet(write_eet(entries)) == entries
    with pytest.raises(ContainerError, match="bundle.rcc: not a Qt resource file"):
        read_rcc(b"PK\x03\x04 not qt", "bundle.rcc")
    with pytest.raises(ContainerError, match="x.edj: not an Eet file"):
        read_eet(b"\x00" * 64, "x.edj")
    with pytest.raises(ContainerError, match="t.rcc"):
        read_rcc(write_rcc(files)[:60], "t.rcc")  # truncated


def test_selection_takes_the_largest_jpeg_of_an_eet_and_the_classes_of_a_bundle(tmp_path):
    tree = tmp_path / "pkg"
    (tree / "bg").mkdir(parents=True)
    (tree / "bg" / "Tree.edj").write_bytes(
        write_eet([("edje/images/0", jpeg(5, (40, 30))), ("edje/images/1", jpeg(6, (160, 120)))])
    )
    (tree / "r.rcc").write_bytes(
        write_rcc([("set/fishes/f1.webp", jpeg(7)), ("set/tools/t1.webp", jpeg(8)), ("set/other.txt", b"x")])
    )
    found = photo_corpus.select(photo_corpus.Selection("p", ("bg/*.edj",), "edj"), str(tree), "1.0")
    assert len(found) == 1 and Image.open(io.BytesIO(found[0].data)).size == (160, 120)
    assert photo_corpus.file_name(found[0]) == "p--Tree.jpg"
    selection = photo_corpus.Selection("p", ("r.rcc",), "rcc", ("set/*/*",), labelled="s")
    found = photo_corpus.select(selection, str(tree), "1")
    assert sorted(c.label for c in found) == ["fishes", "tools"]  # the .txt is not an image


def test_near_duplicates_and_small_images_are_dropped_with_reasons():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1200, 3), dtype=np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(8)
    )

    def enc(img, q=92):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        return buf.getvalue()

    other = Image.fromarray(np.random.default_rng(1).integers(0, 255, (1000, 1200, 3), dtype=np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(8)
    )
    cands = [
        photo_corpus.Candidate("p", "1", "a.jpg", enc(big)),
        photo_corpus.Candidate("p", "1", "a-smaller.jpg", enc(big.resize((1150, 960)), 70)),  # the same picture
        photo_corpus.Candidate("p", "1", "b.jpg", enc(other)),
        photo_corpus.Candidate("p", "1", "b-copy.jpg", enc(other)),  # the same bytes
        photo_corpus.Candidate("p", "1", "tiny.jpg", enc(big.resize((640, 480)))),
        photo_corpus.Candidate("p", "1", "broken.jpg", enc(big)[:300]),
    ]
    kept, dropped = photo_corpus.choose(cands)
    assert [c.source for c in kept] == ["a.jpg", "b.jpg"]
    reasons = {d["source"]: d["reason"] for d in dropped}
    assert "near-duplicate of p:a.jpg" in reasons["a-smaller.jpg"]
    assert reasons["b-copy.jpg"] == "the same bytes as p:b.jpg"
    assert "under 1 megapixel" in reasons["tiny.jpg"] and "does not decode" in reasons["broken.jpg"]


def test_licences_follow_the_debian_copyright_file():
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: x\n"
        "License: GPL-2+\n\nFiles: 16.04/Dragonfly_by_Bolly.jpg\nCopyright: Bolly\nLicense: CC-BY-SA-4.0\n\n"
        "Files: src/fishes/fish1.jpg\nCopyright: y\nLicense: public-domain\n"
    )
    rules = photo_corpus.parse_copyright(text)
    assert photo_corpus.licence_for("usr/share/backgrounds/Dragonfly_by_Bolly.jpg", rules) == "CC-BY-SA-4.0"
    assert photo_corpus.licence_for("r.rcc!gcompris/src/fishes/fish1.webp", rules) == "public-domain"
    assert photo_corpus.licence_for("usr/share/other.jpg", rules) == "GPL-2+"


@pytest.mark.skipif(
    not os.path.exists(os.path.join(MINI, "manifest.json")),
    reason=f"{MINI} missing: scripts/setup.sh fetches it (dsrhn photos --mini)",
)
def test_the_mini_corpus_installed_by_setup(tmp_path):
    manifest = json.load(open(os.path.join(MINI, "manifest.json")))
    assert manifest["requested"] == list(photo_corpus.MINI_PACKAGES) and not manifest["failed"]
    photos = manifest["photos"]
    assert len(photos) >= 8
    for p in photos:
        path = os.path.join(MINI, p["file"])
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == p["sha256"]
        assert p["width"] * p["height"] >= 1_000_000 and p["licence"] and p["version"]
        assert p["file"].startswith(p["split"] + "/")
    train = {p["sha256"] for p in photos if p["split"] == "train"}
    test = {p["sha256"] for p in photos if p["split"] == "test"}
    assert train and test and not train & test  # split by photo
    lines = []
    again = photo_corpus.fetch_corpus(MINI, photo_corpus.MINI_PACKAGES, log=lines.append)  # a re-run: no-op
    assert again["photos"] == photos and "up to date" in lines[0]


def fake_deb(tmp, package: str, files: dict) -> str:
    """A real .deb (dpkg-deb --build) holding `files` ({path inside: bytes}) and a copyright file."""
    import subprocess

    tree = tmp / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 9.9-1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    )
    doc = tree / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nCopyright: t\nLicense: Expat\n")
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    out = tmp / f"{package}_9.9-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(out)], check=True, capture_output=True)
    return str(out)


def test_a_failed_package_is_named_and_the_rest_is_written(tmp_path, monkeypatch):
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(big, "JPEG")
    deb = fake_deb(
        tmp_path,
        "libjs-jquery-backstretch",
        {"usr/share/doc/libjs-jquery-backstretch/examples/coffee.jpg": big.getvalue()},
    )

    def download(package, debs):
        if package == "palapeli-data":
            raise RuntimeError("`apt-get download -q palapeli-data` failed (100): E: Unable to locate package")
        return deb

    monkeypatch.setattr(photo_corpus, "download", download)
    root = tmp_path / "corpus"
    with pytest.raises(photo_corpus.FetchError, match="palapeli-data: `apt-get download -q palapeli-data` failed"):
        photo_corpus.fetch_corpus(str(root), ("palapeli-data", "libjs-jquery-backstretch"), log=lambda *_: None)
    manifest = json.load(open(root / "manifest.json"))
    assert list(manifest["failed"]) == ["palapeli-data"]
    (photo,) = manifest["photos"]  # what was fetched is kept and written
    assert photo["file"] == "train/libjs-jquery-backstretch--coffee.jpg" and photo["licence"] == "Expat"
    assert photo["version"] == "9.9-1" and (root / photo["file"]).read_bytes() == big.getvalue()
    assert photo_corpus.up_to_date(str(root), ("palapeli-data", "libjs-jquery-backstretch")) is None  # retried next run


def _photo_folder(root, names):
    from skimage import data

    os.makedirs(root, exist_ok=True)
    for n in names:
        img = getattr(data, n)()
        Image.fromarray(np.asarray(img)).convert("RGB").save(os.path.join(root, f"{n}.jpg"), quality=92)


@pytest.fixture(scope="module")
def photo_examples(tmp_path_factory):
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig

    root = tmp_path_factory.mktemp("photos")
    _photo_folder(
        str(root / "mine"), ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
    )
    _photo_folder(str(root / "held"), ["retina", "horse"])
    (root / "mine" / "notes.txt").write_text("not a photo")
    out = str(root / "ex")
    summary = run_ingest(
        {
            "kind": "photos",
            "root": str(root / "mine"),
            "test_root": str(root / "held"),
            "query_views": 3,
            "gallery_views": 2,
        },
        out,
        64,
        LRConfig(scale=4),
        beam_args=BEAM,
    )
    return out, summary


def test_a_plain_photo_folder_becomes_instances(photo_examples):
    from dsrhn.records import DatasetInfo, read_split_raw

    out, summary = photo_examples
    r = summary.report
    assert r["rejected"] == 1 and "notes.txt" in r["rejections"][0]["id"]  # reported, not skipped
    assert r["per_split"] == {"train": 6, "query": 6, "gallery": 6 + 2 * 2}
    info = DatasetInfo.read(out)
    assert info.source == "photos" and info.source_side == 256 and len(info.label_names) == 9
    train = list(read_split_raw(out, "train", info).as_numpy_iterator())
    for rec in train:
        src = Image.open(io.BytesIO(rec["source"]))
        assert min(src.size) == 256 and rec["labels"].sum() == 1  # the photo itself, shorter side 4 x HR
    queries = list(read_split_raw(out, "query", info).as_numpy_iterator())
    assert {q["id"].decode().split("#")[1] for q in queries} == {"q0", "q1", "q2"}
    assert all(q["id"].decode().startswith("held/") for q in queries)  # queries come from the held-out photos only
    gallery = {g["id"].decode(): g for g in read_split_raw(out, "gallery", info).as_numpy_iterator()}
    whole, view = gallery["held/horse.jpg"], gallery["held/horse.jpg#g1"]
    assert (whole["labels"] == view["labels"]).all() and whole["hr"] != view["hr"]
    q = next(x for x in queries if x["id"].decode().startswith("held/horse"))
    assert (q["labels"] == whole["labels"]).all()


def test_training_draws_fresh_pairs_of_views_seeded_and_resumable(photo_examples):
    from dsrhn.records import DatasetInfo
    from trainer.train import training_dataset

    out, _ = photo_examples
    info = DatasetInfo.read(out)
    preset = get_preset("cpu", hr_size=64, batch_size=8, views=Views(per_photo=2))
    batches = list(training_dataset(out, preset, 0, 2, 2, info).as_numpy_iterator())
    assert len(batches) == 4
    for b in batches:
        ids = b["labels"].argmax(1)
        assert (ids[0::2] == ids[1::2]).all()  # two views of each photo in a batch: each other's positives
        assert not np.array_equal(b["hr"][0::2], b["hr"][1::2])  # different views
    resumed = list(training_dataset(out, preset, 1, 2, 2, info).as_numpy_iterator())
    for a, b in zip(batches[2:], resumed):
        assert np.array_equal(a["hr"], b["hr"]) and np.array_equal(a["lr_up"], b["lr_up"])
    with pytest.raises(ValueError, match="multiple of views.per_photo"):
        training_dataset(out, preset.replace(batch_size=7), 0, 1, 1, info)


def test_collapse_check_names_constant_bits_and_few_distinct_codes():
    rng = np.random.default_rng(0)
    healthy = rng.choice([-1, 1], (200, 48))
    assert code_health(healthy).problems() == []
    one_bit = healthy.copy()
    one_bit[:, 7] = 1
    problems = code_health(one_bit).problems()
    assert len(problems) == 1 and "1 of 48 bits are constant" in problems[0] and "(bit 7)" in problems[0]
    constant = np.ones((200, 48))
    text = " ".join(code_health(constant).problems())
    assert "48 of 48 bits are constant" in text and "only 1 distinct codes for 200" in text
    few = np.repeat(rng.choice([-1, 1], (20, 48)), 10, axis=0)
    assert "only 20 distinct codes for 200 images" in " ".join(code_health(few).problems())
    classes = np.repeat(np.eye(10), 20, axis=0)  # one code per class is what semantic hashing is for: healthy
    per_class = np.repeat(rng.choice([-1, 1], (10, 48)), 20, axis=0)
    assert code_health(per_class, labels=classes).problems() == []
    merged = per_class.copy()
    merged[60:] = merged[0]  # 7 of 10 classes share one code
    assert "only 3 distinct codes for 10 label sets" in " ".join(code_health(merged, labels=classes).problems())
    packed = np.packbits(one_bit > 0, axis=1)  # packed uint8 codes, as indexes store them
    assert code_health(packed, 48).constant_bits == [7]
