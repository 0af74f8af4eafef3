"""Preparing a module for whole-instance state capture (`--state memory`), before it is compiled.

A module keeps state in linear memory and in mutable globals; the host can read and write its
exported memory, but not globals the module does not export. So, as Wizer does, the binary is
rewritten to export every mutable global under a reserved name (`__wasmstream_global_N`, N its
index): only the export section changes, every function and index stays as it was. Modules this
cannot capture are refused here, naming the reason: imported memories, tables or globals (their
contents live outside the instance), several memories, and globals of reference or vector type
(no bytes to save).

Pure: bytes in, bytes out; the checkpoint keeps the sha256 of the original module.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasmstream.errors import ModuleError

GLOBAL_PREFIX = "__wasmstream_global_"
VALUE_TYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64"}
REFERENCE_TYPES = {0x70: "funcref", 0x6F: "externref", 0x7B: "v128"}
IMPORT_KINDS = {0: "function", 1: "table", 2: "memory", 3: "global", 4: "tag"}
EXPORT_GLOBAL = 3
IMPORT, MEMORY, GLOBAL, EXPORT = 2, 5, 6, 7
AFTER_EXPORTS = (8, 9, 12, 10, 11)  # start, element, data count, code, data: exports go before


@dataclass(frozen=True)
class Capture:
    """What `--state memory` saves of a module: its mutable globals (reserved export name and
    value type), and the one linear memory."""

    globals: tuple[tuple[str, str], ...]


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("unexpected end")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    def skip(self, count: int) -> None:
        if self.pos + count > len(self.data):
            raise ValueError("unexpected end")
        self.pos += count

    def name(self) -> str:
        length = self.uleb()
        start = self.pos
        self.skip(length)
        return self.data[start : self.pos].decode("utf-8", errors="replace")

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


Section = tuple[int, int, int, int]  # id, start of the header, of the content, end


def _sections(wasm: bytes) -> list[Section]:
    reader = _Reader(wasm, 8)
    found = []
    while reader.pos < len(wasm):
        header = reader.pos
        section = reader.byte()
        size = reader.uleb()
        start = reader.pos
        reader.skip(size)
        found.append((section, header, start, reader.pos))
    return found


def _check_imports(reader: _Reader, source: str) -> None:
    for _ in range(reader.uleb()):
        module, name = reader.name(), reader.name()
        kind = reader.byte()
        if kind != 0:
            what = IMPORT_KINDS.get(kind, f"kind {kind}")
            raise ModuleError(
                f"{source}: --state memory cannot capture a module that imports a {what} "
                f"({module}.{name}): its contents live outside the instance"
            )
        reader.uleb()


def _skip_init_expr(reader: _Reader) -> None:
    """A constant expression, up to its `end`: immediates are skipped by opcode."""
    while True:
        op = reader.byte()
        if op == 0x0B:
            return
        if op in (0x41, 0x42, 0x23, 0xD2):  # i32.const, i64.const (LEB), global.get, ref.func
            reader.uleb()  # a signed LEB has the same length as an unsigned one
        elif op == 0x43:
            reader.skip(4)
        elif op == 0x44:
            reader.skip(8)
        elif op == 0xD0:
            reader.byte()
        elif op == 0xFD:
            reader.uleb()
            reader.skip(16)
        elif op not in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const arithmetic
            raise ValueError(f"unknown opcode {op:#x} in a constant expression")


def _mutable_globals(reader: _Reader, source: str) -> list[tuple[int, str]]:
    found = []
    for index in range(reader.uleb()):
        code = reader.byte()
        mutable = reader.byte() == 1
        _skip_init_expr(reader)
        if not mutable:
            continue
        if code not in VALUE_TYPES:
            kind = REFERENCE_TYPES.get(code, f"type {code:#x}")
            raise ModuleError(
                f"{source}: --state memory cannot capture mutable global {index} of type {kind}: "
                "only number-typed globals have a value to save"
            )
        found.append((index, VALUE_TYPES[code]))
    return found


def _export_names(reader: _Reader) -> list[str]:
    names = []
    for _ in range(reader.uleb()):
        names.append(reader.name())
        reader.byte()
        reader.uleb()
    return names


def instrument(wasm: bytes, source: str) -> tuple[bytes, Capture]:
    """`wasm` with every mutable global exported under a reserved name, and what to capture.
    Raises ModuleError for a module `--state memory` cannot capture (or cannot parse)."""
    try:
        return _instrument(wasm, source)
    except (ValueError, IndexError) as error:
        raise ModuleError(
            f"{source}: cannot read the module to capture its state: {error}"
        ) from None


def _instrument(wasm: bytes, source: str) -> tuple[bytes, Capture]:
    sections = _sections(wasm)
    memories = 0
    mutable: list[tuple[int, str]] = []
    exports: tuple[int, int, int] | None = None
    for section, header, start, end in sections:
        if section == IMPORT:
            _check_imports(_Reader(wasm[:end], start), source)
        elif section == MEMORY:
            memories += _Reader(wasm[:end], start).uleb()
        elif section == GLOBAL:
            mutable = _mutable_globals(_Reader(wasm[:end], start), source)
        elif section == EXPORT:
            exports = (header, start, end)
    if memories > 1:
        raise ModuleError(
            f"{source}: --state memory cannot capture a module with {memories} memories: "
            "only one linear memory is saved"
        )
    names = _export_names(_Reader(wasm, exports[1])) if exports else []
    if any(name.startswith(GLOBAL_PREFIX) for name in names):
        raise ModuleError(f"{source}: exports a name reserved by wasmstream ({GLOBAL_PREFIX}…)")
    added = b"".join(
        uleb(len(name)) + name + bytes([EXPORT_GLOBAL]) + uleb(index)
        for index, name in ((i, f"{GLOBAL_PREFIX}{i}".encode()) for i, _ in mutable)
    )
    capture = Capture(tuple((f"{GLOBAL_PREFIX}{i}", kind) for i, kind in mutable))
    return _with_exports(wasm, sections, exports, len(names) + len(mutable), added), capture


def _with_exports(
    wasm: bytes,
    sections: list[Section],
    exports: tuple[int, int, int] | None,
    count: int,
    added: bytes,
) -> bytes:
    """`wasm` with its export section replaced by one of `count` entries: the old ones, then
    `added` (or a new section where one belongs, if there was none)."""
    if exports is not None:
        header, start, end = exports
        old = _Reader(wasm, start)
        old.uleb()
        content = uleb(count) + wasm[old.pos : end] + added
        return wasm[:header] + _section(EXPORT, content) + wasm[end:]
    at = next((header for sid, header, _, _ in sections if sid in AFTER_EXPORTS), len(wasm))
    return wasm[:at] + _section(EXPORT, uleb(count) + added) + wasm[at:]


def _section(section: int, content: bytes) -> bytes:
    return bytes([section]) + uleb(len(content)) + content
