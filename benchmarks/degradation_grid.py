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
                   --student-steps sets its distillation updates (default 6x every row's: at 1x it stayed
                   0.004-0.010 below DSRHN at x4, at 6x within 0.0025 or above in every cell, 2026-11-28)
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
import json
import os
import platform
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce_table1 import Runner, train_stage1  # noqa: E402

SCALES = (2, 4, 8)
STUDENT_STEPS_X = 6  # the student distils for 6x the rows' HashNet steps by default (docs/results.md, degradation grid)
CONDITIONS = {  # name -> LRConfig fields
    "bicubic": {},
    "blur1.5": {"blur_sigma": 1.5},
    "noise8": {"noise_sigma": 8.0},
    "jpeg40": {"jpeg_quality": 40},
    "blur+noise+jpeg": {"blur_sigma": 1.5, "noise_sigma": 5.0, "jpeg_quality": 60},
}
SPECIALIST_CELL = "x4-specialist(blur2)"
MODELS = [  # key, row name, mode, degradation kind, starts from stage 1 of that kind
    ("hashnet-lr", "HashNet-LR (blind)", "hashnet-lr", "blind"),
    ("two-stage", "Two-stage (blind SRNet)", "two-stage", "blind"),
    ("dsrhn", "DSRHN (blind)", "dsrhn", "blind"),
    ("specialist", "DSRHN specialist (x4 blur 2)", "dsrhn", "fixed"),
    ("fsr-gan", "FSR-GAN (critic, focal r=2)", "fsr-gan", "blind"),
    ("fsr-r1", "FSR-GAN r=1 (Eq. 8)", "fsr-gan", "blind"),
    ("fsr-r0", "FSR-GAN r=0 (critic alone)", "fsr-gan", "blind"),
    ("fsr-cnn", "FSR CNN-Baseline (no critic, MSE)", "fsr-gan", "blind"),
    ("fsr-gan-hrlr", "FSR-GAN on a HashNet-LR", "fsr-gan", "blind"),
    ("multi-level", "Multi-level (blind; global codes)", "multi-level", "blind"),
    ("student", "Student (HashNet on LR, distilled from DSRHN)", "student", "blind"),
    ("hashnet-hr", "HashNet-HR (HR queries)", "hashnet-hr", "blind"),
]
# the FSR rows' own options; rows with the same hash_on share one HashNet (their phase `hash`, trained
# once), then each trains its own G
FSR_OPTIONS = {"fsr-gan": {}, "fsr-r1": {"focal_r": 1.0}, "fsr-r0": {"focal_r": 0.0},
               "fsr-cnn": {"critic": False}, "fsr-gan-hrlr": {"hash_on": "hr+lr"}}


def cells() -> dict:
    """cell name -> LRConfig fields (seed 1: the grid's draws differ from the training partners')."""
    out = {f"x{s}-{name}": {"scale": s, "kernel": "bicubic", "seed": 1, **fields}
           for s in SCALES for name, fields in CONDITIONS.items()}
    out[SPECIALIST_CELL] = None  # the Examples' own stored query LR
    return out


def train_fsr_hashnet(examples: str, bits: int, epochs: int, steps_per_epoch: int, out: str, weights: str,
                      hash_on: str = "hr") -> dict:
    """The FSR rows' shared phase `hash` (HashNet on HR images, or HR + LR), saved for their G phases."""
    from dsrhn.config import get_preset
    from trainer.train import train

    t0 = time.time()
    preset = get_preset("cpu", mode="fsr-gan", bits=bits, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        **{"options.hash_epochs": epochs, "options.hash_on": hash_on})
    done = train(examples, preset, out, verbose=0, tensorboard=False, stop_after_epochs=epochs)
    done.trainer.nets["hashnet"].save_weights(weights)
    return {"seconds": time.time() - t0}


