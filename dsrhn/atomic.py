"""Outputs that appear whole or not at all: write into `<final>.tmp-<pid>[-...]`, then swap it into place;
leftovers of killed writers (replaced outputs `.old-*`, temp folders of dead processes) are removed by
the next writer. Used by ingestion (Examples folders) and indexing (index folders).

The swap is one renameat2(RENAME_EXCHANGE) where the file system has it (Linux >= 3.15; ext4, xfs, tmpfs,
btrfs): `final` always names a complete output, even under kill -9. Elsewhere it is two renames, and a
writer killed between them leaves `final.old-*` alone, which the next writer puts back (restore_orphan).
"""
from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import time

RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str, text: str) -> None:
    """`path` holds the old text or the new, never a part (a temp file beside it, then os.replace)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def temp_path(final: str) -> str:
    return f"{final}.tmp-{os.getpid()}-{time.time_ns()}"


def restore_orphan(final: str) -> bool:
    """A writer killed between the two renames of a fallback swap left no `final`, only `final.old-*`:
    put the newest one back. True if something was restored."""
    if os.path.lexists(final):
        return False
    olds = sorted(glob.glob(f"{glob.escape(final)}.old-*"), key=lambda p: p.rpartition(".old-")[2])
    if not olds:
        return False
    os.rename(olds[-1], final)
    return True


def remove_stale(final: str) -> None:
    restore_orphan(final)
    for path in glob.glob(f"{glob.escape(final)}.old-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in glob.glob(f"{glob.escape(final)}.tmp-*"):
        pid = path.rpartition(".tmp-")[2].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def swap_into_place(work: str, final: str) -> None:
    """Replace `final` by the finished `work` folder; the old output is removed only after the swap."""
    if os.path.exists(final) and exchange(work, final):
        shutil.rmtree(work, ignore_errors=True)  # `work` now holds the old output
        return
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{time.time_ns()}"
        os.rename(final, old)
    os.rename(work, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)
