"""Batch gallery indexing as a Beam job: images -> codes (SavedModel `encode_hr`) -> Faiss index.

Encoding is the parallel part and runs on any Beam runner; its output is JSON-lines
shards of (id, code, labels). Assembling the flat index is a single-machine step that
reads the shards, orders rows by id and writes the index atomically beside the model.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

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
    items = []
    for rec in read_split_raw(examples_uri, split, info).as_numpy_iterator():
        names = tuple(n for n, v in zip(info.label_names, rec["labels"]) if v)
        items.append(GalleryItem(rec["id"].decode("utf-8"), "", names, bytes(rec["hr"])))
    return items


def gallery_from_source(spec: dict) -> list[GalleryItem]:
    """A list file + image root ({"kind": "list", ...}) or a directory ({"kind": "directory", "root"}):
    every listed image goes to the gallery; bad lines are reported like bad images."""
    from components import sources

    if spec["kind"] == "list":
        items, n = sources.parse_list_file(spec["list_file"], spec["image_root"])
        names = spec.get("label_names") or [f"label_{i:02d}" for i in range(n)]
    elif spec["kind"] == "directory":
        src = sources.directory_source(spec["root"], query_per_class=0, train_per_class=0)
        items, names = src.items, src.label_names
    else:
        raise ValueError(f"gallery source kind must be 'list', 'directory' or an Examples artifact, got {spec['kind']!r}")
    return [GalleryItem(it.id, it.ref, tuple(nm for nm, v in zip(names, it.labels) if v), error=it.error) for it in items]


class EncodeGallery(beam.DoFn):
    """Batches of GalleryItems -> JSON rows {"id", "code" (hex), "labels"} or {"id", "error"}."""

    def __init__(self, model_dir: str, hr_size: int):
        self.model_dir, self.hr_size = model_dir, hr_size
        self._encode = None

    def setup(self):
        import tensorflow as tf

        self._encode = tf.saved_model.load(self.model_dir).signatures["encode_hr"]

    def process(self, batch: list[GalleryItem]):
        from components.images import ImageError, encode_png, load_image, prepare_hr

        good, images = [], []
        for it in batch:
            if it.error:
                yield json.dumps({"id": it.id, "path": it.path, "error": it.error})
                continue
            if it.data:
                images.append(it.data)
                good.append(it)
                continue
            try:
                images.append(encode_png(prepare_hr(load_image(it.path), self.hr_size)))
                good.append(it)
            except ImageError as e:
                yield json.dumps({"id": it.id, "path": it.path, "error": str(e)})
        if good:
            codes = self._encode(images=np.array(images, dtype=object))["codes"].numpy()
            for it, code in zip(good, codes):
                yield json.dumps({"id": it.id, "code": code.tobytes().hex(), "labels": list(it.labels)})


@dataclass
class IndexSummary:
    index_dir: str
    manifest: dict
    rejected: list[dict]

    def console(self) -> str:
        lines = [f"index: {self.manifest['count']} codes ({self.manifest['bits']} bits, faiss d={self.manifest['faiss_dim']}) "
                 f"-> {self.index_dir}; {len(self.rejected)} rejected"]
        lines += [f"  {r.get('path') or r['id']}: {r['error']}" for r in self.rejected[:10]]
        return "\n".join(lines)


def run_indexing(model_dir: str, items: list[GalleryItem], out_dir: str | None = None,
                 beam_args: list[str] | None = None, batch_size: int = 128,
                 beam_pipeline: beam.Pipeline | None = None) -> IndexSummary:
    """Encode `items` with the model at model_dir and write model_dir/index (or out_dir)."""
    from dsrhn.contracts import read_metadata

    meta = read_metadata(model_dir)
    shards = tempfile.mkdtemp(prefix="dsrhn-codes-")
    try:
        pipeline = beam_pipeline or beam.Pipeline(options=PipelineOptions(beam_args or ["--runner=DirectRunner"]))
        with pipeline as p:
            (p | "Gallery" >> beam.Create(items, reshuffle=False)
             | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
             | "Encode" >> beam.ParDo(EncodeGallery(model_dir, int(meta["hr_size"])))
             | "Write" >> beam.io.WriteToText(os.path.join(shards, "codes"), file_name_suffix=".jsonl"))
        rows, codes, rejected = [], [], []
        for path in sorted(glob.glob(os.path.join(shards, "codes*"))):
            with open(path) as f:
                for line in f:
                    rec = json.loads(line)
                    (rejected if "error" in rec else rows).append(rec)
        rows.sort(key=lambda r: r["id"])
        codes = np.array([np.frombuffer(bytes.fromhex(r["code"]), np.uint8) for r in rows], dtype=np.uint8)
        if not rows:
            raise ValueError(f"no gallery image could be encoded ({len(rejected)} rejected)")
        manifest = write_index(model_dir, codes, [{"id": r["id"], "labels": r["labels"]} for r in rows], meta, out_dir)
        index_dir = out_dir or os.path.join(model_dir, "index")
        with open(os.path.join(index_dir, "rejected.json"), "w") as f:
            json.dump(sorted(rejected, key=lambda r: r["id"]), f, indent=2)
        return IndexSummary(index_dir, manifest, rejected)
    finally:
        shutil.rmtree(shards, ignore_errors=True)
