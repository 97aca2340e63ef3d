"""FSR-GAN: super-resolution in feature space (seed `fsr-gan-feature-super-resolution.md`).

Instead of the query's pixels, a generator G enhances the backbone features of the upsampled LR query:
  query:    LR -> bicubic to HR size -> backbone -> G -> hash head -> codes
  gallery:  HR -> backbone -> hash head -> codes (unchanged)
Phases:
  hash   HashNet (backbone + hash head) on HR images with L_hs (as hashnet-hr); the paper's feature
         extractor is a fixed pretrained VGG16, ours is trained here first, then frozen
  fsr    G and a Wasserstein critic D, trained alternately on (F(LR), F(HR)) pairs of the same images,
         the LR drawn by the blind degradation model (every scale x1-x8: "several down-sampling ratios"):
           L(D) = E[D(G(F_LR))] - E[D(F_HR)]                                         (Eq. 7)
           L(G) = -E[D(G(F_LR))] + 1/m sum_i (||F_SR_i - F_HR_i|| / sqrt(d))^r      (Eq. 9; r = 1: Eq. 8)
         D's weights clipped to [-c, c] after each step (WGAN); Adam 8e-4 for both (the paper's rate).
Options: focal_r (r), critic (False: the paper's "CNN-Baseline", G alone with the feature term),
hashnet_weights (a HashNet trained by phase `hash` already, e.g. shared by several G variants).
The feature distance is divided by sqrt(d) (d = H*W*C) so that r = 2 is the mean squared error.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import ops

from trainer import losses
from trainer.methods.base import (
    Method,
    Phase,
    hash_optimizer,
    joint_batch,
    learning_rate,
    load_trained_weights,
    pairwise_hash_loss,
)
from trainer.models import FeatureCritic, FeatureGenerator, HashNet


@dataclass(frozen=True)
class FSROptions:
    focal_r: float = 2.0  # r of Eq. 9 (2: the paper's choice; 1: Eq. 8; 0: the adversarial term alone)
    critic: bool = True  # False: the CNN-Baseline (no D)
    lr: float = 8e-4  # Adam, G and D
    clip: float = 0.01  # WGAN weight clipping of D
    dropout: float = 0.7  # G's dropout (the paper's 70%)
    residual: bool = True  # G adds its output to F_LR and starts as the identity (False: the paper's G)
    hash_epochs: int = 0  # phase `hash` epochs; 0: the preset's epochs
    hash_on: str = "hr"  # phase `hash` trains HashNet on "hr" images (the paper's HR feature extractor) or on
    #                      "hr+lr" (HR and LR in one batch, as hashnet-lr: features already robust, then G)
    hashnet_weights: str = ""  # a HashNet already trained on HR (skips phase `hash`)

    def __post_init__(self):
        if not (0 <= self.focal_r <= 4):
            raise ValueError(f"options.focal_r must be in [0, 4], got {self.focal_r}")
        if self.hash_on not in ("hr", "hr+lr"):
            raise ValueError(f"options.hash_on must be 'hr' or 'hr+lr', got {self.hash_on!r}")
        if not (self.lr > 0 and self.clip > 0 and 0 <= self.dropout < 1 and self.hash_epochs >= 0):
            raise ValueError("options.lr and options.clip must be > 0, options.dropout in [0, 1), hash_epochs >= 0")


class FSRGAN(Method):
    name = "fsr-gan"
    Options = FSROptions
    updates = {"hash": ("hashnet",), "g": ("generator",), "d": ("critic",)}

    def networks(self) -> dict:
        hashnet = HashNet(self.preset)
        if self.options.hashnet_weights:
            load_trained_weights(hashnet, self.options.hashnet_weights, "options.hashnet_weights")
        shape = hashnet.get_layer("backbone").output_shape[1:]
        return {
            "hashnet": hashnet,
            "generator": FeatureGenerator(shape, self.options.dropout, self.preset.seed, self.options.residual),
            "critic": FeatureCritic(shape),
        }

    def optimizers(self, steps_per_epoch: int) -> dict:
        n = self.optimizer_updates(steps_per_epoch)
        return {
            "hash": hash_optimizer(self.preset, n.get("hash", 0)),
            "g": keras.optimizers.Adam(learning_rate(self.preset, self.options.lr, n.get("g", 0))),
            "d": keras.optimizers.Adam(learning_rate(self.preset, self.options.lr, n.get("d", 0))),
        }

    def phases(self) -> list[Phase]:
        o, p = self.options, self.preset
        hash_phase = [] if o.hashnet_weights else [Phase("hash", o.hash_epochs or p.epochs, {"hash": 1}, ("l_hs",))]
        fsr_updates = {"g": 1, **({"d": 1} if o.critic else {})}
        metrics = ("l_g", "l_feat") + (("l_adv", "l_d") if o.critic else ())
        return hash_phase + [Phase("fsr", p.epochs, fsr_updates, metrics)]

    def train_step(self, trainer, phase: str, batch: dict) -> None:
        p, o = self.preset, self.options
        nets = trainer.nets
        if phase == "hash":
            x, labels = batch["hr"], batch["labels"]
            if o.hash_on == "hr+lr":
                x, labels = joint_batch(x, batch["lr_up"]), tf.concat([labels, labels], axis=0)
            with tf.GradientTape() as tape:
                v = nets["hashnet"](x, training=True)["code"]
                l_hs = pairwise_hash_loss(p, v, labels)
                scaled = trainer.scaled("hash", l_hs)
            trainer.apply("hash", tape, scaled)
            trainer.track(l_hs=l_hs)
            return
        backbone = nets["hashnet"].get_layer("backbone")
        f_hr = tf.stop_gradient(backbone(batch["hr"], training=False))
        f_lr = tf.stop_gradient(backbone(batch["lr_up"], training=False))
        generator, critic = nets["generator"], nets["critic"]
        if o.critic:  # the critic's step, on this batch's generated and real features
            f_fake = tf.stop_gradient(generator(f_lr, training=True))
            with tf.GradientTape() as tape:
                l_d = losses.critic_loss(critic(f_fake, training=True), critic(f_hr, training=True))
                scaled = trainer.scaled("d", l_d)
            trainer.apply("d", tape, scaled)
            for w in critic.trainable_variables:
                w.assign(tf.clip_by_value(w, -o.clip, o.clip))
        with tf.GradientTape() as tape:
            f_sr = generator(f_lr, training=True)
            l_feat = losses.feature_loss(f_sr, f_hr, o.focal_r)
            l_adv = -ops.mean(critic(f_sr, training=False)) if o.critic else tf.zeros(())
            l_g = l_adv + l_feat  # Eq. 9
            scaled = trainer.scaled("g", l_g)
        trainer.apply("g", tape, scaled)
        trainer.track(l_g=l_g, l_feat=l_feat, **({"l_adv": l_adv, "l_d": l_d} if o.critic else {}))

    def query_code_logits(self, nets: dict, x: tf.Tensor) -> tf.Tensor:
        """LR query in HR space (bicubic) -> backbone -> G -> hash head."""
        hashnet = nets["hashnet"]
        f_sr = nets["generator"](hashnet.get_layer("backbone")(x, training=False), training=False)
        return hashnet.get_layer("hash_head")(f_sr, training=False)["code"]
