"""The guest protocol, driven once for every engine: how an instance starts and runs a frame.

An engine supplies a `Runtime` (a way to call an export, and a view of linear memory) and this
module does the rest, in one order for all of them:

- starting: the reactor initialiser `_initialize`, then the input buffer from the allocator,
  then the init function with the `--config` bytes (a negative status refuses to start);
- each frame: the transform on the input buffer, its result read by `abi.output_range`
  (negative, in place, packed, inside memory, within `--max-output`), the output handed on,
  and for a packed result the deallocator — with the output copied out first, so that a frame
  whose deallocator traps has failed and leaves nothing behind.

A third engine implements `Runtime` and gets all of this as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from .abi import REACTOR_INIT, GuestAbi, output_range
from .errors import GuestError, StartupError

T = TypeVar("T")
Call = Callable[..., "int | None"]


class Runtime(Protocol):
    """What the guest protocol needs of an engine's instance."""

    def export(self, name: str) -> Call:
        """A callable for the function export `name` (its signature already checked by
        `resolve_abi`); a call that fails raises a GuestError subclass naming the cause."""
        ...

    def memory(self) -> memoryview:
        """All of guest memory, valid until the next call (a call may grow and move it)."""
        ...


class Guest:
    """One started instance, following the ABI decided for the module."""

    def __init__(
        self, runtime: Runtime, abi: GuestAbi, buffer_size: int, config: bytes, max_output: int
    ) -> None:
        self._runtime = runtime
        self._abi = abi
        self.buffer_size = buffer_size
        self._max_output = max_output
        self._transform = runtime.export(abi.transform)
        self._dealloc = runtime.export(abi.dealloc) if abi.dealloc else None
        self._dealloc_takes_length = abi.dealloc_takes_length
        self.input_ptr = self._start(config)

    def _start(self, config: bytes) -> int:
        """Reactor initialiser, then the input buffer, then the init function, in that order.
        Returns where the input buffer is."""
        abi = self._abi
        if abi.reactor:
            self._during_startup(REACTOR_INIT)
        input_ptr = self._allocate(self.buffer_size, "the input buffer")
        if abi.init is None:
            return input_ptr
        config_ptr = self._allocate(len(config), "the config") if config else 0
        self._slice(config_ptr, len(config), "config buffer")[:] = config
        status = self._during_startup(abi.init, config_ptr, len(config))
        if abi.init_returns_status and status is not None and status < 0:
            raise StartupError(f"init function {abi.init} returned error code {status}")
        return input_ptr

    def _during_startup(self, name: str, *args: int) -> int | None:
        try:
            return self._runtime.export(name)(*args)
        except GuestError as error:
            raise StartupError(f"{name}: {error.what}") from None

    def _allocate(self, size: int, purpose: str) -> int:
        alloc = self._abi.alloc
        ptr = self._during_startup(alloc, size)
        assert ptr is not None
        ptr &= 0xFFFFFFFF  # i32 results are signed; addresses are not
        try:
            self._slice(ptr, size, f"{purpose} from {alloc}({size})")
        except GuestError as error:
            raise StartupError(error.what) from None
        return ptr

    def _slice(self, ptr: int, length: int, what: str) -> memoryview:
        memory = self._runtime.memory()
        if ptr + length > len(memory):
            raise GuestError(
                f"{what} {ptr:#x}..{ptr + length:#x} ({length} bytes) is outside guest memory "
                f"({len(memory)} bytes)"
            )
        return memory[ptr : ptr + length]

    def input_buffer(self) -> memoryview:
        """The guest's input buffer, valid until the next call."""
        return self._runtime.memory()[self.input_ptr : self.input_ptr + self.buffer_size]

    def transform(
        self, length: int, consume: Callable[[memoryview], T], *, consume_is_final: bool = True
    ) -> T:
        """Run the transform on the first `length` bytes of the input buffer; return
        `consume(output)`. `output` is valid only inside `consume`.

        `consume_is_final`: consume's effect cannot be taken back (it writes the output): a
        packed output is then copied out before the deallocator runs, and consumed only if the
        deallocator succeeds. A caller whose consume only stages the output (the wasmer worker,
        which reports failure instead) passes False and saves the copy.
        """
        result = self._transform(self.input_ptr, length)
        assert result is not None
        memory = self._runtime.memory()  # the call may have grown (and moved) memory
        start, size = output_range(
            result,
            self._abi.result,
            self.input_ptr,
            self.buffer_size,
            len(memory),
            self._max_output,
        )
        if self._dealloc is None:  # in place, or nothing to free: hand on the guest's bytes
            return consume(memory[start : start + size])
        if consume_is_final:
            output = memoryview(bytes(memory[start : start + size]))
            self._free(start, size)
            return consume(output)
        consumed = consume(memory[start : start + size])
        self._free(start, size)
        return consumed

    def _free(self, start: int, size: int) -> None:
        assert self._dealloc is not None
        if self._dealloc_takes_length:
            self._dealloc(start, size)
        else:
            self._dealloc(start)
