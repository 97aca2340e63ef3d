"""Alternating DSRHN training (Section 3.1) and the ablation modes, with exact resume.

Every batch holds HR images and their LR queries brought to HR size (`lr_up`, by
dsrhn.degrade.to_hr_space): the stored LR partners (degradation kind `fixed`) or LR drawn
afresh per example and epoch by the blind degradation model (kind `blind`).
Step A (SRNet, Adam; HashNet frozen): L_SR = L_per + lambda * L_mse        (Eq. 5)
Step B (HashNet, SGD+momentum; SRNet frozen): L_hash = L_hs + alpha * L_dis (Eq. 13)
L_hs is computed over all pairs of the joint batch [HR; SR], so SR queries learn to
land on their HR gallery neighbours in Hamming space.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from dsrhn.config import Preset
from dsrhn.degrade import degrade, example_seed, to_hr_space
from dsrhn.records import DatasetInfo, read_split
from trainer import losses
from trainer.models import HashNet, SRNet

# phase name -> (what step A does, what step B does)
PHASES = {
    "alternate": ("sr", "hash-sr"),  # dsrhn
    "hash-hr": (None, "hash-hr"),  # hashnet-hr
    "hash-bicubic": (None, "hash-bicubic"),  # hashnet-lr
    "sr-mse": ("sr-mse", None),  # two-stage, stage 1
    "hash-sr": (None, "hash-sr"),  # two-stage, stage 2
}


def mode_phases(preset: Preset) -> list[tuple[str, int]]:
    """The (phase, epochs) schedule of a mode."""
    if preset.mode == "dsrhn":  # optionally from an SRNet first trained by MSE alone, as SRGAN does
        warmup = preset.sr_warmup_epochs if not preset.srnet_weights else 0  # srnet_weights: done already
        return ([("sr-mse", warmup)] if warmup else []) + [("alternate", preset.epochs)]
    if preset.mode == "hashnet-hr":
        return [("hash-hr", preset.epochs)]
    if preset.mode == "hashnet-lr":
        return [("hash-bicubic", preset.epochs)]
    if preset.srnet_weights:  # stage 1 already trained (e.g. for another bit length)
        return [("hash-sr", preset.epochs)]
    return [("sr-mse", preset.sr_warmup_epochs or preset.epochs), ("hash-sr", preset.epochs)]


class DSRHNTrainer(keras.Model):
    """Holds SRNet, HashNet and their two optimizers; `train_step` runs one phase's steps."""

    def __init__(self, preset: Preset, steps_per_epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.preset = preset
        self.srnet = SRNet(preset)
        self.hashnet = HashNet(preset)
        if preset.srnet_weights:  # an MSE-trained SRNet (two-stage, dsrhn), checked by Preset
            if not os.path.exists(preset.srnet_weights):
                raise FileNotFoundError(f"srnet_weights {preset.srnet_weights} does not exist")
            self.srnet.load_weights(preset.srnet_weights)
        _, hash_updates = optimizer_updates(preset, steps_per_epoch)
        self.sr_optimizer = _maybe_loss_scale(keras.optimizers.Adam(sr_learning_rate(preset, steps_per_epoch)), preset)
        self.hash_optimizer = _maybe_loss_scale(_hash_optimizer(preset, hash_updates), preset)
        self.phase = "alternate"
        self.replicas = tf.distribute.get_strategy().num_replicas_in_sync
        names = ["l_sr", "l_per", "l_mse", "l_hash", "l_hs", "l_dis"]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}

    def build_optimizers(self) -> None:
        self.sr_optimizer.build(self.srnet.trainable_variables)
        self.hash_optimizer.build(self.hashnet.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, lr_up, training=False):
        return self.hashnet(self.srnet(lr_up, training=training), training=training)[1]

    # -- step A: SRNet with HashNet frozen
    def sr_step(self, hr, lr_up, f_hr=None):
        """lr_up: the LR queries in HR space; f_hr: HashNet's last-conv features of hr (fixed while
        HashNet is frozen); None: MSE only."""
        with tf.GradientTape() as tape:
            sr = self.srnet(lr_up, training=True)
            l_mse = losses.mse_loss(sr, hr)
            if f_hr is None:
                l_per = tf.zeros(())
                loss = l_mse
            else:
                f_sr, _ = self.hashnet(sr, training=False)
                l_per = losses.perceptual_loss(f_hr, f_sr)
                loss = losses.sr_loss(l_per, l_mse, self.preset.lam)
            scaled = self._scale(self.sr_optimizer, loss / self.replicas)
        variables = self.srnet.trainable_variables
        self.sr_optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self._track(l_sr=loss, l_per=l_per, l_mse=l_mse)

    # -- step B: HashNet with SRNet frozen
    def hash_step(self, hr, lr_up, labels, kind: str):
        p = self.preset
        if kind == "hash-sr":
            query = tf.stop_gradient(self.srnet(lr_up, training=False))
        elif kind == "hash-bicubic":
            query = lr_up  # already the bicubic resize to HR size
        else:
            query = None
        with tf.GradientTape() as tape:
            if query is None:
                _, v_hr = self.hashnet(hr, training=True)
                l_hs = losses.semantic_hash_loss(p.hash_loss, v_hr, labels, p.gamma, p.dch_gamma)
                l_dis = tf.zeros(())
            else:
                # one forward pass over [HR; query], so batch norm normalises both with the same
                # statistics and its moving averages describe the mix it is later run on
                _, v = self.hashnet(tf.concat([hr, query], axis=0), training=True)
                v_hr, v_q = tf.split(v, 2, axis=0)
                l_hs = losses.semantic_hash_loss(p.hash_loss, v, tf.concat([labels, labels], 0), p.gamma, p.dch_gamma)
                l_dis = losses.margin_loss(v_hr, v_q, p.margin)
            loss = losses.hash_loss(l_hs, l_dis, p.alpha)
            scaled = self._scale(self.hash_optimizer, loss / self.replicas)
        variables = self.hashnet.trainable_variables
        self.hash_optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self._track(l_hash=loss, l_hs=l_hs, l_dis=l_dis)

    def train_step(self, data):
        step_a, step_b = PHASES[self.phase]
        hr, lr_up, labels = data["hr"], data["lr_up"], data["labels"]
        if step_a:
            f_hr = None if step_a == "sr-mse" else tf.stop_gradient(self.hashnet(hr, training=False)[0])
            for _ in range(self.preset.sr_steps if step_b else 1):
                self.sr_step(hr, lr_up, f_hr)
        if step_b:
            self.hash_step(hr, lr_up, labels, step_b)
        return {n: self.trackers[n].result() for n in self._phase_metrics()}

    def _phase_metrics(self) -> list[str]:
        step_a, step_b = PHASES[self.phase]
        out = (["l_sr", "l_per", "l_mse"] if step_a == "sr" else ["l_mse"] if step_a else [])
        return out + (["l_hash", "l_hs", "l_dis"] if step_b else [])

    def _track(self, **values):
        for name, value in values.items():
            self.trackers[name].update_state(value)

    @staticmethod
    def _scale(optimizer, loss):
        return optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss


