"""The guest ABI: which exports of a module wasmstream uses, and how.

This is the project's contract with module authors (README and man page, "GUEST ABI"). It is
decided here once per run, from the module's exports and imports alone, before any instance
exists; the engines then follow the resulting `GuestAbi` without deciding anything themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from wasmstream.errors import GuestError, ModuleError, UsageError
from wasmstream.units import format_size

WASM_PAGE = 1 << 16  # WebAssembly's unit of linear memory
WASM32_MEMORY = 1 << 32  # a 32-bit guest addresses at most 4 GiB

WASI_MODULE = "wasi_snapshot_preview1"
MEMORY_EXPORT = "memory"
REACTOR_INIT = "_initialize"
COMMAND_START = "_start"
DEFAULT_TRANSFORM = "process_chunk"
ALLOCATOR_NAMES = ("alloc", "allocate", "malloc")
DEALLOCATOR_NAMES = ("dealloc", "free")
SNAPSHOT, RESTORE, DEFAULT_FINISH = "snapshot", "restore", "finish"
DEFAULT_INIT = "init"  # called with --config when --init names no other export


def init_for(config_given: bool, init: str | None) -> str | None:
    """The export that receives `--config`: `--init NAME`, else the module's `init` (a module
    without one is then refused when it loads, as any missing export is)."""
    return DEFAULT_INIT if config_given and init is None else init


# () -> i64 packed: why the last frame failed, when the transform returned a negative result
# (the SDKs' ws_fail("why")); read for the error and dead letter, never freed.
ERROR_MESSAGE = "error_message"
STATE_MODES = ("auto", "none", "memory")  # --state


@dataclass(frozen=True)
class FuncSig:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        params = ", ".join(self.params)
        results = ", ".join(self.results)
        if len(self.results) == 1:
            return f"({params}) -> {results}"
        return f"({params}) -> ({results})"


@dataclass(frozen=True)
class ExportDesc:
    name: str
    kind: str  # "func", "memory", "table" or "global"
    sig: FuncSig | None = None
    pages: tuple[int, int | None] | None = None  # a memory's minimum and maximum, in 64 KiB pages

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} {self.sig})" if self.sig else f"{self.name} ({self.kind})"


@dataclass(frozen=True)
class ImportDesc:
    module: str
    name: str
    kind: str


@dataclass(frozen=True)
class ModuleInfo:
    """What an engine found in a compiled module, in engine-neutral terms."""

    exports: tuple[ExportDesc, ...]
    imports: tuple[ImportDesc, ...]

    def export(self, name: str) -> ExportDesc | None:
        return next((export for export in self.exports if export.name == name), None)


class StateKind(enum.Enum):
    """What of a guest's state a checkpoint saves."""

    NONE = "none"  # nothing: a resumed run starts the guest afresh
    EXPORTS = "exports"  # the module's own: snapshot() and restore(ptr, len)
    MEMORY = "memory"  # the whole instance: linear memory and every mutable global


class ResultKind(enum.Enum):
    IN_PLACE = "i32"  # n: the output is the first n bytes of the input buffer
    PACKED = "i64"  # (ptr << 32) | len: the output is elsewhere in guest memory


@dataclass(frozen=True)
class AbiOptions:
    """The user's choices of export names (None: use the defaults)."""

    function: str = DEFAULT_TRANSFORM
    alloc: str | None = None
    free: str | None = None
    init: str | None = None
    wasi_command: bool = False  # run the module's _start once per frame (WASI command mode)
    state: str = "auto"  # --state: auto (the module's exports, if any), none, memory
    finish: str | None = None  # --finish NAME (None: `finish` if exported)


@dataclass(frozen=True)
class ComponentAbi:
    """How to drive a component (see `component`): what its functions pass. Each result is
    read by what it holds (a value, or an `ok` or `err`), so only the value type is decided."""

    text: bool  # process takes and returns `string` (whole UTF-8 characters), else `list<u8>`


