"""The engine contract: what every engine offers, and the sandbox it enforces.

A leaf of the package (it imports nothing of wasmstream's but plain data), so that the engines
and the code driving them import the contract without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from wasmstream.errors import ModuleError
from wasmstream.guest.abi import GuestAbi, ModuleInfo

if TYPE_CHECKING:  # the component contract loads only for a component
    from wasmstream.guest.component_abi import ComponentInfo

WASM_MAGIC = b"\0asm"
# The preamble: magic, a 16-bit version, a 16-bit layer (0: core module, 1: component).
COMPONENT_LAYER = b"\x01\x00"


def is_component(wasm: bytes) -> bool:
    """Whether `wasm` is a component rather than a core module, by its preamble's layer."""
    return wasm.startswith(WASM_MAGIC) and wasm[6:8] == COMPONENT_LAYER


def check_header(wasm: bytes, source: str) -> None:
    """Refuse what is not WebAssembly at all before an engine tries to compile it."""
    if not wasm.startswith(WASM_MAGIC):
        raise ModuleError(f"{source}: not a WebAssembly binary (no \\0asm header)")


T = TypeVar("T")

DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB of linear memory per instance
MIN_MAX_OUTPUT = 64 << 20  # the default --max-output is the larger of this and 4 frames


@dataclass(frozen=True)
class DirGrant:
    host: str
    guest: str
    writable: bool = False


@dataclass(frozen=True)
class Sandbox:
    """What a guest may use: limits per frame and per instance; WASI grants (none by default)."""

    timeout: float | None = None  # seconds of wall-clock time per frame
    fuel: int | None = None  # instructions (roughly) per frame
    max_memory: int | None = DEFAULT_MAX_MEMORY  # bytes of linear memory per instance
    max_output: int | None = None  # bytes of output per frame; None: the default for the frame size
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[DirGrant, ...] = ()
    args: tuple[str, ...] = ()  # a WASI program's arguments after argv[0] (its module's name)

    def output_limit(self, frame_size: int) -> int:
        return (
            self.max_output if self.max_output is not None else max(MIN_MAX_OUTPUT, 4 * frame_size)
        )


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
        `consume`: a packed output is freed right after it returns. Raises GuestError (or a
        subclass naming the limit hit) on a trap or a bad result.
        """
        ...

    def transform(self, data: memoryview, consume: Callable[[memoryview], T]) -> T:
        """Copy `data` into the input buffer, then `transform_buffer`."""
        ...

    def snapshot(self) -> bytes | None:
        """The guest's state as `abi.state` says to save it; None when it keeps none.
        Raises GuestError."""
        ...

    def restore(self, state: bytes) -> None:
        """Put back a state `snapshot` returned (on a fresh instance). Raises StateRefused
        when the module refuses it, GuestError when it fails."""
        ...

    def finish(self) -> bytes:
        """Call the finish function (`abi.finish`) once, after the last frame: its output."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Pipelined(Instance, Protocol):
    """An instance that runs frames elsewhere (another process) while its caller goes on:
    frames are submitted into a ring of `depth` input slots and collected, in order, later.
    `input_buffer` is the slot the next frame goes to; at most `depth` frames are in flight."""

    depth: int

    def submit(self, length: int) -> None:
        """Start the transform on the first `length` bytes of `input_buffer()`."""
        ...

    def collect(self, consume: Callable[[memoryview], T]) -> T:
        """`consume(output)` for the oldest frame submitted, once it is done. Raises GuestError
        (or a subclass) when that frame failed: the frames after it are lost with the
        instance, which the caller closes (and submits them again to a fresh one)."""
        ...


class CopyingInstance:
    """An `Instance` whose `transform` copies the frame into the input buffer, then runs
    `transform_buffer`: every engine's instance, written once."""

    def input_buffer(self) -> memoryview:
        raise NotImplementedError

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        raise NotImplementedError

    def transform(self, data: memoryview, consume: Callable[[memoryview], T]) -> T:
        self.input_buffer()[: len(data)] = data
        return self.transform_buffer(len(data), consume)

    def snapshot(self) -> bytes | None:
        return None  # an instance without state (a WASI command's is fresh for every frame)

    def restore(self, state: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class CompiledModule(Protocol):
    info: ModuleInfo

    def instantiate(self, abi: GuestAbi, buffer_size: int, config: bytes) -> Instance:
        """A fresh instance, initialised (reactor, input buffer, init function).

        Raises StartupError when the guest fails while starting, ModuleError when it cannot be
        linked.
        """
        ...


class CompiledComponent(CompiledModule, Protocol):
    """A compiled component: `info` is empty (a component has no core exports of its own to
    show); `component_info` is what it imports and exports, with WIT types."""

    component_info: ComponentInfo

    def check_linkable(self) -> None:
        """Raise ModuleError if an import cannot be satisfied (a WASI interface the engine does
        not provide): asked once, before any data is read."""
        ...


class Engine(Protocol):
    name: str

    def version(self) -> str: ...

    def compile(self, wasm: bytes, source: str) -> CompiledModule:
        """Compile `wasm` (read from `source`, named in errors). Raises ModuleError."""
        ...

    def close(self) -> None:
        """Stop helper threads (the epoch ticker)."""
        ...


@runtime_checkable
class ComponentEngine(Engine, Protocol):
    """An engine that also runs components (the registry refuses them for the others)."""

    def compile_component(self, wasm: bytes, source: str) -> CompiledComponent:
        """Compile the component `wasm`. Raises ModuleError."""
        ...
