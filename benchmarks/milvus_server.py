"""A real Milvus server against faiss and Milvus Lite on one gallery, in one run: the baseline is faiss's exact
`IndexBinaryFlat` (what `dsrhn index` writes by default), searched in this process.

On N synthetic random 48-bit codes (a worst case for inverted lists: no clusters), through the product's own
write_collection / MilvusGallery: write s; single-query p50/p99 (one query per call, as a served request);
batched ms/query (200 queries in one call); top-100 answers identical to faiss's (equal distances at every rank
and the same ids below the 100th distance); BIN_IVF_FLAT recall@100 at several nprobe; then the server is
stopped and started on its folder: restart s, rows kept, answers identical to before.

    python benchmarks/milvus_server.py                 # 100,000 codes
    python benchmarks/milvus_server.py --n 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchlib.timing import batched, single  # noqa: E402
from dsrhn.config import IndexConfig  # noqa: E402
from serving.index import IdMap  # noqa: E402
from serving.milvus import MilvusGallery, write_collection  # noqa: E402
from serving.milvus_server import start, stop  # noqa: E402

K = 100
BITS = 48


def same_top_k(d: np.ndarray, rows: np.ndarray, d_ref: np.ndarray, rows_ref: np.ndarray) -> bool:
    """Equal distances at every rank and the same rows below each query's k-th distance (ties at the cut-off
    may be cut either way)."""
    if not np.array_equal(d, d_ref):
        return False
    for q in range(len(d)):
        kth = d[q, -1]
        if set(rows[q][d[q] < kth].tolist()) != set(rows_ref[q][d_ref[q] < kth].tolist()):
            return False
    return True


def recall(rows: np.ndarray, d_ref: np.ndarray, rows_ref: np.ndarray, codes: np.ndarray, queries: np.ndarray) -> float:
    """Share of the exact top-k found, counting any row at the k-th distance as right (tie-aware)."""
    kth = d_ref[:, -1]
    hits = 0
    for q in range(len(rows)):
        found = rows[q][rows[q] >= 0]
        dist = np.unpackbits(codes[found] ^ queries[q], axis=1).sum(1)
        hits += int((dist <= kth[q]).sum())
    return hits / rows_ref.size


def gallery(uri: str, codes: np.ndarray, index_type: str = "BIN_FLAT", nprobe: int | None = None):
    manifest = {"model_fingerprint": "synthetic", "model_version": "1", "count": len(codes)}
    config = IndexConfig(
        backend="milvus",
        milvus_uri=uri,
        milvus_collection=f"bench_{index_type.lower()}",
        milvus_index_type=index_type,
        nprobe=nprobe,
    )
    t0 = time.perf_counter()
    manifest["milvus"] = write_collection(config, codes, BITS, manifest)
    write_s = time.perf_counter() - t0
    ids = IdMap(np.zeros(0, np.uint8), np.zeros(len(codes) + 1, np.uint64), np.zeros((len(codes), 0), np.uint8), [])
    return MilvusGallery.open(manifest, ids), manifest, write_s


def row(name: str, search, write_s: float, queries: np.ndarray, n_single: int) -> dict:
    p50, p99 = single(search, queries[:n_single])
    return {"name": name, "write_s": write_s, "p50": p50, "p99": p99, "batched": batched(search, queries)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--single", type=int, default=100, help="single queries timed per row")
    ap.add_argument("--nprobe", default="16,64,256")
    return ap.parse_args()


def server_rows(args, folder: str, codes: np.ndarray, queries: np.ndarray, ref: tuple, rows: list) -> dict:
    """The Milvus server's rows (BIN_FLAT, then BIN_IVF_FLAT per nprobe); its BIN_FLAT gallery and answers."""
    t0 = time.perf_counter()
    server = start(folder)
    start_s = time.perf_counter() - t0
    try:
        flat, flat_manifest, write_s = gallery(server.uri, codes)
        d, r = flat.search(queries, K)
        rows.append(
            {
                **row("Milvus server 2.3.5, BIN_FLAT", lambda q: flat.search(q, K), write_s, queries, args.single),
                "identical": same_top_k(d, r, *ref),
            }
        )
        for nprobe in (int(x) for x in args.nprobe.split(",") if x):
            ivf, _, write_s = gallery(server.uri, codes, "BIN_IVF_FLAT", nprobe)
            _, r = ivf.search(queries, K)
            rows.append(
                {
                    **row(
                        f"Milvus server, BIN_IVF_FLAT nprobe {nprobe}",
                        lambda q, ivf=ivf: ivf.search(q, K),
                        write_s,
                        queries,
                        args.single,
                    ),
                    "recall": recall(r, *ref, codes, queries),
                }
            )
        return {"start_s": start_s, "flat": flat, "manifest": flat_manifest, "before": flat.search(queries, K)}
    finally:
        stop(server)


