"""`dsrhn evaluate`: SavedModel + Examples -> report.json / report.md / plots."""

from __future__ import annotations

import argparse
import os

NAME, HELP = "evaluate", "mAP@K, PR, precision@n, PSNR/SSIM report"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--model", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--queries", help="a query set from `dsrhn queries` (default: the Examples' own queries)")
    p.add_argument("--topk", type=int, default=5000)
    p.add_argument("--no-plots", action="store_true")
    return p


def run(args) -> int:
    from components.evaluate import evaluate_model

    report = evaluate_model(
        args.model, args.examples, args.output, topk=args.topk, plots=not args.no_plots, queries_uri=args.queries
    )
    print(open(os.path.join(args.output, "report.md")).read())
    print(f"LR-query mAP@{args.topk}: {report['map']:.4f}   report: {os.path.abspath(args.output)}")
    return 0
