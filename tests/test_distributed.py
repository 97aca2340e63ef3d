"""Beyond one machine: two workers on localhost (TF_CONFIG, MultiWorkerMirroredStrategy) train in lock-step and end
where one worker with the same global batch ends; the chief alone writes checkpoints and the export; a method that
cannot train data-parallel yet says so; the Kubeflow V2 spec carries the worker pools; GPU-only paths say why they
are skipped on a machine without a GPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import json, os, sys
import numpy as np
from dsrhn.config import get_preset
from trainer.task import train_and_export
examples, work, export, out = sys.argv[1:5]
preset = get_preset("cpu", method=os.environ.get("METHOD", "hashnet-lr"), bits=12, epochs=2, steps_per_epoch=3,
                    batch_size=16, sr_blocks=1, sr_filters=8, hash_lr=1e-3)
summary = train_and_export(examples, preset, work, export, verbose=0, with_trainer=True)
nets = summary.pop("trainer").nets
np.savez(out, *[np.array(v) for name in sorted(nets) for v in nets[name].weights])
print("RESULT " + json.dumps({"history": summary["history"], "export_dir": summary["export_dir"]}))
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run_workers(examples, tmp_path, n: int, tag: str, env_extra=None) -> list[subprocess.Popen]:
    ports = _free_ports(n)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(n):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
        if n > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        else:
            env.pop("TF_CONFIG", None)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SCRIPT,
                    examples,
                    str(tmp_path / f"{tag}-work"),
                    str(tmp_path / f"{tag}-export"),
                    str(tmp_path / f"{tag}-{i}.npz"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _results(procs) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:]))
    return out


def test_two_workers_train_in_lock_step_and_match_one_worker(mosaic_examples, tmp_path):
    """Two MultiWorkerMirroredStrategy workers (global batch 16 = 2 x 8) against one worker with the global batch
    16: the global batch is the same examples (each worker computes every batch and keeps its slice; the blind
    degradations stay seeded per example), batch norm uses the global batch's statistics (synchronized), and the
    pairwise loss pairs all 32 images of the joint batch (codes gathered across replicas). Tolerance: 2e-3 on every
    weight after 6 steps at hash_lr 1e-3: the replicas sum in another order, and this training amplifies float
    noise (the same one-worker run with its initial weights moved by 1e-6 ends 1.2e-3 away, measured 2026-11-28)."""
    two = _run_workers(mosaic_examples, tmp_path, 2, "two")
    one = _run_workers(mosaic_examples, tmp_path, 1, "one")
    r_two, r_one = _results(two), _results(one)
    w0, w1, single = (np.load(tmp_path / name) for name in ("two-0.npz", "two-1.npz", "one-0.npz"))
    for k in w0.files:  # lock-step: the two workers hold the very same weights
        np.testing.assert_array_equal(w0[k], w1[k])
    assert r_two[0]["history"] == r_two[1]["history"]
    worst = max(float(np.abs(w0[k] - single[k]).max()) for k in w0.files)
    assert worst < 2e-3, worst
    for name, h in r_two[0]["history"]["hash-bicubic"].items():  # the same losses, epoch by epoch
        np.testing.assert_allclose(h, r_one[0]["history"]["hash-bicubic"][name], rtol=2e-3, atol=1e-4)
    # the chief alone wrote checkpoints (kept: the last two) and the export; the other worker exported nothing
    assert sorted(os.listdir(tmp_path / "two-work" / "checkpoints")) == ["epoch-0001", "epoch-0002"]
    exports = sorted(r["export_dir"] for r in r_two if r["export_dir"])
    assert exports == [str(tmp_path / "two-export")] and (tmp_path / "two-export" / "saved_model.pb").exists()


def test_a_method_that_cannot_train_data_parallel_says_so(mosaic_examples, tmp_path):
    procs = _run_workers(mosaic_examples, tmp_path, 2, "ml", {"METHOD": "multi-level"})
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode != 0
        assert "method 'multi-level' cannot train on several replicas yet" in stderr


def test_the_kubeflow_spec_carries_the_worker_pools(tmp_path):
    env = {
        **os.environ,
        "DSRHN_PIPELINE_CONFIG": json.dumps({"tiny": True}),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DSRHN_IMAGE": "registry.example/dsrhn:1",
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "kubeflow_v2_runner.py"),
            str(tmp_path),
            "--workers",
            "3",
            "--machine-type",
            "n1-standard-16",
            "--accelerator",
            "NVIDIA_TESLA_T4",
            "--accelerator-count",
            "1",
            "--project",
            "demo",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    spec = json.load(open(tmp_path / "dsrhn_pipeline.json"))
    config = json.loads(
        spec["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]["custom_config"][
            "runtimeValue"
        ]["constantValue"]["stringValue"]
    )
    pools = config["ai_platform_training_args"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 2] and config["ai_platform_enable_vertex"] is True
    assert all(
        p["machine_spec"]
        == {"machine_type": "n1-standard-16", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}
        for p in pools
    )
    assert all(p["container_spec"]["image_uri"] == "registry.example/dsrhn:1" for p in pools)


def test_faiss_on_the_gpu_falls_back_to_the_cpu_with_a_reason_here():
    import faiss

    from serving.index import MAX_GPU_K, gpu_available, on_device

    index = faiss.IndexBinaryFlat(64)
    index.add(np.random.default_rng(0).integers(0, 256, (100, 8), dtype=np.uint8))
    said = []
    if gpu_available():
        gpu, on = on_device(index, "gpu", said.append)
        assert on and gpu.ntotal == 100
        return
    same, on = on_device(index, "gpu", said.append)
    assert same is index and not on and "searching on the CPU" in said[0]
    assert on_device(index, "auto", said.append) == (index, False) and len(said) == 1  # auto: quietly the CPU
    with pytest.raises(ValueError, match="faiss device must be one of"):
        on_device(index, "tpu")
    assert MAX_GPU_K == 2048


@pytest.mark.skipif(
    not __import__("serving.index", fromlist=["x"]).gpu_available(),
    reason="no GPU with faiss GPU support here (scripts/gpu_check.sh runs these checks on one)",
)
def test_gpu_and_cpu_binary_search_agree():
    import faiss

    from serving.index import on_device

    codes = np.random.default_rng(1).integers(0, 256, (20000, 8), dtype=np.uint8)
    cpu = faiss.IndexBinaryFlat(64)
    cpu.add(codes)
    gpu, on = on_device(cpu, "gpu")
    assert on
    d_cpu, _ = cpu.search(codes[:50], 100)
    d_gpu, _ = gpu.search(codes[:50], 100)
    np.testing.assert_array_equal(d_cpu, d_gpu)


def test_the_prepared_gpu_check_runs_every_part(tmp_path):
    """benchmarks/gpu_check.py --smoke: every part (devices, training rate with its CPU baseline, faiss search, an
    export and one served search) at toy sizes, on the CPU; on a GPU machine scripts/gpu_check.sh runs it in full."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.load(open(tmp_path / "gpu_check.json"))
    assert report["train_cpu_baseline"]["images_per_s"] > 0 and report["search"]["cpu_qps"] > 0
    assert report["serve"]["status"] == 200 and report["serve"]["hits"] == 10
    assert "| search 200 (10 hits) |" in run.stdout
