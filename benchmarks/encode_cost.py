"""Encode cost of a query, per method: multiply-accumulates of the query path (counted from the layers)
and measured images/s on this machine, for the cpu preset (56 px) and the paper preset (224 px).
The named baseline is DSRHN (pixel SR: SRNet, then HashNet); every ratio is against it, same run.

    python benchmarks/encode_cost.py                       # dsrhn, fsr-gan, hashnet-lr; cpu and paper
    python benchmarks/encode_cost.py --presets cpu --batches 3
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def layer_macs(model) -> int:
    """Multiply-accumulates of one forward pass of a Keras model (Conv2D and Dense layers; the rest is
    comparatively free), from the layers' output shapes; nested models are counted through."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k = layer.kernel.shape
            total += int(h) * int(w) * int(k[0]) * int(k[1]) * int(k[2]) * int(c_out)
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return total


def query_macs(method, nets: dict) -> int:
    """MACs of the query path: the networks a query passes through."""
    path = method.query_path
    if path == "sr":
        return layer_macs(nets["srnet"]) + layer_macs(nets["hashnet"])
    if path == "fsr":
        return layer_macs(nets["hashnet"]) + layer_macs(nets["generator"])
    return layer_macs(nets["hashnet"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="dsrhn,fsr-gan,hashnet-lr")
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=5, help="timed batches after one warm-up batch")
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    from dsrhn.config import get_preset
    from dsrhn.records import DatasetInfo
    from trainer.train import build_method

    print(f"encode cost of one query, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"batch {args.batch}, baseline DSRHN (pixel SR) in the same run")
    print("| preset | method | query path | GMACs/query | x DSRHN | images/s | x DSRHN |")
    print("|---|---|---|---|---|---|---|")
    for preset_name in args.presets.split(","):
        rows = {}
        for mode in args.methods.split(","):
            preset = get_preset(preset_name, mode=mode, bits=48)
            info = DatasetInfo(source="bench", label_names=[str(i) for i in range(10)], hr_size=preset.hr_size,
                               lr_size=preset.lr_size, scale=preset.scale)
            method = build_method(preset, info)
            nets = method.networks()
            fn = tf.function(lambda x, m=method, n=nets: m.query_code_logits(n, x))
            x = tf.constant(np.random.default_rng(0).random((args.batch, preset.hr_size, preset.hr_size, 3)), tf.float32)
            fn(x).numpy()  # trace + warm-up
            t0 = time.perf_counter()
            for _ in range(args.batches):
                fn(x).numpy()
            rate = args.batch * args.batches / (time.perf_counter() - t0)
            rows[mode] = (method.query_path, query_macs(method, nets) / 1e9, rate)
        base = rows.get("dsrhn")
        for mode, (path, gmacs, rate) in rows.items():
            rel = (f"{gmacs / base[1]:.3f}", f"{rate / base[2]:.2f}") if base else ("-", "-")
            print(f"| {preset_name} | {mode} | {path} | {gmacs:.3f} | {rel[0]} | {rate:.1f} | {rel[1]} |", flush=True)


if __name__ == "__main__":
    main()
