"""The wasmtime engine (Cranelift): the default.

wasmtime releases the GIL while guest code runs, so one instance per worker thread really uses
several cores. Guest calls go through wasmtime's unchecked raw-call entry point, which costs
about 1.5 µs instead of the ~25 µs of `Func.__call__`'s per-call type checking and boxing; the
signatures were already checked once, by `resolve_abi`. If a future wasmtime-py drops that
private binding, calls fall back to `Func.__call__` (also forced with WASMSTREAM_SLOW_CALLS=1).

Limits: `--timeout` uses epoch interruption with one ticker thread per engine (and Ctrl-C
advances the epoch too: see interrupts.py); `--fuel` uses
wasmtime's fuel; `--max-memory` uses store limits. All are armed afresh before every frame.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import hashlib
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import wasmtime

from wasmstream.engines.base import CopyingInstance, Sandbox, check_header
from wasmstream.engines.cache import ModuleCache, entry_name
from wasmstream.errors import (
    GuestError,
    GuestExit,
    GuestMemoryLimit,
    GuestOutOfFuel,
    GuestTimeout,
    GuestTrap,
    Interrupted,
    ModuleError,
    StartupError,
)
from wasmstream.guest.abi import (
    COMMAND_START,
    MEMORY_EXPORT,
    WASM_PAGE,
    ExportDesc,
    FuncSig,
    GuestAbi,
    ImportDesc,
    ModuleInfo,
)
from wasmstream.guest.protocol import Guest
from wasmstream.run import interrupts
from wasmstream.units import format_duration, format_size

T = TypeVar("T")
C = TypeVar("C")  # a compiled module or component

try:  # the raw call path; see the module docstring
    from wasmtime import _bindings as _ffi
    from wasmtime._extern import wrap_extern as _wrap_extern

    _call_unchecked: Any = _ffi._wasmtime_func_call_unchecked
    _ValRawArray: Any = _ffi.wasmtime_val_raw_t
    _TrapPointer: Any = ctypes.POINTER(_ffi.wasm_trap_t)
    _export_get: Any = _ffi.wasmtime_instance_export_get
    _memory_size: Any = _ffi._wasmtime_memory_data_size
except (ImportError, AttributeError):  # pragma: no cover - depends on the wasmtime-py release
    _call_unchecked = _export_get = _memory_size = None

# What a failed guest call raises (wasmtime.ExitTrap is a WASI proc_exit, from a command).
FAILURES = (wasmtime.Trap, wasmtime.ExitTrap, wasmtime.WasmtimeError)

TRAP_DESCRIPTIONS = {
    wasmtime.TrapCode.UNREACHABLE: "unreachable instruction executed",
    wasmtime.TrapCode.STACK_OVERFLOW: "stack overflow",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    wasmtime.TrapCode.HEAP_MISALIGNED: "misaligned memory access",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to a null table entry",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call signature mismatch",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer divide by zero",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
}


def _build_id() -> str:
    """Which wasmtime this is, for cache keys: its library's size and mtime. (The package
    version would do too, but importlib.metadata costs 12 ms of start-up; and wasmtime checks
    an artifact's version itself when loading it, so a stale entry is only ever recompiled.)"""
    try:
        info = os.stat(str(wasmtime._ffi.filename))
    except (AttributeError, OSError):  # pragma: no cover - a wasmtime-py laid out differently
        return "unknown"
    return f"{info.st_size}-{info.st_mtime_ns}"


def config_flag(value: object) -> str:
    return "on" if value is not None else "off"


class _EpochTicker:
    """One thread per engine advancing the epoch; a frame's deadline is a number of ticks."""

    def __init__(self, engine: wasmtime.Engine, timeout: float) -> None:
        self.tick = min(0.1, timeout / 20)
        self.deadline_ticks = math.ceil(timeout / self.tick) + 1
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasmstream-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()


