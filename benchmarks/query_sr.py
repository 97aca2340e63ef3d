"""Pretrained SR at query time: does a real-world generator (trainer/sr_weights.py) pay in front of a trained
HashNet-LR on held-out photos, alone or voting with the bicubic query?

It reads what benchmarks/real_photos.py left: each --runs folder (one per seed) holds a trained HashNet-LR row of
the instance set and its query grid. For each generator, every query of every cell goes through the export's
query path (to_hr_space, then RRDBNet at hr_size / 4: trainer.models.PretrainedSR), rounded to 8 bits as the
`super_resolve` signature returns it, once (cached in --cache, keyed on the grid and the code); then each seed's
HashNet-LR encodes the bicubic query, the SR query, and their fused logits (bicubic + w * SR, w in --fuse: what
`two-stage` with options.hash_views=bicubic and options.query_fuse=true serves at w = 1). No training: the
generators are used as they are, and HashNet never saw an SR image.

Printed per cell: HashNet-LR's mAP (the seed mean), each query path's difference to it with a 90% paired
bootstrap interval over the queries (seed means) and the difference seed by seed; a summary per path (cells
above, the worst cell).

    python benchmarks/real_photos.py --rows hashnet-lr --no-labelled --out runs/photos45 [--set seed=1 ...]
    python benchmarks/query_sr.py --runs runs/photos45,runs/photos45-s1,runs/photos45-s2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchlib.cache import REPO, code_digest, row_key
from benchlib.grid import grid_cells
from components.metrics import average_precisions, diff_interval, pack_bits

# the code an SR'd query depends on: the query path's resize and rounding, the generator and its weights' reader
SR_CODE = tuple(
    os.path.join(REPO, f)
    for f in ("dsrhn/degrade.py", "trainer/export.py", "trainer/models.py", "trainer/sr_weights.py")
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="real_photos.py --out folders, comma-separated (one per seed)")
    ap.add_argument("--generators", default="realsr-df2k", help="trainer/sr_weights.py SOURCES, comma-separated")
    ap.add_argument("--fuse", default="1,0.5", help="weights w of the SR logits in bicubic + w * SR, comma-separated")
    ap.add_argument("--cache", default="runs/query-sr", help="the SR'd query cells, per generator")
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--cells", default=",".join(grid_cells()), help="the grid's cells, comma-separated")
    return ap.parse_args()


def hr_space(uri: str, split: str, field: str, hr_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A split's images brought to HR size as the export does (decode, to_hr_space), and its labels."""
    import tensorflow as tf

    from dsrhn.records import DatasetInfo, read_split_raw
    from trainer.export import decode_hr_space

    images, labels = [], []
    for b in read_split_raw(uri, split, DatasetInfo.read(uri)).batch(256).as_numpy_iterator():
        images.append(decode_hr_space(tf.constant(b[field]), hr_size).numpy())
        labels.append(b["labels"])
    return np.concatenate(images), np.concatenate(labels)


def hashnet_lr(run: str):
    """(HashNet-LR's Keras net with its trained weights, its preset) of a real_photos.py run folder."""
    from dsrhn.config import preset_from_dict
    from dsrhn.contracts import read_metadata
    from trainer.models import HashNet

    with open(os.path.join(run, "results.json")) as f:
        key = json.load(f)["instance/hashnet-lr"]["key"]
    folder = os.path.join(run, "instance")
    preset = preset_from_dict(read_metadata(os.path.join(folder, "hashnet-lr", "model"))["preset"])
    net = HashNet(preset)
    net.load_weights(os.path.join(folder, f"hashnet-lr-{key}.hashnet.weights.h5"))
    return net, preset