def optimizer_updates(preset: Preset, steps_per_epoch: int) -> tuple[int, int]:
    """How many times the run updates SRNet and HashNet (the horizon of a decaying learning rate)."""
    sr = hash_ = 0
    for phase, epochs in mode_phases(preset):
        step_a, step_b = PHASES[phase]
        if step_a:
            sr += epochs * steps_per_epoch * (preset.sr_steps if step_b else 1)
        if step_b:
            hash_ += epochs * steps_per_epoch
    return sr, hash_


def _learning_rate(preset: Preset, base: float, updates: int):
    """A constant rate, or cosine decay to 0 over `updates` optimizer steps. The schedule reads the
    optimizer's own iteration counter, which checkpoints restore, so a resumed run decays identically."""
    if preset.lr_decay == "cosine" and updates > 0:
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=updates)
    return base


class PhaseRates(keras.optimizers.schedules.LearningRateSchedule):
    """`first` for the first `boundary` updates, then `second` counted from the boundary; each a
    constant or a schedule (what `_learning_rate` returns). It reads the optimizer's iteration
    counter, so a resumed run gets the same rates."""

    def __init__(self, boundary: int, first, second):
        self.boundary, self.first, self.second = boundary, first, second

    @staticmethod
    def _rate(rate, step):
        return rate(step) if callable(rate) else rate * ops.ones_like(step)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return ops.where(step < self.boundary, self._rate(self.first, step),
                         self._rate(self.second, step - self.boundary))

    def get_config(self) -> dict:
        return {"boundary": self.boundary, "first": self.first, "second": self.second}


