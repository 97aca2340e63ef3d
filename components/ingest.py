"""Ingestion as a Beam job: SourceItems -> HR/LR TFRecords per role + a rejection report.

Runs on DirectRunner here and on any Beam runner at scale (pipeline options pass through).
`run_ingest` is what `dsrhn ingest` calls; `pipeline.tfx_components.DsrhnIngest` wraps it.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
import zlib
from collections import Counter
from dataclasses import asdict, dataclass

import apache_beam as beam
from PIL import Image

from components.masks import item_mask
from dsrhn import sources
from dsrhn.atomic import atomic_dir
from dsrhn.beam_options import pipeline_options
from dsrhn.beam_options import run as run_pipeline
from dsrhn.config import LRConfig
from dsrhn.images import ImageError, encode_png, load_image, make_lr, photo_view, prepare_hr, source_image
from dsrhn.records import SPLITS, DatasetInfo, make_example, split_dir
from dsrhn.sources import build_source  # a spec {"kind": one of dsrhn.sources.SOURCES, ...} -> Source

REPORT_FILE = "ingest_report.json"


def source_pixels(ref: str):
    """The RGB PIL image an item refers to (file path or Fashion-MNIST reference)."""
    if ref.startswith("fmnist:"):
        return Image.fromarray(sources.fashion_mnist_pixels(ref), "L").convert("RGB")
    return load_image(ref)


class ProcessItem(beam.DoFn):
    """Decode, prepare HR, generate LR; emit each record keyed by the shard it goes to, or a rejection.

    One output, keyed (runner-portable: Beam's Dask runner drops tagged outputs' routing):
    (RECORD, role, shard) -> (id, serialized Example); (REJECTED, "", 0) -> {"id", "path", "reason"};
    (WRITTEN, "", bucket) -> 1, once per item whose records were all made."""

    RECORD = "record"
    REJECTED = "rejected"
    WRITTEN = "written"

    def __init__(
        self,
        hr_size: int,
        lr: LRConfig,
        masks: bool = False,
        total: int = 0,
        share: float = 1.0,
        source_side: int = 0,
        views: dict | None = None,
        shards: dict | None = None,
    ):
        self.hr_size, self.lr, self.masks, self.total, self.share = hr_size, lr, masks, total, share
        self.source_side, self.views = source_side, dict(views or {})
        self.shards = dict(shards or {})  # role -> shard count

    def setup(self):
        from dsrhn.progress import Progress

        self._progress = Progress("ingest", self.total or None, "images", share=self.share, worker=self.share < 1)

    def teardown(self):
        if getattr(self, "_progress", None):
            self._progress.finish()

    def process(self, item: sources.SourceItem):
        if getattr(self, "_progress", None):
            self._progress.update()
        if item.error:
            yield (self.REJECTED, "", 0), {"id": item.id, "path": item.ref, "reason": item.error}
            return
        try:
            records = self._records(item)
        except Exception as e:  # dead letter: any failure on one item rejects that item, the job goes on
            reason = str(e) if isinstance(e, ImageError) else f"could not process the image ({type(e).__name__}: {e})"
            yield (self.REJECTED, "", 0), {"id": item.id, "path": item.ref, "reason": reason}
            return
        for role, record in records:
            yield (self.RECORD, role, shard_of(item.id, self.shards.get(role, 1))), (item.id, record)
        yield (self.WRITTEN, "", shard_of(item.id, COUNT_GROUPS)), 1

    def _records(self, item: sources.SourceItem) -> list:
        from dsrhn.config import Views

        img = source_pixels(item.ref)
        if item.view >= 0:  # a random view of the photo (instance datasets), seeded by its id
            hr = photo_view(img, self.source_side, self.hr_size, Views(**self.views), item.id, self.lr.seed)
        else:
            hr = prepare_hr(img, self.hr_size)
        lr = make_lr(hr, self.lr, item.id)
        source_png = None
        if self.source_side and "train" in item.splits:  # training draws its own views of the photo
            source_png = encode_png(source_image(img, self.source_side))
        mask_png = None
        if self.masks:  # the same crop and resize as HR, nearest-neighbour
            try:
                mask = item_mask(item, img.size)
            except (ValueError, TypeError, KeyError) as e:
                raise ImageError(f"unreadable segmentation: {e}") from None
            mask_png = encode_png(prepare_hr(mask, self.hr_size, Image.NEAREST))
        hr_png, lr_png = encode_png(hr), encode_png(lr)
        return [
            (
                role,
                make_example(
                    item.id, role, hr_png, lr_png, list(item.labels), mask_png, source_png if role == "train" else None
                ).SerializeToString(deterministic=True),
            )
            for role in item.splits
        ]


def write_report(path: str, source: sources.Source, rejected: list[dict], per_split: dict, written: int) -> dict:
    """The report: counts in = written + rejected, always (both counted); every rejection with its reason."""
    import tensorflow as tf

    rejected = sorted(rejected, key=lambda r: r["id"])
    n_in = len(source.items)
    if written + len(rejected) != n_in:
        raise RuntimeError(f"ingest lost items: {n_in} in, {written} written + {len(rejected)} rejected")
    report = {
        "source": source.name,
        "in": n_in,
        "written": written,
        "rejected": len(rejected),
        "per_split": {s: int(per_split.get(s, 0)) for s in SPLITS},
        "reasons": dict(Counter(_reason_kind(r["reason"]) for r in rejected).most_common()),
        "rejections": rejected,
    }
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(report, indent=2))
    return report


def _reason_kind(reason: str) -> str:
    """A grouping key for the console summary: the reason without its location prefix
    ("train.txt line 7: ", "x.json: ") or its details, numbers as N."""
    parts = reason.split(": ")
    if len(parts) > 1 and (" line " in parts[0] or parts[0].endswith(".json")):
        parts = parts[1:]
    return re.sub(r"\d+", "N", parts[0])


RECORDS_PER_SHARD = 1024  # a shard's records are grouped on one worker and written sorted by id
COUNT_GROUPS = 64  # the written-item markers are counted in this many groups, not all on one worker


def shard_of(item_id: str, shards: int) -> int:
    """The shard of an item's record: from its id (crc32, the same in every process), not from the runner's
    bundles, so that any runner writes the same files."""
    return zlib.crc32(item_id.encode("utf-8")) % max(1, shards)


def shard_counts(source: sources.Source) -> dict[str, int]:
    """Shards per role, from the items each role is given (known before any image is read)."""
    per_role = Counter(role for it in source.items for role in it.splits)
    return {role: max(1, -(-per_role.get(role, 0) // RECORDS_PER_SHARD)) for role in SPLITS}


def shard_path(examples_uri: str, role: str, shard: int, shards: int) -> str:
    return os.path.join(split_dir(examples_uri, role), f"data_tfrecord-{shard:05d}-of-{shards:05d}.gz")


def write_tfrecords(path: str, records: list[bytes]) -> None:
    """GZIP TFRecords at `path`, written under a temp name and renamed (a killed worker leaves no part file)."""
    import tensorflow as tf

    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.TFRecordWriter(tmp, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for r in records:
            w.write(r)
    tf.io.gfile.rename(tmp, path, overwrite=True)


class WriteGroup(beam.DoFn):
    """One group of ProcessItem's output -> what the report needs: a shard written (sorted by id), the
    rejections, or the count of items written."""

    def __init__(self, examples_uri: str, shards: dict):
        self.examples_uri, self.shards = examples_uri, dict(shards)

    def process(self, group):
        (kind, role, shard), values = group
        values = list(values)
        if kind == ProcessItem.RECORD:
            values.sort(key=lambda v: v[0])
            write_tfrecords(shard_path(self.examples_uri, role, shard, self.shards[role]), [r for _, r in values])
            yield {"role": role, "shard": shard, "records": len(values)}
        elif kind == ProcessItem.REJECTED:
            yield {"rejected": values}
        else:
            yield {"written": sum(values)}


def finish_report(report_path: str, source: sources.Source, examples_uri: str, shards: dict, parts: list[dict]) -> dict:
    """The report from every group's part; an empty shard file for each shard no record went to (each role's
    files are then exactly its -of-N set)."""
    written_shards = {(p["role"], p["shard"]) for p in parts if "role" in p}
    for role, n in shards.items():
        for shard in range(n):
            if (role, shard) not in written_shards:
                write_tfrecords(shard_path(examples_uri, role, shard, n), [])
    per_split = Counter()
    for p in parts:
        if "role" in p:
            per_split[p["role"]] += p["records"]
    rejected = [r for p in parts for r in p.get("rejected", [])]
    written = sum(p.get("written", 0) for p in parts)
    return write_report(report_path, source, rejected, dict(per_split), written)


def build_ingest_pipeline(
    p: beam.Pipeline,
    source: sources.Source,
    hr_size: int,
    lr: LRConfig,
    examples_uri: str,
    report_path: str,
    share: float = 1.0,
) -> None:
    """Add the ingestion transforms to pipeline `p`: one chain ending in the report, with no sink, tagged
    output, side input or finish_bundle output, so that every runner runs all of it (Beam's Dask runner
    computes only the last transform and drops what finish_bundle emits) and writes the same files."""
    shards = shard_counts(source)
    for role in SPLITS:
        tf_makedirs(split_dir(examples_uri, role))
    (
        p
        | "Items" >> beam.Create(source.items, reshuffle=False)
        | "Process"
        >> beam.ParDo(
            ProcessItem(hr_size, lr, source.masks, len(source.items), share, source.source_side, source.views, shards)
        )
        | "ByShard" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(WriteGroup(examples_uri, shards))
        | "One" >> beam.Map(lambda part: (None, part))
        | "All" >> beam.GroupByKey()
        | "Report" >> beam.Map(lambda kv: finish_report(report_path, source, examples_uri, shards, list(kv[1])))
    )


def tf_makedirs(path: str) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(path)


@dataclass
class IngestSummary:
    examples_uri: str
    report_path: str
    report: dict

    def console(self) -> str:
        r = self.report
        lines = [
            f"ingest: {r['in']} in = {r['written']} written + {r['rejected']} rejected "
            f"({', '.join(f'{k}: {v}' for k, v in r['per_split'].items())})"
        ]
        for reason, n in r["reasons"].items():
            lines.append(f"  rejected {n:>6} x {reason}")
        for rej in r["rejections"][:10]:
            lines.append(f"    {rej['path'] or rej['id']}: {rej['reason']}")
        if r["rejected"] > 10:
            lines.append(f"    ... {r['rejected'] - 10} more in {self.report_path}")
        return "\n".join(lines)


def run_ingest(
    spec: dict,
    examples_uri: str,
    hr_size: int,
    lr: LRConfig,
    report_uri: str | None = None,
    beam_pipeline: beam.Pipeline | None = None,
    beam_args: list[str] | None = None,
) -> IngestSummary:
    """Ingest `spec` into an Examples directory at `examples_uri` (Split-train/query/gallery), written whole
    or not at all (dsrhn.atomic.atomic_dir): a killed run leaves the previous output (records,
    dsrhn_dataset.json, report) intact. The report goes into the Examples unless `report_uri` is elsewhere."""
    import tensorflow as tf

    source = build_source(spec)
    if source.name == "photos" and not source.source_side:  # views are drawn from the photo at 4x the HR side
        source.source_side = 4 * hr_size
    report_in_examples = report_uri is None or report_uri.rstrip("/") == examples_uri.rstrip("/")
    with atomic_dir(examples_uri) as work:
        report_dir = work if report_in_examples else report_uri
        tf.io.gfile.makedirs(report_dir)
        report = ingest_into(work, os.path.join(report_dir, REPORT_FILE), source, hr_size, lr, beam_pipeline, beam_args)
    report_path = os.path.join(examples_uri if report_in_examples else report_uri, REPORT_FILE)
    return IngestSummary(examples_uri, report_path, report)


def ingest_into(
    work: str,
    report_path: str,
    source: sources.Source,
    hr_size: int,
    lr: LRConfig,
    beam_pipeline: beam.Pipeline | None,
    beam_args: list[str] | None,
) -> dict:
    """Run the Beam job that writes `source`'s records into `work` and the report to `report_path`, then
    dsrhn_dataset.json beside the records; returns the report."""
    import tensorflow as tf

    from dsrhn.progress import beam_workers

    pipeline = beam_pipeline or beam.Pipeline(options=pipeline_options(beam_args))
    build_ingest_pipeline(pipeline, source, hr_size, lr, work, report_path, share=1.0 / beam_workers(beam_args))
    run_pipeline(pipeline)
    with tf.io.gfile.GFile(report_path) as f:
        report = json.loads(f.read())
    DatasetInfo(
        source=source.name,
        label_names=source.label_names,
        hr_size=hr_size,
        lr_size=hr_size // lr.scale,
        scale=lr.scale,
        lr=asdict(lr),
        counts=report["per_split"],
        multi_label=any(sum(it.labels) > 1 for it in source.items),
        masks=source.masks,
        source_side=source.source_side,
    ).write(work)
    return report


def derive_query_set(examples_uri: str, out_uri: str, lr: LRConfig) -> DatasetInfo:
    """A stored, repeatable query set: the query split of `examples_uri` with its LR partners made anew
    from each HR by `lr` (deterministic per (lr.seed, id), dsrhn.images.make_lr), written whole or not at
    all (atomic_dir) as an Examples directory holding Split-query and dsrhn_dataset.json."""
    info = DatasetInfo.read(examples_uri)
    with atomic_dir(out_uri) as work:
        n = write_query_records(examples_uri, info, work, lr)
        DatasetInfo(
            source=info.source,
            label_names=info.label_names,
            hr_size=info.hr_size,
            lr_size=info.hr_size // lr.scale,
            scale=lr.scale,
            lr=asdict(lr),
            counts={"query": n},
            multi_label=info.multi_label,
            masks=info.masks,
        ).write(work)
    return DatasetInfo.read(out_uri)


def write_query_records(examples_uri: str, info: DatasetInfo, work: str, lr: LRConfig) -> int:
    """The query records of `examples_uri` with new LR partners, as one shard in `work`; returns their count."""
    import tensorflow as tf

    from dsrhn.records import read_split_raw

    tf.io.gfile.makedirs(split_dir(work, "query"))
    n = 0
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(split_dir(work, "query"), "data_tfrecord-00000-of-00001.gz"), options) as w:
        for rec in read_split_raw(examples_uri, "query", info).as_numpy_iterator():
            item_id = rec["id"].decode("utf-8")
            hr = Image.open(io.BytesIO(rec["hr"])).convert("RGB")
            lr_png = encode_png(make_lr(hr, lr, item_id))
            w.write(
                make_example(
                    item_id,
                    "query",
                    bytes(rec["hr"]),
                    lr_png,
                    [int(x) for x in rec["labels"]],
                    bytes(rec["mask"]) if info.masks else None,
                ).SerializeToString(deterministic=True)
            )
            n += 1
    return n