def super_resolved(generator: str, preset, grid: str, cell: str, cache: str, images: np.ndarray) -> np.ndarray:
    """The cell's queries through PretrainedSR, as uint8 (cached: the grid's made-from record and the code)."""
    with open(os.path.join(os.path.dirname(grid), "made-from.json")) as f:
        made = json.load(f)
    key = row_key({"grid": made, "generator": generator, "hr": preset.hr_size}, code_digest(SR_CODE, dirs=()))
    path = os.path.join(cache, generator, f"{cell}-{key}.npy")
    if os.path.exists(path):
        return np.load(path)
    import tensorflow as tf

    from trainer.export import to_uint8
    from trainer.models import SRNet
    from trainer.pretrained import load_weights_strict
    from trainer.sr_weights import weights_path

    net = SRNet(preset.replace(method="two-stage", sr_arch="rrdb", sr_weights=generator))
    load_weights_strict(net, weights_path(generator))
    run = tf.function(lambda x: net(x, training=False))
    t0 = time.time()
    out = np.concatenate([to_uint8(run(images[i : i + 16])).numpy() for i in range(0, len(images), 16)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path + ".tmp.npy", out)
    os.replace(path + ".tmp.npy", path)
    print(f"{generator} {cell}: {len(images)} queries super-resolved in {time.time() - t0:.0f} s", flush=True)
    return out


def logits(net, images: np.ndarray) -> np.ndarray:
    return np.concatenate([net(images[i : i + 64], training=False)["code"].numpy() for i in range(0, len(images), 64)])


def cell_aps(args, run: str, net, preset, gallery: tuple, cell: str) -> dict:
    """Per-query AP@topk of every query path on one cell, for one seed's HashNet-LR ((codes, labels) of its
    gallery)."""
    folder = os.path.join(run, "instance")
    q_x, q_lab = hr_space(os.path.join(folder, "grid", cell), "query", "lr", preset.hr_size)
    l_bic = logits(net, q_x)
    paths = {"bicubic": l_bic}
    for gen in args.generators.split(","):
        sr = super_resolved(gen, preset, os.path.join(folder, "grid"), cell, args.cache, q_x).astype(np.float32)
        l_sr = logits(net, sr / 255.0)
        paths[f"{gen} alone"] = l_sr
        for w in map(float, args.fuse.split(",")):
            paths[f"{gen} fused w={w:g}"] = l_bic + w * l_sr
    return {p: average_precisions(pack_bits(v), gallery[0], q_lab, gallery[1], args.topk)[0] for p, v in paths.items()}


def print_table(aps: dict, cells: list[str]) -> None:
    """aps[seed][cell][path] -> per-query APs: the table and a summary per query path."""
    paths = [p for p in aps[0][cells[0]] if p != "bicubic"]
    print("| cell | HashNet-LR (bicubic) | " + " | ".join(paths) + " |")
    print("|---" * (len(paths) + 2) + "|")
    diffs = {p: [] for p in paths}
    for cell in cells:
        base = np.mean([a[cell]["bicubic"] for a in aps], axis=0)
        parts = []
        for p in paths:
            m = np.mean([a[cell][p] for a in aps], axis=0)
            d, lo, hi = diff_interval(base, m)
            diffs[p].append((d, cell))
            seeds = " / ".join(f"{a[cell][p].mean() - a[cell]['bicubic'].mean():+.3f}" for a in aps)
            parts.append(f"{m.mean():.4f}, {d:+.4f} [{lo:+.4f}, {hi:+.4f}] ({seeds})")
        print(f"| {cell} | {base.mean():.4f} | " + " | ".join(parts) + " |")
    summary = [f"{sum(d > 0 for d, _ in v)}/{len(v)} above, worst {min(v)[1]} {min(v)[0]:+.4f}" for v in diffs.values()]
    print("| summary | | " + " | ".join(summary) + " |")


def main() -> None:
    args = parse_args()
    t0 = time.time()
    runs = [r for r in args.runs.split(",") if r]
    cells = [c for c in args.cells.split(",") if c]
    aps = []
    for run in runs:
        net, preset = hashnet_lr(run)
        g_x, g_lab = hr_space(os.path.join(run, "instance", "examples"), "gallery", "hr", preset.hr_size)
        gallery = (pack_bits(logits(net, g_x)), g_lab)
        aps.append({cell: cell_aps(args, run, net, preset, gallery, cell) for cell in cells})
        print(f"{run}: scored ({time.time() - t0:.0f} s)", flush=True)
    print(
        f"\n## Pretrained SR at query time, HashNet-LR ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"{(time.time() - t0) / 60:.1f} min; {len(runs)} seed(s), mAP@{args.topk}; difference to HashNet-LR "
        "[90% CI] (per seed))\n"
    )
    print_table(aps, cells)


if __name__ == "__main__":
    main()
