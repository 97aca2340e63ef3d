"""Multi-level codes: the local distance and re-ranking rule against a per-pair reference, region labels from
the mosaic masks, bit selection, the re-ranked mAP, and the two-stage search on both index backends.
The trained model's path (train, export, index, evaluate, :search with "rerank") is in test_methods.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from components import metrics
from dsrhn.config import IndexConfig
from dsrhn.multilevel import local_distances, rerank, stack_local, word_bytes
from dsrhn.records import read_split
from serving import index as gindex

BITS, R = 12, 4


def _random_local(rng, n: int, valid_p: float = 0.8) -> np.ndarray:
    nb = (BITS + 7) // 8
    codes = np.packbits(rng.random((n, R, BITS)) < 0.5, axis=-1)
    selected = np.packbits(rng.random((n, R, BITS)) < 0.5, axis=-1)
    valid = rng.random((n, R)) < valid_p
    assert codes.shape[-1] == nb
    return stack_local(codes, selected, valid, BITS)


def _reference(q: np.ndarray, g: np.ndarray) -> float:
    """The docstring's rule, one pair of regions at a time."""

    def bits(x):
        return np.unpackbits(x)[:BITS].astype(bool)

    q_regions = [r for r in range(R) if bits(q[r, 1]).any()]
    if not q_regions:
        return 0.0
    total = 0.0
    for r in q_regions:
        best = None
        for s in range(R):
            both = bits(q[r, 1]) & bits(g[s, 1])
            if both.sum():
                d = BITS * (bits(q[r, 0]) ^ bits(g[s, 0]))[both].sum() / both.sum()
                best = d if best is None else min(best, d)
        total += BITS / 2 if best is None else best
    return total / len(q_regions)


def test_local_distance_follows_the_rule_region_by_region():
    rng = np.random.default_rng(0)
    q, g = _random_local(rng, 3), _random_local(rng, 3 * 40, valid_p=0.6).reshape(3, 40, R, 2, -1)
    q[2, :, 1] = 0  # a query with no valid region
    g[0, 5, :, 1] = 0  # a candidate with none
    d = local_distances(q, g, BITS)
    assert d.shape == (3, 40) and d.dtype == np.float32
    ref = np.array([[_reference(q[i], g[i, j]) for j in range(40)] for i in range(3)])
    np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-5)
    assert d[0, 5] == pytest.approx(BITS / 2) and (d[2] == 0).all()
    # a candidate holding the query's tiles in another order is at local distance 0
    assert local_distances(q[:1], q[:1, None, ::-1], BITS)[0, 0] == 0


def test_stored_layout_pads_to_words_and_drops_invalid_regions():
    codes = np.array([[[0xAB, 0xC0], [0x12, 0x30]]], np.uint8)
    local = stack_local(codes, np.full((1, 2, 2), 0xFF, np.uint8), np.array([[True, False]]), BITS)
    assert local.shape == (1, 2, 2, word_bytes(BITS)) == (1, 2, 2, 8)
    assert local[0, 0, 0, :2].tolist() == [0xAB, 0xC0] and local[0, 0, 1, :2].tolist() == [0xFF, 0xFF]
    assert not local[0, 1, 1].any() and not local[..., 2:].any()
    with pytest.raises(ValueError, match="uint8 \\[N, R, 2\\]"):
        stack_local(codes[:, :, :1], codes[:, :, :1], np.ones((1, 2), bool), BITS)


