"""What the documentation promises about serving and safety, each shown to hold: readiness before a model loads,
429 past --max-inflight, idle keep-alive connections closed and the connection cap (`dsrhn serve` itself), a version
re-exported in place reloaded, several worker processes answering as one, and the weights reader refusing a hostile
pickle."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from serving.indexer import gallery_from_examples, run_indexing
from serving.server import BackgroundServer, free_loopback_port, started_processes
from serving.store import ModelStore
from tests.conftest import BEAM, wait_for


@pytest.fixture(scope="module")
def version(tmp_path_factory, trained_model, mosaic_examples) -> str:
    """A model version folder with its index, to copy into serving layouts."""
    v = tmp_path_factory.mktemp("claims") / "v"
    shutil.copytree(trained_model, v)
    run_indexing(str(v), gallery_from_examples(mosaic_examples), beam_args=BEAM, batch_size=16, previews=False)
    return str(v)


def test_readyz_is_503_until_a_version_is_loaded(tmp_path, version):
    store = ModelStore(str(tmp_path), "m", poll_seconds=3600)
    store.start()
    server = BackgroundServer(store)
    try:
        r = httpx.get(f"{server.url}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "no model version loaded"
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, not ready
        shutil.copytree(version, tmp_path / "m" / "1")
        store.refresh()
        r = httpx.get(f"{server.url}/readyz")
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["index_size"] == 48
    finally:
        server.stop()


def test_requests_beyond_max_inflight_get_429(tmp_path, version):
    shutil.copytree(version, tmp_path / "m" / "1")
    store = ModelStore(str(tmp_path), "m", poll_seconds=3600)
    store.refresh()
    server = BackgroundServer(store, max_inflight=1, body_timeout_s=20)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as slow:  # holds the one slot: its body never ends
            slow.sendall(
                b"POST /v1/models/m:search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"instances"'
            )
            wait_for(lambda: server.app.state.inflight["n"] == 1, what="the slow request to take the slot")
            r = httpx.post(f"{server.url}/v1/models/m:search", json={"instances": [{"b64": "AAAA"}]})
            assert r.status_code == 429 and "1 requests are in flight" in r.json()["error"]
        wait_for(
            lambda: httpx.post(f"{server.url}/v1/models/m:search", json={"k": 1}).status_code == 400,
            what="the slot to be free again",
        )
    finally:
        server.stop()


def _read_one_response(c: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers, then Content-Length bytes of body), however TCP splits it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    )
    while len(body) < length:
        chunk = c.recv(4096)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert len(body) == length, "more bytes than Content-Length"
    return data[: len(head) + 4] + body


def test_dsrhn_serve_closes_idle_connections_and_caps_them(tmp_path, version):
    shutil.copytree(version, tmp_path / "m" / "1")
    port = free_loopback_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--base-dir",
            str(tmp_path),
            "--model-name",
            "m",
            "--port",
            str(port),
            "--keep-alive-seconds",
            "1",
            "--max-connections",
            "3",
            "--http",
            "h11",
            "--loop",
            "asyncio",
        ],  # the pure-Python stack (the workers' test: the default)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=120, what="dsrhn serve to load the model")
        with socket.create_connection(("127.0.0.1", port)) as c:  # keep-alive, then idle
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            c.settimeout(10)
            response = _read_one_response(c)
            assert b" 200 " in response and response.endswith(b'{"status":"ok"}')
            t0 = time.monotonic()
            rest = c.recv(4096)
            assert rest == b"" and time.monotonic() - t0 < 5  # closed by the server after ~1 s idle
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # the cap: 3 open connections
        try:
            r = httpx.get(f"{url}/healthz", timeout=10)
            assert r.status_code == 503
        finally:
            for c in idle:
                c.close()
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=10).status_code == 200, what="a free connection slot")
    finally:
        proc.terminate()
        proc.wait(30)


def _workers(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor `pid` spawned (Linux /proc; not multiprocessing's resource tracker)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if parent == pid and b"spawn_main" in cmdline:
                out.append(int(d))
    return out


def test_dsrhn_serve_with_two_worker_processes_answers_as_one_process_does(tmp_path, version, mosaic_examples):
    from dsrhn.records import read_split_raw
    from serving.server import search

    shutil.copytree(version, tmp_path / "m" / "1")
    port = free_loopback_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "serve",
                "--base-dir",
                str(tmp_path),
                "--model-name",
                "m",
                "--port",
                str(port),
                "--workers",
                "2",
                "--intra-op-threads",
                "1",
                "--no-batching",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: started_processes(log.read_text()) == 2 or proc.poll() is not None,
            timeout=180,
            what="both worker processes to load the model",
        )
        assert proc.poll() is None, log.read_text()[-2000:]
        workers = _workers(proc.pid)
        assert len(workers) == 2
        index_file = str(tmp_path / "m" / "1" / "index" / "gallery.faissindex")
        for pid in workers:  # each worker reads the one copy of the codes in place (faiss's zero-copy mmap)
            with open(f"/proc/{pid}/maps") as f:
                assert index_file in f.read()
        queries = [bytes(r["lr"]) for r in read_split_raw(mosaic_examples, "query").take(6).as_numpy_iterator()]
        store = ModelStore(str(tmp_path), "m", poll_seconds=3600)
        store.refresh()
        import base64
        import concurrent.futures

        def ask(q: bytes) -> dict:
            r = httpx.post(
                f"{url}/v1/models/m:search",
                json={"instances": [{"b64": base64.b64encode(q).decode()}], "k": 5},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            return r.json()["results"][0]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, queries * 4))  # concurrent: both processes take requests
        for q, got in zip(queries * 4, answers):
            want = search(store.current, {"instances": [{"b64": base64.b64encode(q).decode()}], "k": 5}, 1000)[
                "results"
            ][0]
            assert got["ids"] == want["ids"] and got["distances"] == want["distances"]
        # a worker that dies is replaced by uvicorn's supervisor; the service keeps answering meanwhile
        os.kill(workers[0], 9)
        assert ask(queries[0])["ids"]
        wait_for(
            lambda: started_processes(log.read_text()) == 3, timeout=180, what="a new worker in place of the killed one"
        )
        assert len(_workers(proc.pid)) == 2 and workers[0] not in _workers(proc.pid) and ask(queries[1])["ids"]
    finally:
        proc.terminate()
        proc.wait(60)


def _nodelay_of_accepted(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection that asyncio's server (as uvicorn's workers run it) accepts on `listener`."""
    import asyncio

    seen = []

    class Record(asyncio.Protocol):
        def connection_made(self, transport):
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main():
        server = await asyncio.get_running_loop().create_server(Record, sock=listener)
        with socket.create_connection(listener.getsockname()[:2]):
            while not seen:
                await asyncio.sleep(0.01)
        server.close()

    asyncio.run(main())
    return seen[0]


