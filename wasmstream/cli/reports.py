"""`wasmstream inspect` and `wasmstream checkpoint show`: plain reports for people and scripts.

Each report is built as data (a dict that `--json` prints as it is) and rendered as text by a
separate small function, so what the JSON says and what the text says cannot drift apart.
"""

from __future__ import annotations

import os
import shlex
import time
from datetime import datetime
from typing import Any

import msgspec

from wasmstream.checkpoint import record as checkpoint
from wasmstream.engines import (
    DEFAULT_ENGINE,
    CompiledComponent,
    CompiledModule,
    ComponentEngine,
    Sandbox,
    get_engine,
    read_module,
)
from wasmstream.engines.base import is_component
from wasmstream.errors import CheckpointError, GuestError, ModuleError, UsageError
from wasmstream.guest.abi import (
    ALLOCATOR_NAMES,
    COMMAND_START,
    DEFAULT_INIT,
    INIT_SIGS,
    MEMORY_EXPORT,
    WASI_MODULE,
    WASM_PAGE,
    AbiOptions,
    ExportDesc,
    GuestAbi,
    ModuleInfo,
    ResultKind,
    StateKind,
    resolve_abi,
)
from wasmstream.guest.component_abi import (
    WASI_PREFIX,
    WIT_PACKAGE,
    ComponentItem,
    resolve_component,
)
from wasmstream.stream.locks import checkpoint_holder
from wasmstream.units import format_size, plural

INIT_NAMES = ("init", "configure", "setup")
START_TIMEOUT = 2.0  # seconds an instance may take to start when inspect tries one
RESULT_FORMS = {
    ResultKind.IN_PLACE: "i32: the output is in place",
    ResultKind.PACKED: "i64: the output is elsewhere, packed (ptr << 32 | len)",
}


def inspect_module(
    path: str, options: AbiOptions, engine_name: str = DEFAULT_ENGINE
) -> dict[str, Any]:
    """What MODULE exports and imports, the ABI wasmstream would use, and what is missing."""
    wasm = read_module(path)
    component = is_component(wasm)
    # A deadline, so that a module whose start function never returns cannot hang inspect.
    engine = get_engine(engine_name, Sandbox(timeout=START_TIMEOUT), False, component)
    try:
        if component:
            assert isinstance(engine, ComponentEngine)  # the others were refused above
            return _component_report(path, wasm, engine.compile_component(wasm, path), options)
        compiled = engine.compile(wasm, path)
        report = _report(path, wasm, compiled, options)
    finally:
        engine.close()
    return report


def _component_report(
    path: str, wasm: bytes, compiled: CompiledComponent, options: AbiOptions
) -> dict[str, Any]:
    """`_report` for a component: its exports and imports with WIT types, and how it would
    run under the wasmstream:transform contract (or why it cannot)."""
    info = compiled.component_info
    report: dict[str, Any] = {
        "module": path,
        "size": len(wasm),
        "kind": "component",
        "exports": [_item_record(item) for item in info.exports],
        "imports": [str(item) for item in info.imports],
        "wasi": any(item.name.startswith(WASI_PREFIX) for item in info.imports),
        "missing": [],
    }
    try:
        abi = resolve_component(info, options, path)
        compiled.check_linkable()
    except (ModuleError, UsageError) as error:
        report["abi"] = None
        report["problem"] = str(error).removeprefix(f"{path}: ")
        return report
    problem = _start_problem(compiled, abi)
    if problem is not None:
        report["abi"] = None
        report["problem"] = problem
        return report
    assert abi.component is not None
    if abi.command:
        mode = (
            f"WASI p2 command: {abi.transform} once per frame, frame on stdin, output from stdout"
        )
        report["abi"] = {"mode": mode}
        return report
    value = "text (string): whole UTF-8 characters" if abi.component.text else "bytes (list<u8>)"
    report["abi"] = {
        "mode": f"component ({WIT_PACKAGE})",
        "transform": f"{abi.transform}, each frame as {value}",
        "init": f"{abi.init} (gets the --config bytes)" if abi.init else "none",
        "state": (
            "stateful: its own snapshot and restore exports (kept in checkpoints)"
            if abi.state is StateKind.EXPORTS
            else "none"
        ),
        "finish": f"{abi.finish} (called once after the last frame)" if abi.finish else "none",
    }
    return report


def _item_record(item: ComponentItem) -> dict[str, Any]:
    record: dict[str, Any] = {"name": item.name, "kind": item.kind}
    if item.func is not None:
        record["type"] = str(item.func)
    record["text"] = str(item)
    return record


