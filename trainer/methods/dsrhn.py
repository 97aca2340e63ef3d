"""DSRHN (Section 3.1) and its ablation rows: SRNet + HashNet, trained alternately.

Step A (SRNet, Adam; HashNet frozen): L_SR = L_per + lambda * L_mse        (Eq. 5)
Step B (HashNet, SGD+momentum; SRNet frozen): L_hash = L_hs + alpha * L_dis (Eq. 13)
L_hs is computed over all pairs of the joint batch [HR; SR], so SR queries learn to land on their HR
gallery neighbours in Hamming space. Options: hash_views=query+bicubic trains step B on [HR; SR; bicubic LR],
hash_views=bicubic (two-stage) on [HR; bicubic LR] with SRNet only at query time (a pretrained generator too dear
to run in every step), query_fuse sums HashNet's logits for the SR and the bicubic query before the sign.
Rows: dsrhn; hashnet-hr (HashNet on HR, HR queries); hashnet-lr (HashNet on HR + bicubic LR, no SR);
two-stage (SRNet by MSE alone, frozen, then HashNet: the paper's HashNet-SRGAN row).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import ops

from dsrhn.registry import sr_view_methods
from trainer import losses
from trainer.methods.base import (
    Method,
    Phase,
    hash_optimizer,
    joint_batch,
    joint_hash_terms,
    learning_rate,
    load_trained_weights,
    pairwise_hash_loss,
    summed_logits,
)
from trainer.models import HashNet, SRNet
from trainer.pretrained import load_weights_strict
from trainer.sr_weights import weights_path

SR_METRICS = ("l_sr", "l_per", "l_mse")
# options.hash_views: step B's joint batch [HR; SR], [HR; SR; bicubic], or (two-stage) [HR; bicubic]
HASH_VIEWS = ("query", "query+bicubic", "bicubic")
HASH_METRICS = ("l_hash", "l_hs", "l_dis")


class PhaseRates(keras.optimizers.schedules.LearningRateSchedule):
    """`first` for the first `boundary` updates, then `second` counted from the boundary; each a
    constant or a schedule (what `learning_rate` returns). It reads the optimizer's iteration
    counter, so a resumed run gets the same rates."""

    def __init__(self, boundary: int, first, second):
        self.boundary, self.first, self.second = boundary, first, second

    @staticmethod
    def _rate(rate, step):
        return rate(step) if callable(rate) else rate * ops.ones_like(step)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return ops.where(
            step < self.boundary, self._rate(self.first, step), self._rate(self.second, step - self.boundary)
        )

    def get_config(self) -> dict:
        return {"boundary": self.boundary, "first": self.first, "second": self.second}


@dataclass(frozen=True)
class SRHashingOptions:
    hashnet_weights: str = ""  # HashNet starts from a trained HashNet (.weights.h5, e.g. HashNet-HR's) and fine-tunes
    # > 0: the SR stage (sr-mse) trains SRNet by Eq. 5 with this lambda, against the features of HashNet as it starts
    # (its ImageNet backbone; SRGAN's VGG loss with this backbone) instead of by L_mse alone (0, the default)
    sr_stage_lam: float = 0.0
    # what HashNet's step B trains on besides HR: "query" (the SR query: [HR; SR]), "query+bicubic" ([HR; SR; the
    # bicubic query], so that HashNet reads both; the SR rows two-stage and dsrhn) or "bicubic" ([HR; bicubic]:
    # two-stage only, SRNet runs at query time alone, so training costs HashNet-LR's; with query_fuse the SR and
    # the bicubic query vote)
    hash_views: str = "query"
    # the SR rows' query code is Eq. 1 on the sum of HashNet's logits for the SR query and the bicubic query
    query_fuse: bool = False

    def __post_init__(self):
        if not (0 <= self.sr_stage_lam < float("inf")):
            raise ValueError(
                f"options.sr_stage_lam must be a finite number >= 0 (0: the SR stage by MSE alone), "
                f"got {self.sr_stage_lam}"
            )
        if self.hash_views not in HASH_VIEWS:
            raise ValueError(f"options.hash_views must be one of {list(HASH_VIEWS)}, got {self.hash_views!r}")


class SRHashing(Method):
    """SRNet + HashNet with two optimizers; subclasses pick the phases and the query path."""

    updates = {"sr": ("srnet",), "hash": ("hashnet",)}
    Options = SRHashingOptions

    def __init__(self, preset, info=None):
        super().__init__(preset, info)
        o = self.options
        for name, used in (("hash_views", o.hash_views != "query"), ("query_fuse", o.query_fuse)):
            if used and not self.spec.sr_views:
                raise ValueError(
                    f"options.{name} applies to the methods {list(sr_view_methods())} (HashNet on "
                    f"SRNet's output), not to method {self.name!r}"
                )

    def networks(self) -> dict:
        p = self.preset
        srnet = SRNet(p)  # built first: the seeded initial weights follow the build order
        if p.srnet_weights:  # an MSE-trained SRNet (two-stage, dsrhn), checked by Preset
            load_trained_weights(srnet, p.srnet_weights, "srnet_weights")
        elif p.sr_weights:  # a pretrained RRDBNet (trainer/sr_weights.py)
            load_weights_strict(srnet, weights_path(p.sr_weights))
        hashnet = self.hashnet()
        if self.options.hashnet_weights:
            load_trained_weights(hashnet, self.options.hashnet_weights, "options.hashnet_weights")
        return {"srnet": srnet, "hashnet": hashnet}

    def hashnet(self) -> keras.Model:
        return HashNet(self.preset)

    def optimizers(self, steps_per_epoch: int) -> dict:
        hash_updates = self.optimizer_updates(steps_per_epoch).get("hash", 0)
        return {
            "sr": keras.optimizers.Adam(self.sr_learning_rate(steps_per_epoch)),
            "hash": hash_optimizer(self.preset, hash_updates),
        }

    def sr_learning_rate(self, steps_per_epoch: int):
        """SRNet's Adam rate: sr_lr, except that dsrhn's alternating phase fine-tunes an SRNet that started
        MSE-trained (srnet_weights or sr_warmup_epochs) at sr_finetune_lr, when that is set; with
        lr_decay=cosine each part decays over its own updates."""
        p = self.preset
        updates = self.optimizer_updates(steps_per_epoch).get("sr", 0)
        mse_start = isinstance(self, DSRHN) and bool(p.sr_trained or p.sr_warmup_epochs)
        if not (mse_start and p.sr_finetune_lr):
            return learning_rate(p, p.sr_lr, updates)
        warmup = sum(ph.epochs for ph in self.phases() if ph.name == "sr-mse") * steps_per_epoch
        return PhaseRates(
            warmup, learning_rate(p, p.sr_lr, warmup), learning_rate(p, p.sr_finetune_lr, updates - warmup)
        )

    # phases, by what their step does: (step A, step B)
    STEPS = {
        "alternate": ("sr", "hash-sr"),  # dsrhn
        "hash-hr": (None, "hash-hr"),  # hashnet-hr
        "hash-bicubic": (None, "hash-bicubic"),  # hashnet-lr
        "sr-mse": ("sr-mse", None),  # two-stage stage 1, dsrhn warm-up
        "hash-sr": (None, "hash-sr"),  # two-stage stage 2
    }

    def phase(self, name: str, epochs: int) -> Phase:
        step_a, step_b = self.STEPS[name]
        updates, metrics = {}, ()
        if step_a:
            updates["sr"] = self.preset.sr_steps if step_b else 1
            metrics += SR_METRICS if step_a == "sr" or self.sr_stage_lam() else ("l_mse",)
        if step_b:
            updates["hash"] = 1
            metrics += HASH_METRICS
        return Phase(name, epochs, updates, metrics)

    def sr_stage_lam(self) -> float:
        """Eq. 5's lambda in the SR stage (sr-mse); 0: L_mse alone."""
        return self.options.sr_stage_lam

    def train_step(self, trainer, phase: str, batch: dict) -> None:
        step_a, step_b = self.STEPS[phase]
        hr, lr_up = batch["hr"], batch["lr_up"]
        if step_a:
            mse_only = step_a == "sr-mse" and not self.sr_stage_lam()
            f_hr = None if mse_only else tf.stop_gradient(trainer.nets["hashnet"](hr, training=False)["features"])
            lam = self.sr_stage_lam() if step_a == "sr-mse" else self.preset.lam
            for _ in range(self.preset.sr_steps if step_b else 1):
                values = self.sr_step(trainer, hr, lr_up, f_hr, lam)
                trainer.track(**({"l_mse": values["l_mse"]} if mse_only else values))
        if step_b:
            trainer.track(**self.hash_step(trainer, batch, step_b))

    # -- step A: SRNet with HashNet frozen
    def sr_step(self, trainer, hr, lr_up, f_hr=None, lam: float | None = None) -> dict:
        """lr_up: the LR queries in HR space; f_hr: HashNet's last-conv features of hr (fixed while
        HashNet is frozen); None: MSE only; lam: Eq. 5's lambda (None: the preset's)."""
        srnet, hashnet = trainer.nets["srnet"], trainer.nets["hashnet"]
        with tf.GradientTape() as tape:
            sr = srnet(lr_up, training=True)
            l_mse = losses.mse_loss(sr, hr)
            if f_hr is None:
                l_per = tf.zeros(())
                loss = l_mse
            else:
                f_sr = hashnet(sr, training=False)["features"]
                l_per = losses.perceptual_loss(f_hr, f_sr)
                loss = losses.sr_loss(l_per, l_mse, self.preset.lam if lam is None else lam)
            scaled = trainer.scaled("sr", loss)
        trainer.apply("sr", tape, scaled)
        return {"l_sr": loss, "l_per": l_per, "l_mse": l_mse}

    # -- step B: HashNet with SRNet frozen
    def hash_step(self, trainer, batch: dict, kind: str) -> dict:
        p = self.preset
        hr, lr_up, labels = batch["hr"], batch["lr_up"], batch["labels"]
        hashnet = trainer.nets["hashnet"]
        extra_loss, extra = 0.0, {}
        if kind == "hash-sr":
            query = tf.stop_gradient(trainer.nets["srnet"](lr_up, training=False))
        elif kind == "hash-bicubic":
            query = lr_up  # already the bicubic resize to HR size
        else:
            query = None
        with tf.GradientTape() as tape:
            if query is None:
                v_hr = hashnet(hr, training=True)["code"]
                l_hs = pairwise_hash_loss(p, v_hr, labels)
                l_dis = tf.zeros(())
            else:
                three = kind == "hash-sr" and self.options.hash_views == "query+bicubic"  # [HR; SR; bicubic]
                queries = (query, lr_up) if three else (query,)
                out = hashnet(joint_batch(hr, *queries), training=True)
                l_hs, l_dis = joint_hash_terms(p, out["code"], labels, views=1 + len(queries))
                extra_loss, extra = self.extra_hash_terms(out, batch)
            loss = losses.hash_loss(l_hs, l_dis, p.alpha) + extra_loss
            scaled = trainer.scaled("hash", loss)
        trainer.apply("hash", tape, scaled)
        return {"l_hash": loss, "l_hs": l_hs, "l_dis": l_dis, **extra}

    def extra_hash_terms(self, out: dict, batch: dict) -> tuple:
        """What a subclass adds to L_hash on the joint batch's outputs: (loss term, {metric: value})."""
        return 0.0, {}

    def query_image(self, nets: dict, x: tf.Tensor) -> tf.Tensor:
        if self.query_path == "sr":
            return tf.cast(nets["srnet"](x, training=False), tf.float32)
        return x

    def query_code_logits(self, nets: dict, x: tf.Tensor) -> tf.Tensor:
        if not self.options.query_fuse:
            return super().query_code_logits(nets, x)
        # the SR query and the bicubic query vote
        return summed_logits(lambda t: self.code_logits(nets, t), self.query_image(nets, x), x)


