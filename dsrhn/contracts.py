"""The contracts between stages that are not the dataset records (dsrhn/records.py) or the config
(dsrhn/config.py): what an exported model states about itself, and what binds a gallery index to the
model that made its codes. Every stage imports these from here; none reaches into another stage.

Export metadata (`<SavedModel>/assets.extra/dsrhn.json`), written by the trainer, read by evaluation,
indexing and serving:
    bits, code_bytes, code_layout   the code contract (sign rule + packing below)
    method                          the registered method (dsrhn/registry.py; "mode" in older exports)
    query_input                     "lr" (queries are LR images) or "hr"
    query_path                      "sr" (SRNet), "bicubic", "hr" or "fsr" (bicubic image, features enhanced
                                    by a feature generator): how a query becomes codes
    query_sizes, degradation        the query sides (px) and LR kind the model was trained for
    local                           multi-level models only: grid, count, regions, rerank_weight, ... of the
                                    local codes their signatures also return (dsrhn/multilevel.py)
    hr_size, lr_size, scale, label_names, preset, signatures, exported_at, ...

Index manifest (`<model>/index/manifest.json`), written by `dsrhn index`, checked by the server:
    format (2), backend ("faiss" | "milvus"), model_fingerprint (sha256 of the SavedModel graph + variable
    index), model_version, bits, code_bytes (the model's packed width), stored_bytes and faiss_dim (the
    width the index stores: code_bytes zero-padded to a width faiss has a fast Hamming kernel for),
    factory (faiss binary index factory string; "BFlat" = exact), search_params, exact, recall (of an
    approximate index against exact search), count, label_names, files ({name: sha256} of every file the
    index reads), milvus ({uri, collection, index_type}, backend milvus), code_layout, created,
    local (multi-level models: {file, count, word_bytes, bits, rerank_weight}; `local.npy`, uint8
    [rows, R, 2, word_bytes] local codes + bit selection, memory-mapped by the server to re-rank a shortlist),
    previews ({file, offsets, format, max_side, count, bytes}: each row's preview JPEG, packed with offsets,
    served under the model's version; absent with `dsrhn index --no-previews`)
"""

from __future__ import annotations

import hashlib
import json
import os

from dsrhn.registry import spec

METADATA = os.path.join("assets.extra", "dsrhn.json")
CODE_LAYOUT = "sign bits packed MSB-first, bit 1 for b=+1 (sign(0)=+1), zero padding to whole bytes"

INDEX_DIR = "index"
INDEX_FILE = "gallery.faissindex"
ID_BYTES_FILE = "ids.bin"  # the gallery ids, UTF-8, concatenated
ID_OFFSETS_FILE = "ids.offsets.npy"  # uint64 [count + 1]: row r's id is ids.bin[off[r]:off[r+1]]
LOCAL_FILE = "local.npy"  # multi-level models: uint8 [count, R, 2, W], local codes + bit selection per row
LABELS_FILE = "labels.npy"  # uint8 [count, ceil(L / 8)]: row r's labels as bits over label_names, MSB first
PREVIEWS_FILE = "previews.bin"  # row r's preview (a small JPEG) is previews.bin[off[r]:off[r+1]]
PREVIEW_OFFSETS_FILE = "previews.offsets.npy"  # uint64 [count + 1]
PREVIEW_SIDE = 128  # a preview's longer side at most (px)
MANIFEST_FILE = "manifest.json"
INDEX_FORMAT = 2
KERNEL_BYTES = (4, 8, 16, 20, 32, 64)  # code widths faiss has specialised Hamming kernels for


# ---------------------------------------------------------------- export metadata


def write_metadata(export_dir: str, meta: dict) -> None:
    import tensorflow as tf

    path = os.path.join(export_dir, METADATA)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(meta, indent=2, allow_nan=False))


def read_metadata(export_dir: str) -> dict:
    import tensorflow as tf

    path = os.path.join(export_dir, METADATA)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {export_dir} is not a SavedModel exported by dsrhn")
    with tf.io.gfile.GFile(path) as f:
        meta = json.loads(f.read())
    meta.setdefault("method", meta.pop("mode", "dsrhn"))  # models exported before "mode" was named "method"
    meta.setdefault("query_path", spec(meta["method"]).query_path)  # models exported before query_path was written
    return meta


# ---------------------------------------------------------------- index manifest


class IndexMismatch(ValueError):
    """The index on disk does not belong to the model beside it (or is damaged)."""


def code_bytes(bits: int) -> int:
    """The packed width of a K-bit code: K sign bits zero-padded to whole bytes."""
    return (bits + 7) // 8


def code_dim(bits: int) -> int:
    """Faiss binary indexes need d % 8 == 0: K bits are zero-padded to whole bytes."""
    return code_bytes(bits) * 8


def stored_bytes(bits: int) -> int:
    """The width an index stores K-bit codes at: the packed bytes, zero-padded up to the nearest width
    with a specialised faiss kernel (48 bits -> 8 bytes). Zero padding adds nothing to any distance."""
    native = code_dim(bits) // 8
    return next((w for w in KERNEL_BYTES if w >= native), native)


def sha256_file(path: str, opener=open) -> str:
    """opener: `open`, or tf.io.gfile.GFile for paths on a remote file system."""
    h = hashlib.sha256()
    with opener(path, "rb") as f:
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


def check_manifest(manifest: dict, model_dir: str, model_meta: dict, index_dir: str) -> None:
    """Raise IndexMismatch unless the manifest binds index_dir's files to the model at model_dir."""
    if manifest.get("model_fingerprint") != model_fingerprint(model_dir):
        raise IndexMismatch(
            f"index at {index_dir} was built for another model (fingerprint mismatch); rebuild it with `dsrhn index`"
        )
    if int(manifest.get("bits", -1)) != int(model_meta["bits"]):
        raise IndexMismatch(f"index has {manifest.get('bits')} bits, model has {model_meta['bits']}")
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexMismatch(
            f"index at {index_dir} has format {manifest.get('format', 1)}, this dsrhn reads format "
            f"{INDEX_FORMAT}; rebuild it with `dsrhn index`"
        )
    check_files(manifest, index_dir)


def check_files(manifest: dict, index_dir: str) -> None:
    """Every file the manifest lists is there with its checksum."""
    for name, digest in manifest.get("files", {}).items():
        path = os.path.join(index_dir, name)
        if not os.path.exists(path):
            raise IndexMismatch(f"{path} is missing (listed in the index manifest)")
        if sha256_file(path) != digest:
            raise IndexMismatch(f"{path} does not match its manifest checksum")
