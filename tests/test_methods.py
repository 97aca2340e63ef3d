"""The method registry's contract, for every registered method: each phase updates only what its
optimizers own, a killed run resumes exactly, and the method trains, exports (reloaded in a fresh
process), evaluates, indexes and serves through the same code paths. Plus the new methods' pieces:
pixel masks at ingestion, the PSP branch, the point-wise and center losses."""
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
from dsrhn.config import MODES, get_preset, parse_overrides
from dsrhn.contracts import read_metadata
from dsrhn.records import DatasetInfo, read_split, read_split_raw
from dsrhn.registry import METHODS, get_method
from trainer.train import build_trainer, training_dataset, train

ALL = list(METHODS)


def _tiny(mode: str, teacher: str = "", **kw):
    options = {"pointwise-seg": {"options.seg_epochs": 1}, "fsr-gan": {"options.hash_epochs": 1},
               "student": {"options.teacher_weights": teacher}}.get(mode, {})
    return get_preset("cpu", mode=mode, bits=12, batch_size=8, sr_blocks=1, sr_filters=8, **{**options, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A teacher HashNet's weights for the student method (untrained: the contract tests only need its shapes)."""
    from trainer.models import HashNet

    path = str(tmp_path_factory.mktemp("teacher") / "hashnet.weights.h5")
    HashNet(_tiny("dsrhn")).save_weights(path)
    return path


def test_the_registry_is_the_only_list_of_methods():
    from dsrhn import cli

    assert MODES == tuple(METHODS)
    ap_help = subprocess.run([sys.executable, "-m", "dsrhn.cli", "train", "--help"], capture_output=True, text=True)
    for name in METHODS:
        assert get_method(name).name == name
        assert name in cli.METHOD_HELP and name in ap_help.stdout
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="mode must be one of"):
        get_preset("cpu", mode="nope")


def test_a_segmentation_method_on_data_without_masks_is_refused_with_the_fix():
    from trainer.train import build_method

    info = DatasetInfo(source="list", label_names=["a", "b"], hr_size=56, lr_size=14, scale=4)
    with pytest.raises(ValueError, match="has none: ingest fashion-mnist-mosaic or coco"):
        build_method(_tiny("pointwise-seg"), info)
    assert build_method(_tiny("pointwise"), info).multi_label  # a list source is multi-label (NUS-WIDE)


def test_method_options_are_typed_and_checked():
    preset = get_preset("cpu", mode="center", **parse_overrides(["options.center_weight=0.5"]))
    assert get_method("center").parse_options(preset.options).center_weight == 0.5
    with pytest.raises(ValueError, match="has no options \\['center_weight'\\]"):
        get_method("pointwise").parse_options({"center_weight": "1"})
    with pytest.raises(ValueError, match="options.center_weight of method 'center' must be float"):
        get_method("center").parse_options({"center_weight": "heavy"})
    with pytest.raises(ValueError, match="finite number"):
        get_method("center").parse_options({"center_weight": "nan"})
    with pytest.raises(ValueError, match="psp_bins"):
        get_method("pointwise-seg").parse_options({"psp_bins": "0,x"})


@pytest.mark.parametrize("mode", ALL)
def test_each_phase_updates_only_what_its_optimizers_own(mode, mosaic_examples, teacher):
    info = DatasetInfo.read(mosaic_examples)
    preset = _tiny(mode, teacher, epochs=1, steps_per_epoch=1, hash_lr=0.1,
                   sr_warmup_epochs=1 if mode == "dsrhn" else 0)
    trainer = build_trainer(preset, info)
    trainer.build_optimizers()
    method = trainer.method
    batch = next(iter(training_dataset(mosaic_examples, preset, 0, 1, 1, info, method.needs_masks)))
    every = {id(v): v for net in trainer.nets.values() for v in net.trainable_variables}
    for phase in method.phases():
        owned = {id(v) for opt in phase.updates for v in trainer.variables_for(opt)}
        before = {k: np.array(v) for k, v in every.items()}
        trainer.phase = phase.name
        trainer.train_step(batch)
        changed = {k for k, v in every.items() if not np.array_equal(before[k], np.array(v))}
        assert changed, f"{mode}/{phase.name}: nothing trained"
        assert changed <= owned, f"{mode}/{phase.name}: updated variables its optimizers do not own: " + \
            str([every[k].path for k in changed - owned][:5])


@pytest.mark.parametrize("mode", ALL)
def test_every_method_resumes_exactly(mode, mosaic_examples, tmp_path, teacher):
    # two epochs (pointwise-seg: its seg phase, then its hash phase), killed after the first; fsr-gan: one
    # HashNet epoch, then two of G and D, killed between those two. Dropout draws random masks and cosine
    # decay reads the optimizers' step counters: both must resume
    preset = _tiny(mode, teacher, epochs=1 if mode == "pointwise-seg" else 2, steps_per_epoch=2, dropout=0.5,
                   lr_decay="cosine", sr_warmup_epochs=0)
    stop = 2 if mode == "fsr-gan" else 1
    straight = train(mosaic_examples, preset, str(tmp_path / "a"), verbose=0, tensorboard=False).trainer
    train(mosaic_examples, preset, str(tmp_path / "b"), verbose=0, tensorboard=False, stop_after_epochs=stop)
    resumed = train(mosaic_examples, preset, str(tmp_path / "b"), verbose=0, tensorboard=False)
    assert resumed.resumed_from == stop
    assert sorted(straight.nets) == sorted(resumed.trainer.nets)
    for name in straight.nets:
        for x, y in zip(straight.nets[name].variables, resumed.trainer.nets[name].variables):
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-6, err_msg=f"{mode} {name} {x.path}")
    for name in straight.opts:
        for x, y in zip(straight.opts[name].variables, resumed.trainer.opts[name].variables):
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-6, err_msg=f"{mode} optimizer {name}")
        if straight.method.optimizer_updates(2).get(name):  # cosine decay read the restored step counters
            for opt in (straight.opts[name], resumed.trainer.opts[name]):
                assert float(opt.learning_rate) == pytest.approx(0.0, abs=1e-9), (mode, name)


