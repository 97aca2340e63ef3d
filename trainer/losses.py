"""DSRHN's losses (Eqs. 3-5, 9-13) and the baseline hashing losses (DHN, DCH).

Normalisation: pairwise terms are averaged over all ordered pairs (i, j) of the batch,
element-wise terms over batch x bits, so weights transfer across batch sizes and K.
"""

from __future__ import annotations

from keras import ops


def mse_loss(sr, hr):  # Eq. 3: L_mse = ||X_HR - X_SR||^2
    return ops.mean(ops.square(ops.cast(hr, "float32") - ops.cast(sr, "float32")))


def perceptual_loss(features_hr, features_sr):  # Eq. 4: L_per = ||F_cov(X_HR) - F_cov(X_SR)||^2
    return ops.mean(ops.square(ops.cast(features_hr, "float32") - ops.cast(features_sr, "float32")))


def sr_loss(l_per, l_mse, lam: float):  # Eq. 5: L_SR = L_per + lambda * L_mse
    return l_per + lam * l_mse


def similarity(labels_a, labels_b):  # s_ij (Eq. 6, corrected): 1 if the images share >= 1 label
    """DPSH (Eqs. 9-10) needs s_ij = 1 for similar pairs; the paper's Eq. 6 prints it reversed."""
    shared = ops.matmul(ops.cast(labels_a, "float32"), ops.transpose(ops.cast(labels_b, "float32")))
    return ops.cast(shared > 0, "float32")


def pairwise_likelihood_loss(v, s, balanced: bool = False):  # Eq. 11, 1st term: -sum(s_ij theta_ij - log(1+e^theta_ij))
    """DPSH negative log-likelihood with theta_ij = 1/2 v_i^T v_j, via softplus (stable). balanced: similar and
    dissimilar pairs weigh half each, as HashNet's weighted likelihood (Cao et al. 2017) does for imbalanced data
    (instances: each photo is similar to its few views only, and the plain mean is then minimised by v ~ 0)."""
    v = ops.cast(v, "float32")
    theta = 0.5 * ops.matmul(v, ops.transpose(v))
    nll = ops.softplus(theta) - s * theta
    if not balanced:
        return ops.mean(nll)
    return pair_balanced_mean(nll, s)


def pair_balanced_mean(values, s):
    """Half the mean over similar pairs plus half the mean over dissimilar pairs (a side with no pair: 0)."""
    n_sim, n_dis = ops.sum(s), ops.sum(1.0 - s)
    similar = 0.5 * ops.sum(values * s) / ops.maximum(n_sim, 1.0)
    return similar + 0.5 * ops.sum(values * (1.0 - s)) / ops.maximum(n_dis, 1.0)


def quantization_loss(v):  # Eq. 11, second term: ||b - v||^2 with b = sign(v)
    v = ops.cast(v, "float32")
    b = ops.stop_gradient(ops.where(v >= 0, 1.0, -1.0))
    return ops.mean(ops.square(b - v))


def dpsh_loss(v, labels, gamma: float, balanced: bool = False):  # Eq. 11: L_hs = likelihood + gamma * quantisation
    return pairwise_likelihood_loss(v, similarity(labels, labels), balanced) + gamma * quantization_loss(v)


def margin_loss(v_hr, v_sr, margin: float):  # Eq. 12: L_dis = max(m - ||F(HR) - F(SR)||^2, 0)
    d = ops.sum(ops.square(ops.cast(v_hr, "float32") - ops.cast(v_sr, "float32")), axis=-1)
    return ops.mean(ops.maximum(margin - d, 0.0))


def hash_loss(l_hs, l_dis, alpha: float):  # Eq. 13: L_hash = L_hs + alpha * L_dis
    return l_hs + alpha * l_dis


def dhn_loss(v, labels, gamma: float):
    """DHN (Zhu et al. 2016): pairwise cross-entropy on theta = v_i^T v_j plus the
    log-cosh quantisation penalty sum log cosh(|v| - 1)."""
    v = ops.cast(v, "float32")
    s = similarity(labels, labels)
    theta = ops.matmul(v, ops.transpose(v))
    likelihood = ops.mean(ops.softplus(theta) - s * theta)
    x = ops.abs(v) - 1.0
    log_cosh = ops.abs(x) + ops.softplus(-2.0 * ops.abs(x)) - ops.log(2.0)  # stable log(cosh(x))
    return likelihood + gamma * ops.mean(log_cosh)


def _cosine_hamming(a, b, bits: int):
    """DCH's continuous Hamming distance: K/2 * (1 - cos(a, b)), pairwise."""
    a = a / (ops.norm(a, axis=-1, keepdims=True) + 1e-8)
    b = b / (ops.norm(b, axis=-1, keepdims=True) + 1e-8)
    return 0.5 * bits * (1.0 - ops.matmul(a, ops.transpose(b)))


