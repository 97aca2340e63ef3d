"""Load test of the REST service on loopback: N concurrent clients for a bounded time.

Reports requests/s, p50/p99 latency and errors (must be 0) for :search with server-side batching off
(the named baseline: one SavedModel call and one index search per request, as before batching) and
on (concurrent requests gathered into one model call and one search), and GET /healthz (the
framework's floor: no model call), all in the same run.

    python benchmarks/serve_load.py --base-dir runs/tfx/serving --model-name dsrhn [--clients 8 --seconds 20]
    python benchmarks/serve_load.py --build-tiny   # makes a tiny untrained model + index first
    python benchmarks/serve_load.py ... --process "dsrhn" --process "student-xla:--workers 2 --intra-op-threads 1"

--process MODEL[:FLAGS] adds a row served by `dsrhn serve --model-name MODEL FLAGS` in its own process(es), as a
user runs it (e.g. several worker processes, TensorFlow's thread pools), against the same unbatched baseline.
--baseline-process MODEL[:FLAGS] makes such a row the named baseline instead, and leaves out the in-process rows
(e.g. the server as it was: `dsrhn:--no-batching --http h11 --loop asyncio`).
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import httpx

from benchlib.serve import ProcessServer, build_tiny
from benchlib.timing import run_threads


def start_server(base_dir: str, name: str, batching: bool = True, timeout_ms: float = 0.0, threads: int = 1):
    from serving.batching import BatchingConfig
    from serving.server import BackgroundServer
    from serving.store import ModelStore

    store = ModelStore(base_dir, name, poll_seconds=3600)
    store.refresh()
    if store.current is None:
        raise SystemExit(f"no servable version with an index under {base_dir}/{name}")
    return BackgroundServer(
        store, batching=BatchingConfig(enabled=batching, batch_timeout_ms=timeout_ms, num_batch_threads=threads)
    )


@dataclass(frozen=True)
class Row:
    """One measured row: a model served in this process (batching settings), or by `dsrhn serve FLAGS`."""

    model: str
    label: str
    batching: bool = False
    timeout_ms: float = 0.0
    threads: int = 1
    flags: str | None = None  # not None: `dsrhn serve` in its own process(es) with these flags


def load(url: str, method: str, body: dict | None, clients: int, seconds: float, kind: str = "sockets") -> dict:
    """The clients run in their own process, so they do not compete with the server for its GIL."""
    import json
    import subprocess
    import sys

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"url": url, "method": method, "body": body, "clients": clients, "seconds": seconds, "kind": kind}, f)
    try:
        out = subprocess.run([sys.executable, __file__, "--client", f.name], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"the client process failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def client_process(spec_path: str) -> None:
    import json

    with open(spec_path) as f:
        spec = json.load(f)
    print(
        json.dumps(
            run_clients(spec["url"], spec["method"], spec["body"], spec["clients"], spec["seconds"], spec["kind"])
        )
    )


def request_bytes(url: str, method: str, body: dict | None) -> tuple[tuple[str, int], bytes]:
    """The whole HTTP/1.1 request, serialised once: (host, port) and the bytes every request of a row sends."""
    import json
    from urllib.parse import urlsplit

    u = urlsplit(url)
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (u.hostname, u.port), (head + "\r\n").encode() + payload


def _receive(sock, buf: bytearray) -> None:
    """Append what the socket has next to `buf`; a closed connection mid-response is an error."""
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection mid-response")
    buf += chunk


def read_response(sock, buf: bytearray) -> int:
    """One HTTP/1.1 response with a Content-Length (what the server sends) from a keep-alive socket; its status code.
    `buf` carries bytes already received beyond it."""
    while b"\r\n\r\n" not in buf:
        _receive(sock, buf)
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    status = int(head.split(b" ", 2)[1])
    at = head.find(b"\r\ncontent-length:")
    length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
    while len(buf) < end + length:
        _receive(sock, buf)
    del buf[: end + length]
    return status


def socket_client(address: tuple[str, int], raw: bytes, stop: float, lat: list, errors: list) -> None:
    """One keep-alive connection sending the request's bytes back to back until `stop` (a time.time())."""
    import socket

    buf = bytearray()
    sock = socket.create_connection(address, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:  # at least one request, however late the thread starts on busy cores
            t0 = time.perf_counter()
            sock.sendall(raw)
            status = read_response(sock, buf)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
            if time.time() >= stop:
                break
    except OSError as e:
        errors.append(repr(e))
    finally:
        sock.close()


def httpx_client(url: str, method: str, body: dict | None, stop: float, lat: list, errors: list) -> None:
    """One httpx client sending requests back to back until `stop`."""
    with httpx.Client(timeout=30) as c:
        while True:  # at least one request: making the client can outlast a short run
            t0 = time.perf_counter()
            r = c.post(url, json=body) if method == "POST" else c.get(url)
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(r.status_code)
            if time.time() >= stop:
                break


def run_clients(url: str, method: str, body: dict | None, clients: int, seconds: float, kind: str = "sockets") -> dict:
    """`clients` threads, each one keep-alive connection sending requests back to back. kind "sockets": the request's
    bytes are made once and the answers parsed only as far as status and length (so the load generator takes little of
    the cores it shares with the server); "httpx": a full HTTP client per thread. Reports the clients' own CPU time."""
    import resource

    lat, errors = [], []
    stop = time.time() + seconds
    address, raw = request_bytes(url, method, body)
    if kind == "sockets":
        client = functools.partial(socket_client, address, raw, stop, lat, errors)
    else:
        client = functools.partial(httpx_client, url, method, body, stop, lat, errors)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall = run_threads([client] * clients)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / wall  # cores the clients used
    out = {"n": len(lat), "errors": len(errors), "client_cores": client_cpu}
    if not lat:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), **out}
    lat.sort()
    return {
        "rps": len(lat) / wall,
        "p50": statistics.median(lat) * 1e3,
        "p99": lat[int(0.99 * (len(lat) - 1))] * 1e3,
        **out,
    }


