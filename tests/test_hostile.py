"""Hostile and mistaken input (started here; the rest of the hardening issue is still open): decoders
fuzzed with random bytes behind real image signatures, through ingestion and indexing, where every item
must be written or rejected with a reason and the job must complete."""
from __future__ import annotations

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
