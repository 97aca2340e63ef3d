"""The gallery index: a Faiss IndexBinaryFlat of packed codes, an id map and a manifest
that binds the index to the SavedModel that made its codes.

Layout inside a model version directory (TF Serving layout `<base>/<name>/<version>/`):
    index/gallery.faissindex   faiss.write_index_binary
    index/ids.jsonl            row -> {"id", "labels"}
    index/manifest.json        model fingerprint, bits, code layout, count, checksums
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

import faiss
import numpy as np

INDEX_DIR = "index"
INDEX_FILE = "gallery.faissindex"
IDS_FILE = "ids.jsonl"
MANIFEST_FILE = "manifest.json"
MAX_GPU_K = 2048  # faiss GPU binary search limit


class IndexMismatch(ValueError):
    """The index on disk does not belong to the model beside it (or is damaged)."""


def faiss_dim(bits: int) -> int:
    """Faiss binary indexes need d % 8 == 0: K bits are zero-padded to whole bytes."""
    return ((bits + 7) // 8) * 8


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the SavedModel graph and variable index: changes whenever the model does."""
    h = hashlib.sha256()
    for rel in ("saved_model.pb", os.path.join("variables", "variables.index")):
        path = os.path.join(model_dir, rel)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing: {model_dir} is not a SavedModel")
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def build_index(codes: np.ndarray, bits: int) -> faiss.IndexBinaryFlat:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != faiss_dim(bits) // 8:
        raise ValueError(f"codes must be uint8 [N, {faiss_dim(bits) // 8}] for {bits} bits, got {codes.shape}")
    index = faiss.IndexBinaryFlat(faiss_dim(bits))
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
            "bits": bits, "faiss_dim": faiss_dim(bits), "code_layout": model_meta.get("code_layout", ""),
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
    if manifest.get("model_fingerprint") != model_fingerprint(model_dir):
        raise IndexMismatch(f"index at {d} was built for another model (fingerprint mismatch); rebuild it with `dsrhn index`")
    if int(manifest.get("bits", -1)) != int(model_meta["bits"]):
        raise IndexMismatch(f"index has {manifest.get('bits')} bits, model has {model_meta['bits']}")
    for name, key in ((INDEX_FILE, "index_sha256"), (IDS_FILE, "ids_sha256")):
        if sha256_file(os.path.join(d, name)) != manifest[key]:
            raise IndexMismatch(f"{os.path.join(d, name)} does not match its manifest checksum")
    index = faiss.read_index_binary(os.path.join(d, INDEX_FILE))
    with open(os.path.join(d, IDS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    if index.ntotal != manifest["count"] or len(rows) != index.ntotal:
        raise IndexMismatch(f"index holds {index.ntotal} codes and {len(rows)} ids; manifest says {manifest['count']}")
    return GalleryIndex(index, rows, manifest)
