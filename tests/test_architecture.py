"""The house's rules (docs/ARCHITECTURE.md), checked on the code itself: imports flow one way with no circle,
modules and functions stay short, no module outside `study/tasks/` names a task, and the architecture page
names every module that exists and no module that does not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from study.tasks import registry

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "study"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

# Layers, lowest first: a module may import its own package and the layers below it, never one above.
LAYER = {
    "tasks": 0, "pretext": 0, "stats": 0, "spec": 1, "io": 2, "data": 3, "train": 4, "trainables": 5, "search_spaces": 5,
    "analysis": 5, "verdicts": 5, "looks": 5, "report": 6, "run": 7, "cli": 8, "__init__": 0,
}  # fmt: skip
# Packages whose import pulls in TensorFlow or Ray: the only study imports allowed inside a function.
HEAVY = ("study.train", "study.run.runner")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 700, 100


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(STUDY.rglob("*.py"))
    }


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imported(module: str, path: Path, node: ast.AST) -> set[str]:
    """The study modules an import statement names (a `from package import module` names the module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        # `from package import module` imports the module and first runs the package's __init__: both count.
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
        return set()
    return {n for n in names if n in MODULES and n != module and not module.startswith(n + ".") and n != "study"}


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Module-level import graph, and every import of a study module inside a function (module, line, target)."""
    graph, inner = {m: set() for m in MODULES}, []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            for target in _imported(module, path, node):
                if id(node) in top:
                    graph[module].add(target)
                elif not any(other.startswith(target + ".") for other in _imported(module, path, node)):
                    inner.append((module, node.lineno, target))  # the module imported, not its package
    return graph, inner


GRAPH, INNER = _imports()


def test_every_module_has_a_layer():
    assert {_layer(m) for m in MODULES} <= set(LAYER)


def test_no_import_runs_up_a_layer():
    upward = [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if _layer(m) != _layer(t) and LAYER[_layer(t)] > LAYER[_layer(m)]
    ]
    assert not upward


def test_no_import_circle():
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(GRAPH[u]):
            if state.get(v) == 1:
                circles.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for module in MODULES:
        if module not in state:
            visit(module)
    assert not circles


def test_imports_inside_functions_only_for_tensorflow_or_ray():
    assert [f"{m}:{line} -> {t}" for m, line, t in INNER if not t.startswith(HEAVY)] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_are_short(module):
    text = MODULES[module].read_text()
    assert text.count("\n") <= MAX_MODULE_LINES
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and node.name != "build_parser"
    ]
    assert not long


def test_no_module_outside_tasks_names_a_task():
    # A head kind may share its task's name ("rotation4"): heads are the registry's vocabulary for models.
    names = set(registry.TASKS) - {task.head for task in registry.TASKS.values()}
    named = [
        f"{m}:{node.lineno} {node.value!r}"
        for m, path in MODULES.items()
        if _layer(m) != "tasks"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert not named


def _named_paths(doc: str) -> set[str]:
    """Module paths in backticks on the architecture page, relative to study/ (`spec/config.py`), with a
    table row's shorthand (`labels_table.py` after `data/labels_csv.py`) read in its row's package."""
    paths = set()
    for line in doc.splitlines():
        package = None
        for token in re.findall(r"`((?:study/)?[\w/*]+\.py)`", line):
            if token.startswith("tests/"):
                continue
            token = token.removeprefix("study/")
            if "/" in token:
                package = token.split("/")[0]
            elif package and line.startswith("|"):
                token = f"{package}/{token}"
            paths.add(token)
    return paths


def test_architecture_page_names_every_module_and_only_modules_that_exist():
    named = _named_paths(ARCHITECTURE.read_text())
    missing = sorted(p for p in named if not list(STUDY.glob(p)))
    assert not missing, f"named on the page but not in study/: {missing}"
    covered = {f for p in named for f in STUDY.glob(p)}
    unnamed = sorted(
        str(p.relative_to(STUDY)) for p in MODULES.values() if p.name != "__init__.py" and p not in covered
    )
    assert not unnamed, f"modules the page does not name: {unnamed}"
