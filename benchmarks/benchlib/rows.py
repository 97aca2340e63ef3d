"""Benchmark rows as small records instead of positional tuples."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One row of a benchmark's table: `key` names it in caches and run folders, `name` in the tables."""

    key: str
    name: str
    method: str  # the registered method (dsrhn/registry.py)
    loss: str = "dpsh"  # HashNet's loss
    kind: str = "blind"  # its training LR: the preset's random degradations, or the stored partners ("fixed")
    options: dict = field(default_factory=dict)  # the method's options
    overrides: dict = field(default_factory=dict)  # --set style preset overrides ("@ROW": that row's HashNet)
    sr_overrides: dict = field(default_factory=dict)  # the preset overrides of the SR stage it starts from
