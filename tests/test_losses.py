"""Each loss against a hand-computed value on tiny tensors."""

import math

import numpy as np
import pytest

from trainer import losses
from trainer.models import sign_codes


def f(x):
    return float(np.asarray(x))


def sp(x):  # softplus
    return math.log1p(math.exp(x))


def test_mse_and_perceptual_and_sr_loss():
    assert f(losses.mse_loss(np.zeros((1, 2), "f4"), np.array([[1.0, 3.0]], "f4"))) == pytest.approx(5.0)
    assert f(losses.perceptual_loss(np.array([[2.0, 0.0]], "f4"), np.array([[0.0, 0.0]], "f4"))) == pytest.approx(2.0)
    assert f(losses.sr_loss(2.0, 5.0, 0.1)) == pytest.approx(2.5)


def test_similarity_is_one_for_pairs_sharing_a_label():
    s = np.asarray(losses.similarity(np.array([[1, 1, 0], [0, 0, 1]]), np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])))
    assert s.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_pairwise_likelihood_uses_dpsh_convention():
    v = np.array([[1.0, 1.0], [1.0, 0.0]], "f4")  # theta = 1/2 v v^T = [[1, .5], [.5, .5]]
    s_similar = np.ones((2, 2), "f4")
    expected = (sp(-1.0) + 3 * sp(-0.5)) / 4  # -(s*theta - log(1+e^theta)) with s = 1
    assert f(losses.pairwise_likelihood_loss(v, s_similar)) == pytest.approx(expected, rel=1e-5)
    # the paper's Eq. 6 as printed (s = 0 for similar) is what the loss gives for a dissimilar pair: the two
    # conventions differ on these codes, and the function follows DPSH's
    reversed_value = (sp(1.0) + 3 * sp(0.5)) / 4
    assert f(losses.pairwise_likelihood_loss(v, np.zeros((2, 2), "f4"))) == pytest.approx(reversed_value, rel=1e-5)
    assert abs(expected - reversed_value) > 0.1
    big = np.array([[30.0] * 4, [-30.0] * 4], "f4")  # theta = +-1800: stable, no inf/nan
    assert np.isfinite(f(losses.pairwise_likelihood_loss(big, np.eye(2, dtype="f4"))))


def test_quantization_uses_sign_zero_as_plus_one():
    v = np.array([[0.5, -0.2], [0.0, 2.0]], "f4")  # b = [[1, -1], [1, 1]]
    assert f(losses.quantization_loss(v)) == pytest.approx((0.25 + 0.64 + 1.0 + 1.0) / 4)
    assert f(losses.dpsh_loss(v, np.array([[1, 0], [1, 0]]), 0.5)) == pytest.approx(
        f(losses.pairwise_likelihood_loss(v, np.ones((2, 2), "f4"))) + 0.5 * 2.89 / 4, rel=1e-5
    )
    assert np.asarray(sign_codes(np.array([0.0, -0.0, 1e-9, -1e-9, 3.0]))).tolist() == [1, 1, 1, -1, 1]


def test_margin_and_hash_loss():
    v_hr = np.array([[0.0, 0.0], [0.0, 0.0]], "f4")
    v_sr = np.array([[1.0, 0.0], [2.0, 0.0]], "f4")  # squared distances 1 and 4
    assert f(losses.margin_loss(v_hr, v_sr, 3.0)) == pytest.approx((2.0 + 0.0) / 2)
    assert f(losses.hash_loss(1.0, 2.0, 0.01)) == pytest.approx(1.02)


def test_dhn_and_dch_baselines():
    v = np.array([[1.0, 1.0], [1.0, 0.0]], "f4")  # theta = v v^T = [[2, 1], [1, 1]]
    labels = np.array([[1, 0], [1, 0]])
    lc = lambda x: math.log(math.cosh(x))  # noqa: E731
    expected = (sp(-2.0) + 3 * sp(-1.0)) / 4 + 0.1 * (lc(0) + lc(0) + lc(0) + lc(-1)) / 4
    assert f(losses.dhn_loss(v, labels, 0.1)) == pytest.approx(expected, rel=1e-5)
    # DCH: similar pairs at small Cauchy distance cost less than far ones
    near = np.array([[1.0, 1.0], [1.0, 0.9]], "f4")
    far = np.array([[1.0, 1.0], [-1.0, -1.0]], "f4")
    assert f(losses.dch_loss(near, labels, 20.0, 0.0)) < f(losses.dch_loss(far, labels, 20.0, 0.0))
    assert np.isfinite(f(losses.dch_loss(np.zeros((2, 4), "f4"), labels, 20.0, 0.1)))