def test_a_checkpoint_of_another_method_is_refused(mosaic_examples, tmp_path):
    train(mosaic_examples, _tiny("hashnet-lr", epochs=1, steps_per_epoch=1), str(tmp_path), verbose=0, tensorboard=False)
    with pytest.raises(ValueError, match="holds method 'hashnet-lr'"):
        train(mosaic_examples, _tiny("center", epochs=2, steps_per_epoch=1), str(tmp_path), verbose=0, tensorboard=False)


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
        args = [sys.executable, "-m", "dsrhn.cli", "train", "--examples", single_examples, "-o", model, "--mode", mode,
                "--bits", "12", "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch-size", "32",
                "--verbose", "0", "--set", "sr_blocks=1", "--set", "sr_filters=8",
                "--work-dir", str(root / mode / "work")]
        args += {"pointwise-seg": ["--set", "options.seg_epochs=1"],
                 "fsr-gan": ["--set", "options.hash_epochs=2"]}.get(mode, []) + (extra or [])
        run = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{mode}: " + run.stderr[-3000:]
        return model

    # the student distils the DSRHN trained here (its HashNet's last checkpoint; its gallery codes are the
    # teacher's): queued third, it starts once DSRHN (first) is done while the other methods go on training
    teacher = root / "dsrhn" / "work" / "checkpoints" / f"epoch-{QUALITY_STEPS[0]:04d}" / "hashnet.weights.h5"
    others = [m for m in ALL if m not in ("dsrhn", "student")]
    with ThreadPoolExecutor(2) as pool:
        futures = {"dsrhn": pool.submit(cli_train, "dsrhn"), others[0]: pool.submit(cli_train, others[0])}
        futures["student"] = pool.submit(lambda: futures["dsrhn"].result() and cli_train(
            "student", ["--set", f"options.teacher_weights={teacher}"]))
        futures.update({m: pool.submit(cli_train, m) for m in others[1:]})
        return {m: futures[m].result() for m in ALL}


