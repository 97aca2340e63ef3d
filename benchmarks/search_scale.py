"""Exact Hamming search at scale, against the named baseline measured in the same run: faiss
`IndexBinaryFlat` at the codes' native width with faiss's default OpenMP threads (the index dsrhn
wrote before codes were padded and the thread policy was set).

For each gallery size and code length, on synthetic random codes:
    build s and index memory; single-query latency (p50/p99, one query per call, as a served request);
    batched ms/query (256 queries per call); 8 concurrent clients of single queries (p50/p99, total q/s);
    ratios against the baseline. At the largest size and 48 bits a full gallery (index + columnar id map
    + manifest) is written and loaded in a fresh process: load s (checksums included) and its RSS.
Milvus Lite (embedded) at 100k: insert s and query latency, distances checked against faiss.

    python benchmarks/search_scale.py                       # 100k, 1M, 10M x 12/24/32/48/64 bits
    python benchmarks/search_scale.py --sizes 100000 --bits 48 --no-milvus
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faiss  # noqa: E402

from benchlib.timing import batched, percentiles, run_threads, single  # noqa: E402
from dsrhn.contracts import code_dim, stored_bytes  # noqa: E402
from serving.index import GalleryIndex, build_index, open_gallery, read_manifest, write_gallery  # noqa: E402

K = 100


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def concurrent(search, queries: np.ndarray, clients: int = 8) -> dict:
    lat, lock = [], threading.Lock()

    def client(part):
        mine = []
        for q in part:
            t0 = time.perf_counter()
            search(q[None])
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    wall = run_threads([lambda part=queries[i::clients]: client(part) for i in range(clients)])
    p50, p99 = percentiles(lat)
    return {"p50": p50, "p99": p99, "qps": len(lat) / wall}


def measure(name: str, search, queries: np.ndarray, n_single: int) -> dict:
    p50, p99 = single(search, queries[:n_single])
    return {
        "name": name,
        "single_p50": p50,
        "single_p99": p99,
        "batched": batched(search, queries[:256]),
        **{f"conc_{k}": v for k, v in concurrent(search, queries[: n_single * 2]).items()},
    }


def run_size_bits(n: int, bits: int, rng: np.random.Generator, n_single: int) -> list[dict]:
    nb = code_dim(bits) // 8
    codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    if bits % 8:
        codes[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)  # zero padding bits, as the sign/pack rule writes
    queries = rng.integers(0, 256, (512, nb), dtype=np.uint8)
    default_threads = faiss.omp_get_max_threads()

    m0 = rss_mib()
    t0 = time.perf_counter()
    native = faiss.IndexBinaryFlat(nb * 8)
    native.add(codes)
    native_build = time.perf_counter() - t0
    native_mem = rss_mib() - m0

    def native_search(q):
        faiss.omp_set_num_threads(default_threads)
        return native.search(q, K)

    m0 = rss_mib()
    t0 = time.perf_counter()
    ours = GalleryIndex(build_index(codes, bits), None, {"stored_bytes": stored_bytes(bits)})
    ours_build = time.perf_counter() - t0
    ours_mem = rss_mib() - m0

    def ours_search(q):
        return ours.search(q, K)

    batched_row = through_batcher(ours, queries[: n_single * 2], n)

    d_ref, r_ref = native.search(queries[:64], K)
    d, r = ours.search(queries[:64], K)
    identical = bool((d == d_ref).all() and (r == r_ref).all())
    rows = [
        dict(
            measure("IndexBinaryFlat native, default threads (baseline)", native_search, queries, n_single),
            build_s=native_build,
            mem_mib=native_mem,
        ),
        dict(
            measure(f"dsrhn: padded to {stored_bytes(bits)} B, thread policy", ours_search, queries, n_single),
            build_s=ours_build,
            mem_mib=ours_mem,
            identical=identical,
        ),
        batched_row,
    ]
    return rows


def through_batcher(gallery: GalleryIndex, queries: np.ndarray, n: int) -> dict:
    """8 concurrent clients of single queries through the server's batcher (serving/batching.py), whose
    model call here is the identity (the query bytes are the codes): the search part of a served request,
    id lookups of the top-k included."""
    from serving.batching import Batcher, BatchingConfig
    from serving.index import IdMap

    nb = queries.shape[1]
    gallery.ids = IdMap(np.zeros(0, np.uint8), np.zeros(n + 1, np.uint64), np.zeros((n, 0), np.uint8), [])
    servable = type("Servable", (), {"index": gallery})()
    batcher = Batcher(
        BatchingConfig(max_batch_size=64),
        lambda s, sig, images: {"codes": np.frombuffer(b"".join(images), np.uint8).reshape(-1, nb)},
        lambda e: e,
    )
    r = concurrent(lambda q: batcher.submit(servable, "codes", [q.tobytes()], K), queries)
    return {
        "name": "dsrhn + request batching (serving/batching.py)",
        "conc_p50": r["p50"],
        "conc_p99": r["p99"],
        "conc_qps": r["qps"],
        "calls": batcher.batches,
    }


def gallery_load(n: int, bits: int, rng: np.random.Generator, root: str) -> dict:
    """Write a full gallery (index + id map + manifest) and load it in a fresh process."""
    nb = code_dim(bits) // 8
    codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    ids = [f"photos/{i // 10000:04d}/{i:09d}.jpg" for i in range(n)]
    labels = np.zeros((n, 1), np.uint8)
    d = os.path.join(root, "index")
    t0 = time.perf_counter()
    write_gallery(d, codes, ids, labels, ["l0"], bits, {"model_fingerprint": "synthetic", "model_version": "1"})
    write_s = time.perf_counter() - t0
    del codes, ids
    out = subprocess.run([sys.executable, __file__, "--load-only", d], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["write_s"] = write_s
    res["disk_mib"] = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) / 2**20
    return res


def load_only(d: str) -> None:
    import psutil

    base = rss_mib()
    t0 = time.perf_counter()
    manifest = read_manifest(d)
    from dsrhn.contracts import check_files

    check_files(manifest, d)  # what the server checks, checksums of every file included
    g = open_gallery(d, manifest)
    load_s = time.perf_counter() - t0
    q = np.random.default_rng(1).integers(0, 256, (1, manifest["code_bytes"]), dtype=np.uint8)
    t0 = time.perf_counter()
    res = g.query(q, 10)[0]
    first_ms = (time.perf_counter() - t0) * 1e3
    assert len(res["ids"]) == 10 and res["ids"][0].startswith("photos/")
    print(
        json.dumps(
            {
                "load_s": load_s,
                "rss_mib": psutil.Process().memory_info().rss / 2**20,
                "rss_delta_mib": rss_mib() - base,
                "first_query_ms": first_ms,
            }
        )
    )


def milvus_rows(n: int, bits: int, rng: np.random.Generator, root: str) -> dict:
    from dsrhn.config import IndexConfig
    from serving.index import IdMap
    from serving.milvus import MilvusGallery, write_collection

    nb = code_dim(bits) // 8
    codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    queries = rng.integers(0, 256, (200, nb), dtype=np.uint8)
    manifest = {"model_fingerprint": "synthetic", "model_version": "1", "count": n}
    config = IndexConfig(backend="milvus", milvus_uri=os.path.join(root, "milvus.db"), milvus_collection="bench")
    t0 = time.perf_counter()
    manifest["milvus"] = write_collection(config, codes, bits, manifest)
    insert_s = time.perf_counter() - t0
    ids = IdMap(np.zeros(0, np.uint8), np.zeros(n + 1, np.uint64), np.zeros((n, 0), np.uint8), [])
    g = MilvusGallery.open(manifest, ids)
    native = faiss.IndexBinaryFlat(nb * 8)
    native.add(codes)
    d_ref, _ = native.search(queries[:50], K)
    d, _ = g.search(queries[:50], K)
    p50, p99 = single(lambda q: g.search(q, K), queries[:100])
    return {
        "insert_s": insert_s,
        "single_p50": p50,
        "single_p99": p99,
        "batched": batched(lambda q: g.search(q, K), queries),
        "same_distances": bool((d == d_ref).all()),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--bits", default="12,24,32,48,64")
    ap.add_argument("--single", type=int, default=200, help="single queries timed per row")
    ap.add_argument("--no-milvus", action="store_true")
    ap.add_argument("--load-only", help=argparse.SUPPRESS)
    return ap.parse_args()


def print_size_bits(n: int, bits: int, base: dict, ours: dict, via: dict) -> None:
    for r in (base, ours):
        print(
            f"{n:>10,} {bits:>4}  {r['name']:<52} {r['build_s']:7.2f} {r['mem_mib']:6.0f} "
            f"{r['single_p50']:10.3f} {r['single_p99']:7.3f} {r['batched']:8.4f} {r['conc_p50']:8.3f} "
            f"{r['conc_p99']:8.3f} {r['conc_qps']:8.0f}"
        )
    print(
        f"{n:>10,} {bits:>4}  {via['name']:<52} {'':>7} {'':>6} {'':>10} {'':>7} {'':>8} "
        f"{via['conc_p50']:8.3f} {via['conc_p99']:8.3f} {via['conc_qps']:8.0f}"
    )
    print(
        f"{'':>16}  ratio: single p50 {base['single_p50'] / ours['single_p50']:.2f}x, batched "
        f"{base['batched'] / ours['batched']:.2f}x, 8 clients q/s {ours['conc_qps'] / base['conc_qps']:.2f}x "
        f"({via['conc_qps'] / base['conc_qps']:.2f}x batched, p99 {via['conc_p99']:.2f} ms); "
        f"identical results: {ours['identical']}"
    )


def print_gallery_and_milvus(n: int, rng: np.random.Generator, milvus: bool) -> None:
    """The full gallery's write and fresh-process load at n x 48 bits; Milvus Lite at 100k unless told not."""
    root = tempfile.mkdtemp(prefix="dsrhn-scale-")
    try:
        r = gallery_load(n, 48, rng, root)
        print(
            f"\nfull gallery of {n:,} 48-bit codes (index + columnar id map + manifest, {r['disk_mib']:.0f} MiB on "
            f"disk): write {r['write_s']:.1f} s; fresh-process load with checksums {r['load_s']:.2f} s, "
            f"RSS {r['rss_mib']:.0f} MiB (+{r['rss_delta_mib']:.0f} MiB for the gallery), "
            f"first query {r['first_query_ms']:.1f} ms"
        )
        if milvus:
            m = milvus_rows(100_000, 48, rng, root)
            print(
                f"Milvus Lite (embedded), 100,000 48-bit codes: insert {m['insert_s']:.1f} s; single p50 "
                f"{m['single_p50']:.2f} ms p99 {m['single_p99']:.2f} ms; batched {m['batched']:.3f} ms/query; "
                f"same top-{K} distances as faiss: {m['same_distances']}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    args = parse_args()
    if args.load_only:
        return load_only(args.load_only)
    sizes = [int(x) for x in args.sizes.split(",")]
    bits_list = [int(x) for x in args.bits.split(",")]
    rng = np.random.default_rng(0)
    print(
        f"{os.cpu_count()} cores, faiss {faiss.__version__}, default OpenMP threads {faiss.omp_get_max_threads()}, "
        f"k={K}; latencies in ms; ratio = baseline / dsrhn (higher is better)"
    )
    print(
        f"{'N':>10} {'bits':>4}  {'index':<52} {'build s':>7} {'MiB':>6} {'single p50':>10} {'p99':>7} "
        f"{'batched':>8} {'8cl p50':>8} {'8cl p99':>8} {'8cl q/s':>8}"
    )
    for n in sizes:
        for bits in bits_list:
            rows = run_size_bits(n, bits, rng, args.single if n < 10_000_000 else max(50, args.single // 4))
            print_size_bits(n, bits, *rows)
    print_gallery_and_milvus(max(sizes), rng, not args.no_milvus)


if __name__ == "__main__":
    main()
