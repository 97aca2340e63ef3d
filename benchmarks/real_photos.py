"""Low-resolution near-duplicate retrieval on real photos available offline, with the degradation grid.

Data: scikit-image's bundled photographs (`skimage.data`; BSD-licensed or public-domain images, see
skimage.data's documentation), each photo a class. Its items are random crops (30-100 % of the area,
aspect 3:4 to 4:3), flips and colour shifts (brightness x0.75-1.25, per-channel gain x0.9-1.1,
saturation x0.6-1.4) of it: train and gallery items and queries are disjoint draws. Relevant = the
same photo; the gallery of every other photo is the distractor set. Ingested through `dsrhn ingest list`
(explicit train/query/gallery lists); LR queries per cell of the degradation grid
(benchmarks/degradation_grid.py: x2/x4/x8 x bicubic, blur 1.5, noise 8, JPEG 40, all three).

Rows (48 bits, blind degradations, the same steps for every row): HashNet-LR, DSRHN and HashNet-HR
(HR queries), each with the `small` backbone trained from scratch and with ImageNet MobileNetV2
(`hashnet=mobilenetv2`, weights from `dsrhn weights`). Reported: mAP@100 per cell, DSRHN's gap
closure (DSRHN - HashNet-LR) / (HashNet-HR - HashNet-LR) per cell, training time per row.

    python benchmarks/real_photos.py                 # about 20 min on 2 cores
    python benchmarks/real_photos.py --steps 40 --out runs/photos-smoke
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
from degradation_grid import cells, score_model, train_model  # noqa: E402

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
          "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
          "rocket", "stereo_motorcycle", "text")
BACKBONES = {"small": "small (from scratch)", "mobilenetv2": "MobileNetV2 (ImageNet)"}
MODES = {"hashnet-lr": "HashNet-LR", "dsrhn": "DSRHN", "hashnet-hr": "HashNet-HR (HR queries)"}


def photo(name: str):
    from PIL import Image
    from skimage import data

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    img = Image.fromarray(np.asarray(img))
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.split()[3])
        img = background
    return img.convert("RGB")


def variant(img, rng: np.random.Generator, size: int):
    """A random crop, flip and colour shift of `img`, resized to size x size."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    area = rng.uniform(0.3, 1.0) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(round(np.sqrt(area * aspect)))), min(h, int(round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.75, 1.25))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
    gains = rng.uniform(0.9, 1.1, 3)
    return Image.fromarray(np.clip(np.asarray(out, np.float32) * gains, 0, 255).astype(np.uint8))


