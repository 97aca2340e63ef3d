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
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROWS = [("HashNet-LR", "hashnet-lr"), ("Two-stage SR->hash", "two-stage"), ("DSRHN", "dsrhn"), ("HashNet-HR", "hashnet-hr")]
TABLE2 = [("DCH", "dch"), ("DHN", "dhn"), ("DPSH", "dpsh")]
# Table 3, the other seed methods (row id, name, registered method, its options): LR queries; the
# point-wise and center rows train like HashNet-LR on HR + LR in one batch (the center-loss control has
# both center terms off); FSR-GAN trains HashNet on HR, then its feature generator on the LR
TABLE3 = [("pointwise", "Point-wise", "pointwise", {}),
          ("pointwise-seg", "Point-wise + segmentation", "pointwise-seg", {}),
          ("center", "Center loss, beta = beta_s = 0.1", "center", {"center_weight": 0.1, "separation_weight": 0.1}),
          ("center-off", "Center method, beta = 0 (control)", "center", {"center_weight": 0.0, "separation_weight": 0.0}),
          ("center-1", "Center loss, beta = beta_s = 1 (default)", "center", {}),
          ("fsr-gan", "FSR-GAN (feature SR)", "fsr-gan", {})]


# scheduling order when rows run side by side: the long rows first, so the short ones fill the tail
PRIORITY = {"stage1": 0, "dsrhn": 1, "two-stage": 2, "pointwise-seg": 3, "hashnet-lr": 3, "hashnet-hr": 4}


def train_stage1(examples: str, epochs: int, steps_per_epoch: int, out: str, weights: str,
                 degradation: str = "fixed") -> dict:
    """Two-stage's stage 1 (SRNet by MSE alone), saved for the two-stage and DSRHN rows."""
    from dsrhn.config import get_preset
    from trainer.train import train

    t0 = time.time()
    preset = get_preset("cpu", mode="two-stage", epochs=epochs, steps_per_epoch=steps_per_epoch,
                        **{"degradation.kind": degradation})
    stage1 = train(examples, preset, out, verbose=0, tensorboard=False, stop_after_epochs=epochs)
    stage1.trainer.srnet.save_weights(weights)
    return {"seconds": time.time() - t0}


def hamming_spread(model_dir: str, examples: str, n: int = 2000) -> dict:
    """Mean Hamming distance between gallery codes of images that share a label (intra-class) and of
    images that share none (inter-class), over the first n gallery images."""
    import numpy as np

    from components.evaluate import SavedModelEncoders, encode_split
    from components.metrics import unpack_bits

    enc = SavedModelEncoders(model_dir)
    g = encode_split(examples, "gallery", "hr", enc.gallery, limit=n)
    b = unpack_bits(g.codes, int(enc.meta["bits"]))
    dist = (b.shape[1] - b @ b.T) / 2.0
    similar = (g.labels @ g.labels.T) > 0
    off = ~np.eye(len(b), dtype=bool)
    return {"intra": float(dist[similar & off].mean()), "inter": float(dist[~similar].mean()), "images": len(b)}


def run_row(examples: str, preset_dict: dict, run_dir: str, topk: int, spread: bool = False) -> dict:
    """One table cell: train, export and evaluate a preset (in a fresh worker process)."""
    from components.evaluate import AP_FILE, evaluate_model
    from dsrhn.config import preset_from_dict
    from trainer.task import train_and_export

    t0 = time.time()
    summary = train_and_export(examples, preset_from_dict(preset_dict), os.path.join(run_dir, "work"),
                               os.path.join(run_dir, "model"), verbose=0)
    report = evaluate_model(os.path.join(run_dir, "model"), examples, os.path.join(run_dir, "eval"),
                            topk=topk, plots=False, curves=False)
    out = {"map": report["map"], "map_hr_query": report["hr_query"][f"map@{topk}"],
           "train_seconds": summary["seconds"], "seconds": time.time() - t0,
           "sr_quality": report.get("sr_quality"), "ap_file": os.path.join(run_dir, "eval", AP_FILE)}
    if spread:
        out["hamming"] = hamming_spread(os.path.join(run_dir, "model"), examples)
    return out


def table_runs(table2: bool) -> list[tuple[str, str, str]]:
    """(row name, mode, hash loss) of the Table 1 rows, plus the DCH/DHN rows of Table 2 when asked."""
    runs = [(name, mode, "dpsh") for name, mode in ROWS]
    return runs + ([(name, "hashnet-lr", loss) for name, loss in TABLE2 if loss != "dpsh"] if table2 else [])


