"""Image decoding, HR preparation and LR generation (Pillow + NumPy, deterministic)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from dsrhn.config import LRConfig

_KERNELS = {"bicubic": Image.BICUBIC, "area": Image.BOX, "bilinear": Image.BILINEAR}


class ImageError(ValueError):
    """An input that cannot become an image; the message is the reason written to the report."""


def decode_image(data: bytes) -> Image.Image:
    """Bytes of any format Pillow reads -> an 8-bit RGB image, EXIF orientation applied.

    Unusual but valid inputs are converted, not rejected: CMYK, grayscale, 16-bit,
    palette and RGBA/LA (composited on white).
    """
    if not data:
        raise ImageError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # forces a full decode: truncated files raise here
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ImageError(f"not a readable image: {e}") from None
    except Exception as e:  # a decoder's own bug on hostile bytes (e.g. IndexError in Pillow's QOI reader)
        raise ImageError(
            f"not a readable image: the {_format(data)} decoder failed ({type(e).__name__}: {e})"
        ) from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    try:
        return to_rgb(img)
    except Exception as e:
        raise ImageError(f"not a convertible image ({img.mode}): {type(e).__name__}: {e}") from None


def _format(data: bytes) -> str:
    """The format a file claims by its first bytes (for messages)."""
    for sig, name in (
        (b"\xff\xd8", "JPEG"),
        (b"\x89PNG", "PNG"),
        (b"GIF8", "GIF"),
        (b"BM", "BMP"),
        (b"qoif", "QOI"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
    ):
        if data.startswith(sig):
            return name
    return "WebP" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else "image"


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"unreadable file: {e.strerror or e}") from None
    return decode_image(data)


def prepare_hr(img: Image.Image, hr_size: int, resample=Image.BICUBIC) -> Image.Image:
    """Resize the shorter side to hr_size (bicubic; nearest for masks) and centre-crop a square."""
    w, h = img.size
    if (w, h) == (hr_size, hr_size):
        return img
    s = hr_size / min(w, h)
    nw, nh = max(hr_size, round(w * s)), max(hr_size, round(h * s))
    img = img.resize((nw, nh), resample)
    left, top = (nw - hr_size) // 2, (nh - hr_size) // 2
    return img.crop((left, top, left + hr_size, top + hr_size))


def source_image(img: Image.Image, side: int) -> Image.Image:
    """A photo with its shorter side brought to `side` px, aspect kept (antialiased bicubic; a smaller photo is
    kept as it is): what an instance dataset stores to draw views from (dsrhn/views.py)."""
    w, h = img.size
    if min(w, h) <= side:
        return img
    s = side / min(w, h)
    return img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC, reducing_gap=3.0)


def photo_view(img: Image.Image, side: int, hr_size: int, views, item_id: str, seed: int = 0) -> Image.Image:
    """A stored view of a photo (an instance dataset's query and gallery records): dsrhn.views.random_view of
    its source image, seeded by (seed, item id), as an 8-bit RGB image."""
    import tensorflow as tf

    from dsrhn.views import random_view

    src = np.asarray(source_image(img, side), np.uint8)
    s = item_seed(seed, item_id)
    out = random_view(tf.constant(src), tf.constant([s & 0x7FFFFFFF, s >> 33], tf.int64), hr_size, views)
    return Image.fromarray(np.round(out.numpy() * 255.0).astype(np.uint8), "RGB")


def item_seed(seed: int, item_id: str) -> int:
    """A per-item seed stable across processes and runs (Python's hash() is salted)."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_lr(hr: Image.Image, cfg: LRConfig, item_id: str) -> Image.Image:
    """Degrade HR into its LR partner: blur -> downsample -> noise -> JPEG, deterministic per (seed, id)."""
    w, h = hr.size
    if w % cfg.scale or h % cfg.scale:
        raise ImageError(f"HR size {w}x{h} is not a multiple of scale {cfg.scale}")
    img = hr
    if cfg.blur_sigma > 0:
        img = img.filter(ImageFilter.GaussianBlur(cfg.blur_sigma))
    img = img.resize((w // cfg.scale, h // cfg.scale), _KERNELS[cfg.kernel])
    if cfg.noise_sigma > 0:
        rng = np.random.default_rng(item_seed(cfg.seed, item_id))
        noise = rng.normal(0.0, cfg.noise_sigma, size=(h // cfg.scale, w // cfg.scale, 3))
        arr = np.asarray(img, dtype=np.float32) + noise
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    if cfg.jpeg_quality:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def preview_jpeg(img: Image.Image, side: int | None = None, quality: int = 85) -> bytes:
    """A small JPEG of an image for people to look at (the index's previews): its longer side at most `side`
    px (dsrhn.contracts.PREVIEW_SIDE), aspect kept, never enlarged."""
    from dsrhn.contracts import PREVIEW_SIDE

    side = side or PREVIEW_SIDE
    thumb = img.convert("RGB")
    if max(thumb.size) > side:
        thumb = thumb.copy()
        thumb.thumbnail((side, side), Image.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1, icc_profile=None)  # pixels are taken as sRGB everywhere
    return buf.getvalue()


def gallery_png(img: Image.Image, hr_size: int) -> bytes:
    """A gallery image as the model's encode_hr signature takes it: the HR centre square, as PNG (what
    `dsrhn index` and the service's :add both encode)."""
    return encode_png(prepare_hr(img, hr_size))
