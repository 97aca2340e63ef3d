"""Reproduce the DSRHN paper's Table 1 (ablation) and Table 2 (baseline losses) on the
embedded multi-label Fashion-MNIST mosaic data, cpu preset: 56 px HR, 14 px LR made by a
Gaussian blur (sigma 2 HR px, --lr-blur) and x4 bicubic downsampling, 5,000 queries.

Rows: HashNet-LR, two-stage SR->hash (the paper's HashNet-SRGAN row), DSRHN, HashNet-HR,
at 12/24/32/48 bits; queries are LR (HR for HashNet-HR). Every row gets the same number of
HashNet updates. Stage 1 (SRNet trained by MSE alone, --stage1-steps updates) does not depend
on the bit length: it is trained once, frozen by the two-stage rows and the starting SRNet of the DSRHN
rows (the way SRGAN starts from an MSE-trained SRResNet; the paper's HashNet starts from
ImageNet weights instead, which we cannot download). Table 2 rows: HashNet-LR trained
with the DPSH, DHN and DCH losses. Prints the tables and the gap closure
(DSRHN - HashNet-LR) / (HashNet-HR - HashNet-LR) per bit length, with a 90% paired bootstrap
interval over the queries (every row is scored on the same queries).

    python benchmarks/reproduce_table1.py                 # defaults: 18 runs, 360 steps each
    python benchmarks/reproduce_table1.py --steps 40 --bits 12 --no-table2   # smoke run
    python benchmarks/reproduce_table1.py --seeds 3 --jobs 8   # mean of 3 seeds per cell (more cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import shutil
import time

from benchlib.cache import ROW_CODE, as_json, code_digest, stamp
from benchlib.grid import ensure_grid, mosaic_source
from benchlib.rows import Row
from benchlib.runner import Task, run_all
from benchlib.tasks import first_phase, run_row, stage1_preset
from dsrhn.registry import spec

ROWS = [
    Row("hashnet-lr", "HashNet-LR", "hashnet-lr"),
    Row("two-stage", "Two-stage SR->hash", "two-stage"),
    Row("dsrhn", "DSRHN", "dsrhn"),
    Row("hashnet-hr", "HashNet-HR", "hashnet-hr"),
]
TABLE2 = [
    Row("hashnet-lr", name, "hashnet-lr", loss) for name, loss in (("DCH", "dch"), ("DHN", "dhn"), ("DPSH", "dpsh"))
]
# Table 3, the other seed methods: LR queries; the point-wise and center rows train like HashNet-LR on HR + LR in
# one batch (the center-loss control has both center terms off); FSR-GAN trains HashNet on HR, then its feature
# generator on the LR
TABLE3 = [
    Row("pointwise", "Point-wise", "pointwise"),
    Row("pointwise-seg", "Point-wise + segmentation", "pointwise-seg"),
    Row(
        "center", "Center loss, beta = beta_s = 0.1", "center", options={"center_weight": 0.1, "separation_weight": 0.1}
    ),
    Row(
        "center-off",
        "Center method, beta = 0 (control)",
        "center",
        options={"center_weight": 0.0, "separation_weight": 0.0},
    ),
    Row("center-1", "Center loss, beta = beta_s = 1 (default)", "center"),
    Row("fsr-gan", "FSR-GAN (feature SR)", "fsr-gan"),
]
# scheduling order when rows run side by side: the long rows first, so the short ones fill the tail
PRIORITY = {"stage1": 0, "dsrhn": 1, "two-stage": 2, "pointwise-seg": 3, "hashnet-lr": 3, "hashnet-hr": 4}


def table_runs(table2: bool) -> list[Row]:
    """The Table 1 rows, plus the DCH/DHN rows of Table 2 when asked."""
    return ROWS + ([r for r in TABLE2 if r.loss != "dpsh"] if table2 else [])


def cell(results: dict, method: str, loss: str, bits: int, field: str = "map") -> list[float]:
    """A table cell's values over the seeds run so far (keys method/loss/bits/seedN)."""
    prefix = f"{method}/{loss}/{bits}/seed"
    return [v[field] for k, v in sorted(results.items()) if k.startswith(prefix)]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fmt(values: list[float], signed: bool = False) -> str:
    """Mean, with the spread (max - min) when there are several seeds."""
    if not values:
        return "  -   "
    text = f"{mean(values):+.4f}" if signed else f"{mean(values):.4f}"
    return text + (f" ±{(max(values) - min(values)) / 2:.4f}" if len(values) > 1 else "")


