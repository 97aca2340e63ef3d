"""The gallery index: packed codes in a faiss binary index, a columnar id map, and a manifest that binds
both to the SavedModel that made the codes (dsrhn/contracts.py).

Layout inside a model version directory (TF Serving layout `<base>/<name>/<version>/`):
    index/gallery.faissindex   faiss.write_index_binary; codes zero-padded to a fast-kernel width
    index/ids.bin              gallery ids, UTF-8, concatenated  } memory-mapped: only the top-k rows
    index/ids.offsets.npy      uint64 [count + 1]               } of a search are read
    index/labels.npy           uint8 [count, ceil(L / 8)] label bits over manifest.label_names
    index/manifest.json        model fingerprint, widths, factory, count, checksums

Thread policy: faiss's OpenMP thread count is per calling thread. A search of few queries (a served
request) runs on one thread: requests are concurrent already, and OpenMP threads spinning against each
other on a busy machine cost 10x (72 ms instead of 5 ms measured for one 48-bit query on 2 cores). A
search of many queries (batch evaluation, recall, a batch of requests) uses every core.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np

from dsrhn.atomic import remove_stale, swap_into_place, temp_path
from dsrhn.config import IndexConfig
from dsrhn.contracts import (ID_BYTES_FILE, ID_OFFSETS_FILE, INDEX_DIR, INDEX_FILE, INDEX_FORMAT, LABELS_FILE,
                             MANIFEST_FILE, IndexMismatch, check_manifest, code_dim, model_fingerprint, sha256_file,
                             stored_bytes)

MAX_GPU_K = 2048  # faiss GPU binary search limit
BATCH_QUERIES = 64  # from this many queries in one search call, faiss uses every core


def search_threads(n_queries: int) -> int:
    return 1 if n_queries < BATCH_QUERIES else max(1, os.cpu_count() or 1)


def pad_codes(codes: np.ndarray, width: int) -> np.ndarray:
    """Packed codes zero-padded on the right to `width` bytes (distances are unchanged)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.shape[1] == width:
        return codes
    if codes.shape[1] > width:
        raise ValueError(f"codes are {codes.shape[1]} bytes wide, wider than the index's {width}")
    out = np.zeros((codes.shape[0], width), np.uint8)
    out[:, :codes.shape[1]] = codes
    return out


def check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != code_dim(bits) // 8:
        raise ValueError(f"codes must be uint8 [N, {code_dim(bits) // 8}] for {bits} bits, got {codes.shape}")
    return codes


def build_index(codes: np.ndarray, bits: int, config: IndexConfig = IndexConfig()) -> faiss.IndexBinary:
    """A faiss binary index of `codes` at the stored width (trained first when the factory needs it)."""
    stored = pad_codes(check_codes(codes, bits), stored_bytes(bits))
    index = faiss.index_binary_factory(stored.shape[1] * 8, config.factory)
    if not index.is_trained:
        nlist = getattr(index, "nlist", 1)  # the factory returns the concrete type (IndexBinaryIVF, ...)
        if len(stored) < nlist:
            raise ValueError(f"index factory {config.factory!r} needs at least {nlist} gallery codes to train, got "
                             f"{len(stored)}; use fewer lists or BFlat")
        faiss.omp_set_num_threads(search_threads(len(stored)))
        index.train(stored)
    index.add(stored)
    return apply_search_params(index, config.search_params)


def apply_search_params(index: faiss.IndexBinary, params: dict) -> faiss.IndexBinary:
    # no faiss.downcast_IndexBinary: its proxy does not own the index (the original would be freed under it);
    # index_binary_factory and read_index_binary return the concrete type already
    if "nprobe" in params and hasattr(index, "nprobe"):
        index.nprobe = int(params["nprobe"])
    if "ef_search" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["ef_search"])
    return index


def recall_at_k(exact_d: np.ndarray, approx_d: np.ndarray, approx_rows: np.ndarray) -> float:
    """Tie-aware recall@k from the distances of both result lists: an approximate hit counts when it is
    strictly closer than the exact k-th distance, or at that distance while the exact list has room for it."""
    hits = 0
    for e, a, r in zip(exact_d, approx_d, approx_rows):
        a = a[r >= 0]  # an approximate search may return fewer than k hits
        kth = e[-1]
        closer = int(np.sum(a < kth))
        hits += min(closer, int(np.sum(e < kth))) + min(int(np.sum(a == kth)), int(np.sum(e == kth)))
    return hits / max(1, exact_d.size)