def after_restart(folder: str, served: dict, queries: np.ndarray) -> dict:
    """The server started again on its folder: seconds to start, rows kept, its answers."""
    t0 = time.perf_counter()
    server = start(folder)
    restart_s = time.perf_counter() - t0
    try:
        again = MilvusGallery.open(served["manifest"], served["flat"].ids)  # checks the row count against the manifest
        after = again.search(queries, K)
        kept = again.client.query(again.collection, output_fields=["count(*)"])[0]["count(*)"]
    finally:
        stop(server)
    return {"restart_s": restart_s, "after": after, "kept": kept}


def print_table(args, rows: list, served: dict, again: dict) -> None:
    base = rows[0]
    print(
        f"{args.n:,} random {BITS}-bit codes, {args.queries} queries, k={K}; {platform.node()}, {os.cpu_count()} "
        f"cores, {time.strftime('%Y-%m-%d %H:%M')}; ratio = faiss / this (higher is better)"
    )
    print(
        "| index | write s | single p50 ms | p99 ms | batched ms/query | p50 ratio | batched ratio | same top-100 as "
        "faiss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        same = (
            ("yes" if x["identical"] else "NO")
            if "identical" in x
            else (f"recall@100 {x['recall']:.3f}" if "recall" in x else "baseline")
        )
        print(
            f"| {x['name']} | {x['write_s']:.2f} | {x['p50']:.3f} | {x['p99']:.3f} | {x['batched']:.4f} | "
            f"{base['p50'] / x['p50']:.3f} | {base['batched'] / x['batched']:.3f} | {same} |"
        )
    before, after = served["before"], again["after"]
    print(
        f"server start {served['start_s']:.1f} s; stop + start on its folder {again['restart_s']:.1f} s; rows after "
        f"the restart {again['kept']:,} of {args.n:,}; answers identical to before the restart: "
        f"{np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])}"
    )


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.n, BITS // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, BITS // 8), dtype=np.uint8)
    root = tempfile.mkdtemp(prefix="dsrhn-milvus-")
    rows = []
    try:
        t0 = time.perf_counter()
        exact = faiss.IndexBinaryFlat(BITS)
        exact.add(codes)
        build_s = time.perf_counter() - t0
        ref = exact.search(queries, K)
        rows.append(
            row("faiss IndexBinaryFlat (baseline)", lambda q: exact.search(q, K), build_s, queries, args.single)
        )
        lite, _, write_s = gallery(os.path.join(root, "lite.db"), codes)
        d, r = lite.search(queries, K)
        rows.append(
            {
                **row("Milvus Lite 2.5.1, BIN_FLAT", lambda q: lite.search(q, K), write_s, queries, args.single),
                "identical": same_top_k(d, r, *ref),
            }
        )
        served = server_rows(args, os.path.join(root, "server"), codes, queries, ref, rows)
        again = after_restart(os.path.join(root, "server"), served, queries)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(args, rows, served, again)


if __name__ == "__main__":
    main()