def dch_loss(v, labels, gamma: float, quant_weight: float):
    """DCH (Cao et al. 2018): weighted Cauchy cross-entropy
    w_ij (s_ij log(d_ij / g) + log(1 + g / d_ij)) plus the Cauchy quantisation
    log(1 + d(|v|, 1) / g)."""
    v = ops.cast(v, "float32")
    bits = v.shape[-1]
    s = similarity(labels, labels)
    d = ops.maximum(_cosine_hamming(v, v, bits), 1e-6)
    n = ops.cast(ops.size(s), "float32")
    n_sim = ops.maximum(ops.sum(s), 1.0)
    n_dis = ops.maximum(n - ops.sum(s), 1.0)
    w = s * (n / n_sim) + (1.0 - s) * (n / n_dis)
    ce = s * ops.log(d / gamma) + ops.log(1.0 + gamma / d)
    ones = ops.ones_like(v)
    d_q = ops.sum(_cosine_hamming(ops.abs(v), ones, bits) * ops.eye(ops.shape(v)[0]), axis=-1)
    return ops.mean(w * ce) + quant_weight * ops.mean(ops.log(1.0 + d_q / gamma))


def pointwise_loss(logits, labels, multi_label: bool):
    """Point-wise hashing's classification loss on the layer after the latent codes (Lin et al. 2015;
    segmentation-hashing paper, Sec. III-B): sigmoid cross-entropy per label for multi-label data,
    softmax cross-entropy for single-label data (one-hot labels)."""
    logits, labels = ops.cast(logits, "float32"), ops.cast(labels, "float32")
    if multi_label:
        return ops.mean(ops.softplus(logits) - labels * logits)  # = BCE(sigmoid(logits), labels), stable
    return ops.mean(ops.logsumexp(logits, axis=-1) - ops.sum(labels * logits, axis=-1))


def segmentation_loss(seg_logits, masks, ignore: int = 255):
    """Pixel-wise softmax cross-entropy of the segmentation branch (the paper's negative log-likelihood
    criterion): masks int [B, H, W] of class ids (0 background, 1 + label), `ignore` pixels left out."""
    logits = ops.cast(seg_logits, "float32")
    masks = ops.cast(masks, "int32")
    valid = ops.cast(ops.not_equal(masks, ignore), "float32")
    target = ops.where(ops.equal(masks, ignore), 0, masks)
    onehot = ops.one_hot(target, ops.shape(logits)[-1])
    nll = ops.logsumexp(logits, axis=-1) - ops.sum(onehot * logits, axis=-1)
    return ops.sum(nll * valid) / ops.maximum(ops.sum(valid), 1.0)


def label_centers(center_sums, labels):  # the center of an image: the mean of its labels' hash centers
    n = ops.maximum(ops.sum(ops.cast(labels, "float32"), axis=-1, keepdims=True), 1.0)
    return ops.cast(center_sums, "float32") / n


def center_loss(v, centers):  # L_c = 1/K ||v_i - c_{y_i}||^2, averaged over the batch (DDCH's compact constraint)
    v = ops.cast(v, "float32")
    return ops.mean(ops.sum(ops.square(v - centers), axis=-1)) / v.shape[-1]


def center_separation_loss(center_table, margin: float):
    """Keeps the hash centers of different labels apart: mean over label pairs a != b of
    max(0, margin - 1/K ||c_a - c_b||^2). With centers at +-1, margin 2 asks for half the bits to differ."""
    c = ops.cast(center_table, "float32")
    k = c.shape[-1]
    sq = ops.sum(ops.square(c), axis=-1)
    d = (sq[:, None] + sq[None, :] - 2.0 * ops.matmul(c, ops.transpose(c))) / k
    n = ops.shape(c)[0]
    off = 1.0 - ops.eye(n)
    return ops.sum(ops.maximum(margin - d, 0.0) * off) / ops.maximum(ops.sum(off), 1.0)


def feature_loss(f_sr, f_hr, r: float):  # Eq. 9's second term: 1/m sum_i (||F_SR_i - F_HR_i|| / sqrt(d))^r
    d = ops.cast(f_sr, "float32") - ops.cast(f_hr, "float32")
    d = ops.reshape(d, (ops.shape(d)[0], -1))
    rms = ops.sqrt(ops.mean(ops.square(d), axis=-1) + 1e-12)
    return ops.mean(ops.power(rms, r))


def critic_loss(d_fake, d_real):  # Eq. 7: L(D) = E[D(fake)] - E[D(real)]
    return ops.mean(d_fake) - ops.mean(d_real)


def semantic_hash_loss(name: str, v, labels, gamma: float, dch_gamma: float, balanced: bool = False):
    """L_hs by name: dpsh (the paper's), dhn or dch (its Table 2 baselines; DCH weighs its pairs already).
    balanced: DPSH's similar and dissimilar pairs weigh half each (Preset.pair_balance)."""
    if name == "dpsh":
        return dpsh_loss(v, labels, gamma, balanced)
    if name == "dhn":
        return dhn_loss(v, labels, gamma)
    if name == "dch":
        return dch_loss(v, labels, dch_gamma, gamma)
    raise ValueError(f"unknown hash loss {name!r}")