def train_model(examples: str, preset_dict: dict, run_dir: str) -> dict:
    """Train and export one model (in a fresh worker process)."""
    from dsrhn.config import preset_from_dict
    from trainer.task import train_and_export

    summary = train_and_export(examples, preset_from_dict(preset_dict), os.path.join(run_dir, "work"),
                               os.path.join(run_dir, "model"), verbose=0)
    return {"train_seconds": summary["seconds"], "model": os.path.join(run_dir, "model")}


def score_model(model_dir: str, examples: str, cell_dirs: dict, topk: int, out_dir: str, hr_only: bool) -> dict:
    """Per-query AP@topk of one model on every cell (gallery encoded once), and PSNR-Y per cell."""
    import numpy as np

    from components.evaluate import SavedModelEncoders, encode_split, sr_quality
    from components.metrics import average_precisions
    from dsrhn.records import DatasetInfo

    enc = SavedModelEncoders(model_dir)
    info = DatasetInfo.read(examples)
    g = encode_split(examples, "gallery", "hr", enc.gallery, 256, info)
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    t0 = time.time()
    for cell, uri in ({"HR": examples} if hr_only else cell_dirs).items():
        q = encode_split(uri, "query", "hr" if hr_only else "lr", enc.query if not hr_only else enc.gallery, 256)
        ap, _ = average_precisions(q.codes, g.codes, q.labels, g.labels, topk)
        path = os.path.join(out_dir, f"{cell}.npy")
        np.save(path, ap)
        row = {"map": float(ap.mean()), "ap_file": path}
        if not hr_only:
            row["psnr"] = sr_quality(uri, enc, DatasetInfo.read(uri))
        out[cell] = row
    return {"cells": out, "score_seconds": time.time() - t0}


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
    """One table: every model's mAP per cell, blind DSRHN's closure and PSNR-Y (README's table)."""
    rows = [(k, n) for k, n, _, _ in MODELS[:-1] if k in results]
    keys = [k for k, _ in rows]
    extra = [k for k in ("dsrhn", "fsr-gan", "fsr-gan-hrlr", "multi-level", "student") if k in results]
    print("\n| cell | " + " | ".join(n for _, n in rows) + "".join(f" | {k} closure [90% CI]" for k in extra)
          + " | PSNR-Y DSRHN / bicubic |")
    print("|---" * (len(keys) + len(extra) + 2) + "|")
    for cell in cell_names:
        maps = [results[k]["cells"][cell]["map"] for k in keys]
        best = max(maps)
        row = " | ".join(f"**{m:.4f}**" if m == best else f"{m:.4f}" for m in maps)
        text = "".join(f" | {closure_text(closure(results, k, cell))}" for k in extra)
        p = results["dsrhn"]["cells"][cell]["psnr"] if "dsrhn" in results else None
        psnr = f"{p['psnr_y']:.2f} / {p['bicubic_psnr_y']:.2f}" if p else "-"
        print(f"| {cell} | {row}{text} | {psnr} |")
    print("\nRows computed: " + "; ".join(f"{n} {results[k].get('computed', '?')} ({results[k].get('key', '?')})"
                                          for k, n in rows))


