"""Outputs that appear whole or not at all: `with atomic_dir(final) as work:` writes into
`<final>.tmp-<pid>-<ns>`, then swaps it into place; leftovers of killed writers (replaced outputs `.old-*`,
temp folders of dead processes) are removed by the next writer. Used by ingestion (Examples folders),
indexing (index folders) and the photo corpus.

The swap is one renameat2(RENAME_EXCHANGE) where the file system has it (Linux >= 3.15; ext4, xfs, tmpfs,
btrfs): `final` always names a complete output, even under kill -9. Elsewhere it is two renames, and a
writer killed between them leaves `final.old-*` alone, which the next writer puts back (restore_orphan).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
import time
from collections.abc import Iterator

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


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int) -> None:
    """This process gets `sig` when its parent dies (Linux prctl), so a child never outlives a parent killed with
    SIGKILL (a server's workers still holding its port, a database server nobody stops)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


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


SPACE_MARGIN = 1.25  # what a write may need beyond its arrays (file formats' headers, a graph)


def ensure_space(folder: str, needed_bytes: int, what: str) -> None:
    """Refuse a write before it starts when the file system holding `folder` has less free space than it needs
    (some writers, h5py's among them, crash mid-write on a full disk instead of raising). Remote paths: not
    checked."""
    if is_remote(folder):
        return
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    needed = int(needed_bytes * SPACE_MARGIN)
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: {what} needs {_mb(needed)}, {_mb(free)} free", folder)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


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


def is_remote(path: str) -> bool:
    """A URI for tf.io.gfile (gs://, s3://, ...): no renames to swap with, written in place."""
    return "://" in path


@contextlib.contextmanager
def atomic_dir(final: str) -> Iterator[str]:
    """Yield a new, empty temp folder beside `final`; when the block ends without an error it replaces
    `final` (swap_into_place), on any error (KeyboardInterrupt included) it is removed and the old `final`
    stays whole. A remote `final` (is_remote) has no atomic rename: it is created and yielded itself."""
    final = final.rstrip("/") or final
    if is_remote(final):
        import tensorflow as tf

        tf.io.gfile.makedirs(final)
        yield final
        return
    remove_stale(final)
    work = temp_path(final)
    os.makedirs(work)
    try:
        yield work
        swap_into_place(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
