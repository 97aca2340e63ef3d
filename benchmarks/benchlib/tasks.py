"""The tasks that compute benchmark rows, each run in a fresh worker process (benchlib.runner): a method's first
phase alone, a row's training and export, a row's scoring. This file and grid.py key the cached rows
(cache.ROW_CODE), so a change to a script's tables alone does not retrain them."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from benchlib.cache import ROW_CODE, code_digest


def stage1_preset(epochs: int, steps_per_epoch: int, kind: str = "fixed") -> dict:
    """Two-stage's stage 1 on the cpu preset (SRNet by MSE alone) on `kind` training LR, as a preset dict."""
    from dsrhn.config import get_preset

    return get_preset(
        "cpu", method="two-stage", epochs=epochs, steps_per_epoch=steps_per_epoch, **{"degradation.kind": kind}
    ).to_dict()


def first_phase(
    examples: str, preset_dict: dict, out: str, weights: str, net: str = "srnet", epochs: int | None = None
) -> dict:
    """A method's first phase trained alone and `net`'s weights saved to `weights`: an SR stage (SRNet by MSE,
    two-stage's stage 1) or the FSR rows' HashNet. The run stops after `epochs` (default: the SR warm-up's)."""
    from dsrhn.config import preset_from_dict
    from trainer.train import train

    t0 = time.time()
    preset = preset_from_dict(preset_dict)
    stop = epochs if epochs is not None else preset.sr_warmup_epochs
    done = train(examples, preset, out, verbose=0, tensorboard=False, stop_after_epochs=stop)
    done.trainer.nets[net].save_weights(weights)
    return {"seconds": time.time() - t0}


def _train_export(examples: str, preset_dict: dict, run_dir: str) -> dict:
    """Train and export one row into run_dir/work and run_dir/model; the training summary."""
    from dsrhn.config import preset_from_dict
    from trainer.task import train_and_export

    return train_and_export(
        examples,
        preset_from_dict(preset_dict),
        os.path.join(run_dir, "work"),
        os.path.join(run_dir, "model"),
        verbose=0,
    )


def train_model(examples: str, preset_dict: dict, run_dir: str) -> dict:
    """Train and export one model."""
    summary = _train_export(examples, preset_dict, run_dir)
    return {"train_seconds": summary["seconds"], "model": os.path.join(run_dir, "model")}


def train_row(examples: str, preset_dict: dict, run_dir: str, hashnet_out: str) -> dict:
    """Train and export one row; its trained HashNet is also kept at `hashnet_out` (for rows that start from it
    or distil it: `@ROW` values)."""
    from trainer.train import latest_checkpoint

    shutil.rmtree(run_dir, ignore_errors=True)
    code = code_digest(ROW_CODE)  # the code this row really trained with (a change mid-run is flagged)
    summary = _train_export(examples, preset_dict, run_dir)
    last = latest_checkpoint(os.path.join(run_dir, "work", "checkpoints"))
    if os.path.exists(os.path.join(last, "hashnet.weights.h5")):
        shutil.copyfile(os.path.join(last, "hashnet.weights.h5"), hashnet_out + ".tmp")
        os.replace(hashnet_out + ".tmp", hashnet_out)
    return {
        "train_seconds": summary["seconds"],
        "model": os.path.join(run_dir, "model"),
        "trained_with_code": code,
        "code_health": summary["code_health"],
        "history_end": {phase: {k: v[-1] for k, v in h.items()} for phase, h in summary["history"].items()},
    }


def hamming_spread(model_dir: str, examples: str, n: int = 2000) -> dict:
    """Mean Hamming distance between gallery codes of images that share a label (intra-class) and of
    images that share none (inter-class), over the first n gallery images."""
    from components.evaluate import SavedModelEncoders, encode_split
    from components.metrics import unpack_bits

    enc = SavedModelEncoders(model_dir)
    g = encode_split(examples, "gallery", "hr", enc.gallery, limit=n)
    b = unpack_bits(g.codes, int(enc.meta["bits"]))
    dist = (b.shape[1] - b @ b.T) / 2.0
    similar = (g.labels @ g.labels.T) > 0
    off = ~np.eye(len(b), dtype=bool)
    return {"intra": float(dist[similar & off].mean()), "inter": float(dist[~similar].mean()), "images": len(b)}


def run_row(examples: str, preset_dict: dict, run_dir: str, topk: int, spread: bool = False) -> dict:
    """One table cell: train, export and evaluate a preset."""
    from components.evaluate import AP_FILE, evaluate_model

    t0 = time.time()
    summary = _train_export(examples, preset_dict, run_dir)
    report = evaluate_model(
        os.path.join(run_dir, "model"), examples, os.path.join(run_dir, "eval"), topk=topk, plots=False, curves=False
    )
    out = {
        "map": report["map"],
        "map_hr_query": report["hr_query"][f"map@{topk}"],
        "train_seconds": summary["seconds"],
        "seconds": time.time() - t0,
        "sr_quality": report.get("sr_quality"),
        "ap_file": os.path.join(run_dir, "eval", AP_FILE),
    }
    if spread:
        out["hamming"] = hamming_spread(os.path.join(run_dir, "model"), examples)
    return out


def score_model(model_dir: str, examples: str, cell_dirs: dict, topk: int, out_dir: str, hr_only: bool) -> dict:
    """Per-query AP@topk of one model on every cell (gallery encoded once), and PSNR-Y per cell; hr_only: its HR
    queries alone (cell "HR")."""
    from components.evaluate import SavedModelEncoders, encode_split, sr_quality
    from components.metrics import average_precisions
    from dsrhn.records import DatasetInfo

    enc = SavedModelEncoders(model_dir)
    info = DatasetInfo.read(examples)
    g = encode_split(examples, "gallery", "hr", enc.gallery, 256, info)
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    t0 = time.time()
    for cell, uri in ({"HR": examples} if hr_only else cell_dirs).items():
        q = encode_split(uri, "query", "hr" if hr_only else "lr", enc.query if not hr_only else enc.gallery, 256)
        ap, _ = average_precisions(q.codes, g.codes, q.labels, g.labels, topk)
        path = os.path.join(out_dir, f"{cell}.npy")
        np.save(path, ap)
        row = {"map": float(ap.mean()), "ap_file": path}
        if not hr_only:
            row["psnr"] = sr_quality(uri, enc, DatasetInfo.read(uri))
        out[cell] = row
    return {"cells": out, "score_seconds": time.time() - t0}


def score_row(model: str, examples: str, cell_dirs: dict, topk: int, out_dir: str, hr_only: bool) -> dict:
    """score_model, with the HR-query mAP of the same model and its gallery codes' health."""
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

    return {
        "cells": {
            cell: {"psnr": sr_quality(uri, StageEncoder, DatasetInfo.read(uri), n)} for cell, uri in cell_dirs.items()
        }
    }
