"""The component contract: which exports of a WebAssembly component wasmstream uses, and how.

The component analogue of `abi` (whose `GuestAbi` it produces, so the run drives a component
exactly as it drives a core module). The contract is the WIT package shipped in
`wasmstream/wit/transform.wit` (`wasmstream:transform@0.1.0`; README, "Components"):

- `process` takes `list<u8>` (bytes) or `string` (text) and returns the same type, or
  `result<T, string>` whose `err` fails the frame with the guest's message;
- `init: func(config: list<u8>) -> result<_, string>` (optional) gets the `--config` bytes;
- `finish: func() -> result<T, string>` (or `-> T`; optional) is called once after the last frame;
- `snapshot: func() -> list<u8>` and `restore: func(state: list<u8>) -> result<_, string>`
  (optional, both or neither) keep the guest's state in checkpoints.

Decided once per run from the component's types alone, engine-neutrally: an engine describes
what it found as `ComponentInfo` (WIT types written as WIT text), and everything else is refused
here, before any data is read, naming what was found and what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasmstream.errors import ModuleError, UsageError
from wasmstream.guest.abi import (
    DEFAULT_FINISH,
    DEFAULT_TRANSFORM,
    RESTORE,
    SNAPSHOT,
    AbiOptions,
    ComponentAbi,
    GuestAbi,
    ResultKind,
    StateKind,
)

WIT_PACKAGE = "wasmstream:transform@0.1.0"
PROCESS, INIT = "process", "init"
BYTES, TEXT = "list<u8>", "string"
WASI_PREFIX = "wasi:"
RUN_INTERFACE, RUN = "wasi:cli/run@0.2", "run"  # a p2 command: its instance export, function


@dataclass(frozen=True)
class WitFunc:
    """A component function's type, each value type written as WIT (`list<u8>`, `string`)."""

    params: tuple[tuple[str, str], ...]  # (name, type)
    result: str | None = None

    @property
    def param_types(self) -> tuple[str, ...]:
        return tuple(kind for _, kind in self.params)

    def __str__(self) -> str:
        params = ", ".join(f"{name}: {kind}" for name, kind in self.params)
        return f"func({params})" + (f" -> {self.result}" if self.result else "")


@dataclass(frozen=True)
class ComponentItem:
    """An import or export: its name, kind (func, instance, type, …) and, for a function, type."""

    name: str
    kind: str
    func: WitFunc | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.func}" if self.func else f"{self.name} ({self.kind})"


@dataclass(frozen=True)
class ComponentInfo:
    exports: tuple[ComponentItem, ...]
    imports: tuple[ComponentItem, ...]

    def export(self, name: str) -> ComponentItem | None:
        return next((item for item in self.exports if item.name == name), None)


def fallible(kind: str) -> str:
    return f"result<{kind}, string>"


UNIT_RESULT = "result<_, string>"
INIT_PARAM = "config"


def _process_sigs(value: str) -> list[WitFunc]:
    return [WitFunc((("frame", value),), result) for result in (value, fallible(value))]


def resolve_component(info: ComponentInfo, options: AbiOptions, source: str) -> GuestAbi:
    """Check `info` against the contract and decide how to drive the component.

    Raises ModuleError for a missing or mistyped export or an import wasmstream cannot satisfy,
    UsageError for an option that has no meaning for a component.
    """
    _refuse_options(options, source)
    _check_imports(info, source)
    name = PROCESS if options.function == DEFAULT_TRANSFORM else options.function
    run = next((e.name for e in info.exports if e.name.startswith(RUN_INTERFACE)), None)
    if options.wasi_command or (info.export(name) is None and run is not None):
        return _command_abi(run, options, source)
    process = _require(info, name, "transform", _process_sigs(BYTES) + _process_sigs(TEXT), source)
    value = process.param_types[0]
    init = options.init or (INIT if info.export(INIT) else None)
    if init is not None:
        _require(info, init, "init function", _unit_sigs(((INIT_PARAM, BYTES),)), source)
    finish = options.finish or (DEFAULT_FINISH if info.export(DEFAULT_FINISH) else None)
    if finish is not None:
        finish_sigs = [WitFunc((), value), WitFunc((), fallible(value))]
        _require(info, finish, "finish function", finish_sigs, source)
    return GuestAbi(
        transform=name,
        result=ResultKind.PACKED,  # unused: a component's results are values, not ranges
        alloc="",
        init=init,
        state=_state_kind(info, options.state, source),
        finish=finish,
        wasi=True,
        component=ComponentAbi(text=value == TEXT),
    )


