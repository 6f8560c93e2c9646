"""The package's import graph: no circles, and imports flow one way between the packages of `LAYERS`, so each
module can be read, tested and moved without its dependants."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import kit

PACKAGE_DIR = Path(kit.__file__).parent

# What each part of the kit may import (besides itself). The pipeline knows nothing of Flask, LangChain or
# notebooks; the web app finds adapters through the one registry in kit.adapters; nothing imports the
# command line. A new package must be placed here before the test passes.
LAYERS: dict[str, set[str]] = {
    "kit": set(),  # the public names load lazily, by name
    "kit.errors": set(),
    "kit.pipeline": {"kit.errors"},
    "kit.model": {"kit.errors", "kit.pipeline"},
    "kit.adapters": {"kit.errors", "kit.pipeline", "kit.model"},
    "kit.web": {"kit.errors", "kit.pipeline", "kit.adapters"},
    "kit.testing": {"kit.errors", "kit.pipeline"},
    "kit.serving": {"kit.errors", "kit.pipeline", "kit.model", "kit.adapters", "kit.web", "kit.testing"},
    "kit.notebook": {"kit.errors", "kit.pipeline", "kit.model", "kit.web", "kit.serving"},
    "kit.__main__": {"kit.errors", "kit.web", "kit.serving"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(tree: ast.AST) -> Iterator[str]:
    """Every module imported anywhere in the file (lazy imports inside functions included, and modules named
    by a string such as the adapter registry's, which imports them by name), except under
    `if TYPE_CHECKING:`, which never runs."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # `from kit import app`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("kit."):
            yield node.value  # only a name of a kit module counts: import_graph keeps those
        pending.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the kit modules it imports."""
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {_module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "kit":  # the package names every public name's home, and loads each lazily on first use
            graph[name] = set()
            continue
        imported = set(_imported_names(ast.parse(path.read_text(), str(path))))
        graph[name] = {target for target in imported if target in modules and target not in (name, "kit")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm).

    >>> circles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "kit.adapters.graphs" in graph["kit.adapters.registry"]  # imported by name
    assert "kit.adapters" in graph["kit.web.blueprint"]
    assert "kit.adapters.ready_made" in graph["kit.serving.demo"]  # imported inside a function
    assert "kit.web.app" in graph["kit.serving.demo"]


def part_of(module: str) -> str:
    """The entry of `LAYERS` a module belongs to.

    >>> part_of("kit.pipeline.pump"), part_of("kit.errors"), part_of("kit")
    ('kit.pipeline', 'kit.errors', 'kit')
    """
    return ".".join(module.split(".")[:2])


def forbidden_imports(graph: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    """Every import that goes against `layers`, as "importer -> imported".

    >>> forbidden_imports({"kit.a.x": {"kit.b.y"}, "kit.b.y": {"kit.a.z"}}, {"kit.a": {"kit.b"}, "kit.b": set()})
    ['kit.b.y -> kit.a.z']
    """
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if part_of(target) != part_of(module) and part_of(target) not in layers.get(part_of(module), set())
    ]


def test_every_module_belongs_to_a_known_part() -> None:
    assert sorted({part_of(module) for module in import_graph()} - set(LAYERS)) == []


def test_imports_flow_one_way_between_the_parts() -> None:
    assert forbidden_imports(import_graph(), LAYERS) == []


def test_no_module_of_the_kit_imports_another_that_imports_it_back() -> None:
    assert circles(import_graph()) == []


def test_nothing_imports_the_command_line() -> None:
    importers = [name for name, targets in import_graph().items() if "kit.__main__" in targets]
    assert importers == []


def long_functions(limit: int = 60) -> list[str]:
    """Functions of the kit longer than `limit` lines (docstring included): each should be split by job."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{_module_name(path)}.{node.name}: {length} lines")
    return found


def test_no_function_is_over_60_lines() -> None:
    assert long_functions() == []
    assert long_functions(limit=5)  # the check does see functions
