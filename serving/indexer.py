"""Batch gallery indexing as a Beam job: images -> codes (SavedModel `encode_hr`) -> gallery index.

Encoding is the parallel part and runs on any Beam runner; its output is JSON-lines
shards of (id, code, labels[, local]) or (id, error); `local` (hex): a multi-level model's local codes in
their stored layout (dsrhn/multilevel.py). Assembling the index is a single-machine step that
reads the shards, orders rows by id and writes the index atomically beside the model (faiss files,
or a Milvus collection plus the id map). Every item is indexed or rejected with its reason.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

from dsrhn.atomic import remove_stale, temp_path
from dsrhn.beam_options import pipeline_options
from dsrhn.beam_options import run as run_pipeline
from dsrhn.config import IndexConfig
from dsrhn.progress import Progress
from serving.index import write_index


@dataclass(frozen=True)
class GalleryItem:
    id: str
    path: str  # "" when the image bytes come with the item (Examples)
    labels: tuple[str, ...]
    data: bytes = b""
    error: str = ""


def gallery_from_examples(examples_uri: str, split: str = "gallery") -> list[GalleryItem]:
    from dsrhn.records import DatasetInfo, read_split_raw

    info = DatasetInfo.read(examples_uri)
    progress = Progress("index: read gallery", info.counts.get(split), "records")
    items = []
    for rec in read_split_raw(examples_uri, split, info).as_numpy_iterator():
        names = tuple(n for n, v in zip(info.label_names, rec["labels"]) if v)
        items.append(GalleryItem(rec["id"].decode("utf-8"), "", names, bytes(rec["hr"])))
        progress.update()
    progress.finish()
    return items


def gallery_from_source(spec: dict) -> list[GalleryItem]:
    """A list file + image root ({"kind": "list", ...}) or a directory ({"kind": "directory", "root"}):
    every listed image goes to the gallery; bad lines are reported like bad images."""
    from dsrhn import sources

    if spec["kind"] == "list":
        items, n = sources.parse_list_file(
            spec["list_file"], spec["image_root"], allow_outside_root=spec.get("allow_outside_root", False)
        )
        names = spec.get("label_names") or sources.default_label_names(n)
    elif spec["kind"] == "directory":
        src = sources.directory_source(spec["root"], query_per_class=0, train_per_class=0)
        items, names = src.items, src.label_names
    else:
        raise ValueError(
            f"gallery source kind must be 'list', 'directory' or an Examples artifact, got {spec['kind']!r}"
        )
    return [
        GalleryItem(it.id, it.ref, tuple(nm for nm, v in zip(names, it.labels) if v), error=it.error) for it in items
    ]


class EncodeGallery(beam.DoFn):
    """(index, a batch of GalleryItems) -> the batch's JSON rows {"id", "code" (hex), "labels"} or {"id", "error"}
    in <shards>/codes-<index>.jsonl, written by the DoFn itself (Beam's file sinks write nothing on the Dask
    runner); yields the number of rows written."""

    def __init__(
        self,
        model_dir: str,
        hr_size: int,
        total: int = 0,
        share: float = 1.0,
        bits: int = 0,
        local: bool = False,
        previews: bool = True,
        shards: str = "",
    ):
        self.shards = shards
        self.model_dir, self.hr_size, self.total, self.share = model_dir, hr_size, total, share
        self.bits, self.local = bits, local  # local: the model returns local codes (export metadata `local`)
        self.previews = previews  # a small JPEG of every indexed image, for people to see the hits
        self._encode = None

    def setup(self):
        import tensorflow as tf

        self._encode = tf.saved_model.load(self.model_dir).signatures["encode_hr"]
        self._progress = Progress("index", self.total or None, "images", share=self.share, worker=self.share < 1)

    def process(self, indexed: tuple[int, list[GalleryItem]]):
        index, batch = indexed
        rows = list(self.rows(batch))
        path = os.path.join(self.shards, f"codes-{index:06d}.jsonl")
        with open(path + ".tmp", "w") as f:
            f.write("".join(r + "\n" for r in rows))
        os.replace(path + ".tmp", path)  # a retried bundle writes the same file again, whole
        yield len(rows)

    def rows(self, batch: list[GalleryItem]):
        from dsrhn.images import decode_image, gallery_png, load_image, preview_jpeg

        good, images, previews = [], [], []
        for it in batch:
            if it.error:
                yield json.dumps({"id": it.id, "path": it.path, "error": it.error})
                continue
            try:  # any failure on one item (unreadable, undecodable, a decoder's own bug) rejects that item only
                img = load_image(it.path) if not it.data else (decode_image(it.data) if self.previews else None)
                png = it.data or gallery_png(img, self.hr_size)
                previews.append(preview_jpeg(img) if self.previews else b"")
            except Exception as e:
                yield json.dumps({"id": it.id, "path": it.path, "error": _reason(e)})
                continue
            images.append(png)
            good.append(it)
        for it, preview, result in zip(good, previews, self._codes(images)):
            if isinstance(result, str):
                yield json.dumps({"id": it.id, "path": it.path, "error": result})
            else:
                code, local = result
                row = {"id": it.id, "code": code.tobytes().hex(), "labels": list(it.labels)}
                if self.previews:
                    row["preview"] = base64.b64encode(preview).decode("ascii")
                if local is not None:
                    row["local"] = local.tobytes().hex()
                yield json.dumps(row)
        self._progress.update(len(batch))

    def _codes(self, images: list[bytes]) -> list:
        """(code, local codes or None) of each image of a batch; when the graph's decoder refuses the batch,
        each image alone, so only the bad one is rejected (with the decoder's reason)."""
        import tensorflow as tf

        from serving.batching import graph_reason

        if not images:
            return []
        try:
            return self._encoded(images)
        except tf.errors.OpError:
            if len(images) == 1:
                raise
        out = []
        for png in images:
            try:
                out += self._encoded([png])
            except tf.errors.OpError as e:
                out.append(f"the model could not decode the image: {graph_reason(e)}")
        return out

    def _encoded(self, images: list[bytes]) -> list:
        from dsrhn.multilevel import stored_local

        out = {k: v.numpy() for k, v in self._encode(images=np.array(images, dtype=object)).items()}
        local = stored_local(out, self.bits) if self.local else [None] * len(images)
        return list(zip(out["codes"], local))

    def teardown(self):
        if getattr(self, "_progress", None):
            self._progress.finish()


def _reason(e: Exception) -> str:
    from dsrhn.images import ImageError

    return str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"


@dataclass
class IndexSummary:
    index_dir: str
    manifest: dict
    rejected: list[dict]

    def console(self) -> str:
        m = self.manifest
        where = (
            f"Milvus {m['milvus']['collection']} at {m['milvus']['uri']} ({m['factory']})"
            if m["backend"] == "milvus"
            else f"faiss {m['factory']}, stored d={m['faiss_dim']}"
        )
        lines = [
            f"index: {m['count']} codes ({m['bits']} bits, {where}) -> {self.index_dir}; {len(self.rejected)} rejected"
        ]
        if "local" in m:
            lines.append(
                f"  local codes: {m['local']['count']} regions per image in {m['local']['file']} (re-ranking: "
                '"rerank": {"shortlist": N} in :search)'
            )
        if "previews" in m:
            p = m["previews"]
            lines.append(
                f"  previews: {p['count']} JPEGs (longer side <= {p['max_side']} px), "
                f"{p['bytes'] / 1024:.0f} KiB, {p['bytes'] / max(1, p['count']) / 1024:.1f} KiB per image, "
                f"in {p['file']}"
            )
        if "recall" in m:
            r = m["recall"]
            lines.append(
                f"  approximate index: recall@{r['k']} {r['recall']:.4f} against exact search "
                f"({r['queries']} gallery codes as queries)"
            )
        lines += [f"  {r.get('path') or r['id']}: {r['error']}" for r in self.rejected[:10]]
        return "\n".join(lines)


@dataclass
class Encoded:
    """What the encode job gave: one row per distinct id (in id order) and every refused item with its reason."""

    rows: list[dict]  # {"id", "code" (hex), "labels"[, "local" (hex)][, "preview" (base64)]}
    rejected: list[dict]  # {"id", "path", "error"}

    def gallery_rows(self, meta: dict) -> list:
        """The rows as serving.update.GalleryRow (codes, local codes and previews decoded)."""
        from serving.update import GalleryRow

        shape = (int(meta["local"]["count"]), 2, -1) if "local" in meta else None
        return [
            GalleryRow(
                r["id"],
                np.frombuffer(bytes.fromhex(r["code"]), np.uint8),
                tuple(r["labels"]),
                np.frombuffer(bytes.fromhex(r["local"]), np.uint8).reshape(shape) if shape else None,
                base64.b64decode(r["preview"]) if "preview" in r else None,
            )
            for r in self.rows
        ]


def encode_items(
    model_dir: str,
    items: list[GalleryItem],
    beam_args: list[str] | None = None,
    batch_size: int = 128,
    beam_pipeline: beam.Pipeline | None = None,
    previews: bool = True,
) -> Encoded:
    """Encode `items` with the model at model_dir on a Beam runner; every item comes back encoded or rejected."""
    from dsrhn.contracts import read_metadata
    from dsrhn.progress import beam_workers

    meta = read_metadata(model_dir)
    share = 1.0 / beam_workers(beam_args)
    shards_home = os.path.join(tempfile.gettempdir(), "dsrhn-codes")
    remove_stale(shards_home)  # code shards of a killed `dsrhn index`
    shards = temp_path(shards_home)
    os.makedirs(shards)
    try:
        pipeline = beam_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
        batches = [(i // batch_size, items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        # one chain, batched here: runner-portable (no BatchElements, no file sink)
        (
            pipeline
            | "Batches" >> beam.Create(batches, reshuffle=False)
            | "Encode"
            >> beam.ParDo(
                EncodeGallery(
                    model_dir,
                    int(meta["hr_size"]),
                    len(items),
                    share,
                    int(meta["bits"]),
                    "local" in meta,
                    previews,
                    shards,
                )
            )
        )
        run_pipeline(pipeline)
        rows, rejected = [], []
        for path in sorted(glob.glob(os.path.join(shards, "codes-*.jsonl"))):
            with open(path) as f:
                for line in f:
                    rec = json.loads(line)
                    (rejected if "error" in rec else rows).append(rec)
    finally:
        shutil.rmtree(shards, ignore_errors=True)
    rows.sort(key=lambda r: r["id"])
    unique = []
    for r in rows:  # one row per id: a repeated id is rejected, not indexed twice
        if unique and unique[-1]["id"] == r["id"]:
            rejected.append({"id": r["id"], "path": "", "error": "duplicate gallery id (the first one is indexed)"})
        else:
            unique.append(r)
    if len(unique) + len(rejected) != len(items):  # every item is indexed or rejected, never dropped
        raise RuntimeError(f"{len(items)} gallery items in, {len(unique)} encoded + {len(rejected)} rejected out")
    return Encoded(unique, sorted(rejected, key=lambda r: r["id"]))


def run_indexing(
    model_dir: str,
    items: list[GalleryItem],
    out_dir: str | None = None,
    beam_args: list[str] | None = None,
    batch_size: int = 128,
    beam_pipeline: beam.Pipeline | None = None,
    config: IndexConfig = IndexConfig(),
    previews: bool = True,
) -> IndexSummary:
    """Encode `items` with the model at model_dir and write model_dir/index (or out_dir); previews: store a
    small JPEG of every indexed image beside the index (served for people to see the hits). Another writer of
    the same index is refused (serving/update.py: index_lock)."""
    from dsrhn.contracts import INDEX_DIR, read_metadata
    from serving.update import REJECTED_FILE, index_lock

    meta = read_metadata(model_dir)
    index_dir = out_dir or os.path.join(model_dir, INDEX_DIR)
    with index_lock(index_dir):
        enc = encode_items(model_dir, items, beam_args, batch_size, beam_pipeline, previews)
        if not enc.rows:
            raise ValueError(f"no gallery image could be encoded ({len(enc.rejected)} rejected)")
        rows = enc.gallery_rows(meta)
        codes = np.array([r.code for r in rows], dtype=np.uint8)
        local = np.stack([r.local for r in rows]) if "local" in meta else None  # [N, R, 2, W] (dsrhn/multilevel.py)
        manifest = write_index(
            model_dir,
            codes,
            [{"id": r.id, "labels": list(r.labels)} for r in rows],
            meta,
            out_dir,
            config,
            local,
            [r.preview for r in rows] if previews else None,
            extra={REJECTED_FILE: json.dumps(enc.rejected, indent=2).encode()},
        )
    return IndexSummary(index_dir, manifest, enc.rejected)


def run_update(
    model_dir: str,
    adds: list[GalleryItem] = (),
    removes: list[str] = (),
    index_dir: str | None = None,
    beam_args: list[str] | None = None,
    batch_size: int = 128,
):
    """Add (or replace) `adds` and remove `removes` in the index of the model at model_dir: only the added photos
    are encoded (serving/update.py). Returns its UpdateReport."""
    from dsrhn.contracts import INDEX_DIR, MANIFEST_FILE, IndexMismatch, check_manifest, read_metadata
    from serving.index import read_manifest
    from serving.update import update_index

    meta = read_metadata(model_dir)
    index_dir = index_dir or os.path.join(model_dir, INDEX_DIR)
    if not os.path.exists(os.path.join(index_dir, MANIFEST_FILE)):
        raise IndexMismatch(f"no index at {index_dir} to update; build it first with `dsrhn index`")
    manifest = read_manifest(index_dir)
    check_manifest(manifest, model_dir, meta, index_dir)  # codes of this model only
    enc = (
        encode_items(model_dir, list(adds), beam_args, batch_size, previews=bool(manifest.get("previews")))
        if adds
        else Encoded([], [])
    )
    refused = [
        {"id": r["id"], "error": f"{r['path']}: {r['error']}" if r.get("path") else r["error"]} for r in enc.rejected
    ]
    return update_index(index_dir, enc.gallery_rows(meta), list(removes), extra_rejected=refused)
