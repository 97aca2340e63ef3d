"""Model versions in TF Serving's layout (`<base>/<name>/<version>/`), loaded with their index.

The store serves the highest version that loads and whose index matches it, polls for
new versions, and swaps atomically: a request holds the `Servable` it started with.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import tensorflow as tf

from serving.index import GalleryIndex, IndexMismatch, load_index
from dsrhn.contracts import read_metadata

log = logging.getLogger("dsrhn.serving")


@dataclass
class Servable:
    version: int
    path: str
    model: object
    meta: dict
    index: GalleryIndex

    def signature(self, name: str):
        return self.model.signatures[name]


@dataclass
class VersionStatus:
    state: str  # AVAILABLE | LOADING | UNAVAILABLE | END
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class ModelStore:
    base_dir: str
    name: str
    poll_seconds: float = 5.0
    current: Servable | None = None
    status: dict[int, VersionStatus] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[int, tuple] = {}

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base_dir, self.name)

    def versions_on_disk(self) -> list[int]:
        if not os.path.isdir(self.model_dir):
            return []
        out = []
        for d in os.listdir(self.model_dir):
            if not (d.isascii() and d.isdigit()):  # "²" passes str.isdigit() but not int(); "tmp", "1.tmp": not versions
                continue
            if os.path.exists(os.path.join(self.model_dir, d, "saved_model.pb")):
                out.append(int(d))
        return sorted(out, reverse=True)

    def load_version(self, version: int) -> Servable:
        path = os.path.join(self.model_dir, str(version))
        meta = read_metadata(path)
        index = load_index(path, meta)
        model = tf.saved_model.load(path)
        return Servable(version, path, model, meta, index)

    def refresh(self) -> bool:
        """Load the newest loadable version if it is newer than the current one. True if swapped."""
        current = self.current.version if self.current else -1
        for v in self.versions_on_disk():
            if v <= current:
                break
            signature = _dir_signature(os.path.join(self.model_dir, str(v)))
            if self._failed.get(v) == signature:
                continue  # failed before and nothing changed on disk since: don't reload every poll
            try:
                servable = self.load_version(v)
            except Exception as e:  # a bad version must never take the service down
                kind = "index" if isinstance(e, IndexMismatch) else "model"
                self.status[v] = VersionStatus("UNAVAILABLE", "FAILED_PRECONDITION" if kind == "index" else "UNKNOWN",
                                               f"{kind}: {e}")
                self._failed[v] = signature
                log.warning("version %s not loaded: %s", v, e)
                continue
            with self._lock:
                old = self.current
                self.current = servable
                self.status[v] = VersionStatus("AVAILABLE")
                if old:
                    self.status[old.version] = VersionStatus("END")
            log.info("serving %s version %s", self.name, v)
            return True
        return False

    def get(self, version: int | None = None) -> Servable | None:
        cur = self.current
        if version is None or (cur and cur.version == version):
            return cur
        return None

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="dsrhn-version-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # pragma: no cover - logged, poller keeps going
                log.exception("version poll failed")


def _dir_signature(path: str) -> tuple:
    """What is on disk under a version directory (names, sizes, mtimes): a change means retry."""
    out = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            out.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))