def sr_learning_rate(preset: Preset, steps_per_epoch: int):
    """SRNet's Adam rate: sr_lr, except that dsrhn's alternating phase fine-tunes an SRNet that started
    MSE-trained (srnet_weights or sr_warmup_epochs) at sr_finetune_lr, when that is set; with
    lr_decay=cosine each part decays over its own updates."""
    updates, _ = optimizer_updates(preset, steps_per_epoch)
    mse_start = preset.mode == "dsrhn" and bool(preset.srnet_weights or preset.sr_warmup_epochs)
    if not (mse_start and preset.sr_finetune_lr):
        return _learning_rate(preset, preset.sr_lr, updates)
    warmup = sum(epochs for phase, epochs in mode_phases(preset) if phase == "sr-mse") * steps_per_epoch
    return PhaseRates(warmup, _learning_rate(preset, preset.sr_lr, warmup),
                      _learning_rate(preset, preset.sr_finetune_lr, updates - warmup))


def _hash_optimizer(preset: Preset, updates: int = 0) -> keras.optimizers.Optimizer:
    lr = _learning_rate(preset, preset.hash_lr, updates)
    if preset.hash_optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr, momentum=preset.momentum, weight_decay=preset.weight_decay)


def _maybe_loss_scale(optimizer, preset: Preset):
    if preset.mixed_precision and tf.config.list_physical_devices("GPU"):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def configure_devices(preset: Preset) -> tf.distribute.Strategy:
    """Mixed precision and MirroredStrategy when GPUs are present; the default strategy on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and preset.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


# ---------------------------------------------------------------- data

def training_dataset(examples_uri: str, preset: Preset, first_epoch: int, last_epoch: int, steps: int,
                     info: DatasetInfo | None = None) -> tf.data.Dataset:
    """Batches {hr, lr_up, labels} for epochs [first_epoch, last_epoch): epoch e is shuffled with
    seed+e, and a blind LR is drawn from a stateless seed of (seed, e, position in the epoch), so a
    resumed run sees exactly the batches an uninterrupted run would have."""
    hr_size, blind = preset.hr_size, preset.blind
    base = read_split(examples_uri, "train", info).map(
        lambda r: {"hr": r["hr"], "lr": r["lr"], "labels": r["labels"]}).cache()

    def fixed_lr(r):
        return {"hr": r["hr"], "lr_up": to_hr_space(r["lr"], hr_size), "labels": r["labels"]}

    def epoch(e):
        ds = base.shuffle(4096, seed=preset.seed + e, reshuffle_each_iteration=True).repeat()
        if blind:
            ds = ds.enumerate().map(lambda i, r: {
                "hr": r["hr"], "labels": r["labels"],
                "lr_up": to_hr_space(degrade(r["hr"], example_seed(preset.seed, e, i), preset.degradation), hr_size)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = ds.map(fixed_lr, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(preset.batch_size, drop_remainder=True).take(steps)

    ds = epoch(first_epoch)
    for e in range(first_epoch + 1, last_epoch):
        ds = ds.concatenate(epoch(e))
    return ds.prefetch(2)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(trainer: DSRHNTrainer, directory: str, epoch: int) -> str:
    """Weights of both nets, both optimizers' slots and the epoch, written atomically."""
    final = os.path.join(directory, f"epoch-{epoch:04d}")
    tmp = final + ".tmp"
    tf.io.gfile.makedirs(tmp)
    trainer.srnet.save_weights(os.path.join(tmp, "srnet.weights.h5"))
    trainer.hashnet.save_weights(os.path.join(tmp, "hashnet.weights.h5"))
    opt = {}
    for prefix, o in (("sr", trainer.sr_optimizer), ("hash", trainer.hash_optimizer)):
        for i, v in enumerate(o.variables):
            opt[f"{prefix}/{i:04d}"] = np.asarray(v)
    rng = {f"rng/{i:04d}": np.asarray(v) for i, v in enumerate(_seed_states(trainer))}
    np.savez(os.path.join(tmp, "state.npz"), **opt, **rng)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"epoch": epoch, "preset": trainer.preset.to_dict()}, f)
    if tf.io.gfile.exists(final):
        tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(tmp, final)
    return final


def completed_checkpoints(directory: str) -> list[str]:
    """Names of fully written checkpoints (epoch-NNNN, no .tmp), oldest first."""
    if not directory or not tf.io.gfile.exists(directory):
        return []
    names = (d.rstrip("/") for d in tf.io.gfile.listdir(directory))
    return sorted(d for d in names if d.startswith("epoch-") and not d.endswith(".tmp"))


def latest_checkpoint(directory: str) -> str | None:
    done = completed_checkpoints(directory)
    return os.path.join(directory, done[-1]) if done else None