# floors, on the single-label set: 100 LR queries (x4 bicubic, the stored partners), 300 gallery images, 10
# balanced classes, so random codes score about 0.1 (measured in the test, on the same queries and gallery)
MAP_MARGIN = 0.15  # mAP@all over random codes; measured 2026-11-28: trained 0.36 (fsr-gan) to 0.57 (center), random 0.12


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
        chance = mean_average_precision(pack_bits(rng.choice([-1, 1], (len(q.codes), 12))),
                                        pack_bits(rng.choice([-1, 1], (len(g.codes), 12))), q.labels, g.labels, None)
        floors[mode] = (round(trained, 3), round(chance, 3))
        assert trained > chance + MAP_MARGIN, f"{mode}: mAP {trained:.3f}, random codes {chance:.3f} (+{MAP_MARGIN})"
        health = code_health(g.codes, 12, g.labels)
        assert health.problems() == [], f"{mode}: {health.problems()}"
        if enc.multi_level:  # the codes of every valid region: no constant bit; the re-ranked search learns too
            n, regions, _, width = g.local.shape
            codes = unpack_bits(g.local[:, :, 0].reshape(n * regions, width), 12)
            valid = g.local[:, :, 1].reshape(n * regions, width).any(1)
            assert valid.mean() > 0.5 and code_health(codes[valid]).constant_bits == [], "multi-level local codes"
            ranked, _ = rerank_average_precisions(q.codes, g.codes, q.labels, g.labels, q.local, g.local, 12, 300,
                                                  1.0, None)
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
        "    out[mode] = [q['codes'].numpy().tolist(), list(s.shape), g['codes'].numpy().tolist(), q['bits'].shape[1]]\n"
        "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    for mode, path in exported.items():
        meta = read_metadata(path)
        method = get_method(mode)
        assert meta["mode"] == mode and meta["query_path"] == method.query_path
        assert meta["query_input"] == method.query_input and meta["code_bytes"] == 2
        m = tf.saved_model.load(path)
        mem_q = m.signatures["serving_default"](images=tf.constant(batch["lr"]))["codes"].numpy().tolist()
        mem_g = m.signatures["encode_hr"](images=tf.constant(batch["hr"]))["codes"].numpy().tolist()
        assert fresh[mode][0] == mem_q and fresh[mode][2] == mem_g, mode
        assert fresh[mode][1] == [4, 56, 56, 3] and fresh[mode][3] == 12 and len(mem_q[0]) == 2
    cli = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
                          exported["pointwise-seg"], "--all"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    for sig in ("serving_default", "encode_hr", "super_resolve"):
        assert f"signature_def['{sig}']" in cli.stdout


def test_every_method_evaluates_indexes_and_serves(exported, mosaic_examples, tmp_path):
    from serving.indexer import gallery_from_examples, run_indexing
    from serving.server import BackgroundServer, search
    from serving.store import ModelStore

    query = next(read_split_raw(mosaic_examples, "query").take(1).as_numpy_iterator())
    for mode, model in exported.items():
        report = evaluate_model(model, mosaic_examples, str(tmp_path / mode / "eval"), topk=20, plots=False, curves=False)
        assert 0.0 < report["map"] <= 1.0 and report["mode"] == mode
        assert ("sr_quality" in report) == (get_method(mode).query_input == "lr")
        base = tmp_path / "serving" / mode
        shutil.copytree(model, base / mode / "1")
        summary = run_indexing(str(base / mode / "1"), gallery_from_examples(mosaic_examples),
                               beam_args=["--runner=DirectRunner"])
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
            status, ranked = _post(f"{server.url}/v1/models/{mode}:search",
                                   {"instances": instances, "k": 5, "rerank": {"shortlist": 30}})
            if mode != "multi-level":  # a model without local codes: a clear 400, nothing else changes
                assert status == 400 and "has no local codes" in ranked["error"], ranked
                assert not (base / mode / "1" / "index" / "local.npy").exists()
                assert "local" not in summary.manifest and "rerank" not in report["lr_query"]
                continue
            assert status == 200 and ranked["rerank"] == {"shortlist": 30, "weight": 1.0}, ranked
            hit = ranked["results"][0]
            assert len(hit["ids"]) == 5 and len(hit["local_distances"]) == 5
            assert hit["rerank_distances"] == sorted(hit["rerank_distances"])
            np.testing.assert_allclose(hit["rerank_distances"], np.add(hit["distances"], hit["local_distances"]), atol=1e-3)
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


# ---------------------------------------------------------------- masks and the new methods' parts

