"""The gallery index: packed codes in a faiss binary index, a columnar id map, and a manifest that binds
both to the SavedModel that made the codes (dsrhn/contracts.py).

Layout inside a model version directory (TF Serving layout `<base>/<name>/<version>/`):
    index/gallery.faissindex   faiss.write_index_binary; codes zero-padded to a fast-kernel width
    index/ids.bin              gallery ids, UTF-8, concatenated  } memory-mapped: only the top-k rows
    index/ids.offsets.npy      uint64 [count + 1]               } of a search are read
    index/labels.npy           uint8 [count, ceil(L / 8)] label bits over manifest.label_names
    index/local.npy            multi-level models: uint8 [count, R, 2, W] local codes + bit selection,
                               memory-mapped; read for a re-ranked shortlist only (dsrhn/multilevel.py)
    index/previews.bin         each row's preview JPEG, packed (+ previews.offsets.npy), memory-mapped
    index/manifest.json        model fingerprint, widths, factory, count, checksums

Thread policy: faiss's OpenMP thread count is per calling thread. A search of few queries (a served
request) runs on one thread: requests are concurrent already, and OpenMP threads spinning against each
other cost 10x on a busy machine (docs/serving.md). A search of many queries (batch evaluation, recall,
a batch of requests) uses every core.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from dsrhn.atomic import atomic_dir
from dsrhn.config import FAISS_DEVICES, IndexConfig
from dsrhn.contracts import (
    ID_BYTES_FILE,
    ID_OFFSETS_FILE,
    INDEX_DIR,
    INDEX_FILE,
    INDEX_FORMAT,
    LABELS_FILE,
    LOCAL_FILE,
    MANIFEST_FILE,
    PREVIEW_OFFSETS_FILE,
    PREVIEW_SIDE,
    PREVIEWS_FILE,
    IndexMismatch,
    check_manifest,
    code_bytes,
    code_dim,
    model_fingerprint,
    sha256_file,
    stored_bytes,
)
from dsrhn.multilevel import rerank as rerank_rows
from dsrhn.multilevel import stored_local, word_bytes
from serving.filters import Where, allowed_rows
from serving.hits import query_results

MAX_GPU_K = 2048  # faiss GPU binary search limit


def gpu_available() -> bool:
    """faiss was built with GPU support (the faiss-gpu-cu12 wheel: `scripts/setup.sh --gpu`) and sees a GPU."""
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def on_device(index: faiss.IndexBinary, device: str, log=None) -> tuple[faiss.IndexBinary, bool]:
    """The index to search with: a GpuIndexBinaryFlat copy of an exact index when `device` is "gpu" or "auto" and a
    GPU is there; else the CPU index, with a line saying why ("gpu" asked for on a machine without one falls back
    to the CPU rather than refuse to serve). Returns (index, on_gpu)."""
    if device not in FAISS_DEVICES:
        raise ValueError(f"faiss device must be one of {FAISS_DEVICES}, got {device!r}")
    if device == "cpu":
        return index, False
    if not gpu_available():
        if device == "gpu" and log:
            log(
                "faiss GPU index asked for, but "
                + (
                    "this faiss has no GPU support (install it with `bash scripts/setup.sh --gpu`)"
                    if not hasattr(faiss, "GpuIndexBinaryFlat")
                    else "no GPU is visible"
                )
                + ": searching on the CPU"
            )
        return index, False
    if type(index) is not faiss.IndexBinaryFlat:
        if log:
            log(
                f"faiss has a GPU binary index for exact search only; this index ({type(index).__name__}) "
                "stays on the CPU"
            )
        return index, False
    res = faiss.StandardGpuResources()
    gpu = faiss.GpuIndexBinaryFlat(res, index)
    gpu.referenced_resources = res  # keep the resources alive as long as the index
    return gpu, True


BATCH_QUERIES = 64  # from this many queries in one search call, faiss uses every core


DEEP_K = 256  # from this k (a re-ranking's shortlist), exact search counts distances instead of keeping a heap


def exact_counting_search(index: faiss.IndexBinaryFlat, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """IndexBinaryFlat's search by counting sort (faiss hammings_knn_mc, what `use_heap = False` selects) on the
    index's own codes, without changing the shared index: faster than the heap for deep searches (docs/results.md,
    "Multi-level codes"), the same distances and rows (tested)."""
    dist = np.empty((len(codes), k), np.int32)
    rows = np.empty((len(codes), k), np.int64)
    faiss.hammings_knn_mc(
        faiss.swig_ptr(codes),
        index.xb.data(),
        len(codes),
        index.ntotal,
        k,
        index.code_size,
        faiss.swig_ptr(dist),
        faiss.swig_ptr(rows),
    )
    return dist, rows


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
    out[:, : codes.shape[1]] = codes
    return out


def check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != code_bytes(bits):
        raise ValueError(f"codes must be uint8 [N, {code_bytes(bits)}] for {bits} bits, got {codes.shape}")
    return codes


def build_index(codes: np.ndarray, bits: int, config: IndexConfig = IndexConfig()) -> faiss.IndexBinary:
    """A faiss binary index of `codes` at the stored width (trained first when the factory needs it)."""
    stored = pad_codes(check_codes(codes, bits), stored_bytes(bits))
    index = faiss.index_binary_factory(stored.shape[1] * 8, config.factory)
    if not index.is_trained:
        nlist = getattr(index, "nlist", 1)  # the factory returns the concrete type (IndexBinaryIVF, ...)
        if len(stored) < nlist:
            raise ValueError(
                f"index factory {config.factory!r} needs at least {nlist} gallery codes to train, got "
                f"{len(stored)}; use fewer lists or BFlat"
            )
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


def measure_recall(index: faiss.IndexBinary, codes: np.ndarray, bits: int, config: IndexConfig, seed: int = 0) -> dict:
    """recall@k of `index` against exact search, on a sample of gallery codes used as queries."""
    stored = pad_codes(codes, stored_bytes(bits))
    rng = np.random.default_rng(seed)
    sample = stored[rng.choice(len(stored), min(config.recall_queries, len(stored)), replace=False)]
    k = min(config.recall_k, len(stored))
    exact = faiss.IndexBinaryFlat(stored.shape[1] * 8)
    exact.add(stored)
    exact, _ = on_device(exact, config.device, print)
    faiss.omp_set_num_threads(search_threads(len(sample)))
    d_exact, _ = exact.search(sample, k)
    t0 = time.perf_counter()
    d_approx, r_approx = index.search(sample, k)
    ms = (time.perf_counter() - t0) * 1000 / len(sample)
    return {
        "k": k,
        "queries": len(sample),
        "recall": round(recall_at_k(d_exact, d_approx, r_approx), 4),
        "ms_per_query_batched": round(ms, 4),
    }


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
    def open(cls, index_dir: str, label_names: list[str]) -> IdMap:
        blob, offsets = open_packed(index_dir, ID_BYTES_FILE, ID_OFFSETS_FILE)
        return cls(blob, offsets, np.load(os.path.join(index_dir, LABELS_FILE), mmap_mode="r"), list(label_names))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def id(self, row: int) -> str:
        return self.blob[int(self.offsets[row]) : int(self.offsets[row + 1])].tobytes().decode("utf-8")

    def row_labels(self, row: int) -> list[str]:
        if not self.label_names:
            return []
        bits = np.unpackbits(np.asarray(self.labels[row]))[: len(self.label_names)]
        return [self.label_names[i] for i in np.flatnonzero(bits)]

    def row(self, row: int) -> dict:
        return {"id": self.id(row), "labels": self.row_labels(row)}


def write_packed(directory: str, blob_file: str, offsets_file: str, items: Sequence[bytes]) -> int:
    """Byte strings packed into one file, with uint64 offsets [count + 1] (item r: blob[off[r]:off[r+1]]);
    returns the blob's size."""
    offsets = np.zeros(len(items) + 1, np.uint64)
    np.cumsum(np.fromiter(map(len, items), np.uint64, len(items)), out=offsets[1:])
    with open(os.path.join(directory, blob_file), "wb") as f:
        f.write(b"".join(items))
    np.save(os.path.join(directory, offsets_file), offsets)
    return int(offsets[-1])