def query_aps(results: dict, method: str, bits: int):
    """A cell's per-query AP@topk (its queries' input), averaged over its seeds; None if not recorded."""
    import numpy as np

    runs = [v for k, v in sorted(results.items()) if k.startswith(f"{method}/dpsh/{bits}/seed")]
    if not runs or not all(os.path.exists(v.get("ap_file", "")) for v in runs):
        return None
    return np.mean([np.load(v["ap_file"])["lr_query"] for v in runs], axis=0)


def gap_closure(results: dict, bits: int, row: str = "dsrhn") -> dict | None:
    """(row - HashNet-LR) / (HashNet-HR - HashNet-LR) with a 90% paired bootstrap interval over the queries
    (all rows are evaluated on the same queries), or None while a row is missing."""
    from components.metrics import gap_closure_interval

    aps = [query_aps(results, m, bits) for m in ("hashnet-lr", row, "hashnet-hr")]
    return None if any(a is None for a in aps) else gap_closure_interval(*aps)


def fmt_closure(c: dict | None) -> str:
    if c is None:
        return "  -   "
    if c["closure"] is None:
        return "n/a (HR<=LR)"
    lo_hi = "[" + ", ".join(f"{x:.2f}" for x in c["closure_interval"]) + "]" if c["closure_interval"] else ""
    return f"{c['closure']:.3f} {lo_hi}"


