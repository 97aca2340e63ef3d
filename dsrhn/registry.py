"""The method registry: one line per method, name -> the module:class that implements it.

A method (trainer/methods/*.py, a subclass of trainer.methods.base.Method) declares its networks,
optimizers, phases and step functions, its losses, its options and how a query and a gallery image
become codes; the trainer, the CLI choices, export, evaluation and serving all come from here.
Entries are import paths, so this low-level module (which dsrhn/config.py validates `mode` against)
never imports TensorFlow; `get_method` imports a method only when it is used.
"""
from __future__ import annotations

import importlib

METHODS = {  # name -> (module:class, one-line description)
    "dsrhn": ("trainer.methods.dsrhn:DSRHN", "SRNet + HashNet trained alternately (the paper)"),
    "hashnet-hr": ("trainer.methods.dsrhn:HashNetHR", "HashNet on HR images, HR queries (upper bound)"),
    "hashnet-lr": ("trainer.methods.dsrhn:HashNetLR", "HashNet on HR + bicubic LR, no SR"),
    "two-stage": ("trainer.methods.dsrhn:TwoStage", "SRNet by MSE, frozen, then HashNet"),
    "pointwise": ("trainer.methods.pointwise:PointWise", "latent sigmoid layer + classifier (Eq. 2)"),
    "pointwise-seg": ("trainer.methods.pointwise:PointWiseSeg", "the same on PSP segmentation features"),
    "center": ("trainer.methods.center:CenterHash", "DPSH + center loss on hash centers (DDCH reading)"),
    "fsr-gan": ("trainer.methods.fsrgan:FSRGAN", "HashNet on HR, then G (+ critic D) super-resolves LR features"),
    "multi-level": ("trainer.methods.multilevel:DSCNN", "DSRHN + local codes of grid regions, re-ranked search (DSCNN reading)"),
    "student": ("trainer.methods.student:Student", "a HashNet on bicubic LR queries distilled from a DSRHN teacher, "
                                                   "whose codes the gallery keeps (no SRNet at query time)"),
}


def method_help() -> dict[str, str]:
    """name -> its one-line description."""
    return {name: text for name, (_, text) in METHODS.items()}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str):
    """The Method class registered as `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    module, _, cls = METHODS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)
