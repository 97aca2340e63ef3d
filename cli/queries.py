"""`dsrhn queries`: Examples -> a stored query set with another LR degradation (evaluation grids)."""

from __future__ import annotations

import argparse
import os

from cli.common import add_lr_args, lr_config

NAME, HELP = "queries", "Examples -> its query split with LR made by another degradation"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--examples", required=True, help="Examples directory written by `dsrhn ingest`")
    p.add_argument("--output", "-o", required=True, help="query set directory to write (Split-query)")
    add_lr_args(p)
    return p


def run(args) -> int:
    from components.ingest import derive_query_set

    info = derive_query_set(args.examples, args.output, lr_config(args))
    print(f"queries: {info.counts['query']} at {info.lr_size} px ({info.lr}) -> {os.path.abspath(args.output)}")
    return 0