class DSRHN(SRHashing):
    name = "dsrhn"

    def __init__(self, preset, info=None):
        super().__init__(preset, info)
        if self.options.hash_views == "bicubic":  # Eq. 5's L_per needs HashNet to read SRNet's output
            raise ValueError(
                "options.hash_views=bicubic trains HashNet without SRNet's output: two-stage only, not dsrhn "
                "(its SRNet learns from HashNet's loss on the SR query)"
            )

    def phases(self) -> list[Phase]:
        """Optionally from an SRNet first trained by MSE alone (sr_warmup_epochs), as SRGAN does;
        srnet_weights: that SRNet exists already."""
        p = self.preset
        warmup = p.sr_warmup_epochs if not p.sr_trained else 0
        return ([self.phase("sr-mse", warmup)] if warmup else []) + [self.phase("alternate", p.epochs)]


class HashNetHR(SRHashing):
    name = "hashnet-hr"

    def phases(self) -> list[Phase]:
        return [self.phase("hash-hr", self.preset.epochs)]


class HashNetLR(SRHashing):
    name = "hashnet-lr"

    def phases(self) -> list[Phase]:
        return [self.phase("hash-bicubic", self.preset.epochs)]


class TwoStage(SRHashing):
    name = "two-stage"

    def phases(self) -> list[Phase]:
        p = self.preset
        hash_phase = "hash-bicubic" if self.options.hash_views == "bicubic" else "hash-sr"  # SRNet at query time
        if p.sr_trained:  # stage 1 already trained (e.g. for another bit length) or pretrained
            return [self.phase(hash_phase, p.epochs)]
        return [self.phase("sr-mse", p.sr_warmup_epochs or p.epochs), self.phase(hash_phase, p.epochs)]