class WasmtimeEngine:
    name = "wasmtime"

    def __init__(self, sandbox: Sandbox, cache: ModuleCache | None = None) -> None:
        config = wasmtime.Config()
        # Always on: it is how --timeout and Ctrl-C stop a guest (no cost measurable here).
        config.epoch_interruption = True
        config.consume_fuel = sandbox.fuel is not None
        # The settings that change compiled code, for the cache key.
        self._code_settings = f"epoch=on,fuel={config_flag(sandbox.fuel)}"
        self._engine = wasmtime.Engine(config)
        self._cache = cache
        self._sandbox = sandbox
        self._ticker = _EpochTicker(self._engine, sandbox.timeout) if sandbox.timeout else None
        # Without a timeout the epoch only moves on Ctrl-C, so a deadline of one tick suffices.
        self._deadline_ticks = self._ticker.deadline_ticks if self._ticker else 1
        self.interrupted = False
        self._remove_hook = interrupts.on_interrupt(self._interrupt)

    def _interrupt(self) -> None:
        """Past every store's deadline at once: each running guest traps, and returns."""
        self.interrupted = True
        for _ in range(self._deadline_ticks + 1):
            self._engine.increment_epoch()

    def version(self) -> str:
        from importlib.metadata import version  # lazily: 20 ms of start-up otherwise

        return version("wasmtime")

    def compile(self, wasm: bytes, source: str) -> WasmtimeModule:
        check_header(wasm, source)
        digest = hashlib.sha256(wasm).hexdigest()  # once: it names the entry and binds it
        module = self._from_cache(self._cache_name(digest), digest, wasmtime.Module.deserialize)
        if module is None:
            try:
                module = interrupts.interruptible(lambda: wasmtime.Module(self._engine, wasm))
            except wasmtime.WasmtimeError as error:
                message = _one_line(str(error))
                raise ModuleError(f"{source}: invalid WebAssembly: {message}") from None
            if self._cache is not None:
                self._cache.store(self._cache_name(digest), digest, bytes(module.serialize()))
        return WasmtimeModule(self, module, source)

    def _cache_name(self, digest: str) -> str:
        return entry_name(digest, self.name, _build_id(), self._code_settings)

    def _from_cache(
        self, name: str, digest: str, deserialize: Callable[[wasmtime.Engine, bytes], C]
    ) -> C | None:
        """The compiled module (or component) cached as `name`, if any and still valid."""
        if self._cache is None:
            return None
        artifact = self._cache.load(name, digest)
        if artifact is None:
            return None
        try:  # wasmtime checks the artifact's header: engine version, settings, integrity
            return deserialize(self._engine, artifact)
        except wasmtime.WasmtimeError:
            self._cache.discard(name)  # corrupt or stale: compile afresh and replace it
            return None

    def close(self) -> None:
        self._remove_hook()
        if self._ticker is not None:
            self._ticker.stop()

    def new_store(self) -> tuple[wasmtime.Store, _Guard]:
        store = wasmtime.Store(self._engine)
        max_memory = self._sandbox.max_memory
        if max_memory is not None:
            store.set_limits(
                memory_size=max_memory,
                table_elements=1 << 20,
                instances=16,
                tables=16,
                memories=16,
            )
        return store, _Guard(store, self._sandbox, self._deadline_ticks, self)


