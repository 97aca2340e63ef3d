"""Hostile and mistaken input (started here; the rest of the hardening issue is still open): decoders
fuzzed with random bytes behind real image signatures, through ingestion and indexing, where every item
must be written or rejected with a reason and the job must complete."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from components.images import ImageError, decode_image

SIGNATURES = {"jpeg": b"\xff\xd8\xff\xe0", "png": b"\x89PNG\r\n\x1a\n", "gif": b"GIF89a", "bmp": b"BM",
              "webp": b"RIFF\x20\x00\x00\x00WEBPVP8 ", "tiff": b"II*\x00", "qoi": b"qoif"}


def fuzz_files(root, per_signature: int = 4, seed: int = 0) -> list[str]:
    """Random tails behind every signature, plus QOI headers with plausible sizes (Pillow's QOI reader
    raised IndexError on such 58-byte files), plus two good images."""
    rng = np.random.default_rng(seed)
    names = []
    for kind, sig in SIGNATURES.items():
        for i in range(per_signature):
            tail = rng.integers(0, 256, int(rng.integers(4, 600)), dtype=np.uint8).tobytes()
            if kind == "qoi":
                w, h = (int(x) for x in rng.integers(1, 64, 2))
                tail = struct.pack(">II", w, h) + bytes([3, 0]) + tail[:44]
            name = f"{kind}{i}.{kind}"
            (root / name).write_bytes(sig + tail)
            names.append(name)
    for name in ("good0.png", "good1.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


def test_a_decoder_crash_is_a_rejection_with_its_reason():
    data = b"qoif" + struct.pack(">II", 16, 16) + bytes([3, 0]) + bytes(range(44))
    try:
        decode_image(data)
    except ImageError as e:
        assert "QOI" in str(e) or "not a readable image" in str(e)
    rng = np.random.default_rng(1)
    for sig in SIGNATURES.values():
        for _ in range(20):
            try:
                decode_image(sig + rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
            except ImageError:
                pass  # a rejection; anything else escaping would fail the test


def test_fuzzed_files_are_each_written_or_rejected_by_ingest_and_index(tmp_path, trained_model):
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig
    from serving.indexer import gallery_from_source, run_indexing

    root = tmp_path / "img"
    root.mkdir()
    names = fuzz_files(root)
    lines = [f"{n} {i % 2} {(i + 1) % 2}" for i, n in enumerate(names)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    s = run_ingest({"kind": "list", "image_root": str(root), "single_list": str(tmp_path / "list.txt"),
                    "rule": "random", "n_query": 1, "n_train": 1}, str(tmp_path / "ex"), 32, LRConfig(scale=2),
                   beam_args=["--runner=DirectRunner"])
    assert s.report["in"] == len(names) == s.report["written"] + s.report["rejected"]
    assert s.report["written"] >= 2 and all(r["reason"] for r in s.report["rejections"])
    items = gallery_from_source({"kind": "list", "list_file": str(tmp_path / "list.txt"), "image_root": str(root)})
    out = tmp_path / "index"
    summary = run_indexing(trained_model, items, out_dir=str(out), beam_args=["--runner=DirectRunner"])
    assert summary.manifest["count"] + len(summary.rejected) == len(names)
    assert summary.manifest["count"] >= 2
    assert len(json.loads((out / "rejected.json").read_text())) == len(summary.rejected)
    assert all(r["error"] for r in summary.rejected)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_settings_never_reach_the_trainer(bad):
    from dsrhn.config import parse_overrides

    with pytest.raises(ValueError, match="must be float"):
        parse_overrides([f"lam={bad}"])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (an image bomb as a server sees it: tiny on the wire)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_image_bombs_and_batch_bombs_get_a_json_400_and_the_server_keeps_serving(trained_model, tmp_path):
    import base64
    import shutil

    import httpx

    from dsrhn.contracts import read_metadata
    from serving.index import write_index
    from serving.server import BackgroundServer, InputLimits
    from serving.store import ModelStore

    base = tmp_path / "serving"
    shutil.copytree(trained_model, base / "m" / "1")
    write_index(str(base / "m" / "1"), np.zeros((3, 2), np.uint8), [{"id": f"g{i}", "labels": []} for i in range(3)],
                read_metadata(str(base / "m" / "1")))
    store = ModelStore(str(base), "m", poll_seconds=3600)
    store.refresh()
    server = BackgroundServer(store, limits=InputLimits(max_instances=8, max_pixels=4_000_000))
    good = Image.new("RGB", (14, 14), (200, 10, 10))
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    good_b64 = {"b64": base64.b64encode(buf.getvalue()).decode()}
    url = f"{server.url}/v1/models/m:search"
    try:
        cases = [
            ({"instances": [good_b64, {"b64": base64.b64encode(_png_header_only(5000, 5000)).decode()}], "k": 2},
             "instances[1]: image is 5000x5000 (25 megapixels); the limit is 4 megapixels"),
            ({"instances": [{"b64": base64.b64encode(_png_header_only(20000, 20000)).decode()}], "k": 2},
             "instances[0]: image is too large"),
            ({"instances": [good_b64] * 9, "k": 2}, "9 images in one request; at most 8"),
            ({"instances": [{"b64": base64.b64encode(b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"\x00" * 40).decode()}]},
             "instances[0]: could not decode the image"),
            ({"instances": [good_b64], "signature_name": ["serving_default"]}, "search encodes queries"),
        ]
        for body, message in cases:
            r = httpx.post(url, json=body, timeout=60)
            assert r.status_code == 400 and message in r.json()["error"], (r.status_code, r.text)
        r = httpx.post(f"{server.url}/v1/models/m:predict", json={"instances": [good_b64], "signature_name": [1]},
                       timeout=60)
        assert r.status_code == 400 and "'signature_name' must be a string" in r.json()["error"]
        r = httpx.post(url, json={"instances": [good_b64], "k": 2}, timeout=60)  # still serving
        assert r.status_code == 200 and len(r.json()["results"][0]["ids"]) == 2
    finally:
        server.stop()


def test_stray_version_folders_are_ignored(trained_model, tmp_path):
    import shutil

    from serving.store import ModelStore

    for name in ("²", "1x", "7.tmp", "007"):
        (tmp_path / "m" / name).mkdir(parents=True)
    shutil.copytree(trained_model, tmp_path / "m" / "3")
    (tmp_path / "m" / "²" / "saved_model.pb").write_bytes(b"")
    assert ModelStore(str(tmp_path), "m").versions_on_disk() == [3]