def print_tables(results: dict, cell_names: list[str], args, minutes: float) -> None:
    hr = results.get("hashnet-hr", {}).get("cells", {}).get("HR", {}).get("map")
    print(f"\nDegradation grid, mAP@{args.topk}, {args.bits} bits, Fashion-MNIST mosaics, cpu preset, {args.steps} HashNet "
          f"steps/run, {args.n_query} queries, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"{minutes:.1f} min; the student {args.student_steps} distillation steps")
    print(f"HashNet-HR (HR queries): {hr:.4f}" if hr is not None else "HashNet-HR: -")
    for key, name, _, _ in MODELS[:-1]:
        if key not in results:
            continue
        r = results[key]
        print(f"\n{name}  (train {r['train_seconds']:.0f} s; computed {r.get('computed', '?')} on {r.get('host', '?')}, "
              f"key {r.get('key', '?')})")
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
            print(f"| summary | above HashNet-LR in {above}/{len(cell_names)} cells | worst {worst[0]:.2f} "
                  f"({worst[1]}), mean {mean:.2f} | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/grid")
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--steps", type=int, default=720,
                    help="HashNet updates per run (720: at 360 the blind rows were still far from converged)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--stage1-steps", type=int, default=0, help="SRNet MSE updates of each stage 1 (default 2 x --steps)")
    ap.add_argument("--student-steps", type=int, default=0,
                    help="the student's distillation updates (default 6 x --steps: chosen after the 2026-11-28 runs, "
                         "docs/results.md)")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-query", type=int, default=2000)
    ap.add_argument("--n-gallery", type=int, default=10000)
    ap.add_argument("--specialist-blur", type=float, default=2.0, help="the specialist's LR: blur sigma before x4 bicubic")
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS), help="subset of " + ",".join(m[0] for m in MODELS))
    args = ap.parse_args()
    args.student_steps = args.student_steps or STUDENT_STEPS_X * args.steps  # the default, resolved once

    from components.ingest import derive_query_set, run_ingest
    from dsrhn.config import LRConfig, get_preset

    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    examples = os.path.join(args.out, "examples")
    source = {"kind": "fashion-mnist-mosaic", "n_train": args.n_train, "n_query": args.n_query, "n_gallery": args.n_gallery}
    lr_config = LRConfig(scale=4, blur_sigma=args.specialist_blur)
    ingest = {"source": source, "hr_size": 56, "lr": dataclasses.asdict(lr_config), "cells": cells()}
    record = os.path.join(args.out, "ingest.json")
    made_from = json.load(open(record)) if os.path.exists(record) else None
    if made_from != json.loads(json.dumps(ingest)):
        for name in os.listdir(args.out):
            path = os.path.join(args.out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        print(run_ingest(source, examples, 56, lr_config).console(), flush=True)
        for cell, fields in ingest["cells"].items():
            if fields:
                derive_query_set(examples, os.path.join(args.out, "grid", cell), LRConfig(**fields))
        with open(record, "w") as f:
            json.dump(ingest, f)
        print(f"query sets: {len(ingest['cells'])} cells of {args.n_query} ({time.time() - t_start:.0f} s)", flush=True)
    cell_dirs = {c: (os.path.join(args.out, "grid", c) if f else examples) for c, f in ingest["cells"].items()}

    from cache import RowCache, code_digest, row_key

    # every cached row, stage 1 and FSR HashNet is keyed on its settings and the code (benchmarks/cache.py): a
    # row made with other settings or another code version is recomputed, never reused silently
    code = code_digest((os.path.abspath(__file__), os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                "reproduce_table1.py")))
    cache = RowCache(os.path.join(args.out, "results.json"))
    results = {}
    wanted = args.models.split(",")
    steps_per_epoch = max(1, args.steps // args.epochs)
    stage1_steps = args.stage1_steps or 2 * args.steps
    data_key = row_key({"ingest": ingest, "topk": args.topk}, code)

    def stage1_weights(kind: str) -> str:
        key = row_key({"data": data_key, "kind": kind, "epochs": args.epochs, "steps": stage1_steps}, code)
        return os.path.join(args.out, f"stage1-{kind}-{key}.srnet.weights.h5")

    def fsr_hashnet(hash_on: str) -> str:
        key = row_key({"data": data_key, "hash_on": hash_on, "bits": args.bits, "epochs": args.epochs,
                       "steps": steps_per_epoch}, code)
        return os.path.join(args.out, f"fsr-hash-{hash_on.replace('+', '')}-{args.bits}-{key}.hashnet.weights.h5")

    after_fsr_hash: dict = {}

    tasks_by_kind: dict = {"blind": [], "fixed": []}
    independent, after_teacher = [], []
    row_keys = {}
    for key, name, mode, kind in MODELS:
        if key not in wanted:
            continue
        stage1 = stage1_weights(kind)
        row_steps = max(1, args.student_steps // args.epochs) if mode == "student" else steps_per_epoch
        preset = get_preset("cpu", mode=mode, bits=args.bits, epochs=args.epochs, steps_per_epoch=row_steps,
                            **{"degradation.kind": kind})
        if mode in ("two-stage", "dsrhn", "multi-level"):
            preset = preset.replace(srnet_weights=stage1)
        hash_on = FSR_OPTIONS.get(key, {}).get("hash_on", "hr")
        if mode == "fsr-gan":
            preset = preset.replace(options={**FSR_OPTIONS[key], "hashnet_weights": fsr_hashnet(hash_on)})
        teacher = os.path.join(args.out, "dsrhn", "work", "checkpoints", f"epoch-{args.epochs:04d}", "hashnet.weights.h5")
        if mode == "student":  # keyed on its teacher too: a retrained DSRHN retrains the student
            preset = preset.replace(options={"teacher_weights": teacher})
        row_keys[key] = row_key({"data": data_key, "preset": preset.to_dict(),
                                 **({"teacher": row_keys.get("dsrhn")} if mode == "student" else {})}, code)
        cached = cache.get(key, row_keys[key])
        if cached:
            results[key] = cached
            continue
        run_dir = os.path.join(args.out, key)
        shutil.rmtree(run_dir, ignore_errors=True)
        score = (1, ("score", key), score_model, (os.path.join(run_dir, "model"), examples, cell_dirs, args.topk,
                                                  os.path.join(run_dir, "ap"), mode == "hashnet-hr"), [])
        task = (0, ("train", key), train_model, (examples, json.loads(json.dumps(preset.to_dict())), run_dir), [score])
        if mode == "student" and "dsrhn" in row_keys and not cache.get("dsrhn", row_keys["dsrhn"], log=lambda *_: None):
            after_teacher.append(task)  # trains once the DSRHN row has (its checkpoint is the teacher)
        elif preset.srnet_weights and not os.path.exists(stage1):
            tasks_by_kind[kind].append(task)
        elif mode == "fsr-gan" and not os.path.exists(fsr_hashnet(hash_on)):
            after_fsr_hash.setdefault(hash_on, []).append(task)
        else:
            independent.append(task)
    for group in [independent, *tasks_by_kind.values()]:  # the student waits for the DSRHN row's training
        for t in group:
            if t[1] == ("train", "dsrhn"):
                t[4].extend(after_teacher)
                after_teacher = []
    tasks = list(independent) + after_teacher
    for hash_on, after in after_fsr_hash.items():
        tasks.append((0, ("fsr-hash", hash_on), train_fsr_hashnet,
                      (examples, args.bits, args.epochs, steps_per_epoch, os.path.join(args.out, f"fsr-hash-{hash_on}"),
                       fsr_hashnet(hash_on), hash_on), after))
    for kind, after in tasks_by_kind.items():
        if after:
            tasks.append((0, ("stage1", kind), train_stage1,
                          (examples, args.epochs, max(1, stage1_steps // args.epochs),
                           os.path.join(args.out, f"stage1-{kind}"), stage1_weights(kind), kind), after))

    def on_done(task_name, out: dict) -> None:
        what, key = task_name
        if what == "stage1":
            print(f"stage 1 ({key}): SRNet by MSE, {stage1_steps} steps ({out['seconds']:.0f} s)", flush=True)
        elif what == "fsr-hash":
            print(f"FSR rows' HashNet on {key}: {args.steps} steps ({out['seconds']:.0f} s)", flush=True)
        elif what == "train":
            trained[key] = out
            print(f"{key}: trained in {out['train_seconds']:.0f} s", flush=True)
        else:
            results[key] = cache.put(key, row_keys[key], {**trained.pop(key), **out})
            print(f"{key}: scored {len(out['cells'])} cells ({out['score_seconds']:.0f} s)", flush=True)

    trained: dict = {}  # trained, not yet scored
    runner = Runner(1)
    try:
        runner.run(tasks, on_done)
    finally:
        runner.close()
    names = list(ingest["cells"])
    print_tables(results, names, args, (time.time() - t_start) / 60)
    print_side_by_side(results, names)


if __name__ == "__main__":
    main()
