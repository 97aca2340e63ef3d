"""Speed of exact mAP@K ranking: 10k queries x 100k gallery at 48 bits (issue goal: not minutes).

Compares, in the same run, components.metrics (uint64 XOR + popcount, stable radix argsort
of uint16 distances) against a named baseline: the textbook NumPy approach (unpacked +-1
codes, Hamming via inner product in float32, np.argsort quicksort on the float distances),
on a subset of queries, and prints the ratio. Results are also checked for equality.

    python benchmarks/eval_speed.py [--queries 10000 --gallery 100000 --bits 48]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from components import metrics


def baseline_map(qc, gc, ql, gl, k, bits):
    """Float inner-product Hamming + lexsort (distance, index): the straightforward way."""
    qb, gb = metrics.unpack_bits(qc, bits), metrics.unpack_bits(gc, bits)
    d = 0.5 * (bits - qb @ gb.T)  # Eq. 8
    aps = []
    for i in range(len(qc)):
        order = np.lexsort((np.arange(len(gc)), d[i]))[:k]
        rel = (ql[i] & gl[order]).any(1)
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, k + 1) * rel).sum() / max(rel.sum(), 1)))
    return float(np.mean(aps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--gallery", type=int, default=100000)
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument("--baseline-queries", type=int, default=200, help="baseline runs on this many queries, then scales")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = lambda n: (rng.random((n, 21)) < 0.12).astype(np.int8)  # noqa: E731  NUS-WIDE-like density
    qc = metrics.pack_bits(rng.choice([-1.0, 1.0], (args.queries, args.bits)))
    gc = metrics.pack_bits(rng.choice([-1.0, 1.0], (args.gallery, args.bits)))
    ql, gl = labels(args.queries), labels(args.gallery)

    t0 = time.perf_counter()
    ours = metrics.mean_average_precision(qc, gc, ql, gl, args.topk)
    t_ours = time.perf_counter() - t0
    n = args.baseline_queries
    t0 = time.perf_counter()
    base = baseline_map(qc[:n], gc, ql[:n], gl, args.topk, args.bits)
    t_base = (time.perf_counter() - t0) * args.queries / n
    check = metrics.mean_average_precision(qc[:n], gc, ql[:n], gl, args.topk)
    assert abs(check - base) < 1e-9, (check, base)
    print(f"mAP@{args.topk}, {args.queries} queries x {args.gallery} gallery, {args.bits} bits")
    print(f"  components.metrics : {t_ours:8.1f} s  (mAP {ours:.4f})")
    print(f"  baseline (float IP + lexsort, measured on {n} queries, scaled): {t_base:8.1f} s")
    print(f"  speed-up vs baseline: {t_base / t_ours:.1f}x   (same mAP on the subset: {check:.6f})")


if __name__ == "__main__":
    main()
