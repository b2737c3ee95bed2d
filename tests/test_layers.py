"""Layers without cycles (#20): the import graph of gpt2hub/ and converters/, read from the source with `ast`,
imports inside functions counted, has no cycle; and the formats never import verification.

How an import becomes an edge, as Python runs it: `from P import N` imports the module P.N where N is one of
the package's modules, else the module P (whose attribute N is). A module's parent packages are not edges:
Python initializes them first whatever the module imports. Imports under `if TYPE_CHECKING:` are not edges:
they never run, they name types for annotations. Imports by name at run time (importlib; the format registry
discovering converters/) are not seen. gpt2hub/testing is left out: fixtures for tests, which import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"gpt2hub": ROOT / "gpt2hub", "gpt2hub.converters": ROOT / "converters"}  # converters/ installs as gpt2hub.converters
LEFT_OUT = "gpt2hub.testing"
# Modules whose imports inside functions are deferred on purpose, and why; their top-level imports still count.
LAZY_WRAPPERS = {
    # The public API (gpt2hub.pull, convert, verify, ...): each function imports the module that does the work when
    # it is called, so `import gpt2hub` stays light. Those modules, and the CLI and demo that call the API, may then
    # use the API without a cycle at import time: by the time a function runs, every module is loaded.
    "gpt2hub": "the public API's functions import their implementation on first call",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            name = ".".join((package, *path.relative_to(folder).with_suffix("").parts)).removesuffix(".__init__")
            if name != LEFT_OUT and not name.startswith(LEFT_OUT + "."):
                found[name] = path
    return found


def _type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path], type_checking: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each import of one of `modules` by the module `name`; with
    `type_checking`, those under `if TYPE_CHECKING:` too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def target(module: str) -> str:
        return "gpt2hub." + module if module.split(".")[0] == "converters" else module  # tests may say converters.x

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child) and not type_checking:
                for other in child.orelse:
                    visit(other, deferred)
                continue
            inside = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((target(a.name), child.lineno, inside) for a in child.names if target(a.name) in modules)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    base = target(child.module or "")
                for alias in child.names:
                    module = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if module in modules:
                        found.append((module, child.lineno, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return found


def _graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: the line of the first such import}, lazy wrappers' deferred imports left out."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for module, line, deferred in _imports(name, path, modules):
            if module != name and not (deferred and name in LAZY_WRAPPERS):
                edges.setdefault(module, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def _relative(module: str) -> str:
    path = _modules()[module]
    return path.relative_to(ROOT).as_posix()


def test_the_graph_covers_both_packages():
    graph = _graph()
    assert {"gpt2hub", "gpt2hub.converters", "gpt2hub.converters.gguf", "gpt2hub.verification.weights"} <= set(graph)
    assert "gpt2hub.store" in graph["gpt2hub"] and "gpt2hub.converters" in graph["gpt2hub.store"]


def test_no_import_cycle():
    graph = _graph()
    cycles = [[f"{_relative(m)}:{graph[m][n]} imports {n}" for m in cycle for n in graph[m] if n in cycle]
              for cycle in _cycles(graph)]
    assert cycles == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_formats_never_import_verification():
    """converters/ sits below verify: the read-back types it builds live in gpt2hub/stored.py. Every import counts
    here, TYPE_CHECKING ones and those inside functions too."""
    modules = _modules()
    formats = {name: path for name, path in modules.items() if name.split(".")[:2] == ["gpt2hub", "converters"]}
    assert len(formats) > 5
    offending = [f"{_relative(name)}:{line} imports {module}" for name, path in formats.items()
                 for module, line, _ in _imports(name, path, modules, type_checking=True)
                 if module.split(".")[:2] == ["gpt2hub", "verification"]]
    assert offending == []
