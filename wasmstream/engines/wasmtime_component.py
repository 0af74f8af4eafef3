"""WebAssembly components under wasmtime: the wasmtime engine, able to run components too.

A component is one more kind of compiled module: `compile_component` gives a `CompiledComponent`
whose `instantiate` gives an ordinary `Instance`, so every way of running (serial, `-j`, shards,
clusters, the library, checkpoints, `--on-error`) drives it as it drives a core module. What
the component's functions take and return was decided by `component.resolve_component`.

Values cross through wasmtime's C API directly (`wasmtime_component_func_call` with
`wasmtime_component_val_t`s built and read here) rather than through `Func.__call__`, which
decodes a `string` to a Python str and back, and converts a `list<u8>` byte by byte in Python.
A `string` is one buffer each way. A `list<u8>` is an array of 32-byte values in the C API
(one per byte: wasmtime#11617 asks for a byte-list kind): it is filled and read by strided
memoryview assignment, in C, leaving the C API's per-element conversion as the cost.

Limits are the core engine's: fuel and the epoch deadline armed before each call, store
limits for memory. A component's trap comes back as a WasmtimeError (no trap code), so it is
classified by its message. After a trap a component instance cannot be entered again: the run
replaces an instance after any guest failure, as it does for core modules.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import wasmtime
from wasmtime import _bindings as _ffi
from wasmtime import component as cm

from wasmstream.engines.base import CopyingInstance, check_header
from wasmstream.engines.wasmtime_engine import (
    WasmtimeEngine,
    _CappedOutput,
    _frame_as_stdin,
    _Guard,
    _one_line,
    _sandboxed_wasi,
    _to_stderr,
)
from wasmstream.errors import (
    GuestError,
    GuestExit,
    GuestOutOfFuel,
    GuestTimeout,
    GuestTrap,
    Interrupted,
    ModuleError,
    StartupError,
    StateRefused,
)
from wasmstream.guest.abi import RESTORE, SNAPSHOT, GuestAbi, ModuleInfo, StateKind
from wasmstream.guest.component_abi import RUN, ComponentInfo, ComponentItem, WitFunc
from wasmstream.run import interrupts
from wasmstream.units import format_duration, format_size

T = TypeVar("T")

COMPONENT_PARTS = 1000  # core instances, memories, tables: a component may hold dozens
VAL_SIZE = ctypes.sizeof(_ffi.wasmtime_component_val_t)
VALUE_AT = _ffi.wasmtime_component_val_t.of.offset  # where a value's payload starts
KIND_U8 = 2
KIND_STRING = 12
KIND_LIST = 13
KIND_RESULT = 19
PRIMITIVES: dict[type, str] = {
    cls: cls.__name__.lower()
    for cls in (cm.Bool, cm.S8, cm.S16, cm.S32, cm.S64, cm.U8, cm.U16, cm.U32, cm.U64)
}
PRIMITIVES.update({cls: cls.__name__.lower() for cls in (cm.F32, cm.F64, cm.Char, cm.String)})


def _ignore(output: memoryview) -> None:
    """What a call returning nothing of use (`init`, `restore`) hands its output to."""


class WasmtimeComponents(WasmtimeEngine):
    """The wasmtime engine, able to run components too: what the registry hands out as
    "wasmtime" for a component (core modules get the plain engine, which loads faster)."""

    def compile_component(self, wasm: bytes, source: str) -> WasmtimeComponent:
        check_header(wasm, source)
        digest = hashlib.sha256(wasm).hexdigest()
        component = self._from_cache(
            self._component_cache_name(digest), digest, cm.Component.deserialize
        )
        if component is None:
            try:
                # a large component takes seconds to compile: Ctrl-C must still stop it
                component = interrupts.interruptible(lambda: cm.Component(self._engine, wasm))
            except wasmtime.WasmtimeError as error:
                message = _one_line(str(error))
                raise ModuleError(f"{source}: invalid WebAssembly component: {message}") from None
            if self._cache is not None:
                name = self._component_cache_name(digest)
                self._cache.store(name, digest, bytes(component.serialize()))
        return WasmtimeComponent(self, component, source)

    def new_store(self) -> tuple[wasmtime.Store, _Guard]:
        """A store as for core modules, allowing the many core instances, memories and tables
        one component is made of (toolchains' adapters and shims); `--max-memory` still
        bounds each memory."""
        store, guard = super().new_store()
        max_memory = self._sandbox.max_memory
        if max_memory is not None:
            store.set_limits(
                memory_size=max_memory,
                table_elements=1 << 20,
                instances=COMPONENT_PARTS,
                tables=COMPONENT_PARTS,
                memories=COMPONENT_PARTS,
            )
        return store, guard

    def _component_cache_name(self, digest: str) -> str:
        return self._cache_name(digest) + "-component"


class WasmtimeComponent:
    """A compiled component, shared between threads, and the linker (WASI p2) for it."""

    def __init__(self, engine: WasmtimeComponents, component: cm.Component, source: str) -> None:
        self._engine = engine
        self._component = component
        self._source = source
        self._linker = cm.Linker(engine._engine)
        self._linker.add_wasip2()
        self.info = ModuleInfo(exports=(), imports=())
        kind = component.type
        self.component_info = ComponentInfo(
            exports=_items(kind.exports(engine._engine)),
            imports=_items(kind.imports(engine._engine)),
        )

    def check_linkable(self) -> None:
        """A trial instance in a store granted nothing: a link error names the import
        wasmstream cannot satisfy. A trap while starting is left to the run's first instance,
        which reports it as a start-up failure."""
        store, guard = self._engine.new_store()
        store.set_wasi(wasmtime.WasiConfig())
        guard.arm()
        try:
            self._linker.instantiate(store, self._component)
        except wasmtime.WasmtimeError as error:
            if not _is_trap(str(error)):  # the first line names the import; the rest, why
                message = str(error).strip().splitlines()[0]
                raise ModuleError(
                    f"{self._source}: cannot link: {message} (wasmstream provides WASI p2 only)"
                ) from None

    def instantiate(
        self, abi: GuestAbi, buffer_size: int, config: bytes
    ) -> ComponentInstance | ComponentCommand:
        if abi.command:
            return ComponentCommand(self, abi, buffer_size)
        return ComponentInstance(self, abi, buffer_size, config)

    def start(self, store: wasmtime.Store, guard: _Guard) -> cm.Instance:
        """A new instance in `store` (its WASI context set), started under its limits."""
        guard.arm()
        try:
            return self._linker.instantiate(store, self._component)
        except wasmtime.WasmtimeError as error:
            raise StartupError(f"cannot start: {_one_line(str(error))}") from None

    def export_index(self, interface: str, name: str) -> cm.ExportIndex:
        """Where function `name` of the exported instance `interface` is (found once)."""
        found = self._component.get_export_index(interface)
        inner = self._component.get_export_index(name, found) if found is not None else None
        if inner is None:
            raise ModuleError(f"{self._source}: {interface} exports no function {name}")
        return inner


class ComponentInstance(CopyingInstance):
    """One Store and component instance, owned by one thread, with a host input buffer."""

    def __init__(
        self, compiled: WasmtimeComponent, abi: GuestAbi, buffer_size: int, config: bytes
    ) -> None:
        engine = compiled._engine
        sandbox = engine._sandbox
        assert abi.component is not None  # decided by resolve_component
        self._text = abi.component.text
        self._buffer = bytearray(buffer_size)
        self._buffer_array = (ctypes.c_ubyte * buffer_size).from_buffer(self._buffer)
        self._max_output = sandbox.output_limit(buffer_size)
        self._kinds = bytes([KIND_U8]) * buffer_size  # a list<u8>'s element kinds, made once
        self._store, guard = engine.new_store()
        self._store.set_wasi(_sandboxed_wasi(compiled._source, sandbox, _to_stderr))
        instance = compiled.start(self._store, guard)
        self._caller = _Caller(engine, self._store, guard, self._max_output)
        self._process = self._func(instance, abi.transform)
        self._finish = self._func(instance, abi.finish) if abi.finish else None
        stateful = abi.state is StateKind.EXPORTS
        self._snapshot = self._func(instance, SNAPSHOT) if stateful else None
        self._restore = self._func(instance, RESTORE) if stateful else None
        if abi.init is not None:
            self._init(self._func(instance, abi.init), abi.init, config)

    def _func(self, instance: cm.Instance, name: str) -> _Func:
        return _func(self._store, instance, name)

    def _init(self, func: _Func, name: str, config: bytes) -> None:
        try:
            self._caller.call(func, _bytes_value(memoryview(config), self._kinds_for(len(config))))
        except GuestError as error:
            raise StartupError(f"{name}: {error.what}") from None

    def input_buffer(self) -> memoryview:
        return memoryview(self._buffer)

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        data = memoryview(self._buffer)[:length]
        if self._text:
            _check_utf8(data)
            param = _text_value(ctypes.addressof(self._buffer_array), length)
        else:
            param = _bytes_value(data, self._kinds)
        return self._caller.call(self._process, param, consume, limit=True)

    def snapshot(self) -> bytes | None:
        if self._snapshot is None:
            return None
        return self._caller.call(self._snapshot, None, bytes)

    def restore(self, state: bytes) -> None:
        assert self._restore is not None  # restore is asked only of a stateful component
        try:
            self._caller.call(
                self._restore, _bytes_value(memoryview(state), self._kinds_for(len(state)))
            )
        except GuestError as error:
            if isinstance(error, _Refused):
                raise StateRefused(f"{RESTORE} refused the saved state: {error.what}") from None
            raise

    def finish(self) -> bytes:
        if self._finish is None:
            return b""
        return self._caller.call(self._finish, None, bytes, limit=True)

    def close(self) -> None:
        pass

    def _kinds_for(self, length: int) -> bytes:
        return self._kinds if length <= len(self._kinds) else bytes([KIND_U8]) * length


class ComponentCommand(CopyingInstance):
    """A WASI p2 command component (`wasi:cli/run`) run once per frame, as a core WASI command
    is: a fresh store and instance per frame, the frame its stdin, its stdout the output; a
    failed `run` or a non-zero exit fails the frame."""

    def __init__(self, compiled: WasmtimeComponent, abi: GuestAbi, buffer_size: int) -> None:
        self._compiled = compiled
        self._buffer = bytearray(buffer_size)
        self._max_output = compiled._engine._sandbox.output_limit(buffer_size)
        self._run = compiled.export_index(abi.transform, RUN)

    def input_buffer(self) -> memoryview:
        return memoryview(self._buffer)

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        compiled = self._compiled
        engine = compiled._engine
        store, guard = engine.new_store()
        output = _CappedOutput(self._max_output)
        config = _sandboxed_wasi(compiled._source, engine._sandbox, output.write)
        _frame_as_stdin(config, memoryview(self._buffer)[:length])
        store.set_wasi(config)
        instance = compiled.start(store, guard)
        func = instance.get_func(store, self._run)
        assert func is not None  # export_index found it
        caller = _Caller(engine, store, guard, self._max_output)
        try:
            caller.call(_Func(func._func, True), None, exit_ok=True)
        except _Refused:
            raise GuestExit(f"{RUN} returned an error (the program failed)") from None
        if output.overflowed:
            raise GuestError(
                f"output of more than {format_size(self._max_output)} exceeds --max-output"
            )
        return consume(memoryview(b"".join(output.chunks)))

    def close(self) -> None:
        pass


class _Caller:
    """Calls into the component instance of one store, under that store's limits."""

    def __init__(
        self, engine: WasmtimeEngine, store: wasmtime.Store, guard: _Guard, max_output: int
    ) -> None:
        self._engine = engine
        self._guard = guard
        self._context = store._context()
        self._max_output = max_output

    def call(
        self,
        func: _Func,
        param: Any,
        consume: Callable[[memoryview], T] = _ignore,  # type: ignore[assignment]
        limit: bool = False,
        exit_ok: bool = False,
    ) -> T:
        """Call `func` with one parameter (or none) under fresh limits: `consume(output)`, the
        output being the value it returned (or its `ok`'s, or nothing), freed right after.
        An `err` raises _Refused with the guest's message; a trap, a GuestError naming why."""
        guard = self._guard
        if guard.per_call or exit_ok:
            guard.arm()
        result = _ffi.wasmtime_component_val_t()
        try:
            error = _ffi.wasmtime_component_func_call(
                ctypes.byref(func.raw),
                self._context,
                ctypes.byref(param) if param is not None else None,
                1 if param is not None else 0,
                ctypes.byref(result) if func.has_result else None,
                1 if func.has_result else 0,
            )
        finally:
            if param is not None:
                _ffi.wasmtime_component_val_delete(ctypes.byref(param))
        if error:
            failure = wasmtime.WasmtimeError._from_ptr(error)
            if exit_ok and isinstance(failure, wasmtime.ExitTrap) and failure.code == 0:
                return consume(memoryview(b""))  # a command's exit(0): a normal end
            raise self._failure(failure) from None
        if not func.has_result:
            return consume(memoryview(b""))
        try:
            return consume(self._output(result, limit))
        finally:
            _ffi.wasmtime_component_val_delete(ctypes.byref(result))

    def _output(self, value: Any, limit: bool) -> memoryview:
        """The bytes a returned value holds (an `ok`'s; none for `result<_, …>`)."""
        if value.kind == KIND_RESULT:
            inner = value.of.result.val
            if not value.of.result.is_ok:
                message = bytes(_payload(inner.contents)) if inner else b""
                raise _Refused(message.decode("utf-8", "replace") or "an err without a message")
            if not inner:
                return memoryview(b"")
            value = inner.contents
        payload = _payload(value)
        if limit and len(payload) > self._max_output:
            raise GuestError(
                f"output of {len(payload)} bytes exceeds the --max-output limit of "
                f"{format_size(self._max_output)}"
            )
        return payload

    def _failure(self, error: wasmtime.WasmtimeError) -> GuestError | Interrupted:
        """What a failed call failed of: a limit, Ctrl-C, or the guest's own trap."""
        if isinstance(error, wasmtime.ExitTrap):
            return GuestExit(f"guest exited with status {error.code}")
        text = str(error)
        sandbox = self._engine._sandbox
        if "wasm trap: interrupt" in text:
            if self._engine.interrupted:
                return Interrupted()
            if sandbox.timeout is not None:
                return GuestTimeout(f"timed out after {format_duration(sandbox.timeout)}")
        if "all fuel consumed" in text and sandbox.fuel is not None:
            return GuestOutOfFuel(f"ran out of fuel ({sandbox.fuel})")
        return GuestTrap(f"guest trapped: {_one_line(str(error))}")


def _func(store: wasmtime.Store, instance: cm.Instance, name: str) -> _Func:
    func = instance.get_func(store, name)
    assert func is not None  # its type was checked by resolve_component
    return _Func(func._func, func.type(store).result is not None)


class _Func(NamedTuple):
    raw: Any  # the wasmtime_component_func_t
    has_result: bool


class _Refused(GuestError):
    """A function returned `err`: the guest's own refusal, with its message."""


def _is_trap(message: str) -> bool:
    return "wasm trap" in message or "wasm backtrace" in message


def _check_utf8(data: memoryview) -> None:
    """A text transform takes whole, valid UTF-8 (the framing keeps characters whole)."""
    try:
        codecs.utf_8_decode(data, "strict", True)
    except UnicodeDecodeError as error:
        raise GuestError(
            f"invalid UTF-8 at byte {error.start} of the frame (a text component takes only UTF-8)"
        ) from None


def _text_value(address: int, length: int) -> Any:
    """A `string` value holding `length` bytes at `address` (copied: the value owns them)."""
    value = _ffi.wasmtime_component_val_t()
    value.kind = KIND_STRING
    _ffi.wasm_byte_vec_new_uninitialized(ctypes.byref(value.of.string), length)
    if length:
        ctypes.memmove(value.of.string.data, address, length)
    return value


def _bytes_value(data: memoryview, kinds: bytes) -> Any:
    """A `list<u8>` value: `len(data)` 32-byte element values, filled by strided assignment."""
    value = _ffi.wasmtime_component_val_t()
    value.kind = KIND_LIST
    count = len(data)
    _ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(value.of.list), count)
    if count:
        elements = _elements(value.of.list.data, count)
        elements[0::VAL_SIZE] = kinds[:count]
        elements[VALUE_AT::VAL_SIZE] = data
    return value


