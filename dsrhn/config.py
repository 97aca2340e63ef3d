"""Presets: one frozen dataclass per preset, the only place numbers for a run live.

`cpu` is the default (embedded Fashion-MNIST mosaic data, 2 CPU cores, minutes);
`paper` reproduces the DSRHN paper's settings (224 -> 56, AlexNet, 150 epochs, GPU).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from dsrhn.contracts import code_bytes
from dsrhn.registry import method_names, spec, sr_stage_methods


def data_dir() -> str:
    """The project's data folder (converted weights, the photo corpus): $DSRHN_DATA, else <repository>/data."""
    return os.environ.get("DSRHN_DATA") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"
    )


METHODS = method_names()  # the registered methods (dsrhn/registry.py)
HASH_LOSSES = ("dpsh", "dhn", "dch")
KERNELS = ("bicubic", "area", "bilinear")
SCALES = (2, 4, 8)
DEGRADATION_KINDS = ("blind", "fixed")
HASHNETS = ("alexnet", "small", "mobilenetv2")  # HashNet backbones (trainer/models.py)
FAISS_DEVICES = ("cpu", "gpu", "auto")  # where faiss searches (serving/index.py)
INDEX_BACKENDS = ("faiss", "milvus")
MILVUS_INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
SR_ARCHS = ("srresnet", "rrdb")  # SRNet: the paper's SRResNet, or ESRGAN's RRDBNet x4 (pretrained: sr_weights)


@dataclass(frozen=True)
class LRConfig:
    """How a low-resolution partner is generated from each HR image (ingestion)."""

    scale: int = 4
    kernel: str = "bicubic"
    blur_sigma: float = 0.0  # Gaussian blur on HR before downsampling, in HR pixels
    noise_sigma: float = 0.0  # additive Gaussian noise on LR, in 0..255 units
    jpeg_quality: int = 0  # 0: no JPEG round trip; 1..95: compress LR at this quality
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"lr.scale must be one of {SCALES}, got {self.scale}")
        if self.kernel not in KERNELS:
            raise ValueError(f"lr.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not 0 <= self.jpeg_quality <= 95:
            raise ValueError(f"lr.jpeg_quality must be 0 (off) or 1..95, got {self.jpeg_quality}")
        if self.blur_sigma < 0 or self.noise_sigma < 0:
            raise ValueError("lr.blur_sigma and lr.noise_sigma must be >= 0")


@dataclass(frozen=True)
class Degradation:
    """Where training takes its LR images from: `fixed` reads the LR partners stored by ingestion (one
    degradation, the paper's setting); `blind` draws a fresh LR from each HR image for every example and
    epoch (scale, blur, downsampling kernel, noise, JPEG, in a random order, as Real-ESRGAN/BSRGAN do),
    so one model serves queries of unknown size and damage. The sampler is dsrhn/degrade.py."""

    kind: str = "blind"
    scale_min: float = 1.0  # HR side / LR side, drawn log-uniformly from [scale_min, scale_max]
    scale_max: float = 8.0
    kernels: tuple = KERNELS  # downsampling kernel, drawn uniformly (antialiased)
    blur_prob: float = 0.7
    blur_sigma_min: float = 0.2  # Gaussian blur sigma, in HR pixels, per axis
    blur_sigma_max: float = 3.0
    aniso_prob: float = 0.5  # anisotropic (two sigmas, random rotation) instead of isotropic
    noise_prob: float = 0.5
    noise_sigma_min: float = 1.0  # additive Gaussian noise, 0..255 units
    noise_sigma_max: float = 12.0
    gray_noise_prob: float = 0.4  # the same noise on all three channels
    jpeg_prob: float = 0.6
    jpeg_quality_min: int = 30
    jpeg_quality_max: int = 95
    shuffle_prob: float = 0.5  # blur / resize / noise in a random order (JPEG always last); else in that order

    def __post_init__(self) -> None:
        if self.kind not in DEGRADATION_KINDS:
            raise ValueError(f"degradation.kind must be one of {DEGRADATION_KINDS}, got {self.kind!r}")
        if isinstance(self.kernels, str):  # from --set degradation.kernels=area,bicubic
            object.__setattr__(self, "kernels", tuple(k.strip() for k in self.kernels.split(",") if k.strip()))
        object.__setattr__(self, "kernels", tuple(self.kernels))
        if not self.kernels or set(self.kernels) - set(KERNELS):
            raise ValueError(f"degradation.kernels must be a non-empty subset of {KERNELS}, got {self.kernels}")
        _range("scale", self.scale_min, self.scale_max, low=1.0)
        _range("blur_sigma", self.blur_sigma_min, self.blur_sigma_max, low=0.0)
        _range("noise_sigma", self.noise_sigma_min, self.noise_sigma_max, low=0.0)
        _range("jpeg_quality", self.jpeg_quality_min, self.jpeg_quality_max, low=1, high=100)
        for name in ("blur_prob", "aniso_prob", "noise_prob", "gray_noise_prob", "jpeg_prob", "shuffle_prob"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"degradation.{name} must be a probability in [0, 1], got {value}")

    def query_sizes(self, hr_size: int) -> tuple[int, int]:
        """The smallest and largest query side (px) the sampler trains on for this HR size."""
        return max(1, round(hr_size / self.scale_max)), max(1, round(hr_size / self.scale_min))


def _range(name: str, lo, hi, low, high=float("inf"), group: str = "degradation") -> None:
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi <= high):
        raise ValueError(f"{group}.{name}_min/max must satisfy {low} <= min <= max <= {high}, got {lo}, {hi}")