def measure_recall(index: faiss.IndexBinary, codes: np.ndarray, bits: int, config: IndexConfig,
                   seed: int = 0) -> dict:
    """recall@k of `index` against exact search, on a sample of gallery codes used as queries."""
    stored = pad_codes(codes, stored_bytes(bits))
    rng = np.random.default_rng(seed)
    sample = stored[rng.choice(len(stored), min(config.recall_queries, len(stored)), replace=False)]
    k = min(config.recall_k, len(stored))
    exact = faiss.IndexBinaryFlat(stored.shape[1] * 8)
    exact.add(stored)
    faiss.omp_set_num_threads(search_threads(len(sample)))
    d_exact, _ = exact.search(sample, k)
    t0 = time.perf_counter()
    d_approx, r_approx = index.search(sample, k)
    ms = (time.perf_counter() - t0) * 1000 / len(sample)
    return {"k": k, "queries": len(sample), "recall": round(recall_at_k(d_exact, d_approx, r_approx), 4),
            "ms_per_query_batched": round(ms, 4)}


# ---------------------------------------------------------------- columnar id map

def pack_labels(rows_labels: Sequence[Sequence[str]], label_names: Sequence[str]) -> np.ndarray:
    pos = {n: i for i, n in enumerate(label_names)}
    dense = np.zeros((len(rows_labels), len(label_names)), bool)
    for r, names in enumerate(rows_labels):
        for n in names:
            dense[r, pos[n]] = True
    return np.packbits(dense, axis=1) if len(label_names) else np.zeros((len(rows_labels), 0), np.uint8)


def label_names_for(rows_labels: Sequence[Sequence[str]], known: Sequence[str] = ()) -> list[str]:
    """The model's label names, then any other name the rows use, in first-seen order."""
    names, seen = list(known), set(known)
    for labels in rows_labels:
        for n in labels:
            if n not in seen:
                seen.add(n)
                names.append(n)
    return names


@dataclass
class IdMap:
    """Row -> id and labels, read from memory-mapped columns (a 10M gallery is not loaded into Python)."""

    blob: np.ndarray  # uint8, memmap
    offsets: np.ndarray  # uint64 [count + 1], memmap
    labels: np.ndarray  # uint8 [count, ceil(L / 8)], memmap
    label_names: list[str]

    @classmethod
    def open(cls, index_dir: str, label_names: list[str]) -> "IdMap":
        blob_path = os.path.join(index_dir, ID_BYTES_FILE)
        blob = (np.memmap(blob_path, np.uint8, mode="r") if os.path.getsize(blob_path)
                else np.zeros(0, np.uint8))  # numpy cannot map an empty file
        return cls(blob, np.load(os.path.join(index_dir, ID_OFFSETS_FILE), mmap_mode="r"),
                   np.load(os.path.join(index_dir, LABELS_FILE), mmap_mode="r"), list(label_names))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def id(self, row: int) -> str:
        return self.blob[int(self.offsets[row]):int(self.offsets[row + 1])].tobytes().decode("utf-8")

    def row_labels(self, row: int) -> list[str]:
        if not self.label_names:
            return []
        bits = np.unpackbits(np.asarray(self.labels[row]))[:len(self.label_names)]
        return [self.label_names[i] for i in np.flatnonzero(bits)]

    def row(self, row: int) -> dict:
        return {"id": self.id(row), "labels": self.row_labels(row)}


def write_id_map(directory: str, ids: Sequence[str], label_bits: np.ndarray) -> None:
    encoded = [i.encode("utf-8") for i in ids]
    offsets = np.zeros(len(encoded) + 1, np.uint64)
    np.cumsum(np.fromiter(map(len, encoded), np.uint64, len(encoded)), out=offsets[1:])
    with open(os.path.join(directory, ID_BYTES_FILE), "wb") as f:
        f.write(b"".join(encoded))
    np.save(os.path.join(directory, ID_OFFSETS_FILE), offsets)
    np.save(os.path.join(directory, LABELS_FILE), np.ascontiguousarray(label_bits, np.uint8))


# ---------------------------------------------------------------- writing

