"""A search's answer, the same for every gallery backend (faiss: serving/index.py; Milvus: serving/milvus.py):
rows and Hamming distances in, each query's ids, distances and labels out. Both backends import it; neither
imports the other for it."""

from __future__ import annotations

import numpy as np


def query_results(gallery, dist: np.ndarray, rows: np.ndarray, extra: dict | None = None) -> list[dict]:
    """Each query's {"ids", "distances", "labels"}, nearest first, from a search of any gallery with an
    `ids` map (faiss or Milvus): ids and labels are read for the top-k rows only. extra: more per-hit
    float columns (name -> [n, k]), e.g. a re-ranking's distances."""
    out = []
    for q, (d_row, r_row) in enumerate(zip(dist, rows)):
        keep = r_row >= 0
        hits = [gallery.ids.row(int(r)) for r in r_row[keep]]
        result = {
            "ids": [h["id"] for h in hits],
            "distances": [int(x) for x in d_row[keep]],
            "labels": [h["labels"] for h in hits],
            "rows": [int(r) for r in r_row[keep]],
        }
        for name, values in (extra or {}).items():
            result[name] = [round(float(x), 4) for x in values[q][keep]]
        out.append(result)
    return out
