"""The house rules that code can check: the library's import graph has no circle, its packages import only the
layers below them, nothing imports the entry point, and ``common/`` keeps few top-level modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "daps", "dps", "baselines", "commands")
#: what each part of the library may import (besides itself and the top-level modules everyone uses)
ALLOWED = {
    "common.config": {"common.models", "common.evaluation", "common.operators", "common.data"},
    "common.data": {"common.config", "common.operators"},
    "common.operators": {"common.config", "common.models", "common.data"},
    "common.models": {"common.config", "common.operators"},
    "common.sampling": {"common.config", "common.models", "common.operators"},
    "common.results": {"common.config", "common.data"},
    "common.evaluation": {"common.config", "common.data", "common.models", "common.operators", "common.sampling",
                          "common.results"},
    "common.run": {"common.config", "common.data", "common.models", "common.operators", "common.sampling",
                   "common.results", "common.evaluation"},
}
TOP = {"common", "common.errors", "common.registry", "common.random"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules imported at import time (not under ``if TYPE_CHECKING:``), as dotted names."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If, ast.Try,
                                   ast.With)):
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules} for name, path in modules.items()}


def test_no_import_circle(graph):
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert not circles


def concern(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "common" and len(parts) > 2 or module in ALLOWED else module


def test_library_layers(graph):
    wrong = []
    for module, targets in graph.items():
        if not module.startswith("common"):
            continue
        for target in targets:
            if not target.startswith("common."):
                wrong.append(f"{module} imports {target}")  # a sampler package or an application
                continue
            here, there = concern(module), concern(target)
            if here != there and there not in TOP and there not in ALLOWED.get(here, set()):
                wrong.append(f"{module} imports {target}")
    assert not wrong


def test_samplers_import_only_the_library(graph):
    wrong = [f"{m} imports {t}" for m, t_ in graph.items() if m.split(".")[0] in ("daps", "dps", "baselines")
             for t in t_ if t.split(".")[0] not in ("common", m.split(".")[0])]
    assert not wrong


def test_nothing_imports_the_entry_point():
    users = [str(p.relative_to(REPO)) for p in REPO.rglob("*.py") if ".git" not in p.parts
             and p.name != "posterior_sample.py" and "posterior_sample" in
             {m.split(".")[0] for m in imports(p)}]
    assert not users
    assert len((REPO / "posterior_sample.py").read_text().splitlines()) <= 80


def test_common_keeps_few_top_level_modules():
    assert len(list((REPO / "common").glob("*.py"))) <= 5
