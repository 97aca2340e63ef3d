"""Faults, measured: `dsrhn serve --workers 2` under 8 searching clients on loopback while faults are injected on a
schedule, then the jobs killed and starved of disk; bounded in time, stops by itself.

The baseline is the fault-free phase of the same run: every answer must equal the answer the first fault-free
search of that query got (ids and distances), and name one version. Phases, in order, the clients running
through all of them:
    none            nothing injected
    worker kill -9  one of the two server workers killed; the supervisor restarts it
    corrupt push    version 2 appears with 64 bytes of its faiss index overwritten: must be refused
    good push       version 3, a copy of version 1, appears: answers move to it, none mixes versions
    slow client     one client sends its request at 1 byte/s while the others search
    two pushes      versions 4 and 5 appear back to back (the second while the first is being loaded)
    SIGTERM         the whole server is sent SIGTERM with requests in flight, then started again
    kill -9         the server's supervisor is killed with SIGKILL (its workers must not keep the port), restarted
Then `dsrhn index`, `dsrhn ingest` and `dsrhn train` killed with SIGKILL at --kills random points each and run
again (the result must equal an uninterrupted run's; whatever a killed run left must not read as a valid output);
two `dsrhn index` at once onto one folder; damaged files on read (each index file, a TFRecord shard, a checkpoint);
and the writers run onto a full file system (a 1 MiB tmpfs; root only, else the row says why not).

    python benchmarks/faults.py                # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import filecmp
import functools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402

from benchlib.serve import DSRHN, ProcessServer, build_tiny  # noqa: E402

CLIENTS = 8
K = 10
INGEST_FLAGS = ["--n-train", "600", "--n-query", "50", "--n-gallery", "600"]
TRAIN_FLAGS = ["--epochs", "3", "--steps-per-epoch", "4", "--batch-size", "16", "--bits", "16", "--verbose", "0"]


class Clients:
    """CLIENTS threads searching until stopped; every request logged as (start, end, outcome, version)."""

    def __init__(self, url: str, queries: list[bytes]):
        self.url, self.queries = url, queries
        self.reference: dict[int, tuple] = {}
        self.log: list[tuple[float, float, str, str]] = []
        self.lock, self.stop_event = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, seed: int):
        rng = random.Random(seed)
        with httpx.Client(timeout=10) as http:
            while not self.stop_event.is_set():
                q = rng.randrange(len(self.queries))
                body = {"instances": [{"b64": base64.b64encode(self.queries[q]).decode()}], "k": K}
                t0 = time.time()
                try:
                    r = http.post(f"{self.url}/v1/models/dsrhn:search", json=body)
                    if r.status_code != 200:
                        outcome, version = f"failed {r.status_code}", ""
                    else:
                        doc = r.json()
                        got = (tuple(doc["results"][0]["ids"]), tuple(doc["results"][0]["distances"]))
                        version = doc["model_version"]
                        with self.lock:
                            want = self.reference.setdefault(q, got)
                        outcome = "ok" if got == want else "wrong"
                except httpx.ConnectError:  # nothing listening (the server is down): not an answer lost
                    outcome, version = "refused", ""
                    time.sleep(0.05)
                except httpx.HTTPError as e:
                    outcome, version = f"dropped {type(e).__name__}", ""
                with self.lock:
                    self.log.append((t0, time.time(), outcome, version))

    def window(self, a: float, b: float) -> list[tuple]:
        with self.lock:
            return [x for x in self.log if a <= x[0] < b]

    def close(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


def counts(rows: list[tuple]) -> dict:
    out = {"requests": len(rows), "ok": 0, "wrong": 0, "failed": 0, "dropped": 0, "refused": 0}
    for _, _, outcome, _ in rows:
        out[outcome.split()[0]] += 1
    out["versions"] = sorted({v for *_, v in rows if v})
    return out


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The server's worker processes (uvicorn's spawned children; not multiprocessing's resource tracker)."""
    import psutil

    out = []
    for c in psutil.Process(proc.pid).children():
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline()):
                out.append(c.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids: list[int], limit: float) -> float:
    """Seconds until none of pids runs (inf: still running after limit)."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    t0 = time.time()
    while time.time() - t0 < limit:
        if not any(running(p) for p in pids):
            return time.time() - t0
        time.sleep(0.05)
    return float("inf")


def wait_ok(url: str, query: bytes, limit: float = 60.0) -> float:
    """Seconds until a search answers 200."""
    t0 = time.time()
    body = {"instances": [{"b64": base64.b64encode(query).decode()}], "k": K}
    while time.time() - t0 < limit:
        try:
            if httpx.post(f"{url}/v1/models/dsrhn:search", json=body, timeout=2).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return float("inf")


def slow_client(port: int, body: bytes, seconds: float) -> str:
    """A request sent 1 byte a second; what the server did with it."""
    head = (
        f"POST /v1/models/dsrhn:search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    sent, t0 = 0, time.time()
    try:
        for byte in (head + body)[: int(seconds)]:
            s.sendall(bytes([byte]))
            sent += 1
            time.sleep(1)
        s.settimeout(5)
        try:
            reply = s.recv(200)
        except TimeoutError:
            return f"sent {sent} bytes in {time.time() - t0:.0f} s; the server still held the connection, waiting"
        return f"sent {sent} bytes in {time.time() - t0:.0f} s, then: " + (
            reply.split(b"\r\n")[0].decode() if reply else "connection closed by the server"
        )
    except OSError as e:
        return f"sent {sent} bytes, then the server closed it ({type(e).__name__})"
    finally:
        s.close()


def copy_version(base: str, src: str, dst: str, corrupt: bool = False) -> None:
    """<base>/dsrhn/<dst>: a copy of <src> made beside it and renamed into place (a push)."""
    tmp = os.path.join(base, f".push-{dst}")
    shutil.copytree(os.path.join(base, "dsrhn", src), tmp)
    if corrupt:
        index = os.path.join(tmp, "index")
        target = max((os.path.join(index, f) for f in os.listdir(index)), key=os.path.getsize)
        with open(target, "r+b") as f:
            f.seek(os.path.getsize(target) // 2)
            f.write(os.urandom(64))
    os.rename(tmp, os.path.join(base, "dsrhn", dst))


class Soak:
    """The serving phases: `dsrhn serve --workers 2` under CLIENTS searching clients, one fault per phase."""

    def __init__(self, base: str, queries: list[bytes], phase_s: float):
        self.base, self.queries, self.phase_s = base, queries, phase_s
        self.server = ProcessServer(base, "dsrhn", "--workers 2 --poll-seconds 1")
        self.clients = Clients(self.server.url, queries)
        self.rows, self.recovery = [], {}

    def phase(self, name: str, inject, settle: float | None = None) -> None:
        t0 = time.time()
        note = inject() or ""
        time.sleep(self.phase_s if settle is None else settle)
        self.rows.append({"fault": name, **counts(self.clients.window(t0, time.time())), "note": note})

    def kill_worker(self) -> str:
        proc = self.server.proc
        pid = worker_pids(proc)[0]
        t = time.time()
        os.kill(pid, signal.SIGKILL)
        while (len(worker_pids(proc)) < 2 or pid in worker_pids(proc)) and time.time() - t < 60:
            time.sleep(0.05)
        self.recovery["worker"] = time.time() - t
        return f"worker {pid} killed; a new worker process in {self.recovery['worker']:.1f} s"

    def pushes(self) -> None:
        """A corrupt push (must be refused), a good one, then two back to back."""
        base = self.base
        self.phase("corrupt push", lambda: copy_version(base, "1", "2", corrupt=True) or "version 2 written")
        status = httpx.get(f"{self.server.url}/v1/models/dsrhn", timeout=5).json()
        self.rows[-1]["note"] += "; status: " + ", ".join(
            f"v{v['version']} {v['state']}" for v in status["model_version_status"]
        )
        shutil.rmtree(os.path.join(base, "dsrhn", "2"))
        self.phase("good push", lambda: copy_version(base, "1", "3") or "version 3 written")
        body = json.dumps({"instances": [{"b64": base64.b64encode(self.queries[0]).decode()}], "k": K}).encode()
        self.phase("slow client", lambda: None, 0)
        t0 = time.time()
        self.rows[-1]["note"] = slow_client(self.server.port, body, self.phase_s)
        self.rows[-1].update(counts(self.clients.window(t0, time.time())))

        def two_pushes():
            copy_version(base, "1", "4")
            time.sleep(0.3)
            copy_version(base, "1", "5")
            return "versions 4 and 5 written 0.3 s apart"

        self.phase("two pushes", two_pushes)

    def restart(self) -> float:
        """A new server for the clients, and seconds until it answered; then half a phase of load."""
        self.server = ProcessServer(self.base, "dsrhn", "--workers 2 --poll-seconds 1")
        self.clients.url = self.server.url
        back = wait_ok(self.server.url, self.queries[0])
        time.sleep(self.phase_s / 2)
        return back

    def sigterm(self) -> None:
        t0 = time.time()
        self.server.proc.send_signal(signal.SIGTERM)
        self.server.proc.wait(60)
        t_down = time.time()
        started_before = [x for x in self.clients.window(t0 - 30, t0) if x[1] > t0]  # in flight at the signal
        cut = [x for x in started_before if not x[2].startswith("ok")]
        back = self.restart()
        self.rows.append(
            {
                "fault": "SIGTERM + restart",
                **counts(self.clients.window(t0, time.time())),
                "note": f"{len(started_before)} requests in flight at the signal, {len(cut)} of them cut; "
                f"exited in {t_down - t0:.1f} s; a new server answered {back:.1f} s after its start",
                "pass": not cut and t_down - t0 < 25,
            }
        )

    def kill9(self) -> None:
        t0 = time.time()
        workers = worker_pids(self.server.proc)
        self.server.proc.kill()
        self.server.proc.wait(60)
        gone = wait_gone(workers, 60)
        back = self.restart()
        self.rows.append(
            {
                "fault": "kill -9 + restart",
                **counts(self.clients.window(t0, time.time())),
                "note": f"supervisor killed; its {len(workers)} workers exited {gone:.1f} s later (none kept "
                f"the port); a new server answered {back:.1f} s after its start",
                "pass": gone < 25,
            }
        )

    def judged(self) -> list[dict]:
        """Each row's pass: no wrong answer, and none failed or dropped but where a process was killed."""
        lossy = ("worker kill -9", "SIGTERM + restart", "kill -9 + restart")  # in-flight requests on a killed process
        for r in self.rows:
            held = r["wrong"] == 0 and (r["fault"] in lossy or r["failed"] + r["dropped"] == 0)
            r["pass"] = (
                held
                and r.get("pass", True)
                and (r["fault"] != "worker kill -9" or self.recovery.get("worker", 99) <= 5)
            )
            if r["fault"] == "corrupt push":
                r["pass"] = r["pass"] and "v2 AVAILABLE" not in r["note"]  # the damaged version never served
        return self.rows


