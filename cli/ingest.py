"""`dsrhn ingest`: images -> HR/LR TFRecords (an Examples directory) + rejection report."""

from __future__ import annotations

import argparse
import os
import sys

from cli.common import add_beam_arg, add_lr_args, add_outside_root_flag, beam_args, lr_config
from dsrhn.sources import FASHION_MNIST_DIR, SOURCES

NAME, HELP = "ingest", "images -> HR/LR TFRecords + rejection report"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument(
        "source",
        choices=list(SOURCES),
        help="photos: a plain folder of photos, each its own identity (find a photo from a thumbnail "
        "or crop of it); directory: root/<class>/<image>",
    )
    p.add_argument("--output", "-o", required=True, help="Examples directory to write")
    p.add_argument("--image-root", help="image root (list, directory)")
    add_outside_root_flag(p)
    p.add_argument("--list-file", help="one list file `path 0 1 0 ...`, split by --split-rule")
    p.add_argument("--train-list")
    p.add_argument("--query-list", help="e.g. NUS-WIDE test.txt")
    p.add_argument("--gallery-list", help="e.g. NUS-WIDE database.txt")
    p.add_argument("--label-names", help="file of label names, whitespace separated, in label order")
    p.add_argument("--coco-json", action="append", default=[], help="instances_*.json (repeatable)")
    p.add_argument(
        "--coco-image-root", dest="image_root_list", action="append", help="image folder of each --coco-json"
    )
    p.add_argument(
        "--fashion-mnist-dir",
        default=FASHION_MNIST_DIR,
        help="Fashion-MNIST's folder (default: $DSRHN_FASHION_MNIST, else Debian's dataset-fashion-mnist)",
    )
    p.add_argument("--split-rule", choices=["per-class", "random"])
    for flag in ("--query-per-class", "--train-per-class", "--n-query", "--n-train", "--n-gallery"):
        p.add_argument(flag, type=int)
    p.add_argument(
        "--test-root", help="photos: a folder of held-out photos (never trained on) to draw the queries from"
    )
    p.add_argument("--query-views", type=int, default=2, help="photos: query views (random crops) per photo")
    p.add_argument(
        "--gallery-views",
        type=int,
        default=1,
        help="photos: gallery items per held-out photo (the whole photo, then random views)",
    )
    p.add_argument(
        "--source-side",
        type=int,
        help="photos: shorter side the training photos are stored at (views are cut from it; default 4 x --hr-size)",
    )
    p.add_argument("--hr-size", type=int, default=56, help="HR side (cpu preset 56, paper 224, photo 96)")
    add_lr_args(p)
    add_beam_arg(p, "--beam-arg=--runner=FlinkRunner")
    return p


def run(args) -> int:
    from components.ingest import run_ingest

    spec = SPEC_OF[args.source](args, _split_kw(args))
    summary = run_ingest(spec, args.output, args.hr_size, lr_config(args), beam_args=beam_args(args))
    print(summary.console())
    print(f"examples: {os.path.abspath(args.output)}\nreport:   {os.path.abspath(summary.report_path)}")
    return 0


def _split_kw(args) -> dict:
    kw = {
        "query_per_class": args.query_per_class,
        "train_per_class": args.train_per_class,
        "n_query": args.n_query,
        "n_train": args.n_train,
        "seed": args.seed,
    }
    return {k: v for k, v in kw.items() if v is not None}


def _fashion_mnist(args, split_kw: dict) -> dict:
    spec = {"kind": args.source, "directory": args.fashion_mnist_dir, "seed": args.seed or 0}
    spec.update({k: split_kw[k] for k in ("n_train", "query_per_class") if k in split_kw})
    if args.source == "fashion-mnist-mosaic":
        spec.update({k: v for k, v in (("n_query", args.n_query), ("n_gallery", args.n_gallery)) if v is not None})
    elif args.n_gallery is not None:
        spec["n_gallery"] = args.n_gallery
    return spec


def _list(args, split_kw: dict) -> dict:
    if not args.image_root or not (args.list_file or args.train_list):
        sys.exit("dsrhn ingest list: needs --image-root and --list-file, or --train-list/--query-list/--gallery-list")
    label_names = open(args.label_names).read().split() if args.label_names else None
    spec = {
        "kind": "list",
        "image_root": args.image_root,
        "label_names": label_names,
        "allow_outside_root": args.allow_outside_root,
    }
    if args.list_file:
        spec.update(single_list=args.list_file, rule=args.split_rule or "per-class", **split_kw)
    else:
        spec["lists"] = {
            role: p
            for role, p in (("train", args.train_list), ("query", args.query_list), ("gallery", args.gallery_list))
            if p
        }
    return spec


def _coco(args, split_kw: dict) -> dict:
    if len(args.coco_json) != len(args.image_root_list or []):
        sys.exit("dsrhn ingest coco: give one --coco-image-root per --coco-json (in the same order)")
    return {
        "kind": "coco",
        "pairs": list(zip(args.coco_json, args.image_root_list)),
        "rule": args.split_rule or "random",
        **split_kw,
    }


def _photos(args, split_kw: dict) -> dict:
    if not args.image_root:
        sys.exit("dsrhn ingest photos: needs --image-root (a folder of photos, any sub-folders; no labels needed)")
    return {
        "kind": "photos",
        "root": args.image_root,
        "test_root": args.test_root or "",
        "query_views": args.query_views,
        "gallery_views": args.gallery_views,
        "source_side": args.source_side or 0,
        "seed": args.seed or 0,
    }


def _directory(args, split_kw: dict) -> dict:
    if not args.image_root:
        sys.exit("dsrhn ingest directory: needs --image-root (a root/<class>/<image> tree)")
    return {"kind": "directory", "root": args.image_root, "rule": args.split_rule or "per-class", **split_kw}


SPEC_OF = {
    "fashion-mnist": _fashion_mnist,
    "fashion-mnist-mosaic": _fashion_mnist,
    "list": _list,
    "coco": _coco,
    "photos": _photos,
    "directory": _directory,
}  # the flags -> a spec for dsrhn.sources.SOURCES[kind]
