"""The engines: a registry from name to engine, what each supports, and loading a module.

The contract every engine follows is in `base` (one small Protocol, so the pool and the CLI
never know which runtime is underneath); each engine lives in a module of its own, imported only
when it is asked for. Compiled modules are shared between threads; an `Instance` belongs to the
thread that created it for its whole life (a wasmtime Store must never be used by two threads at
once).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..abi import AbiOptions, GuestAbi, resolve_abi
from ..errors import ModuleError, UsageError
from .base import (
    DEFAULT_MAX_MEMORY,
    MIN_MAX_OUTPUT,
    CompiledModule,
    DirGrant,
    Engine,
    Instance,
    Sandbox,
)

__all__ = [
    "DEFAULT_ENGINE",
    "DEFAULT_MAX_MEMORY",
    "ENGINE_NAMES",
    "MIN_MAX_OUTPUT",
    "CompiledModule",
    "DirGrant",
    "Engine",
    "Instance",
    "LoadedModule",
    "Sandbox",
    "get_engine",
    "load_module",
]

ENGINE_NAMES = ("wasmtime", "wasmer")
DEFAULT_ENGINE = "wasmtime"


def get_engine(name: str, sandbox: Sandbox | None = None, cache: bool = True) -> Engine:
    """The engine `name`; `cache`: keep compiled modules in the user's cache directory."""
    if name == "wasmtime":
        from ..cache import ModuleCache
        from .wasmtime_engine import WasmtimeEngine

        return WasmtimeEngine(sandbox or Sandbox(), ModuleCache() if cache else None)
    if name == "wasmer":
        from .wasmer_engine import WasmerEngine

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


def load_module(
    path: str,
    abi_options: AbiOptions,
    engine_name: str = DEFAULT_ENGINE,
    sandbox: Sandbox | None = None,
    cache: bool = True,
) -> LoadedModule:
    """Read, compile and check the module at `path`. Raises ModuleError (or UsageError for an
    unknown engine); the caller closes `engine` when done."""
    wasm = read_module(path)
    engine = get_engine(engine_name, sandbox, cache)
    try:
        compiled = engine.compile(wasm, path)
        abi = resolve_abi(compiled.info, abi_options, path)
    except BaseException:
        engine.close()
        raise
    return LoadedModule(engine, compiled, abi, hashlib.sha256(wasm).hexdigest())