def write_gallery(final: str, codes: np.ndarray, ids: Sequence[str], label_bits: np.ndarray,
                  label_names: Sequence[str], bits: int, binding: dict,
                  config: IndexConfig = IndexConfig()) -> dict:
    """Write index, id map and manifest to `final` atomically (temp folder + rename). `binding` holds the
    model's fingerprint, version and code layout; the Milvus backend writes the codes to its collection."""
    codes = check_codes(codes, bits)
    if not (len(ids) == len(codes) == len(label_bits)):
        raise ValueError(f"{len(ids)} ids and {len(label_bits)} label rows for {len(codes)} codes")
    if len(set(ids)) != len(ids):
        raise ValueError("gallery ids must be unique")
    remove_stale(final)
    tmp = temp_path(final)
    os.makedirs(tmp)
    try:
        manifest = {
            "format": INDEX_FORMAT, "backend": config.backend, **binding,
            "bits": bits, "code_bytes": code_dim(bits) // 8, "stored_bytes": stored_bytes(bits),
            "faiss_dim": stored_bytes(bits) * 8, "factory": config.factory, "search_params": config.search_params,
            "exact": config.exact, "count": int(len(codes)), "label_names": list(label_names),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_id_map(tmp, ids, label_bits)
        files = [ID_BYTES_FILE, ID_OFFSETS_FILE, LABELS_FILE]
        if config.backend == "milvus":
            from serving.milvus import write_collection

            manifest.update(factory=config.milvus_index_type, search_params={}, faiss_dim=code_dim(bits),
                            stored_bytes=code_dim(bits) // 8)
            manifest["milvus"] = write_collection(config, codes, bits, manifest)
        else:
            index = build_index(codes, bits, config)
            if not config.exact:
                manifest["recall"] = measure_recall(index, codes, bits, config)
            faiss.write_index_binary(index, os.path.join(tmp, INDEX_FILE))
            files.insert(0, INDEX_FILE)
        manifest["files"] = {name: sha256_file(os.path.join(tmp, name)) for name in files}
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
        swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def model_binding(model_dir: str, model_meta: dict) -> dict:
    return {"model_fingerprint": model_fingerprint(model_dir),
            "model_version": os.path.basename(os.path.normpath(model_dir)),
            "code_layout": model_meta.get("code_layout", "")}


def write_index(model_dir: str, codes: np.ndarray, rows: list[dict], model_meta: dict,
                out_dir: str | None = None, config: IndexConfig = IndexConfig()) -> dict:
    """Rows {"id", "labels"} and their codes -> model_dir/index (or out_dir), bound to the model."""
    if len(rows) != len(codes):
        raise ValueError(f"{len(rows)} id rows for {len(codes)} codes")
    rows_labels = [r.get("labels", []) for r in rows]
    names = label_names_for(rows_labels, model_meta.get("label_names", []))
    return write_gallery(out_dir or os.path.join(model_dir, INDEX_DIR), codes, [r["id"] for r in rows],
                         pack_labels(rows_labels, names), names, int(model_meta["bits"]),
                         model_binding(model_dir, model_meta), config)


# ---------------------------------------------------------------- reading

@dataclass
class GalleryIndex:
    index: faiss.IndexBinary
    ids: IdMap
    manifest: dict

    @property
    def count(self) -> int:
        return self.index.ntotal

    def search(self, codes: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32 [n, k], rows int64 [n, k]; -1 where fewer hits) for packed query codes;
        k is capped at count."""
        codes = pad_codes(codes, int(self.manifest["stored_bytes"]))
        faiss.omp_set_num_threads(threads or search_threads(len(codes)))
        return self.index.search(codes, min(k, self.count))

    def row(self, row: int) -> dict:
        return self.ids.row(row)

    def query(self, codes: np.ndarray, k: int) -> list[dict]:
        return query_results(self, *self.search(codes, k))


def query_results(gallery, dist: np.ndarray, rows: np.ndarray) -> list[dict]:
    """Each query's {"ids", "distances", "labels"}, nearest first, from a search of any gallery with an
    `ids` map (faiss or Milvus): ids and labels are read for the top-k rows only."""
    out = []
    for d_row, r_row in zip(dist, rows):
        keep = r_row >= 0
        hits = [gallery.ids.row(int(r)) for r in r_row[keep]]
        out.append({"ids": [h["id"] for h in hits], "distances": [int(x) for x in d_row[keep]],
                    "labels": [h["labels"] for h in hits]})
    return out


def read_manifest(index_dir: str) -> dict:
    path = os.path.join(index_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        raise IndexMismatch(f"no index manifest at {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexMismatch(f"{path} is not valid JSON ({e}); rebuild the index with `dsrhn index`") from None


def open_gallery(index_dir: str, manifest: dict):
    """The gallery a verified manifest describes: a GalleryIndex (faiss) or a MilvusGallery."""
    ids = IdMap.open(index_dir, manifest.get("label_names", []))
    if len(ids) != manifest["count"]:
        raise IndexMismatch(f"id map holds {len(ids)} rows; manifest says {manifest['count']}")
    if manifest.get("backend", "faiss") == "milvus":
        from serving.milvus import MilvusGallery

        return MilvusGallery.open(manifest, ids)
    index = apply_search_params(faiss.read_index_binary(os.path.join(index_dir, INDEX_FILE)),
                                manifest.get("search_params", {}))
    if index.ntotal != manifest["count"] or index.d != manifest["faiss_dim"]:
        raise IndexMismatch(f"index holds {index.ntotal} codes of d={index.d}; manifest says "
                            f"{manifest['count']} of d={manifest['faiss_dim']}")
    return GalleryIndex(index, ids, manifest)


def load_index(model_dir: str, model_meta: dict, index_dir: str | None = None):
    """Load and verify: refuses an index whose manifest does not match the model beside it."""
    d = index_dir or os.path.join(model_dir, INDEX_DIR)
    manifest = read_manifest(d)
    check_manifest(manifest, model_dir, model_meta, d)
    return open_gallery(d, manifest)