@dataclass(frozen=True)
class GuestAbi:
    """How to drive one module, decided once per run."""

    transform: str
    result: ResultKind
    alloc: str
    command: bool = False  # WASI command mode: _start per frame, stdin in, stdout out
    dealloc: str | None = None
    dealloc_takes_length: bool = False
    init: str | None = None
    init_returns_status: bool = False
    reactor: bool = False
    wasi: bool = False
    state: StateKind = StateKind.NONE
    state_globals: tuple[tuple[str, str], ...] = ()  # MEMORY: (reserved export, value type)
    finish: str | None = None  # called once after the last frame: () -> i64 packed
    range_dealloc: str | None = None  # frees snapshot() and finish() ranges, whatever `result`
    component: ComponentAbi | None = None  # a component: `transform`, `init`, `finish` name its
    # functions; the fields about memory, allocation and results are unused
    error_message: str | None = None  # ERROR_MESSAGE, when exported

    @property
    def one_instance(self) -> bool:
        """Whether the run must use one instance, frames in input order."""
        return self.state is not StateKind.NONE or self.finish is not None

    @property
    def why_one_instance(self) -> str:
        """Why it must (for messages: "module m.wasm keeps state across frames (exports)")."""
        if self.state is not StateKind.NONE:
            return f"keeps state across frames ({self.state.value})"
        return f"has a finish function ({self.finish})"


I32, I64 = "i32", "i64"
TRANSFORM_SIGS = {
    FuncSig((I32, I32), (I32,)): ResultKind.IN_PLACE,
    FuncSig((I32, I32), (I64,)): ResultKind.PACKED,
}
ALLOC_SIGS = (FuncSig((I32,), (I32,)),)
DEALLOC_SIGS = (FuncSig((I32, I32), ()), FuncSig((I32,), ()))
INIT_SIGS = (FuncSig((I32, I32), ()), FuncSig((I32, I32), (I32,)))
REACTOR_SIGS = (FuncSig((), ()),)
SNAPSHOT_SIGS = FINISH_SIGS = (FuncSig((), (I64,)),)
RESTORE_SIGS = (FuncSig((I32, I32), (I32,)),)


def resolve_abi(info: ModuleInfo, options: AbiOptions, source: str) -> GuestAbi:
    """Check `info` against the guest ABI and decide how to drive the module.

    Raises ModuleError naming the missing export (and listing what the module does export) or
    the export whose signature cannot be used (with the signature found and those accepted).
    """
    _check_imports(info, source)
    if options.wasi_command or (
        info.export(options.function) is None and info.export(COMMAND_START)
    ):
        if options.state == "memory" or options.finish:
            raise UsageError(
                f"{source} runs as a WASI command (a fresh instance per frame): it has no state "
                "to keep, and no finish function"
            )
        return _command_abi(info, source)
    _require_memory(info, source)
    transform_sig = _require_func(
        info, options.function, "transform", tuple(TRANSFORM_SIGS), source
    )
    alloc = _choose(info, options.alloc, ALLOCATOR_NAMES, "allocator", source)
    if alloc is None:
        raise _missing(info, " or ".join(ALLOCATOR_NAMES), "allocator", source)
    _require_func(info, alloc, "allocator", ALLOC_SIGS, source)
    result = TRANSFORM_SIGS[transform_sig]
    dealloc = _choose(info, options.free, DEALLOCATOR_NAMES, "deallocator", source)
    dealloc_sig = (
        _require_func(info, dealloc, "deallocator", DEALLOC_SIGS, source) if dealloc else None
    )
    init_sig = (
        _require_func(info, options.init, "init function", INIT_SIGS, source)
        if options.init
        else None
    )
    reactor = info.export(REACTOR_INIT) is not None
    if reactor:
        _require_func(info, REACTOR_INIT, "reactor initializer", REACTOR_SIGS, source)
    state = _state_kind(info, options.state, source)
    return GuestAbi(
        transform=options.function,
        result=result,
        alloc=alloc,
        # An in-place result never leaves anything to free; a deallocator only matters for PACKED.
        dealloc=dealloc if result is ResultKind.PACKED else None,
        dealloc_takes_length=dealloc_sig is not None and len(dealloc_sig.params) == 2,
        init=options.init,
        init_returns_status=init_sig is not None and bool(init_sig.results),
        reactor=reactor,
        wasi=any(imp.module == WASI_MODULE for imp in info.imports),
        state=state,
        finish=_finish(info, options.finish, source),
        range_dealloc=dealloc,
        error_message=_error_message(info, source),
    )


def _error_message(info: ModuleInfo, source: str) -> str | None:
    if info.export(ERROR_MESSAGE) is None:
        return None
    _require_func(info, ERROR_MESSAGE, "failure reason", FINISH_SIGS, source)
    return ERROR_MESSAGE


