"""Does a pretrained SR generator's gain depend on how large, and how made, the HR image is? PSNR-Y of RealSR /
Real-ESRGAN x4 against the named baseline, bicubic x4 up, measured in the same run on the same LR images.

For each held-out photo (`dsrhn photos`: data/photos/test) and HR side S, two ways of making the HR image:
    crop    the centre S x S of the photo at its own resolution (camera pixels: what Set5-style benchmarks hold)
    whole   the whole photo's centre square downscaled to S (what benchmarks/real_photos.py's views are: a
            thumbnail, every pixel dense with detail)
LR = the HR downscaled x4 (PIL bicubic, antialiased); SR = the generator on the LR, fed directly (no round trip).
Prints the mean and range of PSNR-Y(SR) - PSNR-Y(bicubic) per (way, S), border 4 px.

    python benchmarks/sr_scale.py                          # 12 photos, S = 96, 192, 384, RealSR DF2K
    python benchmarks/sr_scale.py --photos 33 --weights realsr-df2k,realesrgan-x4plus
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BORDER = 4


def hr_views(photo: Image.Image, side: int) -> dict[str, Image.Image]:
    w, h = photo.size
    out = {}
    if min(w, h) >= side:
        left, top = (w - side) // 2, (h - side) // 2
        out["crop"] = photo.crop((left, top, left + side, top + side))
    m = min(w, h)
    square = photo.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
    out["whole"] = square.resize((side, side), Image.BICUBIC, reducing_gap=None)
    return out


def main() -> None:
    import keras

    from components.metrics import psnr_y
    from dsrhn.config import data_dir
    from trainer.models import RRDBNet
    from trainer.pretrained import load_weights_strict
    from trainer.sr_weights import weights_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--sides", default="96,192,384")
    ap.add_argument("--weights", default="realsr-df2k")
    ap.add_argument("--root", default=os.path.join(data_dir(), "photos", "test"))
    args = ap.parse_args()
    files = sorted(os.listdir(args.root))[: args.photos]
    sides = [int(s) for s in args.sides.split(",")]
    for name in args.weights.split(","):
        net = RRDBNet()
        load_weights_strict(net, weights_path(name))
        gains: dict[tuple, list] = {}
        t0 = time.perf_counter()
        for f in files:
            photo = Image.open(os.path.join(args.root, f)).convert("RGB")
            for side in sides:
                for way, hr in hr_views(photo, side).items():
                    lr = hr.resize((side // 4, side // 4), Image.BICUBIC)
                    bic = np.asarray(lr.resize((side, side), Image.BICUBIC), np.float32)
                    x = np.asarray(lr, np.float32)[None] / 255.0
                    sr = np.clip(np.round(keras.ops.convert_to_numpy(net(x, training=False))[0] * 255), 0, 255)
                    ref = np.asarray(hr, np.float32)
                    gains.setdefault((way, side), []).append(psnr_y(sr, ref, BORDER) - psnr_y(bic, ref, BORDER))
        print(
            f"{name}: PSNR-Y gain over bicubic x4 (baseline), {len(files)} held-out photos, "
            f"{time.perf_counter() - t0:.0f} s"
        )
        print("| HR made by | S | photos | mean dB | min | max |\n|---|---|---|---|---|---|")
        for (way, side), g in sorted(gains.items()):
            print(f"| {way} | {side} | {len(g)} | {np.mean(g):+.2f} | {np.min(g):+.2f} | {np.max(g):+.2f} |")


if __name__ == "__main__":
    main()
