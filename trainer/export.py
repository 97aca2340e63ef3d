"""SavedModel export: encoded image bytes -> K-bit codes, with standard signatures only,
so TF Serving (or `tf.saved_model.load`) serves it as is.

Signatures (input `images`: 1-D string tensor of JPEG/PNG/GIF/BMP bytes, any size; every image is
brought to HR size by dsrhn.degrade.to_hr_space, one resize whatever its size, so queries of
different sizes can share one call):
  serving_default  query images (LR) -> codes uint8 [N, ceil(K/8)], bits float32 [N, K]
                   (+ local_codes, local_selected, local_valid for a multi-level method: dsrhn/multilevel.py)
  encode_hr        gallery images (HR) -> the same outputs
  super_resolve    query images -> sr uint8 [N, H, W, 3] (the image HashNet sees)
Every registered method exports the same signatures: its declared query path (SR, bicubic or HR)
and code logits (codes = their sign, Eq. 1) make them. Metadata (dsrhn/contracts.py: bits, preset,
method, label names, code layout, query path, the query sizes the model was trained for) is in
assets.extra/dsrhn.json.
"""

from __future__ import annotations

import math
import os
import time

import keras
import tensorflow as tf

from dsrhn.atomic import ensure_space
from dsrhn.config import Preset
from dsrhn.contracts import CODE_LAYOUT, METADATA, write_metadata
from dsrhn.degrade import to_hr_space
from trainer.models import variables_bytes

IMAGES_SPEC = tf.TensorSpec([None], tf.string, name="images")


def decode_hr_space(images: tf.Tensor, hr_size: int) -> tf.Tensor:
    """[N] encoded images of any sizes -> float32 [N, hr_size, hr_size, 3] in [0,1] (to_hr_space). One image (a
    single served query) is decoded directly: map_fn's loop costs more than the decode of a thumbnail."""

    def one(data):
        img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        return to_hr_space(tf.cast(img, tf.float32) / 255.0, hr_size)

    def many():
        return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([hr_size, hr_size, 3], tf.float32))

    return tf.cond(tf.equal(tf.size(images), 1), lambda: one(images[0])[tf.newaxis], many)


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    """float images in [0, 1] (an SRNet's output may overshoot) -> uint8, as the `sr` signature returns them."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)


def pack_bits_tf(bits: tf.Tensor) -> tf.Tensor:  # Eq. 1 codes -> bytes, MSB first
    k = bits.shape[-1]
    n_bytes = math.ceil(k / 8)
    b = tf.cast(bits >= 0, tf.int32)
    b = tf.pad(b, [[0, 0], [0, n_bytes * 8 - k]])
    b = tf.reshape(b, [-1, n_bytes, 8])
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    return tf.cast(tf.reduce_sum(b * weights, axis=-1), tf.uint8)


def pack_regions(v: tf.Tensor) -> tf.Tensor:
    """[N, R, K] -> uint8 [N, R, ceil(K/8)], each region's bits packed by the codes' rule."""
    r, k = v.shape[1], v.shape[2]
    return tf.reshape(pack_bits_tf(tf.reshape(v, [-1, k])), [-1, r, math.ceil(k / 8)])


XLA_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes the XLA-compiled networks run at (inputs padded up)


class CodeFunctions:
    """The image -> code paths of one trained method, as plain TF functions. xla: the networks are XLA-compiled
    (decoding and resizing stay outside: XLA does not compile string ops), run on the batch padded up to the next
    of XLA_BUCKETS (a multiple of 64 beyond), so at most a handful of shapes is ever compiled."""

    def __init__(self, method, nets: dict, xla: bool = False):
        self.method, self.nets, self.preset = method, dict(nets), method.preset
        self.xla = xla
        if xla:
            self._query_net = tf.function(lambda x: self.method.query_code_outputs(self.nets, x), jit_compile=True)
            self._gallery_net = tf.function(lambda x: self.method.code_outputs(self.nets, x), jit_compile=True)

    @staticmethod
    def _bucketed(fn, x: tf.Tensor) -> dict:
        n = tf.shape(x)[0]
        buckets = tf.constant(XLA_BUCKETS, tf.int32)
        fits = tf.boolean_mask(buckets, buckets >= n)
        size = tf.cond(tf.size(fits) > 0, lambda: fits[0], lambda: ((n + 63) // 64) * 64)
        padded = tf.pad(x, [[0, size - n], [0, 0], [0, 0], [0, 0]])
        return {k: v[:n] for k, v in fn(padded).items()}

    def query_image(self, images: tf.Tensor) -> tf.Tensor:
        """What the code network sees for encoded query images: the method's query path (SRNet's output,
        the query brought to HR size by bicubic, or the HR image itself)."""
        return tf.cast(self.method.query_image(self.nets, decode_hr_space(images, self.preset.hr_size)), tf.float32)

    def codes(self, images_hr: tf.Tensor) -> dict:
        if self.xla:
            return self._packed(self._bucketed(self._gallery_net, images_hr))
        return self._packed(self.method.code_outputs(self.nets, images_hr))

    def query_codes(self, images: tf.Tensor) -> dict:
        """Query images (any size) -> codes through the method's query path."""
        x = decode_hr_space(images, self.preset.hr_size)
        if self.xla:
            return self._packed(self._bucketed(self._query_net, x))
        return self._packed(self.method.query_code_outputs(self.nets, x))

    @staticmethod
    def _packed(out: dict) -> dict:
        bits = tf.where(tf.cast(out["code"], tf.float32) >= 0, 1.0, -1.0)  # Eq. 1, sign(0) = +1
        packed = {"codes": pack_bits_tf(bits), "bits": bits}
        if "local" in out:  # multi-level: local codes, bit selection and validity (dsrhn/multilevel.py)
            packed["local_codes"] = pack_regions(tf.cast(out["local"], tf.float32))
            packed["local_selected"] = pack_regions(tf.where(out["local_selected"], 1.0, -1.0))
            packed["local_valid"] = out["local_valid"]
        return packed

    # signatures
    def serve_query(self, images):
        return self.query_codes(images)

    def serve_hr(self, images):
        return self.codes(decode_hr_space(images, self.preset.hr_size))

    def serve_sr(self, images):
        x = self.query_image(images)
        return {"sr": to_uint8(x)}


