"""`dsrhn duplicates`: SavedModel + its index -> groups of near-duplicate gallery photos (JSON + HTML sheet)."""

from __future__ import annotations

import argparse
import json
import os

NAME, HELP = "duplicates", "groups of near-duplicate photos in a model's gallery index"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument(
        "--model", required=True, help="SavedModel export directory with its index (e.g. <base>/<name>/<version>)"
    )
    p.add_argument(
        "--index", help="index directory, when not <model>/index (`dsrhn index --output`); exact (BFlat) only"
    )
    p.add_argument(
        "--radius",
        type=int,
        help="Hamming radius (inclusive) that links two photos (default: 1/16 of the "
        "code length, 3 for 48 bits; verified: a candidate radius of 1/2, 24 for 48 bits)",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check each candidate pair geometrically on the index's previews (ORB + RANSAC); default: "
        "on when the index keeps previews",
    )
    p.add_argument(
        "--min-inliers",
        type=int,
        help="RANSAC inliers that verify a pair (default: serving/duplicates.py MIN_INLIERS, 8)",
    )
    p.add_argument(
        "--out",
        default=".",
        help="folder for duplicates.json and duplicates.html (default: the current "
        "directory; files there are replaced)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON document on stdout instead of the summary")
    return p


def run(args) -> int:
    from dsrhn.contracts import INDEX_DIR
    from serving.duplicates import find_duplicates, open_exact, summary_text, write_report

    gallery = open_exact(args.model, args.index)
    verify = gallery.previews is not None if args.verify is None else args.verify
    index_dir = os.path.abspath(args.index or os.path.join(args.model, INDEX_DIR))
    report = find_duplicates(gallery, args.radius, index_dir, verify, args.min_inliers)
    json_path, html_path = write_report(report, args.out, gallery.previews)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(f"{summary_text(report)}\njson:  {os.path.abspath(json_path)}\nsheet: {os.path.abspath(html_path)}")
    return 0
