"""Encode cost of a query, per method: multiply-accumulates and parameters of the query path (counted from the
layers) and measured images/s on this machine, for the cpu preset (56 px) and the paper preset (224 px). The named
baseline is DSRHN (pixel SR: SRNet, then HashNet); every ratio is against it, same run.

With --work (a trained run's --work-dir) and --examples: the same trained model exported as today (the baseline) and
with its networks XLA-compiled (`dsrhn export --xla`), each called as the server calls it (encoded image bytes in,
codes out): single-query latency (p50, many calls), the fixed per-call cost (single-query latency minus the
per-image cost in a batch of 64), images/s at batch 64, and the code agreement on the Examples' queries (share of
identical bits; mAP change of the LR queries against each export's own gallery codes). --bf16 adds the same
checkpoint exported with its networks computing in bfloat16 (Keras's mixed_bfloat16 policy: float32 weights,
bfloat16 convolutions through oneDNN, codes taken in float32), plain and XLA-compiled: does bf16 inference pay on a
CPU with AVX512_BF16? (int8 is not offered: Keras quantizes Dense layers only, and HashNet's head is a small share
of a query's MACs.)

    python benchmarks/encode_cost.py                       # dsrhn, fsr-gan, hashnet-lr, student; cpu and paper
    python benchmarks/encode_cost.py --presets cpu --batches 3
    python benchmarks/encode_cost.py --presets cpu --work <main job run dir> --examples <its Examples>
    python benchmarks/encode_cost.py --presets cpu --work <run dir> --examples <its Examples> --bf16
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


def query_nets(method, nets: dict) -> list:
    """The networks a query passes through."""
    path = method.query_path
    if path == "sr":
        return [nets["srnet"], nets["hashnet"]]
    if path == "fsr":
        return [nets["hashnet"], nets["generator"]]
    return [nets.get("student", nets["hashnet"])]


def query_macs(method, nets: dict) -> int:
    """MACs of the query path: the networks a query passes through."""
    return sum(layer_macs(n) for n in query_nets(method, nets))


def query_params(method, nets: dict) -> int:
    return sum(n.count_params() for n in query_nets(method, nets))


def export_bfloat16(work: str, examples: str, out: str, xla: bool = False) -> str:
    """The run's latest checkpoint exported with its networks built under Keras's mixed_bfloat16 policy (the
    same float32 weights; convolutions and matmuls in bfloat16; the codes' sign taken in float32)."""
    import keras

    from trainer.task import export_checkpoint

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return export_checkpoint(work, examples, out, xla=xla)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def exports_for(work: str, examples: str, tmp: str, baseline_model: str | None, others: dict, bf16: bool) -> dict:
    """name -> SavedModel: the named baseline first (`baseline_model`, else this code's plain export), then the
    XLA-compiled one, the bfloat16 ones with --bf16, and `others`."""
    from trainer.task import export_checkpoint

    exports = {f"{baseline_model} (baseline, as exported)": baseline_model} if baseline_model else {}
    exports.update(
        {
            "this code's export" + ("" if baseline_model else " (baseline)"): export_checkpoint(
                work, examples, os.path.join(tmp, "plain")
            ),
            "XLA-compiled networks": export_checkpoint(work, examples, os.path.join(tmp, "xla"), xla=True),
        }
    )
    if bf16:
        exports.update(
            {
                "bfloat16 networks": export_bfloat16(work, examples, os.path.join(tmp, "bf16")),
                "bfloat16, XLA-compiled": export_bfloat16(work, examples, os.path.join(tmp, "bf16-xla"), True),
            }
        )
    exports.update(others)
    return exports


def call_times(sigs: dict, query: list[bytes], calls: int) -> tuple[dict, dict]:
    """Per export: single-query latencies (ms) and per-image ms in batches of len(query), after a warm-up."""
    import tensorflow as tf

    one, batch = tf.constant(query[:1]), tf.constant(query)
    for sig in sigs.values():
        for _ in range(5):
            sig(images=one), sig(images=batch)
    single, per_image = {n: [] for n in sigs}, {n: [] for n in sigs}
    for _ in range(6):  # the exports interleaved, so a slower minute of the machine is shared by all
        for name, sig in sigs.items():
            for _ in range(calls // 6):
                t0 = time.perf_counter()
                sig(images=one)["codes"].numpy()
                single[name].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            for _ in range(3):
                sig(images=batch)["codes"].numpy()
            per_image[name].append((time.perf_counter() - t0) * 1000 / (3 * len(query)))
    return single, per_image


def export_rows(exports: dict, examples: str, single: dict, per_image: dict) -> tuple[dict, dict]:
    """Per export: latency figures and mAP@5000 of its own codes; and its query codes' bits."""
    import statistics

    import numpy as np
    import tensorflow as tf

    from components.evaluate import encode_split
    from components.metrics import mean_average_precision

    rows, bits = {}, {}
    for name, path in exports.items():
        p50, per = statistics.median(single[name]), statistics.median(per_image[name])
        model = tf.saved_model.load(path)
        q = encode_split(
            examples, "query", "lr", lambda x, m=model: m.signatures["serving_default"](images=x)["codes"].numpy()
        )
        g = encode_split(
            examples, "gallery", "hr", lambda x, m=model: m.signatures["encode_hr"](images=x)["codes"].numpy()
        )
        bits[name] = np.unpackbits(q.codes, axis=1)
        rows[name] = {
            "p50": p50,
            "fixed": p50 - per,
            "rate": 1000 / per,
            "map": mean_average_precision(q.codes, g.codes, q.labels, g.labels, 5000),
        }
    return rows, bits


def export_execution(
    work: str,
    examples: str,
    calls: int = 300,
    baseline_model: str | None = None,
    others: dict | None = None,
    bf16: bool = False,
) -> None:
    """The run's latest checkpoint exported by this code, plain and XLA-compiled, in this run; the named baseline is
    `baseline_model` (a model as it was exported before, e.g. the main job's pushed model) or else the plain export.
    others: more exports by name (e.g. a student distilled from this run), timed and scored the same way."""
    import shutil
    import tempfile

    import tensorflow as tf

    from dsrhn.records import read_split_raw

    tmp = tempfile.mkdtemp(prefix="dsrhn-encode-")
    try:
        exports = exports_for(work, examples, tmp, baseline_model, others or {}, bf16)
        query = [bytes(r["lr"]) for r in read_split_raw(examples, "query").take(64).as_numpy_iterator()]
        sigs = {name: tf.saved_model.load(path).signatures["serving_default"] for name, path in exports.items()}
        rows, bits = export_rows(exports, examples, *call_times(sigs, query, calls))
        base_name = next(iter(rows))
        base = rows[base_name]
        print(
            f"\nexecution of one trained model ({work}), serving_default on encoded LR images, {calls} single calls "
            f"and 18 batches of 64 per export, interleaved, same run"
        )
        print(
            "| export | single query p50 ms | x baseline | fixed cost per call ms | images/s at 64 | identical bits | "
            "mAP@5000 (change) |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            same = float((bits[name] == bits[base_name]).mean())
            print(
                f"| {name} | {r['p50']:.2f} | {r['p50'] / base['p50']:.2f} | {r['fixed']:.2f} | {r['rate']:.0f} | "
                f"{same:.4f} | {r['map']:.4f} ({r['map'] - base['map']:+.4f}) |",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="dsrhn,fsr-gan,hashnet-lr,student")
    ap.add_argument("--work", help="a trained run's --work-dir: time its export, plain and XLA-compiled")
    ap.add_argument("--examples", help="the Examples the --work run trained on")
    ap.add_argument(
        "--baseline-model",
        help="with --work: an earlier export of that run (e.g. the main job's pushed "
        "model), the named baseline of the export rows",
    )
    ap.add_argument(
        "--compare-models",
        default="",
        help="with --work: more exports as NAME=PATH,... (e.g. student=<a student distilled from that run>)",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="with --work: also the run exported with bfloat16 networks, plain and XLA-compiled",
    )
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=5, help="timed batches after one warm-up batch")
    return ap.parse_args()


def method_cost(preset_name: str, method_name: str, args, teacher_dir: str) -> tuple:
    """(query path, GMACs per query, images/s, parameters in millions) of one method's query path."""
    import numpy as np
    import tensorflow as tf

    from dsrhn.config import get_preset
    from dsrhn.records import DatasetInfo
    from trainer.models import HashNet
    from trainer.train import build_method

    preset = get_preset(preset_name, method=method_name, bits=48)
    if method_name == "student":  # its teacher's shapes are all the cost needs
        teacher = os.path.join(teacher_dir, f"{preset_name}.weights.h5")
        HashNet(preset).save_weights(teacher)
        preset = preset.replace(options={"teacher_weights": teacher})
    info = DatasetInfo(
        source="bench",
        label_names=[str(i) for i in range(10)],
        hr_size=preset.hr_size,
        lr_size=preset.lr_size,
        scale=preset.scale,
    )
    method = build_method(preset, info)
    nets = method.networks()
    fn = tf.function(lambda x, m=method, n=nets: m.query_code_logits(n, x))
    x = tf.constant(np.random.default_rng(0).random((args.batch, preset.hr_size, preset.hr_size, 3)), tf.float32)
    fn(x).numpy()  # trace + warm-up
    t0 = time.perf_counter()
    for _ in range(args.batches):
        fn(x).numpy()
    rate = args.batch * args.batches / (time.perf_counter() - t0)
    return method.query_path, query_macs(method, nets) / 1e9, rate, query_params(method, nets) / 1e6


def main() -> None:
    import tempfile

    args = parse_args()
    print(
        f"encode cost of one query, {platform.node()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"batch {args.batch}, baseline DSRHN (pixel SR) in the same run"
    )
    print("| preset | method | query path | GMACs/query | x DSRHN | parameters (M) | images/s | x DSRHN |")
    print("|---|---|---|---|---|---|---|---|")
    teacher_dir = tempfile.mkdtemp(prefix="dsrhn-teacher-")
    for preset_name in args.presets.split(","):
        rows = {m: method_cost(preset_name, m, args, teacher_dir) for m in args.methods.split(",")}
        base = rows.get("dsrhn")
        for method, (path, gmacs, rate, params) in rows.items():
            rel = (f"{gmacs / base[1]:.3f}", f"{rate / base[2]:.2f}") if base else ("-", "-")
            print(
                f"| {preset_name} | {method} | {path} | {gmacs:.3f} | {rel[0]} | {params:.2f} | {rate:.1f} | "
                f"{rel[1]} |",
                flush=True,
            )
    if args.work:
        others = dict(item.split("=", 1) for item in args.compare_models.split(",") if item)
        export_execution(args.work, args.examples, baseline_model=args.baseline_model, others=others, bf16=args.bf16)


if __name__ == "__main__":
    main()
