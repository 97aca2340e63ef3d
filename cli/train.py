"""`dsrhn train`: Examples -> SavedModel (LR image bytes -> codes), any registered method."""

from __future__ import annotations

import argparse
import os
import sys

from dsrhn.config import DEGRADATION_KINDS, HASH_LOSSES, PRESETS
from dsrhn.registry import METHODS

NAME, HELP = "train", "Examples -> SavedModel"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--examples", required=True)
    p.add_argument("--output", "-o", required=True, help="SavedModel directory to write")
    p.add_argument(
        "--work-dir",
        help="checkpoints + TensorBoard logs (default: <output>/_work); re-run to resume "
        "(the same run only: other settings or data are refused)",
    )
    p.add_argument(
        "--restart", action="store_true", help="discard the checkpoints in --work-dir and train from scratch"
    )
    p.add_argument(
        "--preset",
        default="cpu",
        choices=list(PRESETS),
        help="cpu: mosaics, 56 px; paper: the paper's settings, 224 px, GPU; photo: real photos, 96 px, "
        "ImageNet MobileNetV2",
    )
    p.add_argument(
        "--method",
        "--mode",
        dest="method",
        choices=list(METHODS),
        metavar="METHOD",
        help="the registered method (dsrhn/registry.py): "
        + "; ".join(f"{s.name}: {s.help}" for s in METHODS.values())
        + " (`dsrhn methods` lists each one's options; --mode is its old name)",
    )
    p.add_argument("--hash-loss", choices=list(HASH_LOSSES))
    for flag in ("--bits", "--epochs", "--steps-per-epoch", "--batch-size", "--seed"):
        p.add_argument(flag, type=int)
    p.add_argument("--pretrained-weights", help="local Keras weights for HashNet's backbone (never downloaded)")
    p.add_argument(
        "--degradation",
        choices=list(DEGRADATION_KINDS),
        help="training LR: blind (default: random scale x1-x8, blur, kernel, noise, JPEG drawn per "
        "example and epoch) or fixed (the LR partners stored by ingest, the paper's setting)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other preset field, e.g. --set lr_decay=cosine --set sr_steps=2 "
        "--set degradation.scale_max=4 --set degradation.kernels=area,bicubic (repeatable)",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        help="0 quiet, 1 a progress bar per step, 2 one line per epoch (default: 1 on a terminal, "
        "2 when the output goes to a file or a pipe)",
    )
    return p


def run(args) -> int:
    from trainer.task import train_and_export

    preset = preset_of(args)
    work = args.work_dir or os.path.join(args.output, "_work")
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    summary = train_and_export(args.examples, preset, work, args.output, verbose=verbose, restart=args.restart)
    print(f"model: {os.path.abspath(args.output)} ({preset.method}, {preset.bits} bits, {summary['seconds']:.0f} s)")
    return 0


def preset_of(args):
    """The preset the flags name: --preset, then --set overrides, then the named flags (a flag given wins)."""
    from dsrhn.config import get_preset, parse_overrides
    from dsrhn.registry import get_method

    flags = dict(
        bits=args.bits,
        method=args.method,
        hash_loss=args.hash_loss,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        seed=args.seed,
        pretrained_weights=args.pretrained_weights,
    )
    flags["degradation.kind"] = args.degradation
    overrides = parse_overrides(args.set)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    preset = get_preset(args.preset, **overrides)
    get_method(preset.method).parse_options(preset.options)  # unknown or mistyped options.NAME fail here
    return preset
