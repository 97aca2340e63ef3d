"""The generic trainer: runs any registered method's phases (dsrhn/registry.py), with exact resume.

A method (trainer/methods/*.py) declares its networks, optimizers, phases and step functions; the
trainer holds them as named dicts, runs each phase's epochs with `keras.Model.fit`, checkpoints every
network, every optimizer's slots and the dropout RNG states each epoch (atomically) and resumes from the
latest checkpoint, so a killed run continues with exactly the batches and weights it would have had.

Every batch holds HR images, their LR queries brought to HR size (`lr_up`, by
dsrhn.degrade.to_hr_space: the stored LR partners for degradation kind `fixed`, or LR drawn afresh per
example and epoch by the blind degradation model), the labels and, for methods that need them, the
pixel masks.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from dsrhn.atomic import ensure_space
from dsrhn.config import Preset
from dsrhn.degrade import degrade, example_seed, to_hr_space
from dsrhn.records import DatasetInfo, read_split
from dsrhn.registry import get_method
from dsrhn.views import random_view, view_seed
from trainer.models import variables_bytes


def build_method(preset: Preset, info: DatasetInfo | None = None):
    """The registered method `preset.method`, built for this dataset."""
    return get_method(preset.method)(preset, info)


@dataclass(frozen=True)
class RunContext:
    """The run a Trainer trains in, fixed when it is built."""

    identity: dict | None = None  # run_identity: saved with each checkpoint; another one is refused (None: unchecked)
    chief: bool = True  # is_chief: this worker writes the checkpoints, logs and export


def build_trainer(
    preset: Preset, info: DatasetInfo | None = None, steps_per_epoch: int = 0, context: RunContext | None = None
) -> Trainer:
    """A Trainer for `preset.method` (info: the dataset's, needed by methods whose networks depend on the
    number of labels)."""
    return Trainer(build_method(preset, info), steps_per_epoch, context)


class Trainer(keras.Model):
    """Holds a method's networks and optimizers (named dicts) and its RunContext; `train_step` runs one step of
    the current phase by calling the method's step function."""

    def __init__(self, method, steps_per_epoch: int = 0, context: RunContext | None = None, **kwargs):
        super().__init__(**kwargs)
        self.method, self.preset = method, method.preset
        self.context = context or RunContext()
        self.nets = method.networks()
        self.opts = {
            name: _maybe_loss_scale(opt, self.preset) for name, opt in method.optimizers(steps_per_epoch).items()
        }
        self.phase = method.phases()[0].name if method.phases() else ""
        self.replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.multi_worker = isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)
        self.trackers = {n: keras.metrics.Mean(name=n) for n in method.metric_names()}
        self._phase_metrics = {p.name: list(p.metrics) for p in method.phases()}
        self._slow_ids = frozenset(self._backbone_variable_ids())
        self.built = True  # its networks are built: nothing for Keras to build from a batch (it would under a strategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build (the networks and optimizers are). Under a distribution strategy Keras 3's TF trainer
        would take a batch from the training iterator to build the model from (keras/src/backend/tensorflow/
        trainer.py), so a multi-replica run would skip its first batch and no longer match one worker's."""
        return

    def __getattr__(self, name):  # trainer.srnet, trainer.hashnet, ...: the method's networks by name
        nets = self.__dict__.get("nets") or {}
        if name in nets:
            return nets[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def variables_for(self, optimizer: str) -> list:
        """The trainable variables an optimizer updates: its networks (or `net/sub-model`s) in order."""
        out = []
        for spec in self.method.updates[optimizer]:
            net, _, part = spec.partition("/")
            model = self.nets[net].get_layer(part) if part else self.nets[net]
            out += model.trainable_variables
        return out

    def build_optimizers(self) -> None:
        for name, opt in self.opts.items():
            opt.build(self.variables_for(name))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def scaled(self, optimizer: str, loss):
        """The loss to differentiate (inside the tape): per replica, loss-scaled under mixed precision."""
        opt = self.opts[optimizer]
        loss = loss / self.replicas
        return opt.scale_loss(loss) if hasattr(opt, "scale_loss") else loss

    def apply(self, optimizer: str, tape, scaled_loss) -> None:
        variables = self.variables_for(optimizer)
        grads = tape.gradient(scaled_loss, variables)
        slow = self._slow_ids
        if slow:  # a pretrained backbone learns at pretrained_lr_mult x the rate (scaled gradients)
            mult = self.preset.pretrained_lr_mult
            grads = [g * mult if g is not None and id(v) in slow else g for g, v in zip(grads, variables)]
        self.opts[optimizer].apply_gradients(zip(grads, variables))

    def _backbone_variable_ids(self) -> set:
        """Variables of a pretrained backbone (every net's `backbone` sub-model), when they learn slower."""
        if not self.preset.pretrained or self.preset.pretrained_lr_mult == 1.0:
            return set()
        out = set()
        for net in self.nets.values():
            try:
                out |= {id(v) for v in net.get_layer("backbone").trainable_variables}
            except ValueError:
                continue
        return out

    def track(self, **values) -> None:
        for name, value in values.items():
            self.trackers[name].update_state(value)

    def train_step(self, data):
        self.method.train_step(self, self.phase, data)
        out = {n: self.trackers[n].result() for n in self._phase_metrics[self.phase]}
        if self.multi_worker:  # Keras reduces per-replica results with reduce(MEAN, axis=0): give them an axis 0
            out = {n: tf.reshape(v, [1]) for n, v in out.items()}
        return out


def _maybe_loss_scale(optimizer, preset: Preset):
    if preset.mixed_precision and tf.config.list_physical_devices("GPU"):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def cluster_workers() -> int:
    """Workers named by TF_CONFIG (chief included), as the TFX Trainer on Kubeflow / Vertex sets it; 0 without."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def configure_devices(preset: Preset) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy for several local GPUs,
    the default strategy otherwise; mixed precision when a GPU is present and the preset asks for it."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and preset.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    if cluster_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one worker that writes checkpoints, logs and the export: the chief, else worker 0 (no TF_CONFIG: yes)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


# ---------------------------------------------------------------- data

DECODED_CACHE_BYTES = 2 << 30  # instance datasets: photos kept decoded in memory up to about this much


def n_train_records(info: DatasetInfo) -> int:
    """Training records, as ingestion counted them (an instance dataset: photos)."""
    return int(info.counts.get("train", 0))


def photo_records(base: tf.data.Dataset, preset: Preset, info: DatasetInfo) -> tf.data.Dataset:
    """An instance dataset's training records: {labels, source} with the photo decoded when the library is small."""
    if not preset.blind:
        raise ValueError(
            "an instance dataset (photos) trains on views drawn afresh from each photo, so its LR "
            "must be drawn too: use degradation kind blind, not fixed"
        )
    if preset.batch_size % preset.views.per_photo:
        raise ValueError(
            f"batch_size {preset.batch_size} is not a multiple of views.per_photo "
            f"{preset.views.per_photo}: a photo's views must share a batch"
        )
    # a few thousand photos are kept decoded (decoding a PNG per view bound the SR stage's speed); a larger
    # library keeps its PNG bytes and decodes each photo when it is drawn
    decoded = n_train_records(info) * (info.source_side**2) * 3 * 2 <= DECODED_CACHE_BYTES
    return base.map(
        lambda r: {
            "labels": r["labels"],
            "source": tf.io.decode_png(r["source"], channels=3) if decoded else r["source"],
        }
    )


def training_dataset(
    examples_uri: str,
    preset: Preset,
    first_epoch: int,
    last_epoch: int,
    steps: int,
    info: DatasetInfo | None = None,
    masks: bool = False,
) -> tf.data.Dataset:
    """Batches {hr, lr_up, labels[, mask]} for epochs [first_epoch, last_epoch): epoch e is shuffled with
    seed+e, and a blind LR is drawn from a stateless seed of (seed, e, position in the epoch), so a
    resumed run sees exactly the batches an uninterrupted run would have. In an instance dataset (photos,
    DatasetInfo.source_side) every photo taken into a batch gives `views.per_photo` fresh random views of
    itself (dsrhn/views.py), seeded the same way; they share its label, so they are each other's positives."""
    info = info or DatasetInfo.read(examples_uri)
    hr_size, blind = preset.hr_size, preset.blind
    instances = info.source_side > 0
    keep = ("hr", "lr", "labels") + (("mask",) if masks else ()) + (("source",) if instances else ())
    base = read_split(examples_uri, "train", info).map(lambda r: {k: r[k] for k in keep})
    if instances:
        base = photo_records(base, preset, info)
    base = base.cache()
    buffer = 1024 if instances else 4096  # an instance record holds a whole photo

    def fixed_lr(r):
        return {**{k: r[k] for k in keep if k != "lr"}, "lr_up": to_hr_space(r["lr"], hr_size)}

    def blind_lr(i, r, e):
        lr = degrade(r["hr"], example_seed(preset.seed, e, i), preset.degradation)
        return {**{k: r[k] for k in keep if k not in ("lr", "source")}, "lr_up": to_hr_space(lr, hr_size)}

    def photo_views(i, r, e):
        per = preset.views.per_photo
        source = r["source"] if r["source"].dtype == tf.uint8 else tf.io.decode_png(r["source"], channels=3)
        hr = tf.stack([random_view(source, view_seed(preset.seed, e, i, v), hr_size, preset.views) for v in range(per)])
        return tf.data.Dataset.from_tensor_slices({"hr": hr, "labels": tf.tile(r["labels"][None], [per, 1])})

    def epoch(e):
        ds = base.shuffle(buffer, seed=preset.seed + e, reshuffle_each_iteration=True).repeat()
        if instances:
            ds = ds.enumerate().flat_map(lambda i, r: photo_views(i, r, e))
        if blind:
            ds = ds.enumerate().map(
                lambda i, r: blind_lr(i, r, e), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
        else:
            ds = ds.map(fixed_lr, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(preset.batch_size, drop_remainder=True).take(steps)

    ds = epoch(first_epoch)
    for e in range(first_epoch + 1, last_epoch):
        ds = ds.concatenate(epoch(e))
    options = tf.data.Options()
    # several workers: each computes every global batch (seeded per example) and keeps its replicas' slices of it,
    # so the global batch is exactly the one a single worker would train on
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(2)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(trainer: Trainer, directory: str, epoch: int) -> str:
    """Every network's weights, every optimizer's slots, the RNG states and the epoch, written atomically."""
    final = os.path.join(directory, f"epoch-{epoch:04d}")
    tmp = final + ".tmp"
    ensure_space(directory, checkpoint_bytes(trainer), f"checkpoint {os.path.basename(final)}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.io.gfile.makedirs(tmp)
    for name, net in trainer.nets.items():
        net.save_weights(os.path.join(tmp, f"{name}.weights.h5"))
    opt = {f"opt/{name}/{i:04d}": np.asarray(v) for name, o in trainer.opts.items() for i, v in enumerate(o.variables)}
    rng = {f"rng/{i:04d}": np.asarray(v) for i, v in enumerate(_seed_states(trainer))}
    np.savez(os.path.join(tmp, "state.npz"), **opt, **rng)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(
            {
                "epoch": epoch,
                "method": trainer.method.name,
                "networks": sorted(trainer.nets),
                "optimizers": sorted(trainer.opts),
                "preset": trainer.preset.to_dict(),
                "identity": trainer.context.identity,
            },
            f,
            allow_nan=False,
        )
    with tf.io.gfile.GFile(os.path.join(tmp, CHECKSUMS), "w") as f:  # h5 and npz carry none: a flipped byte would load
        json.dump({name: _sha256(os.path.join(tmp, name)) for name in sorted(tf.io.gfile.listdir(tmp))}, f, indent=1)
    if tf.io.gfile.exists(final):
        tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(tmp, final)
    return final


def checkpoint_bytes(trainer: Trainer) -> int:
    """What one checkpoint holds: every network's and optimizer's variables."""
    return variables_bytes(v for net in trainer.nets.values() for v in net.weights) + variables_bytes(
        v for o in trainer.opts.values() for v in o.variables
    )


def completed_checkpoints(directory: str) -> list[str]:
    """Names of fully written checkpoints (epoch-NNNN, no .tmp), oldest first."""
    if not directory or not tf.io.gfile.exists(directory):
        return []
    names = (d.rstrip("/") for d in tf.io.gfile.listdir(directory))
    return sorted(d for d in names if d.startswith("epoch-") and not d.endswith(".tmp"))


CHECKSUMS = "checksums.json"  # file name -> sha256, written last inside a checkpoint


def _sha256(path: str) -> str:
    from dsrhn.contracts import sha256_file

    return sha256_file(path, opener=tf.io.gfile.GFile)


def checkpoint_damage(path: str) -> str:
    """What is wrong with a complete checkpoint's files ("" when each matches its checksum; checkpoints written
    before checksums were recorded are taken as they are)."""
    listed = os.path.join(path, CHECKSUMS)
    if not tf.io.gfile.exists(listed):
        return ""
    try:
        with tf.io.gfile.GFile(listed) as f:
            digests = json.load(f)
    except (ValueError, UnicodeDecodeError):
        return f"{listed} is not valid JSON"
    for name, digest in digests.items():
        file = os.path.join(path, name)
        if not tf.io.gfile.exists(file):
            return f"{file} is missing"
        if _sha256(file) != digest:
            return f"{file} does not match its checksum"
    return ""


def latest_checkpoint(directory: str) -> str | None:
    """The newest checkpoint whose files are intact; a damaged one is skipped with a warning (resuming from the one
    before and training that epoch again reaches the same weights)."""
    for name in reversed(completed_checkpoints(directory)):
        path = os.path.join(directory, name)
        damage = checkpoint_damage(path)
        if not damage:
            return path
        print(f"warning: checkpoint {path} is damaged ({damage}): skipped", file=sys.stderr)
    return None


def restore_checkpoint(trainer: Trainer, path: str) -> int:
    """Restore networks, optimizers and RNG states; returns the epochs completed over all phases."""
    with open(os.path.join(path, "state.json")) as f:
        state_json = json.load(f)
    if "networks" not in state_json:
        raise ValueError(
            f"checkpoint {path} was written before the method registry (another weight layout) and "
            "cannot be resumed: train again in a new --work-dir"
        )
    saved = set(state_json["networks"])
    if saved != set(trainer.nets) or state_json.get("method", trainer.method.name) != trainer.method.name:
        raise ValueError(
            f"checkpoint {path} holds method {state_json.get('method')!r} with networks {sorted(saved)}, "
            f"not {trainer.method.name!r} with {sorted(trainer.nets)}: use another --work-dir"
        )
    differences = identity_differences(state_json.get("identity"), trainer.context.identity)
    if differences:
        raise ValueError(
            f"{os.path.dirname(os.path.dirname(path))} holds checkpoints of a different run "
            f"({'; '.join(differences[:8])}{'; ...' if len(differences) > 8 else ''}): resuming would "
            "train something you did not ask for. Pass --restart (train(..., restart=True)) to discard "
            "them, or use another --work-dir"
        )
    for name, net in trainer.nets.items():
        net.load_weights(os.path.join(path, f"{name}.weights.h5"))
    trainer.build_optimizers()
    state = np.load(os.path.join(path, "state.npz"))
    for name, o in trainer.opts.items():
        for i, v in enumerate(o.variables):
            v.assign(state[f"opt/{name}/{i:04d}"])
    for i, v in enumerate(_seed_states(trainer)):
        v.assign(state[f"rng/{i:04d}"])
    return int(state_json["epoch"])


def run_identity(preset: Preset, info: DatasetInfo, steps_per_epoch: int, examples_uri: str | None = None) -> dict:
    """What a run is: its preset (method, options, every rate and count), the data it reads (its description and
    a fingerprint of the training records' bytes, so other data of the same shape is told apart) and its epoch
    length. Stored with every checkpoint; resuming a run with another identity is refused."""
    data = {
        k: getattr(info, k)
        for k in (
            "source",
            "label_names",
            "hr_size",
            "lr_size",
            "scale",
            "lr",
            "counts",
            "multi_label",
            "masks",
            "source_side",
        )
    }
    if examples_uri:
        data["train_records_sha256"] = records_fingerprint(examples_uri, "train")
    return json.loads(json.dumps({"preset": preset.to_dict(), "data": data, "steps_per_epoch": steps_per_epoch}))


def records_fingerprint(examples_uri: str, split: str) -> str:
    """sha256 over a split's TFRecord files, in name order (the bytes the run trains on)."""
    import hashlib

    from dsrhn.records import split_files

    h = hashlib.sha256()
    for path in split_files(examples_uri, split):
        h.update(os.path.basename(path).encode())
        with tf.io.gfile.GFile(path, "rb") as f:
            while True:
                block = f.read(1 << 22)
                if not block:
                    break
                h.update(block)
    return h.hexdigest()[:32]


def identity_differences(saved: dict | None, now: dict | None, prefix: str = "") -> list[str]:
    """`field: saved -> now` for every leaf that differs (nothing when either side has no identity)."""
    if saved is None or now is None:
        return []
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class StopOnNonFinite(keras.callbacks.Callback):
    """Ends training with a clear error when a loss becomes NaN or infinite (checked each epoch, before
    the checkpoint callback, so no non-finite weights are saved or exported)."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        bad = {k: float(v) for k, v in (logs or {}).items() if not np.isfinite(float(v))}
        if bad:
            raise FloatingPointError(
                f"phase {self.phase}, epoch {epoch + 1}: non-finite loss {bad}; training "
                "stopped and nothing was saved for this epoch. Lower the learning rates "
                "(--set hash_lr=..., sr_lr=...) or check the data"
            )


def _seed_states(trainer: Trainer) -> list:
    """Dropout RNG states, so a resumed run draws the same masks."""
    out = []
    for net in trainer.nets.values():
        for layer in net._flatten_layers(include_self=False):
            gen = getattr(layer, "seed_generator", None)
            if gen is not None:
                out.append(gen.state)
    return out


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint after each epoch (numbered over all phases: `offset` epochs came before this phase)
    and keeps the last `keep`."""

    def __init__(self, trainer: Trainer, directory: str, offset: int, keep: int = 2):
        super().__init__()
        self.trainer, self.directory, self.offset, self.keep = trainer, directory, offset, keep

    def on_epoch_end(self, epoch, logs=None):
        if not self.trainer.context.chief:  # the chief alone writes (every worker holds the same mirrored values)
            return
        save_checkpoint(self.trainer, self.directory, self.offset + epoch + 1)
        for old in completed_checkpoints(self.directory)[: -self.keep]:
            tf.io.gfile.rmtree(os.path.join(self.directory, old))


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    trainer: Trainer
    history: dict  # phase -> {metric: [per-epoch values]}
    seconds: float
    resumed_from: int
    health: dict | None = None  # dsrhn.health of the trained codes of training images (collapse check)

    @property
    def chief(self) -> bool:
        """Whether this worker wrote the checkpoints (and exports): RunContext.chief."""
        return self.trainer.context.chief


@dataclass(frozen=True)
class FitPlan:
    """What train() fits each phase with besides the trainer: the data, the epoch length, the strategy, where
    checkpoints and logs go, and the caller's options."""

    examples_uri: str
    info: DatasetInfo
    steps: int  # per epoch
    strategy: tf.distribute.Strategy
    work_dir: str
    verbose: int = 1
    tensorboard: bool = True
    stop_after_epochs: int | None = None  # over all phases, as a kill would
    restart: bool = False

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.work_dir, "checkpoints")


def trained_code_health(trainer: Trainer, examples_uri: str, info: DatasetInfo, limit: int = 512) -> dict:
    """The collapse check (dsrhn/health.py) on the codes of up to `limit` training images' HR (the gallery
    path), after training: constant bits and the share of distinct codes."""
    from dsrhn.health import code_health

    codes, labels = [], []
    for batch in read_split(examples_uri, "train", info).take(limit).batch(128):
        v = trainer.method.code_logits(trainer.nets, batch["hr"])
        codes.append(np.where(np.asarray(tf.cast(v, tf.float32)) >= 0, 1, -1).astype(np.int8))
        labels.append(np.asarray(batch["labels"]))
    return code_health(np.concatenate(codes), labels=np.concatenate(labels)).to_dict()


def train(
    examples_uri: str,
    preset: Preset,
    work_dir: str,
    *,
    verbose: int = 1,
    tensorboard: bool = True,
    steps_per_epoch: int | None = None,
    stop_after_epochs: int | None = None,
    restart: bool = False,
) -> TrainResult:
    """Train the method `preset.method` on the Examples at `examples_uri`, checkpointing each epoch to
    work_dir/checkpoints and resuming from the latest one there when it is the same run (preset, data,
    epoch length; another run's checkpoints are refused, `restart` discards them). `stop_after_epochs`
    ends the run after that many epochs over all phases, as a kill would (tests; the Table 1 benchmark
    uses it to train only two-stage's stage 1)."""
    keras.utils.set_random_seed(preset.seed)
    info = checked_dataset_info(examples_uri, preset)
    strategy = configure_devices(preset)
    steps = epoch_steps(info, preset, steps_per_epoch)
    method = build_method(preset, info)
    check_replicas(method, strategy)
    context = RunContext(identity=run_identity(preset, info, steps, examples_uri), chief=is_chief(strategy))
    trainer = distributed_trainer(method, steps, context, strategy)
    plan = FitPlan(examples_uri, info, steps, strategy, work_dir, verbose, tensorboard, stop_after_epochs, restart)
    done = resume(trainer, plan)
    t0 = time.time()
    history, reached = run_phases(trainer, plan, done)
    seconds = time.time() - t0
    return TrainResult(trainer, history, seconds, done, health_after_training(trainer, plan, reached))


def checked_dataset_info(examples_uri: str, preset: Preset) -> DatasetInfo:
    """The dataset's DatasetInfo, refused when its HR size is not the preset's."""
    info = DatasetInfo.read(examples_uri)
    if info.hr_size != preset.hr_size:
        raise ValueError(
            f"dataset is {info.hr_size} px HR but preset {preset.name!r} expects {preset.hr_size} px: "
            f"re-ingest with --hr-size {preset.hr_size} or pick another preset"
        )
    return info


def epoch_steps(info: DatasetInfo, preset: Preset, steps_per_epoch: int | None) -> int:
    """Steps per epoch: the caller's, the preset's, else one pass over the training records (an instance dataset:
    views.per_photo views of each photo); refused when the records do not fill one batch."""
    n_train = n_train_records(info)
    per_record = preset.views.per_photo if info.source_side else 1
    steps = steps_per_epoch or preset.steps_per_epoch or max(1, n_train * per_record // preset.batch_size)
    if n_train * per_record < preset.batch_size:
        raise ValueError(
            f"{n_train} training records is fewer than one batch of {preset.batch_size}"
            + (f" ({per_record} views each)" if per_record > 1 else "")
        )
    return steps


def check_replicas(method, strategy: tf.distribute.Strategy) -> None:
    """On several replicas: the method must train data-parallel, and the global batch split evenly."""
    replicas, batch = strategy.num_replicas_in_sync, method.preset.batch_size
    if replicas <= 1:
        return
    if method.data_parallel:
        raise ValueError(f"method {method.name!r} cannot train on several replicas yet: {method.data_parallel}")
    if batch % replicas:
        raise ValueError(f"batch_size {batch} is the global batch: it must be a multiple of the {replicas} replicas")


def distributed_trainer(method, steps: int, context: RunContext, strategy: tf.distribute.Strategy) -> Trainer:
    """The method's Trainer with its optimizers built, its variables created under the strategy."""
    with strategy.scope():
        trainer = Trainer(method, steps, context)
        trainer.build_optimizers()
    return trainer


def resume(trainer: Trainer, plan: FitPlan) -> int:
    """Restore the latest intact checkpoint of plan's work_dir (after the chief discards them all on `restart`);
    returns the epochs it had completed (0: none)."""
    directory = plan.checkpoints
    if plan.restart and trainer.context.chief and tf.io.gfile.exists(directory):
        tf.io.gfile.rmtree(directory)
    tf.io.gfile.makedirs(directory)
    latest = latest_checkpoint(directory)
    done = restore_checkpoint(trainer, latest) if latest else 0
    if latest and plan.verbose:
        print(f"resuming from {latest} ({done} epochs done)")
    return done


def run_phases(trainer: Trainer, plan: FitPlan, done: int) -> tuple[dict, int]:
    """Fit the epochs of each phase after the `done` ones (up to plan.stop_after_epochs over all phases); returns
    the history (phase -> {metric: per-epoch values}) and the epochs completed over all phases."""
    history: dict = {}
    offset, reached = 0, done
    for phase in trainer.method.phases():
        start, end = max(0, done - offset), phase.epochs
        if plan.stop_after_epochs is not None:
            end = min(end, max(start, plan.stop_after_epochs - offset))
        if start < end:
            history[phase.name] = fit_phase(trainer, plan, phase, offset, start, end)
            reached = offset + end
        offset += phase.epochs
    return history, reached


def fit_phase(trainer: Trainer, plan: FitPlan, phase, offset: int, start: int, end: int) -> dict:
    """Epochs [start, end) of `phase` (the phases before it hold `offset` epochs); returns their history."""
    preset, chief = trainer.preset, trainer.context.chief
    trainer.phase = phase.name
    with plan.strategy.scope():  # the method's own optimizers step inside train_step; Keras's is one of them, built
        trainer.compile(
            optimizer=next(iter(trainer.opts.values())),
            jit_compile=bool(preset.xla and tf.config.list_physical_devices("GPU")),
        )
    ds = training_dataset(
        plan.examples_uri, preset, offset + start, offset + end, plan.steps, plan.info, trainer.method.needs_masks
    )
    callbacks = [StopOnNonFinite(phase.name), EpochCheckpoint(trainer, plan.checkpoints, offset)]
    if plan.tensorboard and chief:
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(plan.work_dir, "logs", phase.name), update_freq="epoch")
        )
    if plan.verbose:
        print(
            f"phase {phase.name}: epochs {start + 1}..{end} of {phase.epochs}, {plan.steps} steps of "
            f"{preset.batch_size}"
        )
    fit = trainer.fit(
        ds,
        epochs=end,
        initial_epoch=start,
        steps_per_epoch=plan.steps,
        callbacks=callbacks,
        shuffle=False,
        verbose=plan.verbose if chief else 0,
    )
    return {k: [float(x) for x in v] for k, v in fit.history.items()}


def health_after_training(trainer: Trainer, plan: FitPlan, reached: int) -> dict | None:
    """The collapse check of the trained codes, its problems printed with a hint; None after an SR stage alone
    (SRNet by MSE leaves the code layer at its initial weights: nothing to check)."""
    if codes_untrained(trainer.method, reached):
        return None
    health = trained_code_health(trainer, plan.examples_uri, plan.info)
    for problem in health["problems"]:
        print(f"warning: collapsed codes after training: {problem}", file=sys.stderr, flush=True)
    if health["problems"]:
        print(collapse_hint(trainer.preset), file=sys.stderr, flush=True)
    return health


def collapse_hint(preset: Preset) -> str:
    """What to try after a collapse: HashNet's steps were too large for its batches (l_hs back near log 2)."""
    return (
        f"hint: retrain with smaller HashNet steps, --set hash_lr={preset.hash_lr / 3:g} or "
        "--set hash_clipnorm=1: on photos with views.per_photo=4 either kept every bit where hash_lr=0.01 "
        "collapsed (docs/results.md)"
    )


def codes_untrained(method, epochs_done: int) -> bool:
    """True when the first `epochs_done` epochs of `method`'s schedule update SRNet alone (an MSE SR stage)."""
    offset, ran = 0, []
    for phase in method.phases():
        if offset < epochs_done:
            ran.append(phase)
        offset += phase.epochs
    return all(set(p.updates) <= {"sr"} for p in ran)
