"""Retrieval and SR metrics (NumPy, vectorised, chunked over queries).

Codes are packed bits: uint8 [N, ceil(K/8)], MSB first, bit = 1 where b = +1 (Eq. 1:
sign(0) = +1), zero padding bits. Ranking is by Hamming distance with ties broken
stably by gallery order (a radix sort of the distances), so results never change
between runs on the same data.

mAP@K (the deep-hashing protocol): relevant = shares at least one label; AP of a query is
the mean of precision@rank over the relevant items in its top K. A query with no relevant
item in its top K counts as AP 0 (`empty="zero"`, DeepHash-pytorch's CalcTopMap) or is
left out of the mean (`empty="skip"`, thuml/HashNet's evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_BYTES = 64 << 20


def pack_bits(bits: np.ndarray) -> np.ndarray:  # Eq. 1: bit = 1 where b >= 0
    return np.packbits(np.asarray(bits) >= 0, axis=-1)


def unpack_bits(codes: np.ndarray, k: int) -> np.ndarray:
    """Packed codes -> float32 +-1 [N, k]."""
    return np.unpackbits(codes, axis=-1, count=k).astype(np.float32) * 2.0 - 1.0


def _as_words(codes: np.ndarray) -> np.ndarray:
    """uint8 [N, B] -> uint64 [N, ceil(B/8)] (zero padded), for one XOR+popcount per word."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    pad = (-codes.shape[1]) % 8
    if pad:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], pad), np.uint8)], axis=1)
    return codes.view(np.uint64)


def hamming_distances(q_codes: np.ndarray, g_codes: np.ndarray) -> np.ndarray:
    """[nq, ng] Hamming distances (uint16) between packed codes."""
    q, g = _as_words(q_codes), _as_words(g_codes)
    d = np.zeros((q.shape[0], g.shape[0]), np.uint16)
    for w in range(q.shape[1]):
        d += np.bitwise_count(q[:, w, None] ^ g[None, :, w]).astype(np.uint16)
    return d


def rank(distances: np.ndarray) -> np.ndarray:
    """Gallery indices by ascending distance, ties in gallery order (stable radix sort)."""
    return np.argsort(distances, axis=1, kind="stable")


