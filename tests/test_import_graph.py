"""The import graph of hirviz and train has no cycles, local (function-level) imports included.

A cycle hidden by a local import still couples two modules both ways; only imports under ``if TYPE_CHECKING:``
(type hints) are left out. The graph is read from the source, so the test costs no module imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("hirviz", "train"):
        for path in sorted((REPO / package).rglob("*.py")):
            out[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hints = {id(node) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                 for node in ast.walk(block)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in hints:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            # A package and its own submodules import each other by design (re-exports).
            deps |= {t for t in targets if t in modules and t != name
                     and not (t.startswith(name + ".") or name.startswith(t + "."))}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                found.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module)
    return found


def test_the_graph_reader_sees_a_cycle_hidden_by_a_local_import():
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_hirviz_or_train_is_part_of_an_import_cycle():
    graph = _graph()
    assert {"train.loop", "train.export", "train.rundir", "train.evaluate.cli"} <= set(graph)
    assert "train.rundir" in graph["train.export"]  # the reader does see real imports
    assert _cycles(graph) == []
