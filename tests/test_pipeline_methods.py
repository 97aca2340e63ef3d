"""Other registered methods through the same TFX pipeline (its own file: the runs are long, and pytest-xdist
gives each file to one worker, so this one runs beside tests/test_pipeline.py's)."""

from __future__ import annotations

import json
import os

import pytest

from tests.test_pipeline import BIN, run


# fsr-gan: 2 HashNet epochs (1 left bit 10 of 12 constant over the gallery: not blessed, nothing pushed)
@pytest.mark.parametrize("mode,option,value", [("pointwise-seg", "seg_epochs", 1), ("fsr-gan", "hash_epochs", 2)])
def test_another_registered_method_runs_through_the_same_pipeline(mode, option, value, tmp_path):
    """`dsrhn pipeline --config` with another method (point-wise + segmentation: ingest writes masks;
    FSR-GAN: three networks, a feature-space query path): the Trainer's run_fn builds the method from
    the registry; evaluation, push and index are unchanged."""
    config = {
        "preset_overrides": {
            "method": mode,
            "bits": 12,
            "epochs": 1,
            "batch_size": 32,
            "steps_per_epoch": 20,
            f"options.{option}": value,
        },
        "train_steps": 20,
        "min_map": 0.0,
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("DSRHN_PIPELINE_CONFIG", None)
    log = run(
        [os.path.join(BIN, "dsrhn"), "pipeline", "--tiny", "--home", str(tmp_path), "--config", json.dumps(config)], env
    )
    assert "LR-query mAP@100" in log
    pushed = [line.split()[-1] for line in log.splitlines() if line.startswith("pushed_model")]
    assert pushed, log[-3000:]
    from dsrhn.contracts import read_metadata
    from serving.index import load_index

    meta = read_metadata(pushed[0])
    assert meta["method"] == mode and meta["query_path"] == {"pointwise-seg": "bicubic", "fsr-gan": "fsr"}[mode]
    assert meta["bits"] == 12
    assert load_index(pushed[0], meta).count == 120