def serving_phases(base: str, queries: list[bytes], phase_s: float) -> list[dict]:
    soak = Soak(base, queries, phase_s)
    try:
        soak.clients.start()
        soak.phase("none", lambda: None)
        soak.phase("worker kill -9", soak.kill_worker)
        soak.pushes()
        soak.sigterm()
        soak.kill9()
    finally:
        soak.clients.close()
        soak.server.stop()
    return soak.judged()


def env() -> dict:
    """The environment of the jobs run: TensorFlow's start-up lines silenced."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def killed_at_random(cmd: list[str], out: str, kills: int, full_s: float, check, rng: random.Random) -> dict:
    """cmd killed with SIGKILL at `kills` random points in [0.2, 1.0] x full_s, each then re-run whole; check(out)
    says whether the re-run's output equals the uninterrupted one, and left(out) what the kill left."""
    equal, bad_reads = 0, 0
    for _ in range(kills):
        shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        time.sleep(rng.uniform(0.2, 1.0) * full_s)
        p.kill()
        p.wait()
        bad_reads += check(out, after_kill=True) == "invalid"
        r = run(cmd)
        equal += r.returncode == 0 and check(out) == "equal"
    return {"equal": equal, "kills": kills, "bad_reads": bad_reads, "pass": equal == kills and bad_reads == 0}


