"""Honest benchmark caches: a stored row is reused only when it was computed with the same settings and
the same code; otherwise it is recomputed, never reused silently. Every row records when, where and with
what it was computed, and the tables print that per row.

    cache = RowCache("runs/x/results.json")
    key = row_key({"preset": ..., "data": ...}, code_digest(ROW_CODE))
    row = cache.get(name, key)          # None: missing or stale (the reason is printed)
    cache.put(name, key, {...})         # stamped with date, host, cores, key
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CODE_DIRS = ("dsrhn", "trainer", "components", "serving")  # what every trained or scored row depends on
ROW_CODE = tuple(os.path.join(HERE, f) for f in ("grid.py", "tasks.py"))  # this library's part of a row's code


def code_digest(extra_files: tuple[str, ...] = (), dirs: tuple[str, ...] = CODE_DIRS) -> str:
    """sha256 (16 hex digits) over the project's Python sources that produce a row: `dirs` and `extra_files`
    (e.g. the benchmark script itself), in a fixed order."""
    h = hashlib.sha256()
    paths = []
    for d in dirs:
        for root, _, files in os.walk(os.path.join(REPO, d)):
            paths += [os.path.join(root, f) for f in files if f.endswith(".py")]
    paths += [os.path.abspath(p) for p in extra_files]
    for path in sorted(set(paths)):
        h.update(os.path.relpath(path, REPO).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def row_key(settings: dict, code: str) -> str:
    blob = json.dumps({"settings": settings, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stamp() -> dict:
    return {"computed": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cores": os.cpu_count()}


def as_json(value):
    """`value` as it reads back from a JSON file (tuples as lists): for comparing settings with a stored record."""
    return json.loads(json.dumps(value))


def holds(path: str, want) -> bool:
    """The JSON file at `path` exists and holds `want`."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f) == as_json(want)


class RowCache:
    def __init__(self, path: str):
        self.path = path
        self.rows = json.load(open(path)) if os.path.exists(path) else {}

    def get(self, name: str, key: str, log=print) -> dict | None:
        row = self.rows.get(name)
        if row is None:
            return None
        if row.get("key") != key:
            log(f"cache: {name} was computed with other settings or code (key {row.get('key')} != {key}): recomputing")
            return None
        return row

    def put(self, name: str, key: str, row: dict) -> dict:
        self.rows[name] = {**row, "key": key, **stamp()}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.rows, f, indent=1)
        os.replace(tmp, self.path)
        return self.rows[name]
