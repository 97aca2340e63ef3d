"""Search filters: which gallery rows a label or source-folder filter lets through, the one rule that the faiss
and the Milvus backends both apply inside their search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Where:
    """A search filter, applied inside the search so that k hits still come back: hits that carry any of
    `labels`, and whose id lies under `folder` (the source folder of a photo-folder gallery)."""

    labels: tuple[str, ...] = ()
    folder: str = ""

    def __bool__(self) -> bool:
        return bool(self.labels or self.folder)


def allowed_rows(ids, where: Where) -> np.ndarray:
    """The rows (int64, ascending) a filter lets through, from the memory-mapped label bits and id bytes of
    ids (serving.index.IdMap)."""
    mask = np.ones(len(ids), bool)
    if where.labels:
        pos = {n: i for i, n in enumerate(ids.label_names)}
        bits, anyof = np.asarray(ids.labels), np.zeros(len(ids), bool)
        for name in where.labels:
            j = pos[name]
            anyof |= (bits[:, j // 8] & (0x80 >> (j % 8))) != 0  # np.packbits' bit order
        mask &= anyof
    if where.folder:
        prefix = np.frombuffer(where.folder.strip("/").encode("utf-8") + b"/", np.uint8)
        offsets = np.asarray(ids.offsets, np.int64)
        cand = np.flatnonzero(mask & (np.diff(offsets) > len(prefix)))
        under = np.zeros(len(ids), bool)
        if len(cand):
            window = np.asarray(ids.blob)[offsets[cand, None] + np.arange(len(prefix))]
            under[cand[(window == prefix).all(1)]] = True
        mask &= under
    return np.flatnonzero(mask)
