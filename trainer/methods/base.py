"""What a method declares, and the pieces methods share.

A Method is built with the preset and the dataset's info (number of labels, multi-label, masks) and
declares:
  networks()                  {name: keras.Model}, built in a fixed order (initial weights are seeded)
  optimizers(steps)           {name: optimizer}; `updates` says which networks' variables each updates
  phases()                    [Phase(name, epochs, updates per step per optimizer, metrics)]
  train_step(trainer, phase, batch)   one step of a phase (updates through trainer.apply, reports
                              its losses through trainer.track)
  query_image(nets, x)        a query in HR space -> the image the code network sees (SR, bicubic, HR)
  code_logits(nets, images)   gallery images -> v, whose sign is the code (Eq. 1; one rule for every method)
  query_code_logits(nets, x)  a query in HR space -> v (default: code_logits of query_image; a method that
                              enhances features instead of pixels, FSR-GAN, overrides it); with preset.query_flip
                              the query's code is Eq. 1 on the sum of its and its mirror image's v
  code_outputs / query_code_outputs / local_layout   what export encodes: {"code": v}, plus local codes for
                              a multi-level method (trainer/methods/multilevel.py)
and class attributes: name (its record in dsrhn/registry.py gives spec, query_path, query_input), needs_masks,
Options (a dataclass of the method's own settings, from `--set options.NAME=VALUE`).
The generic trainer (trainer/train.py) runs the phases, checkpoints every network and optimizer and
resumes exactly; export, evaluation and serving read only what the method declares.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from dsrhn.config import Preset, coerce, field_kind
from dsrhn.records import DatasetInfo
from dsrhn.registry import MethodSpec, spec
from trainer import losses


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    updates: dict = field(default_factory=dict)  # optimizer name -> updates per training step
    metrics: tuple = ()


@dataclass(frozen=True)
class NoOptions:
    pass


def learning_rate(preset: Preset, base: float, updates: int):
    """A constant rate, or cosine decay to 0 over `updates` optimizer steps. The schedule reads the
    optimizer's own iteration counter, which checkpoints restore, so a resumed run decays identically."""
    if preset.lr_decay == "cosine" and updates > 0:
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=updates)
    return base


def hash_optimizer(preset: Preset, updates: int = 0) -> keras.optimizers.Optimizer:
    """HashNet's optimizer: SGD with momentum (the paper) or Adam, at hash_lr."""
    lr = learning_rate(preset, preset.hash_lr, updates)
    clip = {"global_clipnorm": preset.hash_clipnorm} if preset.hash_clipnorm else {}
    if preset.hash_optimizer == "adam":
        return keras.optimizers.Adam(lr, **clip)
    return keras.optimizers.SGD(lr, momentum=preset.momentum, weight_decay=preset.weight_decay, **clip)


