"""The engines: a registry from name to engine, what each supports, and loading a module.

The contract every engine follows is in `base` (one small Protocol, so the pool and the CLI
never know which runtime is underneath); each engine lives in a module of its own, imported only
when it is asked for. Compiled modules are shared between threads; an `Instance` belongs to the
thread that created it for its whole life (a wasmtime Store must never be used by two threads at
once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from wasmstream.engines.base import (
    DEFAULT_MAX_MEMORY,
    MIN_MAX_OUTPUT,
    CompiledComponent,
    CompiledModule,
    ComponentEngine,
    DirGrant,
    Engine,
    Instance,
    Sandbox,
    check_header,
    is_component,
)
from wasmstream.errors import ModuleError, UsageError
from wasmstream.guest.abi import AbiOptions, GuestAbi, StateKind, resolve_abi

__all__ = [
    "DEFAULT_ENGINE",
    "DEFAULT_MAX_MEMORY",
    "ENGINE_NAMES",
    "MIN_MAX_OUTPUT",
    "CompiledComponent",
    "CompiledModule",
    "ComponentEngine",
    "DirGrant",
    "Engine",
    "Instance",
    "LoadedModule",
    "Sandbox",
    "get_engine",
    "is_component_file",
    "load_module",
    "load_wasm",
    "refuse_unsupported",
]


COMPONENTS = "running a WebAssembly component"
FEATURES = ("--fuel", "--dir", "WASI command mode", "--state memory", COMPONENTS)


@dataclass(frozen=True)
class Capabilities:
    """What an engine cannot do (of FEATURES), and why. What it cannot is refused by one rule
    (`refuse_unsupported`), before a run opens any file, not by each engine in its own words."""

    lacks: tuple[tuple[str, str], ...] = ()  # (feature, the reason, said with the refusal)

    def reason_against(self, feature: str) -> str | None:
        return next((why for lacked, why in self.lacks if lacked == feature), None)


ENGINES = {
    "wasmtime": Capabilities(),
    "wasmer": Capabilities(
        lacks=(
            ("--fuel", "wasmer 1.1 has no instruction counting"),
            ("--dir", "its WASI follows symlinks out of a granted directory"),
            ("WASI command mode", "its WASI cannot capture a program's stdout"),
            (
                "--state memory",
                "whole-instance capture is implemented for wasmtime only; a module exporting "
                "snapshot and restore keeps its state under either engine",
            ),
            (COMPONENTS, "wasmer 1.1 predates the component model"),
        )
    ),
}
ENGINE_NAMES = tuple(ENGINES)
DEFAULT_ENGINE = "wasmtime"


def refuse_unsupported(
    name: str, sandbox: Sandbox, abi: GuestAbi | None = None, component: bool = False
) -> None:
    """Raise UsageError if the run asks `name` for something it cannot do."""
    asked = {
        "--fuel": sandbox.fuel is not None,
        "--dir": bool(sandbox.dirs),
        "WASI command mode": abi is not None and abi.command,
        "--state memory": abi is not None and abi.state is StateKind.MEMORY,
        COMPONENTS: component,
    }
    for feature in FEATURES:
        why = ENGINES[name].reason_against(feature)
        if asked[feature] and why is not None:
            raise UsageError(
                f"{feature} is not supported by the {name} engine ({why}); use --engine "
                f"{DEFAULT_ENGINE}"
            )


def get_engine(
    name: str, sandbox: Sandbox | None = None, cache: bool = True, components: bool = False
) -> Engine:
    """The engine `name`; `cache`: keep compiled modules in the user's cache directory;
    `components`: one that runs components too. Refuses (UsageError) a sandbox the engine
    cannot enforce, and components where it cannot run them."""
    if name in ENGINES:
        refuse_unsupported(name, sandbox or Sandbox(), component=components)
    return _new_engine(name, sandbox, cache, components)


def _new_engine(name: str, sandbox: Sandbox | None, cache: bool, components: bool) -> Engine:
    if name == "wasmtime":
        from wasmstream.engines.cache import ModuleCache

        store = ModuleCache() if cache else None
        if components:  # wasmtime.component costs ~12 ms to import: only when it is used
            from wasmstream.engines.wasmtime_component import WasmtimeComponents

            return WasmtimeComponents(sandbox or Sandbox(), store)
        from wasmstream.engines.wasmtime_engine import WasmtimeEngine

        return WasmtimeEngine(sandbox or Sandbox(), store)
    if name == "wasmer":
        from wasmstream.engines.wasmer_engine import WasmerEngine

        return WasmerEngine(sandbox or Sandbox())
    raise UsageError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")


@dataclass(frozen=True)
class LoadedModule:
    """A module compiled and checked against the guest ABI, ready to instantiate."""

    engine: Engine
    compiled: CompiledModule
    abi: GuestAbi
    sha256: str


def read_module(path: str) -> bytes:
    try:
        with open(path, "rb") as module_file:
            return module_file.read()
    except OSError as error:
        raise ModuleError(f"cannot read module {path}: {error.strerror}") from None


def is_component_file(path: str) -> bool:
    """Whether the file at `path` is a component (False when it cannot be read: the run that
    loads it says why)."""
    try:
        with open(path, "rb") as module_file:
            return is_component(module_file.read(8))
    except OSError:
        return False


def load_module(
    path: str,
    abi_options: AbiOptions,
    engine_name: str = DEFAULT_ENGINE,
    sandbox: Sandbox | None = None,
    cache: bool = True,
) -> LoadedModule:
    """Read, compile and check the module at `path`. Raises ModuleError (or UsageError for an
    unknown engine); the caller closes `engine` when done."""
    return load_wasm(read_module(path), path, abi_options, engine_name, sandbox, cache)


def load_wasm(
    wasm: bytes,
    path: str,
    abi_options: AbiOptions,
    engine_name: str = DEFAULT_ENGINE,
    sandbox: Sandbox | None = None,
    cache: bool = True,
) -> LoadedModule:
    """`load_module` for a module's bytes (named `path` in errors)."""
    # Here, not at the top: the wasmer engine's worker processes import this package (the
    # module they run lives in it) and never hash anything; hashlib loads OpenSSL, 2 ms.
    import hashlib

    if is_component(wasm):
        return _load_component(wasm, path, abi_options, engine_name, sandbox, cache)
    capture, instrumented = None, wasm
    if abi_options.state == "memory" and not abi_options.wasi_command:
        from wasmstream.guest.memory_state import instrument

        check_header(wasm, path)
        # Capture needs every mutable global exported: done to the binary, before compiling.
        instrumented, capture = instrument(wasm, path)
    engine = get_engine(engine_name, sandbox, cache)
    try:
        compiled = engine.compile(instrumented, path)
        abi = resolve_abi(compiled.info, abi_options, path)
        if capture is not None:
            abi = dataclasses.replace(abi, state_globals=capture.globals)
        refuse_unsupported(engine_name, sandbox or Sandbox(), abi)
    except BaseException:
        engine.close()
        raise
    return LoadedModule(engine, compiled, abi, hashlib.sha256(wasm).hexdigest())


def _load_component(
    wasm: bytes,
    path: str,
    abi_options: AbiOptions,
    engine_name: str,
    sandbox: Sandbox | None,
    cache: bool,
) -> LoadedModule:
    """`load_wasm` for a component: compiled, its types checked against the contract and its
    imports linked once, all before any data is read."""
    import hashlib

    from wasmstream.guest.component_abi import resolve_component

    engine = get_engine(engine_name, sandbox, cache, components=True)
    try:
        if not isinstance(engine, ComponentEngine):  # pragma: no cover - refused above
            raise UsageError(f"the {engine_name} engine cannot run components")
        compiled = engine.compile_component(wasm, path)
        abi = resolve_component(compiled.component_info, abi_options, path)
        compiled.check_linkable()
    except BaseException:
        engine.close()
        raise
    return LoadedModule(engine, compiled, abi, hashlib.sha256(wasm).hexdigest())
