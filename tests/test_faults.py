"""Faults, one invariant each (the long soak with figures: benchmarks/faults.py, docs/testing.md): SIGTERM drains a
request in flight; a full disk or a size limit at a writer is one line naming the output, the previous state kept;
damaged records, checkpoints and index files are named, never read as valid; a job killed with SIGKILL re-runs to
the result of an uninterrupted run."""

from __future__ import annotations

import base64
import errno
import filecmp
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from serving.server import free_loopback_port
from tests.conftest import indexed_copy, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DSRHN = [sys.executable, "-m", "cli"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_model, mosaic_examples):
    return indexed_copy(tmp_path_factory.mktemp("faults"), trained_model, mosaic_examples)


def stderr_lines(text: str) -> list[str]:
    """What a user reads on stderr, without TensorFlow's and absl's start-up log."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith(("I0", "W0", "E0", "WARNING: All log"))
    ]


def size_limited(cmd: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """cmd with every file it writes capped at limit_bytes (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC; no
    root needed)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)


def read_response(c: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next((line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    )
    while len(body) < length:
        chunk = c.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_sigterm_lets_a_request_in_flight_finish_then_refuses_new_ones(served, mosaic_examples):
    from dsrhn.records import read_split_raw

    query = bytes(next(read_split_raw(mosaic_examples, "query").take(1).as_numpy_iterator())["lr"])
    port = free_loopback_port()
    proc = subprocess.Popen(
        DSRHN
        + ["serve", "--base-dir", str(served), "--model-name", "dsrhn", "--port", str(port), "--drain-seconds", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=ENV,
    )
    try:

        def ready():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                    c.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return b" 200 " in c.recv(100)
            except OSError:
                return False

        wait_for(ready, timeout=180, what="dsrhn serve to load the model")
        body = json.dumps({"instances": [{"b64": base64.b64encode(query).decode()}], "k": 5}).encode()
        c = socket.create_connection(("127.0.0.1", port), timeout=30)
        c.sendall(
            f"POST /v1/models/dsrhn:search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )  # the request has begun
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)

        def refusing():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return False
            except OSError:
                return True

        wait_for(refusing, timeout=30, what="the server to stop accepting connections after SIGTERM")
        assert proc.poll() is None  # still draining
        c.sendall(body[10:])
        answer = read_response(c)
        c.close()
        assert b" 200 " in answer.split(b"\r\n")[0], answer[:300]
        assert len(json.loads(answer.partition(b"\r\n\r\n")[2])["results"][0]["ids"]) == 5
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ingest_and_index_onto_a_full_disk_say_so_in_one_line_and_keep_what_was_there(
    served, mosaic_examples, tmp_path
):
    out = tmp_path / "examples"
    r = size_limited(
        DSRHN
        + [
            "ingest",
            "fashion-mnist-mosaic",
            "--n-train",
            "96",
            "--n-query",
            "16",
            "--n-gallery",
            "48",
            "--output",
            str(out),
        ],
        64 << 10,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert stderr_lines(r.stderr) == [f"dsrhn ingest: error: File too large (writing {out})"], r.stderr[-3000:]
    assert not os.path.exists(out) and os.listdir(tmp_path) == []  # nothing half-written left beside it

    model = served / "dsrhn" / "1"
    before, listing = json.loads((model / "index" / "manifest.json").read_text()), sorted(os.listdir(model / "index"))
    r = size_limited(DSRHN + ["index", "--model", str(model), "--examples", mosaic_examples], 4 << 10)
    assert r.returncode == 1, r.stderr[-3000:]
    expected = f"dsrhn index: error: File too large (writing {model / 'index'})"
    assert stderr_lines(r.stderr) == [expected], r.stderr[-3000:]
    assert json.loads((model / "index" / "manifest.json").read_text()) == before  # the old index, whole
    assert sorted(os.listdir(model / "index")) == listing


def test_a_write_that_does_not_fit_is_refused_before_it_starts(tmp_path):
    from dsrhn.atomic import ensure_space

    free = shutil.disk_usage(tmp_path).free
    ensure_space(str(tmp_path / "a" / "b"), 1 << 20, "a checkpoint")  # fits
    with pytest.raises(OSError, match=r"checkpoint epoch-0001 needs .* MB, .* MB free") as e:
        ensure_space(str(tmp_path / "a" / "b"), free + (1 << 30), "checkpoint epoch-0001")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "a" / "b")


def test_a_damaged_tfrecord_is_named_in_one_line(trained_model, mosaic_examples, tmp_path):
    damaged = tmp_path / "ex"
    shutil.copytree(mosaic_examples, damaged)
    shard = next((damaged / "Split-gallery").iterdir())
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 32] = os.urandom(32)
    shard.write_bytes(bytes(data))
    r = subprocess.run(
        DSRHN + ["index", "--model", trained_model, "--examples", str(damaged), "--output", str(tmp_path / "index")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=600,
    )
    lines = stderr_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"dsrhn index: error: damaged record in {shard} (") and "dsrhn ingest" in lines[0]
    assert not (tmp_path / "index").exists()


def test_every_damaged_index_file_is_refused_on_load(served, tmp_path):
    from dsrhn.contracts import IndexMismatch, read_metadata
    from serving.index import load_index, read_manifest

    model = tmp_path / "m"
    shutil.copytree(served / "dsrhn" / "1", model)
    files = read_manifest(str(model / "index"))["files"]
    assert {"gallery.faissindex", "ids.txt"} <= set(files) or len(files) >= 2, files
    meta = read_metadata(str(model))
    for name in files:
        path = model / "index" / name
        good = path.read_bytes()
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit
        with pytest.raises(IndexMismatch, match=f"{path} does not match its manifest checksum"):
            load_index(str(model), meta)
        path.write_bytes(good)
    assert load_index(str(model), meta).manifest["count"] == 48


def test_dsrhn_index_killed_with_sigkill_re_runs_to_the_uninterrupted_index(served, mosaic_examples, tmp_path):
    from serving.index import read_manifest

    model = str(served / "dsrhn" / "1")
    reference = read_manifest(os.path.join(model, "index"))
    out = tmp_path / "index"
    cmd = DSRHN + ["index", "--model", model, "--examples", mosaic_examples, "--output", str(out)]
    for delay in (2.0, 5.0):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV)
        time.sleep(delay)
        p.kill()
        p.wait()
        if out.exists():  # what a killed run leaves is a whole index or nothing
            assert read_manifest(str(out))["files"] == reference["files"]
        assert subprocess.run(cmd, capture_output=True, cwd=REPO, env=ENV, timeout=600).returncode == 0
        assert read_manifest(str(out))["files"] == reference["files"]
        for name in reference["files"]:
            assert filecmp.cmp(out / name, os.path.join(model, "index", name), shallow=False)
        leftovers = [f for f in os.listdir(tmp_path) if f != "index"]
        assert leftovers == [], leftovers
        shutil.rmtree(out)