@dataclass(frozen=True)
class Views:
    """Views of one photo (instance datasets: `dsrhn ingest photos`; the sampler is dsrhn/views.py): a random
    crop of `area_min`..`area_max` of the photo's area with an aspect ratio in [1/aspect_max, aspect_max]
    (log-uniform), resized to the HR size, flipped left-right with `flip_prob`, then brightness x[1-b, 1+b],
    saturation x[1-s, 1+s] and a per-channel gain x[1-g, 1+g]. Training draws `per_photo` views of every photo
    it takes into a batch (each other's positives: s_ij = 1 for views of one photo); ingestion draws the
    stored query and gallery views from the same distribution."""

    area_min: float = 0.3
    area_max: float = 1.0
    aspect_max: float = 4 / 3
    flip_prob: float = 0.5
    brightness: float = 0.25
    saturation: float = 0.4
    gain: float = 0.1
    per_photo: int = 2

    def __post_init__(self) -> None:
        _range("area", self.area_min, self.area_max, low=1e-3, high=1.0, group="views")
        for name, low, high in (
            ("aspect_max", 1.0, 4.0),
            ("flip_prob", 0.0, 1.0),
            ("brightness", 0.0, 0.9),
            ("saturation", 0.0, 0.9),
            ("gain", 0.0, 0.9),
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ValueError(f"views.{name} must be a number in [{low}, {high}], got {value!r}")
        if isinstance(self.per_photo, bool) or not isinstance(self.per_photo, int) or not 1 <= self.per_photo <= 8:
            raise ValueError(f"views.per_photo must be an integer in [1, 8], got {self.per_photo!r}")


@dataclass(frozen=True)
class Preset:
    """Everything a training run needs besides its data."""

    name: str
    hr_size: int  # HR side in pixels (HashNet input size)
    scale: int  # HR / LR
    hashnet: (
        str  # "alexnet" (paper, 224 px), "small" (AlexNet-shaped, 28..64 px) or "mobilenetv2" (ImageNet-pretrained)
    )
    sr_blocks: int  # residual blocks in SRNet (paper: 16)
    sr_filters: int  # feature maps in SRNet (paper: 64)
    hash_width: int  # fc6/fc7 width (AlexNet: 4096)
    dropout: float = 0.5  # after fc6 and fc7 (AlexNet: 0.5)
    sr_kernel: int = 9  # SRNet head/tail kernel (paper: 9)
    sr_zero_tail: bool = False  # SRNet's output conv starts at zero: SR starts as exactly the bicubic input
    sr_batchnorm: bool = True  # batch norm in SRNet's residual blocks (SRResNet, the paper); False: none, as EDSR
    bits: int = 48
    method: str = "dsrhn"  # the registered method (dsrhn/registry.py)
    hash_loss: str = "dpsh"
    lam: float = 0.1  # Eq. 5 weight of L_mse
    alpha: float = 0.01  # Eq. 13 weight of L_dis
    gamma: float = 0.1  # Eq. 11 weight of the quantisation term
    margin: float = 1.0  # Eq. 12 margin m (paper leaves it unstated)
    pair_balance: bool = False  # DPSH: similar and dissimilar pairs weigh half each (instances: few similar pairs)
    dch_gamma: float = 20.0  # DCH Cauchy scale
    sr_lr: float = 1e-3  # Adam, SRNet
    sr_finetune_lr: float = 0.0  # Adam, SRNet in dsrhn's alternating phase after an MSE start; 0: sr_lr
    hash_lr: float = 1e-2  # HashNet learning rate
    hash_optimizer: str = "sgd"  # paper: SGD with momentum; "adam" trains small nets from scratch faster
    momentum: float = 0.9
    lr_decay: str = "none"  # "cosine": both learning rates decay to 0 over each net's updates in the run
    weight_decay: float = 5e-4
    hash_clipnorm: float = 0.0  # clip HashNet's gradients to this global norm (0: off)
    batch_size: int = 64
    epochs: int = 150
    steps_per_epoch: int = 0  # 0: one pass over the training split
    sr_steps: int = 1  # SRNet updates per HashNet update (alternation schedule)
    sr_warmup_epochs: int = (
        0  # MSE-only SRNet epochs first, unless srnet_weights (two-stage: 0 means `epochs`; dsrhn: none)
    )
    mixed_precision: bool = False  # used only when a GPU is present
    xla: bool = False  # XLA-compile the training step (only when a GPU is present)
    pretrained_weights: str = ""  # local .npz for HashNet's backbone (trainer/pretrained.py); never downloaded
    pretrained_lr_mult: float = 0.1  # a pretrained backbone (mobilenetv2, pretrained_weights) learns at this x hash_lr
    srnet_weights: str = ""  # an MSE-trained SRNet's .weights.h5: two-stage skips stage 1, dsrhn starts from it
    sr_arch: str = "srresnet"  # SRNet's architecture (SR_ARCHS); rrdb runs RRDBNet x4 at hr_size / 4
    sr_weights: str = (
        ""  # rrdb's pretrained generator (trainer/sr_weights.py SOURCES): as srnet_weights, SRNet starts trained
    )
    query_flip: bool = False  # a query's code is Eq. 1 on the sum of its and its mirror image's logits (2x query cost)
    seed: int = 0
    degradation: Degradation = field(default_factory=Degradation)  # training LR: blind (random) or fixed (stored)
    views: Views = field(default_factory=Views)  # training views of each photo (instance datasets only)
    options: dict = field(
        default_factory=dict
    )  # the method's own settings (its Options dataclass), --set options.NAME=V

    def __post_init__(self) -> None:
        if isinstance(self.degradation, dict):  # from JSON (checkpoints, export metadata, TFX custom_config)
            object.__setattr__(self, "degradation", Degradation(**self.degradation))
        if isinstance(self.views, dict):
            object.__setattr__(self, "views", Views(**self.views))
        self._check_choices()
        self._check_sr()
        self._check_numbers()
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict of the method's settings, got {self.options!r}")

    def _check_choices(self) -> None:
        for name, choices in (
            ("method", METHODS),
            ("hash_loss", HASH_LOSSES),
            ("hashnet", HASHNETS),
            ("hash_optimizer", ("sgd", "adam")),
            ("lr_decay", ("none", "cosine")),
            ("sr_arch", SR_ARCHS),
            ("scale", SCALES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.hashnet == "mobilenetv2" and self.hr_size % 32:
            raise ValueError(
                f"hashnet=mobilenetv2 needs hr_size a multiple of 32 (its map is 1/32 of the input), got {self.hr_size}"
            )
        if not isinstance(self.query_flip, bool):
            raise ValueError(f"query_flip must be true or false, got {self.query_flip!r}")
        if self.query_flip and not spec(self.method).query_flip:
            raise ValueError(
                f"query_flip does not apply to method {self.method}: a mirrored query's local codes are "
                "those of mirrored grid regions"
            )

    def _check_sr(self) -> None:
        """SRNet's starting weights and architecture (an SR stage: dsrhn/registry.py sr_stage)."""
        if self.srnet_weights and not spec(self.method).sr_stage:
            raise ValueError(
                f"srnet_weights (an MSE-trained SRNet) applies to methods {', '.join(sr_stage_methods())} only"
            )
        if self.sr_arch == "rrdb" and self.hr_size % 4:
            raise ValueError(f"sr_arch=rrdb (an x4 generator) needs hr_size a multiple of 4, got {self.hr_size}")
        if self.sr_weights and (self.sr_arch != "rrdb" or not spec(self.method).sr_stage):
            raise ValueError(
                f"sr_weights (a pretrained RRDBNet) needs sr_arch=rrdb and a method of {', '.join(sr_stage_methods())}"
            )
        if (
            not (math.isfinite(self.sr_lr) and math.isfinite(self.sr_finetune_lr))
            or self.sr_lr <= 0
            or self.sr_finetune_lr < 0
        ):
            raise ValueError("sr_lr must be > 0 and sr_finetune_lr >= 0 (0: fine-tune at sr_lr)")

    def _check_numbers(self) -> None:
        if self.hr_size % self.scale:
            raise ValueError(f"hr_size {self.hr_size} is not a multiple of scale {self.scale}")
        if self.bits < 1:
            raise ValueError(f"bits must be positive, got {self.bits}")
        for name, low in (
            ("hr_size", 8),
            ("sr_filters", 1),
            ("hash_width", 1),
            ("sr_kernel", 1),
            ("batch_size", 1),
            ("epochs", 1),
            ("sr_steps", 1),
            ("sr_blocks", 0),
            ("steps_per_epoch", 0),
            ("sr_warmup_epochs", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"{name} must be an integer >= {low}, got {value!r}"
                    + (" (0 is allowed: one pass over the training split)" if name == "steps_per_epoch" else "")
                )
        for name, low, high in (
            ("lam", 0, None),
            ("alpha", 0, None),
            ("gamma", 0, None),
            ("margin", 0, None),
            ("dch_gamma", 1e-12, None),
            ("hash_lr", 1e-12, None),
            ("momentum", 0, 1),
            ("weight_decay", 0, None),
            ("dropout", 0, 1),
            ("pretrained_lr_mult", 0, None),
            ("hash_clipnorm", 0, None),
        ):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and value >= low
                and (high is None or value < high)
            ):
                raise ValueError(
                    f"{name} must be a finite number >= {low}" + (f" and < {high}" if high else "") + f", got {value!r}"
                )

    @property
    def pretrained(self) -> bool:
        """HashNet's backbone starts from pretrained weights."""
        return bool(self.pretrained_weights) or self.hashnet == "mobilenetv2"

    @property
    def sr_trained(self) -> bool:
        """SRNet starts trained (srnet_weights or pretrained sr_weights): no MSE stage first."""
        return bool(self.srnet_weights or self.sr_weights)

    @property
    def lr_size(self) -> int:
        return self.hr_size // self.scale

    @property
    def blind(self) -> bool:
        return self.degradation.kind == "blind"

    @property
    def code_bytes(self) -> int:
        return code_bytes(self.bits)

    def replace(self, **changes) -> Preset:
        return dataclasses.replace(self, **renamed(changes))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Why each preset has its settings, and the runs that chose them: docs/results.md, "How the presets were chosen".
PAPER = Preset(
    name="paper",
    hr_size=224,
    scale=4,
    hashnet="alexnet",
    sr_blocks=16,
    sr_filters=64,
    hash_width=4096,
    batch_size=64,
    epochs=150,
    mixed_precision=True,
    xla=True,
    hash_clipnorm=1.0,  # without it a random AlexNet diverged to NaN in its 2nd step on CPU
)

CPU = Preset(  # no dropout, SRNet at 2e-3 (fine-tuned at 5e-4 after its MSE start), lam 1 under blind degradations
    name="cpu",
    hr_size=56,
    scale=4,
    hashnet="small",
    sr_blocks=4,
    sr_filters=32,
    sr_kernel=3,
    hash_width=512,
    dropout=0.0,
    batch_size=64,
    epochs=6,
    hash_lr=1e-2,
    sr_lr=2e-3,
    sr_finetune_lr=5e-4,
    lam=1.0,
)

PHOTO = Preset(  # 96 px real photos, ImageNet MobileNetV2, an MSE SR stage first, HashNet 8 x 150 steps
    name="photo",
    hr_size=96,
    scale=4,
    hashnet="mobilenetv2",
    sr_blocks=4,
    sr_filters=32,
    sr_kernel=3,
    hash_width=512,
    dropout=0.0,
    batch_size=32,
    epochs=8,
    steps_per_epoch=150,
    hash_lr=1e-2,
    sr_lr=2e-3,
    sr_finetune_lr=5e-4,
    lam=1.0,
    sr_warmup_epochs=5,
    pair_balance=True,
    sr_zero_tail=True,
)

PRESETS = {p.name: p for p in (CPU, PAPER, PHOTO)}


def get_preset(name: str, **overrides) -> Preset:
    """The named preset with `overrides` applied (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return with_overrides(PRESETS[name], overrides)


def with_overrides(preset: Preset, overrides: dict) -> Preset:
    """`preset` with --set style overrides: FIELD, degradation.FIELD, views.FIELD, options.NAME (None: ignored)."""
    changes = {k: v for k, v in renamed(overrides).items() if v is not None}
    nested = {k.partition(".")[2]: changes.pop(k) for k in list(changes) if k.startswith("degradation.")}
    views = {k.partition(".")[2]: changes.pop(k) for k in list(changes) if k.startswith("views.")}
    options = {k.partition(".")[2]: changes.pop(k) for k in list(changes) if k.startswith("options.")}
    unknown = set(changes) - {f.name for f in dataclasses.fields(Preset)}
    unknown |= {f"degradation.{k}" for k in set(nested) - {f.name for f in dataclasses.fields(Degradation)}}
    unknown |= {f"views.{k}" for k in set(views) - {f.name for f in dataclasses.fields(Views)}}
    if unknown:
        raise ValueError(f"unknown preset fields: {sorted(unknown)}")
    preset = preset.replace(**changes)
    if nested:  # Preset.__post_init__ made any dict a Degradation
        preset = preset.replace(degradation=dataclasses.replace(preset.degradation, **nested))
    if views:
        preset = preset.replace(views=dataclasses.replace(preset.views, **views))
    if options:  # checked against the method's Options when it is built (dsrhn/registry.py)
        preset = preset.replace(options={**preset.options, **options})
    return preset


RENAMED = {"mode": "method"}  # old preset field names, still read from saved presets, export metadata and --set


def renamed(d: dict) -> dict:
    """`d` with old preset field names (RENAMED) under their new ones."""
    return {RENAMED.get(k, k): v for k, v in d.items()}


def coerce(kind: str, raw):
    """`raw` (a --set string or a JSON value) as a dataclass field of type `kind`; ValueError if it is not one."""
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() not in ("true", "false", "1", "0"):
            raise ValueError(raw)
        return str(raw).lower() in ("true", "1")
    return {"int": int, "float": float, "str": str}.get(kind, lambda x: x)(raw)


def field_kind(f: dataclasses.Field) -> str:
    """A dataclass field's type name ("int", "float", "bool", "str", ...), under postponed annotations too."""
    return f.type if isinstance(f.type, str) else f.type.__name__


def parse_overrides(items: list[str]) -> dict:
    """`["lr_decay=cosine", "degradation.scale_max=4"]` -> typed preset overrides (the CLI's --set)."""
    types = {
        f.name: field_kind(f) for f in dataclasses.fields(Preset) if f.name not in ("degradation", "views", "options")
    }
    types.update({f"degradation.{f.name}": field_kind(f) for f in dataclasses.fields(Degradation)})
    types.update({f"views.{f.name}": field_kind(f) for f in dataclasses.fields(Views)})
    out: dict = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = RENAMED.get(name, name)
        if sep and name.startswith("options.") and len(name) > len("options."):
            out[name] = raw  # typed by the method's Options dataclass (trainer/methods/base.py)
            continue
        if not sep or name not in types:
            raise ValueError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)} "
                "or options.NAME (the method's own options)"
            )
        try:
            out[name] = coerce(types[name], raw)
            if types[name] == "float" and not math.isfinite(out[name]):  # a preset's numbers are finite
                raise ValueError(raw)
        except ValueError:
            raise ValueError(f"--set {item!r}: {name} must be {types[name]}") from None
    return out


