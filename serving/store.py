"""Model versions in TF Serving's layout (`<base>/<name>/<version>/`), loaded with their index.

The store serves the highest version that loads and whose index matches it and follows the directory
(polling): new versions are loaded, a version re-indexed or re-exported in place is reloaded, a removed
version is unloaded (the highest remaining one serves), folders that are not version numbers are
ignored with a log line. Swaps are atomic: a request holds the `Servable` it started with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field

import tensorflow as tf

from dsrhn.contracts import INDEX_DIR, MANIFEST_FILE, METADATA, read_metadata
from serving.index import GalleryIndex, IndexMismatch, load_index
from serving.limits import POLL_SECONDS

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


def load_servable(
    path: str, version: int, faiss_device: str = "cpu", mmap: bool = False, index_dir: str | None = None
) -> Servable:
    """One SavedModel export directory and the index `dsrhn index` wrote beside it (or at index_dir), verified
    against it: what the store serves as a version, and what `dsrhn search` loads from --model."""
    meta = read_metadata(path)
    index = load_index(path, meta, index_dir, device=faiss_device, log=log.info, mmap=mmap)
    model = tf.saved_model.load(path)
    return Servable(version, path, model, meta, index)


@dataclass
class VersionStatus:
    state: str  # AVAILABLE | LOADING | UNAVAILABLE | END
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class ModelStore:
    base_dir: str
    name: str
    poll_seconds: float = POLL_SECONDS
    faiss_device: str = "cpu"  # where the gallery index searches: cpu, gpu or auto (serving/index.py: on_device)
    mmap_index: bool = False  # faiss codes read in place from the file, shared by processes (serving/index.py)
    current: Servable | None = None
    status: dict[int, VersionStatus] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()  # one index reload at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[int, tuple] = {}
        self._loaded_signature: dict[int, tuple] = {}
        self._ignored: set[str] = set()

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base_dir, self.name)

    def versions_on_disk(self) -> list[int]:
        if not os.path.isdir(self.model_dir):
            return []
        out = []
        for d in os.listdir(self.model_dir):
            if not (d.isascii() and d.isdigit() and len(d) <= 18):  # "²" passes str.isdigit() but not int()
                if d not in self._ignored:
                    self._ignored.add(d)
                    log.info(
                        "ignoring %s/%s: not a version folder (a version is a number of up to 18 digits)", self.name, d
                    )
                continue
            if os.path.exists(os.path.join(self.model_dir, d, "saved_model.pb")):
                out.append(int(d))
        return sorted(out, reverse=True)

    def load_version(self, version: int) -> Servable:
        return load_servable(os.path.join(self.model_dir, str(version)), version, self.faiss_device, self.mmap_index)

    def refresh(self) -> bool:
        """Follow the directory as TF Serving's latest-version policy does: serve the highest version that
        loads; a re-indexed or re-exported version (its manifest or graph changed on disk) is reloaded; a
        removed version is unloaded and the highest remaining one serves (rollback). True if swapped."""
        on_disk = self.versions_on_disk()
        cur = self.current
        if cur is not None and cur.version not in on_disk:
            with self._lock:
                self.current = None
            log.info("unloaded %s version %s: its folder was removed", self.name, cur.version)
        for version, st in list(self.status.items()):  # the unloaded one included
            if version not in on_disk and st.state != "END":
                self.status[version] = VersionStatus("END", error_message="version folder removed")
        for v in on_disk:
            cur = self.current
            if cur is not None and v < cur.version:
                break
            signature = _dir_signature(os.path.join(self.model_dir, str(v)))
            if cur is not None and v == cur.version and self._loaded_signature.get(v) == signature:
                break  # the served version is the highest loadable one and unchanged
            if self._failed.get(v) == signature:
                continue  # failed before and nothing changed on disk since: don't reload every poll
            if cur is not None and v == cur.version and _same_graph(self._loaded_signature.get(v), signature):
                if self.sync_index():  # only the index changed (an update): the model stays loaded
                    return True
                continue
            try:
                servable = self.load_version(v)
            except Exception as e:  # a bad version must never take the service down
                kind = "index" if isinstance(e, IndexMismatch) else "model"
                message = self._public(f"{kind}: {e}")
                if cur is None or v != cur.version:
                    code = "FAILED_PRECONDITION" if kind == "index" else "UNKNOWN"
                    self.status[v] = VersionStatus("UNAVAILABLE", code, message)
                self._failed[v] = signature
                log.warning("version %s not loaded: %s", v, e)
                continue
            with self._lock:
                old = self.current
                self.current = servable
                self.status[v] = VersionStatus("AVAILABLE")
                self._loaded_signature[v] = signature
                if old and old.version != v:
                    self.status[old.version] = VersionStatus("END")
            log.info(
                "serving %s version %s%s",
                self.name,
                v,
                " (reloaded: changed on disk)" if old and old.version == v else "",
            )
            return True
        return False

    def sync_index(self) -> bool:
        """Serve the index generation on disk if it is not the one served (an update by this or another server
        process) and the model is unchanged: only the index is read again. True if swapped; a generation that
        fails to load is logged and the served one kept."""
        cur = self.current
        if cur is None:
            return False
        signature = _dir_signature(cur.path)
        loaded = self._loaded_signature.get(cur.version)
        if signature == loaded or not _same_graph(loaded, signature):
            return False
        with self._index_lock:
            cur = self.current
            if cur is None or _dir_signature(cur.path) == self._loaded_signature.get(cur.version):
                return False  # another thread got there first
            signature = _dir_signature(cur.path)
            try:
                index = load_index(cur.path, cur.meta, device=self.faiss_device, log=log.info, mmap=self.mmap_index)
            except Exception as e:
                if self._failed.get(cur.version) != signature:
                    log.warning("index of version %s not reloaded, the served one kept: %s", cur.version, e)
                self._failed[cur.version] = signature
                return False
            with self._lock:
                self.current = dataclasses.replace(cur, index=index)
                self._loaded_signature[cur.version] = signature
            log.info(
                "serving %s version %s, index generation %s (%s photos)",
                self.name,
                cur.version,
                index.manifest.get("generation", 0),
                index.count,
            )
            return True

    def _public(self, message: str) -> str:
        """Status messages are served over HTTP: no absolute server paths in them."""
        return message.replace(self.model_dir, self.name).replace(self.base_dir, "<base>")

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


SIGNATURE_FILES = (
    "saved_model.pb",
    os.path.join("variables", "variables.index"),
    METADATA,
    os.path.join(INDEX_DIR, MANIFEST_FILE),
)


GRAPH_FILES = 3  # SIGNATURE_FILES before the index manifest: the model itself


def _same_graph(a: tuple | None, b: tuple) -> bool:
    return a is not None and a[:GRAPH_FILES] == b[:GRAPH_FILES]


def _dir_signature(path: str) -> tuple:
    """What identifies a version on disk: the graph, the variables, the metadata and the index manifest
    (size, mtime, inode: an index rebuilt by `dsrhn index` is a new folder with a new manifest)."""
    out = []
    for rel in SIGNATURE_FILES:
        try:
            st = os.stat(os.path.join(path, rel))
        except FileNotFoundError:
            out.append((rel, None))
            continue
        out.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)
