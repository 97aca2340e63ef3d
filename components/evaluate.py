"""Retrieval evaluation of an exported model on an Examples artifact, and its report.

Queries are encoded with the model's query signature (LR images; HR for HR-query methods such as
hashnet-hr, as the export metadata says; nothing here imports the trainer),
the gallery with `encode_hr`. Output: report.json, report.md and PNG plots.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from components import metrics
from dsrhn.health import code_health
from dsrhn.records import DatasetInfo, read_split_raw

AP_FILE = "per_query_ap.npz"  # per-query AP@topk (lr_query, hr_query) and query ids, in query order
Encoder = Callable[[np.ndarray], "np.ndarray | dict"]  # image bytes -> packed codes, or {"codes", "local"}
RERANK_SHORTLISTS = (500, 1000, 5000)  # multi-level models: mAP of the two-stage search at these shortlists


@dataclass
class EncodedSplit:
    ids: list[str]
    codes: np.ndarray  # uint8 [N, ceil(K/8)]
    labels: np.ndarray  # int [N, L]
    local: np.ndarray | None = None  # multi-level models: uint8 [N, R, 2, W] (dsrhn/multilevel.py)


def encode_split(
    examples_uri: str,
    split: str,
    field: str,
    encode: Encoder,
    batch_size: int = 256,
    info: DatasetInfo | None = None,
    limit: int = 0,
) -> EncodedSplit:
    from dsrhn.progress import Progress

    info = info or DatasetInfo.read(examples_uri)
    ds = read_split_raw(examples_uri, split, info)
    if limit:
        ds = ds.take(limit)
    total = info.counts.get(split) if isinstance(info.counts, dict) else None
    progress = Progress(f"evaluate: encode {split}", min(total, limit) if (total and limit) else total, "images")
    ids, codes, labels, local = [], [], [], []
    for batch in ds.batch(batch_size).as_numpy_iterator():
        out = encode(batch[field])
        if isinstance(out, dict):
            local.append(out["local"])
            out = out["codes"]
        codes.append(np.asarray(out))
        ids += [i.decode("utf-8") for i in batch["id"]]
        labels.append(batch["labels"])
        progress.update(len(batch["id"]))
    progress.finish()
    if not ids:
        raise ValueError(f"split {split!r} of {examples_uri} is empty")
    return EncodedSplit(
        ids, np.concatenate(codes), np.concatenate(labels).astype(np.int32), np.concatenate(local) if local else None
    )


class SavedModelEncoders:
    """Query and gallery encoders from a SavedModel directory exported by the trainer."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        from dsrhn.contracts import read_metadata

        self.meta = read_metadata(model_dir)
        self.model = tf.saved_model.load(model_dir)
        self._query = self.model.signatures["serving_default"]
        self._hr = self.model.signatures["encode_hr"]
        self._sr = self.model.signatures["super_resolve"]
        self.query_field = "hr" if self.meta["query_input"] == "hr" else "lr"

    def query(self, images: np.ndarray) -> np.ndarray:
        return self._query(images=images)["codes"].numpy()

    def gallery(self, images: np.ndarray) -> np.ndarray:
        return self._hr(images=images)["codes"].numpy()

    def super_resolve(self, images: np.ndarray) -> np.ndarray:
        return self._sr(images=images)["sr"].numpy()

    @property
    def multi_level(self) -> bool:
        return "local" in self.meta

    def query_outputs(self, images: np.ndarray) -> dict:
        """{"codes", "local"}: a multi-level model's query codes with its local codes in the stored layout."""
        return self._with_local(self._query(images=images))

    def gallery_outputs(self, images: np.ndarray) -> dict:
        return self._with_local(self._hr(images=images))

    def _with_local(self, out: dict) -> dict:
        from dsrhn.multilevel import stored_local

        out = {k: v.numpy() for k, v in out.items()}
        return {"codes": out["codes"], "local": stored_local(out, int(self.meta["bits"]))}


def retrieval_numbers(q: EncodedSplit, g: EncodedSplit, bits: int, topk: int, curves: bool = True) -> dict:
    """mAP@topk (both empty-query conventions), then mAP@all and the curves unless `curves` is False;
    "ap" holds the per-query AP@topk (empty queries 0) for paired comparisons between models (not
    written to report.json)."""
    t0 = time.time()
    ap, n_rel = metrics.average_precisions(q.codes, g.codes, q.labels, g.labels, topk)
    out = {
        f"map@{topk}": metrics.map_from_aps(ap, n_rel, "zero"),
        f"map@{topk}_skip_empty": metrics.map_from_aps(ap, n_rel, "skip"),
    }
    if curves:
        out["map@all"] = metrics.mean_average_precision(q.codes, g.codes, q.labels, g.labels, None, "zero")
        out["curves"] = asdict(metrics.retrieval_curves(q.codes, g.codes, q.labels, g.labels, bits))
        out["precision_radius2"] = out["curves"]["precision_radius2"]
    out["metric_seconds"] = time.time() - t0
    out["ap"] = ap
    return out