def _report(
    path: str, wasm: bytes, compiled: CompiledModule, options: AbiOptions
) -> dict[str, Any]:
    info = compiled.info
    report: dict[str, Any] = {
        "module": path,
        "size": len(wasm),
        "exports": [_export_record(e) for e in info.exports],
        "imports": [f"{i.module}.{i.name} ({i.kind})" for i in info.imports],
        "wasi": any(i.module == WASI_MODULE for i in info.imports),
    }
    try:
        abi = resolve_abi(info, options, path)
    except ModuleError as error:
        report["abi"] = None
        report["problem"] = str(error).removeprefix(f"{path}: ")
        report["missing"] = _missing(info, options)
        return report
    problem = None if abi.command else _start_problem(compiled, abi)
    if problem is not None:
        report["abi"] = None
        report["problem"] = problem
        report["missing"] = []
        return report
    if abi.command:
        mode = "WASI command: _start runs once per frame, frame on stdin, output from stdout"
        report["abi"] = {"mode": mode}
    else:
        report["abi"] = {
            "mode": "reactor (_initialize first)" if abi.reactor else "library",
            "transform": f"{abi.transform} -> {RESULT_FORMS[abi.result]}",
            "allocator": abi.alloc,
            "deallocator": abi.dealloc or "none",
            "init": abi.init or "none",
            "state": _state_text(abi, wasm, path),
            "finish": f"{abi.finish} (called once after the last frame)" if abi.finish else "none",
        }
        if abi.init is None and _takes_config(info, DEFAULT_INIT):
            report["abi"]["init"] = f"{DEFAULT_INIT}, when run with --config TEXT|@FILE"
        else:
            named = next(
                (n for n in INIT_NAMES if abi.init is None and _takes_config(info, n)), None
            )
            if named is not None:  # a name --config alone does not reach
                report["hint"] = (
                    f"the module exports {named}: if it takes configuration, run with "
                    f"--init {named} --config TEXT|@FILE (without --init it is never called)"
                )
    report["missing"] = []
    return report


def _takes_config(info: ModuleInfo, name: str) -> bool:
    export = info.export(name)
    return export is not None and export.sig in INIT_SIGS


def _state_text(abi: GuestAbi, wasm: bytes, path: str) -> str:
    """Whether the module is stateful, and how its state would be kept in checkpoints."""
    if abi.state is StateKind.EXPORTS:
        return "stateful: its own snapshot and restore exports (kept in checkpoints)"
    if abi.state is StateKind.MEMORY:
        return "whole instance (--state memory)"
    from wasmstream.guest.memory_state import instrument

    try:
        _, capture = instrument(wasm, path)
    except ModuleError as error:
        reason = str(error).removeprefix(f"{path}: --state memory ")
        return f"none exported; --state memory {reason}"
    return (
        f"none exported; --state memory would keep its linear memory and "
        f"{len(capture.globals)} mutable globals"
    )


def _start_problem(compiled: CompiledModule, abi: GuestAbi) -> str | None:
    """Why an instance cannot start (a start function or _initialize that traps or never
    returns, an allocator that fails), or None: "ready to run" must mean it."""
    try:
        compiled.instantiate(abi, WASM_PAGE, b"").close()
    except (GuestError, ModuleError) as error:
        return str(error)
    return None


def _export_record(export: ExportDesc) -> dict[str, Any]:
    """An export for --json: name, kind, and a function's params and results or a memory's
    pages; `text` is how the plain report shows it."""
    record: dict[str, Any] = {"name": export.name, "kind": export.kind}
    if export.sig is not None:
        record["params"] = list(export.sig.params)
        record["results"] = list(export.sig.results)
    if export.pages is not None:
        record["min_pages"], record["max_pages"] = export.pages
    record["text"] = _export(export)
    return record


def _export(export: ExportDesc) -> str:
    if export.pages is not None:
        low, high = export.pages
        top = format_size(high * WASM_PAGE) if high is not None else "no maximum"
        return f"{export.name} (memory: {format_size(low * WASM_PAGE)} initial, {top})"
    return str(export)


def _missing(info: ModuleInfo, options: AbiOptions) -> list[str]:
    wanted = {
        MEMORY_EXPORT: [MEMORY_EXPORT],
        "allocator": [options.alloc] if options.alloc else list(ALLOCATOR_NAMES),
        "transform": [options.function, COMMAND_START],
    }
    if options.init:
        wanted["init function"] = [options.init]
    return [
        f"{role}: one of {', '.join(names)}"
        for role, names in wanted.items()
        if not any(info.export(name) for name in names)
    ]


