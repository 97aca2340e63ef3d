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
SR stage), FSR-GAN (HashNet on HR, then G), the student (HashNet on the bicubic LR query, no SRNet,
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
packages and benchmarks/benchlib/tasks.py and grid.py; benchlib/cache.py): a row computed with other settings or
code is recomputed; a change to this script's tables alone keeps them.

    dsrhn photos                                      # once: fetch the corpus (about 1 min)
    python benchmarks/real_photos.py --steps 600      # about 70 min on 2 cores (the preset's 1,200 steps: longer)
    python benchmarks/real_photos.py --rows hashnet-lr,two-stage,hashnet-hr --seeds 3  # each row the mean of 3 seeds
    python benchmarks/real_photos.py --rows hashnet-lr,dsrhn --variant dsrhn-lam01:lam=0.1 --out runs/photos
    python benchmarks/real_photos.py --variant two-stage-clean:sr.degradation.noise_prob=0.2  # its own SR stage
    python benchmarks/real_photos.py --variant dsrhn-fromhr:options.hashnet_weights=@hashnet-hr  # HashNet from HR's
    python benchmarks/real_photos.py --sr-only --rows two-stage --variant two-stage-nobn:sr_batchnorm=false \\
        --seeds 2  # SR stages alone
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np

from benchlib.cache import ROW_CODE, RowCache, as_json, code_digest, row_key
from benchlib.grid import STUDENT_STEPS_X, ensure_grid, grid_cells
from benchlib.rows import Row
from benchlib.runner import Task, run_all
from benchlib.tasks import first_phase, score_row, score_sr_stage, train_row
from components.metrics import diff_interval
from dsrhn.registry import spec, sr_stage_methods

# A value "@ROW" is that row's trained HashNet (.weights.h5): a student's teacher, or a HashNet to start from
# (options.hashnet_weights=@hashnet-hr). The row named waits for ROW, and its key includes ROW's key.
ROWS = {
    r.key: r
    for r in (
        Row("hashnet-lr", "HashNet-LR", "hashnet-lr"),
        Row("two-stage", "Two-stage (photo SR stage, frozen)", "two-stage"),
        Row("dsrhn", "DSRHN (from the photo SR stage)", "dsrhn"),
        Row("fsr-gan", "FSR-GAN (HashNet on HR, then G)", "fsr-gan"),
        Row(
            "student",
            "Student (LR query, no SRNet; two-stage's HashNet distilled)",
            "student",
            overrides={"options.teacher_weights": "@two-stage"},
        ),
        Row("hashnet-hr", "HashNet-HR (HR queries)", "hashnet-hr"),
    )
}
ROW_NAMES = {k: r.name for k, r in ROWS.items()}  # the tables' names; main adds its variants' to a copy
SR_NET_FIELDS = (
    "sr_blocks",
    "sr_filters",
    "sr_kernel",
    "sr_zero_tail",
    "sr_batchnorm",
    "sr_arch",
    "sr_weights",
)  # the SR stage's SRNet is the row's


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
    for key, row in rows.items():
        runs[key] = []
        for seed in range(seeds):
            run = f"{key}@s{seed}"
            same_seed = {k: f"@{ref_of(v)}@s{seed}" if ref_of(v) else v for k, v in row.overrides.items()}
            sr = {**row.sr_overrides, "seed": seed} if spec(row.method).sr_stage else row.sr_overrides
            out[run] = dataclasses.replace(
                row, key=run, name=f"{row.name} seed {seed}", overrides={**same_seed, "seed": seed}, sr_overrides=sr
            )
            runs[key].append(run)
    return out, runs


def over_seeds(results: dict, runs: dict) -> dict:
    """row -> {"runs": its seeds' scored results} for every row with all its runs scored (the tables' input)."""
    return {row: {"runs": [results[k] for k in keys]} for row, keys in runs.items() if all(k in results for k in keys)}


def parse_set(items: list[str]) -> dict:
    from dsrhn.config import parse_overrides

    return parse_overrides(items)


