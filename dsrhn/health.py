"""Code health: does a code layer still tell images apart? One check for training, evaluation, the
pipeline's blessing, the benchmarks and the tests.

A collapsed hashing network gives many images the same code: some bits never change over a whole gallery
(a constant bit carries nothing), and the number of distinct codes falls far below what the data needs
(collapses met in training runs: docs/results.md). Semantic hashing is *meant* to give images of one label set one
code, so "what the data needs" is the number of distinct label sets among the images (each photo of an
instance dataset is its own label), capped by the images and by 2^K codes. `code_health` measures both on a
sample of codes; `problems` says in words what is wrong (naming the constant bits), empty when healthy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIN_DISTINCT_FRACTION = 0.5  # fewer distinct codes than half the (distinct) images: collapsed
MIN_BIT_SHARE = 0.0  # a bit must take both values on the sample (share of its rarer value > this)


@dataclass
class CodeHealth:
    images: int
    bits: int
    distinct: int  # distinct codes among the images
    groups: int  # distinct label sets among the images (the images themselves without labels)
    constant_bits: list  # bit positions (0 = the first, MSB of byte 0) with one value on every image
    rare_share: list  # per bit, the share of images holding its rarer value (0: constant, 0.5: balanced)

    @property
    def distinct_fraction(self) -> float:
        return self.distinct / max(1, self.images)

    @property
    def needed(self) -> int:
        """The distinct codes a healthy model gives at least this sample: its label sets, at most 2^K."""
        return min(self.images, self.groups, 2 ** min(self.bits, 62))

    def problems(self, min_distinct_fraction: float = MIN_DISTINCT_FRACTION) -> list[str]:
        """What is wrong, in words (empty: healthy)."""
        out = []
        if self.constant_bits:
            shown = ", ".join(str(b) for b in self.constant_bits[:16])
            shown += " ..." if len(self.constant_bits) > 16 else ""
            out.append(
                f"{len(self.constant_bits)} of {self.bits} bits are constant over {self.images} images "
                f"(bit {shown}): they carry nothing"
            )
        n = self.needed
        if n > 1 and self.distinct < min_distinct_fraction * n:
            what = f"{self.groups} label sets" if self.groups < self.images else f"{self.images} images"
            out.append(
                f"only {self.distinct} distinct codes for {what} "
                f"({self.distinct / n:.0%} < {min_distinct_fraction:.0%}): the code layer has collapsed"
            )
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rare_share"] = [round(float(x), 4) for x in self.rare_share]
        d["distinct_fraction"] = round(self.distinct_fraction, 4)
        d["problems"] = self.problems()
        return d


def code_health(codes: np.ndarray, bits: int | None = None, labels: np.ndarray | None = None) -> CodeHealth:
    """codes: ±1 / 0-1 bits [N, K] (a signature's `bits` output, or signs), or packed uint8 [N, ceil(K/8)]
    with `bits` given (the MSB-first packing of dsrhn/contracts.py); labels: the images' multi-hot labels
    [N, L] (their distinct rows are the label sets a semantic code may merge)."""
    codes = np.asarray(codes)
    if codes.dtype == np.uint8 and bits is not None and codes.shape[1] * 8 >= bits and codes.shape[1] < bits:
        b = np.unpackbits(codes, axis=1)[:, :bits].astype(bool)
    else:
        b = codes > 0
        bits = b.shape[1]
    n = len(b)
    ones = b.mean(axis=0) if n else np.zeros(bits)
    rare = np.minimum(ones, 1.0 - ones)
    constant = [int(i) for i in np.flatnonzero(rare <= MIN_BIT_SHARE)] if n > 1 else []
    distinct = len(np.unique(np.packbits(b, axis=1), axis=0)) if n else 0
    has_labels = labels is not None and n and np.asarray(labels).size
    groups = len(np.unique(np.asarray(labels) > 0, axis=0)) if has_labels else n
    return CodeHealth(n, int(bits), int(distinct), int(groups), constant, [float(x) for x in rare])