def trained_query_sizes(preset: Preset, train_lr_size: int, query_input: str = "lr") -> tuple[int, int]:
    """The range of query sides (px, of the centre square) a model was trained for: the blind
    sampler's scale range, the stored LR partners' size (fixed), or HR (HR-query methods)."""
    if query_input == "hr":
        return preset.hr_size, preset.hr_size
    if preset.blind:
        return preset.degradation.query_sizes(preset.hr_size)
    return train_lr_size, train_lr_size


def export_saved_model(
    method,
    nets: dict,
    export_dir: str,
    label_names: list[str],
    extra: dict | None = None,
    train_lr_size: int | None = None,
    xla: bool = False,
) -> str:
    """Export a trained method's networks. train_lr_size: the stored LR side the model trained on
    (degradation kind fixed); default preset.lr_size. xla: XLA-compile the networks of the code signatures."""
    preset, local = method.preset, method.local_layout()
    fns = CodeFunctions(method, nets, xla)
    archive = keras.export.ExportArchive()
    for net in nets.values():
        archive.track(net)
    archive.add_endpoint("serving_default", fns.serve_query, input_signature=[IMAGES_SPEC])
    archive.add_endpoint("encode_hr", fns.serve_hr, input_signature=[IMAGES_SPEC])
    archive.add_endpoint("super_resolve", fns.serve_sr, input_signature=[IMAGES_SPEC])
    ensure_space(export_dir, variables_bytes(v for net in nets.values() for v in net.weights), "the SavedModel")
    stale = os.path.join(export_dir, METADATA)
    if tf.io.gfile.exists(stale):  # written last: an export killed midway never reads as a dsrhn model
        tf.io.gfile.remove(stale)
    archive.write_out(export_dir, verbose=False)
    write_metadata(
        export_dir,
        {
            "bits": preset.bits,
            "code_bytes": preset.code_bytes,
            "code_layout": CODE_LAYOUT,
            "method": preset.method,
            "preset": preset.to_dict(),
            "scale": preset.scale,
            "hr_size": preset.hr_size,
            "lr_size": preset.lr_size,
            "label_names": list(label_names),
            "query_input": method.query_input,
            "query_path": method.query_path,
            "networks": sorted(nets),
            "query_sizes": list(trained_query_sizes(preset, train_lr_size or preset.lr_size, method.query_input)),
            "degradation": preset.degradation.kind,
            "signatures": ["serving_default", "encode_hr", "super_resolve"],
            "xla": bool(xla),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
            **({"local": local} if local else {}),
        },
    )
    return export_dir
