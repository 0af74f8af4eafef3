"""The engine interface: compile a module once, start instances of it, run frames through them.

One small Protocol, so the pool and the CLI never know which runtime is underneath. Compiled
modules are shared between threads; an `Instance` belongs to the thread that created it for its
whole life (a wasmtime Store must never be used by two threads at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from ..abi import GuestAbi, ModuleInfo
from ..errors import UsageError

T = TypeVar("T")

ENGINE_NAMES = ("wasmtime",)
DEFAULT_ENGINE = "wasmtime"


class Instance(Protocol):
    """A running instance of a module, with its input buffer already allocated."""

    def input_buffer(self) -> memoryview:
        """The guest's input buffer (frame-size bytes), valid until the next guest call.

        Reading a frame straight into it saves a copy (see `transform_buffer`).
        """
        ...

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        """Run the transform on the first `length` bytes of the input buffer.

        Returns `consume(output)`, where `output` is a view into guest memory valid only inside
        `consume`: a packed output is freed right after it returns. Raises GuestError on a trap
        or a bad result.
        """
        ...

    def transform(self, data: memoryview, consume: Callable[[memoryview], T]) -> T:
        """Copy `data` into the input buffer, then `transform_buffer`."""
        ...

    def close(self) -> None: ...


class CompiledModule(Protocol):
    info: ModuleInfo

    def instantiate(self, abi: GuestAbi, buffer_size: int, config: bytes) -> Instance:
        """A fresh instance, initialised (reactor, input buffer, init function).

        Raises StartupError when the guest fails while starting, ModuleError when it cannot be
        linked.
        """
        ...


class Engine(Protocol):
    name: str

    def version(self) -> str: ...

    def compile(self, wasm: bytes, source: str) -> CompiledModule:
        """Compile `wasm` (read from `source`, named in errors). Raises ModuleError."""
        ...


def get_engine(name: str) -> Engine:
    if name == "wasmtime":
        from .wasmtime_engine import WasmtimeEngine

        return WasmtimeEngine()
    raise UsageError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")