def parse_variant(text: str) -> Row:
    """NAME:FIELD=V[,sr.FIELD=V...] -> a row on top of the row its name starts with; `sr.`-prefixed fields change
    only the SR stage the row starts from (e.g. its training degradations)."""
    name, _, fields = text.partition(":")
    parent = next((r for r in sorted(ROWS, key=len, reverse=True) if name.startswith(r)), None)
    if parent is None:
        raise ValueError(f"--variant {text}: its name must start with a row name ({', '.join(ROWS)})")
    items = [f for f in fields.split(",") if f]
    sr_items = [f[len("sr.") :] for f in items if f.startswith("sr.")]
    if sr_items and not spec(ROWS[parent].method).sr_stage:
        raise ValueError(
            f"--variant {text}: sr.* fields need a row that starts from the SR stage ({', '.join(sr_stage_methods())})"
        )
    row = ROWS[parent]
    return Row(
        name,
        f"{row.name} [{fields}]",
        row.method,
        overrides=row.overrides | parse_set([f for f in items if not f.startswith("sr.")]),
        sr_overrides=parse_set(sr_items),
    )


def run_tasks(tasks: list[Task], set_name: str, set_results: dict, cache: RowCache, code: str) -> None:
    """Train, then score, each row's task (each in a fresh process); scored rows go into set_results and the cache."""
    trained: dict = {}
    stage_seconds: dict = {}

    def on_done(name, out):
        what, key, rk = name
        if what == "stage1":
            stage_seconds[rk] = out["seconds"]
            print(f"{set_name}: photo SR stage {rk} trained ({out['seconds']:.0f} s)", flush=True)
        elif what == "sr-score":  # --sr-only: the row's SR stage alone, keyed on the stage
            set_results[key] = cache.put(
                f"{set_name}/sr-stage/{key}", rk, {"sr_stage": rk, "score": out, "stage_seconds": stage_seconds.get(rk)}
            )
            print(f"{set_name}/{key}: its SR stage scored", flush=True)
        elif what == "train":
            trained[key] = out
            print(f"{set_name}/{key}: trained in {out['train_seconds']:.0f} s", flush=True)
        else:
            row = trained.pop(key)
            if row["trained_with_code"] != code:  # the code changed while this run was going: not this key's row
                print(
                    f"{set_name}/{key}: the code changed during the run ({code} at its start, "
                    f"{row['trained_with_code']} when this row trained): not cached",
                    flush=True,
                )
                set_results[key] = {**row, "score": out, "key": "(code changed)", "computed": "this run"}
                return
            set_results[key] = cache.put(f"{set_name}/{key}", rk, {**row, "score": out})
            print(f"{set_name}/{key}: scored ({out['score_seconds']:.0f} s)", flush=True)

    run_all(tasks, on_done)


@dataclasses.dataclass
class Stage:
    """A photo SR stage some rows start from: its preset, its weights ("": a pretrained generator), its waiters."""

    preset: object
    weights: str
    after: list = dataclasses.field(default_factory=list)

    def task(self, examples: str, folder: str, key: str) -> Task:
        """This stage trained alone (SRNet by MSE), then the tasks waiting for it."""
        args = (examples, as_json(self.preset.to_dict()), os.path.join(folder, f"sr-stage-{key}"), self.weights)
        return Task(0, ("stage1", "sr", key), first_phase, args, self.after)


