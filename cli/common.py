"""Flags and settings more than one command shares."""

from __future__ import annotations

import argparse


def add_lr_args(p: argparse.ArgumentParser) -> None:
    """How LR partners are made from HR (dsrhn.images.make_lr): ingest and query sets."""
    from dsrhn.config import KERNELS, SCALES

    p.add_argument("--scale", type=int, default=4, choices=list(SCALES))
    p.add_argument("--kernel", default="bicubic", choices=list(KERNELS))
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian blur sigma before downsampling")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma on LR (0..255)")
    p.add_argument("--jpeg-quality", type=int, default=0, help="JPEG-compress LR at this quality (0: off)")
    p.add_argument("--seed", type=int)


def lr_config(args):
    from dsrhn.config import LRConfig

    return LRConfig(
        scale=args.scale,
        kernel=args.kernel,
        blur_sigma=args.blur,
        noise_sigma=args.noise,
        jpeg_quality=args.jpeg_quality,
        seed=args.seed or 0,
    )


def add_outside_root_flag(p: argparse.ArgumentParser) -> None:
    """Listed image paths stay inside --image-root unless asked (ingest and index read list files)."""
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read listed paths that leave --image-root (../, absolute); refused by default",
    )


def add_beam_arg(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--beam-arg", action="append", help=f"Beam pipeline option, e.g. {example}")


def beam_args(args) -> list[str]:
    return args.beam_arg or ["--runner=DirectRunner"]
