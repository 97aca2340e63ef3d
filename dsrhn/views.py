"""Views of a photo, as TensorFlow ops: the one sampler behind instance training (tf.data, a fresh pair of
views of every photo in every batch) and the query and gallery views `dsrhn ingest photos` stores.

A photo enters as its *source*: the photo with its shorter side brought to `source_side` (aspect kept;
dsrhn.images.source_image). `random_view` crops a random region of it (area and aspect from
dsrhn.config.Views), resizes that to the HR size (antialiased bicubic), flips it and shifts its colours.
Every draw comes from a stateless seed, so the same (seed, photo, view) gives the same view in any
process, on resume, at ingestion and in training.
"""

from __future__ import annotations

import math

import tensorflow as tf

from dsrhn.config import Views


def _uniform(seed, lo: float, hi: float):
    return tf.random.stateless_uniform([], seed, lo, hi) if lo < hi else tf.constant(lo, tf.float32)


def view_box(height, width, seed, cfg: Views):
    """(top, left, crop height, crop width) of a random view of an image of that size."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = _uniform(seeds[0], cfg.area_min, cfg.area_max) * h * w
    aspect = tf.exp(_uniform(seeds[1], -math.log(cfg.aspect_max), math.log(cfg.aspect_max)))  # width / height
    cw = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, w)
    ch = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, h)
    top = tf.floor(tf.random.stateless_uniform([], seeds[2]) * (h - ch + 1.0))
    left = tf.floor(tf.random.stateless_uniform([], seeds[3]) * (w - cw + 1.0))
    return tuple(tf.cast(v, tf.int32) for v in (top, left, ch, cw))


def random_view(source: tf.Tensor, seed: tf.Tensor, hr_size: int, cfg: Views) -> tf.Tensor:
    """uint8 or float source [H, W, 3] -> float32 [hr_size, hr_size, 3] in [0, 1], quantised to 8 bits (a
    view is an image, as a stored HR is). `seed`: int [2], stateless."""
    img = tf.convert_to_tensor(source)
    img = tf.cast(img, tf.float32) / (255.0 if img.dtype == tf.uint8 else 1.0)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    top, left, ch, cw = view_box(tf.shape(img)[0], tf.shape(img)[1], seeds[0], cfg)
    crop = tf.image.crop_to_bounding_box(img, top, left, ch, cw)
    out = tf.clip_by_value(tf.image.resize(crop, (hr_size, hr_size), method="bicubic", antialias=True), 0.0, 1.0)
    out = tf.cond(
        tf.random.stateless_uniform([], seeds[1]) < cfg.flip_prob, lambda: tf.image.flip_left_right(out), lambda: out
    )
    out = out * _uniform(seeds[2], 1.0 - cfg.brightness, 1.0 + cfg.brightness)
    out = tf.image.adjust_saturation(
        tf.clip_by_value(out, 0.0, 1.0), _uniform(seeds[3], 1.0 - cfg.saturation, 1.0 + cfg.saturation)
    )
    out = out * tf.random.stateless_uniform([3], seeds[4], 1.0 - cfg.gain, 1.0 + cfg.gain)
    out = tf.round(tf.clip_by_value(out, 0.0, 1.0) * 255.0) / 255.0
    return tf.ensure_shape(out, [hr_size, hr_size, 3])


def view_seed(seed: int, epoch, index, view) -> tf.Tensor:
    """The stateless seed of view `view` of the photo at `index` of epoch `epoch` (training)."""
    return tf.stack(
        [
            tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64) * 16 + tf.cast(view, tf.int64),
            tf.cast(index, tf.int64) + (1 << 40),
        ]
    )