@dataclasses.dataclass
class SetRun:
    """One data set's rows: their presets, SR stages, cache keys and tasks, in waves (rows naming `@ROW` last)."""

    args: argparse.Namespace
    base: object  # the preset every row starts from
    code: str
    cache: RowCache
    name: str
    referred: set  # rows whose trained HashNet another row names
    results: dict = dataclasses.field(default_factory=dict)
    trained_hashnet: dict = dataclasses.field(default_factory=dict)  # row -> its trained HashNet's weights file

    def __post_init__(self) -> None:
        a, b = self.args, self.base
        self.folder = os.path.join(a.out, self.name)
        self.examples = os.path.join(self.folder, "examples")
        self.cell_dirs = {c: os.path.join(self.folder, "grid", c) for c in grid_cells()}
        self.per_epoch = max(1, a.steps_total // b.epochs)
        sr_epochs = b.sr_warmup_epochs or b.epochs
        sr_per_epoch = max(1, (a.sr_steps or sr_epochs * b.steps_per_epoch) // sr_epochs)
        self.stage1_base = b.replace(method="two-stage", sr_warmup_epochs=sr_epochs, steps_per_epoch=sr_per_epoch)

    def row_preset(self, row: Row):
        from dsrhn.config import with_overrides

        epochs = self.base.epochs
        row_steps = self.args.student_steps if row.method == "student" else self.per_epoch * epochs
        overrides = {k: self.trained_hashnet[ref_of(v)] if ref_of(v) else v for k, v in row.overrides.items()}
        return with_overrides(
            self.base.replace(method=row.method, epochs=epochs, steps_per_epoch=max(1, row_steps // epochs)), overrides
        )

    def stage(self, row: Row, preset, stages: dict) -> str:
        """The key of the SR stage an SR row starts from (its SRNet's fields, its sr. overrides), added to stages."""
        from dsrhn.config import with_overrides

        stage_preset = with_overrides(
            self.stage1_base.replace(**{f: getattr(preset, f) for f in SR_NET_FIELDS}), row.sr_overrides
        )
        queries = {"queries": self.args.sr_queries} if self.args.sr_queries != 200 else {}
        key = row_key({"preset": stage_preset.to_dict(), "data": self.name} | queries, self.code)
        pretrained = bool(stage_preset.sr_weights)  # a pretrained generator: no stage to train
        weights = "" if pretrained else os.path.join(self.folder, f"sr-stage-{key}.srnet.weights.h5")
        stages.setdefault(key, Stage(stage_preset, weights))
        return key

    def plan_sr_only(self, key: str, stage_key: str, stages: dict, tasks: list) -> None:
        """--sr-only: the row's SR stage scored alone (cached apart from the row's own entry)."""
        st = stages[stage_key]
        cached = self.cache.get(f"{self.name}/sr-stage/{key}", stage_key)
        if cached:
            self.results[key] = cached
            return
        args = (as_json(st.preset.to_dict()), st.weights, self.cell_dirs, self.args.sr_queries)
        task = Task(1, ("sr-score", key, stage_key), score_sr_stage, args)
        (st.after if st.weights and not os.path.exists(st.weights) else tasks).append(task)

    def plan_row(self, key: str, row: Row, stages: dict, tasks: list) -> None:
        """The row's training and scoring tasks unless it is cached, after its SR stage where that is not trained."""
        preset, stage_key = self.row_preset(row), None
        if spec(row.method).sr_stage:
            stage_key = self.stage(row, preset, stages)
            weights = stages[stage_key].weights
            preset = preset.replace(srnet_weights=weights) if weights else preset
        if self.args.sr_only:
            return self.plan_sr_only(key, stage_key, stages, tasks)
        a = self.args
        rk = row_key({"preset": preset.to_dict(), "data": self.name, "topk": a.topk}, self.code)
        self.trained_hashnet[key] = os.path.join(self.folder, f"{key}-{rk}.hashnet.weights.h5")
        cached = self.cache.get(f"{self.name}/{key}", rk)
        if cached and (key not in self.referred or os.path.exists(self.trained_hashnet[key])):
            self.results[key] = cached
            return
        run_dir = os.path.join(self.folder, key)
        model, ap_dir = os.path.join(run_dir, "model"), os.path.join(run_dir, "ap")
        hr_only = spec(row.method).query_input == "hr"  # HashNet-HR: scored on its HR queries
        score = Task(1, ("score", key, rk), score_row, (model, self.examples, self.cell_dirs, a.topk, ap_dir, hr_only))
        train = (self.examples, as_json(preset.to_dict()), run_dir, self.trained_hashnet[key])
        task = Task(0, ("train", key, rk), train_row, train, [score])
        waiting = stage_key and not preset.sr_weights and not os.path.exists(preset.srnet_weights)
        (stages[stage_key].after if waiting else tasks).append(task)

    def run(self, rows: dict, refs: dict) -> dict:
        for wave in ([k for k in rows if k not in refs], [k for k in rows if k in refs]):  # @ROW rows after the rest
            tasks, stages = [], {}
            for key in wave:
                self.plan_row(key, rows[key], stages, tasks)
            tasks += [st.task(self.examples, self.folder, k) for k, st in stages.items() if st.after]
            run_tasks(tasks, self.name, self.results, self.cache, self.code)
        return self.results


# ---------------------------------------------------------------- tables


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


def print_grid(
    title: str, results: dict, rows: list[str], cells: list[str], topk: int, names: dict | None = None
) -> dict:
    """mAP per cell and row; each SR row's difference to HashNet-LR [90% CI] and its closure where the gap
    (HashNet-HR's HR queries - HashNet-LR) is positive. Returns per-row summaries."""
    names = names or ROW_NAMES
    present = [r for r in rows if r in results]
    print(f"\n### {title}: mAP@{topk}\n")
    print("| cell | " + " | ".join(names.get(r, r) for r in present) + " |")
    print("|---" * (len(present) + 1) + "|")
    for cell in cells:
        vals = [cell_ap(results, r, cell).mean() for r in present]
        best = max(vals)
        print(f"| {cell} | " + " | ".join(f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in vals) + " |")
    if "hashnet-lr" not in results:
        return {}
    return {row: print_vs_lr(results, row, cells, names) for row in present if row not in ("hashnet-lr", "hashnet-hr")}


def closure_cell(results: dict, lr: np.ndarray, m: np.ndarray, cell: str) -> tuple[str, str, float | None]:
    """(the HR - LR gap [CI], the closure [CI], the closure) of one cell; '-' without a HashNet-HR row."""
    from components.metrics import gap_closure_interval

    if "hashnet-hr" not in results:
        return "-", "-", None
    c = gap_closure_interval(lr, m, cell_ap(results, "hashnet-hr", cell))
    gi = c["gap_interval"]
    gap_text = f"{c['gap']:+.4f} [{gi[0]:+.4f}, {gi[1]:+.4f}]"
    if c["closure"] is None:
        return gap_text, "gap <= 0: undefined", None
    ci = c["closure_interval"]
    return gap_text, f"{c['closure']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""), c["closure"]


def print_vs_lr(results: dict, row: str, cells: list[str], names: dict) -> dict:
    """One row against HashNet-LR per cell (the seed means; per seed too when both have the same seeds)."""
    print(f"\n{names.get(row, row)} vs HashNet-LR: difference [90% CI]; closure where HashNet-HR's gap > 0\n")
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
        gap_text, text, closure = closure_cell(results, lr, m, cell)
        if closure is not None and cell.startswith("x4-"):
            x4_closures.append(closure)
        print(f"| {cell} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] | {seed_text}{gap_text} | {text} |")
    x48 = [ok for c, ok in above if not c.startswith("x2-")]
    s = {
        "seeds": n_seeds,
        "above_x4_x8": f"{sum(x48)}/{len(x48)}",
        "above_all": f"{sum(ok for _, ok in above)}/{len(above)}",
        "x4_mean_closure": float(np.mean(x4_closures)) if x4_closures else None,
        "x4_cells_with_gap": len(x4_closures),
    }
    if per_seed:
        s["seed_cells_above"] = f"{sum(seeds_above)}/{n_seeds * len(cells)}"
    print(
        f"| summary | above HashNet-LR in {s['above_x4_x8']} x4/x8 cells, {s['above_all']} "
        f"in all"
        + (f" (mean of {n_seeds} seeds; seed by seed {s['seed_cells_above']} cells)" if per_seed else "")
        + " | "
        + ("| " if per_seed else "")
        + f"| mean x4 closure over {len(x4_closures)} cells with a gap: "
        + (f"{s['x4_mean_closure']:.2f}" if x4_closures else "-")
        + " |"
    )
    return s


def print_sr_quality(results: dict, sr_rows: list[str], cells: list[str], names: dict | None = None) -> None:
    names = names or ROW_NAMES
    rows = [r for r in sr_rows if r in results]
    if not rows:
        return
    print("\n### Query images: PSNR-Y / SSIM-Y against the HR view (first queries of each cell; border = scale)\n")
    print("| cell | bicubic | " + " | ".join(names.get(r, r) + " SRNet" for r in rows) + " |")
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


def print_rows(results: dict, rows: list[str], hr_ref: float | None, names: dict | None = None) -> None:
    names = names or ROW_NAMES
    print("\n### Rows: training, HR-query retrieval (collapse check), code health\n")
    print("| row | computed | train s | HR-query mAP | vs HashNet-HR | gallery codes distinct | constant bits |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r not in results:
            continue
        x = results[r]
        h = x["score"]["gallery_health"]
        hq = x["score"]["hr_query_map"]
        print(
            f"| {names.get(r, r)} | {x['computed']} ({x['key']}) | {x['train_seconds']:.0f} | {hq:.4f} | "
            + (f"{hq - hr_ref:+.4f}" if hr_ref is not None else "-")
            + f" | {h['distinct']}/{h['images']} | {len(h['constant_bits'])} |"
        )


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=None, help="the corpus (default <data>/photos, from `dsrhn photos`)")
    ap.add_argument("--out", default="runs/photos")
    ap.add_argument("--preset", default="photo")
    ap.add_argument("--steps", type=int, default=0, help="HashNet updates per row (default: the preset's)")
    ap.add_argument(
        "--sr-steps", type=int, default=0, help="SRNet MSE updates of the photo SR stage (default: the preset's)"
    )
    ap.add_argument(
        "--student-steps",
        type=int,
        default=0,
        help=f"the student's distillation updates (default: {STUDENT_STEPS_X}x the HashNet steps)",
    )
    ap.add_argument("--query-views", type=int, default=10)
    ap.add_argument("--gallery-views", type=int, default=5)
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="an extra row NAME:FIELD=V[,FIELD=V...] on top of the row named by its prefix "
        "(e.g. dsrhn-lam01:lam=0.1 starts from the dsrhn row)",
    )
    ap.add_argument("--set", action="append", default=[], help="preset override for every row")
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run every row with seeds 0..N-1 (HashNet's and its SR stage's) and print the means; "
        "default: one run at the preset's seed",
    )
    ap.add_argument("--no-labelled", action="store_true", help="skip the labelled GCompris set (b)")
    ap.add_argument("--no-instance", action="store_true", help="skip the instance set (a)")
    ap.add_argument(
        "--sr-only",
        action="store_true",
        help="train only the SR rows' photo SR stages and print their PSNR-Y / SSIM-Y per cell against "
        "bicubic (no HashNet: for SR-stage recipes, e.g. --rows two-stage --variant "
        "two-stage-big:sr_blocks=16; a pretrained generator, --variant "
        "realsr:sr_arch=rrdb,sr_weights=realsr-df2k, is scored as it is)",
    )
    ap.add_argument("--sr-queries", type=int, default=200, help="--sr-only: queries scored per cell (the first N)")
    return ap.parse_args()


def data_sets(args, photos: str) -> dict:
    """set name -> its ingest source: (a) the instance set, (b) the labelled set where the corpus has it."""
    sets = {}
    if not args.no_instance:
        sets["instance"] = {
            "kind": "photos",
            "root": os.path.join(photos, "train"),
            "test_root": os.path.join(photos, "test"),
            "query_views": args.query_views,
            "gallery_views": args.gallery_views,
            "seed": 0,
        }
    labelled = os.path.join(photos, "labelled", "gcompris-categorization")
    if not args.no_labelled and os.path.isdir(labelled):
        sets["labelled"] = {
            "kind": "directory",
            "root": labelled,
            "rule": "per-class",
            "query_per_class": 8,
            "train_per_class": 16,
            "seed": 0,
        }
    if not sets:
        sys.exit("nothing to run: --no-instance and --no-labelled (or no labelled set in the corpus)")
    return sets


def make_data(args, sets: dict, hr: int, t_start: float) -> None:
    """Each set's Examples and query cells, remade when their settings or the data code change."""
    from dsrhn.config import LRConfig

    cells = grid_cells()
    data_code = code_digest(dirs=("components", "dsrhn"))
    for name, source in sets.items():
        folder = os.path.join(args.out, name)
        want = {"spec": source, "hr": hr, "cells": cells, "code": data_code}
        if ensure_grid(
            os.path.join(folder, "examples"),
            os.path.join(folder, "made-from.json"),
            want,
            source,
            hr,
            LRConfig(scale=4),
            cells,
            clear=folder,
        ):
            print(f"{name}: {len(cells)} query cells ({time.time() - t_start:.0f} s)", flush=True)


def plan_rows(args) -> tuple[dict, dict, dict]:
    """(the rows asked for, their runs' rows, the tables' names); exits on a bad --variant or @ROW."""
    try:
        variants = {r.key: r for r in map(parse_variant, args.variant)}
    except ValueError as e:
        sys.exit(str(e))
    asked = {k: ROWS[k] for k in args.rows.split(",") if k} | variants
    if args.sr_only:
        asked = {k: r for k, r in asked.items() if spec(r.method).sr_stage}
        if not asked:
            sys.exit(
                f"--sr-only scores SR stages: name a row that starts from one ({', '.join(sr_stage_methods())}) "
                "in --rows or --variant"
            )
    rows, args.seed_runs = seeded(asked, args.seeds)
    names = ROW_NAMES | {k: r.name for k, r in variants.items()}
    return asked, rows, names | {k: r.name for k, r in rows.items() if k not in names}


def references(rows: dict) -> dict:
    """row -> the rows it names as `@ROW`; exits when one is not run or itself names another."""
    refs = {key: names for key, row in rows.items() if (names := [r for r in map(ref_of, row.overrides.values()) if r])}
    for key, names in refs.items():
        for ref in names:
            if ref not in rows or ref in refs:
                sys.exit(
                    f"row {key} starts from or distils @{ref}: add {ref} to --rows (a row that refers to no other row)"
                )
    return refs


def print_set(args, set_name: str, res: dict, asked: dict, names: dict) -> dict | None:
    """One set's tables; its summary (None with --sr-only)."""
    cells, runs = list(grid_cells()), args.seed_runs
    title = (
        "(a) instance retrieval on held-out photos"
        if set_name == "instance"
        else "(b) labelled retrieval, GCompris categorisation (5 classes)"
    )
    means = over_seeds(res, runs)
    order = [r for r in ROWS if r in asked] + [r for r in asked if r not in ROWS]  # the rows, then the variants
    if args.sr_only:
        print(f"\n### {title}: the SR stages alone")
        print_sr_quality(means, order, cells, names)
        times = {r: [res[k].get("stage_seconds") for k in runs[r] if k in res] for r in order}
        print(
            "\nSR stage training seconds (this run; - where it was cached): "
            + "; ".join(
                f"{names.get(r, r)} {' / '.join(f'{t:.0f}' if t else '-' for t in ts)}" for r, ts in times.items()
            )
        )
        return None
    summary = print_grid(title, means, order, cells, args.topk, names)
    if set_name == "instance":
        print_sr_quality(means, [r for r in order if spec(asked[r].method).sr_stage], cells, names)
    hr_runs = [res[k]["score"]["hr_query_map"] for k in runs.get("hashnet-hr", []) if k in res]
    print_rows(res, [k for r in order for k in runs[r]], float(np.mean(hr_runs)) if hr_runs else None, names)
    return summary


def main() -> None:
    from dsrhn.config import data_dir, get_preset

    args = parse_args()
    t_start = time.time()
    photos = args.photos or os.path.join(data_dir(), "photos")
    if not os.path.exists(os.path.join(photos, "manifest.json")):
        sys.exit(f"no photo corpus at {photos}: run `dsrhn photos` first (about 1 min)")
    os.makedirs(args.out, exist_ok=True)
    base = get_preset(args.preset, **parse_set(args.set))
    args.steps_total = args.steps or base.epochs * base.steps_per_epoch
    args.student_steps = args.student_steps or STUDENT_STEPS_X * args.steps_total
    sets = data_sets(args, photos)
    make_data(args, sets, base.hr_size, t_start)
    asked, rows, names = plan_rows(args)
    refs = references(rows)
    code, cache = code_digest(ROW_CODE), RowCache(os.path.join(args.out, "results.json"))
    referred = {ref for r in refs.values() for ref in r}
    results = {s: SetRun(args, base, code, cache, s, referred).run(rows, refs) for s in sets}
    minutes = (time.time() - t_start) / 60
    print(
        f"\n## Real photos ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, {minutes:.1f} min "
        f"this run; preset {args.preset}, HR {base.hr_size} px, {base.bits} bits, {args.steps_total} HashNet steps "
        "per row"
        + (
            f"; every row the mean of seeds 0..{args.seeds - 1}, intervals over the queries of the seed means)"
            if args.seeds > 1
            else ")"
        )
    )
    summary = {s: print_set(args, s, res, asked, names) for s, res in results.items()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({s: v for s, v in summary.items() if v is not None}, f, indent=1)


if __name__ == "__main__":
    main()