class _Guard:
    """Arms a store's per-frame limits and names the one a failed call ran into."""

    def __init__(
        self, store: wasmtime.Store, sandbox: Sandbox, deadline_ticks: int, engine: WasmtimeEngine
    ) -> None:
        self._engine = engine
        self._store = store
        self._sandbox = sandbox
        self._deadline_ticks = deadline_ticks
        self.memory: wasmtime.Memory | None = None
        # Without --timeout the epoch moves only on Ctrl-C, so the deadline armed when the
        # store starts holds for every call; without --fuel there is nothing to refill. Then a
        # call costs no ctypes round trip for limits (per frame, that was most of the host's
        # own time with a cheap guest).
        self.per_call = sandbox.timeout is not None or sandbox.fuel is not None

    def call(
        self, func: Callable[..., int | None], *args: int, exit_ok: bool = False
    ) -> int | None:
        """Call `func` with fresh limits, turning wasmtime's traps into GuestError subclasses.

        `exit_ok`: a WASI proc_exit(0) is a normal return (a command's end), not an error.
        """
        if self.per_call:
            self.arm()
        try:
            return func(*args)
        except wasmtime.ExitTrap as exit_trap:
            if exit_ok and exit_trap.code == 0:
                return None
            raise self.failure(exit_trap) from None
        except FAILURES as error:
            raise self.failure(error) from None

    def failure(self, error: BaseException) -> GuestError | Interrupted:
        """What a call that raised `error` (one of FAILURES) failed of."""
        if isinstance(error, wasmtime.Trap):
            return self._classify(error)
        if isinstance(error, wasmtime.ExitTrap):
            return GuestExit(f"guest exited with status {error.code}")
        return GuestTrap(f"guest failed: {_one_line(str(error))}")

    def arm(self) -> None:
        """Fresh limits for what runs next: a call, or a module's start function (which runs
        while it is instantiated, and without a deadline would trap at once)."""
        self._store.set_epoch_deadline(self._deadline_ticks)
        if self._sandbox.fuel is not None:
            self._store.set_fuel(self._sandbox.fuel)

    def starting(self, trap: wasmtime.Trap) -> GuestError | Interrupted:
        """A trap in a module's start function, as a StartupError naming the limit it hit."""
        error = self._classify(trap)
        if isinstance(error, Interrupted):
            return error
        starting = StartupError(f"start function: {error.what}")
        starting.status = error.status  # a limit hit while starting exits as that limit
        return starting

    def _classify(self, trap: wasmtime.Trap) -> GuestError | Interrupted:
        code = trap.trap_code
        sandbox = self._sandbox
        if code == wasmtime.TrapCode.INTERRUPT and self._engine.interrupted:
            return Interrupted()  # Ctrl-C: not the guest's failure, no policy applies
        if code == wasmtime.TrapCode.INTERRUPT and sandbox.timeout is not None:
            return GuestTimeout(f"timed out after {format_duration(sandbox.timeout)}")
        if code == wasmtime.TrapCode.OUT_OF_FUEL and sandbox.fuel is not None:
            return GuestOutOfFuel(f"ran out of fuel ({sandbox.fuel})")
        description = describe_trap(trap)
        if self._at_memory_limit():
            # memory.grow returns -1 at the limit; the guest then failed: blame the limit.
            return GuestMemoryLimit(
                f"memory limit {format_size(sandbox.max_memory or 0)} exceeded ({description})"
            )
        return GuestTrap(f"guest trapped: {description}")

    def _at_memory_limit(self) -> bool:
        limit = self._sandbox.max_memory
        if limit is None or self.memory is None:
            return False
        # memory.grow's request is not known here: count "within an eighth of the cap" as at it
        return self.memory.data_len(self._store) + max(WASM_PAGE, limit // 8) > limit


class WasmtimeModule:
    def __init__(self, engine: WasmtimeEngine, module: wasmtime.Module, source: str) -> None:
        self._engine = engine
        self._module = module
        self._source = source
        self.info = ModuleInfo(
            exports=tuple(_describe_export(e.name, e.type) for e in module.exports),
            imports=tuple(
                ImportDesc(i.module, i.name or "", _kind(i.type)) for i in module.imports
            ),
        )

    def instantiate(
        self, abi: GuestAbi, buffer_size: int, config: bytes
    ) -> WasmtimeInstance | WasmtimeCommand:
        if abi.command:
            return WasmtimeCommand(self._engine, self._module, self._source, buffer_size)
        return WasmtimeInstance(self._engine, self._module, self._source, abi, buffer_size, config)


class WasmtimeInstance(CopyingInstance):
    """One Store and Instance, owned by one thread; holds the input buffer for every frame.

    The guest protocol (start-up, calling the transform, reading and freeing its result) is
    `guest.Guest`'s; this class is its `Runtime`: exports as fast callables under the store's
    limits, and a view of linear memory.
    """

    def __init__(
        self,
        engine: WasmtimeEngine,
        module: wasmtime.Module,
        source: str,
        abi: GuestAbi,
        buffer_size: int,
        config: bytes,
    ) -> None:
        self._store, self._guard = engine.new_store()
        self._wasi = abi.wasi
        self._calls = 0  # guest calls under way (counted for WASI instances only)
        if abi.wasi:
            _CUSTOM_OUTPUTS.instances.add(self)
        self._memory_view = memoryview(b"")
        self._memory_at = (0, 0)
        self._memory_checked = False
        self._instance = self._link(engine, module, source, abi.wasi)
        memory = _export(self._store, self._instance, MEMORY_EXPORT)
        assert isinstance(memory, wasmtime.Memory)  # checked by resolve_abi
        self._memory = self._guard.memory = memory
        self._data_len = _data_len(self._store, memory)
        max_output = engine._sandbox.output_limit(buffer_size)
        self._guest = Guest(self, abi, buffer_size, config, max_output)

    def _link(
        self, engine: WasmtimeEngine, module: wasmtime.Module, source: str, wasi: bool
    ) -> wasmtime.Instance:
        self._guard.arm()
        try:
            if not wasi:
                return wasmtime.Instance(self._store, module, [])
            self._store.set_wasi(_sandboxed_wasi(source, engine._sandbox, _to_stderr))
            linker = wasmtime.Linker(engine._engine)
            linker.define_wasi()
            return linker.instantiate(self._store, module)
        except wasmtime.Trap as trap:
            raise self._guard.starting(trap) from None
        except wasmtime.WasmtimeError as error:
            message = _one_line(str(error))
            if "memory" in message and "limit" in message:
                raise GuestMemoryLimit(f"cannot start an instance: {message}") from None
            raise ModuleError(f"{source}: cannot instantiate: {message}") from None

    def export(self, name: str) -> Callable[..., int | None]:
        """`Runtime.export`: the raw-call fast path, each call under fresh limits."""
        call = self._export(name)
        if not self._wasi:
            return call

        def call_counted(*args: int) -> int | None:  # see `idle`
            self._calls += 1
            try:
                return call(*args)
            finally:
                self._calls -= 1

        return call_counted

    @property
    def idle(self) -> bool:
        """Whether no thread is in a guest call (closing the store then is safe)."""
        return self._calls == 0

    def _export(self, name: str) -> Callable[..., int | None]:
        export = _export(self._store, self._instance, name)
        assert isinstance(export, wasmtime.Func)
        caller = _caller(self._store, export)
        guard = self._guard
        if guard.per_call:
            call = guard.call

            def call_armed(*args: int) -> int | None:
                self._memory_checked = False  # guest code may grow (and move) memory
                return call(caller, *args)

            return call_armed

        def call_export(*args: int) -> int | None:  # the guard's call, inlined: per frame
            self._memory_checked = False
            try:
                return caller(*args)
            except FAILURES as error:
                raise guard.failure(error) from None

        return call_export

    def memory(self) -> memoryview:
        """`Runtime.memory`: a view of all guest memory. Only guest code and `grow_memory` can
        grow or move it, so it is looked up again only after either."""
        if self._memory_checked:
            return self._memory_view
        self._memory_checked = True
        # Memory moves only when it grows: an unchanged size means an unchanged view.
        if self._data_len() == self._memory_at[1]:
            return self._memory_view
        store, memory = self._store, self._memory
        where = (ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store))
        if where != self._memory_at:
            array = (ctypes.c_ubyte * where[1]).from_address(where[0])
            self._memory_view = memoryview(array).cast("B")
            self._memory_at = where
        return self._memory_view

    def global_value(self, name: str) -> int | float:
        """`WholeInstance.global_value`: a mutable global exported by `instrument`."""
        value = self._global(name).value(self._store)
        assert isinstance(value, (int, float))
        return value

    def set_global(self, name: str, value: int | float) -> None:
        self._global(name).set_value(self._store, value)

    def grow_memory(self, pages: int) -> None:
        """`WholeInstance.grow_memory`. The cached view no longer covers all of memory (and may
        point where memory was): the next `memory()` looks it up again."""
        self._memory_checked = False
        try:
            self._memory.grow(self._store, pages)
        except wasmtime.WasmtimeError as error:
            raise GuestMemoryLimit(f"cannot grow memory to restore state: {error}") from None

    def _global(self, name: str) -> wasmtime.Global:
        found = _export(self._store, self._instance, name)
        assert isinstance(found, wasmtime.Global)
        return found

    def input_buffer(self) -> memoryview:
        return self._guest.input_buffer()

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        return self._guest.transform(length, consume)

    def snapshot(self) -> bytes | None:
        return self._guest.snapshot()

    def restore(self, state: bytes) -> None:
        self._guest.restore(state)

    def finish(self) -> bytes:
        return self._guest.finish()

    def close(self) -> None:
        self._memory_view.release()
        self._memory_at = (0, 0)
        self._memory_checked = False
        if self._wasi:  # its stdout callback is released now, not at exit: see _CustomOutputs
            self._store.close()


class WasmtimeCommand(CopyingInstance):
    """A WASI program run once per frame: the frame is its stdin, its stdout the frame's output.

    Linking is done once (an InstancePre); each frame gets a fresh Store and instance, so no
    state survives from one frame to the next and limits apply per frame.
    """

    def __init__(
        self, engine: WasmtimeEngine, module: wasmtime.Module, source: str, buffer_size: int
    ) -> None:
        self._engine = engine
        self._source = source
        self._buffer = bytearray(buffer_size)
        self._max_output = engine._sandbox.output_limit(buffer_size)
        linker = wasmtime.Linker(engine._engine)
        linker.define_wasi()
        try:
            self._pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as error:
            raise ModuleError(f"{source}: cannot instantiate: {_one_line(str(error))}") from None

    def input_buffer(self) -> memoryview:
        return memoryview(self._buffer)

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        store, guard = self._engine.new_store()
        output = _CappedOutput(self._max_output)
        config = _sandboxed_wasi(self._source, self._engine._sandbox, output.write)
        _frame_as_stdin(config, memoryview(self._buffer)[:length])
        store.set_wasi(config)
        try:
            self._run(store, guard)
        finally:
            store.close()  # the frame's stdout callback is released now: see _CustomOutputs
        if output.overflowed:
            raise GuestError(
                f"output of more than {format_size(self._max_output)} exceeds --max-output"
            )
        return consume(memoryview(b"".join(output.chunks)))

    def _run(self, store: wasmtime.Store, guard: _Guard) -> None:
        guard.arm()
        try:
            instance = self._pre.instantiate(store)
        except wasmtime.Trap as trap:
            raise guard.starting(trap) from None
        except wasmtime.WasmtimeError as error:
            raise StartupError(f"cannot start: {_one_line(str(error))}") from None
        start = _export(store, instance, COMMAND_START)
        assert isinstance(start, wasmtime.Func)
        try:
            memory = _export(store, instance, MEMORY_EXPORT)
        except KeyError:
            memory = None
        guard.memory = memory if isinstance(memory, wasmtime.Memory) else None
        guard.call(lambda: start(store), exit_ok=True)

    def close(self) -> None:
        pass


