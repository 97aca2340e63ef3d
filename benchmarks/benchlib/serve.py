"""The served product under load: the CLI's command line, `dsrhn serve` in a child process, a tiny servable model."""

from __future__ import annotations

import os
import sys
import tempfile
import time

DSRHN = [sys.executable, "-m", "cli"]  # the CLI (`dsrhn`), as a user runs it


class ProcessServer:
    """`dsrhn serve` in a child process on a free loopback port; ready when every worker has started."""

    def __init__(self, base_dir: str, name: str, flags: str, start_timeout: float = 300.0):
        import shlex
        import subprocess

        from cli.main import build_parser
        from serving.server import free_loopback_port

        self.port = free_loopback_port()
        extra = shlex.split(flags)
        workers = (
            build_parser().parse_args(["serve", "--base-dir", base_dir, *extra]).workers
        )  # as dsrhn serve reads them
        cmd = DSRHN + [
            "serve",
            "--base-dir",
            base_dir,
            "--model-name",
            name,
            "--port",
            str(self.port),
            "--poll-seconds",
            "3600",
            *extra,
        ]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + start_timeout
        while self._started() < workers:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit(f"`{' '.join(cmd)}` did not start {workers} worker(s):\n{self._tail()}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}"

    def _started(self) -> int:
        from serving.server import started_processes

        with open(self.log.name) as f:
            return started_processes(f.read())

    def _tail(self) -> str:
        with open(self.log.name) as f:
            return "".join(f.readlines()[-20:])

    def stop(self) -> None:
        import signal
        import subprocess

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


def build_tiny(root: str) -> tuple[str, str]:
    """An untrained cpu-preset model exported as version 1 of <root>/serving/dsrhn, its gallery indexed (2,000
    mosaics); returns (serving base dir, the Examples)."""
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig, get_preset
    from serving.indexer import gallery_from_examples, run_indexing
    from trainer.export import export_saved_model
    from trainer.train import build_trainer

    ex = os.path.join(root, "examples")
    run_ingest({"kind": "fashion-mnist-mosaic", "n_train": 0, "n_query": 50, "n_gallery": 2000}, ex, 56, LRConfig())
    t = build_trainer(get_preset("cpu"))
    v1 = os.path.join(root, "serving", "dsrhn", "1")
    export_saved_model(t.method, t.nets, v1, [str(i) for i in range(10)])
    run_indexing(v1, gallery_from_examples(ex))
    return os.path.join(root, "serving"), ex