def test_rerank_orders_by_the_combined_distance_and_keeps_the_global_order_on_ties():
    rng = np.random.default_rng(1)
    local = _random_local(rng, 50)
    q = _random_local(rng, 2)
    rows = np.array([[3, 7, 9, 1, -1], [4, 0, 2, 8, 6]])
    d_global = np.array([[1, 1, 2, 3, 0], [0, 2, 2, 2, 5]], np.int32)
    out_rows, d_g, d_l, combined = rerank(d_global, rows, q, local, BITS, 1.0)
    d_local = local_distances(q, local[np.where(rows >= 0, rows, 0)], BITS)
    for i in range(2):
        expected = sorted(range(5), key=lambda j: (np.inf if rows[i, j] < 0 else d_global[i, j] + d_local[i, j], j))
        assert out_rows[i].tolist() == rows[i, expected].tolist()
        np.testing.assert_allclose(combined[i][out_rows[i] >= 0], (d_g + d_l)[i][out_rows[i] >= 0], rtol=1e-6)
    assert out_rows[0, -1] == -1  # a missing hit stays last
    for k in (1, 2, 3, 5):  # the top k alone: the full order's first k, ties included
        top = rerank(d_global, rows, q, local, BITS, 1.0, k)
        for full, part in zip((out_rows, d_g, d_l, combined), top):
            np.testing.assert_array_equal(full[:, :k], part)
    ties = np.zeros((1, 6), np.float32)
    ties[0, [1, 4]] = -1.0
    from dsrhn.multilevel import _top_k

    assert _top_k(ties, 3).tolist() == [[1, 4, 0]] and _top_k(ties, 1).tolist() == [[1]]
    same, *_ = rerank(d_global, rows, q, local, BITS, 0.0)  # weight 0: the global order
    assert same[1].tolist() == rows[1].tolist()


def test_rerank_map_with_weight_zero_is_the_global_map_and_a_perfect_local_signal_lifts_it():
    rng = np.random.default_rng(2)
    g_codes = rng.integers(0, 256, (300, 2), dtype=np.uint8)
    q_codes = rng.integers(0, 256, (20, 2), dtype=np.uint8)
    g_labels = np.eye(5, dtype=np.int32)[rng.integers(0, 5, 300)]
    q_labels = np.eye(5, dtype=np.int32)[rng.integers(0, 5, 20)]
    # local codes that name the label: every region of an image carries its label's code, all bits selected
    label_codes = np.packbits(rng.random((5, BITS)) < 0.5, axis=-1)

    def local_of(labels):
        codes = np.repeat(label_codes[labels.argmax(1)][:, None], R, axis=1)
        return stack_local(codes, np.full_like(codes, 0xFF), np.ones(codes.shape[:2], bool), BITS)

    q_local, g_local = local_of(q_labels), local_of(g_labels)
    base, _ = metrics.average_precisions(q_codes, g_codes, q_labels, g_labels, 100)
    zero, _ = metrics.rerank_average_precisions(
        q_codes, g_codes, q_labels, g_labels, q_local, g_local, BITS, 200, 0.0, 100
    )
    np.testing.assert_allclose(zero, base)
    lifted, _ = metrics.rerank_average_precisions(
        q_codes, g_codes, q_labels, g_labels, q_local, g_local, BITS, 300, 1.0, 100
    )
    assert lifted.mean() > base.mean() + 0.3


def test_region_labels_of_a_mosaic_are_its_tiles_labels(mosaic_examples):
    from trainer.methods.multilevel import region_labels

    for rec in read_split(mosaic_examples, "train").take(4):
        mask = rec["mask"].numpy()
        labels = region_labels(tf.constant(mask[None]), 10, 2, 0.02).numpy()[0]  # [4, 10]
        tiles = (mask[:28, :28], mask[:28, 28:], mask[28:, :28], mask[28:, 28:])
        for r, tile in enumerate(tiles):
            assert set(np.flatnonzero(labels[r]).tolist()) == {int(c) - 1 for c in np.unique(tile) if c > 0}
        assert (labels.max(0) == rec["labels"].numpy()).all()
    unknown = region_labels(tf.fill([1, 56, 56], 255), 10, 2, 0.02).numpy()
    assert not unknown.any()  # an all-unknown mask gives no region a label: left out of the local loss


def test_bit_selection_keeps_the_bits_whose_map_concentrates_on_the_region():
    from trainer.methods.multilevel import bit_selection

    u = np.full((1, 8, 8, 3), 0.1, np.float32)
    u[0, :4, :4, 0] = 5.0  # bit 0 lives in the top-left region
    u[0, 4:, 4:, 1] = -5.0  # bit 1 in the bottom-right one (magnitude counts, not sign)
    features = np.ones((1, 8, 8, 2), np.float32)
    features[0, 4:, :4] = 0.0  # the bottom-left region is empty
    selected, valid = (x.numpy() for x in bit_selection(tf.constant(u), tf.constant(features), 2, 1.0, 0.5))
    assert valid[0].tolist() == [True, True, False, True]
    assert selected[0, 0].tolist() == [True, False, True] and selected[0, 3].tolist() == [False, True, True]
    assert not selected[0, 2].any()  # an invalid region keeps no bit


