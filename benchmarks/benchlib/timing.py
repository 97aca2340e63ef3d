"""Latency helpers: threads started together, single-query and batched timing, percentiles (milliseconds)."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np


def run_threads(targets: list) -> float:
    """Start one thread per target, wait for all; the wall time in seconds."""
    threads = [threading.Thread(target=t) for t in targets]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def percentiles(lat: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms of latencies in seconds."""
    lat = sorted(lat)
    return statistics.median(lat) * 1e3, lat[int(0.99 * (len(lat) - 1))] * 1e3


def single(search, queries: np.ndarray) -> tuple[float, float]:
    """p50 / p99 ms of `search` called with one query at a time."""
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None])
        lat.append(time.perf_counter() - t0)
    return percentiles(lat)


def batched(search, queries: np.ndarray) -> float:
    """ms per query of one `search` call over all of `queries`."""
    t0 = time.perf_counter()
    search(queries)
    return (time.perf_counter() - t0) * 1e3 / len(queries)
