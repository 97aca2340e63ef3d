"""SavedModel export: encoded image bytes -> K-bit codes, with standard signatures only,
so TF Serving (or `tf.saved_model.load`) serves it as is.

Signatures (input `images`: 1-D string tensor of JPEG/PNG/GIF/BMP bytes, any size; every image is
brought to HR size by dsrhn.degrade.to_hr_space, one resize whatever its size, so queries of
different sizes can share one call):
  serving_default  query images (LR) -> codes uint8 [N, ceil(K/8)], bits float32 [N, K]
  encode_hr        gallery images (HR) -> codes, bits
  super_resolve    query images -> sr uint8 [N, H, W, 3] (the image HashNet sees)
Metadata (bits, preset, mode, label names, code layout, the query sizes the model was trained
for) is in assets.extra/dsrhn.json.
"""
from __future__ import annotations

import json
import math
import os
import time

import keras
import tensorflow as tf

from dsrhn.config import Preset
from dsrhn.degrade import to_hr_space

METADATA = os.path.join("assets.extra", "dsrhn.json")
CODE_LAYOUT = "sign bits packed MSB-first, bit 1 for b=+1 (sign(0)=+1), zero padding to whole bytes"
IMAGES_SPEC = tf.TensorSpec([None], tf.string, name="images")


def decode_hr_space(images: tf.Tensor, hr_size: int) -> tf.Tensor:
    """[N] encoded images of any sizes -> float32 [N, hr_size, hr_size, 3] in [0,1] (to_hr_space)."""
    def one(data):
        img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        return to_hr_space(tf.cast(img, tf.float32) / 255.0, hr_size)

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([hr_size, hr_size, 3], tf.float32))


def pack_bits_tf(bits: tf.Tensor) -> tf.Tensor:  # Eq. 1 codes -> bytes, MSB first
    k = bits.shape[-1]
    n_bytes = math.ceil(k / 8)
    b = tf.cast(bits >= 0, tf.int32)
    b = tf.pad(b, [[0, 0], [0, n_bytes * 8 - k]])
    b = tf.reshape(b, [-1, n_bytes, 8])
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    return tf.cast(tf.reduce_sum(b * weights, axis=-1), tf.uint8)


class CodeFunctions:
    """The image -> code paths of one trained model, as plain TF functions."""

    def __init__(self, srnet: keras.Model, hashnet: keras.Model, preset: Preset):
        self.srnet, self.hashnet, self.preset = srnet, hashnet, preset

    def query_image(self, images: tf.Tensor) -> tf.Tensor:
        """What HashNet sees for encoded query images in this mode: SRNet's output (dsrhn, two-stage),
        else the query brought to HR size (bicubic; HR itself for hashnet-hr)."""
        x = decode_hr_space(images, self.preset.hr_size)
        if self.preset.mode in ("dsrhn", "two-stage"):
            return tf.cast(self.srnet(x, training=False), tf.float32)
        return x

    def codes(self, images_hr: tf.Tensor) -> dict:
        v = tf.cast(self.hashnet(images_hr, training=False)[1], tf.float32)
        bits = tf.where(v >= 0, 1.0, -1.0)
        return {"codes": pack_bits_tf(bits), "bits": bits}

    # signatures
    def serve_query(self, images):
        return self.codes(self.query_image(images))

    def serve_hr(self, images):
        return self.codes(decode_hr_space(images, self.preset.hr_size))

    def serve_sr(self, images):
        x = self.query_image(images)
        return {"sr": tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)}


def trained_query_sizes(preset: Preset, train_lr_size: int) -> tuple[int, int]:
    """The range of query sides (px, of the centre square) a model was trained for: the blind
    sampler's scale range, the stored LR partners' size (fixed), or HR (hashnet-hr)."""
    if preset.mode == "hashnet-hr":
        return preset.hr_size, preset.hr_size
    if preset.blind:
        return preset.degradation.query_sizes(preset.hr_size)
    return train_lr_size, train_lr_size


def export_saved_model(srnet: keras.Model, hashnet: keras.Model, preset: Preset, export_dir: str,
                       label_names: list[str], extra: dict | None = None, train_lr_size: int | None = None) -> str:
    """train_lr_size: the stored LR side the model trained on (degradation kind fixed); default
    preset.lr_size."""
    fns = CodeFunctions(srnet, hashnet, preset)
    archive = keras.export.ExportArchive()
    archive.track(srnet)
    archive.track(hashnet)
    archive.add_endpoint("serving_default", fns.serve_query, input_signature=[IMAGES_SPEC])
    archive.add_endpoint("encode_hr", fns.serve_hr, input_signature=[IMAGES_SPEC])
    archive.add_endpoint("super_resolve", fns.serve_sr, input_signature=[IMAGES_SPEC])
    archive.write_out(export_dir, verbose=False)
    write_metadata(export_dir, {
        "bits": preset.bits, "code_bytes": preset.code_bytes, "code_layout": CODE_LAYOUT,
        "mode": preset.mode, "preset": preset.to_dict(), "scale": preset.scale,
        "hr_size": preset.hr_size, "lr_size": preset.lr_size, "label_names": list(label_names),
        "query_input": "hr" if preset.mode == "hashnet-hr" else "lr",
        "query_sizes": list(trained_query_sizes(preset, train_lr_size or preset.lr_size)),
        "degradation": preset.degradation.kind,
        "signatures": ["serving_default", "encode_hr", "super_resolve"],
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}),
    })
    return export_dir


def write_metadata(export_dir: str, meta: dict) -> None:
    path = os.path.join(export_dir, METADATA)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(meta, indent=2))


def read_metadata(export_dir: str) -> dict:
    path = os.path.join(export_dir, METADATA)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {export_dir} is not a SavedModel exported by dsrhn")
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())