def _chunks(n_query: int, n_gallery: int):
    step = max(1, CHUNK_BYTES // max(1, n_gallery * 8))
    for start in range(0, n_query, step):
        yield slice(start, min(n_query, start + step))


def _relevant(q_labels: np.ndarray, g_labels: np.ndarray) -> np.ndarray:
    return (q_labels.astype(np.float32) @ g_labels.astype(np.float32).T) > 0


def average_precisions(q_codes, g_codes, q_labels, g_labels, topk: int | None = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP@topk (topk None or 0: whole gallery) and each query's number of relevant
    items in its top K, both [n_query], in query order. See the module docstring."""
    n_gallery = len(g_codes)
    k = min(topk or n_gallery, n_gallery)
    aps, found = [np.zeros(0)], [np.zeros(0, np.int64)]
    for sl in _chunks(len(q_codes), n_gallery):
        ap, n_rel = _ap_of_ranking(rank(hamming_distances(q_codes[sl], g_codes))[:, :k], q_labels[sl], g_labels)
        aps.append(ap)
        found.append(n_rel)
    return np.concatenate(aps), np.concatenate(found)


def _ap_of_ranking(top: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP over each query's ranked gallery rows top [n, k], and its number of relevant items there."""
    rel = (q_labels.astype(bool)[:, None, :] & g_labels.astype(bool)[top]).any(-1)
    precision = np.cumsum(rel, axis=1) / np.arange(1, top.shape[1] + 1)
    n_rel = rel.sum(1)
    return (precision * rel).sum(1) / np.maximum(n_rel, 1), n_rel


def rerank_average_precisions(
    q_codes,
    g_codes,
    q_labels,
    g_labels,
    q_local,
    g_local,
    bits: int,
    shortlist: int,
    weight: float,
    topk: int | None = 5000,
) -> tuple[np.ndarray, np.ndarray]:
    """average_precisions of the two-stage search (dsrhn/multilevel.py): each query's global top `shortlist`
    re-ranked with the local codes (q_local [nq, R, 2, W], g_local [ng, R, 2, W]), the global order after it."""
    from dsrhn.multilevel import rerank

    n_gallery = len(g_codes)
    k, s = min(topk or n_gallery, n_gallery), min(shortlist, n_gallery)
    per_query = max(1, s * g_local.shape[1] ** 2 * g_local.shape[3] * 4)  # bytes of the largest re-ranking array
    step = max(1, min(CHUNK_BYTES // per_query, CHUNK_BYTES // max(1, n_gallery * 8)))
    aps, found = [np.zeros(0)], [np.zeros(0, np.int64)]
    for start in range(0, len(q_codes), step):
        sl = slice(start, min(len(q_codes), start + step))
        d = hamming_distances(q_codes[sl], g_codes)
        order = rank(d)
        rows, *_ = rerank(np.take_along_axis(d, order[:, :s], 1), order[:, :s], q_local[sl], g_local, bits, weight)
        ap, n_rel = _ap_of_ranking(np.concatenate([rows, order[:, s:]], axis=1)[:, :k], q_labels[sl], g_labels)
        aps.append(ap)
        found.append(n_rel)
    return np.concatenate(aps), np.concatenate(found)


def map_from_aps(aps: np.ndarray, n_rel: np.ndarray, empty: str = "zero") -> float:
    """The mean of `average_precisions`' output under either empty-query convention."""
    if empty not in ("zero", "skip"):
        raise ValueError("empty must be 'zero' or 'skip'")
    if empty == "skip":
        aps = aps[n_rel > 0]
    return float(aps.mean()) if aps.size else 0.0


def mean_average_precision(q_codes, g_codes, q_labels, g_labels, topk: int | None = 5000, empty: str = "zero") -> float:
    """mAP@topk (topk None or 0: over the whole gallery). See the module docstring."""
    if empty not in ("zero", "skip"):
        raise ValueError("empty must be 'zero' or 'skip'")
    return map_from_aps(*average_precisions(q_codes, g_codes, q_labels, g_labels, topk), empty)


def bootstrap_rows(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] query indices drawn with replacement: one paired resample of the same queries per row."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def percentile_interval(samples: np.ndarray, level: float) -> list[float]:
    """The central `level` percentile interval of bootstrap samples."""
    tail = (1.0 - level) / 2 * 100
    return [float(x) for x in np.percentile(samples, [tail, 100 - tail])]


def diff_interval(a: np.ndarray, b: np.ndarray, level: float = 0.9, n_boot: int = 2000, seed: int = 0) -> tuple:
    """mean(b - a) of two per-query AP arrays over the same queries and its paired bootstrap interval:
    (mean, low, high)."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    lo, hi = percentile_interval(d[bootstrap_rows(d.size, n_boot, seed)].mean(1), level)
    return float(d.mean()), lo, hi


def gap_closure_interval(
    ap_lr: np.ndarray,
    ap_method: np.ndarray,
    ap_hr: np.ndarray,
    goal: float = 0.97,
    level: float = 0.9,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Gap closure (method - LR) / (HR - LR) of three per-query AP arrays over the same queries, with
    a paired bootstrap over queries: the `level` percentile interval of the closure and of the
    HR - LR gap, and the share of resamples whose closure reaches `goal` (a resample with gap <= 0
    has no closure and counts as not reaching it)."""
    ap_lr, ap_method, ap_hr = (np.asarray(a, np.float64) for a in (ap_lr, ap_method, ap_hr))
    if not ap_lr.shape == ap_method.shape == ap_hr.shape or ap_lr.ndim != 1 or not ap_lr.size:
        raise ValueError("per-query AP arrays must be 1-D, non-empty and of one length (the same queries)")
    idx = bootstrap_rows(ap_lr.size, n_boot, seed)
    lr, method, hr = ap_lr[idx].mean(1), ap_method[idx].mean(1), ap_hr[idx].mean(1)
    gap = hr - lr
    closure = np.where(gap > 0, (method - lr) / np.where(gap > 0, gap, 1.0), np.nan)
    point_gap = float(ap_hr.mean() - ap_lr.mean())
    ok = closure[~np.isnan(closure)]
    return {
        "closure": float((ap_method.mean() - ap_lr.mean()) / point_gap) if point_gap > 0 else None,
        "closure_interval": percentile_interval(ok, level) if ok.size else None,
        "gap": point_gap,
        "gap_interval": percentile_interval(gap, level),
        "p_gap_positive": float((gap > 0).mean()),
        "goal": goal,
        "p_goal": float((np.nan_to_num(closure, nan=-np.inf) >= goal).mean()),
        "level": level,
        "n_boot": n_boot,
        "queries": int(ap_lr.size),
    }


@dataclass
class RetrievalCurves:
    radii: list[int]
    precision_at_radius: list[float]  # mean over queries that retrieve >= 1 item within r
    recall_at_radius: list[float]  # mean over queries with >= 1 relevant item
    top_n: list[int]
    precision_at_top_n: list[float]
    precision_radius2: float  # queries retrieving nothing within radius 2 count as 0


def retrieval_curves(
    q_codes, g_codes, q_labels, g_labels, bits: int, top_n: list[int] | None = None
) -> RetrievalCurves:
    """PR over Hamming radii 0..K, precision@top-n (Fig. 2b), precision within radius 2."""
    n_gallery = len(g_codes)
    top_n = [n for n in (top_n or list(range(100, 1001, 100))) if n <= n_gallery] or [n_gallery]
    bins = bits + 1
    sum_p, cnt_p = np.zeros(bins), np.zeros(bins)
    sum_r, cnt_r = np.zeros(bins), 0
    sum_top = np.zeros(len(top_n))
    sum_p2 = 0.0
    for sl in _chunks(len(q_codes), n_gallery):
        d = hamming_distances(q_codes[sl], g_codes).astype(np.int64)
        rel = _relevant(q_labels[sl], g_labels)
        c = d.shape[0]
        flat = (d + np.arange(c)[:, None] * bins).ravel()
        retrieved = np.cumsum(np.bincount(flat, minlength=c * bins).reshape(c, bins), axis=1)
        correct = np.cumsum(np.bincount(flat, weights=rel.ravel(), minlength=c * bins).reshape(c, bins), axis=1)
        has = retrieved > 0
        sum_p += np.where(has, correct / np.maximum(retrieved, 1), 0).sum(0)
        cnt_p += has.sum(0)
        total_rel = rel.sum(1)
        ok = total_rel > 0
        sum_r += (correct[ok] / total_rel[ok, None]).sum(0)
        cnt_r += int(ok.sum())
        r2 = min(2, bits)  # Hamming radius 2
        sum_p2 += np.where(retrieved[:, r2] > 0, correct[:, r2] / np.maximum(retrieved[:, r2], 1), 0).sum()
        ranked_rel = np.cumsum(np.take_along_axis(rel, rank(d.astype(np.uint16))[:, : max(top_n)], axis=1), axis=1)
        sum_top += np.array([ranked_rel[:, n - 1].sum() / n for n in top_n])
    nq = max(1, len(q_codes))
    return RetrievalCurves(
        radii=list(range(bins)),
        precision_at_radius=[float(x) for x in sum_p / np.maximum(cnt_p, 1)],
        recall_at_radius=[float(x) for x in sum_r / max(cnt_r, 1)],
        top_n=top_n,
        precision_at_top_n=[float(x) for x in sum_top / nq],
        precision_radius2=float(sum_p2 / nq),
    )


# ---------------------------------------------------------------- SR quality


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of uint8/float [0,255] RGB, as MATLAB's rgb2ycbcr (range 16..235)."""
    img = np.asarray(img, np.float64)
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    return y[..., border:-border, border:-border] if border else y


def psnr_y(a: np.ndarray, b: np.ndarray, border: int) -> float:
    """PSNR on the Y channel with `border` pixels cropped (SR protocol: border = scale). inf if identical."""
    ya, yb = _crop(rgb_to_y(a), border), _crop(rgb_to_y(b), border)
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim_y(a: np.ndarray, b: np.ndarray, border: int) -> float:
    """SSIM (Wang et al.: Gaussian window sigma 1.5, K1=0.01, K2=0.03) on the cropped Y channel."""
    from skimage.metrics import structural_similarity

    ya, yb = _crop(rgb_to_y(a), border), _crop(rgb_to_y(b), border)
    return float(
        structural_similarity(ya, yb, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )
