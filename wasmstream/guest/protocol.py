"""The guest protocol, driven once for every engine: how an instance starts and runs a frame.

An engine supplies a `Runtime` (a way to call an export, and a view of linear memory) and this
module does the rest, in one order for all of them:

- starting: the reactor initialiser `_initialize`, then the input buffer from the allocator,
  then the init function with the `--config` bytes (a negative status refuses to start);
- each frame: the transform on the input buffer, its result read by `abi.output_range`
  (negative, in place, packed, inside memory, within `--max-output`), the output handed on,
  and for a packed result the deallocator — with the output copied out first, so that a frame
  whose deallocator traps has failed and leaves nothing behind;
- state (`abi.StateKind`): `snapshot` and `restore` through the module's own exports, or an
  image of the whole instance (memory and mutable globals) for `--state memory`; and the
  `finish` call after the last frame, whose packed result is read like a transform's.

A third engine implements `Runtime` and gets all of this as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from wasmstream.errors import GuestError, StartupError, StateRefused
from wasmstream.guest.abi import (
    REACTOR_INIT,
    RESTORE,
    SNAPSHOT,
    WASM_PAGE,
    GuestAbi,
    ResultKind,
    StateKind,
    error_code_message,
    output_range,
)

T = TypeVar("T")
MAX_REASON = 1000  # bytes of a guest's failure reason kept: one line of an error, not a log
Call = Callable[..., "int | None"]


class Runtime(Protocol):
    """What the guest protocol needs of an engine's instance."""

    def export(self, name: str) -> Call:
        """A callable for the function export `name` (its signature already checked by
        `resolve_abi`); a call that fails raises a GuestError subclass naming the cause."""
        ...

    def memory(self) -> memoryview:
        """All of guest memory, valid until the next call or `grow_memory` (either may grow
        and move it); every runtime looks it up again after both."""
        ...


@runtime_checkable
class WholeInstance(Runtime, Protocol):
    """A runtime whose whole instance can be captured (`--state memory`): the mutable globals,
    exported under reserved names by `instrument`, and growing linear memory."""

    def global_value(self, name: str) -> int | float: ...

    def set_global(self, name: str, value: int | float) -> None: ...

    def grow_memory(self, pages: int) -> None:
        """Grow linear memory by `pages`; views `memory()` returned before are stale."""
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
        self._range_dealloc = runtime.export(abi.range_dealloc) if abi.range_dealloc else None
        if abi.state is StateKind.MEMORY and not isinstance(runtime, WholeInstance):
            raise GuestError("this engine cannot capture a whole instance (--state memory)")
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
        ptr = self._during_startup(alloc, size) if size else 0
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
        if result < 0 and self._abi.error_message:
            raise GuestError(self._failure(result, self._abi.error_message))
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

    def _failure(self, result: int, name: str) -> str:
        """Why the transform failed, in the guest's words (its `name` export), on one line;
        the error code alone when it gives none or cannot say."""
        try:
            packed = self._runtime.export(name)()
            assert packed is not None
            memory = self._runtime.memory()
            start, size = output_range(packed, ResultKind.PACKED, 0, 0, len(memory), 1 << 20, name)
            reason = bytes(memory[start : start + min(size, MAX_REASON)])
        except GuestError:  # a broken reporter must not hide the failure it reports
            reason = b""
        text = " ".join(reason.decode("utf-8", "replace").split())
        return f"guest failed: {text} (error code {result})" if text else error_code_message(result)

    def _free(self, start: int, size: int, dealloc: Call | None = None) -> None:
        dealloc = dealloc or self._dealloc
        assert dealloc is not None
        if self._dealloc_takes_length:
            dealloc(start, size)
        else:
            dealloc(start)

    def _packed_range(self, name: str) -> bytes:
        """Call `name() -> i64` and copy out the bytes of its packed range (freed after, if the
        module exports a deallocator)."""
        result = self._runtime.export(name)()
        assert result is not None
        memory = self._runtime.memory()
        start, size = output_range(
            result, ResultKind.PACKED, 0, 0, len(memory), self._max_output, what=name
        )
        data = bytes(memory[start : start + size])
        if self._range_dealloc is not None:
            self._free(start, size, self._range_dealloc)
        return data

    def snapshot(self) -> bytes | None:
        """The guest's state as bytes (None: it keeps none that wasmstream saves)."""
        kind = self._abi.state
        if kind is StateKind.EXPORTS:
            return self._packed_range(SNAPSHOT)
        if kind is StateKind.NONE:
            return None
        from wasmstream.checkpoint import (
            state_files as state,  # --state memory only: state.py loads tempfile, 4 ms of every start
        )

        runtime = self._runtime
        assert isinstance(runtime, WholeInstance)
        values = [runtime.global_value(name) for name, _ in self._abi.state_globals]
        return state.encode_image(runtime.memory(), values)

    def restore(self, saved: bytes) -> None:
        """Put back a state `snapshot` returned, on this fresh instance. Raises StateRefused
        when the module refuses it, GuestError when it fails."""
        kind = self._abi.state
        if kind is StateKind.EXPORTS:
            ptr = self._allocate(len(saved), "the saved state") if saved else 0
            self._slice(ptr, len(saved), "state buffer")[:] = saved
            status = self._runtime.export(RESTORE)(ptr, len(saved))
            if status is not None and status < 0:
                raise StateRefused(f"restore returned {status}: the module refused the state")
        elif kind is StateKind.MEMORY:
            self._restore_image(saved)

    def _restore_image(self, image: bytes) -> None:
        from wasmstream.checkpoint import state_files as state  # as in `snapshot`

        runtime = self._runtime
        assert isinstance(runtime, WholeInstance)
        pages, values, saved = state.decode_image(image)
        now = len(runtime.memory()) // WASM_PAGE
        if now > pages or len(values) != len(self._abi.state_globals):
            raise StateRefused(
                f"the saved image ({pages} pages, {len(values)} globals) does not fit this "
                f"instance ({now} pages, {len(self._abi.state_globals)} globals)"
            )
        if pages > now:
            runtime.grow_memory(pages - now)
        memory = runtime.memory()
        memory[:] = bytes(len(memory))
        for index, page in saved:
            if index >= pages:
                raise StateRefused(f"the saved image has page {index} of {pages}")
            memory[index * WASM_PAGE : (index + 1) * WASM_PAGE] = page
        for (name, _), value in zip(self._abi.state_globals, values, strict=True):
            runtime.set_global(name, value)

    def finish(self) -> bytes:
        """The finish function's output (empty when there is none)."""
        return self._packed_range(self._abi.finish) if self._abi.finish else b""