def _state_kind(info: ModuleInfo, mode: str, source: str) -> StateKind:
    """--state auto: the module's own snapshot and restore when it exports both (one alone is
    refused: its state would be silently lost); none: ignore them; memory: the whole instance."""
    if mode == "memory":
        return StateKind.MEMORY
    if mode == "none":
        return StateKind.NONE
    has = [name for name in (SNAPSHOT, RESTORE) if info.export(name) is not None]
    if not has:
        return StateKind.NONE
    if len(has) == 1:
        lacking = RESTORE if has == [SNAPSHOT] else SNAPSHOT
        raise ModuleError(
            f"{source}: exports {has[0]} but not {lacking}: a stateful module exports both "
            "(or run it with --state none)"
        )
    _require_func(info, SNAPSHOT, "state snapshot", SNAPSHOT_SIGS, source)
    _require_func(info, RESTORE, "state restore", RESTORE_SIGS, source)
    return StateKind.EXPORTS


def _finish(info: ModuleInfo, chosen: str | None, source: str) -> str | None:
    name = chosen or (DEFAULT_FINISH if info.export(DEFAULT_FINISH) else None)
    if name is not None:
        _require_func(info, name, "finish function", FINISH_SIGS, source)
    return name


def _command_abi(info: ModuleInfo, source: str) -> GuestAbi:
    """A WASI program run once per frame: the frame is its stdin, its stdout the output."""
    _require_func(info, COMMAND_START, "WASI command entry point", REACTOR_SIGS, source)
    return GuestAbi(
        transform=COMMAND_START, result=ResultKind.IN_PLACE, alloc="", command=True, wasi=True
    )


def _check_imports(info: ModuleInfo, source: str) -> None:
    for imp in info.imports:
        if imp.module != WASI_MODULE:
            raise ModuleError(
                f"{source}: imports {imp.module}.{imp.name} ({imp.kind}), which wasmstream does "
                f"not provide; only {WASI_MODULE} imports can be satisfied"
            )


def _require_memory(info: ModuleInfo, source: str) -> None:
    export = info.export(MEMORY_EXPORT)
    if export is None:
        raise _missing(info, MEMORY_EXPORT, "linear memory", source)
    if export.kind != "memory":
        raise ModuleError(f"{source}: export {MEMORY_EXPORT} is a {export.kind}, not a memory")


def _choose(
    info: ModuleInfo, chosen: str | None, defaults: Sequence[str], role: str, source: str
) -> str | None:
    """The export named by the user (which must exist), else the first default present."""
    if chosen is not None:
        if info.export(chosen) is None:
            raise _missing(info, chosen, role, source)
        return chosen
    return next((name for name in defaults if info.export(name) is not None), None)


def _require_func(
    info: ModuleInfo, name: str, role: str, accepted: Sequence[FuncSig], source: str
) -> FuncSig:
    export = info.export(name)
    if export is None:
        raise _missing(info, name, role, source)
    if export.sig is None:
        raise ModuleError(f"{source}: export {name} ({role}) is a {export.kind}, not a function")
    if export.sig not in accepted:
        expected = " or ".join(str(sig) for sig in accepted)
        raise ModuleError(
            f"{source}: export {name} ({role}) has signature {export.sig}; expected {expected}"
        )
    return export.sig


def _missing(info: ModuleInfo, name: str, role: str, source: str) -> ModuleError:
    exported = ", ".join(str(export) for export in info.exports) or "nothing"
    return ModuleError(f"{source}: missing export {name} ({role}); the module exports: {exported}")


def error_code_message(result: int, what: str = "output") -> str:
    who = "guest" if what == "output" else what
    return f"{who} returned error code {result}"


def output_range(
    result: int,
    kind: ResultKind,
    input_ptr: int,
    buffer_size: int,
    memory_size: int,
    max_output: int,
    what: str = "output",
) -> tuple[int, int]:
    """Where a frame's output lies in guest memory, from the transform's result.

    Shared by every engine, so that all read a result the same way and refuse the same things:
    a negative result (the guest's own error), an in-place length beyond the input buffer, a
    range outside guest memory (never read it), an output over --max-output.
    """
    if result < 0:
        raise GuestError(error_code_message(result, what))
    if kind is ResultKind.IN_PLACE:
        if result > buffer_size:
            raise GuestError(
                f"guest returned length {result}, beyond its {buffer_size}-byte buffer"
            )
        start, length = input_ptr, result
    else:
        start, length = result >> 32, result & 0xFFFFFFFF
    if start + length > memory_size:
        raise GuestError(
            f"{what} range {start:#x}..{start + length:#x} ({length} bytes) is outside guest "
            f"memory ({memory_size} bytes)"
        )
    if length > max_output and what != SNAPSHOT:  # a state is as large as it is
        raise GuestError(
            f"{what} of {length} bytes exceeds the --max-output limit of {format_size(max_output)}"
        )
    return start, length
