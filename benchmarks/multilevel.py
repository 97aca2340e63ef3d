"""Multi-level codes (issue: global + local codes, two-stage Hamming search), against the named baseline
measured in the same run: the same model's global codes alone (one Hamming ranking).

Quality: Fashion-MNIST mosaics (four tiles, four objects; the masks give each tile's label), 48 bits,
cpu preset, LR queries (the stored x4 bicubic partners). One multi-level model is trained (the cpu
preset's blind degradations, 720 HashNet steps after an SRNet MSE stage of 1,440 steps, as the
degradation grid trains DSRHN), then mAP@5000 of
    global only            Hamming ranking of the global codes (the baseline)
    two-stage, N           the global top N re-ranked by d_global + w * d_local (dsrhn/multilevel.py), N in
                           500 / 1000 / 5000, w the model's rerank_weight (1); every bit of a valid region
                           (select_threshold 0, the default) and with bit selection at 1 (the model is
                           exported at 1 so that both can be scored)
    ablations              w = 0.5 and 2 at N = 1000 and 5000
with a 90% paired bootstrap interval of each difference over the queries. --baseline-model: also score
another SavedModel (e.g. DSRHN) on the same queries and gallery.

Latency: synthetic random codes (48 bits, local codes with random ~half selections) at 10k and 1M gallery
rows, written as a real index (faiss BFlat + local.npy memory-mapped) and opened as the server opens it;
single queries, one thread: global-only top-10 vs two-stage (top N, re-ranked, top 10), p50/p99 and the
ratio of p50s.

    python benchmarks/multilevel.py --out runs/multilevel                     # about 15 min on 2 cores
    python benchmarks/multilevel.py --out runs/ml-smoke --steps 24 --n-train 512 --n-query 100 --n-gallery 500 \\
        --sizes 10000 --single 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib.cache import code_digest, row_key  # noqa: E402
from benchlib.grid import ensure_grid, mosaic_source  # noqa: E402
from components.metrics import diff_interval  # noqa: E402
from dsrhn.contracts import code_bytes  # noqa: E402

SHORTLISTS = (500, 1000, 5000)


def ingest(out: str, n_train: int, n_query: int, n_gallery: int) -> str:
    """The Examples (x4 bicubic LR), remade when their source changes."""
    from dsrhn.config import LRConfig

    examples = os.path.join(out, "examples")
    source = mosaic_source(n_train, n_query, n_gallery)
    ensure_grid(examples, os.path.join(out, "ingest.json"), source, source, 56, LRConfig(scale=4))
    return examples


def train(examples: str, out: str, bits: int, steps: int, epochs: int, srnet_weights: str) -> str:
    from dsrhn.config import get_preset
    from trainer.task import train_and_export

    per_epoch = max(1, steps // epochs)
    overrides = {"srnet_weights": srnet_weights} if srnet_weights else {"sr_warmup_epochs": 2 * epochs}
    # bit selection at 1 in the export, so that both the selection and every bit (the default, 0) can be scored:
    # selection only acts at export, and every bit of a valid region is what threshold 0 returns
    preset = get_preset(
        "cpu",
        method="multi-level",
        bits=bits,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        options={"select_threshold": 1.0},
        **overrides,
    )
    # a model trained with other settings, data or code is not reused (benchmarks/cache.py)
    key = row_key(
        {"preset": preset.to_dict(), "examples": json.load(open(os.path.join(out, "ingest.json")))},
        code_digest((os.path.abspath(__file__),)),
    )
    model = os.path.join(out, f"model-{key}")
    if os.path.exists(os.path.join(model, "saved_model.pb")):
        print(f"multi-level model {model} reused: trained with these settings and this code", flush=True)
        return model
    summary = train_and_export(examples, preset, os.path.join(out, "work"), model, verbose=0)
    print(
        f"trained multi-level ({steps} HashNet steps{', SRNet from ' + srnet_weights if srnet_weights else ''}) "
        f"in {summary['seconds']:.0f} s",
        flush=True,
    )
    return model


def quality(model: str, examples: str, topk: int, baseline: str | None) -> dict:
    from components.evaluate import SavedModelEncoders, encode_split
    from components.metrics import average_precisions, rerank_average_precisions

    enc = SavedModelEncoders(model)
    bits, weight = int(enc.meta["bits"]), float(enc.meta["local"]["rerank_weight"])
    if float(enc.meta["local"]["select_threshold"]) != 1.0:
        raise SystemExit(
            f"{model} was exported with select_threshold {enc.meta['local']['select_threshold']}; "
            "this benchmark scores selection at 1 and every bit: delete it to retrain"
        )
    q = encode_split(examples, "query", "lr", enc.query_outputs)
    g = encode_split(examples, "gallery", "hr", enc.gallery_outputs)
    ap_global, _ = average_precisions(q.codes, g.codes, q.labels, g.labels, topk)
    rows = {"global only (baseline)": ap_global}

    def rerank(name, shortlist, w=weight, q_local=q.local, g_local=g.local):
        t0 = time.time()
        rows[name], _ = rerank_average_precisions(
            q.codes, g.codes, q.labels, g.labels, q_local, g_local, bits, shortlist, w, topk
        )
        print(f"  {name}: {time.time() - t0:.1f} s", flush=True)

    every_q, every_g = all_bits(q.local, bits), all_bits(g.local, bits)
    for n in SHORTLISTS:
        rerank(f"two-stage N={n}, every bit (default)", n, q_local=every_q, g_local=every_g)
    for n in SHORTLISTS:
        rerank(f"two-stage N={n}, bit selection at 1", n)
    for n in (1000, 5000):
        for w in (0.5, 2.0):
            rerank(f"two-stage N={n}, every bit, w={w:g}", n, w, q_local=every_q, g_local=every_g)
    valid_q = (q.local[:, :, 1].any(-1)).mean()
    valid_g = (g.local[:, :, 1].any(-1)).mean()
    selected = np.unpackbits(g.local[:, :, 1], axis=-1)[..., :bits].sum(-1)
    out = {
        "rows": {k: float(v.mean()) for k, v in rows.items()},
        "vs_baseline": {k: diff_interval(ap_global, v) for k, v in rows.items() if k != "global only (baseline)"},
        "valid_regions": {"query": float(valid_q), "gallery": float(valid_g)},
        "selected_bits_per_valid_region": float(selected[selected > 0].mean()),
        "queries": len(q.ids),
        "gallery": len(g.ids),
        "bits": bits,
        "weight": weight,
    }
    if baseline:
        b = SavedModelEncoders(baseline)
        qb = encode_split(examples, "query", b.query_field, b.query)
        gb = encode_split(examples, "gallery", "hr", b.gallery)
        ap_b, _ = average_precisions(qb.codes, gb.codes, qb.labels, gb.labels, topk)
        out["baseline_model"] = {
            "model": baseline,
            "method": b.meta["method"],
            "map": float(ap_b.mean()),
            "global_vs_it": diff_interval(ap_b, ap_global),
        }
    return out


def all_bits(local: np.ndarray, bits: int) -> np.ndarray:
    """Stored local codes with every bit of each valid region selected: what select_threshold 0 exports."""
    row = np.zeros(local.shape[-1], np.uint8)
    row[: code_bytes(bits)] = np.packbits(np.ones(bits, bool))
    valid = local[:, :, 1:].any(-1, keepdims=True)
    return np.concatenate([local[:, :, :1], np.where(valid, row, 0).astype(np.uint8)], axis=2)


def latency(n: int, bits: int, shortlists, n_single: int, rng: np.random.Generator) -> list[dict]:
    from dsrhn.multilevel import word_bytes
    from serving.index import Rerank, answer_results, open_gallery, read_manifest, search_depth, write_gallery

    regions, width, nb = 4, word_bytes(bits), code_bytes(bits)
    codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    local = np.zeros((n, regions, 2, width), np.uint8)
    local[:, :, :, :nb] = rng.integers(0, 256, (n, regions, 2, nb), dtype=np.uint8)
    layout = {"count": regions, "rerank_weight": 1.0}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "index")
        write_gallery(
            path,
            codes,
            [f"g{i}" for i in range(n)],
            np.zeros((n, 0), np.uint8),
            [],
            bits,
            {"model_fingerprint": "synthetic", "model_version": "1"},
            local=local,
            local_layout=layout,
        )
        del local
        gallery = open_gallery(path, read_manifest(path))
        m = 2 * n_single  # the first half warms up, the second is timed
        queries = rng.integers(0, 256, (m, nb), dtype=np.uint8)
        q_out = {
            "local_codes": rng.integers(0, 256, (m, regions, nb), dtype=np.uint8),
            "local_selected": rng.integers(0, 256, (m, regions, nb), dtype=np.uint8),
            "local_valid": np.ones((m, regions), bool),
        }

        variants = [("global only top-10 (baseline)", None)]
        variants += [(f"two-stage, shortlist {s}", Rerank(s, 1.0)) for s in shortlists]
        lat: dict = {name: [] for name, _ in variants}
        for rnd in range(2):  # round 0 warms faiss up on other queries; the variants alternate query by query,
            for i in range(rnd * n_single, (rnd + 1) * n_single):  # so a busy moment hits them all alike
                one = {k: v[i : i + 1] for k, v in q_out.items()}
                for name, rerank in variants:
                    t0 = time.perf_counter()
                    dist, rows = gallery.search(queries[i : i + 1], search_depth(10, rerank), threads=1)
                    answer_results(gallery, one, dist, rows, 10, rerank)
                    if rnd:
                        lat[name].append(time.perf_counter() - t0)
        base = statistics.median(lat[variants[0][0]])
        out = []
        for name, _ in variants:
            v = sorted(lat[name])
            out.append(
                {
                    "gallery": n,
                    "search": name,
                    "p50_ms": statistics.median(v) * 1e3,
                    "p99_ms": v[int(0.99 * (len(v) - 1))] * 1e3,
                    "ratio": statistics.median(v) / base,
                }
            )
        return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/multilevel")
    ap.add_argument("--bits", type=int, default=48)
    ap.add_argument("--steps", type=int, default=720, help="HashNet updates")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--srnet-weights", default="", help="an MSE-trained SRNet to start from (else an MSE stage of 2 x --steps)"
    )
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-query", type=int, default=2000)
    ap.add_argument("--n-gallery", type=int, default=10000)
    ap.add_argument("--topk", type=int, default=5000)
    ap.add_argument("--baseline-model", default="", help="another SavedModel to score on the same data (e.g. DSRHN)")
    ap.add_argument("--sizes", default="10000,1000000", help="synthetic gallery sizes for the latency rows")
    ap.add_argument("--single", type=int, default=300, help="single queries timed per latency row")
    ap.add_argument("--skip-quality", action="store_true")
    return ap.parse_args()


def print_quality(res: dict, k: int) -> None:
    print(
        f"\nMulti-level re-ranking, LR queries (x4 bicubic), mAP@{k}, {res['bits']} bits, {res['queries']} queries, "
        f"{res['gallery']} gallery mosaics, one seed; rerank weight {res['weight']}"
    )
    print(f"| search | mAP@{k} | vs global only (90% paired interval) |\n|---|---|---|")
    for name, m in res["rows"].items():
        d = res["vs_baseline"].get(name)
        print(f"| {name} | {m:.4f} | " + (f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" if d else "-") + " |")
    print(
        f"valid regions: {res['valid_regions']['query']:.3f} of query regions, {res['valid_regions']['gallery']:.3f} "
        f"of gallery regions; bit selection at 1 keeps {res['selected_bits_per_valid_region']:.1f} of {res['bits']} "
        "bits per valid region"
    )
    if "baseline_model" in res:
        b = res["baseline_model"]
        d = b["global_vs_it"]
        print(
            f"baseline model {b['method']} ({b['model']}): mAP@{k} {b['map']:.4f}; multi-level global codes vs it "
            f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"
        )


def print_latency(args) -> None:
    rng = np.random.default_rng(0)
    print(
        f"\nSearch latency, {args.bits} bits, synthetic codes, single queries on one thread "
        f"({args.single} per row), ids and labels of the top 10 read as the server does"
    )
    print("| gallery | search | p50 ms | p99 ms | p50 / global only |\n|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        for row in latency(n, args.bits, SHORTLISTS, args.single, rng):
            print(
                f"| {row['gallery']:,} | {row['search']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                f"{row['ratio']:.2f}x |",
                flush=True,
            )


def main() -> None:
    args = parse_args()
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores; python {' '.join(sys.argv)}")
    if not args.skip_quality:
        examples = ingest(args.out, args.n_train, args.n_query, args.n_gallery)
        model = train(examples, args.out, args.bits, args.steps, args.epochs, args.srnet_weights)
        res = quality(model, examples, args.topk, args.baseline_model or None)
        with open(os.path.join(args.out, "quality.json"), "w") as f:
            json.dump(res, f, indent=2)
        print_quality(res, args.topk)
    print_latency(args)
    print(f"\ntotal {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
