"""Tasks run up to `jobs` at a time, each in a fresh spawned worker process, by priority; a task that ends makes
the tasks it unlocks ready (e.g. the rows that start from a trained SR stage)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """fn(*args) in a worker process; on_done receives `name` and its result. Lower priorities start first;
    `unlocks` become ready when this task ends."""

    priority: int
    name: Any
    fn: Callable
    args: tuple = ()
    unlocks: list = field(default_factory=list)


class Runner:
    """Each task in a fresh spawned process, so no run inherits another's TensorFlow state (traced graphs, cached
    datasets, allocator): in one long-lived process the later rows of a long run slowed down."""

    def __init__(self, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.jobs = jobs
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)

    def run(self, tasks: list[Task], on_done) -> None:
        """Run `tasks` and every task they unlock; on_done(task.name, result) in this process as each ends."""
        from concurrent.futures import FIRST_COMPLETED, wait

        ready = sorted(tasks, key=lambda t: t.priority)
        running = {}
        while ready or running:
            while ready and len(running) < self.jobs:
                task = ready.pop(0)
                running[self.pool.submit(task.fn, *task.args)] = task
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                on_done(task.name, future.result())
                ready = sorted(ready + task.unlocks, key=lambda t: t.priority)

    def close(self) -> None:
        self.pool.shutdown()


def run_all(tasks: list[Task], on_done, jobs: int = 1) -> None:
    """A Runner of `jobs` workers over `tasks`, closed afterwards."""
    runner = Runner(jobs)
    try:
        runner.run(tasks, on_done)
    finally:
        runner.close()