def preset_from_dict(d: dict) -> Preset:
    """A Preset from its to_dict() form (checkpoints, export metadata); a dict written before the
    `degradation` field existed trained on the stored LR partners, so it reads as kind=fixed."""
    known = {f.name for f in dataclasses.fields(Preset)}
    values = {k: v for k, v in renamed(d).items() if k in known}
    values.setdefault("degradation", {"kind": "fixed"})
    return Preset(**values)


@dataclass(frozen=True)
class IndexConfig:
    """How `dsrhn index` stores a gallery (recorded in the index manifest, dsrhn/contracts.py).

    factory: a faiss binary index factory string: "BFlat" (exact, the default), "BIVF<nlist>" (inverted
    lists) or "BHNSW<M>" (graph), both approximate. nprobe / ef_search tune the approximate ones.
    backend: "faiss" (files beside the model) or "milvus" (a collection at milvus_uri: a Milvus Lite file,
    or http://host:19530 for a standalone or cluster server).
    """

    factory: str = "BFlat"
    nprobe: int | None = None
    ef_search: int | None = None
    backend: str = "faiss"
    milvus_uri: str = ""
    milvus_collection: str = ""
    milvus_index_type: str = "BIN_FLAT"
    recall_queries: int = 1000  # sample of gallery codes searched both ways to report an approximate index's recall
    recall_k: int = 100
    device: str = "cpu"  # where faiss searches while indexing (the recall's exact search): cpu, gpu or auto

    def __post_init__(self):
        if self.device not in FAISS_DEVICES:
            raise ValueError(f"faiss device must be cpu, gpu or auto, got {self.device!r}")
        if self.backend not in INDEX_BACKENDS:
            raise ValueError(f"index backend must be 'faiss' or 'milvus', got {self.backend!r}")
        if self.backend == "milvus" and not self.milvus_uri:
            raise ValueError("the milvus backend needs --milvus-uri (a Milvus Lite .db file or http://host:19530)")
        if self.milvus_index_type not in MILVUS_INDEX_TYPES:
            raise ValueError(f"milvus index type must be BIN_FLAT or BIN_IVF_FLAT, got {self.milvus_index_type!r}")
        if not self.factory.startswith("B"):
            raise ValueError(
                f"index factory {self.factory!r} is not a faiss binary index factory string "
                "(BFlat, BIVF<nlist>, BHNSW<M>)"
            )
        for name in ("nprobe", "ef_search", "recall_queries", "recall_k"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"index {name} must be a positive integer, got {v!r}")

    @property
    def exact(self) -> bool:
        return self.factory == "BFlat" and (self.backend == "faiss" or self.milvus_index_type == "BIN_FLAT")

    @property
    def search_params(self) -> dict:
        return {k: v for k, v in (("nprobe", self.nprobe), ("ef_search", self.ef_search)) if v is not None}