def format_module_report(report: dict[str, Any]) -> str:
    kind = ", a component" if report.get("kind") == "component" else ""
    lines = [f"module   {report['module']} ({report['size']} bytes{kind})", "exports"]
    lines += [f"  {export['text']}" for export in report["exports"]] or ["  (none)"]
    lines.append("imports")
    lines += [f"  {imp}" for imp in report["imports"]] or ["  (none)"]
    if report["wasi"]:
        lines.append("  WASI: linked to a sandbox granting nothing but --dir, --env and --arg")
    if report["abi"] is None:
        lines.append(f"cannot run: {report['problem']}")
        lines += [f"  missing {what}" for what in report["missing"]]
    else:
        lines.append("guest ABI" if report.get("kind") != "component" else "contract")
        lines += [f"  {key:<12}{value}" for key, value in report["abi"].items()]
        lines.append("ready to run")
        if report.get("hint"):
            lines.append(f"hint: {report['hint']}")
    return "\n".join(lines)


def checkpoint_report(path: str) -> dict[str, Any]:
    saved = checkpoint.load(path)
    if saved is None:
        raise CheckpointError(f"no checkpoint at {path}")
    sizes = [i.size for i in saved.inputs]
    total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None
    done = saved.position.input_bytes
    updated = datetime.fromisoformat(saved.updated).timestamp()
    holder = checkpoint_holder(path) if saved.status == "running" else None
    status: str = saved.status
    if status == "running" and holder is None:
        status = "stopped"  # it never recorded its end, and no process holds its lock: killed
    return {
        "checkpoint": path,
        "status": status,
        "pid": holder or None,
        "continue_with": (
            f"wasmstream resume --checkpoint {shlex.quote(path)}"
            if status in ("stopped", "interrupted")
            else None
        ),
        "module": _shown(saved.module.path),
        "inputs": [_shown(i.path) for i in saved.inputs],
        "output": _shown(saved.output) if saved.output else "<stdout>",
        "input_bytes_done": done,
        "input_bytes_total": total,
        "percent_done": round(100 * done / total, 1) if total else None,
        "frames_done": saved.position.frames,
        "output_bytes": saved.position.output_bytes,
        "age_seconds": round(time.time() - updated, 1),
        "last_error": saved.failure.message if saved.failure else None,
        "state": (
            {"kind": saved.state.kind, "size": saved.state.size, "file": saved.state.file}
            if saved.state
            else None
        ),
        "record": msgspec.to_builtins(saved),
    }


def _shown(recorded: str) -> str:
    """A recorded path for people: decoded, its bytes that are not UTF-8 as \\xHH escapes."""
    return os.fsencode(checkpoint.text_path(recorded)).decode("utf-8", "backslashreplace")


def format_checkpoint_report(report: dict[str, Any]) -> str:
    percent = report["percent_done"]
    progress = f"{report['input_bytes_done']} bytes"
    if percent is not None:
        progress += f" of {report['input_bytes_total']} ({percent}%)"
    lines = [
        f"checkpoint  {report['checkpoint']}",
        f"status      {_STATUS_TEXT[report['status']]}",
        f"module      {report['module']}",
        f"inputs      {', '.join(report['inputs'])}",
        f"done        {progress}, {plural(report['frames_done'], 'frame')}",
        f"output      {report['output']}: {report['output_bytes']} bytes written",
        f"updated     {_age(report['age_seconds'])} ago",
    ]
    saved_state = report["state"]
    if saved_state is not None:
        kind = {"exports": "the module's snapshot", "memory": "whole instance"}[saved_state["kind"]]
        lines.append(
            f"state       {kind}, {format_size(saved_state['size'])} ({saved_state['file']})"
        )
    if report["last_error"]:
        lines.append(f"last error  {report['last_error']}")
    if report["status"] == "running" and report["pid"]:
        lines[1] += f" (PID {report['pid']})"
    if report["continue_with"]:
        lines.append(f"continue    {report['continue_with']}")
    return "\n".join(lines)


_STATUS_TEXT = {
    "running": "running",
    "stopped": "not running: the run was killed or crashed (no process holds its lock)",
    "interrupted": "interrupted",
    "complete": "complete",
    "failed": "failed",
}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