def _frame_as_stdin(config: wasmtime.WasiConfig, frame: memoryview) -> None:
    """A command's stdin: the frame, in a memory file (wasmtime opens it by path)."""
    stdin = os.memfd_create("wasmstream-frame", os.MFD_CLOEXEC)
    try:
        os.write(stdin, frame)
        config.stdin_file = f"/proc/self/fd/{stdin}"
    finally:
        os.close(stdin)


class _CappedOutput:
    """Collects a WASI command's stdout, up to a limit (a callback must not raise: see wasi.py)."""

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self._room = limit
        self.overflowed = False

    def write(self, data: bytes) -> None:
        if len(data) > self._room:
            self.overflowed = True
            self._room = 0
            return
        self._room -= len(data)
        self.chunks.append(data)


def _export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> object:
    """One export, looked up by name. `Instance.exports()` wraps every export of the module
    first, at a cost that grows faster than their number: 3.3 s per instance for a module
    with 10,000 exports, measured here."""
    if _export_get is None or os.environ.get("WASMSTREAM_SLOW_CALLS") == "1":
        return instance.exports(store)[name]
    item = _ffi.wasmtime_extern_t()
    raw = name.encode()
    found = _export_get(
        store._context(), ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
    )
    if not found:
        raise KeyError(name)
    return _wrap_extern(item)


