"""The dataset contract between ingestion and every later stage.

An Examples artifact written by ingestion has one directory per role
(`Split-train`, `Split-query`, `Split-gallery`) of GZIP TFRecords of tf.train.Example:

    id      bytes   stable id (source path, or a Fashion-MNIST reference)
    split   bytes   role: train | query | gallery
    hr      bytes   PNG, HR image (RGB, hr_size x hr_size)
    lr      bytes   PNG, LR partner (RGB, hr_size/scale square)
    labels  int64   multi-hot label vector, length num_labels
    mask    bytes   optional (DatasetInfo.masks): PNG, 8-bit, hr_size x hr_size, per-pixel class:
                    0 background, 1 + i for label i, 255 unknown (left out of the segmentation loss)
    source  bytes   instance datasets (DatasetInfo.source_side > 0), train records: PNG, the whole photo with
                    its shorter side at source_side (aspect kept), from which training draws its views
                    (dsrhn/views.py); empty elsewhere

and `dsrhn_dataset.json` at its root (label names, sizes, counts, multi_label, masks, source_side). In an
instance dataset (`dsrhn ingest photos`) every photo is its own label (one-hot over the photos), and the
query and gallery records are views of the photos.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass, field

SPLITS = ("train", "query", "gallery")
MASK_BACKGROUND, MASK_IGNORE = 0, 255  # mask pixel values besides 1 + label index
DATASET_INFO = "dsrhn_dataset.json"
TFRECORD_PATTERN = "data_tfrecord-*.gz"


@dataclass
class DatasetInfo:
    source: str
    label_names: list[str]
    hr_size: int
    lr_size: int
    scale: int
    lr: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    multi_label: bool | None = None  # images may carry several labels; None: written before this was recorded
    masks: bool = False  # every record has a pixel mask
    source_side: int = 0  # instance datasets: train records carry their photo (shorter side in px) for views

    @property
    def is_multi_label(self) -> bool:
        if self.multi_label is not None:
            return bool(self.multi_label)
        return self.source not in ("fashion-mnist", "directory")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def write(self, examples_uri: str) -> None:
        import tensorflow as tf

        with tf.io.gfile.GFile(os.path.join(examples_uri, DATASET_INFO), "w") as f:
            f.write(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, examples_uri: str) -> DatasetInfo:
        import tensorflow as tf

        path = os.path.join(examples_uri, DATASET_INFO)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"{path} not found: is {examples_uri} an Examples artifact written by `dsrhn ingest`?"
            )
        with tf.io.gfile.GFile(path) as f:
            return cls(**json.loads(f.read()))


def split_dir(examples_uri: str, split: str) -> str:
    return os.path.join(examples_uri, f"Split-{split}")


def split_files(examples_uri: str, split: str) -> list[str]:
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(split_dir(examples_uri, split), TFRECORD_PATTERN)))
    if not files:
        files = sorted(glob.glob(os.path.join(split_dir(examples_uri, split), "*")))
    if not files:
        raise FileNotFoundError(f"no TFRecords for split {split!r} under {examples_uri}")
    return files


def make_example(
    item_id: str,
    split: str,
    hr_png: bytes,
    lr_png: bytes,
    labels: list[int],
    mask_png: bytes | None = None,
    source_png: bytes | None = None,
):
    import tensorflow as tf

    def _bytes(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    feature = {
        "id": _bytes(item_id.encode("utf-8")),
        "split": _bytes(split.encode("utf-8")),
        "hr": _bytes(hr_png),
        "lr": _bytes(lr_png),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=list(labels))),
    }
    if mask_png is not None:
        feature["mask"] = _bytes(mask_png)
    if source_png is not None:
        feature["source"] = _bytes(source_png)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def feature_spec(num_labels: int, masks: bool = False, sources: bool = False) -> dict:
    import tensorflow as tf

    spec = {
        "id": tf.io.FixedLenFeature([], tf.string),
        "split": tf.io.FixedLenFeature([], tf.string),
        "hr": tf.io.FixedLenFeature([], tf.string),
        "lr": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.FixedLenFeature([num_labels], tf.int64),
    }
    if masks:
        spec["mask"] = tf.io.FixedLenFeature([], tf.string)
    if sources:
        spec["source"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec


def decode_pair(num_labels: int, hr_size: int, lr_size: int, masks: bool = False, sources: bool = False):
    """A tf.data map fn: serialized Example -> dict(id, hr, lr float32 in [0,1], labels float32
    [, mask int32 [hr_size, hr_size]] [, source: the photo's PNG bytes, empty outside train records])."""
    import tensorflow as tf

    spec = feature_spec(num_labels, masks, sources)

    def _decode(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        hr = tf.io.decode_png(ex["hr"], channels=3)
        lr = tf.io.decode_png(ex["lr"], channels=3)
        hr = tf.ensure_shape(tf.cast(hr, tf.float32) / 255.0, [hr_size, hr_size, 3])
        lr = tf.ensure_shape(tf.cast(lr, tf.float32) / 255.0, [lr_size, lr_size, 3])
        out = {"id": ex["id"], "hr": hr, "lr": lr, "labels": tf.cast(ex["labels"], tf.float32)}
        if masks:
            mask = tf.io.decode_png(ex["mask"], channels=1)[..., 0]
            out["mask"] = tf.ensure_shape(tf.cast(mask, tf.int32), [hr_size, hr_size])
        if sources:
            out["source"] = ex["source"]
        return out

    return _decode


def read_split(examples_uri: str, split: str, info: DatasetInfo | None = None):
    """A tf.data.Dataset of decoded records of one split, in file order."""
    import tensorflow as tf

    info = info or DatasetInfo.read(examples_uri)
    files = split_files(examples_uri, split)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return ds.map(
        decode_pair(info.num_labels, info.hr_size, info.lr_size, info.masks, info.source_side > 0),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def read_split_raw(examples_uri: str, split: str, info: DatasetInfo | None = None):
    """Undecoded records of one split (id, hr/lr PNG bytes, labels) as a tf.data.Dataset."""
    import tensorflow as tf

    info = info or DatasetInfo.read(examples_uri)
    spec = feature_spec(info.num_labels, info.masks, info.source_side > 0)
    ds = tf.data.TFRecordDataset(split_files(examples_uri, split), compression_type="GZIP")
    return ds.map(lambda s: tf.io.parse_single_example(s, spec))


def damaged_shard(examples_uri: str) -> str:
    """The first TFRecord file of an Examples folder that does not read to its end, as "path (what failed)"; "" if
    every one reads (read whole: only after a read has already failed)."""
    import tensorflow as tf

    for split in SPLITS:
        for path in split_files(examples_uri, split):
            try:
                for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                    pass
            except tf.errors.OpError as e:
                return f"{path} ({op_error_text(e)})"
    return ""


def op_error_text(e) -> str:
    """A TensorFlow op error's own words, without the graph node and op names it is wrapped in."""
    import re

    text = re.sub(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\].*", "", e.message.splitlines()[0] if e.message else "")
    return text.strip(" :") or type(e).__name__
