"""Every registered method trained for real (briefly, through `dsrhn train`, the cpu preset's blind degradations)
and used as a user would: quality floors on its codes (they beat random codes, no bit is constant, enough distinct
codes), the same signatures reloaded in a fresh process, evaluation, indexing and search over HTTP. A separate file
from the registry's contract tests (test_methods.py) so the two run side by side under pytest-xdist."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from components.evaluate import evaluate_model
from dsrhn.contracts import read_metadata
from dsrhn.records import read_split_raw
from dsrhn.registry import METHODS, get_method

ALL = list(METHODS)

QUALITY_STEPS = (3, 12)  # epochs x steps of 32: every method, blind degradations, about 10 s of training each


@pytest.fixture(scope="module")
def exported(single_examples, tmp_path_factory) -> dict:
    """Every method trained briefly on the balanced single-label set (10 classes, 640 images) and exported through
    `dsrhn train` (the CLI, the cpu preset's blind degradations), two runs at a time (much of each run is starting
    TensorFlow, which one core does). Long enough to learn: the quality floors below check that each does."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("methods")

    def cli_train(mode: str, extra: list | None = None) -> str:
        model = str(root / mode / "1")
        epochs, steps = QUALITY_STEPS
        args = [
            sys.executable,
            "-m",
            "cli",
            "train",
            "--examples",
            single_examples,
            "-o",
            model,
            "--method",
            mode,
            "--bits",
            "12",
            "--epochs",
            str(epochs),
            "--steps-per-epoch",
            str(steps),
            "--batch-size",
            "32",
            "--verbose",
            "0",
            "--set",
            "sr_blocks=1",
            "--set",
            "sr_filters=8",
            "--work-dir",
            str(root / mode / "work"),
        ]
        args += {"pointwise-seg": ["--set", "options.seg_epochs=1"], "fsr-gan": ["--set", "options.hash_epochs=2"]}.get(
            mode, []
        ) + (extra or [])
        run = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{mode}: " + run.stderr[-3000:]
        return model

    # the student distils the DSRHN trained here (its HashNet's last checkpoint; its gallery codes are the
    # teacher's): queued third, it starts once DSRHN (first) is done while the other methods go on training
    teacher = root / "dsrhn" / "work" / "checkpoints" / f"epoch-{QUALITY_STEPS[0]:04d}" / "hashnet.weights.h5"
    others = [m for m in ALL if m not in ("dsrhn", "student")]
    with ThreadPoolExecutor(2) as pool:
        futures = {"dsrhn": pool.submit(cli_train, "dsrhn"), others[0]: pool.submit(cli_train, others[0])}
        futures["student"] = pool.submit(
            lambda: futures["dsrhn"].result() and cli_train("student", ["--set", f"options.teacher_weights={teacher}"])
        )
        futures.update({m: pool.submit(cli_train, m) for m in others[1:]})
        return {m: futures[m].result() for m in ALL}


# floors, on the single-label set: 100 LR queries (x4 bicubic, the stored partners), 300 gallery images, 10
# balanced classes, so random codes score about 0.1 (measured in the test, on the same queries and gallery)
MAP_MARGIN = (
    0.15  # mAP@all over random codes; measured 2026-11-28: trained 0.36 (fsr-gan) to 0.57 (center), random 0.12
)


def test_every_method_learns_and_uses_every_bit(exported, single_examples):
    """Quality floors: each method's codes beat random codes by MAP_MARGIN, no bit is constant over the gallery, and
    the gallery's distinct codes are at least half its label sets (dsrhn/health.py). A model with constant codes or
    one constant bit fails here, whatever the method. Multi-level: its local codes and re-ranked search as well."""
    from components.evaluate import SavedModelEncoders, encode_split
    from components.metrics import mean_average_precision, pack_bits, rerank_average_precisions, unpack_bits
    from dsrhn.health import code_health

    rng = np.random.default_rng(0)
    floors = {}
    for mode, model in exported.items():
        enc = SavedModelEncoders(model)
        field = "hr" if enc.meta["query_input"] == "hr" else "lr"
        q = encode_split(single_examples, "query", field, enc.query_outputs if enc.multi_level else enc.query)
        g = encode_split(single_examples, "gallery", "hr", enc.gallery_outputs if enc.multi_level else enc.gallery)
        trained = mean_average_precision(q.codes, g.codes, q.labels, g.labels, None)
        chance = mean_average_precision(
            pack_bits(rng.choice([-1, 1], (len(q.codes), 12))),
            pack_bits(rng.choice([-1, 1], (len(g.codes), 12))),
            q.labels,
            g.labels,
            None,
        )
        floors[mode] = (round(trained, 3), round(chance, 3))
        assert trained > chance + MAP_MARGIN, f"{mode}: mAP {trained:.3f}, random codes {chance:.3f} (+{MAP_MARGIN})"
        health = code_health(g.codes, 12, g.labels)
        assert health.problems() == [], f"{mode}: {health.problems()}"
        if enc.multi_level:  # the codes of every valid region: no constant bit; the re-ranked search learns too
            n, regions, _, width = g.local.shape
            codes = unpack_bits(g.local[:, :, 0].reshape(n * regions, width), 12)
            valid = g.local[:, :, 1].reshape(n * regions, width).any(1)
            assert valid.mean() > 0.5 and code_health(codes[valid]).constant_bits == [], "multi-level local codes"
            ranked, _ = rerank_average_precisions(
                q.codes, g.codes, q.labels, g.labels, q.local, g.local, 12, 300, 1.0, None
            )
            assert ranked.mean() > chance + MAP_MARGIN, f"multi-level re-ranked mAP {ranked.mean():.3f}"
    print("mAP@all, trained / random codes:", floors)


