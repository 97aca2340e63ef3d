"""`dsrhn photos`: fetch the offline photo corpus (real photos from Debian packages, via apt)."""

from __future__ import annotations

import argparse
import os
import sys

NAME, HELP = "photos", "fetch the offline photo corpus (real photos from Debian packages, via apt)"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--root", help="where to write it (default: <data>/photos, or <data>/photos-mini with --mini)")
    p.add_argument("--packages", help="comma-separated subset of the corpus's packages (default: all)")
    p.add_argument("--mini", action="store_true", help="the two small packages the tests use (~10 MB)")
    p.add_argument("--remove-debs", action="store_true", help="delete the downloaded packages afterwards")
    return p


def run(args) -> int:
    from components.photo_corpus import MINI_PACKAGES, PACKAGES, FetchError, fetch_corpus, remove_debs
    from dsrhn.config import data_dir

    packages = tuple(args.packages.split(",")) if args.packages else (MINI_PACKAGES if args.mini else PACKAGES)
    root = args.root or os.path.join(data_dir(), "photos-mini" if args.mini else "photos")
    try:
        manifest = fetch_corpus(root, packages)
    except FetchError as e:
        print(f"dsrhn photos: error: {e}", file=sys.stderr)
        return 1
    if args.remove_debs:
        remove_debs(root)
    root = os.path.abspath(root)
    n = {s: sum(1 for p in manifest["photos"] if p["split"] == s) for s in ("train", "test", "labelled")}
    print(
        f"train photos:  {os.path.join(root, 'train')} ({n['train']})\n"
        f"test photos:   {os.path.join(root, 'test')} ({n['test']}, held out)\n"
        + (f"labelled set:  {os.path.join(root, 'labelled')} ({n['labelled']})\n" if n["labelled"] else "")
        + f"manifest:      {os.path.join(root, 'manifest.json')}"
    )
    return 0