def rerank_numbers(
    q: EncodedSplit, g: EncodedSplit, bits: int, topk: int, weight: float, shortlists=RERANK_SHORTLISTS
) -> dict:
    """Multi-level models: mAP@topk of the two-stage search (global shortlist, local re-ranking) per shortlist."""
    out = {}
    for s in shortlists:
        ap, n_rel = metrics.rerank_average_precisions(
            q.codes, g.codes, q.labels, g.labels, q.local, g.local, bits, s, weight, topk
        )
        out[str(s)] = {
            f"map@{topk}": metrics.map_from_aps(ap, n_rel, "zero"),
            f"map@{topk}_skip_empty": metrics.map_from_aps(ap, n_rel, "skip"),
        }
    return out


def sr_quality(examples_uri: str, enc: SavedModelEncoders, info: DatasetInfo, n: int = 200) -> dict:
    """PSNR/SSIM (Y, border = scale) of the model's query image vs HR, and of bicubic vs HR, over the
    first n queries."""
    import tensorflow as tf

    from dsrhn.degrade import bicubic_uint8

    ps, ss, pb, sb = [], [], [], []
    for batch in read_split_raw(examples_uri, "query", info).take(n).batch(64).as_numpy_iterator():
        sr = enc.super_resolve(batch["lr"])
        for i in range(len(sr)):
            hr = tf.io.decode_png(batch["hr"][i], channels=3).numpy()
            lr = tf.io.decode_png(batch["lr"][i], channels=3).numpy()
            bic = bicubic_uint8(lr, hr.shape[0])
            ps.append(metrics.psnr_y(sr[i], hr, info.scale))
            ss.append(metrics.ssim_y(sr[i], hr, info.scale))
            pb.append(metrics.psnr_y(bic, hr, info.scale))
            sb.append(metrics.ssim_y(bic, hr, info.scale))
    return {
        "psnr_y": float(np.mean(ps)),
        "ssim_y": float(np.mean(ss)),
        "bicubic_psnr_y": float(np.mean(pb)),
        "bicubic_ssim_y": float(np.mean(sb)),
        "images": len(ps),
    }


def encode_splits(enc, examples_uri: str, queries_uri: str, info: DatasetInfo, q_info: DatasetInfo, batch_size: int):
    """The queries as the model encodes them, the gallery, the queries' HR images, and (a model that enhances
    its queries) the LR queries brought to HR size by bicubic alone through the same HashNet: what SR adds."""
    q = encode_split(
        queries_uri, "query", enc.query_field, enc.query_outputs if enc.multi_level else enc.query, batch_size, q_info
    )
    g = encode_split(
        examples_uri, "gallery", "hr", enc.gallery_outputs if enc.multi_level else enc.gallery, batch_size, info
    )
    q_hr = encode_split(queries_uri, "query", "hr", enc.gallery, batch_size, q_info)
    q_bic = (
        encode_split(queries_uri, "query", "lr", enc.gallery, batch_size, q_info)
        if enc.meta.get("query_path") in ("sr", "fsr")
        else None
    )
    return q, g, q_hr, q_bic


def write_query_aps(report: dict, ids: list, out_dir: str) -> None:
    """Each query's AP (moved out of the report) to AP_FILE, in query order, for paired comparisons."""
    np.savez(
        os.path.join(out_dir, AP_FILE),
        ids=np.array(ids),
        lr_query=report["lr_query"].pop("ap"),
        hr_query=report["hr_query"].pop("ap"),
        **({"bicubic_query": report["bicubic_query"].pop("ap")} if "bicubic_query" in report else {}),
    )