def test_every_method_exports_the_same_signatures_and_reloads_in_a_fresh_process(exported, mosaic_examples, tmp_path):
    batch = next(read_split_raw(mosaic_examples, "query").batch(4).as_numpy_iterator())
    np.save(tmp_path / "lr.npy", batch["lr"])
    np.save(tmp_path / "hr.npy", batch["hr"])
    code = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        f"lr = np.load({str(tmp_path / 'lr.npy')!r}, allow_pickle=True)\n"
        f"hr = np.load({str(tmp_path / 'hr.npy')!r}, allow_pickle=True)\n"
        "out = {}\n"
        f"for mode, path in {exported!r}.items():\n"
        "    m = tf.saved_model.load(path)\n"
        "    q = m.signatures['serving_default'](images=tf.constant(lr))\n"
        "    s = m.signatures['super_resolve'](images=tf.constant(lr))['sr']\n"
        "    g = m.signatures['encode_hr'](images=tf.constant(hr))\n"
        "    assert q['codes'].dtype == tf.uint8 and q['bits'].dtype == tf.float32 and s.dtype == tf.uint8\n"
        "    out[mode] = [q['codes'].numpy().tolist(), list(s.shape), g['codes'].numpy().tolist(),\n"
        "                 q['bits'].shape[1]]\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    for mode, path in exported.items():
        meta = read_metadata(path)
        method = get_method(mode)
        assert meta["method"] == mode and meta["query_path"] == method.query_path
        assert meta["query_input"] == method.query_input and meta["code_bytes"] == 2
        m = tf.saved_model.load(path)
        mem_q = m.signatures["serving_default"](images=tf.constant(batch["lr"]))["codes"].numpy().tolist()
        mem_g = m.signatures["encode_hr"](images=tf.constant(batch["hr"]))["codes"].numpy().tolist()
        assert fresh[mode][0] == mem_q and fresh[mode][2] == mem_g, mode
        assert fresh[mode][1] == [4, 56, 56, 3] and fresh[mode][3] == 12 and len(mem_q[0]) == 2
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorflow.python.tools.saved_model_cli",
            "show",
            "--dir",
            exported["pointwise-seg"],
            "--all",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    for sig in ("serving_default", "encode_hr", "super_resolve"):
        assert f"signature_def['{sig}']" in cli.stdout


def test_every_method_evaluates_indexes_and_serves(exported, mosaic_examples, tmp_path):
    from serving.indexer import gallery_from_examples, run_indexing
    from serving.server import BackgroundServer, search
    from serving.store import ModelStore

    query = next(read_split_raw(mosaic_examples, "query").take(1).as_numpy_iterator())
    for mode, model in exported.items():
        report = evaluate_model(
            model, mosaic_examples, str(tmp_path / mode / "eval"), topk=20, plots=False, curves=False
        )
        assert 0.0 < report["map"] <= 1.0 and report["method"] == mode
        assert ("sr_quality" in report) == (get_method(mode).query_input == "lr")
        base = tmp_path / "serving" / mode
        shutil.copytree(model, base / mode / "1")
        summary = run_indexing(
            str(base / mode / "1"), gallery_from_examples(mosaic_examples), beam_args=["--runner=DirectRunner"]
        )
        assert summary.manifest["count"] == 48
        store = ModelStore(str(base), mode, poll_seconds=3600)
        store.refresh()
        server = BackgroundServer(store)
        try:
            field = "hr" if get_method(mode).query_input == "hr" else "lr"
            instances = [{"b64": base64.b64encode(query[field]).decode()}]
            status, res = _post(f"{server.url}/v1/models/{mode}:search", {"instances": instances, "k": 5})
            assert status == 200 and len(res["results"][0]["ids"]) == 5, res
            assert set(res) == {"model_version", "k", "results", "previews", "timing"}
            assert set(res["results"][0]) <= {"ids", "distances", "labels", "rows", "warning"}  # today's answer
            status, ranked = _post(
                f"{server.url}/v1/models/{mode}:search", {"instances": instances, "k": 5, "rerank": {"shortlist": 30}}
            )
            if mode != "multi-level":  # a model without local codes: a clear 400, nothing else changes
                assert status == 400 and "has no local codes" in ranked["error"], ranked
                assert not (base / mode / "1" / "index" / "local.npy").exists()
                assert "local" not in summary.manifest and "rerank" not in report["lr_query"]
                continue
            assert status == 200 and ranked["rerank"] == {"shortlist": 30, "weight": 1.0}, ranked
            hit = ranked["results"][0]
            assert len(hit["ids"]) == 5 and len(hit["local_distances"]) == 5
            assert hit["rerank_distances"] == sorted(hit["rerank_distances"])
            np.testing.assert_allclose(
                hit["rerank_distances"], np.add(hit["distances"], hit["local_distances"]), atol=1e-3
            )
            assert summary.manifest["local"]["count"] == 4 and "local.npy" in summary.manifest["files"]
            assert set(report["lr_query"]["rerank"]) == {"500", "1000", "5000"}
            meta = read_metadata(model)
            assert meta["local"]["count"] == 4 and meta["local"]["grid"] == 2
            unbatched = search(store.current, {"instances": instances, "k": 5, "rerank": {"shortlist": 30}}, 1000)
            assert unbatched["results"] == ranked["results"]
        finally:
            server.stop()


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
