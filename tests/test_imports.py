"""Dependencies point down: no import cycle in the package, function-level imports included.

Walks every `import` statement of every module (at any depth: inside functions and under
TYPE_CHECKING too, since a lazy import is still a dependency) and fails on a cycle, naming it.
Also: what a plain run and a wasmer worker load at start-up, so that a lazy import stays lazy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import fixture

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
    assert (
        "wasmstream.checkpoint.resume" in edges["wasmstream.run.skeleton"]
    )  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_run_option_is_recorded_in_checkpoints_or_deliberately_not() -> None:
    """A new option must say how a checkpoint keeps it (recorded.RECORDED) or why it does not
    (recorded.NOT_RECORDED): otherwise `wasmstream resume` would silently run without it."""
    from wasmstream.checkpoint.record import Command, OutputOptions
    from wasmstream.checkpoint.recorded_options import RECORDED, unrecorded_options

    assert unrecorded_options() == set()
    sections = set(OutputOptions.__struct_fields__) | set(Command.__struct_fields__)
    assert sections - {"config_sha256"} == set(RECORDED)


# Loaded only by the runs that use them; each would cost every other run's start-up (ms as
# measured under -X importtime with cached bytecode).
NOT_AT_START = {
    "wasmstream.checkpoint.state_files": "--state memory and checkpointed state (tempfile, shutil, random: 4 ms)",
    "wasmstream.checkpoint.record": "checkpoints (msgspec)",
    "wasmstream.checkpoint.journal": "checkpoints",
    "wasmstream.checkpoint.resume": "checkpoints",
    "wasmstream.checkpoint.recorded_options": "checkpoints",
    "wasmstream.cli.progress": "--progress and --stats",
    "wasmstream.run.cluster": "--cluster and the library's `run` (asyncio: 20 ms)",
    "wasmstream.transform": "the library's `Transform`",
    "wasmstream.guest.memory_state": "--state memory",
    "wasmstream.cli.reports": "inspect and checkpoint show",
    "msgspec": "checkpoints",
    "rich": "--progress",
    "json": "dead letters, drop logs and --json reports (2 ms)",
    "base64": "dead letters",
    "tempfile": "cache writes and state files",
    "shlex": "the message of an interrupted checkpointed run",
    "traceback": "WASMSTREAM_DEBUG's trace of an internal error (1 ms)",
    "importlib.metadata": "--version (20 ms)",
    "asyncio": "--cluster",
    "wasmstream.guest.component_abi": "components (the contract's dataclasses: 4 ms)",
    "wasmstream.engines.wasmtime_component": "components",
    "wasmtime.component": "components (12 ms)",
}

# A plain run (INPUT to stdout, as bench row B7 runs it), in one process: the modules it loaded,
# less those click and the engine load by themselves (not the package's to avoid), written to
# LISTING. main() ends in os._exit, where the list is taken.
PLAIN_RUN = """
import os, sys
import click, wasmtime
before = set(sys.modules)
from wasmstream import cli
exit_now = os._exit

def listing(status):
    with open(sys.argv[3], "w") as listing:
        listing.write(" ".join(sorted(set(sys.modules) - before)))
    exit_now(status)

os._exit = listing
cli.main(["run", "--engine", "wasmtime", sys.argv[1], sys.argv[2]])
"""


def test_a_plain_run_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"hello\n")
    listing = tmp_path / "modules"
    args = [sys.executable, "-c", PLAIN_RUN, fixture("upper.wasm"), str(tmp_path / "in")]
    for _ in range(2):  # the second run as most are: the module compiled, in the cache
        run = subprocess.run([*args, str(listing)], capture_output=True, check=False)
        assert (run.returncode, run.stdout, run.stderr) == (0, b"HELLO\n", b"")
    loaded = set(listing.read_text().split())
    assert "wasmstream.engines.wasmtime_engine" in loaded  # the listing is of a real run
    eager = {name: why for name, why in NOT_AT_START.items() if name in loaded}
    assert not eager, f"a plain run imported what only these need: {eager}"


def test_a_wasmer_worker_loads_only_what_it_uses() -> None:
    """Each wasmer instance is a process of its own: it needs the ABI, errors and the guest
    protocol, not a run's options, the engine registry's hashing, or state files."""
    code = "import sys, wasmstream.engines.wasmer_worker; print(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "wasmstream.guest.protocol" in loaded
    unused = {"wasmstream.run.options", "wasmstream.stream.framing", "hashlib", *NOT_AT_START} - {
        "json"
    }
    assert not unused & loaded, f"the worker imported {unused & loaded}"