def _data_len(store: wasmtime.Store, memory: wasmtime.Memory) -> Callable[[], int]:
    """A fast callable for the size of `memory` (asked after every guest call)."""
    if _memory_size is None or os.environ.get("WASMSTREAM_SLOW_CALLS") == "1":
        return lambda: memory.data_len(store)
    context, where = store._context(), ctypes.byref(memory._memory)
    return lambda: int(_memory_size(context, where))


def _caller(store: wasmtime.Store, func: wasmtime.Func) -> Callable[..., int | None]:
    """A fast callable for `func`, whose signature resolve_abi has already checked."""
    results = func.type(store).results
    if _call_unchecked is None or os.environ.get("WASMSTREAM_SLOW_CALLS") == "1":
        return lambda *args: func(store, *args)
    size = max(len(func.type(store).params), len(results), 1)
    values = (_ValRawArray * size)()
    slots = [values[n] for n in range(size)]  # each slot's ctypes object, made once
    context = store._context()
    func_ref = ctypes.byref(func._func)
    wide = bool(results) and results[0] == wasmtime.ValType.i64()
    # Where a trap is reported: stays NULL until a call traps, and is made anew after one.
    trap = _TrapPointer()
    trap_ref = ctypes.byref(trap)

    def call(*args: int) -> int | None:
        nonlocal trap, trap_ref
        # Every parameter of the guest ABI is an i32: written as the whole 64-bit slot, the
        # upper half zero (an i32 slot is read as its lower 32 bits).
        for slot, arg in zip(slots, args, strict=False):  # slots may outnumber params
            slot.i64 = arg & 0xFFFFFFFF
        error = _call_unchecked(context, func_ref, values, size, trap_ref)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            trapped = trap
            trap = _TrapPointer()
            trap_ref = ctypes.byref(trap)
            raise wasmtime.Trap._from_ptr(trapped)
        if not results:
            return None
        return int(slots[0].i64) if wide else int(slots[0].i32)

    return call


def describe_trap(trap: wasmtime.Trap) -> str:
    code = trap.trap_code
    if code is not None and code in TRAP_DESCRIPTIONS:
        return TRAP_DESCRIPTIONS[code]
    return _one_line(trap.message)


