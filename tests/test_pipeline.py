"""The TFX pipeline end to end, run as TFX users run it: `tfx pipeline create` / `tfx run create`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.configs import REPO_ROOT, from_env

BIN = os.path.dirname(sys.executable)


def run(cmd: list[str], env: dict, timeout: int = 900) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("tfx")
    return {
        **os.environ,
        "DSRHN_HOME": str(home),
        "DSRHN_PIPELINE_CONFIG": json.dumps({"tiny": True}),
        "LOCAL_HOME": str(home / "cli"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def test_tfx_cli_runs_the_pipeline_and_every_artifact_feeds_the_next(tiny_env, monkeypatch):
    tfx_cli = os.path.join(BIN, "tfx")
    runner = os.path.join(REPO_ROOT, "local_runner.py")
    run([tfx_cli, "pipeline", "create", "--engine", "local", "--pipeline_path", runner], tiny_env)
    log = run([tfx_cli, "run", "create", "--engine", "local", "--pipeline_name", "dsrhn"], tiny_env)
    assert "evaluation: LR-query mAP@100" in log

    from pipeline.runners import latest_outputs

    for k in ("DSRHN_HOME", "DSRHN_PIPELINE_CONFIG"):
        monkeypatch.setenv(k, tiny_env[k])
    cfg = from_env()
    out = latest_outputs(cfg)
    assert out["pushed"] and os.path.isdir(out["pushed_model"])
    # Examples -> TFRecords parse; SavedModel loads; index has one row per gallery image; report has mAP
    import ml_metadata as mlmd

    from dsrhn.contracts import read_metadata
    from dsrhn.records import read_split
    from pipeline.runners import _metadata
    from serving.index import load_index

    store = mlmd.MetadataStore(_metadata(cfg))
    examples = store.get_artifacts_by_type("Examples")[-1].uri
    n_gallery = sum(1 for _ in read_split(examples, "gallery"))
    assert n_gallery == 120
    model = tf.saved_model.load(out["pushed_model"])
    assert "serving_default" in model.signatures
    g = load_index(out["pushed_model"], read_metadata(out["pushed_model"]))
    assert g.count == n_gallery
    report = json.load(open(out["evaluation_report"].replace("report.md", "report.json")))
    assert (
        report["map"] >= cfg.min_map == 0.35
        and report["gallery"] == n_gallery
        and not report["code_health"]["problems"]
    )
    assert os.path.exists(out["evaluation_report"].replace("report.md", "curves.png"))
    n_models = len(store.get_artifacts_by_type("Model"))

    # `dsrhn serve` on the pushed base dir answers a search with the new model
    import base64

    import httpx

    from dsrhn.records import read_split_raw
    from serving.store import ModelStore
    from tests.conftest import LiveServer

    serving = ModelStore(cfg.serving_dir, cfg.model_name)
    serving.start()
    srv = LiveServer(serving)
    try:
        lr = next(read_split_raw(examples, "query").take(1).as_numpy_iterator())["lr"]
        r = httpx.post(
            f"{srv.url}/v1/models/dsrhn:search",
            json={"instances": [{"b64": base64.b64encode(lr).decode()}], "k": 5},
            timeout=60,
        )
        assert r.status_code == 200 and len(r.json()["results"][0]["ids"]) == 5
        assert r.json()["model_version"] == os.path.basename(out["pushed_model"])
    finally:
        srv.stop()
        serving.stop()

    # a re-run reuses the cached artifacts: no new model is trained
    log = run([tfx_cli, "run", "create", "--engine", "local", "--pipeline_name", "dsrhn"], tiny_env)
    assert len(store.get_artifacts_by_type("Model")) == n_models
    assert "already the last blessed model" in log  # and so not pushed a second time
    assert sorted(os.listdir(os.path.join(cfg.serving_dir, cfg.model_name))) == [os.path.basename(out["pushed_model"])]

    # a worse model (HashNet and SRNet barely move: the initial weights' codes) is evaluated against the blessed
    # one and NOT blessed: nothing is pushed, the served version stays
    worse = {
        **tiny_env,
        "DSRHN_PIPELINE_CONFIG": json.dumps(
            {
                "tiny": True,
                "train_steps": 2,
                "preset_overrides": {
                    "bits": 12,
                    "epochs": 1,
                    "batch_size": 32,
                    "steps_per_epoch": 2,
                    "hash_lr": 1e-9,
                    "sr_lr": 1e-9,
                },
            }
        ),
    }
    log = run([tfx_cli, "run", "create", "--engine", "local", "--pipeline_name", "dsrhn"], worse)
    assert len(store.get_artifacts_by_type("Model")) == n_models + 1
    line = next(x for x in log.splitlines() if "evaluation: LR-query" in x)
    assert "NOT BLESSED" in line and "< threshold 0.3500" in line and "last blessed model's" in line, line
    again = latest_outputs(cfg)
    assert not again["pushed"] and again["lr_query_map"] < report["map"]
    assert any("< threshold 0.3500" in r for r in again["not_blessed"]), again["not_blessed"]
    assert sorted(os.listdir(os.path.join(cfg.serving_dir, cfg.model_name))) == [os.path.basename(out["pushed_model"])]


def test_kubeflow_v2_runner_compiles(tmp_path, tiny_env):
    run([sys.executable, os.path.join(REPO_ROOT, "kubeflow_v2_runner.py"), str(tmp_path)], tiny_env)
    spec = json.load(open(tmp_path / "dsrhn_pipeline.json"))
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert {"DsrhnIngest", "Trainer", "RetrievalEvaluator", "Pusher", "GalleryIndexer"} <= set(tasks)


def test_cli_help_lists_the_stages():
    out = run([os.path.join(BIN, "dsrhn"), "--help"], dict(os.environ))
    for cmd in ("ingest", "train", "evaluate", "index", "serve", "pipeline"):
        assert cmd in out
