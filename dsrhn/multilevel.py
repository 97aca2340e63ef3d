"""Multi-level codes (seed DSCNN): the local-code layout and the one re-ranking rule, shared by export
metadata, evaluation, the index and the server (NumPy only; nothing here imports TensorFlow).

A multi-level model's signatures return, beside the global `codes` [N, ceil(K/8)]:
    local_codes     uint8 [N, R, ceil(K/8)]  the K-bit code of each of R = grid x grid regions of the last
                                            conv map, packed as `codes` are (sign rule, MSB first)
    local_selected  uint8 [N, R, ceil(K/8)]  bit selection: the bits whose activation maps concentrate on
                                            that region (packed the same way); all zero for an invalid region
    local_valid     bool  [N, R]            the region holds something (it has selected bits)
Stored (index `local.npy`, evaluation) as one uint8 array [N, R, 2, W]: [..., 0, :] the codes and
[..., 1, :] the selection, each zero-padded to W = 8 * ceil(ceil(K/8) / 8) bytes (whole 64-bit words).

Re-ranking (two-stage search): the global codes shortlist S gallery items by Hamming distance; each is
then scored
    d = d_global + weight * d_local
    d_local = mean over the query's valid regions r of min over the item's valid regions s of
              K * |(q_r XOR g_s) AND sel_r AND sel_s| / |sel_r AND sel_s|   (Hamming on the bits both
              regions selected, scaled to K bits; K/2, chance, when they share none)
so a query tile finds its object in any tile of the gallery image. An item with no valid region scores
K/2; a query with none keeps the global order. Ties keep the global order (stable sort).
"""

from __future__ import annotations

import numpy as np

from dsrhn.contracts import code_bytes

LOCAL_FIELDS = ("local_codes", "local_selected", "local_valid")


def word_bytes(bits: int) -> int:
    """Stored bytes of one local code (or selection): the packed bytes padded to whole 64-bit words."""
    return 8 * ((code_bytes(bits) + 7) // 8)


def local_layout(grid: int, bits: int, weight: float, select_threshold: float) -> dict:
    """The `local` entry of the export metadata."""
    regions = [[i / grid, j / grid, (i + 1) / grid, (j + 1) / grid] for i in range(grid) for j in range(grid)]
    return {
        "grid": grid,
        "count": grid * grid,
        "bits": bits,
        "code_bytes": code_bytes(bits),
        "regions": regions,  # [top, left, bottom, right] as fractions of the image, row-major
        "outputs": list(LOCAL_FIELDS),
        "rerank_weight": weight,
        "select_threshold": select_threshold,
        "distance": "d_global + rerank_weight * mean_r min_s K*|(q_r^g_s)&sel_r&sel_s| / |sel_r&sel_s| "
        "(dsrhn/multilevel.py)",
    }


def stack_local(codes: np.ndarray, selected: np.ndarray, valid: np.ndarray, bits: int) -> np.ndarray:
    """Signature outputs -> the stored uint8 [N, R, 2, W]; an invalid region keeps no selected bit."""
    codes, selected = np.asarray(codes, np.uint8), np.asarray(selected, np.uint8)
    if codes.ndim != 3 or codes.shape != selected.shape or codes.shape[2] != code_bytes(bits):
        raise ValueError(
            f"local codes must be uint8 [N, R, {code_bytes(bits)}] for {bits} bits, "
            f"got {codes.shape} and {selected.shape}"
        )
    n, r, b = codes.shape
    out = np.zeros((n, r, 2, word_bytes(bits)), np.uint8)
    out[:, :, 0, :b] = codes
    out[:, :, 1, :b] = selected * np.asarray(valid, bool)[:, :, None]
    return out


def stored_local(outputs: dict, bits: int) -> np.ndarray:
    """A multi-level signature's outputs (LOCAL_FIELDS, NumPy) -> the stored uint8 [N, R, 2, W]."""
    return stack_local(*(outputs[name] for name in LOCAL_FIELDS), bits)


def _words(local: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(local, np.uint8).view(np.uint64)  # [..., R, 2, W/8]


def _popcount(words: np.ndarray, axis: int) -> np.ndarray:
    counts = np.bitwise_count(words)  # uint8 per 64-bit word
    return np.take(counts, 0, axis) if counts.shape[axis] == 1 else counts.sum(axis, dtype=np.uint16)


def local_distances(q_local: np.ndarray, g_local: np.ndarray, bits: int) -> np.ndarray:
    """d_local (float32 [n, S]) between each query's local codes q_local [n, R, 2, W] and its S
    candidates' g_local [n, S, R, 2, W] (the rule in the module docstring)."""
    # regions and words first, candidates last, so every elementwise pass runs along the S candidates
    g = np.ascontiguousarray(np.moveaxis(_words(g_local), (2, 3, 4), (0, 1, 2)))  # [Rg, 2, w, n, S]
    q = np.moveaxis(_words(q_local), (1, 2, 3), (0, 1, 2))[..., None]  # [Rq, 2, w, n, 1]
    gc, gs = g[:, None, 0], g[:, None, 1]  # [Rg, 1, w, n, S]
    qc, qs = q[None, :, 0], q[None, :, 1]  # [1, Rq, w, n, 1]
    both = gs & qs
    common = _popcount(both, 2)  # [Rg, Rq, n, S]: bits both regions selected
    share = np.divide(
        _popcount((gc ^ qc) & both, 2),
        common,
        out=np.full(common.shape, np.inf, np.float32),
        where=common > 0,
        dtype=np.float32,
    )  # the share of those bits that differ
    best = share.min(0)  # [Rq, n, S]: each query region's best match among the candidate's regions
    best[np.isinf(best)] = 0.5  # no bit in common with any region: chance
    q_valid = (_popcount(q[:, 1, :, :, 0], 1) > 0).astype(np.float32)  # [Rq, n]
    mean_over_valid = q_valid / np.maximum(q_valid.sum(0), 1.0)  # a query with no valid region: all zero
    return bits * (best * mean_over_valid[:, :, None]).sum(0)


def rerank(
    d_global: np.ndarray,
    rows: np.ndarray,
    q_local: np.ndarray,
    local: np.ndarray,
    bits: int,
    weight: float,
    k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-order each query's shortlist (d_global, rows: [n, S], global order, rows -1 past the end) by
    d_global + weight * d_local. local: the gallery's stored local codes (any array indexable by rows,
    e.g. a memory map). Returns (rows, d_global, d_local, combined), each [n, k] (k None: [n, S]) in the
    new order."""
    d_local = local_distances(q_local, np.asarray(local[np.where(rows >= 0, rows, 0)]), bits)
    combined = np.asarray(d_global, np.float32) + np.float32(weight) * d_local
    combined[rows < 0] = np.inf  # missing hits stay last
    order = np.argsort(combined, axis=1, kind="stable") if k is None or k >= rows.shape[1] else _top_k(combined, k)
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return take(rows), take(np.asarray(d_global)), take(d_local), take(combined)


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """The positions of each row's k smallest values, ascending, ties in position order (what a stable
    argsort's first k are), without sorting the whole row: every value up to the k-th is sorted."""
    kth = np.partition(values, k - 1, axis=1)[:, k - 1 : k]
    out = np.empty((len(values), k), np.int64)
    for i, row in enumerate(values):
        idx = np.flatnonzero(row <= kth[i])  # the k smallest and whatever ties the k-th
        out[i] = idx[np.argsort(row[idx], kind="stable")[:k]]
    return out
