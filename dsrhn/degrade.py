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
from typing import NamedTuple

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
        tf.image.resize(img, (hr_size, hr_size), method="bicubic", antialias=True), 0.0, 1.0
    )
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


class Draws(NamedTuple):
    """Every random choice of one degradation (scalar tensors), drawn from one stateless seed."""

    scale: tf.Tensor  # HR side / LR side
    out_h: tf.Tensor
    out_w: tf.Tensor
    do_blur: tf.Tensor
    sigma_x: tf.Tensor  # in HR pixels
    sigma_y: tf.Tensor
    theta: tf.Tensor
    kernel_id: tf.Tensor  # index into cfg.kernels
    do_noise: tf.Tensor
    noise_sigma: tf.Tensor  # in 0..1 units
    gray: tf.Tensor
    noise_seed: tf.Tensor
    do_jpeg: tf.Tensor
    quality: tf.Tensor
    order: tf.Tensor  # index into _ORDERS


def draw(seed: tf.Tensor, hr_h: tf.Tensor, hr_w: tf.Tensor, cfg: Degradation) -> Draws:
    """The draws of one degradation of an hr_h x hr_w image; each from its own split of `seed`."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=16)
    scale = tf.exp(_uniform(seeds[0], math.log(cfg.scale_min), math.log(cfg.scale_max)))
    out_h = tf.maximum(1, tf.cast(tf.round(tf.cast(hr_h, tf.float32) / scale), tf.int32))
    out_w = tf.maximum(1, tf.cast(tf.round(tf.cast(hr_w, tf.float32) / scale), tf.int32))
    sigma_x = _uniform(seeds[2], cfg.blur_sigma_min, cfg.blur_sigma_max)
    aniso = _chance(seeds[3], cfg.aniso_prob)
    sigma_y = tf.where(aniso, _uniform(seeds[4], cfg.blur_sigma_min, cfg.blur_sigma_max), sigma_x)
    theta = tf.where(aniso, _uniform(seeds[5], 0.0, math.pi), 0.0)
    kernel_id = tf.random.stateless_uniform([], seeds[6], 0, len(cfg.kernels), dtype=tf.int32)
    noise_sigma = _uniform(seeds[8], cfg.noise_sigma_min, cfg.noise_sigma_max) / 255.0
    quality = tf.random.stateless_uniform([], seeds[11], cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1, dtype=tf.int32)
    order = tf.where(
        _chance(seeds[12], cfg.shuffle_prob),
        tf.random.stateless_uniform([], seeds[13], 0, len(_ORDERS), dtype=tf.int32),
        0,
    )
    return Draws(
        scale,
        out_h,
        out_w,
        _chance(seeds[1], cfg.blur_prob),
        sigma_x,
        sigma_y,
        theta,
        kernel_id,
        _chance(seeds[7], cfg.noise_prob),
        noise_sigma,
        _chance(seeds[9], cfg.gray_noise_prob),
        seeds[14],
        _chance(seeds[10], cfg.jpeg_prob),
        quality,
        order,
    )


def _blur_step(x: tf.Tensor, d: Draws, resized: bool) -> tf.Tensor:
    """The blur, when drawn; its sigma is in HR pixels, divided by the scale after the resize (the same
    physical blur)."""
    div = d.scale if resized else 1.0
    sx, sy = tf.maximum(d.sigma_x / div, 0.05), tf.maximum(d.sigma_y / div, 0.05)
    return tf.cond(d.do_blur, lambda: _blur(x, gaussian_kernel(sx, sy, d.theta)), lambda: x)


def _resize_step(x: tf.Tensor, d: Draws, kernels: tuple) -> tf.Tensor:
    branches = [lambda m=m: tf.image.resize(x, tf.stack([d.out_h, d.out_w]), method=m, antialias=True) for m in kernels]
    return tf.clip_by_value(tf.switch_case(d.kernel_id, branches), 0.0, 1.0)


def _noise_step(x: tf.Tensor, d: Draws) -> tf.Tensor:
    """Additive Gaussian noise, when drawn: per channel (colour) or the same on all three (gray)."""
    shape = tf.shape(x)
    colour = tf.random.stateless_normal(shape, d.noise_seed)
    mono = tf.tile(tf.random.stateless_normal(tf.concat([shape[:2], [1]], 0), d.noise_seed), [1, 1, 3])
    n = tf.where(d.gray, mono, colour) * d.noise_sigma
    return tf.cond(d.do_noise, lambda: tf.clip_by_value(x + n, 0.0, 1.0), lambda: x)


def _chain(hr: tf.Tensor, order_ids: tuple[int, ...], d: Draws, kernels: tuple):
    """A branch of the order switch: blur, resize and noise applied to `hr` in the order `order_ids`."""

    def fn():
        x, resized = hr, False
        for i in order_ids:
            op = _OPS[i]
            if op == "blur":
                x = _blur_step(x, d, resized)
            elif op == "resize":
                x, resized = _resize_step(x, d, kernels), True
            else:
                x = _noise_step(x, d)
        return tf.reshape(x, tf.stack([d.out_h, d.out_w, 3]))

    return fn


def degrade(hr: tf.Tensor, seed: tf.Tensor, cfg: Degradation) -> tf.Tensor:
    """float HR [H, W, 3] in [0, 1] -> a random LR, float [h, w, 3] in [0, 1] quantised to 8 bits,
    h = round(H / s) for a scale s drawn log-uniformly from [cfg.scale_min, cfg.scale_max].
    `seed`: int32/int64 [2] (stateless); the draws depend on nothing else."""
    hr = tf.convert_to_tensor(hr, tf.float32)
    d = draw(seed, tf.shape(hr)[0], tf.shape(hr)[1], cfg)
    x = tf.switch_case(d.order, [_chain(hr, o, d, cfg.kernels) for o in _ORDERS])
    x = tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0) / 255.0  # an 8-bit image, as a stored LR is
    x = tf.cond(d.do_jpeg, lambda: tf.image.adjust_jpeg_quality(x, d.quality), lambda: x)
    return tf.ensure_shape(x, [None, None, 3])


def example_seed(seed: int, epoch, index) -> tf.Tensor:
    """The stateless seed of one training example's degradation in one epoch."""
    return tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64), tf.cast(index, tf.int64)])
