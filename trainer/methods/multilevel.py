"""Multi-level codes (seed `dscnn-multi-level-hashing-abstract.md`, DSCNN, Dong et al. 2016; only the abstract
is available, so this is our reading of it, on top of DSRHN so that LR queries go through SRNet):

  HashNet is one shared-weight (siamese) network over every image of a pair: a pair is two rows of the
  batch, and the pairwise loss covers all pairs of the batch, as DPSH does.
  global code  v = fch(fc7(...)) as DSRHN's HashNet (Eq. 7)
  local codes  a 1x1 convolution on the last conv map gives each bit k an activation map u_k (weight-based,
               as class activation mapping, the abstract's refs 9-10); the average of u over each cell of a
               fixed grid x grid partition of the map is that region's relaxed K-bit code
  loss         L_hash (Eq. 13 on the global codes of the joint batch [HR; SR]) + mu * (L_hs + alpha * L_dis on
               the local codes), where two regions are similar when they share a label; region labels
               come from the pixel masks (the classes covering >= label_fraction of the region's pixels;
               a region with none is left out). On the mosaics each 2 x 2 cell is one tile, one object.
  bit selection  for region r of an image, keep bit k when its activation map concentrates there:
               mean_r |u_k| >= select_threshold * mean |u_k| over the whole map (default 0: every bit; 1 is the
               abstract's idea, measured worse on the mosaics, docs/methods.md). A region is valid when
               its feature energy (mean activation of the last conv map) is >= valid_fraction x the
               image's, and it keeps at least one bit.
  search       the global codes shortlist, the local codes re-rank (dsrhn/multilevel.py).
SRNet's step (A) is DSRHN's; the local terms join HashNet's step (B).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from dsrhn.multilevel import local_layout
from trainer import losses
from trainer.methods.base import Phase
from trainer.methods.dsrhn import DSRHN, SRHashingOptions
from trainer.models import AdaptiveAvgPool, HashNet

LOCAL_METRICS = ("l_local_hs", "l_local_dis")


@dataclass(frozen=True)
class MultiLevelOptions(SRHashingOptions):  # DSRHN's options (hashnet_weights, sr_stage_lam), then its own
    grid: int = 2  # regions per side of the conv map: grid x grid local codes per image
    local_weight: float = 1.0  # mu, the weight of the local terms
    label_fraction: float = 0.02  # a region's labels: the classes covering at least this share of its pixels
    # bit selection: keep bit k for a region when mean_r |u_k| >= this x mean |u_k| (1: above its uniform share);
    # 0 (every bit) chosen after seeing benchmarks/multilevel.py (docs/results.md, "Multi-level codes")
    select_threshold: float = 0.0
    valid_fraction: float = 0.5  # a region is valid when its feature energy >= this x the image's mean
    rerank_weight: float = 1.0  # d = d_global + this x d_local (export metadata; the server's default)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.grid <= 8:
            raise ValueError(f"options.grid must be an integer in [1, 8], got {self.grid}")
        for name in ("local_weight", "label_fraction", "select_threshold", "valid_fraction", "rerank_weight"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"options.{name} must be a finite number >= 0, got {value}")


def region_labels(mask, num_labels: int, grid: int, min_fraction: float):
    """int mask [B, H, W] (0 background, 1 + label, 255 unknown) -> float32 [B, grid * grid, L]: the labels
    covering at least min_fraction of each grid cell's pixels (row-major cells, the local codes' order)."""
    onehot = tf.one_hot(tf.cast(mask, tf.int32), num_labels + 1, dtype=tf.float32)  # 255 -> all zero
    share = AdaptiveAvgPool(grid)(onehot)[..., 1:]  # [B, g, g, L]
    return tf.reshape(tf.cast(share >= min_fraction, tf.float32), [-1, grid * grid, num_labels])


def bit_selection(local_map, features, grid: int, threshold: float, valid_fraction: float):
    """(selected bool [N, R, K], valid bool [N, R]) from the bits' activation maps u [N, H, W, K] and the
    last conv map [N, H, W, C] (the rule in the module docstring)."""
    a = tf.abs(tf.cast(local_map, tf.float32))
    per_region = tf.reshape(AdaptiveAvgPool(grid)(a), [tf.shape(a)[0], grid * grid, a.shape[-1]])
    selected = per_region >= threshold * tf.reduce_mean(a, axis=[1, 2])[:, None, :]
    energy = tf.reduce_mean(tf.cast(features, tf.float32), axis=-1, keepdims=True)  # [N, H, W, 1]
    region_energy = tf.reshape(AdaptiveAvgPool(grid)(energy), [-1, grid * grid])
    valid = (region_energy >= valid_fraction * tf.reduce_mean(energy, axis=[1, 2, 3])[:, None]) & tf.reduce_any(
        selected, axis=-1
    )
    return selected & valid[:, :, None], valid


class DSCNN(DSRHN):
    name = "multi-level"
    needs_masks = True  # region labels come from the pixel masks
    Options = MultiLevelOptions
    # its local loss pairs the regions that carry a label, a different number on every replica
    data_parallel = "its local-code loss pairs a varying number of labelled regions per replica"

    def hashnet(self) -> keras.Model:
        return HashNet(self.preset, local_grid=self.options.grid)

    def phase(self, name: str, epochs: int) -> Phase:
        phase = super().phase(name, epochs)
        if "hash" not in phase.updates:
            return phase
        return Phase(phase.name, phase.epochs, phase.updates, phase.metrics + LOCAL_METRICS)

    def extra_hash_terms(self, out: dict, batch: dict) -> dict:
        """mu * (L_hs + alpha * L_dis) on the local codes of the joint batch [HR; SR]."""
        p, o, k = self.preset, self.options, self.preset.bits
        labels = region_labels(batch["mask"], self.num_labels, o.grid, o.label_fraction)  # [B, R, L]
        v = tf.cast(out["local"], tf.float32)  # [2B, R, K]
        flat_v = tf.reshape(v, [-1, k])
        flat_y = tf.reshape(tf.concat([labels, labels], axis=0), [-1, self.num_labels])
        keep = tf.reduce_any(flat_y > 0, axis=-1)  # regions with a known label
        l_hs = losses.semantic_hash_loss(
            p.hash_loss,
            tf.boolean_mask(flat_v, keep),
            tf.boolean_mask(flat_y, keep),
            p.gamma,
            p.dch_gamma,
            p.pair_balance,
        )
        l_hs = tf.where(tf.reduce_any(keep), l_hs, 0.0)
        v_hr, v_q = tf.split(v, 2, axis=0)
        l_dis = losses.margin_loss(tf.reshape(v_hr, [-1, k]), tf.reshape(v_q, [-1, k]), p.margin)
        return o.local_weight * losses.hash_loss(l_hs, l_dis, p.alpha), {"l_local_hs": l_hs, "l_local_dis": l_dis}

    def code_outputs(self, nets: dict, images: tf.Tensor) -> dict:
        o = self.options
        out = nets["hashnet"](images, training=False)
        selected, valid = bit_selection(out["local_map"], out["features"], o.grid, o.select_threshold, o.valid_fraction)
        return {"code": out["code"], "local": out["local"], "local_selected": selected, "local_valid": valid}

    def query_code_outputs(self, nets: dict, x: tf.Tensor) -> dict:
        return self.code_outputs(nets, tf.cast(self.query_image(nets, x), tf.float32))

    def local_layout(self) -> dict:
        o = self.options
        return local_layout(o.grid, self.preset.bits, o.rerank_weight, o.select_threshold)