def test_worker_processes_answer_without_nagle_delays():
    """uvicorn binds the workers' shared socket with proto 0; asyncio then leaves Nagle on for every accepted
    connection and each keep-alive answer waits ~40 ms for the client's delayed ACK. tcp_listener fixes it."""
    from serving.server import tcp_listener

    def bound() -> socket.socket:  # as uvicorn's Config.bind_socket makes it
        sock = socket.socket(family=socket.AF_INET)
        sock.bind(("127.0.0.1", 0))
        return sock

    assert _nodelay_of_accepted(bound()) == 0  # the problem, as uvicorn leaves it
    assert _nodelay_of_accepted(tcp_listener(bound())) != 0


def test_the_default_server_stack_is_uvicorns_c_parser_and_event_loop():
    """`--http auto --loop auto` (the defaults) must find httptools and uvloop installed (requirements.txt): the
    pure-Python h11 parser cost req/s at 8 clients (docs/results.md, "Serving under load")."""
    import uvicorn

    config = uvicorn.Config(lambda scope, receive, send: None, http="auto", loop="auto")
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    import uvloop  # noqa: F401  (uvicorn's loop="auto" takes it when it imports)


def test_serve_settings_travel_to_worker_processes_and_bad_ones_are_refused():
    from serving.batching import BatchingConfig
    from serving.server import InputLimits, ServeSpec, serve

    spec = ServeSpec(
        "/b",
        "m",
        limits=InputLimits(3, 100, 9),
        batching=BatchingConfig(False, 8, 1.5, 3),
        intra_op_threads=1,
        inter_op_threads=2,
    )
    assert ServeSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        serve(spec, workers=0)
    with pytest.raises(ValueError, match="intra_op_threads must be an integer >= 0"):
        ServeSpec("/b", "m", intra_op_threads=-2)


def test_a_version_re_exported_in_place_is_reloaded(tmp_path, version, tiny_preset, mosaic_examples):
    from trainer.export import export_saved_model
    from trainer.train import build_trainer

    shutil.copytree(version, tmp_path / "m" / "1")
    store = ModelStore(str(tmp_path), "m", poll_seconds=3600)
    store.refresh()
    before = store.current
    other = build_trainer(tiny_preset.replace(seed=11))
    staging = tmp_path / "staging"
    export_saved_model(other.method, other.nets, str(staging), [str(i) for i in range(10)])
    run_indexing(str(staging), gallery_from_examples(mosaic_examples), beam_args=BEAM, batch_size=16, previews=False)
    for name in ("saved_model.pb", "variables", "assets.extra", "index"):  # version 1's files replaced in place
        target = tmp_path / "m" / "1" / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        (shutil.copytree if (staging / name).is_dir() else shutil.copy)(staging / name, target)
    assert store.refresh() and store.current is not before and store.current.version == 1
    old_codes = before.index.index.reconstruct_n(0, 8)
    new_codes = store.current.index.index.reconstruct_n(0, 8)
    assert not np.array_equal(old_codes, new_codes)  # the new model's gallery is what is served now


def _legacy_file(payload: bytes, at: str) -> bytes:
    """A legacy torch file whose header (`at` = "magic") or state dict (`at` = "state") is `payload`."""
    buf = io.BytesIO()
    pick = lambda x: pickle.dump(x, buf, protocol=2)  # noqa: E731
    if at == "magic":
        buf.write(payload)
        return buf.getvalue()
    pick(0x1950A86A20F9469CFC6C)
    pick(1001)
    pick({"protocol_version": 1001})
    buf.write(payload)
    return buf.getvalue()


class _Boom:
    """Unpickled, it runs a shell command that writes `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_the_weights_reader_refuses_a_hostile_pickle(tmp_path):
    from trainer.pretrained import read_torch_legacy

    marker = tmp_path / "pwned"
    hostile = pickle.dumps(_Boom(str(marker)), protocol=2)
    for at in ("magic", "state"):
        with pytest.raises(pickle.UnpicklingError, match="posix.system is not allowed|os.system is not allowed"):
            read_torch_legacy(_legacy_file(hostile, at))
    assert not marker.exists()