def cell(results: dict, mode: str, loss: str, bits: int, field: str = "map") -> list[float]:
    """A table cell's values over the seeds run so far (keys mode/loss/bits/seedN)."""
    prefix = f"{mode}/{loss}/{bits}/seed"
    return [v[field] for k, v in sorted(results.items()) if k.startswith(prefix)]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fmt(values: list[float], signed: bool = False) -> str:
    """Mean, with the spread (max - min) when there are several seeds."""
    if not values:
        return "  -   "
    text = f"{mean(values):+.4f}" if signed else f"{mean(values):.4f}"
    return text + (f" ±{(max(values) - min(values)) / 2:.4f}" if len(values) > 1 else "")


def query_aps(results: dict, mode: str, bits: int):
    """A cell's per-query AP@topk (its queries' input), averaged over its seeds; None if not recorded."""
    import numpy as np

    runs = [v for k, v in sorted(results.items()) if k.startswith(f"{mode}/dpsh/{bits}/seed")]
    if not runs or not all(os.path.exists(v.get("ap_file", "")) for v in runs):
        return None
    return np.mean([np.load(v["ap_file"])["lr_query"] for v in runs], axis=0)


def gap_closure(results: dict, bits: int) -> dict | None:
    """(DSRHN - HashNet-LR) / (HashNet-HR - HashNet-LR) with a 90% paired bootstrap interval over the
    queries (all rows are evaluated on the same queries), or None while a row is missing."""
    from components.metrics import gap_closure_interval

    aps = [query_aps(results, m, bits) for m in ("hashnet-lr", "dsrhn", "hashnet-hr")]
    if any(a is None for a in aps):
        return None
    return gap_closure_interval(*aps)


def row_closure(results: dict, row: str, bits: int) -> dict | None:
    """(row - HashNet-LR) / (HashNet-HR - HashNet-LR), with the same paired bootstrap as gap_closure."""
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