def profile_search(base_dir: str, name: str, body: dict, n: int = 300) -> dict:
    """Where one unbatched :search spends its time, stage by stage, in this process (no HTTP): the request's JSON,
    base64, the image headers' checks, the SavedModel call (decode, resize, networks, packing), the index search,
    the hits' ids and labels, and the answer's JSON. Median milliseconds over n requests, after a warm-up."""
    import json

    import numpy as np

    from serving.index import answer_results
    from serving.server import InputLimits, _run_signature, parse_images
    from serving.store import ModelStore

    store = ModelStore(base_dir, name, poll_seconds=3600)
    store.refresh()
    s = store.current
    raw = json.dumps(body).encode()
    limits = InputLimits()
    stages: dict = {
        k: []
        for k in ("json in", "base64", "header checks", "model call", "index search", "ids and labels", "json out")
    }
    for i in range(n + 20):
        t = [time.perf_counter()]
        req = json.loads(raw)
        t.append(time.perf_counter())
        images, _ = parse_images(req)
        t.append(time.perf_counter())
        limits.check(images)
        t.append(time.perf_counter())
        out = _run_signature(s, "serving_default", images)
        t.append(time.perf_counter())
        dist, rows = s.index.search(np.asarray(out["codes"], np.uint8), req["k"])
        t.append(time.perf_counter())
        results = answer_results(s.index, out, dist, rows, req["k"], None)
        t.append(time.perf_counter())
        json.dumps({"model_version": str(s.version), "k": req["k"], "results": results})
        t.append(time.perf_counter())
        if i >= 20:
            for values, a, b in zip(stages.values(), t, t[1:]):
                values.append((b - a) * 1e3)
    med = {k: statistics.median(v) for k, v in stages.items()}
    total = sum(med.values())
    return {
        "stages_ms": {k: round(v, 3) for k, v in med.items()},
        "total_ms": round(total, 3),
        "model_share": round(med["model call"] / total, 3),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-dir")
    ap.add_argument("--model-name", default="dsrhn")
    ap.add_argument("--examples", help="Examples dir to take query images from (default: built tiny set)")
    ap.add_argument("--build-tiny", action="store_true")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--warmup-seconds", type=float, default=2.0, help="load before each row's measured seconds")
    ap.add_argument("--batch-timeout-ms", type=float, default=2.0, help="the third row's batch timeout")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--profile-only", action="store_true", help="only where one :search spends its time")
    ap.add_argument(
        "--compare-model-name",
        default="",
        help="more models in --base-dir, comma-separated (e.g. an XLA export, a student) measured in the "
        "same run against --model-name's unbatched row, rows marked with their names",
    )
    ap.add_argument(
        "--process",
        action="append",
        default=[],
        metavar="MODEL[:FLAGS]",
        help="a row served by `dsrhn serve --model-name MODEL FLAGS` in its own process(es) (repeatable)",
    )
    ap.add_argument(
        "--load-client",
        default="sockets",
        choices=["sockets", "httpx"],
        help="the load generator: raw keep-alive sockets, the request serialised once (default; it takes "
        "little of the cores the server shares), or httpx clients (this script's generator until "
        "2026-11-28)",
    )
    ap.add_argument(
        "--baseline-process",
        metavar="MODEL[:FLAGS]",
        help="the named baseline is this `dsrhn serve` row; only --process rows are compared with it",
    )
    return ap.parse_args()


def served_rows(args, compare: list[str]) -> list[Row]:
    """The rows to measure: batching settings in this process, then --compare-model-name and --process rows."""
    m, t = args.model_name, args.batch_timeout_ms
    rows = [
        Row(m, "unbatched (baseline)", False),
        Row(m, "batched", True),
        Row(m, f"batched, timeout {t:g} ms", True, t),
        Row(m, "batched, 2 batch threads", True, threads=2),
        Row(m, f"batched, 2 batch threads, timeout {t:g} ms", True, t, 2),
    ]
    for name in compare:
        rows += [
            Row(name, f"{name}: unbatched", False),
            Row(name, f"{name}: batched, 2 batch threads", True, threads=2),
        ]
    if args.baseline_process:
        name, _, flags = args.baseline_process.partition(":")
        rows = [Row(name, f"{name}: dsrhn serve {flags or '(defaults)'} (baseline)", flags=flags)]
    for spec in args.process:
        name, _, flags = spec.partition(":")
        rows.append(Row(name, f"{name}: dsrhn serve {flags or '(defaults)'}", flags=flags))
    return rows


def measure(args, base: str, body: dict, row: Row, results: dict) -> None:
    """One row's :search load (after a warm-up); the first row also measures GET /healthz."""
    server = (
        ProcessServer(base, row.model, row.flags)
        if row.flags is not None
        else start_server(base, row.model, row.batching, row.timeout_ms, row.threads)
    )
    batcher = server.app.state.model.batcher if row.flags is None and row.batching else None
    try:
        if not results:
            results["GET /healthz (no model)"] = load(
                f"{server.url}/healthz", "GET", None, args.clients, args.seconds, args.load_client
            )
        url = f"{server.url}/v1/models/{row.model}:search"
        load(url, "POST", body, args.clients, args.warmup_seconds, args.load_client)  # XLA compiles: not counted
        if batcher:
            batcher.batched_images = batcher.batches = 0
        results[f":search k={args.k} {row.label}"] = load(
            url, "POST", body, args.clients, args.seconds, args.load_client
        )
        if batcher:
            results[f":search k={args.k} {row.label}"]["per_call"] = batcher.batched_images / max(1, batcher.batches)
    finally:
        server.stop()


def print_profiles(base: str, names: list[str], body: dict) -> None:
    for name in names:
        prof = profile_search(base, name, body)
        print(
            f"where one unbatched :search of {name} spends its time (median ms, in-process, no HTTP): "
            + ", ".join(f"{k} {v:.3f}" for k, v in prof["stages_ms"].items())
            + f"; total {prof['total_ms']:.2f} ms, the model call {prof['model_share']:.0%}",
            flush=True,
        )


def print_results(results: dict) -> None:
    for name, r in results.items():
        extra = f"  {r['per_call']:.1f} images per model call" if "per_call" in r else ""
        print(
            f"  {name:<40} {r['rps']:8.1f} req/s  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
            f"n={r['n']} errors={r['errors']}  clients' CPU {r['client_cores']:.2f} cores{extra}"
        )
    names = list(results)
    base_r = results[names[1]]
    for name in names[2:]:
        r = results[name]
        print(f"  {name}: {r['rps'] / base_r['rps']:.2f}x the baseline's req/s, p99 {r['p99'] / base_r['p99']:.2f}x")


def main() -> None:
    args = parse_args()
    if args.client:
        return client_process(args.client)
    base, examples = args.base_dir, args.examples
    if args.build_tiny:
        base, examples = build_tiny(tempfile.mkdtemp(prefix="dsrhn-load-"))
    if not base or not examples:
        raise SystemExit("give --base-dir and --examples, or --build-tiny")
    from dsrhn.records import read_split_raw

    lr = next(read_split_raw(examples, "query").take(1).as_numpy_iterator())["lr"]
    body = {"instances": [{"b64": base64.b64encode(lr).decode()}], "k": args.k}
    print(f"{args.clients} clients ({args.load_client}) x {args.seconds:.0f} s on loopback, {os.cpu_count()} cores")
    compare = [m for m in args.compare_model_name.split(",") if m]
    print_profiles(base, [args.model_name] + compare, body)
    if args.profile_only:
        return
    results: dict = {}
    for row in served_rows(args, compare):
        measure(args, base, body, row, results)
    print_results(results)
    if any(r["errors"] for r in results.values()):
        raise SystemExit("errors under load")


if __name__ == "__main__":
    main()