def restore_checkpoint(trainer: DSRHNTrainer, path: str) -> int:
    """Restore nets, optimizers and RNG states; returns the epochs completed over all phases."""
    trainer.srnet.load_weights(os.path.join(path, "srnet.weights.h5"))
    trainer.hashnet.load_weights(os.path.join(path, "hashnet.weights.h5"))
    trainer.build_optimizers()
    state = np.load(os.path.join(path, "state.npz"))
    for prefix, o in (("sr", trainer.sr_optimizer), ("hash", trainer.hash_optimizer)):
        for i, v in enumerate(o.variables):
            v.assign(state[f"{prefix}/{i:04d}"])
    for i, v in enumerate(_seed_states(trainer)):
        v.assign(state[f"rng/{i:04d}"])
    with open(os.path.join(path, "state.json")) as f:
        return int(json.load(f)["epoch"])


def _seed_states(trainer: DSRHNTrainer) -> list:
    """Dropout RNG states, so a resumed run draws the same masks."""
    out = []
    for model in (trainer.srnet, trainer.hashnet):
        for layer in model.layers:
            gen = getattr(layer, "seed_generator", None)
            if gen is not None:
                out.append(gen.state)
    return out


class EpochCheckpoint(keras.callbacks.Callback):
    def __init__(self, trainer: DSRHNTrainer, directory: str, offset: int, keep: int = 2):
        super().__init__()
        self.trainer, self.directory, self.offset, self.keep = trainer, directory, offset, keep

    def on_epoch_end(self, epoch, logs=None):
        save_checkpoint(self.trainer, self.directory, self.offset + epoch + 1)
        for old in completed_checkpoints(self.directory)[: -self.keep]:
            tf.io.gfile.rmtree(os.path.join(self.directory, old))


# ---------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    trainer: DSRHNTrainer
    history: dict  # phase -> {metric: [per-epoch values]}
    seconds: float
    resumed_from: int


def train(examples_uri: str, preset: Preset, work_dir: str, *, verbose: int = 1, tensorboard: bool = True,
          steps_per_epoch: int | None = None, stop_after_epochs: int | None = None) -> TrainResult:
    """Train `preset.mode` on the Examples at `examples_uri`, checkpointing each epoch to
    work_dir/checkpoints and resuming from the latest one there. `stop_after_epochs` ends the
    run after that many epochs over all phases, as a kill would (tests; the Table 1 benchmark
    uses it to train only two-stage's stage 1)."""
    keras.utils.set_random_seed(preset.seed)
    info = DatasetInfo.read(examples_uri)
    if info.hr_size != preset.hr_size:
        raise ValueError(f"dataset is {info.hr_size} px HR but preset {preset.name!r} expects {preset.hr_size} px: "
                         f"re-ingest with --hr-size {preset.hr_size} or pick another preset")
    strategy = configure_devices(preset)
    n_train = int(info.counts.get("train", 0))  # written by ingestion
    steps = steps_per_epoch or preset.steps_per_epoch or max(1, n_train // preset.batch_size)
    if n_train < preset.batch_size:
        raise ValueError(f"{n_train} training records is fewer than one batch of {preset.batch_size}")
    with strategy.scope():
        trainer = DSRHNTrainer(preset, steps)
        trainer.build_optimizers()
    ckpt_dir = os.path.join(work_dir, "checkpoints")
    tf.io.gfile.makedirs(ckpt_dir)
    latest = latest_checkpoint(ckpt_dir)
    done = restore_checkpoint(trainer, latest) if latest else 0
    if latest and verbose:
        print(f"resuming from {latest} ({done} epochs done)")
    t0 = time.time()
    history: dict = {}
    offset = 0
    for phase, epochs in mode_phases(preset):
        start, end = max(0, done - offset), epochs
        if stop_after_epochs is not None:
            end = min(end, max(start, stop_after_epochs - offset))
        if start < end:
            trainer.phase = phase
            trainer.compile(jit_compile=False)
            ds = training_dataset(examples_uri, preset, offset + start, offset + end, steps, info)
            callbacks = [EpochCheckpoint(trainer, ckpt_dir, offset)]
            if tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(os.path.join(work_dir, "logs", phase), update_freq="epoch"))
            if verbose:
                print(f"phase {phase}: epochs {start + 1}..{end} of {epochs}, {steps} steps of {preset.batch_size}")
            fit = trainer.fit(ds, epochs=end, initial_epoch=start, steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                              verbose=verbose)
            history[phase] = {k: [float(x) for x in v] for k, v in fit.history.items()}
        offset += epochs
    return TrainResult(trainer, history, time.time() - t0, done)
