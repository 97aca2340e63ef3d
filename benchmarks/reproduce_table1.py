"""Reproduce the DSRHN paper's Table 1 (ablation) and Table 2 (baseline losses) on the
embedded multi-label Fashion-MNIST mosaic data, cpu preset.

Rows: HashNet-LR, two-stage SR->hash (the paper's HashNet-SRGAN row), DSRHN, HashNet-HR,
at 12/24/32/48 bits; queries are LR (HR for HashNet-HR). Every row gets the same number of
HashNet updates. Stage 1 (SRNet trained by MSE alone, as many updates) does not depend on the
bit length: it is trained once, frozen by the two-stage rows and the starting SRNet of the DSRHN
rows (the way SRGAN starts from an MSE-trained SRResNet; the paper's HashNet starts from
ImageNet weights instead, which we cannot download). Table 2 rows: HashNet-LR trained
with the DPSH, DHN and DCH losses. Prints the tables and the gap closure
(DSRHN - HashNet-LR) / (HashNet-HR - HashNet-LR) per bit length.

    python benchmarks/reproduce_table1.py                 # defaults: 18 runs, 360 steps each
    python benchmarks/reproduce_table1.py --steps 40 --bits 12 --no-table2   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time

ROWS = [("HashNet-LR", "hashnet-lr"), ("Two-stage SR->hash", "two-stage"), ("DSRHN", "dsrhn"), ("HashNet-HR", "hashnet-hr")]
TABLE2 = [("DCH", "dch"), ("DHN", "dhn"), ("DPSH", "dpsh")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/table1")
    ap.add_argument("--bits", default="12,24,32,48")
    ap.add_argument("--steps", type=int, default=360, help="HashNet updates per run (SRNet gets as many)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs; steps are split across them")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--n-gallery", type=int, default=10000)
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument("--no-table2", action="store_true")
    ap.add_argument("--table2-bits", default="12", help="bit lengths for the DHN/DCH rows")
    args = ap.parse_args()

    from components.evaluate import evaluate_model
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig, get_preset
    from trainer.task import train_and_export
    from trainer.train import train

    t_start = time.time()
    examples = os.path.join(args.out, "examples")
    if not os.path.exists(os.path.join(examples, "dsrhn_dataset.json")):
        s = run_ingest({"kind": "fashion-mnist-mosaic", "n_train": args.n_train, "n_query": args.n_query,
                        "n_gallery": args.n_gallery}, examples, 56, LRConfig(scale=4))
        print(s.console(), flush=True)
    bits_list = [int(b) for b in args.bits.split(",")]
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    # cached rows (and run directories, which training resumes from) are reused only when they
    # were made with these settings
    settings = {"steps": args.steps, "epochs": args.epochs, "cpu_preset": get_preset("cpu").to_dict(),
                "srnet_init": "stage1 (MSE) for two-stage and dsrhn", "hash_batch": "joint [HR; query]"}
    if results.get("_settings") != settings:
        if results:
            print(f"{results_path} was made with other settings; retraining every row", flush=True)
        for name in os.listdir(args.out):
            if name != "examples":
                path = os.path.join(args.out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        results = {"_settings": settings}
    steps_per_epoch = max(1, args.steps // args.epochs)
    stage1_srnet = os.path.join(args.out, "stage1.srnet.weights.h5")
    if not os.path.exists(stage1_srnet):
        t0 = time.time()
        stage1 = train(examples, get_preset("cpu", mode="two-stage", epochs=args.epochs, steps_per_epoch=steps_per_epoch),
                       os.path.join(args.out, "stage1"), verbose=0, tensorboard=False, stop_after_epochs=args.epochs)
        stage1.trainer.srnet.save_weights(stage1_srnet)
        results["stage1_seconds"] = time.time() - t0
        print(f"stage 1: SRNet by MSE, {args.steps} steps ({time.time() - t0:.0f} s)", flush=True)
    table2_bits = [int(b) for b in args.table2_bits.split(",")] if args.table2_bits else bits_list
    for bits in bits_list:
        runs = [(name, mode, "dpsh") for name, mode in ROWS]
        if not args.no_table2 and bits in table2_bits:
            runs += [(name, "hashnet-lr", loss) for name, loss in TABLE2 if loss != "dpsh"]
        for name, mode, loss in runs:
            key = f"{mode}/{loss}/{bits}"
            if key in results:
                continue
            preset = get_preset("cpu", mode=mode, hash_loss=loss, bits=bits, epochs=args.epochs,
                                steps_per_epoch=steps_per_epoch,
                                srnet_weights=stage1_srnet if mode in ("two-stage", "dsrhn") else None)
            run_dir = os.path.join(args.out, key.replace("/", "-"))
            t0 = time.time()
            summary = train_and_export(examples, preset, os.path.join(run_dir, "work"), os.path.join(run_dir, "model"), verbose=0)
            report = evaluate_model(os.path.join(run_dir, "model"), examples, os.path.join(run_dir, "eval"),
                                    topk=args.topk, plots=False)
            results[key] = {"name": name, "map": report["map"], "map_hr_query": report["hr_query"][f"map@{args.topk}"],
                            "train_seconds": summary["seconds"], "seconds": time.time() - t0,
                            "sr_quality": report.get("sr_quality")}
            json.dump(results, open(results_path, "w"), indent=2)
            print(f"{name:<20} {loss:<5} {bits:>2} bits  mAP@{args.topk} {report['map']:.4f}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
    print_tables(results, bits_list, args, time.time() - t_start)
    from components.plots import map_vs_bits

    rows = {name: {b: results[f"{mode}/dpsh/{b}"]["map"] for b in bits_list if f"{mode}/dpsh/{b}" in results}
            for name, mode in ROWS}
    if not args.no_table2:
        rows.update({name: {b: results[f"hashnet-lr/{loss}/{b}"]["map"] for b in bits_list
                            if f"hashnet-lr/{loss}/{b}" in results} for name, loss in TABLE2 if loss != "dpsh"})
    map_vs_bits(rows, os.path.join(args.out, "map_vs_bits.png"), f"mAP@{args.topk} vs bits (LR queries)")
    print(f"plot: {os.path.join(args.out, 'map_vs_bits.png')}")


def print_tables(results: dict, bits_list: list[int], args, seconds: float) -> None:
    def row(name, mode, loss="dpsh"):
        vals = [results.get(f"{mode}/{loss}/{b}", {}).get("map") for b in bits_list]
        return f"| {name:<20} | " + " | ".join(f"{v:.4f}" if v is not None else "  -   " for v in vals) + " |"

    head = "| method               | " + " | ".join(f"{b} bits" for b in bits_list) + " |"
    sep = "|" + "---|" * (len(bits_list) + 1)
    print(f"\nTable 1 (LR queries; HashNet-HR: HR queries), mAP@{args.topk}, Fashion-MNIST mosaic, cpu preset, "
          f"{args.steps} HashNet steps/run, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"{seconds / 60:.1f} min")
    print(head)
    print(sep)
    for name, mode in ROWS:
        print(row(name, mode))
    gaps = []
    for b in bits_list:
        g = {m: results.get(f"{m}/dpsh/{b}", {}).get("map") for m in ("hashnet-lr", "dsrhn", "hashnet-hr")}
        if None in g.values():
            gaps.append("  -   ")
        else:
            denom = g["hashnet-hr"] - g["hashnet-lr"]
            # undefined when HashNet-HR does not beat HashNet-LR (no gap to close)
            gaps.append(f"{(g['dsrhn'] - g['hashnet-lr']) / denom:.3f}" if denom > 1e-9 else "n/a (HR<=LR)")
    print("| gap closure          | " + " | ".join(gaps) + " |")
    print(f"\nLR penalty: mAP@{args.topk} of the same model with HR queries minus with LR queries (gallery HR)")
    print(head)
    print(sep)
    for name, mode in ROWS[:3]:
        vals = [results.get(f"{mode}/dpsh/{b}") for b in bits_list]
        print(f"| {name:<20} | " + " | ".join(f"{v['map_hr_query'] - v['map']:+.4f}" if v else "  -   " for v in vals) + " |")
    if not args.no_table2:
        print(f"\nTable 2 (LR queries, no SR), mAP@{args.topk}")
        print(head)
        print(sep)
        for name, loss in TABLE2:
            print(row(name, "hashnet-lr", loss))
        print(row("DSRHN", "dsrhn"))


if __name__ == "__main__":
    main()
