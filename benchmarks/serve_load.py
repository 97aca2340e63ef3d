"""Load test of the REST service on loopback: N concurrent clients for a bounded time.

Reports requests/s, p50/p99 latency and errors (must be 0) for :search and, as the named
baseline measured in the same run, GET /healthz (the framework's floor: no model call).

    python benchmarks/serve_load.py --base-dir runs/tfx/serving --model-name dsrhn [--clients 8 --seconds 20]
    python benchmarks/serve_load.py --build-tiny   # makes a tiny untrained model + index first
"""
from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import threading
import time

import httpx


def start_server(base_dir: str, name: str):
    from serving.server import BackgroundServer
    from serving.store import ModelStore

    store = ModelStore(base_dir, name)
    store.start()
    if store.current is None:
        raise SystemExit(f"no servable version with an index under {base_dir}/{name}")
    return BackgroundServer(store)


def build_tiny(root: str) -> tuple[str, str]:
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig, get_preset
    from serving.indexer import gallery_from_examples, run_indexing
    from trainer.export import export_saved_model
    from trainer.train import build_trainer

    ex = os.path.join(root, "examples")
    run_ingest({"kind": "fashion-mnist-mosaic", "n_train": 0, "n_query": 50, "n_gallery": 2000}, ex, 56, LRConfig())
    p = get_preset("cpu")
    t = build_trainer(p)
    v1 = os.path.join(root, "serving", "dsrhn", "1")
    export_saved_model(t.method, t.nets, v1, [str(i) for i in range(10)])
    run_indexing(v1, gallery_from_examples(ex))
    return os.path.join(root, "serving"), ex


def load(url: str, method: str, body: dict | None, clients: int, seconds: float) -> dict:
    lat, errors = [], []
    stop = time.time() + seconds

    def worker():
        with httpx.Client(timeout=30) as c:
            while time.time() < stop:
                t0 = time.perf_counter()
                r = c.post(url, json=body) if method == "POST" else c.get(url)
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"rps": len(lat) / wall, "p50": statistics.median(lat) * 1e3, "p99": lat[int(0.99 * (len(lat) - 1))] * 1e3,
            "n": len(lat), "errors": len(errors)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-dir")
    ap.add_argument("--model-name", default="dsrhn")
    ap.add_argument("--examples", help="Examples dir to take query images from (default: built tiny set)")
    ap.add_argument("--build-tiny", action="store_true")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    base, examples = args.base_dir, args.examples
    if args.build_tiny:
        base, examples = build_tiny(tempfile.mkdtemp(prefix="dsrhn-load-"))
    if not base or not examples:
        raise SystemExit("give --base-dir and --examples, or --build-tiny")
    from dsrhn.records import read_split_raw

    lr = next(read_split_raw(examples, "query").take(1).as_numpy_iterator())["lr"]
    body = {"instances": [{"b64": base64.b64encode(lr).decode()}], "k": args.k}
    server = start_server(base, args.model_name)
    url = server.url
    print(f"{args.clients} clients x {args.seconds:.0f} s on loopback, {os.cpu_count()} cores")
    results = {"GET /healthz (baseline)": load(f"{url}/healthz", "GET", None, args.clients, args.seconds),
               f"POST :search k={args.k}": load(f"{url}/v1/models/{args.model_name}:search", "POST", body,
                                                 args.clients, args.seconds)}
    for name, r in results.items():
        print(f"  {name:<26} {r['rps']:8.1f} req/s  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
              f"n={r['n']} errors={r['errors']}")
    b, s = results["GET /healthz (baseline)"], results[f"POST :search k={args.k}"]
    print(f"  search throughput = {s['rps'] / b['rps']:.2f}x of the no-model baseline")
    server.stop()
    if s["errors"] or b["errors"]:
        raise SystemExit("errors under load")


if __name__ == "__main__":
    main()
