"""Real photos, held out: does super-resolution pay? The offline photo corpus (`dsrhn photos`: ~140 real
photos from Debian packages, split by photo into train and held-out test photos, plus GCompris's labelled
classes), the degradation grid's 15 cells, and every row with the ImageNet MobileNetV2 backbone.

(a) Instance retrieval on held-out photos (`dsrhn ingest photos --test-root`): the gallery holds each test
    photo whole and as `--gallery-views - 1` random views (crops of 30-100 % of it, flips, colour shifts),
    plus every training photo whole as a distractor; the queries are `--query-views` other views of each
    test photo, degraded per cell (x2/x4/x8 x clean bicubic, blur 1.5, noise 8, JPEG 40, all three:
    dsrhn.images.make_lr, not the training sampler); relevant = the same photo. Nothing of a test photo
    is trained on. Training draws fresh pairs of views of the training photos in every batch.
(b) Labelled retrieval on GCompris's categorisation images (5 classes): per-class split, every row trained
    on its train split, queries degraded per cell.

Rows (photo preset unless said): HashNet-LR, two-stage (the photo SR stage, frozen), DSRHN (from the photo
SR stage), FSR-GAN (HashNet on HR, then G), the student (issue 31: HashNet on the bicubic LR query, no SRNet,
distilled from two-stage's HashNet, which keeps encoding the gallery; --student-steps), HashNet-HR (HR queries:
the top of every cell's gap). The photo SR stage is an SRNet trained by MSE alone on views of the training
photos with the blind degradations. A variant's value `@ROW` is that row's trained HashNet: a row that starts
from it (`options.hashnet_weights=@hashnet-hr`) or distils it trains after it, keyed on its key.
Printed: mAP@K per cell and row; DSRHN - HashNet-LR with a 90% paired bootstrap interval over the queries;
gap closure only where the HR - LR gap is positive; PSNR-Y / SSIM-Y of the photo SR stage, DSRHN's SRNet
and bicubic per cell; HR-query retrieval and code health of every row (collapse check); training time.
--sr-only trains and scores the SR rows' photo SR stages alone (PSNR-Y / SSIM-Y per cell, no HashNet, minutes a
stage): for SR-stage recipes, before a retrieval run.

Rows are cached in <out>/results.json keyed on their settings and the code that computes them (the project's
packages and benchmarks/photo_tasks.py; benchmarks/cache.py): a row computed with other settings or code is
recomputed; a change to this script's tables alone keeps them.

    dsrhn photos                                      # once: fetch the corpus (about 1 min)
    python benchmarks/real_photos.py --steps 600      # about 70 min on 2 cores (the preset's 1,200 steps: longer)
    python benchmarks/real_photos.py --rows hashnet-lr,two-stage,hashnet-hr --seeds 3  # each row the mean of 3 seeds
    python benchmarks/real_photos.py --rows hashnet-lr,dsrhn --variant dsrhn-lam01:lam=0.1 --out runs/photos
    python benchmarks/real_photos.py --variant two-stage-clean:sr.degradation.noise_prob=0.2  # its own SR stage
    python benchmarks/real_photos.py --variant dsrhn-fromhr:options.hashnet_weights=@hashnet-hr  # HashNet from HR's
    python benchmarks/real_photos.py --sr-only --rows two-stage --variant two-stage-nobn:sr_batchnorm=false --seeds 2  # SR stages alone
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache import RowCache, code_digest, row_key  # noqa: E402
from degradation_grid import CONDITIONS, SCALES, STUDENT_STEPS_X  # noqa: E402
from photo_tasks import BENCH_FILES, score_row, score_sr_stage, train_row, train_sr_stage  # noqa: E402
from reproduce_table1 import Runner  # noqa: E402

ROWS = {  # key -> (row name, mode, preset overrides)
    "hashnet-lr": ("HashNet-LR", "hashnet-lr", {}),
    "two-stage": ("Two-stage (photo SR stage, frozen)", "two-stage", {}),
    "dsrhn": ("DSRHN (from the photo SR stage)", "dsrhn", {}),
    "fsr-gan": ("FSR-GAN (HashNet on HR, then G)", "fsr-gan", {}),
    "student": ("Student (LR query, no SRNet; two-stage's HashNet distilled)", "student",
                {"options.teacher_weights": "@two-stage"}),
    "hashnet-hr": ("HashNet-HR (HR queries)", "hashnet-hr", {}),
}
# A value "@ROW" is that row's trained HashNet (.weights.h5): a student's teacher, or a HashNet to start from
# (options.hashnet_weights=@hashnet-hr). The row named waits for ROW, and its key includes ROW's key.
SR_ROWS = ("two-stage", "dsrhn", "multi-level")
SR_NET_FIELDS = ("sr_blocks", "sr_filters", "sr_kernel", "sr_zero_tail", "sr_batchnorm", "sr_arch", "sr_weights")  # the SR stage's SRNet is the row's


def ref_of(value) -> str | None:
    """The row an override value names as `@ROW` (that row's trained HashNet), else None."""
    return value[1:] if isinstance(value, str) and value.startswith("@") else None


def seeded(rows: dict, seeds: int) -> tuple[dict, dict]:
    """With `seeds` > 1, every row (variants too) once per seed 0..seeds-1 as ROW@sN: HashNet's `seed` and, for
    an SR row, its SR stage's; an `@ROW` value then names ROW of the same seed. Returns (the rows to run,
    row -> its runs' keys); with seeds <= 1 the rows as they are (the preset's seed), each its own run."""
    if seeds <= 1:
        return rows, {key: [key] for key in rows}
    out, runs = {}, {}
    for key, (name, mode, overrides, sr_overrides) in rows.items():
        runs[key] = []
        for seed in range(seeds):
            run = f"{key}@s{seed}"
            same_seed = {k: f"@{ref_of(v)}@s{seed}" if ref_of(v) else v for k, v in overrides.items()}
            out[run] = (f"{name} seed {seed}", mode, {**same_seed, "seed": seed},
                        {**sr_overrides, "seed": seed} if mode in SR_ROWS else sr_overrides)
            runs[key].append(run)
    return out, runs


def over_seeds(results: dict, runs: dict) -> dict:
    """row -> {"runs": its seeds' scored results} for every row with all its runs scored (the tables' input)."""
    return {row: {"runs": [results[k] for k in keys]} for row, keys in runs.items() if all(k in results for k in keys)}


def grid_cells() -> dict:
    """cell -> LRConfig fields (seed 1), the degradation grid's 15 cells."""
    return {f"x{s}-{name}": {"scale": s, "kernel": "bicubic", "seed": 1, **fields}
            for s in SCALES for name, fields in CONDITIONS.items()}


def parse_set(items: list[str]) -> dict:
    from dsrhn.config import parse_overrides

    return parse_overrides(items)


def parse_variant(text: str) -> tuple[str, str, dict, dict]:
    """NAME:FIELD=V[,sr.FIELD=V...] -> (name, parent row, the row's overrides, its photo SR stage's overrides).
    `sr.`-prefixed fields change only the SR stage the row starts from (e.g. its training degradations)."""
    name, _, fields = text.partition(":")
    parent = next((r for r in sorted(ROWS, key=len, reverse=True) if name.startswith(r)), None)
    if parent is None:
        raise ValueError(f"--variant {text}: its name must start with a row name ({', '.join(ROWS)})")
    items = [f for f in fields.split(",") if f]
    sr_items = [f[len("sr."):] for f in items if f.startswith("sr.")]
    if sr_items and ROWS[parent][1] not in SR_ROWS:
        raise ValueError(f"--variant {text}: sr.* fields need a row that starts from the SR stage ({', '.join(SR_ROWS)})")
    return name, parent, parse_set([f for f in items if not f.startswith("sr.")]), parse_set(sr_items)


def run_tasks(tasks: list, set_name: str, set_results: dict, cache: RowCache, code: str) -> None:
    """Train, then score, each row's task (each in a fresh process); scored rows go into set_results and the cache."""
    trained: dict = {}
    stage_seconds: dict = {}

    def on_done(name, out):
        what, key, rk = name
        if what == "stage1":
            stage_seconds[rk] = out["seconds"]
            print(f"{set_name}: photo SR stage {rk} trained ({out['seconds']:.0f} s)", flush=True)
        elif what == "sr-score":  # --sr-only: the row's SR stage alone, keyed on the stage
            set_results[key] = cache.put(f"{set_name}/sr-stage/{key}", rk, {"sr_stage": rk, "score": out,
                                                                    "stage_seconds": stage_seconds.get(rk)})
            print(f"{set_name}/{key}: its SR stage scored", flush=True)
        elif what == "train":
            trained[key] = out
            print(f"{set_name}/{key}: trained in {out['train_seconds']:.0f} s", flush=True)
        else:
            row = trained.pop(key)
            if row["trained_with_code"] != code:  # the code changed while this run was going: not this key's row
                print(f"{set_name}/{key}: the code changed during the run ({code} at its start, "
                      f"{row['trained_with_code']} when this row trained): not cached", flush=True)
                set_results[key] = {**row, "score": out, "key": "(code changed)", "computed": "this run"}
                return
            set_results[key] = cache.put(f"{set_name}/{key}", rk, {**row, "score": out})
            print(f"{set_name}/{key}: scored ({out['score_seconds']:.0f} s)", flush=True)

    runner = Runner(1)
    try:
        runner.run(tasks, on_done)
    finally:
        runner.close()


# ---------------------------------------------------------------- tables

def diff_interval(a: np.ndarray, b: np.ndarray, level: float = 0.9, n_boot: int = 2000, seed: int = 0) -> tuple:
    """mean(b - a) and its paired bootstrap interval over the queries."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(d[idx].mean(1), [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)


def run_aps(results: dict, row: str, cell: str) -> list[np.ndarray]:
    """A row's per-query APs in `cell`, one array per seed run (HashNet-HR: its HR queries in every cell)."""
    out = []
    for run in results[row]["runs"]:
        r = run["score"]["cells"]
        out.append(np.load(r["HR"]["ap_file"] if "HR" in r else r[cell]["ap_file"]))
    return out


def cell_ap(results: dict, row: str, cell: str) -> np.ndarray:
    """A row's per-query AP in `cell`, averaged over its seeds (the same queries in every run)."""
    return np.mean(run_aps(results, row, cell), axis=0)


def print_grid(title: str, results: dict, rows: list[str], cells: list[str], topk: int) -> dict:
    """mAP per cell and row; each SR row's difference to HashNet-LR [90% CI] and its closure where the gap
    (HashNet-HR's HR queries - HashNet-LR) is positive. Returns per-row summaries."""
    from components.metrics import gap_closure_interval

    present = [r for r in rows if r in results]
    print(f"\n### {title}: mAP@{topk}\n")
    print("| cell | " + " | ".join(ROW_NAMES.get(r, r) for r in present) + " |")
    print("|---" * (len(present) + 1) + "|")
    for cell in cells:
        vals = [cell_ap(results, r, cell).mean() for r in present]
        best = max(vals)
        print(f"| {cell} | " + " | ".join(f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in vals) + " |")
    summaries = {}
    if "hashnet-lr" not in results:
        return summaries
    for row in present:
        if row in ("hashnet-lr", "hashnet-hr"):
            continue
        print(f"\n{ROW_NAMES.get(row, row)} vs HashNet-LR: difference [90% CI]; closure where HashNet-HR's gap > 0\n")
        n_seeds = len(results[row]["runs"])
        per_seed = n_seeds > 1 and len(results["hashnet-lr"]["runs"]) == n_seeds
        print("| cell | difference | " + ("per seed | " if per_seed else "") + "HR - LR gap [90% CI] | closure [90% CI] |")
        print("|---|---|---|---|" + ("---|" if per_seed else ""))
        above, x4_closures, seeds_above = [], [], []
        for cell in cells:
            lr_runs, m_runs = run_aps(results, "hashnet-lr", cell), run_aps(results, row, cell)  # loaded once
            lr, m = np.mean(lr_runs, axis=0), np.mean(m_runs, axis=0)  # the seed means, as cell_ap
            d, lo, hi = diff_interval(lr, m)
            above.append((cell, d > 0))
            seed_text = ""
            if per_seed:  # each seed's row against HashNet-LR of the same seed
                ds = [b.mean() - a.mean() for a, b in zip(lr_runs, m_runs)]
                seeds_above.append(sum(x > 0 for x in ds))
                seed_text = " / ".join(f"{x:+.3f}" for x in ds) + " | "
            text = "-"
            gap_text = "-"
            if "hashnet-hr" in results:
                c = gap_closure_interval(lr, m, cell_ap(results, "hashnet-hr", cell))
                gi = c["gap_interval"]
                gap_text = f"{c['gap']:+.4f} [{gi[0]:+.4f}, {gi[1]:+.4f}]"
                if c["closure"] is not None:
                    ci = c["closure_interval"]
                    text = f"{c['closure']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                    if cell.startswith("x4-"):
                        x4_closures.append(c["closure"])
                else:
                    text = "gap <= 0: undefined"
            print(f"| {cell} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] | {seed_text}{gap_text} | {text} |")
        x48 = [ok for c, ok in above if not c.startswith("x2-")]
        summaries[row] = {"seeds": n_seeds, "above_x4_x8": f"{sum(x48)}/{len(x48)}",
                          "above_all": f"{sum(ok for _, ok in above)}/{len(above)}",
                          "x4_mean_closure": float(np.mean(x4_closures)) if x4_closures else None,
                          "x4_cells_with_gap": len(x4_closures)}
        if per_seed:
            summaries[row]["seed_cells_above"] = f"{sum(seeds_above)}/{n_seeds * len(cells)}"
        print(f"| summary | above HashNet-LR in {summaries[row]['above_x4_x8']} x4/x8 cells, {summaries[row]['above_all']} "
              f"in all" + (f" (mean of {n_seeds} seeds; seed by seed {summaries[row]['seed_cells_above']} cells)"
                           if per_seed else "") + " | " + ("| " if per_seed else "")
              + f"| mean x4 closure over {len(x4_closures)} cells with a gap: "
              + (f"{summaries[row]['x4_mean_closure']:.2f}" if x4_closures else "-") + " |")
    return summaries


def print_sr_quality(results: dict, sr_rows: list[str], cells: list[str]) -> None:
    rows = [r for r in sr_rows if r in results]
    if not rows:
        return
    print("\n### Query images: PSNR-Y / SSIM-Y against the HR view (first queries of each cell; border = scale)\n")
    print("| cell | bicubic | " + " | ".join(ROW_NAMES.get(r, r) + " SRNet" for r in rows) + " |")
    print("|---" * (len(rows) + 2) + "|")
    def psnr(row: str, cell: str) -> dict:  # the mean over the row's seeds
        ps = [run["score"]["cells"][cell]["psnr"] for run in results[row]["runs"]]
        return {k: float(np.mean([p[k] for p in ps])) for k in ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")}

    for cell in cells:
        first = psnr(rows[0], cell)
        parts = [f"{first['bicubic_psnr_y']:.2f} / {first['bicubic_ssim_y']:.3f}"]
        for r in rows:
            p = psnr(r, cell)
            parts.append(f"{p['psnr_y']:.2f} / {p['ssim_y']:.3f} ({p['psnr_y'] - p['bicubic_psnr_y']:+.2f} dB)")
        print(f"| {cell} | " + " | ".join(parts) + " |")


def print_rows(results: dict, rows: list[str], hr_ref: float | None) -> None:
    print("\n### Rows: training, HR-query retrieval (collapse check), code health\n")
    print("| row | computed | train s | HR-query mAP | vs HashNet-HR | gallery codes distinct | constant bits |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r not in results:
            continue
        x = results[r]
        h = x["score"]["gallery_health"]
        hq = x["score"]["hr_query_map"]
        print(f"| {ROW_NAMES.get(r, r)} | {x['computed']} ({x['key']}) | {x['train_seconds']:.0f} | {hq:.4f} | "
              + (f"{hq - hr_ref:+.4f}" if hr_ref is not None else "-")
              + f" | {h['distinct']}/{h['images']} | {len(h['constant_bits'])} |")


ROW_NAMES = {k: v[0] for k, v in ROWS.items()}


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=None, help="the corpus (default <data>/photos, from `dsrhn photos`)")
    ap.add_argument("--out", default="runs/photos")
    ap.add_argument("--preset", default="photo")
    ap.add_argument("--steps", type=int, default=0, help="HashNet updates per row (default: the preset's)")
    ap.add_argument("--sr-steps", type=int, default=0, help="SRNet MSE updates of the photo SR stage (default: the preset's)")
    ap.add_argument("--student-steps", type=int, default=0,
                    help=f"the student's distillation updates (default: {STUDENT_STEPS_X}x the HashNet steps)")
    ap.add_argument("--query-views", type=int, default=10)
    ap.add_argument("--gallery-views", type=int, default=5)
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--variant", action="append", default=[],
                    help="an extra row NAME:FIELD=V[,FIELD=V...] on top of the row named by its prefix "
                         "(e.g. dsrhn-lam01:lam=0.1 starts from the dsrhn row)")
    ap.add_argument("--set", action="append", default=[], help="preset override for every row")
    ap.add_argument("--seeds", type=int, default=1,
                    help="run every row with seeds 0..N-1 (HashNet's and its SR stage's) and print the means; "
                         "default: one run at the preset's seed")
    ap.add_argument("--no-labelled", action="store_true", help="skip the labelled GCompris set (b)")
    ap.add_argument("--no-instance", action="store_true", help="skip the instance set (a)")
    ap.add_argument("--sr-only", action="store_true",
                    help="train only the SR rows' photo SR stages and print their PSNR-Y / SSIM-Y per cell against "
                         "bicubic (no HashNet: for SR-stage recipes, e.g. --rows two-stage --variant two-stage-big:sr_blocks=16; "
                         "a pretrained generator, --variant realsr:sr_arch=rrdb,sr_weights=realsr-df2k, is scored as it is)")
    ap.add_argument("--sr-queries", type=int, default=200, help="--sr-only: queries scored per cell (the first N)")
    args = ap.parse_args()

    from components.ingest import derive_query_set, run_ingest
    from dsrhn.config import LRConfig, data_dir, get_preset, with_overrides

    t_start = time.time()
    photos = args.photos or os.path.join(data_dir(), "photos")
    if not os.path.exists(os.path.join(photos, "manifest.json")):
        sys.exit(f"no photo corpus at {photos}: run `dsrhn photos` first (about 1 min)")
    os.makedirs(args.out, exist_ok=True)
    base = get_preset(args.preset, **parse_set(args.set))
    steps_total = args.steps or base.epochs * base.steps_per_epoch
    hr = base.hr_size
    cells = grid_cells()

    # the data sets, remade when their settings change
    sets = {}
    if not args.no_instance:
        sets["instance"] = {"kind": "photos", "root": os.path.join(photos, "train"), "test_root": os.path.join(photos, "test"),
                            "query_views": args.query_views, "gallery_views": args.gallery_views, "seed": 0}
    labelled = os.path.join(photos, "labelled", "gcompris-categorization")
    if not args.no_labelled and os.path.isdir(labelled):
        sets["labelled"] = {"kind": "directory", "root": labelled, "rule": "per-class", "query_per_class": 8,
                            "train_per_class": 16, "seed": 0}
    if not sets:
        sys.exit("nothing to run: --no-instance and --no-labelled (or no labelled set in the corpus)")
    data_code = code_digest(dirs=("components", "dsrhn"))
    for name, spec in sets.items():
        folder = os.path.join(args.out, name)
        made = os.path.join(folder, "made-from.json")
        want = {"spec": spec, "hr": hr, "cells": cells, "code": data_code}
        if not (os.path.exists(made) and json.load(open(made)) == json.loads(json.dumps(want))):
            shutil.rmtree(folder, ignore_errors=True)
            print(run_ingest(spec, os.path.join(folder, "examples"), hr, LRConfig(scale=4)).console(), flush=True)
            for cell, fields in cells.items():
                derive_query_set(os.path.join(folder, "examples"), os.path.join(folder, "grid", cell), LRConfig(**fields))
            with open(made, "w") as f:
                json.dump(want, f)
            print(f"{name}: {len(cells)} query cells ({time.time() - t_start:.0f} s)", flush=True)

    code = code_digest(BENCH_FILES)
    variants = {}
    for v in args.variant:
        try:
            name, parent, overrides, sr_overrides = parse_variant(v)
        except ValueError as e:
            sys.exit(str(e))
        variants[name] = (f"{ROWS[parent][0]} [{v.partition(':')[2]}]", ROWS[parent][1], ROWS[parent][2] | overrides,
                          sr_overrides)
        ROW_NAMES[name] = variants[name][0]
    asked = {k: (*ROWS[k], {}) for k in args.rows.split(",") if k} | variants
    if args.sr_only:
        asked = {k: v for k, v in asked.items() if v[1] in SR_ROWS}
        if not asked:
            sys.exit(f"--sr-only scores SR stages: name a row that starts from one ({', '.join(SR_ROWS)}) in --rows or --variant")
    rows, seed_runs = seeded(asked, args.seeds)
    ROW_NAMES.update({k: v[0] for k, v in rows.items() if k not in ROW_NAMES})
    refs = {key: names for key, (_, _, overrides, _) in rows.items()
            if (names := [r for r in map(ref_of, overrides.values()) if r])}  # row -> the rows it names
    referred = {ref for names in refs.values() for ref in names}
    for key, names in refs.items():
        for ref in names:
            if ref not in rows or ref in refs:
                sys.exit(f"row {key} starts from or distils @{ref}: add {ref} to --rows (a row that refers to no other row)")
    student_steps = args.student_steps or STUDENT_STEPS_X * steps_total
    cache = RowCache(os.path.join(args.out, "results.json"))
    results = {}
    for set_name in sets:
        folder = os.path.join(args.out, set_name)
        examples = os.path.join(folder, "examples")
        cell_dirs = {c: os.path.join(folder, "grid", c) for c in cells}
        epochs = base.epochs
        per_epoch = max(1, steps_total // epochs)
        sr_epochs = base.sr_warmup_epochs or epochs
        sr_per_epoch = max(1, (args.sr_steps or sr_epochs * base.steps_per_epoch) // sr_epochs)
        stage1_base = base.replace(mode="two-stage", sr_warmup_epochs=sr_epochs, steps_per_epoch=sr_per_epoch)
        set_results, trained_hashnet = {}, {}  # row -> its trained HashNet's weights file
        for wave in ([k for k in rows if k not in refs], [k for k in rows if k in refs]):  # @ROW rows after the rest
            tasks, stages = [], {}  # stages: SR stage key -> (its preset, weights, rows waiting on it)
            for key in wave:
                _, mode, overrides, sr_overrides = rows[key]
                row_steps = student_steps if mode == "student" else per_epoch * epochs
                overrides = {k: trained_hashnet[ref_of(v)] if ref_of(v) else v for k, v in overrides.items()}
                preset = with_overrides(base.replace(mode=mode, epochs=epochs, steps_per_epoch=max(1, row_steps // epochs)),
                                        overrides)
                if mode in SR_ROWS:
                    stage1_preset = with_overrides(stage1_base.replace(**{f: getattr(preset, f) for f in SR_NET_FIELDS}),
                                                   sr_overrides)
                    stage1_key = row_key({"preset": stage1_preset.to_dict(), "data": set_name}
                                         | ({"queries": args.sr_queries} if args.sr_queries != 200 else {}), code)
                    pretrained = bool(stage1_preset.sr_weights)  # a pretrained generator: no stage to train
                    stage1_weights = "" if pretrained else os.path.join(folder, f"sr-stage-{stage1_key}.srnet.weights.h5")
                    stages.setdefault(stage1_key, (stage1_preset, stage1_weights, []))
                    preset = preset if pretrained else preset.replace(srnet_weights=stage1_weights)
                if args.sr_only:
                    cached = cache.get(f"{set_name}/sr-stage/{key}", stage1_key)  # apart from the row's own entry
                    if cached:
                        set_results[key] = cached
                        continue
                    task = (1, ("sr-score", key, stage1_key), score_sr_stage,
                            (json.loads(json.dumps(stage1_preset.to_dict())), stage1_weights, cell_dirs, args.sr_queries), [])
                    (stages[stage1_key][2] if stage1_weights and not os.path.exists(stage1_weights) else tasks).append(task)
                    continue
                rk = row_key({"preset": preset.to_dict(), "data": set_name, "topk": args.topk}, code)
                trained_hashnet[key] = os.path.join(folder, f"{key}-{rk}.hashnet.weights.h5")
                cached = cache.get(f"{set_name}/{key}", rk)
                if cached and (key not in referred or os.path.exists(trained_hashnet[key])):
                    set_results[key] = cached
                    continue
                run_dir = os.path.join(folder, key)
                score = (1, ("score", key, rk), score_row, (os.path.join(run_dir, "model"), examples, cell_dirs,
                                                           args.topk, os.path.join(run_dir, "ap"), mode == "hashnet-hr"), [])
                task = (0, ("train", key, rk), train_row, (examples, json.loads(json.dumps(preset.to_dict())), run_dir,
                                                           trained_hashnet[key]), [score])
                waiting = mode in SR_ROWS and not preset.sr_weights and not os.path.exists(preset.srnet_weights)
                (stages[stage1_key][2] if waiting else tasks).append(task)
            for stage1_key, (stage1_preset, stage1_weights, after) in stages.items():
                if after:
                    tasks.append((0, ("stage1", "sr", stage1_key), train_sr_stage,
                                  (examples, json.loads(json.dumps(stage1_preset.to_dict())),
                                   os.path.join(folder, f"sr-stage-{stage1_key}"), stage1_weights), after))
            run_tasks(tasks, set_name, set_results, cache, code)
        results[set_name] = set_results

    minutes = (time.time() - t_start) / 60
    print(f"\n## Real photos ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, {minutes:.1f} min "
          f"this run; preset {args.preset}, HR {hr} px, {base.bits} bits, {steps_total} HashNet steps per row"
          + (f"; every row the mean of seeds 0..{args.seeds - 1}, intervals over the queries of the seed means)"
             if args.seeds > 1 else ")"))
    order = [r for r in list(ROWS) + list(variants) if r in asked]
    summary = {}
    for set_name, res in results.items():
        title = ("(a) instance retrieval on held-out photos" if set_name == "instance"
                 else "(b) labelled retrieval, GCompris categorisation (5 classes)")
        means = over_seeds(res, seed_runs)
        if args.sr_only:
            print(f"\n### {title}: the SR stages alone")
            print_sr_quality(means, order, list(cells))
            times = {r: [res[k].get("stage_seconds") for k in seed_runs[r] if k in res] for r in order}
            print("\nSR stage training seconds (this run; - where it was cached): " + "; ".join(
                f"{ROW_NAMES.get(r, r)} {' / '.join(f'{t:.0f}' if t else '-' for t in ts)}" for r, ts in times.items()))
            continue
        summary[set_name] = print_grid(title, means, order, list(cells), args.topk)
        if set_name == "instance":
            print_sr_quality(means, [r for r in order if asked[r][1] in SR_ROWS], list(cells))
        hr_runs = [res[k]["score"]["hr_query_map"] for k in seed_runs.get("hashnet-hr", []) if k in res]
        print_rows(res, [k for r in order for k in seed_runs[r]], float(np.mean(hr_runs)) if hr_runs else None)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