def test_pointwise_loss_is_sigmoid_or_softmax_cross_entropy():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    multi = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    p = 1.0 / (1.0 + np.exp(-logits))
    bce = -(multi * np.log(p) + (1 - multi) * np.log(1 - p)).mean()
    assert float(losses.pointwise_loss(logits, multi, True)) == pytest.approx(bce, rel=1e-5)
    onehot = np.array([[0, 0, 1], [0, 1, 0]], np.float32)
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ce = -np.log((soft * onehot).sum(1)).mean()
    assert float(losses.pointwise_loss(logits, onehot, False)) == pytest.approx(ce, rel=1e-5)


def test_segmentation_loss_leaves_out_unknown_pixels():
    logits = np.zeros((1, 2, 2, 3), np.float32)
    logits[0, 0, 0] = [3.0, 0.0, 0.0]
    masks = np.array([[[0, 2], [255, 255]]])
    soft = np.exp(logits[0, 0]) / np.exp(logits[0, 0]).sum(-1, keepdims=True)
    want = -(np.log(soft[0, 0]) + np.log(soft[1, 2])) / 2  # the two known pixels only
    assert float(losses.segmentation_loss(logits, masks)) == pytest.approx(want, rel=1e-5)


def test_center_losses_by_hand():
    v = np.array([[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, -1.0, 1.0]], np.float32)
    table = np.array([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]], np.float32)
    labels = np.array([[1, 0], [1, 1]], np.float32)
    centers = losses.label_centers(labels @ table, labels)  # image 2 sits between both centers
    np.testing.assert_allclose(np.asarray(centers), [[1, 1, -1, -1], [1, 0, 0, -1]])
    want = (((v[0] - [1, 1, -1, -1]) ** 2).sum() + ((v[1] - [1, 0, 0, -1]) ** 2).sum()) / 2 / 4
    assert float(losses.center_loss(v, centers)) == pytest.approx(want, rel=1e-6)
    # the two centers differ in 2 of 4 bits: 1/K ||c_a - c_b||^2 = 2; margin 3 leaves 1, margin 2 nothing
    assert float(losses.center_separation_loss(table, 3.0)) == pytest.approx(1.0)
    assert float(losses.center_separation_loss(table, 2.0)) == pytest.approx(0.0)


def test_fsr_gan_losses_by_hand():
    from trainer.losses import critic_loss, feature_loss

    f_sr = np.array([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]], np.float32)  # [2, 2, 1, 2]
    f_hr = np.zeros_like(f_sr)
    rms = np.array([math.sqrt(5 / 4), 0.0])  # per image: ||d|| / sqrt(d), d = 4
    assert f(feature_loss(f_sr, f_hr, 2.0)) == pytest.approx(np.mean(rms**2), rel=1e-5)  # = the MSE
    assert f(feature_loss(f_sr, f_hr, 2.0)) == pytest.approx(np.mean((f_sr - f_hr) ** 2), rel=1e-5)
    assert f(feature_loss(f_sr, f_hr, 1.0)) == pytest.approx(np.mean(rms), rel=1e-4)  # Eq. 8's norm
    assert f(feature_loss(f_sr, f_hr, 0.0)) == pytest.approx(1.0)  # r = 0: a constant, the adversarial term alone
    assert f(critic_loss(np.array([1.0, 3.0]), np.array([0.5, 0.5]))) == pytest.approx(1.5)  # Eq. 7


def test_balanced_pairs_weigh_similar_and_dissimilar_halves():
    v = np.array([[2.0, 1.5], [1.8, -0.2], [-1.0, 2.3]], "f4")
    labels = np.array([[1, 0], [1, 0], [0, 1]])  # pairs (0,1), (1,0) similar, the diagonal too: 5 of 9
    theta = 0.5 * v @ v.T
    s = (labels @ labels.T > 0).astype("f4")
    nll = np.logaddexp(0.0, theta) - s * theta
    expected = 0.5 * nll[s > 0].mean() + 0.5 * nll[s == 0].mean()
    assert f(losses.pairwise_likelihood_loss(v, s, balanced=True)) == pytest.approx(expected, rel=1e-5)
    assert f(losses.pairwise_likelihood_loss(v, s)) == pytest.approx(nll.mean(), rel=1e-5)
    assert abs(expected - nll.mean()) > 1e-3  # the two weightings differ on these codes
    # with few similar pairs (instances), the plain mean is lowest at v ~ 0; the balanced one is not
    rng = np.random.default_rng(0)
    views = np.repeat(np.eye(16), 2, axis=0)  # 16 photos x 2 views: 32 similar pairs of 1024
    codes = np.repeat(rng.choice([-1.0, 1.0], (16, 12)), 2, axis=0).astype("f4")  # a perfect instance code
    s = (views @ views.T > 0).astype("f4")
    for balanced, collapses in ((False, True), (True, False)):
        perfect = f(losses.pairwise_likelihood_loss(codes, s, balanced))
        zero = f(losses.pairwise_likelihood_loss(np.zeros_like(codes), s, balanced))
        assert (zero < perfect) == collapses, (balanced, zero, perfect)