def test_mosaic_masks_mark_each_tile_class_where_the_item_is_drawn(mosaic_examples):
    from components.sources import FASHION_MNIST_DRAWN

    info = DatasetInfo.read(mosaic_examples)
    assert info.masks and info.multi_label
    for rec in read_split(mosaic_examples, "train").take(8):
        mask, hr = rec["mask"].numpy(), rec["hr"].numpy()[..., 0] * 255.0
        drawn = np.rint(hr) > FASHION_MNIST_DRAWN
        assert ((mask > 0) == drawn).all()
        present = {int(c) - 1 for c in np.unique(mask) if c > 0}
        assert present == set(np.flatnonzero(rec["labels"].numpy()).tolist())
        for tile in (mask[:28, :28], mask[:28, 28:], mask[28:, :28], mask[28:, 28:]):
            assert len(set(np.unique(tile).tolist()) - {0}) == 1  # one item, one class per tile


def test_coco_polygons_and_rle_are_rasterised_through_the_hr_geometry(tmp_path):
    from PIL import Image

    from components.ingest import run_ingest
    from components.masks import rle_counts
    from dsrhn.config import LRConfig

    root = tmp_path / "img"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (80, 40), (120, 90, 60)).save(root / name)
    # a: a polygon over x 20..39 (the left half of the centre square x 20..59) for category 7, and an
    # uncompressed RLE (iscrowd) over rows 0..9, x 50..79 for category 3;
    # b: a compressed RLE string (pycocotools' encoding of 10 zeros, 5 ones, then zeros)
    crowd = np.zeros((40, 80), bool)
    crowd[:10, 50:] = True
    flat = crowd.T.reshape(-1)
    runs, value, n = [], False, 0
    for bit in flat:
        if bit != value:
            runs.append(n)
            value, n = bit, 0
        n += 1
    runs.append(n)
    rle = {"size": [40, 80], "counts": runs}
    assert rle_counts(":5") == [10, 5]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 40},
                       {"id": 2, "file_name": "b.png", "width": 80, "height": 40}],
            "annotations": [{"image_id": 1, "category_id": 7, "segmentation": [[20, 0, 39, 0, 39, 39, 20, 39]]},
                            {"image_id": 1, "category_id": 3, "segmentation": rle, "iscrowd": 1},
                            {"image_id": 2, "category_id": 3, "segmentation": {"size": [40, 80], "counts": ":5"}}],
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = str(tmp_path / "ex")
    run_ingest({"kind": "coco", "pairs": [[str(tmp_path / "coco.json"), str(root)]], "n_query": 1, "n_train": 1},
               out, 40, LRConfig(scale=2), beam_args=["--runner=DirectRunner"])
    info = DatasetInfo.read(out)
    assert info.masks and info.label_names == ["car", "train"]
    masks = {r["id"].numpy().decode().rsplit("/", 1)[-1]: r["mask"].numpy() for sp in ("query", "gallery")
             for r in read_split(out, sp, info)}
    a, b = masks["a.png"], masks["b.png"]  # the centre 40x40 square: x 20..60 of the 80-px image
    a_expected = np.zeros((40, 40), np.uint8)
    a_expected[:, :20] = 2  # the polygon (train = column 1 -> 2)
    a_expected[:10, 30:] = 1  # the crowd RLE (car = column 0 -> 1), cut by the centre crop
    assert (a == a_expected).all()
    b_full = np.zeros((40, 80), np.uint8)
    b_full[10:15, 0] = 1  # column-major runs: x = 0, y = 10..14, outside the centre crop
    assert (b == b_full[:, 20:60]).all()


def test_pyramid_pooling_bins_and_shapes():
    from trainer.models import AdaptiveAvgPool, PyramidPooling

    x = tf.constant(np.arange(2 * 7 * 7 * 4, dtype=np.float32).reshape(2, 7, 7, 4))
    pooled = AdaptiveAvgPool(3)(x).numpy()
    np.testing.assert_allclose(pooled[:, 0, 0], x.numpy()[:, 0:3, 0:3].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pooled[:, 1, 2], x.numpy()[:, 2:5, 4:7].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(AdaptiveAvgPool(1)(x).numpy()[:, 0, 0], x.numpy().mean(axis=(1, 2)), rtol=1e-6)
    psp = PyramidPooling((7, 7, 64), (1, 2, 3, 4))
    assert psp.output_shape == (None, 7, 7, 64 + 4 * 16)
