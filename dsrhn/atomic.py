"""Outputs that appear whole or not at all: write into `<final>.tmp-<pid>[-...]`, then swap it into place;
leftovers of killed writers (replaced outputs `.old-*`, temp folders of dead processes) are removed by
the next writer. Used by ingestion (Examples folders) and indexing (index folders)."""
from __future__ import annotations

import glob
import os
import shutil
import time


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_path(final: str) -> str:
    return f"{final}.tmp-{os.getpid()}-{time.time_ns()}"


def remove_stale(final: str) -> None:
    for path in glob.glob(f"{glob.escape(final)}.old-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in glob.glob(f"{glob.escape(final)}.tmp-*"):
        pid = path.rpartition(".tmp-")[2].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def swap_into_place(work: str, final: str) -> None:
    """Replace `final` by the finished `work` folder; the old output is removed only after the swap."""
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{time.time_ns()}"
        os.rename(final, old)
    os.rename(work, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)
