"""Query-time settings on trained rows: the same trained networks, other ways to turn a query into a code.

Reads the rows that `benchmarks/real_photos.py --out OUT` trained (OUT/instance/ROW/work/checkpoints, its
examples and grid cells) and re-encodes every cell's queries through the product's own export path
(trainer.export.CodeFunctions) under each setting that applies to the row, with no training:

  as trained        the row's own query path
  mirror            preset.query_flip: Eq. 1 on the sum of the query's and its mirror image's logits
  sr / fused        SR rows (two-stage, dsrhn): options.query_fuse off / on (the SR and the bicubic query's
                    logits summed)
  sr + mirror, fused + mirror
  bicubic           SR rows: the bicubic query through the row's own HashNet (no SRNet)

The gallery's codes do not depend on these settings (encoded once per row); two settings that are the same for a
row (for a row trained with query_fuse: "as trained" and "fused") are encoded once. Printed per setting, the mean of the
seeds: mAP@K per cell, the difference to the named baseline (HashNet-LR as trained, same seeds) with a 90% paired
bootstrap interval over the queries, the cells above it, and the query encoding time as a ratio to the baseline's
in the same run. Results: OUT/query_views.json.

    python benchmarks/real_photos.py --out runs/photos-3v --rows hashnet-lr --seeds 3 \
        --variant "two-stage-3v:options.hash_views=query+bicubic,options.query_fuse=true"
    python benchmarks/query_views.py --out runs/photos-3v      # about 2 min per trained row on 2 cores
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import sys
import time

import numpy as np

from benchlib.grid import grid_cells
from components.metrics import diff_interval
from dsrhn.registry import spec

BASELINE = ("hashnet-lr", "as trained")
CELL_ORDER = list(grid_cells())


def settings_for(method: str) -> dict[str, tuple[str, dict]]:
    """The query-time settings that apply to a row of `method`: name -> (method to build, preset overrides); the SR
    view settings for the methods whose HashNet sees SRNet's output (options.query_fuse applies)."""
    out = {"as trained": (method, {}), "mirror": (method, {"query_flip": True})}
    if spec(method).sr_views:
        out |= {
            "sr": (method, {"options.query_fuse": False}),
            "sr + mirror": (method, {"options.query_fuse": False, "query_flip": True}),
            "fused": (method, {"options.query_fuse": True}),
            "fused + mirror": (method, {"options.query_fuse": True, "query_flip": True}),
            "bicubic": ("hashnet-lr", {}),
        }
    return out


def setting_preset(preset, method: str, overrides: dict):
    """The row's preset under a setting; building another method (bicubic: hashnet-lr) drops the SR rows' options."""
    from dsrhn.config import with_overrides

    if method != preset.method:
        preset = preset.replace(method=method, options={}, srnet_weights="")
    return with_overrides(preset, overrides)


def same_setting(a, b) -> bool:
    """Two presets that encode queries alike: the same fields and the same typed method options."""
    from dsrhn.registry import get_method

    return (
        a.method == b.method
        and a.replace(options={}) == b.replace(options={})
        and get_method(a.method).parse_options(a.options) == get_method(b.method).parse_options(b.options)
    )


def load_row(run_dir: str):
    """(preset, info, nets) of a trained row: its export metadata's preset, its last checkpoint's weights."""
    from dsrhn.config import preset_from_dict
    from dsrhn.contracts import read_metadata
    from dsrhn.records import DatasetInfo
    from dsrhn.registry import get_method
    from trainer.train import latest_checkpoint

    meta = read_metadata(os.path.join(run_dir, "model"))
    preset = preset_from_dict(meta["preset"])
    info = DatasetInfo.read(os.path.join(os.path.dirname(run_dir), "examples"))
    nets = get_method(preset.method)(preset, info).networks()
    last = latest_checkpoint(os.path.join(run_dir, "work", "checkpoints"))
    for name, net in nets.items():
        path = os.path.join(last, f"{name}.weights.h5")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{run_dir}: its last checkpoint has no {name}.weights.h5 ({last})")
        net.load_weights(path)
    return preset, info, nets