def _save(results: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/table1")
    ap.add_argument("--bits", default="12,24,32,48")
    ap.add_argument("--steps", type=int, default=360, help="HashNet updates per run")
    ap.add_argument("--epochs", type=int, default=4, help="epochs; steps are split across them")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-query", type=int, default=5000, help="query mosaics (MS-COCO protocol: 5,000)")
    ap.add_argument("--n-gallery", type=int, default=10000)
    ap.add_argument(
        "--lr-blur",
        type=float,
        default=2.0,
        help="Gaussian blur sigma (HR pixels) before the x4 bicubic downsampling that makes the LR "
        "partners (0: bicubic only)",
    )
    ap.add_argument(
        "--degradation",
        default="fixed",
        choices=["fixed", "blind"],
        help="training LR of every row: fixed (the stored partners, the paper's setting) or blind "
        "(the cpu preset's random degradations); queries are the stored LR either way",
    )
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs per cell with seeds 0..N-1; the tables show the means (± half the spread)",
    )
    ap.add_argument("--no-table2", action="store_true")
    ap.add_argument(
        "--table3",
        action="store_true",
        help="also the other seed methods (point-wise +- segmentation, center loss and its control) at "
        "--bits, with HashNet-LR's intra/inter-class Hamming distances for comparison",
    )
    ap.add_argument("--table2-bits", default="12", help="bit lengths for the DHN/DCH rows")
    ap.add_argument("--stage1-steps", type=int, default=0, help="SRNet MSE updates of stage 1 (default: 2 x --steps)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side, each in its own process (for machines with more cores; on 2 cores "
        "two at a time ran each ~2.05-2.1x slower, no gain)",
    )
    args = ap.parse_args()
    args.bits_list = [int(b) for b in args.bits.split(",")]
    args.table2_bits = [int(b) for b in args.table2_bits.split(",")] if args.table2_bits else args.bits_list
    args.stage1_steps = args.stage1_steps or 2 * args.steps
    args.steps_per_epoch = max(1, args.steps // args.epochs)
    return args


def make_data(args) -> tuple[str, dict]:
    """The Examples (remade when their ingest settings change); returns their folder and those settings."""
    from dsrhn.config import LRConfig

    examples = os.path.join(args.out, "examples")
    source = mosaic_source(args.n_train, args.n_query, args.n_gallery)
    lr_config = LRConfig(scale=4, blur_sigma=args.lr_blur)
    ingest = {"source": source, "hr_size": 56, "lr": dataclasses.asdict(lr_config), "records": "with masks"}
    ensure_grid(examples, os.path.join(args.out, "ingest.json"), ingest, source, 56, lr_config)
    return examples, ingest


def load_results(args, ingest: dict, cpu) -> dict:
    """The cached rows, or a fresh start (every run directory removed) when they were made with other settings
    or another code version."""
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    sr_rows = " and ".join(r.method for r in ROWS if spec(r.method).sr_stage)
    settings = {
        "steps": args.steps,
        "epochs": args.epochs,
        "cpu_preset": as_json(cpu.to_dict()),
        "srnet_init": f"stage1 (MSE) for {sr_rows}",
        "hash_batch": "joint [HR; query]",
        "stage1_steps": args.stage1_steps,
        "keys": "method/loss/bits/seedN",
        "ingest": ingest,
        "code": code_digest((os.path.abspath(__file__), *ROW_CODE)),
    }
    if results.get("_settings") == settings:
        return results
    if results:
        print(f"{results_path} was made with other settings; retraining every row", flush=True)
    for name in os.listdir(args.out):
        if name not in ("examples", "ingest.json"):
            path = os.path.join(args.out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return {"_settings": settings}


def row_task(args, examples: str, key: str, row: Row, preset, spread: bool) -> Task:
    return Task(
        PRIORITY.get(row.method, 3),
        (key, row.name),
        run_row,
        (examples, preset.to_dict(), os.path.join(args.out, key.replace("/", "-")), args.topk, spread),
    )


def plan(args, examples: str, results: dict, cpu) -> list[Task]:
    """A task per missing cell; the SR-stage rows wait for stage 1 unless its SRNet is there already."""
    stage1_srnet = os.path.join(args.out, "stage1.srnet.weights.h5")
    independent, after_stage1 = [], []
    for bits in args.bits_list:
        rows = table_runs(not args.no_table2 and bits in args.table2_bits) + (TABLE3 if args.table3 else [])
        for row, seed in itertools.product(rows, range(args.seeds)):
            key = f"{row.key}/{row.loss}/{bits}/seed{seed}"
            if key in results:
                continue
            preset = cpu.replace(
                method=row.method,
                hash_loss=row.loss,
                bits=bits,
                epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                seed=seed,
                srnet_weights=stage1_srnet if spec(row.method).sr_stage else "",
            )
            if row in TABLE3:
                preset = preset.replace(options=row.options)
            spread = row in TABLE3 or (args.table3 and row.method == "hashnet-lr" and row.loss == "dpsh")
            (after_stage1 if preset.srnet_weights else independent).append(
                row_task(args, examples, key, row, preset, spread)
            )
    if os.path.exists(stage1_srnet):
        return independent + after_stage1
    stage1 = Task(
        PRIORITY["stage1"],
        ("stage1", None),
        first_phase,
        (
            examples,
            stage1_preset(args.epochs, max(1, args.stage1_steps // args.epochs), args.degradation),
            os.path.join(args.out, "stage1"),
            stage1_srnet,
            "srnet",
            args.epochs,
        ),
        after_stage1,
    )
    return [stage1] + independent


def run(args, tasks: list[Task], results: dict) -> None:
    """Run the tasks, recording and printing each cell as it ends."""
    results_path = os.path.join(args.out, "results.json")

    def on_done(task_name, out: dict) -> None:
        key, name = task_name
        if key == "stage1":
            results["stage1_seconds"] = out["seconds"]
            print(f"stage 1: SRNet by MSE, {args.stage1_steps} steps ({out['seconds']:.0f} s)", flush=True)
        else:
            results[key] = {"name": name, **out, **stamp()}
            _, loss, bits, seed = key.split("/")
            print(
                f"{name:<20} {loss:<5} {bits:>2} bits {seed:<6} mAP@{args.topk} {out['map']:.4f}  "
                f"({out['seconds']:.0f} s)",
                flush=True,
            )
        _save(results, results_path)

    run_all(tasks, on_done, args.jobs)
    results["jobs"] = args.jobs


def plot(args, results: dict) -> None:
    from components.plots import map_vs_bits

    table = table_runs(not args.no_table2) + (TABLE3 if args.table3 else [])
    means = {r.name: {b: mean(cell(results, r.key, r.loss, b)) for b in args.bits_list} for r in table}
    rows = {name: {b: m for b, m in by_bits.items() if m is not None} for name, by_bits in means.items()}
    map_vs_bits(rows, os.path.join(args.out, "map_vs_bits.png"), f"mAP@{args.topk} vs bits (LR queries)")
    print(f"plot: {os.path.join(args.out, 'map_vs_bits.png')}")


def main() -> None:
    from dsrhn.config import get_preset

    args = parse_args()
    t_start = time.time()
    examples, ingest = make_data(args)
    # cached rows (and run directories, which training resumes from) are reused only when they
    # were made with these settings
    cpu = get_preset("cpu", **{"degradation.kind": args.degradation})
    results = load_results(args, ingest, cpu)
    run(args, plan(args, examples, results, cpu), results)
    closures = {b: gap_closure(results, b) for b in args.bits_list}
    results["gap_closure"] = {str(b): c for b, c in closures.items()}
    _save(results, os.path.join(args.out, "results.json"))
    print_tables(results, closures, args, time.time() - t_start)
    plot(args, results)


def table_row(results: dict, bits_list: list[int], name: str, method: str, loss: str = "dpsh") -> str:
    return f"| {name:<20} | " + " | ".join(fmt(cell(results, method, loss, b)) for b in bits_list) + " |"


def print_tables(results: dict, closures: dict, args, seconds: float) -> None:
    bits_list = args.bits_list
    head = "| method               | " + " | ".join(f"{b} bits" for b in bits_list) + " |"
    sep = "|" + "---|" * (len(bits_list) + 1)
    print(
        f"\nTable 1 (LR queries; HashNet-HR: HR queries), mAP@{args.topk}, Fashion-MNIST mosaic, cpu preset, "
        f"{args.steps} HashNet steps/run, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"{seconds / 60:.1f} min, {args.jobs} run(s) at a time, seeds 0..{args.seeds - 1}"
    )
    when = sorted(v["computed"] for v in results.values() if isinstance(v, dict) and "computed" in v)
    if when:
        print(
            f"rows computed {when[0]} .. {when[-1]} on {platform.node()}, all with settings and code "
            f"{results['_settings']['code']} (another code version retrains every row)"
        )
    print(head)
    print(sep)
    for r in ROWS:
        print(table_row(results, bits_list, r.name, r.method))
    print("| gap closure [90% CI] | " + " | ".join(fmt_closure(closures[b]) for b in bits_list) + " |")
    print(
        "| HR - LR gap [90% CI] | "
        + " | ".join(
            f"{c['gap']:+.4f} [{c['gap_interval'][0]:+.4f}, {c['gap_interval'][1]:+.4f}]" if c else "  -   "
            for c in closures.values()
        )
        + " |"
    )
    print(
        "| P(closure >= 0.97)   | "
        + " | ".join(f"{c['p_goal']:.2f}" if c else "  -   " for c in closures.values())
        + " |"
    )
    print(
        "(paired bootstrap over the queries, 2000 resamples: how far the query sample alone moves the "
        "closure; seed-to-seed variation of training is not in it, `--seeds N` averages that)"
    )
    print(f"\nLR penalty: mAP@{args.topk} of the same model with HR queries minus with LR queries (gallery HR)")
    print(head)
    print(sep)
    for r in ROWS[:3]:
        penalty = [
            [
                h - q
                for h, q in zip(cell(results, r.method, "dpsh", b, "map_hr_query"), cell(results, r.method, "dpsh", b))
            ]
            for b in bits_list
        ]
        print(f"| {r.name:<20} | " + " | ".join(fmt(v, signed=True) for v in penalty) + " |")
    if not args.no_table2:
        print(f"\nTable 2 (LR queries, no SR), mAP@{args.topk}")
        print(head)
        print(sep)
        for r in TABLE2:
            print(table_row(results, bits_list, r.name, r.method, r.loss))
        print(table_row(results, bits_list, "DSRHN", "dsrhn"))
    if args.table3:
        print_table3(results, args, head, sep)


def print_table3(results: dict, args, head: str, sep: str) -> None:
    bits_list = args.bits_list
    print(
        f"\nTable 3: the other seed methods (LR queries), mAP@{args.topk}; "
        "closure = (row - HashNet-LR) / (HashNet-HR - HashNet-LR)"
    )
    print(head)
    print(sep)
    for r in TABLE3:
        print(table_row(results, bits_list, r.name, r.key))
    print(table_row(results, bits_list, "HashNet-LR (DPSH)", "hashnet-lr"))
    print(table_row(results, bits_list, "DSRHN", "dsrhn"))
    print(
        "| closure of each row  | "
        + " | ".join(
            " ".join(f"{r.key}:{fmt_closure(gap_closure(results, b, r.key))}" for r in TABLE3) for b in bits_list
        )
        + " |"
    )
    print(
        "\nMean Hamming distance between gallery codes, sharing a label (intra) / sharing none (inter), "
        "first 2,000 gallery images"
    )
    for key, name in [(r.key, r.name) for r in TABLE3] + [("hashnet-lr", "HashNet-LR (DPSH)")]:
        cells = []
        for b in bits_list:
            h = [
                v["hamming"]
                for k, v in sorted(results.items())
                if k.startswith(f"{key}/dpsh/{b}/seed") and "hamming" in v
            ]
            cells.append(
                f"{mean([x['intra'] for x in h]):.2f} / {mean([x['inter'] for x in h]):.2f}" if h else "  -   "
            )
        print(f"| {name:<34} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
