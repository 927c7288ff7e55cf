"""The house rules of the code, read from the source itself (docs/ARCHITECTURE.md):

- no import cycles anywhere, counting imports inside functions too (a lazy import is
  still a dependency);
- the direction bridge -> models <- training: models imports neither, bridge never
  imports training or torch;
- nothing on the serving path imports the benchmarks;
- the tree docs/ARCHITECTURE.md draws is the tree on disk.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bridge": "backline.bridge", "models": "backline.models", "training": "backline.training"}
# `backline serve`'s modules and what they import: a benchmark must never be among them.
SERVING = ("backline.bridge.serve", "backline.bridge.osc", "backline.bridge.clip", "backline.bridge.serving",
           "backline.bridge.midi", "backline.bridge.live")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports (ours resolved to their module, others by their top
    package), wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("backline."):
                found.add(target.split(".")[0])
                continue
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for other in graph.get(node, ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_models_import_neither_bridge_nor_training(graph):
    for name, deps in graph.items():
        if name.startswith("backline.models"):
            assert not {d for d in deps if d.startswith(("backline.bridge", "backline.training"))}, name


def test_the_bridge_never_imports_training_or_torch(graph):
    for name in graph:
        if name.startswith("backline.bridge"):
            # bench.suite's training part and the PyTorch comparison import torch where they
            # run, and `train` / `export` / `evaluate` reach training through cli's lazy
            # import: those are the only doors, checked by name below.
            deps = graph[name]
            if name in ("backline.bridge.bench.suite", "backline.bridge.bench.inference", "backline.bridge.cli"):
                continue
            assert "torch" not in deps and not {d for d in deps if d.startswith("backline.training")}, name


def test_nothing_on_the_serving_path_reaches_the_benchmarks(graph):
    for name in graph:
        if name.startswith(SERVING):
            reached = reachable(graph, name)
            assert not {d for d in reached if d.startswith("backline.bridge.bench")}, name
            assert "torch" not in reached and not {d for d in reached if d.startswith("backline.training")}, name


def test_the_architecture_page_draws_the_tree_on_disk():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = page.split("```text\n", 1)[1].split("```", 1)[0]
    drawn, folders = set(), []  # folders: (indent, name) of the folders open above this line
    for line in block.splitlines()[1:]:  # under "bridge/"
        match = re.match(r"( *)([\w/]+?\.(?:py|lua)|\w+/)(\s|$)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        folders = [(i, f) for i, f in folders if i < indent]
        if name.endswith("/"):
            folders.append((indent, name))
        else:
            drawn.add("".join(f for _, f in folders) + name)
    on_disk = {str(p.relative_to(ROOT / "bridge")) for p in (ROOT / "bridge").rglob("*")
               if p.suffix in (".py", ".lua") and p.name != "__init__.py" and "__pycache__" not in p.parts}
    assert drawn == on_disk, (sorted(drawn - on_disk), sorted(on_disk - drawn))