def test_multi_level_takes_dsrhns_options_and_its_own():
    """DSCNN is a DSRHN: it starts from a trained HashNet or an Eq. 5 SR stage as DSRHN does, and checks both."""
    from trainer.methods.multilevel import DSCNN

    o = DSCNN.parse_options({"sr_stage_lam": "200", "hashnet_weights": "h.weights.h5", "grid": "3"})
    assert (o.sr_stage_lam, o.hashnet_weights, o.grid) == (200.0, "h.weights.h5", 3)
    assert DSCNN.parse_options({}).sr_stage_lam == 0.0 and not DSCNN.parse_options({}).hashnet_weights
    with pytest.raises(ValueError, match="sr_stage_lam"):
        DSCNN.parse_options({"sr_stage_lam": "-1"})
    with pytest.raises(ValueError, match="grid"):
        DSCNN.parse_options({"grid": "9"})


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_two_stage_search_on_either_backend_reads_the_memory_mapped_local_codes(tmp_path, backend):
    rng = np.random.default_rng(3)
    n = 200
    codes = rng.integers(0, 256, (n, 2), dtype=np.uint8)
    codes[:, 1] &= 0xF0  # 12 bits: the padding bits stay zero
    local = _random_local(rng, n)
    config = IndexConfig(backend=backend, milvus_uri=str(tmp_path / "m.db")) if backend == "milvus" else IndexConfig()
    layout = {"count": R, "rerank_weight": 1.0}
    manifest = gindex.write_gallery(
        str(tmp_path / "index"),
        codes,
        [f"g{i}" for i in range(n)],
        np.zeros((n, 0), np.uint8),
        [],
        BITS,
        {"model_fingerprint": "synthetic", "model_version": "1"},
        config,
        local,
        layout,
    )
    assert manifest["local"] == {"file": "local.npy", "count": R, "word_bytes": 8, "bits": BITS, "rerank_weight": 1.0}
    assert "local.npy" in manifest["files"]
    gallery = gindex.open_gallery(str(tmp_path / "index"), manifest)
    assert gallery.local.shape == (n, R, 2, 8) and (gallery.local == local).all()
    assert isinstance(gallery.local, np.memmap) and not gallery.local.flags.writeable  # mapped, not loaded
    q_local = _random_local(rng, 2)
    outputs = {
        "local_codes": q_local[:, :, 0, :2],
        "local_selected": q_local[:, :, 1, :2],
        "local_valid": q_local[:, :, 1].any(-1),
    }
    dist, rows = gallery.search(codes[:2], 50)
    res = gindex.answer_results(gallery, outputs, dist, rows, 5, gindex.Rerank(50, 1.0))
    ref_rows, ref_g, ref_l, ref_c = rerank(dist, rows, q_local, local, BITS, 1.0)
    for i in range(2):
        assert res[i]["ids"] == [f"g{r}" for r in ref_rows[i, :5]]
        assert res[i]["distances"] == ref_g[i, :5].tolist()
        np.testing.assert_allclose(res[i]["local_distances"], ref_l[i, :5], atol=1e-4)
        np.testing.assert_allclose(res[i]["rerank_distances"], ref_c[i, :5], atol=1e-4)
        assert res[i]["rerank_distances"] == sorted(res[i]["rerank_distances"])
    plain = gindex.answer_results(gallery, outputs, dist, rows, 5, None)
    assert set(plain[0]) == {"ids", "distances", "labels", "rows"}  # without re-ranking: the plain answer
    with pytest.raises(ValueError, match="local codes and their layout"):
        gindex.write_gallery(
            str(tmp_path / "x"),
            codes,
            [f"g{i}" for i in range(n)],
            np.zeros((n, 0), np.uint8),
            [],
            BITS,
            {"model_fingerprint": "synthetic"},
            IndexConfig(),
            local,
            None,
        )
    with pytest.raises(ValueError, match="local codes must be uint8"):
        gindex.write_gallery(
            str(tmp_path / "x"),
            codes,
            [f"g{i}" for i in range(n)],
            np.zeros((n, 0), np.uint8),
            [],
            BITS,
            {"model_fingerprint": "synthetic"},
            IndexConfig(),
            local[:10],
            layout,
        )