def full_disk(cmd_for, name: str, root: str) -> dict:
    """cmd_for(<a 1 MiB tmpfs>/name) run: its exit status, its stderr's lines, what it left."""
    mnt = os.path.join(root, "full")
    os.makedirs(mnt, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True).returncode:
        return {"note": "not run: mounting a tmpfs needs root (tests/test_faults.py: a size limit instead)"}
    try:
        r = run(cmd_for(os.path.join(mnt, name)))
        err = [
            line
            for line in r.stderr.splitlines()
            if line.strip() and not line.startswith(("I0", "W0", "E0", "WARNING"))
        ]
        left = sorted(os.listdir(mnt))
        note = (
            f"exit {r.returncode}; {len(err)} line(s) on stderr: {err[-1][:160] if err else '-'}; left in the "
            f"folder: {left or 'nothing'}"
        )
        return {"note": note, "pass": r.returncode == 1 and len(err) == 1 and mnt in err[0]}
    finally:
        subprocess.run(["umount", mnt])


def same_weights(a: str, b: str) -> bool:
    """The final checkpoints of two training runs hold the same weights (to float32 round-off)."""
    import h5py
    import numpy as np

    def arrays(model: str) -> dict:
        ckpt = os.path.join(model, "_work", "checkpoints", "epoch-0003")
        out = {}
        for name in sorted(f for f in os.listdir(ckpt) if f.endswith(".h5")):
            with h5py.File(os.path.join(ckpt, name)) as f:
                f.visititems(
                    lambda k, v, name=name: (
                        out.__setitem__(f"{name}/{k}", v[()]) if isinstance(v, h5py.Dataset) else None
                    )
                )
        return out

    x, y = arrays(a), arrays(b)
    return x.keys() == y.keys() and all(np.allclose(x[k], y[k], rtol=1e-5, atol=1e-6) for k in x)


