"""The benchmarks' library (benchmarks/benchlib: the task runner's priorities, dependencies and worker processes, the
row cache, the paired bootstrap) and the benchmark scripts' rows and tables."""

from __future__ import annotations

import importlib.util
import operator
import os
import sys

import pytest

_BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)  # where a script run as `python benchmarks/<name>.py` finds benchlib

from benchlib import cache  # noqa: E402
from benchlib.runner import Runner, Task  # noqa: E402


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (registered in sys.modules: dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(_BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark("reproduce_table1")


def _tasks():
    # "dsrhn" and "two-stage" wait for "stage1", as in the benchmark
    after = [Task(1, "dsrhn", operator.mul, (3, 4)), Task(2, "two-stage", operator.add, (3, 4))]
    return [
        Task(4, "hr", operator.sub, (9, 2)),
        Task(0, "stage1", operator.pow, (2, 5), after),
        Task(3, "lr", operator.floordiv, (9, 2)),
    ]


def test_one_worker_honours_priority_and_dependencies():
    done = []
    runner = Runner(jobs=1)
    try:
        runner.run(_tasks(), lambda name, result: done.append((name, result)))
    finally:
        runner.close()
    # stage1 first; the rows it unlocks outrank the lower-priority rows already waiting
    assert done == [("stage1", 32), ("dsrhn", 12), ("two-stage", 7), ("lr", 4), ("hr", 7)]


def test_two_workers_run_every_task_once_after_its_dependency():
    done = []
    runner = Runner(jobs=2)
    try:
        runner.run(_tasks(), lambda name, result: done.append((name, result)))
    finally:
        runner.close()
    assert sorted(done) == sorted([("stage1", 32), ("dsrhn", 12), ("two-stage", 7), ("lr", 4), ("hr", 7)])
    names = [n for n, _ in done]
    assert names.index("stage1") < names.index("dsrhn") and names.index("stage1") < names.index("two-stage")


def test_every_task_runs_in_a_fresh_process():
    pids = []
    runner = Runner(jobs=1)
    try:
        runner.run([Task(i, f"t{i}", os.getpid) for i in range(3)], lambda name, pid: pids.append(pid))
    finally:
        runner.close()
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_cells_average_seeds_and_gap_closure_uses_per_query_means(bench, tmp_path):
    import numpy as np

    results = {"_settings": {}}
    # per-query APs of 4 queries: seed means LR 0.71, DSRHN 0.78, HR 0.81 at every query
    for seed, (lr, ds, hr) in enumerate([(0.70, 0.76, 0.80), (0.72, 0.80, 0.82)]):
        for method, value in (("hashnet-lr", lr), ("dsrhn", ds), ("hashnet-hr", hr)):
            path = str(tmp_path / f"{method}-{seed}.npz")
            np.savez(path, lr_query=np.full(4, value), hr_query=np.full(4, value + 0.01))
            results[f"{method}/dpsh/12/seed{seed}"] = {"map": value, "map_hr_query": value + 0.01, "ap_file": path}
    assert bench.cell(results, "dsrhn", "dpsh", 12) == [0.76, 0.80]
    assert bench.cell(results, "dsrhn", "dpsh", 24) == []
    assert bench.fmt([0.76, 0.80]) == "0.7800 ±0.0200"
    assert bench.fmt([0.7]) == "0.7000" and bench.fmt([]).strip() == "-"
    # (0.78 - 0.71) / (0.81 - 0.71) = 0.7 in every resample: the queries agree
    c = bench.gap_closure(results, 12)
    assert c["closure"] == pytest.approx(0.7) and c["closure_interval"] == pytest.approx([0.7, 0.7])
    assert c["p_goal"] == 0.0 and bench.fmt_closure(c) == "0.700 [0.70, 0.70]"
    assert bench.gap_closure(results, 24) is None and bench.fmt_closure(None).strip() == "-"
    np.savez(results["hashnet-hr/dpsh/12/seed1"]["ap_file"], lr_query=np.full(4, 0.60), hr_query=np.full(4, 0.6))
    assert bench.fmt_closure(bench.gap_closure(results, 12)).startswith("n/a")  # HR below LR: no gap
    del results["dsrhn/dpsh/12/seed0"]["ap_file"]  # a run recorded without per-query APs
    assert bench.gap_closure(results, 12) is None


def test_photo_rows_run_per_seed_and_the_tables_average_the_seeds(tmp_path, capsys):
    import numpy as np

    photos = _benchmark("real_photos")
    asked = {k: photos.ROWS[k] for k in ("hashnet-lr", "two-stage", "student", "hashnet-hr")}
    rows, runs = photos.seeded(asked, 2)
    assert runs["two-stage"] == ["two-stage@s0", "two-stage@s1"] and len(rows) == 8
    two = rows["two-stage@s1"]
    assert (two.overrides, two.sr_overrides) == ({"seed": 1}, {"seed": 1})  # HashNet's seed and its SR stage's
    assert two.key == "two-stage@s1" and two.method == "two-stage"
    assert rows["hashnet-lr@s1"].sr_overrides == {}  # no SR stage
    assert rows["student@s1"].overrides["options.teacher_weights"] == "@two-stage@s1"  # the teacher of its own seed
    assert photos.seeded(asked, 1) == (asked, {k: [k] for k in asked})

    # 4 queries, one cell: LR 0.50 / 0.60 by seed, two-stage 0.60 / 0.62, HR 0.90 / 0.80
    cell = "x4-bicubic"
    results = {}
    for key, values in (("hashnet-lr", (0.5, 0.6)), ("two-stage", (0.6, 0.62)), ("hashnet-hr", (0.9, 0.8))):
        for seed, value in enumerate(values):
            path = str(tmp_path / f"{key}-{seed}.npy")
            np.save(path, np.full(4, value))
            cells = {"HR": {"ap_file": path}} if key == "hashnet-hr" else {cell: {"ap_file": path}}
            results[f"{key}@s{seed}"] = {"score": {"cells": cells}}
    means = photos.over_seeds(results, {k: runs[k] for k in ("hashnet-lr", "two-stage", "hashnet-hr")})
    assert photos.cell_ap(means, "two-stage", cell) == pytest.approx(np.full(4, 0.61))
    assert "student" not in photos.over_seeds(results, runs)  # a row with unscored runs is left out
    summary = photos.print_grid("t", means, ["hashnet-lr", "two-stage", "hashnet-hr"], [cell], 100)["two-stage"]
    printed = capsys.readouterr().out
    assert "| x4-bicubic | +0.0600 [+0.0600, +0.0600] | +0.100 / +0.020 |" in printed  # the mean, then each seed
    # closure of the seed means: (0.61 - 0.55) / (0.85 - 0.55) = 0.2
    assert summary["x4_mean_closure"] == pytest.approx(0.2) and summary["seed_cells_above"] == "2/2"
    assert summary["seeds"] == 2 and summary["above_all"] == "1/1"


def test_benchmark_rows_are_reused_only_with_the_same_settings_and_code(tmp_path):
    src = tmp_path / "code"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    code = cache.code_digest((), dirs=(str(src),))
    key = cache.row_key({"steps": 720}, code)
    store = cache.RowCache(str(tmp_path / "results.json"))
    row = store.put("dsrhn", key, {"map": 0.83})
    assert row["computed"] and row["host"] and row["key"] == key  # every row says when and where it was made
    said = []
    reopened = cache.RowCache(str(tmp_path / "results.json"))
    assert reopened.get("dsrhn", key)["map"] == 0.83
    assert reopened.get("dsrhn", cache.row_key({"steps": 360}, code), log=said.append) is None  # other settings
    (src / "a.py").write_text("x = 2\n")  # other code
    assert cache.code_digest((), dirs=(str(src),)) != code
    assert (
        reopened.get("dsrhn", cache.row_key({"steps": 720}, cache.code_digest((), dirs=(str(src),))), log=said.append)
        is None
    )
    assert len(said) == 2 and all("recomputing" in s for s in said)


def test_the_load_generators_socket_clients_count_answers_and_errors(tmp_path):
    """serve_load.py's default load generator (raw keep-alive sockets, the request made once) against the real app on
    loopback: every answer is counted, a non-200 is an error, and a POST body arrives whole (a 404 JSON answer)."""
    serve_load = _benchmark("serve_load")
    from serving.server import BackgroundServer
    from serving.store import ModelStore

    (tmp_path / "m").mkdir()
    server = BackgroundServer(ModelStore(str(tmp_path), "m", poll_seconds=3600))
    try:
        ok = serve_load.run_clients(f"{server.url}/healthz", "GET", None, 2, 0.5)
        assert ok["n"] > 10 and ok["errors"] == 0 and ok["client_cores"] >= 0
        not_ready = serve_load.run_clients(f"{server.url}/readyz", "GET", None, 2, 0.3)  # 503: no version yet
        assert not_ready["n"] > 0 and not_ready["errors"] == not_ready["n"]
        search = serve_load.run_clients(
            f"{server.url}/v1/models/other:search", "POST", {"instances": [], "k": 1}, 1, 0.3
        )
        assert search["n"] > 0 and search["errors"] == search["n"]  # 404 answers, each read whole
        for kind in ("sockets", "httpx"):  # both generators agree on what they see
            r = serve_load.run_clients(f"{server.url}/healthz", "GET", None, 1, 0.2, kind)
            assert r["n"] > 0 and r["errors"] == 0
    finally:
        server.stop()


def test_encode_costs_bfloat16_export_keeps_the_codes(tmp_path, tiny_preset, mosaic_examples):
    """benchmarks/encode_cost.py --bf16: the same checkpoint with bfloat16 networks; its codes stay those of the
    float32 export but for a few bits (counted), and the exported signatures still give float32 bits."""
    import numpy as np
    import tensorflow as tf

    from dsrhn.records import read_split_raw
    from trainer.task import train_and_export

    encode_cost = _benchmark("encode_cost")
    work, plain = str(tmp_path / "work"), str(tmp_path / "plain")
    train_and_export(mosaic_examples, tiny_preset, work, plain, verbose=0)
    bf16 = encode_cost.export_bfloat16(work, mosaic_examples, str(tmp_path / "bf16"))
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # the policy is put back
    images = tf.constant([bytes(r["lr"]) for r in read_split_raw(mosaic_examples, "query").as_numpy_iterator()])
    x = tf.saved_model.load(plain).signatures["serving_default"](images=images)["bits"]
    y = tf.saved_model.load(bf16).signatures["serving_default"](images=images)["bits"]
    assert y.dtype == tf.float32 and x.shape == y.shape
    assert (np.asarray(x) != np.asarray(y)).mean() < 0.05


def test_query_views_rescore_trained_rows_under_each_query_setting(
    tmp_path, mosaic_examples, tiny_preset, monkeypatch, capsys
):
    """benchmarks/query_views.py on two really trained rows laid out as benchmarks/real_photos.py writes them: each
    applicable query setting re-encodes the queries with the trained networks; "as trained" is the SavedModel's own
    query path, the baseline against itself differs by 0, and the table and JSON come out."""
    import json
    import shutil

    import numpy as np

    from components.evaluate import SavedModelEncoders, encode_split
    from components.metrics import average_precisions
    from trainer.task import train_and_export

    views = _benchmark("query_views")
    assert set(views.settings_for("hashnet-lr")) == {"as trained", "mirror"}
    assert views.settings_for("two-stage")["bicubic"] == ("hashnet-lr", {})
    out = tmp_path / "out"
    root = out / "instance"
    shutil.copytree(mosaic_examples, root / "examples")
    shutil.copytree(mosaic_examples, root / "grid" / "x4-bicubic")
    for method in ("hashnet-lr", "two-stage"):
        run = root / f"{method}@s0"
        train_and_export(
            str(root / "examples"), tiny_preset.replace(method=method), str(run / "work"), str(run / "model"), verbose=0
        )
    monkeypatch.setattr(sys, "argv", ["query_views.py", "--out", str(out), "--topk", "20"])
    views.main()
    printed = capsys.readouterr().out
    result = json.load(open(out / "query_views.json"))
    table = result["table"]
    assert sorted(result["runs"]) == ["hashnet-lr@s0", "two-stage@s0"]
    assert set(table) == {"hashnet-lr / as trained", "hashnet-lr / mirror"} | {
        f"two-stage / {s}" for s in ("as trained", "mirror", "sr", "sr + mirror", "fused", "fused + mirror", "bicubic")
    }
    assert table["hashnet-lr / as trained"]["cells"]["x4-bicubic"]["diff"] == 0.0
    assert "| two-stage / fused + mirror |" in printed
    for method in ("hashnet-lr", "two-stage"):  # "as trained" is what the exported SavedModel retrieves
        enc = SavedModelEncoders(str(root / f"{method}@s0" / "model"))
        g = encode_split(str(root / "examples"), "gallery", "hr", enc.gallery)
        q = encode_split(str(root / "grid" / "x4-bicubic"), "query", "lr", enc.query)
        ap, _ = average_precisions(q.codes, g.codes, q.labels, g.labels, 20)
        assert table[f"{method} / as trained"]["cells"]["x4-bicubic"]["map"] == pytest.approx(
            float(ap.mean()), abs=1e-9
        )
        stored = np.load(out / "query-views" / f"{method}@s0--as-trained--x4-bicubic.npy")
        assert np.array_equal(stored, ap)
    # two-stage trained without query_fuse: its "sr" setting is its own, reused rather than encoded again
    assert table["two-stage / sr"]["cells"] == table["two-stage / as trained"]["cells"]
    assert not (out / "query-views" / "two-stage@s0--sr--x4-bicubic.npy").exists()


def test_an_sr_stage_alone_is_scored_through_the_exported_query_path(tmp_path, mosaic_examples, tiny_preset):
    """benchmarks/real_photos.py --sr-only: an SR stage's PSNR-Y per cell without a HashNet or an export. An SRNet
    that is exactly its input (a zero tail) must score as the single resize the exported query path makes, and an
    SRNet without batch norm (sr_batchnorm=False, as EDSR) has none and is scored the same way."""
    import numpy as np

    from benchlib.tasks import score_sr_stage
    from components.evaluate import sr_quality
    from dsrhn.records import DatasetInfo
    from trainer.models import SRNet

    for batchnorm in (True, False):
        preset = tiny_preset.replace(sr_zero_tail=True, sr_batchnorm=batchnorm)
        net = SRNet(preset)
        assert any("_bn" in layer.name for layer in net.layers) == batchnorm
        weights = str(tmp_path / f"stage-{batchnorm}.srnet.weights.h5")
        net.save_weights(weights)
        out = score_sr_stage(preset.to_dict(), weights, {"x4": mosaic_examples}, n=8)
        q = out["cells"]["x4"]["psnr"]
        assert q["images"] == 8 and np.isfinite(q["psnr_y"])

        class Resize:  # the exported query path with no SRNet: decode, one resize to HR, round
            @staticmethod
            def super_resolve(images, hr_size=preset.hr_size):
                import tensorflow as tf

                from trainer.export import decode_hr_space, to_uint8

                return to_uint8(decode_hr_space(tf.constant(images), hr_size)).numpy()

        assert q == sr_quality(mosaic_examples, Resize, DatasetInfo.read(mosaic_examples), 8)


def test_query_sr_scores_a_pretrained_generator_in_front_of_hashnet_lr_as_the_product_serves_it(
    tmp_path, mosaic_examples, tiny_preset, monkeypatch, capsys
):
    """benchmarks/query_sr.py on a really trained HashNet-LR laid out as real_photos.py writes it, with the shipped
    RealSR DF2K generator: the table comes out, the SR'd queries are cached and reused, and its fused path (w = 1)
    gives the codes the product serves for two-stage with options.hash_views=bicubic and options.query_fuse=true
    from the same HashNet (up to the 8-bit rounding of the SR query)."""
    import json
    import shutil

    import numpy as np
    import tensorflow as tf

    from dsrhn.records import DatasetInfo, read_split_raw
    from dsrhn.registry import get_method
    from trainer.export import CodeFunctions
    from trainer.task import train_and_export
    from trainer.train import latest_checkpoint

    qs = _benchmark("query_sr")
    run, cache = tmp_path / "run", tmp_path / "cache"
    root = run / "instance"
    shutil.copytree(mosaic_examples, root / "examples")
    shutil.copytree(mosaic_examples, root / "grid" / "x4-bicubic")
    (root / "made-from.json").write_text(json.dumps({"grid": "tiny"}))
    preset = tiny_preset.replace(method="hashnet-lr")
    work = root / "hashnet-lr" / "work"
    train_and_export(str(root / "examples"), preset, str(work), str(root / "hashnet-lr" / "model"), verbose=0)
    weights = str(root / "hashnet-lr-k1.hashnet.weights.h5")
    shutil.copyfile(os.path.join(latest_checkpoint(str(work / "checkpoints")), "hashnet.weights.h5"), weights)
    (run / "results.json").write_text(json.dumps({"instance/hashnet-lr": {"key": "k1"}}))
    argv = ["query_sr.py", "--runs", str(run), "--cells", "x4-bicubic", "--cache", str(cache), "--topk", "20"]
    monkeypatch.setattr(sys, "argv", argv + ["--fuse", "1"])
    qs.main()
    printed = capsys.readouterr().out
    assert "| x4-bicubic |" in printed and "realsr-df2k fused w=1" in printed and "| summary |" in printed
    (cached,) = (cache / "realsr-df2k").glob("x4-bicubic-*.npy")

    import trainer.models

    def no_sr(*a, **k):
        raise AssertionError("the cached SR queries were not reused")

    monkeypatch.setattr(trainer.models, "SRNet", no_sr)
    monkeypatch.setattr(sys, "argv", argv + ["--fuse", "0.5"])
    qs.main()
    assert "realsr-df2k fused w=0.5" in capsys.readouterr().out
    monkeypatch.undo()

    net, p = qs.hashnet_lr(str(run))
    q_x, _ = qs.hr_space(str(root / "grid" / "x4-bicubic"), "query", "lr", p.hr_size)
    bench = qs.pack_bits(qs.logits(net, q_x) + qs.logits(net, np.load(cached).astype(np.float32) / 255.0))
    served = p.replace(method="two-stage", sr_arch="rrdb", sr_weights="realsr-df2k")
    served = served.replace(options={"hash_views": "bicubic", "query_fuse": True})
    method = get_method("two-stage")(served, DatasetInfo.read(mosaic_examples))
    nets = method.networks()
    nets["hashnet"].load_weights(weights)
    lr = [bytes(r["lr"]) for r in read_split_raw(str(root / "grid" / "x4-bicubic"), "query").as_numpy_iterator()]
    codes = CodeFunctions(method, nets).query_codes(tf.constant(lr))["codes"].numpy()
    agree = (np.unpackbits(codes, axis=1) == np.unpackbits(bench, axis=1)).mean()
    assert agree >= 0.97, agree