def open_packed(directory: str, blob_file: str, offsets_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(blob, offsets), both memory-mapped (an empty blob is an empty array: numpy cannot map an empty file)."""
    path = os.path.join(directory, blob_file)
    blob = np.memmap(path, np.uint8, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint8)
    return blob, np.load(os.path.join(directory, offsets_file), mmap_mode="r")


def write_id_map(directory: str, ids: Sequence[str], label_bits: np.ndarray) -> None:
    write_packed(directory, ID_BYTES_FILE, ID_OFFSETS_FILE, [i.encode("utf-8") for i in ids])
    np.save(os.path.join(directory, LABELS_FILE), np.ascontiguousarray(label_bits, np.uint8))


@dataclass
class Previews:
    """Row -> its preview JPEG, read from the memory-mapped packed file."""

    blob: np.ndarray
    offsets: np.ndarray

    @classmethod
    def open(cls, index_dir: str, manifest: dict) -> Previews | None:
        spec = manifest.get("previews")
        if not spec:
            return None
        blob, offsets = open_packed(index_dir, spec["file"], spec["offsets"])
        if len(offsets) != manifest["count"] + 1 or int(offsets[-1]) != len(blob):
            raise IndexMismatch(
                f"{spec['file']} does not hold {manifest['count']} previews as its offsets say; "
                "rebuild the index with `dsrhn index`"
            )
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, row: int) -> bytes | None:
        if not 0 <= row < len(self):
            return None
        return self.blob[int(self.offsets[row]) : int(self.offsets[row + 1])].tobytes()


# ---------------------------------------------------------------- writing


def write_gallery(
    final: str,
    codes: np.ndarray,
    ids: Sequence[str],
    label_bits: np.ndarray,
    label_names: Sequence[str],
    bits: int,
    binding: dict,
    config: IndexConfig = IndexConfig(),
    local: np.ndarray | None = None,
    local_layout: dict | None = None,
    previews: Sequence[bytes] | None = None,
    generation: int = 0,
    extra: dict[str, bytes] | None = None,
) -> dict:
    """Write index, id map and manifest to `final`, whole or not at all (dsrhn.atomic.atomic_dir); returns the
    manifest. binding: the model's fingerprint, version and code layout (model_binding). local: a multi-level
    model's local codes [N, R, 2, W] with their layout (export metadata `local`, dsrhn/multilevel.py).
    previews: each row's JPEG (dsrhn.images.preview_jpeg); None: none kept. generation: 0 for a full index,
    one more at each update (serving/update.py), named by preview URLs. extra: other files (name -> bytes),
    not checksummed. local.npy and previews.bin are written beside the index whatever the backend."""
    codes = check_codes(codes, bits)
    check_gallery(codes, ids, label_bits, bits, local, local_layout, previews)
    with atomic_dir(final) as work:
        manifest = gallery_manifest(codes, label_names, bits, binding, config, generation)
        write_id_map(work, ids, label_bits)
        files = [ID_BYTES_FILE, ID_OFFSETS_FILE, LABELS_FILE]
        if local is not None:
            files += write_local(work, local, local_layout, bits, manifest)
        if previews is not None:
            files += write_previews(work, previews, manifest)
        files = write_codes(work, codes, bits, config, manifest) + files
        manifest["files"] = {name: sha256_file(os.path.join(work, name)) for name in files}
        for name, data in (extra or {}).items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data)
        with open(os.path.join(work, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
    return manifest


def check_gallery(
    codes: np.ndarray,
    ids: Sequence[str],
    label_bits: np.ndarray,
    bits: int,
    local: np.ndarray | None,
    local_layout: dict | None,
    previews: Sequence[bytes] | None,
) -> None:
    """ValueError unless every column of a gallery has one row per code (and the ids are unique)."""
    if not (len(ids) == len(codes) == len(label_bits)):
        raise ValueError(f"{len(ids)} ids and {len(label_bits)} label rows for {len(codes)} codes")
    if (local is None) != (local_layout is None):
        raise ValueError("a multi-level model's index needs both its local codes and their layout")
    if local is not None:
        shape = (len(codes), local_layout["count"], 2, word_bytes(bits))
        if local.shape[0] != shape[0] or local.shape[1:] != shape[1:]:
            raise ValueError(f"local codes must be uint8 [{', '.join(map(str, shape))}], got {local.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError("gallery ids must be unique")
    if previews is not None and len(previews) != len(codes):
        raise ValueError(f"{len(previews)} previews for {len(codes)} codes")


def gallery_manifest(
    codes: np.ndarray, label_names: Sequence[str], bits: int, binding: dict, config: IndexConfig, generation: int
) -> dict:
    """The manifest's fields known before anything is written (dsrhn/contracts.py checks them on load)."""
    return {
        "format": INDEX_FORMAT,
        "backend": config.backend,
        **binding,
        "bits": bits,
        "code_bytes": code_bytes(bits),
        "stored_bytes": stored_bytes(bits),
        "faiss_dim": stored_bytes(bits) * 8,
        "factory": config.factory,
        "search_params": config.search_params,
        "exact": config.exact,
        "count": int(len(codes)),
        "label_names": list(label_names),
        "generation": int(generation),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_local(work: str, local: np.ndarray, layout: dict, bits: int, manifest: dict) -> list[str]:
    """A multi-level model's local codes -> local.npy (and the manifest's `local`); returns the file written."""
    np.save(os.path.join(work, LOCAL_FILE), np.ascontiguousarray(local, np.uint8))
    manifest["local"] = {
        "file": LOCAL_FILE,
        "count": int(layout["count"]),
        "word_bytes": word_bytes(bits),
        "bits": bits,
        "rerank_weight": float(layout["rerank_weight"]),
    }
    return [LOCAL_FILE]


def write_previews(work: str, previews: Sequence[bytes], manifest: dict) -> list[str]:
    """Each row's preview JPEG -> previews.bin + offsets (and the manifest's `previews`); returns the files."""
    size = write_packed(work, PREVIEWS_FILE, PREVIEW_OFFSETS_FILE, list(previews))
    manifest["previews"] = {
        "file": PREVIEWS_FILE,
        "offsets": PREVIEW_OFFSETS_FILE,
        "format": "jpeg",
        "max_side": PREVIEW_SIDE,
        "count": int(len(previews)),
        "bytes": size,
    }
    return [PREVIEWS_FILE, PREVIEW_OFFSETS_FILE]


def write_codes(work: str, codes: np.ndarray, bits: int, config: IndexConfig, manifest: dict) -> list[str]:
    """The codes into the backend: a faiss index file in `work` (returned, to be checksummed), or the Milvus
    collection (nothing in `work`); the manifest records how they are searched."""
    if config.backend == "milvus":
        from serving.milvus import write_collection

        manifest.update(
            factory=config.milvus_index_type, search_params={}, faiss_dim=code_dim(bits), stored_bytes=code_bytes(bits)
        )
        manifest["milvus"] = write_collection(config, codes, bits, manifest)
        return []
    index = build_index(codes, bits, config)
    if not config.exact:
        manifest["recall"] = measure_recall(index, codes, bits, config)
    faiss.write_index_binary(index, os.path.join(work, INDEX_FILE))
    return [INDEX_FILE]


def model_binding(model_dir: str, model_meta: dict) -> dict:
    return {
        "model_fingerprint": model_fingerprint(model_dir),
        "model_version": os.path.basename(os.path.normpath(model_dir)),
        "code_layout": model_meta.get("code_layout", ""),
    }


def write_index(
    model_dir: str,
    codes: np.ndarray,
    rows: list[dict],
    model_meta: dict,
    out_dir: str | None = None,
    config: IndexConfig = IndexConfig(),
    local: np.ndarray | None = None,
    previews: Sequence[bytes] | None = None,
    extra: dict[str, bytes] | None = None,
) -> dict:
    """Rows {"id", "labels"} and their codes (and a multi-level model's local codes, dsrhn/multilevel.py)
    -> model_dir/index (or out_dir), bound to the model."""
    if len(rows) != len(codes):
        raise ValueError(f"{len(rows)} id rows for {len(codes)} codes")
    if "local" in model_meta and local is None:
        raise ValueError("this model has local codes (export metadata `local`); index them too")
    rows_labels = [r.get("labels", []) for r in rows]
    names = label_names_for(rows_labels, model_meta.get("label_names", []))
    return write_gallery(
        out_dir or os.path.join(model_dir, INDEX_DIR),
        codes,
        [r["id"] for r in rows],
        pack_labels(rows_labels, names),
        names,
        int(model_meta["bits"]),
        model_binding(model_dir, model_meta),
        config,
        local,
        model_meta.get("local"),
        previews,
        extra=extra,
    )


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Rerank:
    """A :search request's two-stage search: the global codes' top `shortlist`, re-ranked by
    d_global + weight * d_local (dsrhn/multilevel.py)."""

    shortlist: int
    weight: float


def stored_codes(index: faiss.IndexBinary, code_bytes: int | None = None) -> np.ndarray:
    """The packed codes a faiss binary index holds ([:, :code_bytes]: without the index's zero padding)."""
    n = index.ntotal
    if isinstance(index, faiss.IndexBinaryFlat):
        codes = faiss.vector_to_array(index.xb).reshape(n, index.code_size)
    else:
        if isinstance(index, faiss.IndexBinaryIVF):
            index.make_direct_map()
        codes = index.reconstruct_n(0, n) if n else np.zeros((0, index.code_size), np.uint8)
    return np.ascontiguousarray(codes[:, : code_bytes or index.code_size], np.uint8)


FILTER_CACHE = 16  # filters whose rows and exact sub-index a gallery keeps


@dataclass
class GalleryIndex:
    index: faiss.IndexBinary
    ids: IdMap
    manifest: dict
    local: np.ndarray | None = None  # multi-level: uint8 [count, R, 2, W], memory-mapped
    previews: Previews | None = None  # each row's preview JPEG, memory-mapped
    on_gpu: bool = False  # index is a faiss GpuIndexBinaryFlat (k <= MAX_GPU_K)
    cpu: faiss.IndexBinary | None = None  # the CPU index a GPU copy was made from (filtered searches read it)
    _subsets: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _subsets_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def count(self) -> int:
        return self.index.ntotal

    def subset(self, where: Where) -> tuple[np.ndarray, faiss.IndexBinaryFlat]:
        """The rows a filter allows and an exact index of their codes (kept for the last FILTER_CACHE filters)."""
        with self._subsets_lock:
            if where in self._subsets:
                self._subsets.move_to_end(where)
                return self._subsets[where]
        rows = allowed_rows(self.ids, where)
        source = self.cpu or self.index
        sub = faiss.IndexBinaryFlat(source.d)
        if len(rows):
            sub.add(np.ascontiguousarray(stored_codes(source)[rows]))
        with self._subsets_lock:
            self._subsets[where] = (rows, sub)
            while len(self._subsets) > FILTER_CACHE:
                self._subsets.popitem(last=False)
        return rows, sub

    def search(
        self, codes: np.ndarray, k: int, threads: int | None = None, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32 [n, k], rows int64 [n, k]; -1 where fewer hits) for packed query codes;
        k is capped at count. where: only rows the filter allows, searched exactly."""
        codes = pad_codes(codes, int(self.manifest["stored_bytes"]))
        faiss.omp_set_num_threads(threads or search_threads(len(codes)))
        if where:
            rows, sub = self.subset(where)
            if not len(rows):
                return np.full((len(codes), 0), -1, np.int32), np.full((len(codes), 0), -1, np.int64)
            dist, hit = sub.search(codes, min(k, len(rows)))
            return dist, np.where(hit >= 0, rows[np.maximum(hit, 0)], -1)
        k = min(k, self.count)
        if self.on_gpu:
            if k > MAX_GPU_K:
                raise ValueError(
                    f"a search of depth {k} on the GPU index: faiss's GPU binary search allows k <= "
                    f"{MAX_GPU_K} (serve with --faiss-device cpu for deeper searches)"
                )
            return self.index.search(codes, k)
        if k >= DEEP_K and type(self.index) is faiss.IndexBinaryFlat:
            return exact_counting_search(self.index, codes, k)
        return self.index.search(codes, k)

    def row(self, row: int) -> dict:
        return self.ids.row(row)

    def query(self, codes: np.ndarray, k: int) -> list[dict]:
        return query_results(self, *self.search(codes, k))


def search_depth(k: int, rerank: Rerank | None) -> int:
    """How many hits the global search must return: k, or the shortlist to re-rank."""
    return max(k, rerank.shortlist) if rerank else k


def answer_results(
    gallery, outputs: dict, dist: np.ndarray, rows: np.ndarray, k: int, rerank: Rerank | None
) -> list[dict]:
    """The top-k of a search that went search_depth(k, rerank) deep: the global order, or the shortlist
    re-ranked with the queries' local codes (`outputs`: the signature's local_* outputs) against the
    gallery's, each hit with its global "distances", "local_distances" and "rerank_distances"."""
    if rerank is None:
        return query_results(gallery, dist[:, :k], rows[:, :k])
    bits = int(gallery.manifest["bits"])
    q_local = stored_local(outputs, bits)
    r, d_global, d_local, combined = rerank_rows(
        dist[:, : rerank.shortlist], rows[:, : rerank.shortlist], q_local, gallery.local, bits, rerank.weight, k
    )
    return query_results(gallery, d_global, r, {"local_distances": d_local, "rerank_distances": combined})


def read_manifest(index_dir: str) -> dict:
    path = os.path.join(index_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        raise IndexMismatch(f"no index manifest at {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexMismatch(f"{path} is not valid JSON ({e}); rebuild the index with `dsrhn index`") from None


def open_gallery(index_dir: str, manifest: dict, device: str = "cpu", log=None, mmap: bool = False):
    """The gallery a verified manifest describes: a GalleryIndex (faiss, on `device`) or a MilvusGallery.
    mmap: faiss reads the codes in place from the file (IO_FLAG_MMAP_IFC, zero-copy), so server processes on
    one machine share one copy through the page cache; the file must then be replaced by rename, never
    rewritten in place (as `dsrhn index` does)."""
    ids = IdMap.open(index_dir, manifest.get("label_names", []))
    if len(ids) != manifest["count"]:
        raise IndexMismatch(f"id map holds {len(ids)} rows; manifest says {manifest['count']}")
    local = open_local(index_dir, manifest)
    previews = Previews.open(index_dir, manifest)
    if manifest.get("backend", "faiss") == "milvus":
        from serving.milvus import MilvusGallery

        gallery = MilvusGallery.open(manifest, ids)
        gallery.local, gallery.previews = local, previews
        return gallery
    flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
    index = apply_search_params(
        faiss.read_index_binary(os.path.join(index_dir, INDEX_FILE), flags), manifest.get("search_params", {})
    )
    if index.ntotal != manifest["count"] or index.d != manifest["faiss_dim"]:
        raise IndexMismatch(
            f"index holds {index.ntotal} codes of d={index.d}; manifest says "
            f"{manifest['count']} of d={manifest['faiss_dim']}"
        )
    served, gpu = on_device(index, device, log)
    return GalleryIndex(served, ids, manifest, local, previews, gpu, index if gpu else None)


def open_local(index_dir: str, manifest: dict) -> np.ndarray | None:
    """A multi-level index's local codes, memory-mapped and checked against the manifest; None without."""
    spec = manifest.get("local")
    if not spec:
        return None
    local = np.load(os.path.join(index_dir, spec["file"]), mmap_mode="r")
    expected = (manifest["count"], spec["count"], 2, spec["word_bytes"])
    if local.shape != expected or local.dtype != np.uint8:
        raise IndexMismatch(f"{spec['file']} holds {local.dtype} {local.shape}; the manifest says uint8 {expected}")
    return local


LOAD_TRIES = 3  # an index swapped while it is read is read again


def load_index(
    model_dir: str, model_meta: dict, index_dir: str | None = None, device: str = "cpu", log=None, mmap: bool = False
):
    """Load and verify: refuses an index whose manifest does not match the model beside it. device: where faiss
    searches ("cpu", "gpu" or "auto": the GPU when there is one); mmap: see open_gallery. Files are opened by
    path, so the folder must be the same one (inode) before and after: an update swapped in meanwhile
    (serving/update.py) means reading again, never serving a mix of two generations."""
    d = index_dir or os.path.join(model_dir, INDEX_DIR)
    for _ in range(LOAD_TRIES):
        before = _inode(d)
        manifest = read_manifest(d)
        check_manifest(manifest, model_dir, model_meta, d)
        gallery = open_gallery(d, manifest, device, log, mmap)
        if _inode(d) == before:
            return gallery
    raise IndexMismatch(f"index at {d} was replaced {LOAD_TRIES} times while being read; retry")


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1
