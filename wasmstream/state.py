"""A guest's state as bytes, and the state files a checkpoint refers to.

Two kinds of state (see `abi.StateKind`): the bytes a module's own `snapshot()` returns, kept
as they are; or an image of the whole instance (`--state memory`), made here: the mutable
globals, and the linear memory's non-zero 64 KiB pages, zlib-compressed.

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
import tempfile
import zlib
from collections.abc import Callable, Sequence

from .errors import CheckpointError, GuestError, IOFailure

PAGE = 65536
MAGIC = b"WSMEM\x01"
HEADER = struct.Struct("<II")  # pages, globals
GLOBAL = struct.Struct("<cq")  # b"i" and the integer; or b"f" and a double's bits
PAGE_INDEX = struct.Struct("<I")
ZERO_PAGE = bytes(PAGE)
GlobalValue = int | float


def encode_image(memory: memoryview, globals_: Sequence[GlobalValue]) -> bytes:
    """The whole instance's state: its globals' values and its memory's non-zero pages."""
    pages = len(memory) // PAGE
    parts = [MAGIC, HEADER.pack(pages, len(globals_))]
    for value in globals_:
        if isinstance(value, float):
            parts.append(GLOBAL.pack(b"f", struct.unpack("<q", struct.pack("<d", value))[0]))
        else:
            parts.append(GLOBAL.pack(b"i", value))
    compressor = zlib.compressobj(1)  # fast: a checkpoint must not stall the run
    for index in range(pages):
        page = memory[index * PAGE : (index + 1) * PAGE]
        if page != ZERO_PAGE:
            parts.append(compressor.compress(PAGE_INDEX.pack(index)))
            parts.append(compressor.compress(page))
    parts.append(compressor.flush())
    return b"".join(parts)


def decode_image(
    image: bytes,
) -> tuple[int, list[GlobalValue], Callable[[Callable[[int, bytes], None]], None]]:
    """(pages, globals, pages_into): `pages_into(put)` calls put(index, page) for each saved
    non-zero page. Raises GuestError for an image that is not one."""
    if not image.startswith(MAGIC) or len(image) < len(MAGIC) + HEADER.size:
        raise GuestError("the saved state is not a whole-instance image")
    pages, count = HEADER.unpack_from(image, len(MAGIC))
    at = len(MAGIC) + HEADER.size
    values: list[GlobalValue] = []
    for _ in range(count):
        kind, raw = GLOBAL.unpack_from(image, at)
        at += GLOBAL.size
        values.append(struct.unpack("<d", struct.pack("<q", raw))[0] if kind == b"f" else raw)
    body = image[at:]

    def pages_into(put: Callable[[int, bytes], None]) -> None:
        data = zlib.decompress(body)
        step = PAGE_INDEX.size + PAGE
        for offset in range(0, len(data), step):
            (index,) = PAGE_INDEX.unpack_from(data, offset)
            put(index, data[offset + PAGE_INDEX.size : offset + step])

    return pages, values, pages_into


def file_for(checkpoint_path: str, state: bytes) -> tuple[str, str]:
    """(file name beside the checkpoint, full sha256) for `state`."""
    digest = hashlib.sha256(state).hexdigest()
    return f"{os.path.basename(checkpoint_path)}.state-{digest[:16]}", digest


def write(checkpoint_path: str, state: bytes) -> tuple[str, str]:
    """Write `state` durably beside the checkpoint (unless that file is already there);
    returns (file name, sha256). Raises IOFailure."""
    name, digest = file_for(checkpoint_path, state)
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    target = os.path.join(folder, name)
    if os.path.exists(target):
        return name, digest
    try:
        fd, temp = tempfile.mkstemp(prefix=".", suffix=".state.tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(state)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
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