def _one_line(message: str) -> str:
    """The line of a wasmtime message that says what happened (the last non-empty one)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else message
    return last.removeprefix("wasm trap: ")


def _sandboxed_wasi(
    source: str, sandbox: Sandbox, stdout: Callable[[bytes], None]
) -> wasmtime.WasiConfig:
    """A WASI context granting only what the user granted (--env, --dir); nothing by default."""
    config = wasmtime.WasiConfig()
    config.argv = [os.path.basename(source), *sandbox.args]
    config.env = [list(pair) for pair in sandbox.env]
    for grant in sandbox.dirs:
        config.preopen_dir(grant.host, grant.guest, grant.writable)
    config.stdout_custom = _CUSTOM_OUTPUTS.callback(stdout)
    config.inherit_stderr()
    return config


class _Callback:
    """A custom output's callback: only wasmtime's table of them holds it, so it is freed
    when wasmtime releases it (`_CustomOutputs` is told by a weak reference)."""

    __slots__ = ("__weakref__", "_write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def __call__(self, data: bytes) -> None:
        self._write(data)


class _CustomOutputs:
    """The Python callbacks wasmtime calls with a guest's stdout, and being rid of them before
    Python shuts down.

    wasmtime runs a custom stream's writes, and releases its callback when the stream goes,
    on the threads of its own async runtime (tokio). A callback released while the interpreter
    finalises has that thread call into a Python that is going away, which ends the thread
    under Rust's feet: "panic in a function that cannot unwind" on stderr at exit, for every
    library user whose guest printed (the CLI ends with os._exit and never finalises). So a
    store with such a stream is closed as soon as its instance is, and its callback released
    then, while Python is whole; and at exit (atexit runs before finalisation) the stores left
    in unreachable cycles are collected and the callbacks' release awaited, a little while.
    """

    WAIT = 2.0  # seconds; a release takes a runtime thread's turn, well under a millisecond

    def __init__(self) -> None:
        self._live: set[weakref.ref[_Callback]] = set()
        self._changed = threading.Condition()  # reentrant: a release may run inside `callback`
        self._at_exit = False
        self.instances: weakref.WeakSet[WasmtimeInstance] = weakref.WeakSet()  # WASI ones

    def callback(self, write: Callable[[bytes], None]) -> _Callback:
        made = _Callback(write)
        with self._changed:
            self._live.add(weakref.ref(made, self._released))
            if not self._at_exit:
                atexit.register(self.wait)
                self._at_exit = True
        return made

    def _released(self, ref: weakref.ref[_Callback]) -> None:
        with self._changed:
            self._live.discard(ref)
            self._changed.notify_all()

    def wait(self) -> None:
        """At exit: close the instances still open (a stream's generator not run to its end),
        unless a guest call is under way in one (on a daemon thread: its store must stay), and
        wait until every callback is released (or WAIT has passed)."""
        for instance in list(self.instances):
            if instance.idle:
                instance.close()
        gc.collect()  # instances nobody closed, in reference cycles (an instance and its Guest)
        with self._changed:
            self._changed.wait_for(lambda: not self._live, timeout=self.WAIT)


_CUSTOM_OUTPUTS = _CustomOutputs()


def _to_stderr(data: bytes) -> None:
    """A reactor's stdout joins wasmstream's stderr: never the data stream."""
    with contextlib.suppress(OSError):
        os.write(2, data)


def _kind(extern_type: object) -> str:
    if isinstance(extern_type, wasmtime.FuncType):
        return "func"
    if isinstance(extern_type, wasmtime.MemoryType):
        return "memory"
    if isinstance(extern_type, wasmtime.TableType):
        return "table"
    if isinstance(extern_type, wasmtime.GlobalType):
        return "global"
    return type(extern_type).__name__


def _describe_export(name: str, extern_type: object) -> ExportDesc:
    if isinstance(extern_type, wasmtime.FuncType):
        sig = FuncSig(
            tuple(str(t) for t in extern_type.params), tuple(str(t) for t in extern_type.results)
        )
        return ExportDesc(name, "func", sig)
    if isinstance(extern_type, wasmtime.MemoryType):
        limits = extern_type.limits
        return ExportDesc(name, "memory", pages=(limits.min, limits.max))
    return ExportDesc(name, _kind(extern_type))
