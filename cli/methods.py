"""`dsrhn methods`: the registered methods (dsrhn/registry.py), how their queries are encoded, their options."""

from __future__ import annotations

import argparse
import dataclasses

NAME, HELP = "methods", "the registered methods and their options"


def register(sub) -> argparse.ArgumentParser:
    return sub.add_parser(NAME, help=HELP)


def run(args) -> int:
    from dsrhn.registry import SPECS, get_method

    for s in SPECS:
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(get_method(s.name).Options)) or "none"
        print(
            f"{s.name:<14} {s.help}\n{'':<14} {s.query_input.upper()} queries, encoded via {s.query_path}; "
            f"options: {opts}"
        )
    return 0
