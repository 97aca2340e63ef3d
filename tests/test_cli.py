"""The stage commands as a user runs them, each reading what the previous one wrote."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

DSRHN = os.path.join(os.path.dirname(sys.executable), "dsrhn")


def dsrhn(*args: str) -> str:
    out = subprocess.run(
        [DSRHN, *args], capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_ingest_train_evaluate_index(tmp_path):
    ex, model, ev = str(tmp_path / "ex"), str(tmp_path / "model"), str(tmp_path / "eval")
    out = dsrhn(
        "ingest",
        "fashion-mnist-mosaic",
        "-o",
        ex,
        "--n-train",
        "64",
        "--n-query",
        "8",
        "--n-gallery",
        "32",
        "--jpeg-quality",
        "60",
        "--seed",
        "1",
    )
    assert "104 in = 104 written + 0 rejected" in out
    assert json.load(open(os.path.join(ex, "dsrhn_dataset.json")))["lr"]["jpeg_quality"] == 60
    dsrhn(
        "train",
        "--examples",
        ex,
        "-o",
        model,
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "16",
        "--bits",
        "16",
        "--method",
        "hashnet-lr",
        "--verbose",
        "0",
        "--set",
        "lr_decay=cosine",
        "--set",
        "dropout=0.25",
        "--degradation",
        "fixed",
    )
    meta = json.load(open(os.path.join(model, "assets.extra", "dsrhn.json")))
    assert meta["method"] == "hashnet-lr"
    assert meta["degradation"] == "fixed" and meta["query_sizes"] == [14, 14]  # the stored x4 partners
    assert (meta["preset"]["lr_decay"], meta["preset"]["dropout"]) == ("cosine", 0.25)
    out = dsrhn("evaluate", "--model", model, "--examples", ex, "-o", ev, "--topk", "10", "--no-plots")
    report = json.load(open(os.path.join(ev, "report.json")))
    assert "LR-query mAP@10:" in out and report["gallery"] == 32
    aps = np.load(os.path.join(ev, "per_query_ap.npz"))  # per-query APs for paired comparisons
    assert len(aps["ids"]) == len(aps["lr_query"]) == len(aps["hr_query"]) == 8
    assert aps["lr_query"].mean() == pytest.approx(report["map"])
    assert aps["hr_query"].mean() == pytest.approx(report["hr_query"]["map@10"])
    # a stored query set with another degradation (x8, blur, noise, JPEG), repeatable, scored on the same gallery
    q8, q8b, ev8 = str(tmp_path / "q8"), str(tmp_path / "q8b"), str(tmp_path / "ev8")
    lr_args = ["--scale", "8", "--blur", "1.5", "--noise", "5", "--jpeg-quality", "60", "--seed", "2"]
    assert "queries: 8 at 7 px" in dsrhn("queries", "--examples", ex, "-o", q8, *lr_args)
    dsrhn("queries", "--examples", ex, "-o", q8b, *lr_args)
    from dsrhn.records import read_split_raw

    sets = [list(read_split_raw(d, "query").as_numpy_iterator()) for d in (q8, q8b)]
    assert len(sets[0]) == len(sets[1]) == 8
    for a, b in zip(*sets):  # the same records (a gzip stream's bytes need not repeat)
        assert all(np.array_equal(a[k], b[k]) for k in ("id", "hr", "lr", "labels"))
    dsrhn("evaluate", "--model", model, "--examples", ex, "--queries", q8, "-o", ev8, "--topk", "10", "--no-plots")
    report8 = json.load(open(os.path.join(ev8, "report.json")))
    assert report8["queries_from"] == q8 and report8["query_lr"]["scale"] == 8 and report8["gallery"] == 32
    assert report8["hr_query"]["map@10"] == pytest.approx(report["hr_query"]["map@10"])  # same HR, same gallery
    out = dsrhn("index", "--model", model, "--examples", ex)
    assert "index: 32 codes (16 bits, faiss BFlat, stored d=32)" in out
    assert json.load(open(os.path.join(model, "index", "manifest.json")))["count"] == 32


def test_bad_preset_override_is_one_clear_error(tmp_path):
    out = subprocess.run(
        [DSRHN, "train", "--examples", str(tmp_path), "-o", str(tmp_path / "m"), "--set", "sr_steps=two"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "--set 'sr_steps=two': sr_steps must be int" in out.stderr and "Traceback" not in out.stderr


def test_every_source_kind_and_command_is_on_the_front_door():
    """The CLI's ingest flags cover every source kind dsrhn/sources.py has, and `dsrhn --help` lists every command."""
    from cli import ingest
    from cli.main import COMMANDS, build_parser
    from dsrhn.sources import SOURCES

    assert set(ingest.SPEC_OF) == set(SOURCES)
    text = build_parser().format_help()
    assert all(f"dsrhn {c.NAME} " in text for c in COMMANDS) and len(COMMANDS) == 13