def concurrent_index(cmd: list[str], out: str, check) -> str:
    """Two runs of one `dsrhn index` at once: one finishes, the other is refused with the lock's error."""
    shutil.rmtree(out, ignore_errors=True)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env()) for _ in range(2)
    ]
    results = [(p.wait(600), p.stderr.read()) for p in procs]
    refused = [err.strip().splitlines()[-1] for rc, err in results if rc]
    state = check(out)
    note = (
        f"{sum(rc == 0 for rc, _ in results)} finished, {len(refused)} refused"
        + (f" ({refused[0][:140]})" if refused else "")
        + f"; the index: {state}"
    )
    return {"note": note, "pass": state == "equal" and len(refused) <= 1}


def damaged_index_files(model: str, ref_index: str, root: str) -> tuple[int, int, int]:
    """One flipped byte in each index file of a copy of the model: (files refused, files named, files)."""
    from dsrhn.contracts import IndexMismatch, read_metadata
    from serving.index import load_index, read_manifest

    meta, caught, named = read_metadata(model), 0, 0
    copy = os.path.join(root, "damaged-model")
    shutil.copytree(model, copy)
    shutil.rmtree(os.path.join(copy, "index"))
    shutil.copytree(ref_index, os.path.join(copy, "index"))
    files = read_manifest(ref_index)["files"]
    for name in files:
        path = os.path.join(copy, "index", name)
        flip(path)
        try:
            load_index(copy, meta)
        except IndexMismatch as e:
            caught += 1
            named += path in str(e)
        shutil.copy(os.path.join(ref_index, name), path)
    return caught, named, len(files)


def damaged_shard(model: str, examples: str, root: str) -> bool:
    """A damaged TFRecord shard: `dsrhn index` names it in one line and writes nothing."""
    ex = os.path.join(root, "damaged-examples")
    shutil.copytree(examples, ex)
    shard = os.path.join(ex, "Split-gallery", sorted(os.listdir(os.path.join(ex, "Split-gallery")))[0])
    flip(shard, 32)
    out = os.path.join(root, "damaged-index")
    r = run(index_cmd(model, ex, out))
    return r.returncode == 1 and shard in r.stderr and not os.path.exists(out)


