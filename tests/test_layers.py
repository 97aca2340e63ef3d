"""The data flows one way: ingest -> records -> train -> SavedModel -> index -> serve. The contracts (dsrhn/) sit
low and import nothing above them; each stage imports only the contracts and itself; the TFX pipeline (pipeline/,
its components beside it) sits above the stages and the front door (cli/) above everything. No exemptions. Lazy
imports inside functions count too."""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dsrhn", "components", "trainer", "serving", "pipeline", "cli")
ALLOWED = {  # package -> the packages its modules may import (besides their own)
    "dsrhn": {"dsrhn"},
    "trainer": {"dsrhn"},
    "components": {"dsrhn"},
    "serving": {"dsrhn"},
    "pipeline": {"dsrhn", "components", "trainer", "serving"},
    "cli": set(PACKAGES),
}


def _modules() -> dict[str, str]:
    mods = {}
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for f in files:
                if f.endswith(".py"):
                    name = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                    mods[name.removesuffix(".__init__")] = os.path.join(root, f)
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in found if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_form_a_loop():
    graph = _graph()
    assert len(graph) > 40 and "dsrhn.images" in graph and "serving.hits" in graph
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]  # the check itself works


def test_each_stage_imports_only_the_contracts_and_itself():
    wrong = []
    for name, deps in _graph().items():
        package = name.split(".")[0]
        allowed = ALLOWED[package] | {package}
        wrong += [f"{name} -> {d}" for d in sorted(deps) if d.split(".")[0] not in allowed]
    assert wrong == [], "imports against the data flow:\n" + "\n".join(wrong)
