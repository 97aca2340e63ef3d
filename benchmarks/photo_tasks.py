"""The real-photo benchmark's tasks, each run in a fresh process: the photo SR stage, a row's training and
export, a row's scoring. Only this file (with the project's packages and degradation_grid.py's scorer) keys
the benchmark's cached rows, so a change to benchmarks/real_photos.py's tables does not retrain them."""
from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache import code_digest  # noqa: E402
from degradation_grid import score_model  # noqa: E402

BENCH_FILES = (os.path.abspath(__file__), os.path.join(os.path.dirname(os.path.abspath(__file__)), "degradation_grid.py"))


def train_sr_stage(examples: str, preset_dict: dict, out: str, weights: str) -> dict:
    """The photo SR stage: SRNet by MSE alone on views of the training photos (two-stage's stage 1)."""
    from dsrhn.config import preset_from_dict
    from trainer.train import train

    t0 = time.time()
    preset = preset_from_dict(preset_dict)
    stage1 = train(examples, preset, out, verbose=0, tensorboard=False, stop_after_epochs=preset.sr_warmup_epochs)
    stage1.trainer.nets["srnet"].save_weights(weights)
    return {"seconds": time.time() - t0}


def score_sr_stage(preset_dict: dict, weights: str, cell_dirs: dict, n: int = 200) -> dict:
    """PSNR-Y / SSIM-Y of an SR stage's SRNet and of bicubic against HR on every cell's first n queries, through
    the exported query path's resize and rounding (trainer/export.py), with no HashNet and no export."""
    import tensorflow as tf

    from components.evaluate import sr_quality
    from dsrhn.config import preset_from_dict
    from dsrhn.records import DatasetInfo
    from trainer.export import decode_hr_space, to_uint8
    from trainer.models import SRNet
    from trainer.pretrained import load_weights_strict
    from trainer.sr_weights import weights_path as sr_weights_path

    preset = preset_from_dict(preset_dict)
    net = SRNet(preset)
    if weights:
        net.load_weights(weights)
    else:  # a pretrained generator (preset.sr_weights), scored as it is
        load_weights_strict(net, sr_weights_path(preset.sr_weights))

    class StageEncoder:  # what sr_quality needs of an export: super_resolve(encoded LR images) -> uint8 HR
        @staticmethod
        def super_resolve(images: np.ndarray) -> np.ndarray:
            return to_uint8(net(decode_hr_space(tf.constant(images), preset.hr_size), training=False)).numpy()

    return {"cells": {cell: {"psnr": sr_quality(uri, StageEncoder, DatasetInfo.read(uri), n)} for cell, uri in cell_dirs.items()}}


def train_row(examples: str, preset_dict: dict, run_dir: str, hashnet_out: str) -> dict:
    """Train and export one row; its trained HashNet is also kept at `hashnet_out` (for rows that start from it
    or distil it: `@ROW` values)."""
    from dsrhn.config import preset_from_dict
    from trainer.task import train_and_export
    from trainer.train import latest_checkpoint

    shutil.rmtree(run_dir, ignore_errors=True)
    code = code_digest(BENCH_FILES)  # the code this row really trained with (a change mid-run is flagged)
    work = os.path.join(run_dir, "work")
    summary = train_and_export(examples, preset_from_dict(preset_dict), work, os.path.join(run_dir, "model"), verbose=0)
    last = latest_checkpoint(os.path.join(work, "checkpoints"))
    if os.path.exists(os.path.join(last, "hashnet.weights.h5")):
        shutil.copyfile(os.path.join(last, "hashnet.weights.h5"), hashnet_out + ".tmp")
        os.replace(hashnet_out + ".tmp", hashnet_out)
    return {"train_seconds": summary["seconds"], "model": os.path.join(run_dir, "model"), "trained_with_code": code,
            "code_health": summary["code_health"], "history_end": {
                phase: {k: v[-1] for k, v in h.items()} for phase, h in summary["history"].items()}}


def score_row(model: str, examples: str, cell_dirs: dict, topk: int, out_dir: str, hr_only: bool) -> dict:
    """Every cell's per-query AP (and PSNR/SSIM), the HR-query mAP of the same model, the gallery's health."""
    from components.evaluate import SavedModelEncoders, encode_split
    from components.metrics import average_precisions
    from dsrhn.health import code_health

    out = score_model(model, examples, cell_dirs, topk, out_dir, hr_only)
    enc = SavedModelEncoders(model)
    g = encode_split(examples, "gallery", "hr", enc.gallery)
    q = encode_split(examples, "query", "hr", enc.gallery)
    ap, _ = average_precisions(q.codes, g.codes, q.labels, g.labels, topk)
    np.save(os.path.join(out_dir, "hr-query.npy"), ap)
    out["hr_query_map"] = float(ap.mean())
    out["gallery_health"] = code_health(g.codes, int(enc.meta["bits"]), g.labels).to_dict()
    out["gallery_health"].pop("rare_share")
    return out
