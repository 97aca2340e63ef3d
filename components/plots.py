"""PNG plots of a retrieval report (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from components import metrics  # noqa: E402


def write_plots(report: dict, out_dir: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, key in (("LR query", "lr_query"), ("HR query", "hr_query")):
        c = report[key]["curves"]
        axes[0].plot(c["recall_at_radius"], c["precision_at_radius"], marker=".", label=name)
        axes[1].plot(c["top_n"], c["precision_at_top_n"], marker="o", label=name)
    axes[0].set(xlabel="recall", ylabel="precision", title=f"PR over Hamming radius, {report['bits']} bits")
    axes[1].set(xlabel="top n", ylabel="precision", title="precision@top-n")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)
    plt.close(fig)


def map_vs_bits(rows: dict[str, dict[int, float]], path: str, title: str = "mAP vs bits") -> None:
    """rows: method -> {bits: mAP}."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, by_bits in rows.items():
        bits = sorted(by_bits)
        ax.plot(bits, [by_bits[b] for b in bits], marker="o", label=name)
    ax.set(xlabel="bits", ylabel="mAP", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(
    examples_uri, enc, q, g, info, path: str, n_queries: int = 4, top: int = 10, queries_uri: str | None = None
) -> None:
    """Rows: LR | bicubic | model image | HR of a query, then its top-10 gallery images
    (green frame: relevant, red: not)."""
    import tensorflow as tf

    from dsrhn.degrade import bicubic_uint8
    from dsrhn.records import read_split_raw

    raw_q = next(read_split_raw(queries_uri or examples_uri, "query").batch(n_queries).as_numpy_iterator())
    sr = enc.super_resolve(raw_q["lr"])
    gallery_hr = {}
    d = metrics.hamming_distances(q.codes[:n_queries], g.codes)
    ranked = metrics.rank(d)[:, :top]
    wanted = set(ranked.ravel().tolist())
    for i, rec in enumerate(read_split_raw(examples_uri, "gallery", info).as_numpy_iterator()):
        if i in wanted:
            gallery_hr[i] = tf.io.decode_png(rec["hr"], channels=3).numpy()
        if len(gallery_hr) == len(wanted):
            break
    cols = 4 + top
    fig, axes = plt.subplots(n_queries, cols, figsize=(cols * 1.1, n_queries * 1.25))
    axes = np.atleast_2d(axes)
    for r in range(min(n_queries, len(sr))):
        hr = tf.io.decode_png(raw_q["hr"][r], channels=3).numpy()
        lr = tf.io.decode_png(raw_q["lr"][r], channels=3).numpy()
        bic = bicubic_uint8(lr, hr.shape[0])
        for c, (img, title) in enumerate([(lr, "LR"), (bic, "bicubic"), (sr[r], "model"), (hr, "HR")]):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_title(title, fontsize=7)
        for j, gi in enumerate(ranked[r]):
            ax = axes[r, 4 + j]
            ax.imshow(gallery_hr[int(gi)], interpolation="nearest")
            ok = bool((q.labels[r] & g.labels[gi]).any())
            for s in ax.spines.values():
                s.set_edgecolor("green" if ok else "red")
                s.set_linewidth(2)
            ax.set_title(f"d={d[r, gi]}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
