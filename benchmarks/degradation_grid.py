"""Score models on a grid of stored low-resolution query sets: scale {x2, x4, x8} x {bicubic clean,
blur sigma 1.5, noise sigma 8, JPEG q 40, blur 1.5 + noise 5 + JPEG 60}, plus the specialist's own
degradation (Gaussian blur sigma 2 HR px, x4 bicubic: the Table 1 benchmark's LR).

Trains once (cpu preset, Fashion-MNIST mosaics, 48 bits, every run the same 720 HashNet steps):
  blind rows       HashNet-LR, two-stage (blind SRNet by MSE, frozen), DSRHN (from that SRNet),
                   all on the random degradations of the cpu preset (dsrhn/degrade.py)
  FSR rows         one HashNet trained on HR (720 steps), then per row a feature generator G (720
                   steps on blind LR): FSR-GAN (critic, focal r = 2), r = 1 (Eq. 8), r = 0 (critic alone),
                   CNN-Baseline (no critic, MSE); and FSR-GAN on a HashNet trained on HR + LR
  multi-level      DSRHN + local codes (from the same SRNet); scored here on its global codes alone
  student          a HashNet on bicubic LR distilled from the DSRHN row (its last checkpoint), the gallery
                   encoded by the DSRHN row's HashNet: the cheaper query encoder (no SRNet at query time);
                   --student-steps sets its distillation updates (default 6x every row's, docs/results.md)
  HashNet-HR       HR queries: the upper end of every cell's gap
  specialist       DSRHN trained on the stored x4 blur-2 LR partners (degradation kind fixed)
and prints one table per model: mAP@K per cell, gap closure (model - HashNet-LR) / (HashNet-HR -
HashNet-LR) against the blind HashNet-LR with a 90% paired bootstrap interval over the queries, PSNR-Y
of the image HashNet sees (first 200 queries), and a summary row (worst cell, mean).

The grid's LR is made by dsrhn.images.make_lr (Pillow), not by the training sampler
(TensorFlow ops), and none of its settings were used to choose the sampler's ranges.

    python benchmarks/degradation_grid.py                       # defaults (about 31 min on 2 cores)
    python benchmarks/degradation_grid.py --steps 24 --n-train 512 --n-query 200 --n-gallery 500 --out runs/grid-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import time

from benchlib.cache import ROW_CODE, RowCache, as_json, code_digest, row_key
from benchlib.grid import STUDENT_STEPS_X, cell_dirs, ensure_grid, grid_cells, mosaic_source
from benchlib.rows import Row
from benchlib.runner import Task, run_all
from benchlib.tasks import first_phase, score_model, stage1_preset, train_model
from dsrhn.registry import spec

SPECIALIST_CELL = "x4-specialist(blur2)"
# FSR rows with the same options.hash_on share one HashNet (their phase `hash`, trained once), then each trains
# its own G
MODELS = [
    Row("hashnet-lr", "HashNet-LR (blind)", "hashnet-lr"),
    Row("two-stage", "Two-stage (blind SRNet)", "two-stage"),
    Row("dsrhn", "DSRHN (blind)", "dsrhn"),
    Row("specialist", "DSRHN specialist (x4 blur 2)", "dsrhn", kind="fixed"),
    Row("fsr-gan", "FSR-GAN (critic, focal r=2)", "fsr-gan"),
    Row("fsr-r1", "FSR-GAN r=1 (Eq. 8)", "fsr-gan", options={"focal_r": 1.0}),
    Row("fsr-r0", "FSR-GAN r=0 (critic alone)", "fsr-gan", options={"focal_r": 0.0}),
    Row("fsr-cnn", "FSR CNN-Baseline (no critic, MSE)", "fsr-gan", options={"critic": False}),
    Row("fsr-gan-hrlr", "FSR-GAN on a HashNet-LR", "fsr-gan", options={"hash_on": "hr+lr"}),
    Row("multi-level", "Multi-level (blind; global codes)", "multi-level"),
    Row("student", "Student (HashNet on LR, distilled from DSRHN)", "student"),
    Row("hashnet-hr", "HashNet-HR (HR queries)", "hashnet-hr"),
]


def cells() -> dict:
    """cell name -> LRConfig fields: the 15 grid cells and the specialist's (the Examples' own stored query LR)."""
    return {**grid_cells(), SPECIALIST_CELL: None}


@dataclasses.dataclass
class Paths:
    """Where a run's shared weights are, each file named by its settings and the code (benchmarks/benchlib/cache.py):
    weights made with other settings or another code version are not found, so they are trained again."""

    args: argparse.Namespace
    code: str
    data_key: str

    def stage1(self, kind: str) -> str:
        a = self.args
        key = row_key({"data": self.data_key, "kind": kind, "epochs": a.epochs, "steps": a.stage1_steps}, self.code)
        return os.path.join(a.out, f"stage1-{kind}-{key}.srnet.weights.h5")

    def fsr_hashnet(self, hash_on: str) -> str:
        a = self.args
        key = row_key(
            {"data": self.data_key, "hash_on": hash_on, "bits": a.bits, "epochs": a.epochs, "steps": a.steps_per_epoch},
            self.code,
        )
        return os.path.join(a.out, f"fsr-hash-{hash_on.replace('+', '')}-{a.bits}-{key}.hashnet.weights.h5")

    def teacher(self) -> str:
        return os.path.join(
            self.args.out, "dsrhn", "work", "checkpoints", f"epoch-{self.args.epochs:04d}", "hashnet.weights.h5"
        )


def row_preset(row: Row, paths: Paths):
    """A row's preset: the cpu preset on its degradations, from the shared SRNet, FSR HashNet or teacher."""
    from dsrhn.config import get_preset

    a = paths.args
    row_steps = max(1, a.student_steps // a.epochs) if row.method == "student" else a.steps_per_epoch
    preset = get_preset(
        "cpu",
        method=row.method,
        bits=a.bits,
        epochs=a.epochs,
        steps_per_epoch=row_steps,
        **{"degradation.kind": row.kind},
    )
    if spec(row.method).sr_stage:
        preset = preset.replace(srnet_weights=paths.stage1(row.kind))
    if row.method == "fsr-gan":
        hashnet = paths.fsr_hashnet(row.options.get("hash_on", "hr"))
        preset = preset.replace(options={**row.options, "hashnet_weights": hashnet})
    if row.method == "student":
        preset = preset.replace(options={"teacher_weights": paths.teacher()})
    return preset


@dataclasses.dataclass
class Plan:
    """The tasks to run: rows ready now, and those waiting for a stage 1, an FSR HashNet or the DSRHN teacher."""

    independent: list = dataclasses.field(default_factory=list)
    after_stage1: dict = dataclasses.field(default_factory=lambda: {"blind": [], "fixed": []})
    after_fsr_hash: dict = dataclasses.field(default_factory=dict)
    after_teacher: list = dataclasses.field(default_factory=list)
    row_keys: dict = dataclasses.field(default_factory=dict)

    def tasks(self, paths: Paths, examples: str) -> list[Task]:
        a = paths.args
        for group in [self.independent, *self.after_stage1.values()]:  # the student waits for DSRHN's training
            for t in group:
                if t.name == ("train", "dsrhn"):
                    t.unlocks.extend(self.after_teacher)
                    self.after_teacher = []
        tasks = list(self.independent) + self.after_teacher
        for hash_on, after in self.after_fsr_hash.items():
            preset = fsr_hash_preset(a, hash_on)
            tasks.append(
                Task(
                    0,
                    ("fsr-hash", hash_on),
                    first_phase,
                    (
                        examples,
                        preset,
                        os.path.join(a.out, f"fsr-hash-{hash_on}"),
                        paths.fsr_hashnet(hash_on),
                        "hashnet",
                        a.epochs,
                    ),
                    after,
                )
            )
        for kind, after in self.after_stage1.items():
            if after:
                tasks.append(
                    Task(
                        0,
                        ("stage1", kind),
                        first_phase,
                        (
                            examples,
                            stage1_preset(a.epochs, max(1, a.stage1_steps // a.epochs), kind),
                            os.path.join(a.out, f"stage1-{kind}"),
                            paths.stage1(kind),
                            "srnet",
                            a.epochs,
                        ),
                        after,
                    )
                )
        return tasks


def fsr_hash_preset(args, hash_on: str) -> dict:
    """The FSR rows' shared phase `hash` (HashNet on HR images, or HR + LR), as a preset dict."""
    from dsrhn.config import get_preset

    return get_preset(
        "cpu",
        method="fsr-gan",
        bits=args.bits,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        **{"options.hash_epochs": args.epochs, "options.hash_on": hash_on},
    ).to_dict()


def plan(paths: Paths, cache: RowCache, results: dict, examples: str, dirs: dict) -> Plan:
    """Every wanted row not cached: its training, then its scoring, placed after what it starts from."""
    a, p = paths.args, Plan()
    for row in (r for r in MODELS if r.key in a.models.split(",")):
        preset = row_preset(row, paths)
        teacher = {"teacher": p.row_keys.get("dsrhn")} if row.method == "student" else {}  # retrained with DSRHN
        p.row_keys[row.key] = row_key({"data": paths.data_key, "preset": preset.to_dict(), **teacher}, paths.code)
        cached = cache.get(row.key, p.row_keys[row.key])
        if cached:
            results[row.key] = cached
            continue
        run_dir = os.path.join(a.out, row.key)
        shutil.rmtree(run_dir, ignore_errors=True)
        score = Task(
            1,
            ("score", row.key),
            score_model,
            (
                os.path.join(run_dir, "model"),
                examples,
                dirs,
                a.topk,
                os.path.join(run_dir, "ap"),
                spec(row.method).query_input == "hr",
            ),
        )
        task = Task(0, ("train", row.key), train_model, (examples, as_json(preset.to_dict()), run_dir), [score])
        hash_on = row.options.get("hash_on", "hr")
        if (
            row.method == "student"
            and "dsrhn" in p.row_keys
            and not cache.get("dsrhn", p.row_keys["dsrhn"], log=lambda *_: None)
        ):
            p.after_teacher.append(task)  # trains once the DSRHN row has (its checkpoint is the teacher)
        elif preset.srnet_weights and not os.path.exists(paths.stage1(row.kind)):
            p.after_stage1[row.kind].append(task)
        elif row.method == "fsr-gan" and not os.path.exists(paths.fsr_hashnet(hash_on)):
            p.after_fsr_hash.setdefault(hash_on, []).append(task)
        else:
            p.independent.append(task)
    return p


def run(tasks: list[Task], args, cache: RowCache, row_keys: dict, results: dict) -> None:
    """Run the tasks; each row is cached once scored."""
    trained: dict = {}  # trained, not yet scored

    def on_done(task_name, out: dict) -> None:
        what, key = task_name
        if what == "stage1":
            print(f"stage 1 ({key}): SRNet by MSE, {args.stage1_steps} steps ({out['seconds']:.0f} s)", flush=True)
        elif what == "fsr-hash":
            print(f"FSR rows' HashNet on {key}: {args.steps} steps ({out['seconds']:.0f} s)", flush=True)
        elif what == "train":
            trained[key] = out
            print(f"{key}: trained in {out['train_seconds']:.0f} s", flush=True)
        else:
            results[key] = cache.put(key, row_keys[key], {**trained.pop(key), **out})
            print(f"{key}: scored {len(out['cells'])} cells ({out['score_seconds']:.0f} s)", flush=True)

    run_all(tasks, on_done)


def closure(results: dict, model: str, cell: str) -> dict | None:
    import numpy as np

    from components.metrics import gap_closure_interval

    try:
        lr = np.load(results["hashnet-lr"]["cells"][cell]["ap_file"])
        m = np.load(results[model]["cells"][cell]["ap_file"])
        hr = np.load(results["hashnet-hr"]["cells"]["HR"]["ap_file"])
    except KeyError:
        return None
    return gap_closure_interval(lr, m, hr)


def closure_text(c: dict | None) -> str:
    if not c or c["closure"] is None:
        return "-"
    ci = c["closure_interval"]
    return f"{c['closure']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{c['closure']:.2f}"


def print_side_by_side(results: dict, cell_names: list[str]) -> None:
    """One table: every model's mAP per cell, blind DSRHN's closure and PSNR-Y (docs/results.md, Degradation grid)."""
    rows = [(m.key, m.name) for m in MODELS[:-1] if m.key in results]
    keys = [k for k, _ in rows]
    extra = [k for k in ("dsrhn", "fsr-gan", "fsr-gan-hrlr", "multi-level", "student") if k in results]
    print(
        "\n| cell | "
        + " | ".join(n for _, n in rows)
        + "".join(f" | {k} closure [90% CI]" for k in extra)
        + " | PSNR-Y DSRHN / bicubic |"
    )
    print("|---" * (len(keys) + len(extra) + 2) + "|")
    for cell in cell_names:
        maps = [results[k]["cells"][cell]["map"] for k in keys]
        best = max(maps)
        row = " | ".join(f"**{m:.4f}**" if m == best else f"{m:.4f}" for m in maps)
        text = "".join(f" | {closure_text(closure(results, k, cell))}" for k in extra)
        p = results["dsrhn"]["cells"][cell]["psnr"] if "dsrhn" in results else None
        psnr = f"{p['psnr_y']:.2f} / {p['bicubic_psnr_y']:.2f}" if p else "-"
        print(f"| {cell} | {row}{text} | {psnr} |")
    print(
        "\nRows computed: "
        + "; ".join(f"{n} {results[k].get('computed', '?')} ({results[k].get('key', '?')})" for k, n in rows)
    )


def print_model(results: dict, key: str, name: str, cell_names: list[str]) -> None:
    """One model's table: mAP, closure and PSNR-Y per cell, the x8 cells' mean closure and a summary row."""
    r = results[key]
    print(
        f"\n{name}  (train {r['train_seconds']:.0f} s; computed {r.get('computed', '?')} on {r.get('host', '?')}, "
        f"key {r.get('key', '?')})"
    )
    print("| cell | mAP | closure [90% CI] | PSNR-Y SR / bicubic |")
    print("|---|---|---|---|")
    closures, above = [], 0
    for cell in cell_names:
        r = results[key]["cells"][cell]
        c = closure(results, key, cell)
        above += r["map"] > results.get("hashnet-lr", {}).get("cells", {}).get(cell, {}).get("map", 1.0)
        if c and c["closure"] is not None:
            closures.append((c["closure"], cell))
        p = r["psnr"]
        print(f"| {cell} | {r['map']:.4f} | {closure_text(c)} | {p['psnr_y']:.2f} / {p['bicubic_psnr_y']:.2f} |")
    x8 = [c for c, cell in closures if cell.startswith("x8-")]
    if x8:
        print(f"| x8 cells | | mean closure {sum(x8) / len(x8):.2f} | |")
    if key != "hashnet-lr" and closures:
        worst = min(closures)
        mean = sum(c for c, _ in closures) / len(closures)
        print(
            f"| summary | above HashNet-LR in {above}/{len(cell_names)} cells | worst {worst[0]:.2f} "
            f"({worst[1]}), mean {mean:.2f} | |"
        )


def print_tables(results: dict, cell_names: list[str], args, minutes: float) -> None:
    hr = results.get("hashnet-hr", {}).get("cells", {}).get("HR", {}).get("map")
    print(
        f"\nDegradation grid, mAP@{args.topk}, {args.bits} bits, Fashion-MNIST mosaics, cpu preset, {args.steps} "
        "HashNet "
        f"steps/run, {args.n_query} queries, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"{minutes:.1f} min; the student {args.student_steps} distillation steps"
    )
    print(f"HashNet-HR (HR queries): {hr:.4f}" if hr is not None else "HashNet-HR: -")
    for m in MODELS[:-1]:
        if m.key in results:
            print_model(results, m.key, m.name, cell_names)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/grid")
    ap.add_argument("--bits", type=int, default=48)
    steps = "HashNet updates per run (720: at 360 the blind rows were still far from converged)"
    ap.add_argument("--steps", type=int, default=720, help=steps)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--stage1-steps", type=int, default=0, help="SRNet MSE updates of each stage 1 (default 2 x --steps)"
    )
    student = (
        "the student's distillation updates (default 6 x --steps: chosen after the 2026-11-28 runs, docs/results.md)"
    )
    ap.add_argument("--student-steps", type=int, default=0, help=student)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-query", type=int, default=2000)
    ap.add_argument("--n-gallery", type=int, default=10000)
    ap.add_argument(
        "--specialist-blur", type=float, default=2.0, help="the specialist's LR: blur sigma before x4 bicubic"
    )
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument(
        "--models", default=",".join(m.key for m in MODELS), help="subset of " + ",".join(m.key for m in MODELS)
    )
    args = ap.parse_args()
    args.student_steps = args.student_steps or STUDENT_STEPS_X * args.steps  # the defaults, resolved once
    args.stage1_steps = args.stage1_steps or 2 * args.steps
    args.steps_per_epoch = max(1, args.steps // args.epochs)
    return args


def make_data(args, t_start: float) -> tuple[str, dict]:
    """The Examples and the grid's query sets, remade (with everything in --out) when their settings change."""
    from dsrhn.config import LRConfig

    examples = os.path.join(args.out, "examples")
    source = mosaic_source(args.n_train, args.n_query, args.n_gallery)
    lr_config = LRConfig(scale=4, blur_sigma=args.specialist_blur)
    ingest = {"source": source, "hr_size": 56, "lr": dataclasses.asdict(lr_config), "cells": cells()}
    if ensure_grid(
        examples, os.path.join(args.out, "ingest.json"), ingest, source, 56, lr_config, ingest["cells"], clear=args.out
    ):
        print(f"query sets: {len(ingest['cells'])} cells of {args.n_query} ({time.time() - t_start:.0f} s)", flush=True)
    return examples, ingest


def main() -> None:
    args = parse_args()
    t_start = time.time()
    examples, ingest = make_data(args, t_start)
    # every cached row, stage 1 and FSR HashNet is keyed on its settings and the code: a row made with other
    # settings or another code version is recomputed, never reused silently
    code = code_digest((os.path.abspath(__file__), *ROW_CODE))
    paths = Paths(args, code, row_key({"ingest": ingest, "topk": args.topk}, code))
    cache = RowCache(os.path.join(args.out, "results.json"))
    results: dict = {}
    p = plan(paths, cache, results, examples, cell_dirs(examples, ingest["cells"]))
    run(p.tasks(paths, examples), args, cache, p.row_keys, results)
    names = list(ingest["cells"])
    print_tables(results, names, args, (time.time() - t_start) / 60)
    print_side_by_side(results, names)


if __name__ == "__main__":
    main()
