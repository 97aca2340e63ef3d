"""The degradation grid's query cells, and the Examples with their query sets remade only when what they are made
from changed (a record beside them says what that was)."""

from __future__ import annotations

import json
import os
import shutil

from benchlib.cache import holds

SCALES = (2, 4, 8)
CONDITIONS = {  # name -> LRConfig fields
    "bicubic": {},
    "blur1.5": {"blur_sigma": 1.5},
    "noise8": {"noise_sigma": 8.0},
    "jpeg40": {"jpeg_quality": 40},
    "blur+noise+jpeg": {"blur_sigma": 1.5, "noise_sigma": 5.0, "jpeg_quality": 60},
}
STUDENT_STEPS_X = 6  # the student distils for 6x the rows' HashNet steps by default (docs/results.md, degradation grid)


def grid_cells() -> dict:
    """cell name -> LRConfig fields of the grid's 15 cells (seed 1: the grid's draws differ from the training
    partners'). Made by dsrhn.images.make_lr (Pillow), not by the training sampler."""
    return {
        f"x{s}-{name}": {"scale": s, "kernel": "bicubic", "seed": 1, **fields}
        for s in SCALES
        for name, fields in CONDITIONS.items()
    }


def mosaic_source(n_train: int, n_query: int, n_gallery: int) -> dict:
    """The ingest source of the embedded multi-label Fashion-MNIST mosaics."""
    return {"kind": "fashion-mnist-mosaic", "n_train": n_train, "n_query": n_query, "n_gallery": n_gallery}


def grid_dir(examples: str) -> str:
    """Where the query sets of `examples` are: <its folder>/grid/<cell>."""
    return os.path.join(os.path.dirname(examples), "grid")


def cell_dirs(examples: str, cells: dict) -> dict:
    """cell -> its query set's folder (a cell without LRConfig fields: the Examples' own stored LR)."""
    return {c: os.path.join(grid_dir(examples), c) if fields else examples for c, fields in cells.items()}


def ensure_grid(
    examples: str, record: str, want: dict, source: dict, hr: int, lr_config, cells: dict | None = None, clear: str = ""
) -> bool:
    """The Examples ingested from `source` and a query set per cell with LRConfig fields, remade unless `record`
    says they were made from `want` (compared as JSON); `clear` (default: the Examples) is removed first.
    Returns whether they were remade."""
    from components.ingest import derive_query_set, run_ingest
    from dsrhn.config import LRConfig
    from dsrhn.records import DATASET_INFO

    if holds(record, want) and os.path.exists(os.path.join(examples, DATASET_INFO)):
        return False
    shutil.rmtree(clear or examples, ignore_errors=True)
    print(run_ingest(source, examples, hr, lr_config).console(), flush=True)
    for cell, fields in (cells or {}).items():
        if fields:
            derive_query_set(examples, os.path.join(grid_dir(examples), cell), LRConfig(**fields))
    os.makedirs(os.path.dirname(os.path.abspath(record)), exist_ok=True)
    with open(record, "w") as f:
        json.dump(want, f)
    return True
