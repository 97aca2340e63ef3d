"""mAP@K, curves and SR metrics against hand values and a brute-force reference."""

import math

import numpy as np
import pytest

from components import metrics

B = lambda rows: metrics.pack_bits(np.array(rows, "f4"))  # noqa: E731  +-1 rows -> packed


def test_pack_bits_layout():
    bits = [1, -1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1]
    assert metrics.pack_bits(np.array([bits])).tolist() == [[0b10111111, 0b10000000]]
    assert metrics.unpack_bits(metrics.pack_bits(np.array([bits])), 12).tolist() == [bits]


def test_map_single_label_hand_example():
    q = B([[1, 1, 1, 1]])
    g = B([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1]])  # distances 0, 1, 2
    ql, gl = np.array([[1, 0]]), np.array([[1, 0], [0, 1], [1, 0]])
    assert metrics.mean_average_precision(q, g, ql, gl, None) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.mean_average_precision(q, g, ql, gl, 2) == pytest.approx(1.0)


def test_map_multi_label_ties_and_empty_queries():
    q = B([[1, 1], [1, 1]])
    g = B([[1, -1], [-1, 1], [-1, -1]])  # two ties at distance 1, then 2
    ql = np.array([[1, 1, 0], [0, 0, 1]])
    gl = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]])  # query 0: rel = [0, 1, 1]; query 1: none
    ap0 = (1 / 2 + 2 / 3) / 2  # ties broken by gallery order: g0 before g1
    assert metrics.mean_average_precision(q, g, ql, gl, None, "zero") == pytest.approx(ap0 / 2)
    assert metrics.mean_average_precision(q, g, ql, gl, None, "skip") == pytest.approx(ap0)
    runs = {metrics.mean_average_precision(q, g, ql, gl, 2) for _ in range(5)}
    assert len(runs) == 1


def brute_force_map(qc, gc, ql, gl, k):
    q_bits, g_bits = np.unpackbits(qc, axis=1), np.unpackbits(gc, axis=1)
    aps = []
    for i in range(len(qc)):
        d = [(int((q_bits[i] != g_bits[j]).sum()), j) for j in range(len(gc))]
        order = [j for _, j in sorted(d)][:k]
        hits, total = 0, 0.0
        for r, j in enumerate(order, start=1):
            if (ql[i] & gl[j]).any():
                hits += 1
                total += hits / r
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


