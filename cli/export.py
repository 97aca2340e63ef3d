"""`dsrhn export`: re-export a trained run from its latest checkpoint (serving options such as XLA)."""

from __future__ import annotations

import argparse
import os

NAME, HELP = "export", "re-export a trained run from its latest checkpoint (e.g. --xla)"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--work-dir", required=True, help="the run's --work-dir (its checkpoints)")
    p.add_argument("--examples", required=True, help="the Examples it trained on (label names, sizes)")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--xla", action="store_true", help="XLA-compile the networks of the code signatures")
    p.add_argument(
        "--query-flip",
        dest="query_flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a query's code from it and its mirror image (test-time mirroring: about +0.01 mAP@100 on "
        "held-out photos for about 0.6x the served queries per second, docs/results.md); "
        "--no-query-flip turns it off; default: as trained. The gallery's codes do not change",
    )
    return p


def run(args) -> int:
    from trainer.task import export_checkpoint

    out = export_checkpoint(args.work_dir, args.examples, args.output, xla=args.xla, query_flip=args.query_flip)
    options = (["XLA"] if args.xla else []) + ([f"query_flip={args.query_flip}"] if args.query_flip is not None else [])
    print(
        f"model: {os.path.abspath(out)} (from the latest checkpoint in {args.work_dir}"
        f"{''.join(', ' + o for o in options)})"
    )
    print(
        f"next: dsrhn index --model {os.path.abspath(out)} --examples {args.examples} (an index is bound to its export)"
    )
    return 0
