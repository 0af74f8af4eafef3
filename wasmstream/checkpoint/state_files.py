"""A guest's state as bytes, and the state files a checkpoint refers to.

Two kinds of state (see `abi.StateKind`): the bytes a module's own `snapshot()` returns, kept
as they are; or an image of the whole instance (`--state memory`), made here: the mutable
globals, and the linear memory's non-zero 64 KiB pages. State files are zlib-compressed.

A state is saved beside the checkpoint, in a file named by its digest
(`CHECKPOINT.state-<first 16 hex digits of its sha256>`), written and fsynced before the
checkpoint that names it is renamed into place; superseded files are removed after.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import struct
import threading
import zlib
from collections.abc import Sequence

from wasmstream.checkpoint.durable import replace_durably
from wasmstream.errors import CheckpointError, IOFailure, StateRefused
from wasmstream.guest.abi import WASM_PAGE

MAGIC = b"WSMEM\x01"
HEADER = struct.Struct("<II")  # pages, globals
GLOBAL = struct.Struct("<cq")  # b"i" and the integer; or b"f" and a double's bits
PAGE_INDEX = struct.Struct("<I")
ZERO_PAGE = bytes(WASM_PAGE)
GlobalValue = int | float


def encode_image(memory: memoryview, globals_: Sequence[GlobalValue]) -> bytes:
    """The whole instance's state: its globals' values and its memory's non-zero pages, each
    with its index. Uncompressed: this runs between two frames, and copying is all it does
    (the state file is compressed later, on another thread: see `write`)."""
    pages = len(memory) // WASM_PAGE
    parts: list[bytes | memoryview] = [MAGIC, HEADER.pack(pages, len(globals_))]
    for value in globals_:
        if isinstance(value, float):
            parts.append(GLOBAL.pack(b"f", struct.unpack("<q", struct.pack("<d", value))[0]))
        else:
            parts.append(GLOBAL.pack(b"i", value))
    for index in range(pages):
        page = memory[index * WASM_PAGE : (index + 1) * WASM_PAGE]
        if page != ZERO_PAGE:
            parts += (PAGE_INDEX.pack(index), page)
    return b"".join(parts)


def decode_image(image: bytes) -> tuple[int, list[GlobalValue], list[tuple[int, memoryview]]]:
    """(pages, globals, [(index, page)] of the saved non-zero pages). Raises StateRefused for
    bytes that are not such an image."""
    try:
        if not image.startswith(MAGIC):
            raise ValueError("no header")
        pages, count = HEADER.unpack_from(image, len(MAGIC))
        at = len(MAGIC) + HEADER.size
        values: list[GlobalValue] = []
        for _ in range(count):
            kind, raw = GLOBAL.unpack_from(image, at)
            at += GLOBAL.size
            values.append(struct.unpack("<d", struct.pack("<q", raw))[0] if kind == b"f" else raw)
        view, step = memoryview(image), PAGE_INDEX.size + WASM_PAGE
        if (len(image) - at) % step:
            raise ValueError("a page is cut short")
        saved = [
            (
                PAGE_INDEX.unpack_from(image, offset)[0],
                view[offset + PAGE_INDEX.size : offset + step],
            )
            for offset in range(at, len(image), step)
        ]
    except (ValueError, struct.error) as error:
        raise StateRefused(f"the saved state is not a whole-instance image ({error})") from None
    return pages, values, saved


def compress(state: bytes, parts: int = 1) -> bytes:
    """zlib at its fastest setting that still finds runs (counters, tables): Z_RLE. With
    `parts` > 1, that many pieces are compressed at once on as many threads (zlib releases the
    GIL), as independent zlib streams one after the other (see `decompress`)."""
    size = -(-len(state) // parts) if state else 0
    pieces = [state[at : at + size] for at in range(0, len(state), size)] if size else [b""]
    streams: list[bytes] = [b""] * len(pieces)

    def one(n: int) -> None:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        streams[n] = compressor.compress(pieces[n]) + compressor.flush()

    helpers = [threading.Thread(target=one, args=(n,)) for n in range(1, len(pieces))]
    for helper in helpers:
        helper.start()
    one(0)
    for helper in helpers:
        helper.join()
    return b"".join(streams)


def decompress(data: bytes) -> bytes:
    """The bytes `compress` was given. Raises zlib.error."""
    out = []
    while True:
        stream = zlib.decompressobj()
        out.append(stream.decompress(data))
        if not stream.eof:
            raise zlib.error("truncated")
        data = stream.unused_data
        if not data:
            return b"".join(out)


def file_for(checkpoint_path: str, state: bytes) -> tuple[str, str]:
    """(file name beside the checkpoint, full sha256) for `state` (of its bytes, uncompressed)."""
    digest = hashlib.sha256(state).hexdigest()
    return f"{os.path.basename(checkpoint_path)}.state-{digest[:16]}", digest


def write(checkpoint_path: str, state: bytes, parts: int = 1) -> tuple[str, str]:
    """Write `state` durably beside the checkpoint, compressed (unless that file is already
    there); returns (file name, sha256). Raises IOFailure. zlib releases the GIL: on a thread of
    its own, this runs while the guest goes on; `parts`: compress on that many threads."""
    name, digest = file_for(checkpoint_path, state)
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    target = os.path.join(folder, name)
    if os.path.exists(target):
        return name, digest
    try:
        replace_durably(target, compress(state, parts), ".state.tmp")
    except OSError as error:
        raise IOFailure(f"cannot save state {target}: {error.strerror}") from None
    return name, digest


def read(checkpoint_path: str, name: str, sha256: str) -> bytes:
    """The state file `name` beside the checkpoint, checked against its digest.
    Raises CheckpointError."""
    if os.path.basename(name) != name or not name.startswith(os.path.basename(checkpoint_path)):
        raise CheckpointError(f"checkpoint {checkpoint_path} names a state file elsewhere: {name}")
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), name)
    try:
        with open(path, "rb") as source:
            data = source.read()
    except OSError as error:
        raise CheckpointError(
            f"cannot read the state saved with checkpoint {checkpoint_path}: {path}: "
            f"{error.strerror}"
        ) from None
    try:
        data = decompress(data)
    except zlib.error:
        data = b""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(
            f"state file {path} does not hold the state checkpoint {checkpoint_path} recorded"
        )
    return data


def remove_others(checkpoint_path: str, keep: str | None) -> None:
    """Remove the state files of this checkpoint but `keep` (superseded, or left by a crash
    between writing a state and the checkpoint naming it)."""
    pattern = f"{glob.escape(os.path.abspath(checkpoint_path))}.state-*"
    for path in glob.glob(pattern):
        if os.path.basename(path) != keep:
            with contextlib.suppress(OSError):
                os.unlink(path)