@pytest.mark.parametrize("bits,k", [(12, 50), (48, 200), (64, None)])
def test_map_equals_brute_force_on_random_codes(bits, k):
    rng = np.random.default_rng(bits)
    qc = rng.integers(0, 256, (20, (bits + 7) // 8), dtype=np.uint8)
    gc = rng.integers(0, 256, (300, (bits + 7) // 8), dtype=np.uint8)
    if bits % 8:
        mask = np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
        qc[:, -1] &= mask
        gc[:, -1] &= mask
    ql = (rng.random((20, 5)) < 0.3).astype(int)
    gl = (rng.random((300, 5)) < 0.3).astype(int)
    assert metrics.mean_average_precision(qc, gc, ql, gl, k) == pytest.approx(brute_force_map(qc, gc, ql, gl, k or 300))


def test_curves_hand_example():
    q = B([[1, 1, 1, 1]])
    g = B([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1], [-1, -1, -1, -1]])  # d = 0, 1, 2, 4
    ql, gl = np.array([[1]]), np.array([[1], [0], [1], [1]])
    c = metrics.retrieval_curves(q, g, ql, gl, 4, top_n=[1, 2, 4])
    assert c.precision_at_radius == pytest.approx([1, 1 / 2, 2 / 3, 2 / 3, 3 / 4])
    assert c.recall_at_radius == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert c.precision_at_top_n == pytest.approx([1, 1 / 2, 3 / 4])
    assert c.precision_radius2 == pytest.approx(2 / 3)


def test_psnr_and_ssim():
    a = np.random.default_rng(0).integers(0, 200, (16, 16, 3)).astype(np.uint8)
    assert metrics.psnr_y(a, a, 4) == math.inf
    b = a.astype(np.float64) + 10.0  # Y shifts by 10 * 219/255 everywhere
    assert metrics.psnr_y(a, b, 4) == pytest.approx(10 * math.log10(255**2 / (10 * 219 / 255) ** 2))
    assert metrics.ssim_y(a, a, 2) == pytest.approx(1.0)
    assert metrics.ssim_y(a, np.zeros_like(a), 2) < 0.1


def test_per_query_ap_matches_map_and_gap_closure_interval():
    rng = np.random.default_rng(3)
    qc, gc = rng.integers(0, 256, (40, 2), dtype=np.uint8), rng.integers(0, 256, (300, 2), dtype=np.uint8)
    ql, gl = rng.integers(0, 2, (40, 5)), rng.integers(0, 2, (300, 5))
    ap, n_rel = metrics.average_precisions(qc, gc, ql, gl, 100)
    assert ap.shape == n_rel.shape == (40,)
    assert ap.mean() == pytest.approx(metrics.mean_average_precision(qc, gc, ql, gl, 100, "zero"))
    assert ap[n_rel > 0].mean() == pytest.approx(metrics.mean_average_precision(qc, gc, ql, gl, 100, "skip"))
    # LR 0, method 0.5, HR 1 at every query: closure 0.5 in every resample
    c = metrics.gap_closure_interval(np.zeros(50), np.full(50, 0.5), np.ones(50))
    assert c["closure"] == 0.5 and c["closure_interval"] == [0.5, 0.5] and c["p_goal"] == 0.0
    # a gap that is noise: HR beats LR on half the queries and loses on the other half
    lr = np.tile([0.6, 0.8], 100)
    hr = np.tile([0.8, 0.6], 100) + 0.001
    c = metrics.gap_closure_interval(lr, hr, hr)
    assert c["closure"] == pytest.approx(1.0) and 0.2 < c["p_gap_positive"] < 0.8
    assert c["gap_interval"][0] < 0 < c["gap_interval"][1]
    assert metrics.gap_closure_interval(lr, hr, hr) == c  # seeded: the same interval every run
    with pytest.raises(ValueError, match="same queries"):
        metrics.gap_closure_interval(np.zeros(3), np.zeros(4), np.zeros(3))


def test_blessing_decision_reasons():
    """The blessing gate's rules, one source (components/evaluate.py): each reason alone, and none for a good model."""
    from components.evaluate import ALREADY_BLESSED, blessing_decision

    good = {"topk": 50, "map": 0.6, "code_health": {"problems": []}}
    assert blessing_decision(good, min_map=0.5, baseline_map=0.55) == []
    assert blessing_decision(good, min_map=0.7) == ["mAP@50 0.6000 < threshold 0.7000"]
    assert blessing_decision(good, min_map=0.5, baseline_map=0.65) == ["mAP@50 0.6000 < last blessed model's 0.6500"]
    assert blessing_decision(good, min_map=0.5, already_blessed=True) == [ALREADY_BLESSED]
    bad = dict(good, code_health={"problems": ["bit 3 constant"]})
    assert blessing_decision(bad, min_map=0.5) == ["collapsed codes: bit 3 constant"]


def test_the_paired_bootstrap_is_the_mean_difference_with_an_interval_over_the_queries():
    a = np.linspace(0.2, 0.6, 50)
    assert metrics.diff_interval(a, a + 0.1) == pytest.approx((0.1, 0.1, 0.1))  # every query agrees: no spread
    b = a + np.random.default_rng(3).normal(0.05, 0.1, a.size)
    d, lo, hi = metrics.diff_interval(a, b)
    assert d == pytest.approx(float((b - a).mean())) and lo < d < hi
    assert metrics.diff_interval(a, b) == (d, lo, hi)  # seeded: the same interval every time
    lo99, hi99 = metrics.diff_interval(a, b, level=0.99)[1:]
    assert lo99 < lo and hi < hi99  # a wider level, a wider interval
    # paired: a shift common to both rows' queries moves neither the difference nor its interval
    assert metrics.diff_interval(a + 0.3, b + 0.3) == pytest.approx((d, lo, hi))
