"""Pixel masks for the segmentation branch (records' optional `mask`, dsrhn/records.py): Fashion-MNIST
items drawn on background, and COCO instance annotations (polygons and RLE) rasterised at ingestion.
A mask is an 8-bit image: 0 background, 1 + label index, 255 unknown; it goes through the same
geometry as its HR image (dsrhn.images.prepare_hr), with nearest-neighbour resampling."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from dsrhn.records import MASK_BACKGROUND, MASK_IGNORE


def rle_counts(counts) -> list[int]:
    """COCO RLE counts: a list already (uncompressed, iscrowd annotations) or the compressed string of
    pycocotools (6-bit chunks with a continuation bit, each count after the second a delta)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    out: list[int] = []
    s, i = counts.encode("ascii") if isinstance(counts, str) else counts, 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[i] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i, k = i + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_decode(rle: dict) -> np.ndarray:
    """bool [h, w] from a COCO RLE {"size": [h, w], "counts": ...} (column-major runs, zeros first)."""
    h, w = (int(v) for v in rle["size"])
    flat = np.zeros(h * w, bool)
    pos, value = 0, False
    for n in rle_counts(rle["counts"]):
        if value:
            flat[pos : pos + n] = True
        pos, value = pos + n, not value
    return flat.reshape(w, h).T


def rasterise_coco(shapes: tuple, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w] mask of one image's COCO annotations ((label column, segmentation JSON), ...) at its
    (width, height): each instance painted with 1 + its label, later instances over earlier ones."""
    w, h = size
    mask = np.full((h, w), MASK_BACKGROUND, np.uint8)
    for column, seg_json in shapes:
        seg = json.loads(seg_json)
        value = int(column) + 1
        if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
            layer = Image.new("L", (w, h), 0)
            d = ImageDraw.Draw(layer)
            for poly in seg:
                if len(poly) >= 6:
                    d.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
            mask[np.asarray(layer) > 0] = value
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            m = rle_decode(seg)
            if m.shape != (h, w):
                m = np.asarray(Image.fromarray(m.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0
            mask[m] = value
        else:
            raise ValueError(f"unknown COCO segmentation form: {seg_json[:80]}")
    return mask


def item_mask(item, image_size: tuple[int, int]) -> Image.Image:
    """The mask of a SourceItem of a source with masks, at its decoded image's size. An item without
    any instance outline (a COCO image whose annotations carry no segmentation) gets an all-unknown
    mask: its labels are known, its pixels are not."""
    from dsrhn import sources

    if item.ref.startswith("fmnist:"):
        return Image.fromarray(sources.fashion_mnist_segmentation(item.ref), "L")
    if not item.shapes:
        return Image.new("L", tuple(image_size), MASK_IGNORE)
    size = tuple(item.shape_size) or tuple(image_size)
    mask = Image.fromarray(rasterise_coco(item.shapes, size), "L")
    if mask.size != tuple(image_size):  # the file's pixels differ from the annotated size (e.g. EXIF-rotated)
        mask = mask.resize(tuple(image_size), Image.NEAREST)
    return mask
