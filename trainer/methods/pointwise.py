"""Point-wise hashing, with and without a semantic segmentation branch (seed
`semantic-segmentation-deep-hashing.md`, Gkountakos et al.).

pointwise:      backbone -> fc6, fc7 -> K-node latent layer r = sigmoid(z) -> classification layer;
                trained with the classification loss alone (sigmoid cross-entropy per label for
                multi-label data, softmax cross-entropy for single-label); codes H = sgn(r - 0.5)  (Eq. 2)
pointwise-seg:  the same on the PSP module's stacked features, after a segmentation learning phase:
                phase `seg` trains backbone + PSP + a segmentation head on the pixel masks (pixel-wise
                cross-entropy); phase `hash` drops the segmentation loss (the paper removes the PSP softmax)
                and trains backbone + PSP + the hash/classification head.
Both train on HR and bicubic-upsampled LR in one joint batch (as hashnet-lr does) and are queried with
the LR query brought to HR size (no SR).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from trainer import losses
from trainer.methods.base import Method, Phase, hash_optimizer, joint_batch
from trainer.models import Backbone, PointWiseHead, PyramidPooling, SegHead, compose


@dataclass(frozen=True)
class PointWiseOptions:
    seg_epochs: int = 2  # segmentation learning phase (pointwise-seg), before the hash phase
    psp_bins: str = "1,2,3,4"  # pooled grid sizes; the paper's 28/14/9/7-px bins on a 28-px map

    def __post_init__(self):
        if self.seg_epochs < 0:
            raise ValueError(f"options.seg_epochs must be >= 0, got {self.seg_epochs}")
        if not self.bins or min(self.bins) < 1:
            raise ValueError(f"options.psp_bins must be positive integers like 1,2,3,4, got {self.psp_bins!r}")

    @property
    def bins(self) -> tuple[int, ...]:
        try:
            return tuple(int(b) for b in str(self.psp_bins).split(",") if b.strip())
        except ValueError:
            return ()


class PointWise(Method):
    name = "pointwise"
    Options = PointWiseOptions
    segmentation = False
    updates = {"hash": ("hashnet/backbone", "hashnet/pointwise_head")}

    def networks(self) -> dict:
        p = self.preset
        backbone = Backbone(p)
        shape, psp = backbone.output_shape[1:], None
        if self.segmentation:
            psp = PyramidPooling(shape, self.options.bins)
            shape = psp.output_shape[1:]
        heads = [PointWiseHead(p, shape, self.num_labels)]
        if self.segmentation:
            heads.append(SegHead(shape, self.num_labels + 1, p.hr_size))
        return {"hashnet": compose(backbone, heads, "HashNet", neck=psp)}

    def optimizers(self, steps_per_epoch: int) -> dict:
        n = self.optimizer_updates(steps_per_epoch)
        return {name: hash_optimizer(self.preset, n.get(name, 0)) for name in self.updates}

    def phases(self) -> list[Phase]:
        return [Phase("hash", self.preset.epochs, {"hash": 1}, ("l_cls",))]

    def train_step(self, trainer, phase: str, batch: dict) -> None:
        hashnet = trainer.nets["hashnet"]
        x = joint_batch(batch["hr"], batch["lr_up"])  # an LR query's mask and labels are its HR image's
        if phase == "seg":
            masks = tf.concat([batch["mask"], batch["mask"]], axis=0)
            with tf.GradientTape() as tape:
                loss = losses.segmentation_loss(hashnet(x, training=True)["seg"], masks)
                scaled = trainer.scaled("seg", loss)
            trainer.apply("seg", tape, scaled)
            trainer.track(l_seg=loss)
            return
        labels = tf.concat([batch["labels"], batch["labels"]], axis=0)
        with tf.GradientTape() as tape:
            loss = losses.pointwise_loss(hashnet(x, training=True)["logits"], labels, self.multi_label)
            scaled = trainer.scaled("hash", loss)
        trainer.apply("hash", tape, scaled)
        trainer.track(l_cls=loss)

    @property
    def multi_label(self) -> bool:
        return self.info.is_multi_label if self.info is not None else True


class PointWiseSeg(PointWise):
    name = "pointwise-seg"
    needs_masks = True
    segmentation = True
    updates = {
        "seg": ("hashnet/backbone", "hashnet/psp", "hashnet/seg_head"),
        "hash": ("hashnet/backbone", "hashnet/psp", "hashnet/pointwise_head"),
    }

    def phases(self) -> list[Phase]:
        seg = [Phase("seg", self.options.seg_epochs, {"seg": 1}, ("l_seg",))] if self.options.seg_epochs else []
        return seg + super().phases()