class Method:
    name = ""  # its record in dsrhn/registry.py, which gives spec, query_path and query_input
    spec: MethodSpec | None = None
    query_input = "lr"
    query_path = "bicubic"
    needs_masks = False
    data_parallel = ""  # why this method cannot train on several replicas yet ("": it can)
    Options = NoOptions
    # optimizer name -> names of the networks (or "net/sub-model") whose trainable variables it updates
    updates: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a registered method: its facts come from its record
            cls.spec = spec(cls.name)
            cls.query_path, cls.query_input = cls.spec.query_path, cls.spec.query_input

    def __init__(self, preset: Preset, info: DatasetInfo | None = None):
        self.preset, self.info = preset, info
        self.options = self.parse_options(preset.options)
        if self.needs_masks and info is not None and not info.masks:
            raise ValueError(
                f"method {self.name!r} trains a segmentation branch on pixel masks, and the dataset "
                f"({info.source}) has none: ingest fashion-mnist-mosaic or coco, which write masks"
            )

    @classmethod
    def parse_options(cls, raw: dict):
        """The method's Options from preset.options, each value converted to the field's type."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"method {cls.name!r} has no options {unknown}; its options: {sorted(fields) or 'none'}")
        values = {}
        for k, v in raw.items():
            kind = field_kind(fields[k])
            try:
                values[k] = coerce(kind, v)
            except (TypeError, ValueError):
                raise ValueError(f"options.{k} of method {cls.name!r} must be {kind}, got {v!r}") from None
        return cls.Options(**values)

    @property
    def num_labels(self) -> int:
        if self.info is None:
            raise ValueError(f"method {self.name!r} needs the dataset's info (number of labels) to build its networks")
        return self.info.num_labels

    # -- what every method declares
    def networks(self) -> dict[str, keras.Model]:
        raise NotImplementedError

    def optimizers(self, steps_per_epoch: int) -> dict:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def train_step(self, trainer, phase: str, batch: dict) -> None:
        raise NotImplementedError

    def query_image(self, nets: dict, x: tf.Tensor) -> tf.Tensor:
        return x

    def code_logits(self, nets: dict, images: tf.Tensor) -> tf.Tensor:
        return nets["hashnet"](images, training=False)["code"]

    def query_code_logits(self, nets: dict, x: tf.Tensor) -> tf.Tensor:
        return self.code_logits(nets, tf.cast(self.query_image(nets, x), tf.float32))

    # what export encodes: {"code": v} and, for a multi-level method (local_layout() not None), its local
    # outputs "local" (logits [N, R, K]), "local_selected" (bool [N, R, K]), "local_valid" (bool [N, R])
    def code_outputs(self, nets: dict, images: tf.Tensor) -> dict:
        return {"code": self.code_logits(nets, images)}

    def query_code_outputs(self, nets: dict, x: tf.Tensor) -> dict:
        if not self.preset.query_flip:
            return {"code": self.query_code_logits(nets, x)}
        # test-time mirror: the query and its mirror image vote
        return {"code": summed_logits(lambda t: self.query_code_logits(nets, t), x, tf.image.flip_left_right(x))}

    def local_layout(self) -> dict | None:
        """The export metadata's `local` entry (dsrhn/multilevel.py); None: global codes only."""
        return None

    # -- derived
    def optimizer_updates(self, steps_per_epoch: int) -> dict[str, int]:
        """How many times each optimizer steps over the whole run (the horizon of a decaying rate)."""
        out: dict[str, int] = {}
        for phase in self.phases():
            for opt, n in phase.updates.items():
                out[opt] = out.get(opt, 0) + phase.epochs * steps_per_epoch * n
        return out

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for phase in self.phases():
            names += [m for m in phase.metrics if m not in names]
        return names


def joint_batch(hr, *queries):
    """One forward pass over [HR; query, ...], so batch norm normalises them with the same statistics and its
    moving averages describe the mix it is later run on."""
    return tf.concat([hr, *queries], axis=0)


def summed_logits(logits_fn, *views) -> tf.Tensor:
    """Views of the same queries vote: the sum of their logits (Eq. 1 then signs the sum), in one batch."""
    return tf.add_n(tf.split(logits_fn(tf.concat(views, axis=0)), len(views), axis=0))


def across_replicas(*tensors) -> tuple:
    """The rows of every replica's batch (replica order), for a loss over all pairs of the global batch: with data
    parallelism each replica computes the single-worker pairwise loss (the gathered rows' gradients flow back to
    the replica that owns them, summed). One replica: the tensors themselves."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensors
    return tuple(ctx.all_gather(t, axis=0) for t in tensors)


def pairwise_hash_loss(preset: Preset, v, labels):
    """L_hs (Eq. 11, or dhn/dch by hash_loss) over all pairs of the global batch (across_replicas)."""
    v, labels = across_replicas(v, labels)
    return losses.semantic_hash_loss(preset.hash_loss, v, labels, preset.gamma, preset.dch_gamma, preset.pair_balance)


def joint_hash_terms(preset: Preset, v, labels, views: int = 2) -> tuple:
    """(L_hs, L_dis) of the relaxed codes v of a joint batch [HR; query] (views=3: [HR; query; second query]):
    L_hs over all its pairs (Eq. 11, or dhn/dch by hash_loss) and L_dis between each HR image and its queries
    (Eq. 12; the mean over the query views)."""
    v_hr, *v_q = tf.split(v, views, axis=0)
    l_hs = pairwise_hash_loss(preset, v, tf.concat([labels] * views, 0))
    l_dis = [losses.margin_loss(v_hr, q, preset.margin) for q in v_q]
    return l_hs, l_dis[0] if views == 2 else tf.add_n(l_dis) / len(l_dis)


def load_trained_weights(net: keras.Model, path: str, field: str) -> keras.Model:
    """Load a network already trained elsewhere (srnet_weights, options.hashnet_weights); never downloads."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{field} {path} does not exist")
    net.load_weights(path)
    return net
