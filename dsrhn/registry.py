"""The method registry: one record per method, the only place a method's facts are written.

A method is a module in trainer/methods/ (a subclass of trainer.methods.base.Method: networks,
optimizers, phases, step functions, losses, options) plus one `MethodSpec` here. The spec holds what
the lower layers, the CLI and the benchmarks need to know without importing TensorFlow: how a query
becomes a code, whether SRNet can start trained, whether test-time mirroring applies. The class reads
its facts from its spec (tests/test_methods.py checks every class against it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

QUERY_PATHS = ("sr", "bicubic", "hr", "fsr")  # what the code network sees of a query


@dataclass(frozen=True)
class MethodSpec:
    name: str
    path: str  # "module:Class" of the implementation, imported on use
    help: str  # one line for `dsrhn methods` and --help
    query_path: str = "bicubic"  # a query's image for the code network: SRNet's output, bicubic, HR, or FSR features
    sr_stage: bool = False  # SRNet can start trained (srnet_weights, pretrained sr_weights): an SR stage first
    sr_views: bool = False  # HashNet sees SRNet's output, so options.hash_views / query_fuse apply
    query_flip: bool = True  # test-time mirroring of queries applies (preset.query_flip)

    def __post_init__(self) -> None:
        if self.query_path not in QUERY_PATHS:
            raise ValueError(f"method {self.name!r}: query_path must be one of {QUERY_PATHS}, got {self.query_path!r}")

    @property
    def query_input(self) -> str:
        """What a query is: an HR image for an HR-query method, otherwise an LR one."""
        return "hr" if self.query_path == "hr" else "lr"


SPECS = (
    MethodSpec(
        "dsrhn",
        "trainer.methods.dsrhn:DSRHN",
        "SRNet + HashNet trained alternately (the paper)",
        query_path="sr",
        sr_stage=True,
        sr_views=True,
    ),
    MethodSpec(
        "hashnet-hr",
        "trainer.methods.dsrhn:HashNetHR",
        "HashNet on HR images, HR queries (upper bound)",
        query_path="hr",
    ),
    MethodSpec("hashnet-lr", "trainer.methods.dsrhn:HashNetLR", "HashNet on HR + bicubic LR, no SR"),
    MethodSpec(
        "two-stage",
        "trainer.methods.dsrhn:TwoStage",
        "SRNet by MSE, frozen, then HashNet",
        query_path="sr",
        sr_stage=True,
        sr_views=True,
    ),
    MethodSpec("pointwise", "trainer.methods.pointwise:PointWise", "latent sigmoid layer + classifier (Eq. 2)"),
    MethodSpec("pointwise-seg", "trainer.methods.pointwise:PointWiseSeg", "the same on PSP segmentation features"),
    MethodSpec("center", "trainer.methods.center:CenterHash", "DPSH + center loss on hash centers (DDCH reading)"),
    MethodSpec(
        "fsr-gan",
        "trainer.methods.fsrgan:FSRGAN",
        "HashNet on HR, then G (+ critic D) super-resolves LR features",
        query_path="fsr",
    ),
    MethodSpec(
        "multi-level",
        "trainer.methods.multilevel:DSCNN",
        "DSRHN + local codes of grid regions, re-ranked search (DSCNN reading)",
        query_path="sr",
        sr_stage=True,
        query_flip=False,
    ),  # a mirrored query's regions are other regions
    MethodSpec(
        "student",
        "trainer.methods.student:Student",
        "a HashNet on bicubic LR queries distilled from a DSRHN teacher, whose codes the gallery keeps "
        "(no SRNet at query time)",
    ),
)
METHODS = {s.name: s for s in SPECS}


def spec(name: str) -> MethodSpec:
    """The registered method `name`'s record."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_help() -> dict[str, str]:
    """name -> its one-line description."""
    return {s.name: s.help for s in SPECS}


def sr_stage_methods() -> tuple[str, ...]:
    """The methods whose SRNet can start trained: they train or load an SR stage first."""
    return tuple(s.name for s in SPECS if s.sr_stage)


def sr_view_methods() -> tuple[str, ...]:
    """The methods whose HashNet sees SRNet's output (options.hash_views, options.query_fuse)."""
    return tuple(s.name for s in SPECS if s.sr_views)


def get_method(name: str):
    """The Method class registered as `name`."""
    module, _, cls = spec(name).path.partition(":")
    return getattr(importlib.import_module(module), cls)
