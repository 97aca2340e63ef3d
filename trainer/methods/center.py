"""Center-loss codes (seed `ddch-double-center-hashing-abstract.md`, DDCH; only the abstract is
available, so this is our reading of it):

  L = L_hs + alpha * L_dis + beta * L_c + beta_s * L_sep
  L_hs, L_dis   the pairwise DPSH loss (Eq. 11, or dhn/dch by hash_loss) and the HR/LR margin term (Eq. 12),
                over the joint batch [HR; bicubic LR], as hashnet-lr trains
  L_c           "a center loss over the learned codes, which encourages hash codes to be near the hash
                center of the same class": 1/K ||v_i - c_i||^2, with c_i the mean of the learned centers of
                image i's labels (multi-label images sit between their labels' centers)
  L_sep         keeps the centers of different labels apart: mean over label pairs of
                max(0, m - 1/K ||c_a - c_b||^2) (m = 2: half the bits differ between +-1 centers)
The centers are a network of their own (`centers`, one K-vector per label, initialised at random
vertices of the hypercube) updated by the same optimizer as HashNet. Queried like hashnet-lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from trainer import losses
from trainer.methods.base import Method, Phase, hash_optimizer, joint_batch, joint_hash_terms
from trainer.models import HashCenters, HashNet


@dataclass(frozen=True)
class CenterOptions:
    # beta, beta_s = 1: chosen after seeing Table 3 (docs/methods.md, the center method)
    center_weight: float = 1.0  # beta, the weight of L_c
    separation_weight: float = 1.0  # beta_s, the weight of L_sep
    separation_margin: float = 2.0  # m

    def __post_init__(self):
        for name in ("center_weight", "separation_weight", "separation_margin"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"options.{name} must be a finite number >= 0, got {value}")


class CenterHash(Method):
    name = "center"
    Options = CenterOptions
    updates = {"hash": ("hashnet", "centers")}

    def networks(self) -> dict:
        return {
            "hashnet": HashNet(self.preset),
            "centers": HashCenters(self.num_labels, self.preset.bits, self.preset.seed),
        }

    def optimizers(self, steps_per_epoch: int) -> dict:
        return {"hash": hash_optimizer(self.preset, self.optimizer_updates(steps_per_epoch).get("hash", 0))}

    def phases(self) -> list[Phase]:
        return [Phase("hash", self.preset.epochs, {"hash": 1}, ("l_hash", "l_hs", "l_dis", "l_center", "l_sep"))]

    def train_step(self, trainer, phase: str, batch: dict) -> None:
        p, o = self.preset, self.options
        hashnet, centers = trainer.nets["hashnet"], trainer.nets["centers"]
        labels = tf.concat([batch["labels"], batch["labels"]], axis=0)
        with tf.GradientTape() as tape:
            v = hashnet(joint_batch(batch["hr"], batch["lr_up"]), training=True)["code"]
            l_hs, l_dis = joint_hash_terms(p, v, batch["labels"])
            l_center = losses.center_loss(v, losses.label_centers(centers(labels), labels))
            l_sep = losses.center_separation_loss(self.center_table(trainer.nets), o.separation_margin)
            loss = losses.hash_loss(l_hs, l_dis, p.alpha) + o.center_weight * l_center + o.separation_weight * l_sep
            scaled = trainer.scaled("hash", loss)
        trainer.apply("hash", tape, scaled)
        trainer.track(l_hash=loss, l_hs=l_hs, l_dis=l_dis, l_center=l_center, l_sep=l_sep)

    @staticmethod
    def center_table(nets: dict):
        """[num_labels, K]: each label's hash center."""
        return nets["centers"].get_layer("centers").kernel
