"""The gallery index: a Faiss IndexBinaryFlat of packed codes, an id map and a manifest
that binds the index to the SavedModel that made its codes.

Layout inside a model version directory (TF Serving layout `<base>/<name>/<version>/`):
    index/gallery.faissindex   faiss.write_index_binary
    index/ids.jsonl            row -> {"id", "labels"}
    index/manifest.json        model fingerprint, bits, code layout, count, checksums
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import faiss
import numpy as np

from dsrhn.contracts import (IDS_FILE, INDEX_DIR, INDEX_FILE, MANIFEST_FILE, IndexMismatch, check_manifest, code_dim,
                             model_fingerprint, sha256_file)

MAX_GPU_K = 2048  # faiss GPU binary search limit


def build_index(codes: np.ndarray, bits: int) -> faiss.IndexBinaryFlat:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != code_dim(bits) // 8:
        raise ValueError(f"codes must be uint8 [N, {code_dim(bits) // 8}] for {bits} bits, got {codes.shape}")
    index = faiss.IndexBinaryFlat(code_dim(bits))
    index.add(codes)
    return index


def write_index(model_dir: str, codes: np.ndarray, rows: list[dict], model_meta: dict,
                out_dir: str | None = None) -> dict:
    """Write index, id map and manifest to model_dir/index atomically (temp dir + rename)."""
    if len(rows) != len(codes):
        raise ValueError(f"{len(rows)} id rows for {len(codes)} codes")
    bits = int(model_meta["bits"])
    final = out_dir or os.path.join(model_dir, INDEX_DIR)
    tmp = f"{final}.tmp-{os.getpid()}-{time.time_ns()}"
    os.makedirs(tmp)
    try:
        faiss.write_index_binary(build_index(codes, bits), os.path.join(tmp, INDEX_FILE))
        with open(os.path.join(tmp, IDS_FILE), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        manifest = {
            "model_fingerprint": model_fingerprint(model_dir),
            "model_version": os.path.basename(os.path.normpath(model_dir)),
            "bits": bits, "faiss_dim": code_dim(bits), "code_layout": model_meta.get("code_layout", ""),
            "count": int(len(codes)),
            "index_sha256": sha256_file(os.path.join(tmp, INDEX_FILE)),
            "ids_sha256": sha256_file(os.path.join(tmp, IDS_FILE)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
        old = None
        if os.path.exists(final):
            old = f"{final}.old-{time.time_ns()}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@dataclass
class GalleryIndex:
    index: faiss.IndexBinary
    rows: list[dict]
    manifest: dict

    @property
    def count(self) -> int:
        return self.index.ntotal

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32 [n, k], rows int64 [n, k]) for packed query codes; k is capped at count."""
        k = min(k, self.count)
        return self.index.search(np.ascontiguousarray(codes, dtype=np.uint8), k)


def load_index(model_dir: str, model_meta: dict, index_dir: str | None = None) -> GalleryIndex:
    """Load and verify: refuses an index whose manifest does not match the model beside it."""
    d = index_dir or os.path.join(model_dir, INDEX_DIR)
    manifest_path = os.path.join(d, MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        raise IndexMismatch(f"no index manifest at {manifest_path}")
    with open(manifest_path) as f:
        manifest = json.load(f)
    check_manifest(manifest, model_dir, model_meta, d)
    index = faiss.read_index_binary(os.path.join(d, INDEX_FILE))
    with open(os.path.join(d, IDS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    if index.ntotal != manifest["count"] or len(rows) != index.ntotal:
        raise IndexMismatch(f"index holds {index.ntotal} codes and {len(rows)} ids; manifest says {manifest['count']}")
    return GalleryIndex(index, rows, manifest)
