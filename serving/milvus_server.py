"""A Milvus standalone server on this machine: the binary the PyPI package `milvus` 2.3.5 ships, on free ports,
with a private data folder; what the tests and benchmarks/milvus_server.py run `--backend milvus --milvus-uri
http://127.0.0.1:<port>` against, and a single-box trial of a real Milvus server for a user.

    with standalone("/tmp/mv") as server:      # up in ~4 s; the data folder survives a stop and a restart
        dsrhn index ... --milvus-uri server.uri

Started the way the package starts it (its config template, rendered with free ports), but by this module's own
Popen: the server is killed with the process that started it (a killed test leaves no server holding ports),
the embedded etcd moves off its fixed ports 2379/2380 (two servers at once), and its stop and restart waits are
cut (SETTINGS). Milvus 2.3's gRPC components bind every interface; etcd binds loopback.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field

from dsrhn import atomic
from dsrhn.config import data_dir

# every *_port of the package's config template: each given a free port, so two servers never race for one
PORT_KEYS = (
    "proxy_port",
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "etcd_port",
)
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
SETTINGS = {
    "common.gracefulStopTimeout": 3,  # a SIGTERM's wait (default 1,800 s)
    "common.session.ttl": 10,  # 2.3.5 never revokes its etcd sessions: a restart waits for them (default 30 s)
    "grpc.client.maxBackoff": 1,  # and for its retry backoff (default 10 s): a restart in ~18 s, not 57 s
}
ENV = {"QUERYNODE_GRACEFULSTOPTIMEOUT": "1", "INDEXNODE_GRACEFULSTOPTIMEOUT": "1"}  # keys the template lacks
PORTS_FILE = "ports.json"
ETCD_FILE = "etcd-embed.yaml"
READY_S = 120.0
STOP_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binaries() -> str:
    """The server's binaries, unpacked once from the package (246 MB from 57 MB of lzma) into the data folder;
    later starts link to them instead of unpacking again (4.5 s each)."""
    import milvus

    cache = os.path.join(data_dir(), "milvus-server", milvus.__version__)
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:  # one unpacker at a time (test workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        milvus._initialize_data_files(cache)  # the package's own unpacker; a no-op when its checksums match
    return os.path.join(cache, "bin")


def _die_with_parent() -> None:  # in the child, between fork and exec
    atomic.die_with_parent(signal.SIGKILL)


def etcd_config(folder: str, client_port: int, peer_port: int) -> str:
    """An embedded-etcd config on loopback ports (the template's etcd port moves only the clients' endpoint)."""
    path = os.path.join(folder, ETCD_FILE)
    with open(path, "w") as f:
        f.write(
            f"name: default\nlisten-client-urls: http://127.0.0.1:{client_port}\n"
            f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer_port}\n"
        )
    return path


@dataclass
class Standalone:
    """One running server: its data folder, its client URI, its process."""

    folder: str
    uri: str = ""
    proc: subprocess.Popen | None = None
    ports: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def configure(folder: str) -> dict:
    """The ports of the server on `folder`: chosen free and written with its config on the first start, read back
    on a restart (a server comes back at its address; the package's config check cannot rebind a port that its
    last run's sockets still hold in TIME_WAIT)."""
    from milvus import MilvusServerConfig

    path = os.path.join(folder, PORTS_FILE)
    if os.path.exists(path) and os.path.exists(os.path.join(folder, "configs", "milvus.yaml")):
        with open(path) as f:
            return json.load(f)
    ports = {**{k: free_port() for k in PORT_KEYS}, "metrics": free_port(), "etcd_peer": free_port()}
    config = MilvusServerConfig(data_dir=folder, **{k: ports[k] for k in PORT_KEYS})
    for comp in COMPONENTS:
        config.set(f"{comp}.ip", "127.0.0.1")  # the address each component advertises to the others
    for key, value in SETTINGS.items():
        config.set(key, value)
    config.resolve()  # writes <folder>/configs/milvus.yaml
    etcd_config(folder, ports["etcd_port"], ports["etcd_peer"])
    atomic.write_text(path, json.dumps(ports))
    return ports


def start(folder: str, ready_s: float = READY_S) -> Standalone:
    """Start a server on `folder` (made if missing; a folder of an earlier run keeps its collections and its
    address) and wait until it answers its health check; a server that exits or does not answer in ready_s is
    stopped, with the end of its log in the error."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    link = os.path.join(folder, "bin")
    if not os.path.lexists(link):
        os.symlink(binaries(), link)
    ports = configure(folder)
    metrics = ports["metrics"]
    env = {
        **os.environ,
        **ENV,
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(metrics),
        "MILVUS_RUN_DIR": os.path.join(folder, "run"),
        "ETCD_CONFIG_PATH": os.path.join(folder, ETCD_FILE),
        "LD_LIBRARY_PATH": os.pathsep.join([link, os.environ.get("LD_LIBRARY_PATH", "")]),
    }
    logs = os.path.join(folder, "logs")
    os.makedirs(logs, exist_ok=True)
    with (
        open(os.path.join(logs, "milvus-stdout.log"), "ab") as out,
        open(os.path.join(logs, "milvus-stderr.log"), "ab") as err,
    ):
        proc = subprocess.Popen(
            [os.path.join(link, "milvus"), "run", "standalone"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=err,
            preexec_fn=_die_with_parent,
        )
    server = Standalone(folder, f"http://127.0.0.1:{ports['proxy_port']}", proc, ports)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline and server.running:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=2) as r:
                if b"OK" in r.read():
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    exited = not server.running
    stop(server)
    raise RuntimeError(
        f"Milvus server in {folder} {'exited' if exited else f'not ready in {ready_s:.0f} s'}: {_log_tail(logs)}"
    )


def _log_tail(logs: str, chars: int = 300) -> str:
    try:
        with open(os.path.join(logs, "milvus-stderr.log"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - chars))
            return f.read().decode(errors="replace").strip().replace("\n", " | ") or "(empty log)"
    except OSError as e:
        return f"(no log: {e.strerror})"


def stop(server: Standalone, wait_s: float = STOP_S) -> None:
    """SIGTERM (with SETTINGS, ~1 s), then SIGKILL after wait_s: the server never outlives this call."""
    proc, server.proc = server.proc, None
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_S)
    try:
        os.remove(f"/tmp/milvus/server_id_{proc.pid}")  # Milvus 2.3 writes it there whatever the folder
    except OSError:
        pass


@contextmanager
def standalone(folder: str, ready_s: float = READY_S):
    server = start(folder, ready_s)
    try:
        yield server
    finally:
        stop(server)
