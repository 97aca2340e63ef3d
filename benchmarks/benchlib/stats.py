"""The paired bootstrap over the queries: every row of a benchmark is scored on the same queries, so a difference
is resampled query by query."""

from __future__ import annotations

import numpy as np


def diff_interval(a: np.ndarray, b: np.ndarray, level: float = 0.9, n_boot: int = 2000, seed: int = 0) -> tuple:
    """mean(b - a) and its paired bootstrap interval over the queries: (mean, low, high)."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(d[idx].mean(1), [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)
