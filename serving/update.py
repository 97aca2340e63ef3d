"""A gallery that changes: add, replace and remove photos of an index without encoding the rest.

An update reads the current generation (codes, ids, labels, local codes, previews), applies the changes and
writes the next generation with serving.index.write_gallery: rows in id order, as `dsrhn index` writes them,
so every answer equals a full re-index of the same gallery; the new folder is swapped in atomically
(dsrhn/atomic.py), so a reader sees one generation or the next, and a writer killed mid-way leaves the old
one valid (a re-run does the update again). Writers of one index hold an exclusive lock (index_lock).
Cost: one copy of the gallery's bytes per update and no encoding of unchanged photos (docs/serving.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from dsrhn.config import IndexConfig
from dsrhn.contracts import ID_BYTES_FILE, ID_OFFSETS_FILE, INDEX_FILE, LABELS_FILE, MANIFEST_FILE, IndexMismatch
from serving.index import label_names_for, open_packed, read_manifest, stored_codes, write_gallery

REJECTED_FILE = "rejected.json"  # every item an index run or update refused, with its reason
LOCK_WAIT_S = 60.0  # how long a waiting writer (the service) waits for another writer


class IndexBusy(ValueError):
    """Another writer holds the index's lock (a refused request, reported in one line like bad input)."""


@dataclass(frozen=True)
class GalleryRow:
    """One photo to add (or replace: an id the gallery has), as the encoder gave it."""

    id: str
    code: np.ndarray  # uint8 [code bytes]
    labels: tuple[str, ...] = ()
    local: np.ndarray | None = None  # multi-level: uint8 [R, 2, W] (dsrhn/multilevel.py)
    preview: bytes | None = None  # JPEG (dsrhn.images.preview_jpeg)


@dataclass
class Columns:
    """A whole generation, in row order."""

    ids: list[str]
    label_names: list[str]
    labels: np.ndarray  # bool [N, len(label_names)]: row r carries label j
    codes: np.ndarray  # uint8 [N, code bytes]
    local: np.ndarray | None
    previews: list[bytes] | None


@dataclass
class UpdateReport:
    index_dir: str
    generation: int
    count: int
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"id", "error"}
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "count": self.count,
            "added": self.added,
            "replaced": self.replaced,
            "removed": self.removed,
            "rejected": self.rejected,
        }

    def console(self) -> str:
        lines = [
            f"index: generation {self.generation}, {self.count} photos -> {self.index_dir}: "
            f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.removed)} removed, "
            f"{len(self.rejected)} rejected ({self.seconds:.2f} s)"
        ]
        lines += [f"  {r['id']}: {r['error']}" for r in self.rejected[:10]]
        if len(self.rejected) > 10:
            lines.append(f"  ... and {len(self.rejected) - 10} more ({REJECTED_FILE} in the index folder)")
        return "\n".join(lines)


