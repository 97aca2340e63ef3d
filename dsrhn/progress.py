"""Progress lines for long work (ingest, index, evaluate): items done, rate, ETA, on stderr at most every
10 s (DSRHN_PROGRESS_SECONDS to change it).

Inside a Beam DoFn each worker process reports its own share (`worker <pid>`), since a DirectRunner
in multi_processing mode (or a cluster) runs several; `share` is the fraction of the total one
worker is expected to process.
"""

from __future__ import annotations

import os
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        every_s: float | None = None,
        share: float = 1.0,
        worker: bool = False,
        stream=None,
    ):
        if every_s is None:
            every_s = float(os.environ.get("DSRHN_PROGRESS_SECONDS", "10"))
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.expected = None if total is None else max(1, round(total * share))
        self.prefix = f"[{what}{f' worker {os.getpid()}' if worker else ''}]"
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last = time.monotonic()

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.start)
        rate = self.done / elapsed
        text = f"{self.prefix} {self.done:,}"
        if self.expected:
            text += f" / {self.expected:,}"
        text += f" {self.unit}, {rate:,.1f}/s, {_duration(elapsed)} elapsed"
        if self.expected and rate > 0 and self.done < self.expected:
            text += f", ETA {_duration((self.expected - self.done) / rate)}"
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if time.monotonic() - self.start >= self.every_s:  # short work stays quiet
            print(self.line() + " (done)", file=self.stream, flush=True)


def beam_workers(beam_args: list[str] | None) -> int:
    """How many workers a DirectRunner job runs (--direct_num_workers; 0 means one per core)."""
    n = 1
    for a in beam_args or []:
        if a.startswith("--direct_num_workers="):
            n = int(a.partition("=")[2]) or (os.cpu_count() or 1)
    return max(1, n)
