"""`dsrhn search`: SavedModel + its index -> top-k of query images or folders, from the shell (no server)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from serving.limits import MAX_K

NAME, HELP = "search", "top-k gallery hits of query images, from the shell (no server)"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument(
        "queries",
        nargs="+",
        metavar="IMAGE|FOLDER",
        help="query images (any size), or folders: every image file in one (sorted, not sub-folders)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="SavedModel export directory with the index `dsrhn index` wrote beside it (e.g. <base>/<name>/<version>)",
    )
    p.add_argument("--index", help="index directory, when not <model>/index (`dsrhn index --output`)")
    p.add_argument("-k", "--k", type=int, default=10, help=f"hits per query (at most {MAX_K}, as the server)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout: the :search answer's fields per query, plus its path",
    )
    p.add_argument(
        "--sheet",
        metavar="OUT.html",
        help="write an HTML contact sheet: each query beside its hits' previews (images embedded)",
    )
    p.add_argument("--label", action="append", help="only hits carrying this label (repeat: any of them)")
    p.add_argument("--folder", help="only hits whose id lies under this folder (a photo-folder gallery's sub-folder)")
    return p


def run(args) -> int:
    from serving.search_cli import contact_sheet, expand_queries, run_search

    if not 1 <= args.k <= MAX_K:
        sys.exit(f"dsrhn search: error: -k must be in [1, {MAX_K}] (the server's limit), got {args.k}")
    paths, empty = expand_queries(args.queries)
    servable = _servable(args)
    where = {k: v for k, v in (("labels", args.label or []), ("folder", args.folder or "")) if v} or None
    found = run_search(servable, paths, args.k, where=where)
    found.entries = empty + found.entries  # folders without images
    for e in found.errors:
        print(f"dsrhn search: error: {e['query']}: {e['error']}", file=sys.stderr)
    if args.sheet:
        with open(args.sheet, "w", encoding="utf-8") as f:
            f.write(contact_sheet(found, servable))
    _print(found, args)
    return 1 if found.errors else 0


def _servable(args):
    from dsrhn.contracts import IndexMismatch
    from serving.search_cli import load_model

    try:
        return load_model(args.model, args.index)
    except IndexMismatch as e:
        sys.exit(f"dsrhn search: error: {e} (build the index with `dsrhn index --model {args.model} ...`)")
    except (FileNotFoundError, OSError) as e:
        sys.exit(f"dsrhn search: error: cannot load the model {args.model}: {e}")


def _print(found, args) -> None:
    from serving.search_cli import format_text

    if args.json:
        print(json.dumps(found.to_json(), indent=1))
        return
    text = format_text(found)
    if text:
        print(text)
    if args.sheet:
        print(f"sheet: {os.path.abspath(args.sheet)}")
