"""The Table 1 benchmark's task runner: priorities, dependencies, and worker processes."""
from __future__ import annotations

import importlib.util
import operator
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "reproduce_table1.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reproduce_table1", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tasks():
    # (priority, name, fn, args, unlocks): "dsrhn" and "two-stage" wait for "stage1", as in the benchmark
    after = [(1, "dsrhn", operator.mul, (3, 4), []), (2, "two-stage", operator.add, (3, 4), [])]
    return [(4, "hr", operator.sub, (9, 2), []), (0, "stage1", operator.pow, (2, 5), after),
            (3, "lr", operator.floordiv, (9, 2), [])]


def test_inline_runner_honours_priority_and_dependencies(bench):
    done = []
    runner = bench.Runner(jobs=1)
    runner.run(_tasks(), lambda name, result: done.append((name, result)))
    runner.close()
    # stage1 first; the rows it unlocks outrank the lower-priority rows already waiting
    assert done == [("stage1", 32), ("dsrhn", 12), ("two-stage", 7), ("lr", 4), ("hr", 7)]


def test_process_runner_runs_every_task_once_after_its_dependency(bench):
    done = []
    runner = bench.Runner(jobs=2)
    try:
        runner.run(_tasks(), lambda name, result: done.append((name, result)))
    finally:
        runner.close()
    assert sorted(done) == sorted([("stage1", 32), ("dsrhn", 12), ("two-stage", 7), ("lr", 4), ("hr", 7)])
    names = [n for n, _ in done]
    assert names.index("stage1") < names.index("dsrhn") and names.index("stage1") < names.index("two-stage")