def evaluate_model(
    model_dir: str,
    examples_uri: str,
    out_dir: str,
    topk: int = 5000,
    plots: bool = True,
    batch_size: int = 256,
    curves: bool = True,
    queries_uri: str | None = None,
) -> dict:
    """Evaluate the SavedModel at model_dir; write report.json / report.md / *.png to out_dir.
    curves=False: mAP@topk only (no mAP@all, PR or precision@n curves, hence no plots).
    queries_uri: take the queries from another Examples directory (e.g. a query set with another
    degradation, made by components.ingest.derive_query_set); the gallery stays examples_uri's."""
    info = DatasetInfo.read(examples_uri)
    queries_uri = queries_uri or examples_uri
    q_info = DatasetInfo.read(queries_uri)
    enc = SavedModelEncoders(model_dir)
    bits = int(enc.meta["bits"])
    t0 = time.time()
    q, g, q_hr, q_bic = encode_splits(enc, examples_uri, queries_uri, info, q_info, batch_size)
    encode_seconds = time.time() - t0
    report = {
        "model": model_dir,
        "examples": examples_uri,
        "queries_from": queries_uri,
        "query_lr": q_info.lr,
        "method": enc.meta["method"],
        "bits": bits,
        "topk": topk,
        "queries": len(q.ids),
        "gallery": len(g.ids),
        "query_input": enc.query_field,
        "lr_query": retrieval_numbers(q, g, bits, topk, curves),
        "hr_query": retrieval_numbers(q_hr, g, bits, topk, curves),
        "encode_seconds": encode_seconds,
        "code_health": code_health(g.codes, bits, g.labels).to_dict(),
    }
    if q_bic is not None:
        report["bicubic_query"] = retrieval_numbers(q_bic, g, bits, topk, curves=False)
    report["map"] = report["lr_query"][f"map@{topk}"]
    if enc.multi_level:  # the same queries through the two-stage search
        report["lr_query"]["rerank"] = rerank_numbers(q, g, bits, topk, float(enc.meta["local"]["rerank_weight"]))
    os.makedirs(out_dir, exist_ok=True)
    write_query_aps(report, q.ids, out_dir)
    if enc.meta["query_input"] == "lr":  # the image the code network sees of an LR query (SR or bicubic)
        report["sr_quality"] = sr_quality(queries_uri, enc, q_info)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown_summary(report))
    if plots and curves:
        from components import plots as plotting

        plotting.write_plots(report, out_dir)
        plotting.sample_grid(
            examples_uri, enc, q, g, info, os.path.join(out_dir, "samples.png"), queries_uri=queries_uri
        )
    return report


# a re-run over cached training sees its own model as the last blessed one: it is served already, so it is not
# blessed (nor pushed) a second time; `dsrhn pipeline` tells this reason from a refusal
ALREADY_BLESSED = "already the last blessed model: nothing new to push"


def blessing_decision(
    report: dict, min_map: float, baseline_map: float | None = None, already_blessed: bool = False
) -> list[str]:
    """Why a model must not be blessed (empty: bless it): it is the last blessed model itself, its LR-query mAP is
    below the floor `min_map` or the last blessed model's, or its gallery codes collapsed (dsrhn/health.py)."""
    k, new_map = report["topk"], report["map"]
    reasons = [ALREADY_BLESSED] if already_blessed else []
    if new_map < min_map:
        reasons.append(f"mAP@{k} {new_map:.4f} < threshold {min_map:.4f}")
    if baseline_map is not None and new_map < baseline_map:
        reasons.append(f"mAP@{k} {new_map:.4f} < last blessed model's {baseline_map:.4f}")
    reasons += [f"collapsed codes: {p}" for p in report.get("code_health", {}).get("problems", [])]
    return reasons


def markdown_summary(report: dict) -> str:
    k = report["topk"]
    rows = [
        ("LR query" if report["query_input"] == "lr" else "HR query (an HR-query method)", report["lr_query"]),
        ("HR query (upper bound)", report["hr_query"]),
    ]
    lines = [
        f"# Retrieval report: {report['method']}, {report['bits']} bits",
        "",
        f"{report['queries']} queries, {report['gallery']} gallery images.",
        "",
        f"| queries | mAP@{k} | mAP@{k} (skip empty) | mAP@all | P@r<=2 |",
        "|---|---|---|---|---|",
    ]
    if "bicubic_query" in report:
        rows.insert(1, ("LR query, bicubic to HR size through the same HashNet (no SR)", report["bicubic_query"]))
    for name, r in rows:
        extra = [f"{r[f]:.4f}" if f in r else "-" for f in ("map@all", "precision_radius2")]
        lines.append(f"| {name} | {r[f'map@{k}']:.4f} | {r[f'map@{k}_skip_empty']:.4f} | {' | '.join(extra)} |")
    health = report.get("code_health")
    if health:
        lines += [
            "",
            f"Gallery codes: {health['distinct']} distinct of {health['images']}, "
            f"{len(health['constant_bits'])} constant bits of {health['bits']}."
            + "".join(f"\n**Warning:** {p}." for p in health["problems"]),
        ]
    if "rerank" in report["lr_query"]:
        lines += [
            "",
            f"Multi-level re-ranking ({rows[0][0]}): global top-N re-ranked with the local codes.",
            "",
            f"| shortlist N | mAP@{k} | vs global only |",
            "|---|---|---|",
        ]
        for n, r in report["lr_query"]["rerank"].items():
            lines.append(f"| {n} | {r[f'map@{k}']:.4f} | {r[f'map@{k}'] - report['lr_query'][f'map@{k}']:+.4f} |")
    if "sr_quality" in report:
        s = report["sr_quality"]
        lines += [
            "",
            "| image | PSNR-Y (dB) | SSIM-Y |",
            "|---|---|---|",
            f"| model query image | {s['psnr_y']:.2f} | {s['ssim_y']:.4f} |",
            f"| bicubic | {s['bicubic_psnr_y']:.2f} | {s['bicubic_ssim_y']:.4f} |",
        ]
    return "\n".join(lines) + "\n"