def _elements(data: Any, count: int) -> memoryview:
    address = ctypes.addressof(data.contents)
    return memoryview((ctypes.c_ubyte * (count * VAL_SIZE)).from_address(address)).cast("B")


def _payload(value: Any) -> memoryview:
    """The bytes a `string` or `list<u8>` value holds, valid until the value is freed."""
    if value.kind == KIND_STRING:
        size = value.of.string.size
        if not size:
            return memoryview(b"")
        address = ctypes.addressof(value.of.string.data.contents)
        return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
    if value.kind == KIND_LIST:
        count = value.of.list.size
        if not count:
            return memoryview(b"")
        return memoryview(_elements(value.of.list.data, count)[VALUE_AT::VAL_SIZE].tobytes())
    raise GuestError(f"unexpected value of kind {value.kind} from the component")


def _items(found: dict[str, Any]) -> tuple[ComponentItem, ...]:
    return tuple(_item(name, extern.ty) for name, extern in found.items())


def _item(name: str, kind: Any) -> ComponentItem:
    if isinstance(kind, cm.FuncType):
        params = tuple((param, wit_type(value)) for param, value in kind.params)
        result = wit_type(kind.result) if kind.result is not None else None
        return ComponentItem(name, "func", WitFunc(params, result))
    kinds = {
        cm.ComponentInstanceType: "instance",
        cm.ComponentType: "component",
        cm.ModuleType: "module",
        cm.ResourceType: "resource",
    }
    return ComponentItem(name, next((k for t, k in kinds.items() if isinstance(kind, t)), "type"))


def wit_type(kind: Any) -> str:
    """A component value type, written as WIT."""
    if type(kind) in PRIMITIVES:
        return PRIMITIVES[type(kind)]
    if isinstance(kind, cm.ListType):
        return f"list<{wit_type(kind.element)}>"
    if isinstance(kind, cm.ResultType):
        ok = wit_type(kind.ok) if kind.ok is not None else "_"
        if kind.err is None:
            return "result" if ok == "_" else f"result<{ok}>"
        return f"result<{ok}, {wit_type(kind.err)}>"
    if isinstance(kind, cm.OptionType):
        return f"option<{wit_type(kind.payload)}>"
    if isinstance(kind, cm.TupleType):
        return f"tuple<{', '.join(wit_type(element) for element in kind.elements)}>"
    return type(kind).__name__.removesuffix("Type").lower()  # record, variant, enum, own …
