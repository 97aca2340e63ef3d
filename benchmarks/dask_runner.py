"""The gallery encode (`dsrhn index`'s Beam job) on Beam's Dask runner against the DirectRunner, in one run: wall
time of the same gallery on a distributed.LocalCluster of 1 and of 2 worker processes, the baseline being the
DirectRunner in this process; the codes of every run checked identical.

    python benchmarks/dask_runner.py --model /tmp/pj/serving/photos/<version> --photos /tmp/photos --n 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gallery(photos: str, n: int):
    """n items cycling over the corpus's photos, each under its own id (the same file may be encoded twice)."""
    from serving.indexer import GalleryItem

    with open(os.path.join(photos, "manifest.json")) as f:
        files = sorted(p["file"] for p in json.load(f)["photos"])
    return [
        GalleryItem(f"{i:06d}/{files[i % len(files)]}", os.path.join(photos, files[i % len(files)]), ())
        for i in range(n)
    ]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--photos", default="data/photos")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="1,2")
    return ap.parse_args()


def on_cluster(args, items: list, n: int, codes: list) -> tuple[str, float, bool]:
    """The encode on a LocalCluster of n worker processes: (row name, wall s, codes identical to the baseline's)."""
    from distributed import Client, LocalCluster

    from serving.indexer import encode_items

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
    try:
        with Client(cluster):
            beam = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
            t0 = time.perf_counter()
            enc = encode_items(args.model, items, beam, args.batch_size, previews=False)
            wall = time.perf_counter() - t0
    finally:
        cluster.close()
    name = f"Dask runner, LocalCluster of {n} worker process{'es' if n > 1 else ''}"
    return name, wall, [r["code"] for r in enc.rows] == codes


def main() -> None:
    from serving.indexer import encode_items

    args = parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    items = gallery(args.photos, args.n)
    t0 = time.perf_counter()
    base = encode_items(args.model, items, ["--runner=DirectRunner"], args.batch_size, previews=False)
    rows = [("DirectRunner, this process (baseline)", time.perf_counter() - t0, True)]
    codes = [r["code"] for r in base.rows]
    rows += [on_cluster(args, items, int(n), codes) for n in args.workers.split(",")]
    print(
        f"gallery encode of {args.n} photos (batches of {args.batch_size}, no previews), model {args.model}; "
        f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}; one run each"
    )
    print("| runner | wall s | images/s | baseline / this | codes identical to the baseline |")
    print("|---|---|---|---|---|")
    for name, wall, same in rows:
        print(f"| {name} | {wall:.1f} | {args.n / wall:.1f} | {rows[0][1] / wall:.2f} | {'yes' if same else 'NO'} |")
    if len(rows) >= 3:
        print(f"2 workers / 1 worker: {rows[1][1] / rows[2][1]:.2f}x faster")


if __name__ == "__main__":
    main()
