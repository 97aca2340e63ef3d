"""The query-space rule and the blind degradation model, as TensorFlow ops (tf.data and SavedModel).

`to_hr_space` is the one rule that brings an image of any size to what SRNet and HashNet take:
a centre square crop, then one antialiased bicubic resize to hr_size (none when it already is
hr_size). Training (fixed and blind LR) and the exported query signature both call it.

`degrade` draws a random LR from an HR image (blind SR, after Real-ESRGAN's and BSRGAN's
degradation models): scale, Gaussian blur (isotropic or anisotropic with a rotation), the
downsampling kernel, additive Gaussian noise (colour or gray) and a JPEG round trip, with blur /
resize / noise in a shuffled order and JPEG last. Every draw comes from a stateless seed, so the
same (seed, epoch, example) gives the same LR in any process and on resume.
"""
from __future__ import annotations

import itertools
import math

import tensorflow as tf

from dsrhn.config import Degradation

_OPS = ("blur", "resize", "noise")
_ORDERS = list(itertools.permutations(range(len(_OPS))))  # order 0 is (blur, resize, noise)
_BLUR_RADIUS = 10  # kernel 21x21 in HR pixels; sigma above ~3.3 is truncated at 3 sigma


def crop_square(img: tf.Tensor) -> tf.Tensor:
    """The centre square of an [H, W, C] image (the gallery's HR is prepared the same way)."""
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    side = tf.minimum(h, w)
    return tf.image.crop_to_bounding_box(img, (h - side) // 2, (w - side) // 2, side, side)


def to_hr_space(img: tf.Tensor, hr_size: int) -> tf.Tensor:
    """float [H, W, 3] in [0, 1], any size -> float [hr_size, hr_size, 3] in [0, 1]: centre square,
    then a single antialiased bicubic resize (skipped when the square already is hr_size)."""
    img = crop_square(img)
    side = tf.shape(img)[0]
    resized = lambda: tf.clip_by_value(  # noqa: E731
        tf.image.resize(img, (hr_size, hr_size), method="bicubic", antialias=True), 0.0, 1.0)
    out = tf.cond(tf.equal(side, hr_size), lambda: tf.cast(img, tf.float32), resized)
    return tf.ensure_shape(out, [hr_size, hr_size, 3])


def bicubic_uint8(lr, hr_size: int):
    """uint8 LR [h, w, 3] -> the uint8 image to_hr_space makes of it (the no-SR baseline in reports)."""
    x = tf.cast(lr, tf.float32) / 255.0
    return tf.cast(tf.round(to_hr_space(x, hr_size) * 255.0), tf.uint8).numpy()


def _uniform(seed, lo, hi, dtype=tf.float32):
    return tf.random.stateless_uniform([], seed, lo, hi, dtype=dtype) if lo < hi else tf.constant(lo, dtype)


def _chance(seed, p: float):
    return tf.random.stateless_uniform([], seed) < p


def gaussian_kernel(sigma_x, sigma_y, theta, radius: int = _BLUR_RADIUS) -> tf.Tensor:
    """A normalised 2-D Gaussian [2r+1, 2r+1] with per-axis sigmas rotated by theta."""
    r = tf.range(-radius, radius + 1, dtype=tf.float32)
    yy, xx = tf.meshgrid(r, r, indexing="ij")
    c, s = tf.cos(theta), tf.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = tf.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / tf.reduce_sum(k)


def _blur(img, kernel):
    """Depthwise convolution of [H, W, 3] with edge-replicate padding (any kernel on any image size)."""
    r = (kernel.shape[0] - 1) // 2
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    rows = tf.clip_by_value(tf.range(-r, h + r), 0, h - 1)
    cols = tf.clip_by_value(tf.range(-r, w + r), 0, w - 1)
    padded = tf.gather(tf.gather(img, rows, axis=0), cols, axis=1)
    k = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    return tf.nn.depthwise_conv2d(padded[None], k, [1, 1, 1, 1], "VALID")[0]


def degrade(hr: tf.Tensor, seed: tf.Tensor, cfg: Degradation) -> tf.Tensor:
    """float HR [H, W, 3] in [0, 1] -> a random LR, float [h, w, 3] in [0, 1] quantised to 8 bits,
    h = round(H / s) for a scale s drawn log-uniformly from [cfg.scale_min, cfg.scale_max].
    `seed`: int32/int64 [2] (stateless); the draws depend on nothing else."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=16)
    hr = tf.convert_to_tensor(hr, tf.float32)
    hr_h, hr_w = tf.shape(hr)[0], tf.shape(hr)[1]
    scale = tf.exp(_uniform(seeds[0], math.log(cfg.scale_min), math.log(cfg.scale_max)))
    out_h = tf.maximum(1, tf.cast(tf.round(tf.cast(hr_h, tf.float32) / scale), tf.int32))
    out_w = tf.maximum(1, tf.cast(tf.round(tf.cast(hr_w, tf.float32) / scale), tf.int32))

    # blur: sigma in HR pixels, divided by the scale when applied after the resize (same physical blur)
    do_blur = _chance(seeds[1], cfg.blur_prob)
    sigma_x = _uniform(seeds[2], cfg.blur_sigma_min, cfg.blur_sigma_max)
    aniso = _chance(seeds[3], cfg.aniso_prob)
    sigma_y = tf.where(aniso, _uniform(seeds[4], cfg.blur_sigma_min, cfg.blur_sigma_max), sigma_x)
    theta = tf.where(aniso, _uniform(seeds[5], 0.0, math.pi), 0.0)
    kernel_id = tf.random.stateless_uniform([], seeds[6], 0, len(cfg.kernels), dtype=tf.int32)
    do_noise = _chance(seeds[7], cfg.noise_prob)
    noise_sigma = _uniform(seeds[8], cfg.noise_sigma_min, cfg.noise_sigma_max) / 255.0
    gray = _chance(seeds[9], cfg.gray_noise_prob)
    do_jpeg = _chance(seeds[10], cfg.jpeg_prob)
    quality = tf.random.stateless_uniform([], seeds[11], cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1, dtype=tf.int32)
    shuffled = _chance(seeds[12], cfg.shuffle_prob)
    order = tf.where(shuffled, tf.random.stateless_uniform([], seeds[13], 0, len(_ORDERS), dtype=tf.int32), 0)

    def blur(x, resized: bool):
        div = scale if resized else 1.0
        sx, sy = tf.maximum(sigma_x / div, 0.05), tf.maximum(sigma_y / div, 0.05)
        return tf.cond(do_blur, lambda: _blur(x, gaussian_kernel(sx, sy, theta)), lambda: x)

    def resize(x):
        branches = [lambda m=m: tf.image.resize(x, tf.stack([out_h, out_w]), method=m, antialias=True)
                    for m in cfg.kernels]
        return tf.clip_by_value(tf.switch_case(kernel_id, branches), 0.0, 1.0)

    def noise(x):
        shape = tf.shape(x)
        colour = tf.random.stateless_normal(shape, seeds[14])
        mono = tf.tile(tf.random.stateless_normal(tf.concat([shape[:2], [1]], 0), seeds[14]), [1, 1, 3])
        n = tf.where(gray, mono, colour) * noise_sigma
        return tf.cond(do_noise, lambda: tf.clip_by_value(x + n, 0.0, 1.0), lambda: x)

    def run(order_ids):
        def fn():
            x, resized = hr, False
            for i in order_ids:
                op = _OPS[i]
                if op == "blur":
                    x = blur(x, resized)
                elif op == "resize":
                    x, resized = resize(x), True
                else:
                    x = noise(x)
            return tf.reshape(x, tf.stack([out_h, out_w, 3]))
        return fn

    x = tf.switch_case(order, [run(o) for o in _ORDERS])
    x = tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0) / 255.0  # an 8-bit image, as a stored LR is
    x = tf.cond(do_jpeg, lambda: tf.image.adjust_jpeg_quality(x, quality), lambda: x)
    return tf.ensure_shape(x, [None, None, 3])


def example_seed(seed: int, epoch, index) -> tf.Tensor:
    """The stateless seed of one training example's degradation in one epoch."""
    return tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64), tf.cast(index, tf.int64)])