def build_photos(root: str, size: int, counts: dict, seed: int) -> dict:
    """PNG variants under root/<photo>/ and one list file per role; returns {role: list path}."""
    rng = np.random.default_rng(seed)
    lines = {role: [] for role in counts}
    for c, name in enumerate(PHOTOS):
        img = photo(name)
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for role, n in counts.items():
            for i in range(n):
                rel = f"{name}/{role}_{i:03d}.png"
                variant(img, rng, size).save(os.path.join(root, rel))
                lines[role].append(rel + " " + " ".join("1" if j == c else "0" for j in range(len(PHOTOS))))
    out = {}
    for role, rows in lines.items():
        out[role] = os.path.join(root, f"{role}.txt")
        with open(out[role], "w") as f:
            f.write("\n".join(rows) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/photos")
    ap.add_argument("--hr-size", type=int, default=64)
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--steps", type=int, default=480, help="HashNet updates per row")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train", type=int, default=60, help="training variants per photo")
    ap.add_argument("--gallery", type=int, default=30, help="gallery variants per photo")
    ap.add_argument("--query", type=int, default=8, help="query variants per photo")
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--backbones", default="small,mobilenetv2")
    args = ap.parse_args()

    from components.ingest import derive_query_set, run_ingest
    from dsrhn.config import LRConfig, get_preset

    t_start = time.time()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    lists = build_photos(os.path.join(args.out, "photos"), 2 * args.hr_size,
                         {"train": args.train, "gallery": args.gallery, "query": args.query}, seed=0)
    examples = os.path.join(args.out, "examples")
    summary = run_ingest({"kind": "list", "image_root": os.path.join(args.out, "photos"), "lists": lists,
                          "label_names": list(PHOTOS)}, examples, args.hr_size, LRConfig(scale=4))
    print(summary.console(), flush=True)
    grid = {c: f for c, f in cells().items() if f}
    cell_dirs = {}
    for cell, fields in grid.items():
        cell_dirs[cell] = os.path.join(args.out, "grid", cell)
        derive_query_set(examples, cell_dirs[cell], LRConfig(**fields))
    print(f"{len(PHOTOS)} photos x ({args.train} train, {args.gallery} gallery, {args.query} query) variants at "
          f"{2 * args.hr_size} px, HR {args.hr_size} px; {len(grid)} query cells ({time.time() - t_start:.0f} s)",
          flush=True)

    results = {}
    steps_per_epoch = max(1, args.steps // args.epochs)
    for backbone in args.backbones.split(","):
        for mode in MODES:
            key = f"{backbone}/{mode}"
            preset = get_preset("cpu", mode=mode, hashnet=backbone, hr_size=args.hr_size, bits=args.bits,
                                epochs=args.epochs, steps_per_epoch=steps_per_epoch, batch_size=args.batch_size)
            run_dir = os.path.join(args.out, backbone, mode)
            trained = train_model(examples, json.loads(json.dumps(preset.to_dict())), run_dir)
            scored = score_model(trained["model"], examples, cell_dirs, args.topk, os.path.join(run_dir, "ap"),
                                 mode == "hashnet-hr")
            results[key] = {"train_seconds": trained["train_seconds"], **scored}
            print(f"{key}: trained in {trained['train_seconds']:.0f} s; "
                  + ", ".join(f"{c} {r['map']:.3f}" for c, r in list(scored["cells"].items())[:3]) + " ...", flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    minutes = (time.time() - t_start) / 60
    print(f"\n## Real photos: mAP@{args.topk}, {len(PHOTOS)} photos, {args.bits} bits, {args.steps} steps per row "
          f"({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, {minutes:.1f} min)\n")
    names = list(grid)
    print("| row | train s | " + " | ".join(names) + " | mean |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for backbone in args.backbones.split(","):
        for mode, label in MODES.items():
            r = results[f"{backbone}/{mode}"]
            if mode == "hashnet-hr":
                hr = r["cells"]["HR"]["map"]
                vals = [hr] * len(names)
            else:
                vals = [r["cells"][c]["map"] for c in names]
            print(f"| {BACKBONES[backbone]} {label} | {r['train_seconds']:.0f} | "
                  + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")
        lr, ds = results[f"{backbone}/hashnet-lr"], results[f"{backbone}/dsrhn"]
        hr = results[f"{backbone}/hashnet-hr"]["cells"]["HR"]["map"]
        closures = []
        for c in names:
            gap = hr - lr["cells"][c]["map"]
            closures.append((ds["cells"][c]["map"] - lr["cells"][c]["map"]) / gap if gap > 1e-9 else float("nan"))
        print(f"| {BACKBONES[backbone]} DSRHN gap closure | | " + " | ".join(f"{v:+.2f}" for v in closures)
              + f" | {np.nanmean(closures):+.2f} |")
    if "small/hashnet-lr" in results and "mobilenetv2/hashnet-lr" in results:
        for mode, label in MODES.items():
            a, b = results[f"small/{mode}"]["cells"], results[f"mobilenetv2/{mode}"]["cells"]
            diffs = [b[c]["map"] - a[c]["map"] for c in (["HR"] if mode == "hashnet-hr" else names)]
            print(f"pretrained - scratch, {label}: min {min(diffs):+.3f}, mean {np.mean(diffs):+.3f}")


if __name__ == "__main__":
    main()
