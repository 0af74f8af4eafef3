"""Dependencies point down: no import cycle in the package, function-level imports included.

Walks every `import` statement of every module (at any depth: inside functions and under
TYPE_CHECKING too, since a lazy import is still a dependency) and fails on a cycle, naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wasmstream"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports. `from . import x` depends on the module x,
    not on the package (a package's own __init__ is imported first in any case)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found |= submodules or ({target} & modules)
    return found - {name}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(edges.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(edges):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_sees_function_level_imports_and_cycles() -> None:
    """The checker itself: a lazy import is an edge, and a cycle through one is found."""
    edges = graph()
    assert "wasmstream.resume" in edges["wasmstream.core"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_run_option_is_recorded_in_checkpoints_or_deliberately_not() -> None:
    """A new option must say how a checkpoint keeps it (recorded.RECORDED) or why it does not
    (recorded.NOT_RECORDED): otherwise `wasmstream resume` would silently run without it."""
    from wasmstream.checkpoint import Command, OutputOptions
    from wasmstream.recorded import RECORDED, unrecorded_options

    assert unrecorded_options() == set()
    sections = set(OutputOptions.__struct_fields__) | set(Command.__struct_fields__)
    assert sections - {"config_sha256"} == set(RECORDED)
