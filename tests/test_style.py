"""The house rules a newcomer can rely on: ruff's lint and format settings (pyproject.toml) hold on the whole tree,
no function outside the tests is over 60 lines, and no benchmark script imports another one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ("dsrhn", "components", "trainer", "serving", "pipeline", "cli", "benchmarks")
MAX_FUNCTION_LINES = 60


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def _sources(packages=CODE):
    for package in packages:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


def test_ruff_lint_and_format_hold():
    lint = _ruff("check", "--no-cache", ".")
    assert lint.returncode == 0, lint.stdout[-4000:]
    fmt = _ruff("format", "--check", "--no-cache", ".")
    assert fmt.returncode == 0, fmt.stdout[-4000:]


def test_no_function_outside_the_tests_is_over_60_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_no_benchmark_script_imports_another():
    bench = os.path.join(REPO, "benchmarks")
    scripts = {f[:-3] for f in os.listdir(bench) if f.endswith(".py")}
    wrong = []
    for path in _sources(("benchmarks",)):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            wrong += [
                f"{os.path.relpath(path, REPO)} -> {n}"
                for n in names
                if n.removeprefix("benchmarks.").split(".")[0] in scripts
            ]
    assert wrong == []