class Runner:
    """Runs tasks up to `jobs` at a time, each in a fresh spawned worker process, so no run inherits
    another's TensorFlow state (traced graphs, cached datasets, allocator): in one long-lived process
    the later rows of a 57-minute run slowed down (48-bit HashNet-LR 167 s; 92 s in a fresh process)."""

    def __init__(self, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.jobs = jobs
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)

    def run(self, tasks: list, on_done) -> None:
        """tasks: (priority, name, fn, args, unlocks) with unlocks a list of tasks made ready by
        this one finishing. on_done(name, result) is called in the main process as each ends."""
        from concurrent.futures import FIRST_COMPLETED, wait

        ready = sorted(tasks, key=lambda t: t[0])
        running = {}
        while ready or running:
            while ready and len(running) < self.jobs:
                task = ready.pop(0)
                running[self.pool.submit(task[2], *task[3])] = task
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                _, name, _, _, unlocks = running.pop(future)
                on_done(name, future.result())
                ready = sorted(ready + unlocks, key=lambda t: t[0])

    def close(self) -> None:
        self.pool.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/table1")
    ap.add_argument("--bits", default="12,24,32,48")
    ap.add_argument("--steps", type=int, default=360, help="HashNet updates per run")
    ap.add_argument("--epochs", type=int, default=4, help="epochs; steps are split across them")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-query", type=int, default=5000, help="query mosaics (MS-COCO protocol: 5,000)")
    ap.add_argument("--n-gallery", type=int, default=10000)
    ap.add_argument("--lr-blur", type=float, default=2.0,
                    help="Gaussian blur sigma (HR pixels) before the x4 bicubic downsampling that makes the LR "
                         "partners (0: bicubic only)")
    ap.add_argument("--degradation", default="fixed", choices=["fixed", "blind"],
                    help="training LR of every row: fixed (the stored partners, the paper's setting) or blind "
                         "(the cpu preset's random degradations); queries are the stored LR either way")
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=1,
                    help="runs per cell with seeds 0..N-1; the tables show the means (± half the spread)")
    ap.add_argument("--no-table2", action="store_true")
    ap.add_argument("--table3", action="store_true",
                    help="also the other seed methods (point-wise +- segmentation, center loss and its control) at "
                         "--bits, with HashNet-LR's intra/inter-class Hamming distances for comparison")
    ap.add_argument("--table2-bits", default="12", help="bit lengths for the DHN/DCH rows")
    ap.add_argument("--stage1-steps", type=int, default=0, help="SRNet MSE updates of stage 1 (default: 2 x --steps)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs side by side, each in its own process (for machines with more cores; on 2 cores "
                         "two at a time ran each ~2.05-2.1x slower, no gain)")
    args = ap.parse_args()

    from components.ingest import run_ingest
    from dsrhn.config import LRConfig, get_preset

    t_start = time.time()
    examples = os.path.join(args.out, "examples")
    source = {"kind": "fashion-mnist-mosaic", "n_train": args.n_train, "n_query": args.n_query,
              "n_gallery": args.n_gallery}
    lr_config = LRConfig(scale=4, blur_sigma=args.lr_blur)
    ingest = {"source": source, "hr_size": 56, "lr": dataclasses.asdict(lr_config), "records": "with masks"}
    ingest_record = os.path.join(args.out, "ingest.json")  # what examples/ was made from
    made_from = None
    if os.path.exists(ingest_record):
        with open(ingest_record) as f:
            made_from = json.load(f)
    if made_from != ingest or not os.path.exists(os.path.join(examples, "dsrhn_dataset.json")):
        shutil.rmtree(examples, ignore_errors=True)
        s = run_ingest(source, examples, 56, lr_config)
        print(s.console(), flush=True)
        with open(ingest_record, "w") as f:
            json.dump(ingest, f)
    bits_list = [int(b) for b in args.bits.split(",")]
    results_path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    # cached rows (and run directories, which training resumes from) are reused only when they
    # were made with these settings
    stage1_steps = args.stage1_steps or 2 * args.steps
    cpu = get_preset("cpu", **{"degradation.kind": args.degradation})
    from cache import code_digest

    settings = {"steps": args.steps, "epochs": args.epochs, "cpu_preset": json.loads(json.dumps(cpu.to_dict())),
                "srnet_init": "stage1 (MSE) for two-stage and dsrhn", "hash_batch": "joint [HR; query]",
                "stage1_steps": stage1_steps, "keys": "mode/loss/bits/seedN", "ingest": ingest,
                "code": code_digest((os.path.abspath(__file__),))}  # another code version: every row is retrained
    if results.get("_settings") != settings:
        if results:
            print(f"{results_path} was made with other settings; retraining every row", flush=True)
        for name in os.listdir(args.out):
            if name not in ("examples", "ingest.json"):
                path = os.path.join(args.out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        results = {"_settings": settings}
    steps_per_epoch = max(1, args.steps // args.epochs)
    stage1_srnet = os.path.join(args.out, "stage1.srnet.weights.h5")
    table2_bits = [int(b) for b in args.table2_bits.split(",")] if args.table2_bits else bits_list
    independent, after_stage1 = [], []
    for bits in bits_list:
        runs = table_runs(not args.no_table2 and bits in table2_bits)
        for (name, mode, loss), seed in itertools.product(runs, range(args.seeds)):
            key = f"{mode}/{loss}/{bits}/seed{seed}"
            if key in results:
                continue
            preset = cpu.replace(mode=mode, hash_loss=loss, bits=bits, epochs=args.epochs,
                                 steps_per_epoch=steps_per_epoch, seed=seed,
                                 srnet_weights=stage1_srnet if mode in ("two-stage", "dsrhn") else "")
            task = (PRIORITY[mode], (key, name), run_row,
                    (examples, preset.to_dict(), os.path.join(args.out, key.replace("/", "-")), args.topk,
                     args.table3 and mode == "hashnet-lr" and loss == "dpsh"), [])
            (after_stage1 if preset.srnet_weights else independent).append(task)
        for (row, name, mode, options), seed in itertools.product(TABLE3 if args.table3 else [], range(args.seeds)):
            key = f"{row}/dpsh/{bits}/seed{seed}"
            if key in results:
                continue
            preset = cpu.replace(mode=mode, bits=bits, epochs=args.epochs, steps_per_epoch=steps_per_epoch, seed=seed,
                                 options=options)
            independent.append((PRIORITY.get(mode, 3), (key, name), run_row,
                                (examples, preset.to_dict(), os.path.join(args.out, key.replace("/", "-")), args.topk,
                                 True), []))
    if os.path.exists(stage1_srnet):
        tasks = independent + after_stage1
    else:
        stage1 = (PRIORITY["stage1"], ("stage1", None), train_stage1,
                  (examples, args.epochs, max(1, stage1_steps // args.epochs), os.path.join(args.out, "stage1"),
                   stage1_srnet, args.degradation), after_stage1)
        tasks = [stage1] + independent

    def on_done(task_name, out: dict) -> None:
        key, name = task_name
        if key == "stage1":
            results["stage1_seconds"] = out["seconds"]
            print(f"stage 1: SRNet by MSE, {stage1_steps} steps ({out['seconds']:.0f} s)", flush=True)
        else:
            from cache import stamp

            results[key] = {"name": name, **out, **stamp()}
            _, loss, bits, seed = key.split("/")
            print(f"{name:<20} {loss:<5} {bits:>2} bits {seed:<6} mAP@{args.topk} {out['map']:.4f}  "
                  f"({out['seconds']:.0f} s)", flush=True)
        _save(results, results_path)

    runner = Runner(args.jobs)
    try:
        runner.run(tasks, on_done)
    finally:
        runner.close()
    results["jobs"] = args.jobs
    closures = {b: gap_closure(results, b) for b in bits_list}
    results["gap_closure"] = {str(b): c for b, c in closures.items()}
    _save(results, results_path)
    print_tables(results, closures, bits_list, args, time.time() - t_start)
    from components.plots import map_vs_bits

    means = {name: {b: mean(cell(results, mode, loss, b)) for b in bits_list}
             for name, mode, loss in table_runs(not args.no_table2)}
    if args.table3:
        means.update({name: {b: mean(cell(results, row, "dpsh", b)) for b in bits_list} for row, name, _, _ in TABLE3})
    rows = {name: {b: m for b, m in by_bits.items() if m is not None} for name, by_bits in means.items()}
    map_vs_bits(rows, os.path.join(args.out, "map_vs_bits.png"), f"mAP@{args.topk} vs bits (LR queries)")
    print(f"plot: {os.path.join(args.out, 'map_vs_bits.png')}")


def print_tables(results: dict, closures: dict, bits_list: list[int], args, seconds: float) -> None:
    def row(name, mode, loss="dpsh"):
        return f"| {name:<20} | " + " | ".join(fmt(cell(results, mode, loss, b)) for b in bits_list) + " |"

    head = "| method               | " + " | ".join(f"{b} bits" for b in bits_list) + " |"
    sep = "|" + "---|" * (len(bits_list) + 1)
    print(f"\nTable 1 (LR queries; HashNet-HR: HR queries), mAP@{args.topk}, Fashion-MNIST mosaic, cpu preset, "
          f"{args.steps} HashNet steps/run, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"{seconds / 60:.1f} min, {args.jobs} run(s) at a time, seeds 0..{args.seeds - 1}")
    when = sorted(v["computed"] for v in results.values() if isinstance(v, dict) and "computed" in v)
    if when:
        print(f"rows computed {when[0]} .. {when[-1]} on {platform.node()}, all with settings and code "
              f"{results['_settings']['code']} (another code version retrains every row)")
    print(head)
    print(sep)
    for name, mode in ROWS:
        print(row(name, mode))
    print("| gap closure [90% CI] | " + " | ".join(fmt_closure(closures[b]) for b in bits_list) + " |")
    print("| HR - LR gap [90% CI] | " + " | ".join(
        f"{c['gap']:+.4f} [{c['gap_interval'][0]:+.4f}, {c['gap_interval'][1]:+.4f}]" if c else "  -   "
        for c in closures.values()) + " |")
    print(f"| P(closure >= 0.97)   | " + " | ".join(f"{c['p_goal']:.2f}" if c else "  -   " for c in closures.values()) + " |")
    print("(paired bootstrap over the queries, 2000 resamples: how far the query sample alone moves the "
          "closure; seed-to-seed variation of training is not in it, `--seeds N` averages that)")
    print(f"\nLR penalty: mAP@{args.topk} of the same model with HR queries minus with LR queries (gallery HR)")
    print(head)
    print(sep)
    for name, mode in ROWS[:3]:
        penalty = [[h - q for h, q in zip(cell(results, mode, "dpsh", b, "map_hr_query"), cell(results, mode, "dpsh", b))]
                   for b in bits_list]
        print(f"| {name:<20} | " + " | ".join(fmt(v, signed=True) for v in penalty) + " |")
    if not args.no_table2:
        print(f"\nTable 2 (LR queries, no SR), mAP@{args.topk}")
        print(head)
        print(sep)
        for name, loss in TABLE2:
            print(row(name, "hashnet-lr", loss))
        print(row("DSRHN", "dsrhn"))
    if args.table3:
        print(f"\nTable 3: the other seed methods (LR queries), mAP@{args.topk}; "
              "closure = (row - HashNet-LR) / (HashNet-HR - HashNet-LR)")
        print(head)
        print(sep)
        for r, name, _, _ in TABLE3:
            print(row(name, r))
        print(row("HashNet-LR (DPSH)", "hashnet-lr"))
        print(row("DSRHN", "dsrhn"))
        print("| closure of each row  | " + " | ".join(" ".join(
            f"{r}:{fmt_closure(row_closure(results, r, b))}" for r, _, _, _ in TABLE3) for b in bits_list) + " |")
        print("\nMean Hamming distance between gallery codes, sharing a label (intra) / sharing none (inter), "
              "first 2,000 gallery images")
        for r, name in [(r, n) for r, n, _, _ in TABLE3] + [("hashnet-lr", "HashNet-LR (DPSH)")]:
            cells = []
            for b in bits_list:
                h = [v["hamming"] for k, v in sorted(results.items()) if k.startswith(f"{r}/dpsh/{b}/seed") and "hamming" in v]
                cells.append(f"{mean([x['intra'] for x in h]):.2f} / {mean([x['inter'] for x in h]):.2f}" if h else "  -   ")
            print(f"| {name:<34} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
