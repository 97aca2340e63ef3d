"""The prepared device check (scripts/gpu_check.sh runs it), for the first GPU this project meets: about 8 minutes.

1. What is there: GPUs TensorFlow sees, faiss's GPU support.
2. Training: the paper preset (224 px, AlexNet HashNet + SRNet 16 x 64, DSRHN's alternating step, mixed precision and
   XLA on the GPU) for --steps steps of batch 64 on Fashion-MNIST mosaics: images/s and peak GPU memory; the named
   baseline is the same step on the CPU for --cpu-steps steps (batch 8), measured in the same run.
3. Search: faiss's GpuIndexBinaryFlat against IndexBinaryFlat on 1M random 64-bit codes, k = 100: the same distances
   (checked), queries/s of each and their ratio.
4. Serving: the trained model exported, its gallery indexed, served with --faiss-device gpu and one :search over HTTP.

It prints one table (and writes <out>/gpu_check.json) to paste into docs/results.md with the date and the card.

    bash scripts/gpu_check.sh                        # on the GPU machine, after `bash scripts/setup.sh --gpu`
    python benchmarks/gpu_check.py --smoke           # a CPU-only run of every part at toy sizes (the test uses it)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def devices() -> dict:
    import faiss
    import tensorflow as tf

    from serving.index import gpu_available

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return {
        "tf_gpus": names,
        "faiss_gpu_support": hasattr(faiss, "GpuIndexBinaryFlat"),
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "faiss_gpu_usable": gpu_available(),
        "host": platform.node(),
        "cpu_cores": os.cpu_count(),
    }


def train_rate(examples: str, preset_dict: dict, steps: int, device: str, work: str) -> dict:
    """images/s of the method's training step and the peak memory of the device it ran on. A run of one step (tracing,
    XLA compilation, the first step) and a run of `steps` steps are timed: the rate is (steps - 1) x batch over
    their difference, so compilation is not counted."""
    import tensorflow as tf

    from dsrhn.config import preset_from_dict
    from trainer.train import train

    preset = preset_from_dict(preset_dict)
    with tf.device(device):
        t0 = time.time()
        warm = train(
            examples,
            preset.replace(epochs=1, steps_per_epoch=1),
            work + "-warm",
            verbose=0,
            tensorboard=False,
            restart=True,
        )
        first = time.time() - t0
        if device.startswith("/GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
        t0 = time.time()
        done = train(
            examples, preset.replace(epochs=1, steps_per_epoch=steps), work, verbose=0, tensorboard=False, restart=True
        )
        seconds = time.time() - t0
    peak = (tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30) if device.startswith("/GPU") else None
    # one step trains SRNet on the batch and HashNet on [HR; SR]: 2 x batch images through HashNet per step
    return {
        "steps": steps,
        "batch": preset.batch_size,
        "seconds": round(seconds, 2),
        "first_step_seconds": round(first, 2),
        "images_per_s": round((steps - 1) * preset.batch_size / max(1e-6, seconds - first), 2),
        "peak_gpu_gib": peak and round(peak, 2),
        "mixed_precision": preset.mixed_precision,
        "xla": preset.xla,
        "trainer": done,
        "warm": warm,
    }


def search_rate(n: int, queries: int, k: int) -> dict:
    import faiss

    from serving.index import on_device

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (queries, 8), dtype=np.uint8)
    cpu = faiss.IndexBinaryFlat(64)
    cpu.add(codes)
    t0 = time.perf_counter()
    d_cpu, _ = cpu.search(q, k)
    cpu_s = time.perf_counter() - t0
    gpu, on = on_device(cpu, "gpu", print)
    out = {"codes": n, "bits": 64, "queries": queries, "k": k, "cpu_qps": round(queries / cpu_s, 1), "gpu": on}
    if on:
        gpu.search(q[:10], k)  # warm-up
        t0 = time.perf_counter()
        d_gpu, _ = gpu.search(q, k)
        gpu_s = time.perf_counter() - t0
        out.update(
            gpu_qps=round(queries / gpu_s, 1),
            ratio=round(cpu_s / gpu_s, 2),
            same_distances=bool(np.array_equal(d_cpu, d_gpu)),
        )
    return out


def serve_once(model_dir: str, examples: str, out: str, faiss_device: str) -> dict:
    import httpx

    from dsrhn.records import read_split_raw
    from serving.indexer import gallery_from_examples, run_indexing
    from serving.server import BackgroundServer
    from serving.store import ModelStore

    base = os.path.join(out, "serving")
    shutil.rmtree(base, ignore_errors=True)
    version = os.path.join(base, "dsrhn", "1")
    shutil.copytree(model_dir, version)
    run_indexing(version, gallery_from_examples(examples), beam_args=["--runner=DirectRunner"])
    store = ModelStore(base, "dsrhn", poll_seconds=3600, faiss_device=faiss_device)
    store.refresh()
    server = BackgroundServer(store)
    try:
        lr = next(read_split_raw(examples, "query").take(1).as_numpy_iterator())["lr"]
        t0 = time.perf_counter()
        r = httpx.post(
            f"{server.url}/v1/models/dsrhn:search",
            json={"instances": [{"b64": base64.b64encode(lr).decode()}], "k": 10},
            timeout=120,
        )
        ms = (time.perf_counter() - t0) * 1000
        return {
            "status": r.status_code,
            "hits": len(r.json()["results"][0]["ids"]) if r.status_code == 200 else 0,
            "round_trip_ms": round(ms, 1),
            "index_on_gpu": bool(store.current.index.on_gpu),
            "timing": r.json().get("timing"),
        }
    finally:
        server.stop()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu-check")
    ap.add_argument("--steps", type=int, default=50, help="paper-preset steps timed on the GPU")
    ap.add_argument("--cpu-steps", type=int, default=3, help="the same step on the CPU: the named baseline")
    ap.add_argument("--codes", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--smoke", action="store_true", help="toy sizes, CPU only: checks that every part runs")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.cpu_steps, args.codes, args.queries = 3, 3, 20_000, 200
    return args


def setup(args) -> tuple:
    """(the preset timed, the Examples at its HR size): the paper preset at 224 px, or a toy cpu one (--smoke)."""
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig, get_preset

    if args.smoke:
        hr, preset = 56, get_preset("cpu", bits=48, batch_size=16, sr_blocks=1, sr_filters=8)
    else:
        hr, preset = 224, get_preset("paper", bits=48)
    examples = os.path.join(args.out, f"examples-{hr}")
    if not os.path.exists(os.path.join(examples, "dsrhn_dataset.json")):
        run_ingest(
            {"kind": "fashion-mnist-mosaic", "n_train": 512, "n_query": 20, "n_gallery": 200},
            examples,
            hr,
            LRConfig(scale=4),
            beam_args=["--runner=DirectRunner"],
        )
    return preset, examples


def train_rates(args, preset, examples: str, gpu: bool, report: dict):
    """The CPU baseline's training rate and, with a GPU, the GPU's (into report); the trainer last timed."""
    cpu_preset = preset.replace(batch_size=8 if not args.smoke else preset.batch_size, mixed_precision=False, xla=False)
    base = train_rate(
        examples, json.loads(json.dumps(cpu_preset.to_dict())), args.cpu_steps, "/CPU:0", os.path.join(args.out, "cpu")
    )
    trained = base.pop("trainer").trainer
    base.pop("warm")
    report["train_cpu_baseline"] = base
    print(f"train, CPU (baseline): {base['images_per_s']} images/s (batch {base['batch']})", flush=True)
    if not gpu:
        report["train_gpu"] = "skipped: no GPU visible to TensorFlow" if not args.smoke else "skipped (--smoke)"
        return trained
    run = train_rate(
        examples, json.loads(json.dumps(preset.to_dict())), args.steps, "/GPU:0", os.path.join(args.out, "gpu")
    )
    trained = run.pop("trainer").trainer
    run.pop("warm")
    run["speedup_vs_cpu"] = round(run["images_per_s"] / base["images_per_s"], 1)
    report["train_gpu"] = run
    print(
        f"train, GPU: {run['images_per_s']} images/s (batch {run['batch']}, mixed precision, XLA), peak "
        f"{run['peak_gpu_gib']} GiB, {run['speedup_vs_cpu']}x the CPU",
        flush=True,
    )
    return trained


def print_row(report: dict) -> None:
    """The one line to paste into docs/results.md."""
    g, s, base = report["train_gpu"], report["search"], report["train_cpu_baseline"]
    print(
        f"\n| {report['date']} | {', '.join(report['devices']['tf_gpus']) or 'no GPU'} | "
        + (f"{g['images_per_s']} img/s, peak {g['peak_gpu_gib']} GiB | " if isinstance(g, dict) else "- | ")
        + f"CPU {base['images_per_s']} img/s | faiss 1M x 64 bit: CPU {s['cpu_qps']} q/s"
        + (f", GPU {s['gpu_qps']} q/s ({s['ratio']}x, same distances: {s['same_distances']})" if s.get("gpu") else "")
        + f" | search {report['serve']['status']} ({report['serve']['hits']} hits) | {report['minutes']} min |"
    )


def main() -> int:
    from trainer.export import export_saved_model

    args = parse_args()
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "devices": devices()}
    print(json.dumps(report["devices"]), flush=True)
    gpu = bool(report["devices"]["tf_gpus"]) and not args.smoke
    preset, examples = setup(args)
    trained = train_rates(args, preset, examples, gpu, report)
    report["search"] = search_rate(args.codes, args.queries, 100)
    print(f"search: {json.dumps(report['search'])}", flush=True)
    model = export_saved_model(
        trained.method, trained.nets, os.path.join(args.out, "model"), [str(i) for i in range(10)]
    )
    report["serve"] = serve_once(model, examples, args.out, "gpu" if gpu else "cpu")
    print(f"serve: {json.dumps(report['serve'])}", flush=True)
    report["minutes"] = round((time.time() - t_start) / 60, 1)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    print_row(report)
    s = report["search"]
    return 0 if report["serve"]["status"] == 200 and (not s.get("gpu") or s["same_distances"]) else 1


if __name__ == "__main__":
    sys.exit(main())