def encode(split_uri: str, split: str, field: str, fn) -> tuple[np.ndarray, np.ndarray, float]:
    """(packed codes, labels, seconds in `fn`) of one split's `field` images (components.evaluate.encode_split)."""
    import tensorflow as tf

    from components.evaluate import encode_split

    seconds = [0.0]

    def timed(images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        codes = fn(tf.constant(images))["codes"].numpy()
        seconds[0] += time.perf_counter() - t0
        return codes

    enc = encode_split(split_uri, split, field, timed)
    return enc.codes, enc.labels, seconds[0]


def score_run(run_dir: str, cells: dict, topk: int, ap_dir: str) -> dict:
    """Every applicable setting's per-query APs per cell (saved under ap_dir) and its query encoding seconds."""
    from components.metrics import average_precisions
    from dsrhn.registry import get_method
    from trainer.export import CodeFunctions

    preset, info, nets = load_row(run_dir)
    examples = os.path.join(os.path.dirname(run_dir), "examples")
    base = CodeFunctions(get_method(preset.method)(preset, info), nets)
    g_codes, g_labels, _ = encode(examples, "gallery", "hr", base.serve_hr)
    out, done = {}, {}
    for name, (method, overrides) in settings_for(preset.method).items():
        setting = setting_preset(preset, method, overrides)
        twin = next((other for other, p in done.items() if same_setting(setting, p)), None)
        if twin:  # the same setting as one encoded already (e.g. "fused" for a row trained fused)
            out[name] = out[twin]
            continue
        done[name] = setting
        fns = CodeFunctions(get_method(method)(setting, info), nets)
        row = {"cells": {}, "query_seconds": 0.0}
        for cell, uri in cells.items():
            q_codes, q_labels, seconds = encode(uri, "query", "lr", fns.query_codes)
            ap, _ = average_precisions(q_codes, g_codes, q_labels, g_labels, topk)
            path = os.path.join(ap_dir, f"{os.path.basename(run_dir)}--{re.sub(r'[^a-z0-9]+', '-', name)}--{cell}.npy")
            np.save(path, ap)
            row["cells"][cell] = {"map": float(ap.mean()), "ap_file": path}
            row["query_seconds"] += seconds
        out[name] = row
        print(
            f"{os.path.basename(run_dir)} / {name}: x4-bicubic {row['cells'].get('x4-bicubic', {}).get('map', 0):.4f}, "
            f"query encoding {row['query_seconds']:.1f} s",
            flush=True,
        )
    return out


def seed_groups(names: list[str]) -> dict[str, list[str]]:
    """ROW@sN run names -> {ROW: [runs]} (a run without @sN is its own row)."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(name.split("@s")[0], []).append(name)
    return groups


def summarise(scores: dict, groups: dict, cells: list[str]) -> dict:
    """Seed means per (row, setting): mAP per cell, difference to the baseline with its interval, time ratio."""
    base_row, base_setting = BASELINE
    if base_row not in groups:
        raise ValueError(f"the baseline row {base_row!r} was not trained in this out dir (rows: {sorted(groups)})")
    seeds = [r.partition("@")[2] for r in groups[base_row]]

    def mean_ap(row: str, setting: str, cell: str) -> np.ndarray:
        runs = [f"{row}@{s}" if s else row for s in seeds]
        return np.mean([np.load(scores[r][setting]["cells"][cell]["ap_file"]) for r in runs], axis=0)

    base_time = sum(scores[r][base_setting]["query_seconds"] for r in groups[base_row])
    base_aps = {cell: mean_ap(base_row, base_setting, cell) for cell in cells}
    table = {}
    for row, runs in groups.items():
        if [r.partition("@")[2] for r in runs] != seeds:
            print(f"{row}: its seeds {runs} differ from the baseline's ({groups[base_row]}): left out")
            continue
        for setting in scores[runs[0]]:
            entry = {
                "cells": {},
                "query_time_ratio": sum(scores[r][setting]["query_seconds"] for r in runs) / base_time,
            }
            for cell in cells:
                a, b = base_aps[cell], mean_ap(row, setting, cell)
                d, lo, hi = diff_interval(a, b)
                entry["cells"][cell] = {"map": float(b.mean()), "diff": d, "interval": [lo, hi]}
            diffs = [entry["cells"][c]["diff"] for c in cells]
            entry["above"] = f"{sum(x > 0 for x in diffs)}/{len(diffs)}"
            entry["above_x4_x8"] = (
                f"{sum(entry['cells'][c]['diff'] > 0 for c in cells if not c.startswith('x2'))}/"
                f"{sum(not c.startswith('x2') for c in cells)}"
            )
            entry["mean_diff"] = float(np.mean(diffs))
            table[f"{row} / {setting}"] = entry
    return table


def print_table(table: dict, cells: list[str]) -> None:
    x4 = [c for c in cells if c.startswith("x4")]
    print(f"\nmAP@K, seed means; difference to {' / '.join(BASELINE)} [90% paired interval]")
    print(
        "| row / query setting | " + " | ".join(x4) + " | x8 differences | above (x4/x8) | mean difference | "
        "query time |"
    )
    print("|---" * (len(x4) + 5) + "|")
    for name, e in table.items():
        c = e["cells"]
        x4_text = [
            f"{c[k]['map']:.4f} ({c[k]['diff']:+.3f} [{c[k]['interval'][0]:+.3f}, {c[k]['interval'][1]:+.3f}])"
            for k in x4
        ]
        x8 = " / ".join(f"{c[k]['diff']:+.3f}" for k in cells if k.startswith("x8"))
        print(
            f"| {name} | " + " | ".join(x4_text) + f" | {x8} | {e['above']} ({e['above_x4_x8']}) | "
            f"{e['mean_diff']:+.4f} | {e['query_time_ratio']:.2f}x |"
        )
    print("\nall cells, mAP@K:")
    print("| row / query setting | " + " | ".join(cells) + " |")
    for name, e in table.items():
        print(f"| {name} | " + " | ".join(f"{e['cells'][k]['map']:.4f}" for k in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a benchmarks/real_photos.py --out dir with trained instance rows")
    ap.add_argument("--rows", default="", help="comma-separated run names (default: every trained row but HashNet-HR)")
    ap.add_argument("--topk", type=int, default=100)
    args = ap.parse_args()
    root = os.path.join(args.out, "instance")
    runs = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(root, "*", "model")))
    runs = [r for r in runs if not r.startswith("hashnet-hr")] if not args.rows else args.rows.split(",")
    if not runs:
        sys.exit(f"query_views: no trained rows under {root}: run benchmarks/real_photos.py --out {args.out} first")
    cells = {c: os.path.join(root, "grid", c) for c in CELL_ORDER if os.path.isdir(os.path.join(root, "grid", c))}
    ap_dir = os.path.join(args.out, "query-views")
    os.makedirs(ap_dir, exist_ok=True)
    t0 = time.time()
    scores = {run: score_run(os.path.join(root, run), cells, args.topk, ap_dir) for run in runs}
    table = summarise(scores, seed_groups(runs), list(cells))
    print_table(table, list(cells))
    minutes = (time.time() - t0) / 60
    print(
        f"\n{len(runs)} trained rows, {minutes:.1f} min on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    with open(os.path.join(args.out, "query_views.json.tmp"), "w") as f:
        json.dump(
            {"table": table, "runs": runs, "minutes": minutes, "computed": time.strftime("%Y-%m-%d %H:%M")}, f, indent=1
        )
    os.replace(os.path.join(args.out, "query_views.json.tmp"), os.path.join(args.out, "query_views.json"))


if __name__ == "__main__":
    main()