def _unit_sigs(params: tuple[tuple[str, str], ...]) -> list[WitFunc]:
    return [WitFunc(params, UNIT_RESULT), WitFunc(params)]


def _refuse_options(options: AbiOptions, source: str) -> None:
    core_only = [
        flag
        for flag, given in (("--alloc", options.alloc), ("--free", options.free))
        if given is not None
    ]
    if core_only:
        raise UsageError(
            f"{' and '.join(core_only)}: {source} is a component, whose canonical ABI allocates "
            "for itself; these options are for core modules"
        )
    if options.state == "memory":
        raise UsageError(
            f"--state memory: {source} is a component, whose instance cannot be captured whole; "
            f"export {SNAPSHOT} and {RESTORE} to keep its state"
        )


def _command_abi(run: str | None, options: AbiOptions, source: str) -> GuestAbi:
    """A WASI p2 command component, run once per frame as a core WASI command is."""
    if run is None:
        raise ModuleError(
            f"{source}: --wasi-command: the component exports no {RUN_INTERFACE}.x interface "
            "(wasi:cli/run), so it is not a WASI p2 command"
        )
    if options.finish or options.init:
        raise UsageError(
            f"{source} runs as a WASI command (a fresh instance per frame): it has no init "
            "and no finish function"
        )
    return GuestAbi(
        transform=run,
        result=ResultKind.IN_PLACE,  # unused
        alloc="",
        command=True,
        wasi=True,
        component=ComponentAbi(text=False),
    )


def _check_imports(info: ComponentInfo, source: str) -> None:
    for item in info.imports:
        if not item.name.startswith(WASI_PREFIX):
            raise ModuleError(
                f"{source}: imports {item.name} ({item.kind}), which wasmstream does not "
                f"provide; a component may import only WASI p2 interfaces ({WASI_PREFIX}…)"
            )


def _state_kind(info: ComponentInfo, mode: str, source: str) -> StateKind:
    """As for core modules: both snapshot and restore, or neither (unless --state none)."""
    if mode == "none":
        return StateKind.NONE
    has = [name for name in (SNAPSHOT, RESTORE) if info.export(name) is not None]
    if not has:
        return StateKind.NONE
    if len(has) == 1:
        lacking = RESTORE if has == [SNAPSHOT] else SNAPSHOT
        raise ModuleError(
            f"{source}: exports {has[0]} but not {lacking}: a stateful component exports both "
            "(or run it with --state none)"
        )
    _require(info, SNAPSHOT, "state snapshot", [WitFunc((), BYTES)], source)
    _require(info, RESTORE, "state restore", _unit_sigs((("state", BYTES),)), source)
    return StateKind.EXPORTS


def _require(
    info: ComponentInfo, name: str, role: str, accepted: list[WitFunc], source: str
) -> WitFunc:
    """The export `name`, whose type must be one of `accepted` (parameter names aside)."""
    item = info.export(name)
    if item is None:
        exported = ", ".join(str(export) for export in info.exports) or "nothing"
        raise ModuleError(
            f"{source}: missing export {name} ({role}); the component exports: {exported}"
        )
    if item.func is None:
        raise ModuleError(f"{source}: export {name} ({role}) is a {item.kind}, not a function")
    shape = (item.func.param_types, item.func.result)
    if all(shape != (sig.param_types, sig.result) for sig in accepted):
        expected = " or ".join(str(sig) for sig in accepted)
        raise ModuleError(
            f"{source}: export {name} ({role}) has type {item.func}; expected {expected} "
            f"(the WIT package {WIT_PACKAGE})"
        )
    return item.func