def damaged_checkpoint(examples: str, trained: str, root: str) -> bool:
    """A damaged newest checkpoint: training skips it and resumes to the uninterrupted run's weights."""
    work = os.path.join(root, "damaged-train")
    shutil.copytree(trained, work)
    flip(os.path.join(work, "_work", "checkpoints", "epoch-0003", "hashnet.weights.h5"))
    r = run(train_cmd(examples, work))
    return r.returncode == 0 and "epoch-0003 is damaged" in r.stderr and same_weights(work, trained)


def damaged_reads(model: str, ref_index: str, examples: str, trained: str, root: str) -> dict:
    """One flipped byte in each index file, in a TFRecord shard, in the newest checkpoint: each named, none read."""
    caught, named, files = damaged_index_files(model, ref_index, root)
    shard_named = damaged_shard(model, examples, root)
    skipped = damaged_checkpoint(examples, trained, root)
    note = (
        f"index files refused {caught} of {files}, the file named {named} of {files}; damaged TFRecord "
        f"shard named in one line by dsrhn index: {'yes' if shard_named else 'NO'}; damaged checkpoint skipped "
        f"and the resume equal to the uninterrupted weights: {'yes' if skipped else 'NO'}"
    )
    return {"note": note, "pass": caught == named == files and shard_named and skipped}


def flip(path: str, n: int = 1) -> None:
    """n bytes in the middle of a file changed."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        data = f.read(n)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def timed(cmd: list[str]) -> float:
    """Seconds of an uninterrupted run of cmd (it must succeed)."""
    t0 = time.time()
    assert run(cmd).returncode == 0
    return time.time() - t0


def same_index(ref_index: str, out: str, after_kill: bool = False) -> str:
    """An index folder against the uninterrupted run's: absent, invalid, equal or different."""
    from serving import index as gindex

    if not os.path.exists(os.path.join(out, "manifest.json")):
        return "absent"
    try:
        m = gindex.read_manifest(out)
        r = gindex.read_manifest(ref_index)
    except Exception:
        return "invalid"
    files_equal = all(filecmp.cmp(os.path.join(out, f), os.path.join(ref_index, f), shallow=False) for f in r["files"])
    return "equal" if files_equal and m["count"] == r["count"] else ("invalid" if after_kill else "different")


def same_examples(ref_ex: str, out: str, after_kill: bool = False) -> str:
    """An Examples folder against the uninterrupted ingest's: the same files, the same record bytes."""
    if not os.path.exists(out):
        return "absent"
    want = sorted(os.path.relpath(os.path.join(d, f), ref_ex) for d, _, fs in os.walk(ref_ex) for f in fs)
    got = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    if got != want:
        return "invalid" if after_kill else "different"
    same = all(
        filecmp.cmp(os.path.join(out, f), os.path.join(ref_ex, f), shallow=False) for f in want if f.endswith(".gz")
    )
    return "equal" if same else "different"


def same_training(ref_model: str, out: str, after_kill: bool = False) -> str:
    """A training run's folder: after a kill, whether it reads as a finished model; after a re-run, its weights."""
    from dsrhn.contracts import METADATA

    if not os.path.exists(os.path.join(out, METADATA)):
        return "absent"  # no dsrhn model yet: nothing reads it as one
    done = os.path.exists(os.path.join(out, "_work", "checkpoints", "epoch-0003"))
    if after_kill:
        return "valid" if done and os.path.exists(os.path.join(out, "variables", "variables.index")) else "invalid"
    return "equal" if done and same_weights(out, ref_model) else "different"


@dataclasses.dataclass
class KillJob:
    """A job killed at random points: its command into a folder, its uninterrupted output, how a re-run's output
    compares (check(ref, out, after_kill)), and the words of its row."""

    fault: str
    cmd_for: Callable[[str], list[str]]
    ref: str
    out: str
    check: Callable
    rerun: str  # what a re-run's output must be
    read_as: str  # what a killed run's output must not read as
    unit: str = ""

    def row(self, kills: int, rng: random.Random) -> dict:
        full_s = timed(self.cmd_for(self.ref))
        k = killed_at_random(self.cmd_for(self.out), self.out, kills, full_s, self.same(), rng)
        note = (
            f"{self.rerun} {k['equal']} of {k['kills']}; a killed run's output {self.read_as}: "
            f"{k['bad_reads']}{self.unit} (full run {full_s:.0f} s)"
        )
        return {"fault": f"{self.fault} kill -9 x{kills}", "note": note, "pass": k["pass"]}

    def same(self) -> Callable:
        """check(out, after_kill=False) against this job's uninterrupted output."""
        return functools.partial(self.check, self.ref)


