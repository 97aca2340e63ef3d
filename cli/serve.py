"""`dsrhn serve`: the TF-Serving-compatible REST service with k-NN search and a search page."""

from __future__ import annotations

import argparse
import os
import sys

from dsrhn.config import FAISS_DEVICES
from serving import limits

NAME, HELP = "serve", "TF-Serving-compatible REST API + search"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--base-dir", required=True, help="model base directory: <base>/<name>/<version>/")
    p.add_argument("--model-name", default="dsrhn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=limits.PORT)
    p.add_argument("--poll-seconds", type=float, default=limits.POLL_SECONDS)
    _limit_args(p)
    p.add_argument(
        "--faiss-device",
        default="cpu",
        choices=list(FAISS_DEVICES),
        help="where exact search runs: gpu (faiss's GpuIndexBinaryFlat; `scripts/setup.sh --gpu` installs "
        "it; k and re-ranking shortlists <= 2048; the CPU when no GPU is present), auto (the GPU if "
        "there is one)",
    )
    _batching_args(p)
    _process_args(p)
    p.add_argument(
        "--write-key-file",
        help="a file holding the key (>= 16 bytes, mode 600) that :add and :remove "
        "requests must send as `Authorization: Bearer <key>`; without it the server has no write endpoints",
    )
    return p


def _limit_args(p: argparse.ArgumentParser) -> None:
    """What one request, one image and the whole server may take (serving/limits.py)."""
    p.add_argument("--max-instances", type=int, default=limits.MAX_INSTANCES, help="images per request (more: 400)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=limits.MAX_PIXELS,
        help="pixels per image, read from its header before decoding (more: 400)",
    )
    p.add_argument(
        "--max-results", type=int, default=limits.MAX_RESULTS, help="k x images in one :search answer (more: 400)"
    )
    p.add_argument(
        "--max-inflight", type=int, default=limits.MAX_INFLIGHT, help="requests answered at once (more: 429)"
    )
    p.add_argument("--max-connections", type=int, default=limits.MAX_CONNECTIONS, help="open connections (more: 503)")
    p.add_argument(
        "--keep-alive-seconds",
        type=float,
        default=float(limits.KEEP_ALIVE_S),
        help="an idle keep-alive connection is closed after this",
    )
    p.add_argument(
        "--drain-seconds",
        type=int,
        default=limits.DRAIN_S,
        help="on SIGTERM, requests in flight get this long to finish before the server exits",
    )


def _batching_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gather concurrent requests into one model call and one index search (default on)",
    )
    p.add_argument("--max-batch-size", type=int, default=limits.MAX_BATCH_SIZE, help="images per batched model call")
    p.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=limits.BATCH_TIMEOUT_MS,
        help="wait up to this long for a batch to fill (0: take what is queued; no added latency)",
    )
    p.add_argument("--num-batch-threads", type=int, default=limits.NUM_BATCH_THREADS, help="batches run at once")


def _process_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own model and index (docs/serving.md)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="TensorFlow threads inside one op, per process (0: TensorFlow's default, every core)",
    )
    p.add_argument(
        "--inter-op-threads",
        type=int,
        default=0,
        help="TensorFlow ops run at once, per process (0: TensorFlow's default)",
    )
    p.add_argument(
        "--http",
        default="auto",
        choices=["auto", "httptools", "h11"],
        help="uvicorn's HTTP parser (auto: httptools, which scripts/setup.sh installs; h11: pure Python)",
    )
    p.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="uvicorn's event loop (auto: uvloop, which scripts/setup.sh installs)",
    )


def run(args) -> int:
    from serving.batching import BatchingConfig
    from serving.server import InputLimits, ServeSpec, read_write_key, serve

    spec = ServeSpec(
        args.base_dir,
        args.model_name,
        poll_seconds=args.poll_seconds,
        limits=InputLimits(args.max_instances, args.max_pixels, args.max_results),
        batching=BatchingConfig(args.batching, args.max_batch_size, args.batch_timeout_ms, args.num_batch_threads),
        max_inflight=args.max_inflight,
        faiss_device=args.faiss_device,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        write_key_file=os.path.abspath(args.write_key_file) if args.write_key_file else "",
    )
    if spec.write_key_file:
        try:
            read_write_key(spec.write_key_file)  # refused here, in one line, not in every worker
        except ValueError as e:
            sys.exit(f"dsrhn serve: error: {e}")
    serve(
        spec,
        host=args.host,
        port=args.port,
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive_seconds,
        workers=args.workers,
        http=args.http,
        loop=args.loop,
        drain_s=args.drain_seconds,
    )
    return 0