@contextmanager
def index_lock(index_dir: str, wait_s: float = 0.0) -> Iterator[None]:
    """The exclusive write lock of an index: a flock on the folder that holds it (the index folder itself is
    swapped, and no lock file is left behind); refused with IndexBusy if another writer holds it for longer
    than wait_s."""
    parent = os.path.dirname(os.path.abspath(index_dir))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusy(
                        f"another `dsrhn index` or update is writing {index_dir}; wait for it to "
                        "finish, then run this again"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- reading a generation


def milvus_codes(manifest: dict) -> np.ndarray:
    """The codes of a Milvus collection, in row order."""
    from serving.milvus import INSERT_BATCH, connect

    spec, n, width = manifest["milvus"], int(manifest["count"]), int(manifest["code_bytes"])
    client = connect(spec["uri"])
    try:
        out = np.zeros((n, width), np.uint8)
        for start in range(0, n, INSERT_BATCH):
            rows = client.query(
                spec["collection"],
                filter=f"row >= {start} and row < {start + INSERT_BATCH}",
                output_fields=["row", "code"],
            )
            for r in rows:
                code = r["code"]
                out[int(r["row"])] = np.frombuffer(code[0] if isinstance(code, list) else code, np.uint8)[:width]
        return out
    finally:
        client.close()


def _unpack(blob: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    data, off = blob.tobytes(), offsets.tolist()
    return [data[a:b] for a, b in zip(off, off[1:])]


def read_columns(index_dir: str, manifest: dict) -> Columns:
    """Everything the generation at index_dir holds (its manifest already checked against its model)."""
    ids = [b.decode("utf-8") for b in _unpack(*open_packed(index_dir, ID_BYTES_FILE, ID_OFFSETS_FILE))]
    names = list(manifest.get("label_names", []))
    bits = np.load(os.path.join(index_dir, LABELS_FILE))
    labels = np.unpackbits(bits, axis=1)[:, : len(names)] if len(names) else np.zeros((len(ids), 0), np.uint8)
    labels = labels.astype(bool)
    if manifest.get("backend", "faiss") == "milvus":
        codes = milvus_codes(manifest)
    else:
        codes = stored_codes(faiss.read_index_binary(os.path.join(index_dir, INDEX_FILE)), int(manifest["code_bytes"]))
    local = np.load(os.path.join(index_dir, manifest["local"]["file"])) if manifest.get("local") else None
    previews = None
    if manifest.get("previews"):
        p = manifest["previews"]
        previews = _unpack(*open_packed(index_dir, p["file"], p["offsets"]))
    if not (len(ids) == len(labels) == len(codes) == int(manifest["count"])):
        raise IndexMismatch(
            f"index at {index_dir}: {len(ids)} ids, {len(codes)} codes, manifest count "
            f"{manifest['count']}; rebuild it with `dsrhn index`"
        )
    return Columns(ids, names, labels, codes, local, previews)


# ---------------------------------------------------------------- applying changes


def check_row(row: GalleryRow, manifest: dict) -> str:
    """Why `row` cannot go into this index ('' when it can)."""
    if not isinstance(row.id, str) or not row.id or len(row.id.encode("utf-8")) > 4096:
        return "an id must be a non-empty string of at most 4096 bytes"
    if row.code.dtype != np.uint8 or row.code.shape != (int(manifest["code_bytes"]),):
        return f"code must be uint8 [{manifest['code_bytes']}] for {manifest['bits']} bits, got {row.code.shape}"
    if manifest.get("local") and row.local is None:
        return "this index stores local codes (a multi-level model); the row has none"
    if manifest.get("previews") and row.preview is None:
        return "this index stores previews; the row has none"
    return ""


def apply_changes(
    cur: Columns, adds: Sequence[GalleryRow], removes: Sequence[str], manifest: dict
) -> tuple[Columns, UpdateReport]:
    """The next generation: `removes` taken out, then `adds` put in (an id the gallery has is replaced), rows in
    id order. Every change is applied or rejected with its reason in the report."""
    report = UpdateReport("", int(manifest.get("generation", 0)) + 1, 0)
    pos = {i: r for r, i in enumerate(cur.ids)}
    gone: set[int] = set()
    for i in dict.fromkeys(removes):  # once each, in order
        if not isinstance(i, str) or i not in pos:
            report.rejected.append({"id": i, "error": "not in the gallery (nothing removed)"})
            continue
        gone.add(pos[i])
        report.removed.append(i)
    new: dict[str, GalleryRow] = {}
    for row in adds:
        reason = check_row(row, manifest) or ("given twice in one update (the first is used)" if row.id in new else "")
        if reason:
            report.rejected.append({"id": row.id, "error": reason})
            continue
        new[row.id] = row
        if row.id in pos and pos[row.id] not in gone:
            gone.add(pos[row.id])
            report.replaced.append(row.id)
        else:
            report.added.append(row.id)
    keep = np.array(sorted(set(range(len(cur.ids))) - gone), np.int64)
    rows = list(new.values())
    ids = [cur.ids[r] for r in keep] + [r.id for r in rows]
    order = np.array(sorted(range(len(ids)), key=ids.__getitem__), np.int64)
    width = cur.codes.shape[1]
    codes = np.concatenate([cur.codes[keep], np.array([r.code for r in rows], np.uint8).reshape(-1, width)])[order]
    local = None
    if cur.local is not None:
        new_local = np.array([r.local for r in rows], np.uint8).reshape(-1, *cur.local.shape[1:])
        local = np.concatenate([cur.local[keep], new_local])[order]
    previews = None
    if cur.previews is not None:
        both = [cur.previews[r] for r in keep] + [r.preview for r in rows]
        previews = [both[o] for o in order]
    names = label_names_for([r.labels for r in rows], cur.label_names)  # new names after the known ones
    dense = np.zeros((len(ids), len(names)), bool)
    dense[: len(keep), : len(cur.label_names)] = cur.labels[keep]
    pos = {n: j for j, n in enumerate(names)}
    for i, r in enumerate(rows, start=len(keep)):
        dense[i, [pos[n] for n in r.labels]] = True
    out = Columns([ids[o] for o in order], names, dense[order], codes, local, previews)
    report.count = len(out.ids)
    return out, report


def config_of(manifest: dict) -> IndexConfig:
    """The IndexConfig that wrote this manifest (an update writes the next generation the same way)."""
    if manifest.get("backend", "faiss") == "milvus":
        m = manifest["milvus"]
        return IndexConfig(
            backend="milvus",
            milvus_uri=m["uri"],
            milvus_collection=m["collection"].rpartition("__")[0],
            milvus_index_type=m["index_type"],
            nprobe=m.get("nprobe"),
        )
    params = manifest.get("search_params", {})
    return IndexConfig(factory=manifest["factory"], nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))


def read_rejected(index_dir: str) -> list[dict]:
    path = os.path.join(index_dir, REJECTED_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            return list(json.load(f))
    except (ValueError, TypeError):
        return []


def update_index(
    index_dir: str,
    adds: Sequence[GalleryRow] = (),
    removes: Sequence[str] = (),
    wait_s: float = 0.0,
    extra_rejected: Sequence[dict] = (),
) -> UpdateReport:
    """Apply adds (replacing ids the gallery has) and removes to the index at index_dir as one new generation.
    extra_rejected: items refused before this step (unreadable images), recorded with the update's own."""
    t0 = time.perf_counter()
    with index_lock(index_dir, wait_s):
        if not os.path.exists(os.path.join(index_dir, MANIFEST_FILE)):
            raise IndexMismatch(f"no index at {index_dir} to update; build it first with `dsrhn index`")
        manifest = read_manifest(index_dir)
        cur = read_columns(index_dir, manifest)
        nxt, report = apply_changes(cur, adds, removes, manifest)
        report.rejected = list(extra_rejected) + report.rejected
        if not (report.added or report.replaced or report.removed):  # nothing to write: the generation stays
            report.index_dir, report.generation, report.count = index_dir, report.generation - 1, len(cur.ids)
            report.seconds = time.perf_counter() - t0
            return report
        if not nxt.ids:
            raise ValueError(f"the update would leave {index_dir} empty; an index holds at least one photo")
        binding = {k: manifest[k] for k in ("model_fingerprint", "model_version", "code_layout")}
        present = set(nxt.ids)
        kept = [r for r in read_rejected(index_dir) if r.get("id") not in present]
        rejected = kept + [r for r in report.rejected if r.get("id") not in present]
        label_bits = np.packbits(nxt.labels, axis=1) if nxt.label_names else np.zeros((len(nxt.ids), 0), np.uint8)
        write_gallery(
            index_dir,
            nxt.codes,
            nxt.ids,
            label_bits,
            nxt.label_names,
            int(manifest["bits"]),
            binding,
            config_of(manifest),
            nxt.local,
            manifest.get("local"),
            nxt.previews,
            generation=report.generation,
            extra={REJECTED_FILE: json.dumps(rejected, indent=2).encode()},
        )
    report.index_dir, report.seconds = index_dir, time.perf_counter() - t0
    return report