def index_cmd(model: str, examples: str, out: str) -> list[str]:
    return DSRHN + ["index", "--model", model, "--examples", examples, "--output", out]


def ingest_cmd(out: str) -> list[str]:
    return DSRHN + ["ingest", "fashion-mnist-mosaic"] + INGEST_FLAGS + ["--output", out]


def train_cmd(examples: str, out: str) -> list[str]:
    return DSRHN + ["train", "--examples", examples, "--output", out] + TRAIN_FLAGS


def job_phases(base: str, examples: str, root: str, kills: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    model = os.path.join(base, "dsrhn", "1")
    ref_index, ref_ex, ref_model = (os.path.join(root, n) for n in ("ref-index", "ref-examples", "ref-model"))
    index_for = functools.partial(index_cmd, model, examples)
    train_for = functools.partial(train_cmd, ref_ex)
    join = os.path.join
    index = KillJob(
        "dsrhn index",
        index_for,
        ref_index,
        join(root, "index-k"),
        same_index,
        "re-run equal to an uninterrupted run",
        "read as valid but wrong",
    )
    ingest = KillJob(
        "dsrhn ingest",
        ingest_cmd,
        ref_ex,
        join(root, "ex-k"),
        same_examples,
        "re-run byte-identical to an uninterrupted run",
        "read as valid",
    )
    train = KillJob(
        "dsrhn train",
        train_for,
        ref_model,
        join(root, "train-k"),
        same_training,
        "re-run (resumed) to the uninterrupted run's weights",
        "read as a model",
        " invalid",
    )
    rows = [index.row(kills, rng), ingest.row(kills, rng)]
    two = join(root, "index-2")
    rows.append({"fault": "two dsrhn index at once", **concurrent_index(index_for(two), two, index.same())})
    rows.append(train.row(kills, rng))
    rows.append({"fault": "damaged files on read", **damaged_reads(model, ref_index, ref_ex, ref_model, root)})
    for fault, cmd_for, name in (
        ("index", index_for, "index"),
        ("ingest", ingest_cmd, "examples"),
        ("train", train_for, "model"),
    ):
        rows.append({"fault": f"dsrhn {fault}, disk full", **full_disk(cmd_for, name, root)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase-seconds", type=float, default=8.0)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from dsrhn.records import read_split_raw

    root = tempfile.mkdtemp(prefix="dsrhn-faults-")
    t_all = time.time()
    try:
        base, ex = build_tiny(root)
        queries = [bytes(r["lr"]) for r in read_split_raw(ex, "query").take(50).as_numpy_iterator()]
        rows = serving_phases(base, queries, args.phase_seconds)
        rows += job_phases(base, ex, root, args.kills, args.seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"faults: `dsrhn serve --workers 2`, {CLIENTS} clients, k={K}, phases of {args.phase_seconds:g} s; "
        f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}; {time.time() - t_all:.0f} s"
    )
    print(
        "| fault | requests | ok | wrong | failed | dropped | refused (server down) | versions answered "
        "| what happened | held |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        held = {True: "pass", False: "FAIL", None: "-"}[r.get("pass")]
        if "requests" in r:
            print(
                f"| {r['fault']} | {r['requests']} | {r['ok']} | {r['wrong']} | {r['failed']} | {r['dropped']} | "
                f"{r['refused']} | {', '.join(r['versions'])} | {r['note']} | {held} |"
            )
        else:
            print(f"| {r['fault']} | | | | | | | | {r['note']} | {held} |")
    print(
        f"invariants held in {sum(r.get('pass') is True for r in rows)} of "
        f"{sum(r.get('pass') is not None for r in rows)} rows; "
        "data lost: a job's result differing from its uninterrupted run or a wrong answer (both counted above)"
    )


if __name__ == "__main__":
    main()
