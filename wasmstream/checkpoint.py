"""The checkpoint sidecar: what a run has durably done, so a later run can continue exactly.

Invariant: a checkpoint never claims input whose output is not durably written. The output is
fsynced (when it is a regular file) before the checkpoint that covers it is written, and the
checkpoint itself is replaced atomically (temp file in the same folder, fsync, rename, fsync
the folder). A checkpoint that cannot be parsed is never overwritten or deleted.

Everything here is plain data and checks on it; `core` decides when to save.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Literal

import msgspec

from .errors import CheckpointError

FORMAT_VERSION = 1
HEAD_BYTES = 64 * 1024  # inputs are identified by the hash of their first 64 KiB
Status = Literal["running", "complete", "failed"]


class ModuleRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str
    sha256: str


class OutputOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every option that changes the output: resuming with any of them changed is refused."""

    function: str
    alloc: str | None
    free: str | None
    init: str | None
    config_sha256: str
    frame_size: int
    framing: str = "fixed"
    delimiter: str = "\n"  # latin-1: one byte, any value
    oversize: str = "error"
    on_error: str = "fail"
    wasi_command: bool = False


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How to re-run the job (`wasmstream resume`); options here do not change the output."""

    config_arg: str | None = None  # --config as given: TEXT or @FILE
    jobs: int
    queue_depth: int | None = None
    checkpoint_interval: float
    checkpoint_every: int | None = None
    timeout: float | None = None
    fuel: int | None = None
    max_memory: int | None = None
    max_output: int | None = None
    env: list[tuple[str, str]] = msgspec.field(default_factory=list)
    dirs: list[tuple[str, str, bool]] = msgspec.field(default_factory=list)
    dead_letter: str | None = None
    linger: float | None = None
    overload: str = "block"
    drop_log: str | None = None


class InputRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str  # absolute, or "-" for standard input
    regular: bool
    size: int | None = None
    mtime_ns: int | None = None
    device: int | None = None
    inode: int | None = None
    head_length: int = 0
    head_sha256: str | None = None


class Position(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    input_bytes: int = 0  # of the input stream, always at a frame boundary
    per_input: list[int] = msgspec.field(default_factory=list)
    frames: int = 0
    output_bytes: int = 0


class Failure(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    message: str
    frame: int | None = None
    offset: int | None = None


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    version: int = FORMAT_VERSION
    wasmstream_version: str
    engine: str
    engine_version: str
    module: ModuleRecord
    options: OutputOptions
    command: Command
    inputs: list[InputRecord]
    output: str | None  # absolute path, or None for standard output
    position: Position
    status: Status = "running"
    failure: Failure | None = None
    created: str
    updated: str


class _VersionOnly(msgspec.Struct):
    version: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Checkpoint)
_version_decoder = msgspec.json.Decoder(_VersionOnly)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def describe_input(path: str) -> InputRecord:
    """The identity of an input as it is now: enough to tell later whether it is the same data."""
    if path == "-":
        return _describe_fd("-", 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        return _describe_fd(os.path.abspath(path), fd)
    finally:
        os.close(fd)


def _describe_fd(path: str, fd: int) -> InputRecord:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return InputRecord(path=path, regular=False)
    head = os.pread(fd, HEAD_BYTES, 0)
    return InputRecord(
        path=path,
        regular=True,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        device=info.st_dev,
        inode=info.st_ino,
        head_length=len(head),
        head_sha256=hashlib.sha256(head).hexdigest(),
    )


def load(path: str) -> Checkpoint | None:
    """The checkpoint at `path`, or None if there is none. Raises CheckpointError if corrupt."""
    try:
        with open(path, "rb") as data:
            raw = data.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from None
    try:
        version = _version_decoder.decode(raw).version
    except msgspec.DecodeError as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {error}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this wasmstream reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {error}") from None


def save(path: str, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint at `path` atomically and durably."""
    folder = os.path.dirname(os.path.abspath(path))
    data = msgspec.json.format(_encoder.encode(checkpoint), indent=2) + b"\n"
    fd, temp = tempfile.mkstemp(prefix=".", suffix=".ckpt.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_resumable(
    saved: Checkpoint,
    *,
    module: ModuleRecord,
    options: OutputOptions,
    inputs: Sequence[InputRecord],
    output: str | None,
    output_size: int | None,
    force: bool,
    source: str,
) -> None:
    """Refuse (CheckpointError) when continuing from `saved` could not give correct output.

    `force` overrides only the input-identity checks (inode, device, first-block hash).
    """
    if saved.module.sha256 != module.sha256:
        raise CheckpointError(
            f"module {module.path} changed since checkpoint {source} was written (sha256 "
            f"{saved.module.sha256[:12]}… then, {module.sha256[:12]}… now)"
        )
    for field in OutputOptions.__struct_fields__:
        then, now_ = getattr(saved.options, field), getattr(options, field)
        if then != now_:
            name = "--config" if field == "config_sha256" else f"--{field.replace('_', '-')}"
            raise CheckpointError(
                f"{name} changed since checkpoint {source} was written ({then!r} then, "
                f"{now_!r} now): it changes the output"
            )
    if [i.path for i in saved.inputs] != [i.path for i in inputs]:
        raise CheckpointError(f"the inputs differ from those recorded in checkpoint {source}")
    if saved.output != output:
        raise CheckpointError(f"the output differs from the one recorded in checkpoint {source}")
    for then, current, done in zip(saved.inputs, inputs, saved.position.per_input, strict=False):
        _check_input(then, current, done, force, source)
    if output is not None and (output_size or 0) < saved.position.output_bytes:
        raise CheckpointError(
            f"output {output} has {output_size or 0} bytes but checkpoint {source} records "
            f"{saved.position.output_bytes} written: output was lost"
        )


def _check_input(
    then: InputRecord, current: InputRecord, done: int, force: bool, source: str
) -> None:
    name = "standard input" if current.path == "-" else current.path
    if current.regular and current.size is not None and current.size < done:
        raise CheckpointError(
            f"input {name} has {current.size} bytes, fewer than the {done} already processed "
            f"according to checkpoint {source}"
        )
    if force or not (then.regular and current.regular):
        return
    same_file = (then.device, then.inode) == (current.device, current.inode)
    if then.path != "-" and not same_file:
        raise CheckpointError(
            f"input {name} is not the file recorded in checkpoint {source} (another inode); "
            "--force resumes anyway"
        )
    if then.head_sha256 != head_sha256(current.path, then.head_length):
        raise CheckpointError(
            f"input {name} does not start with the data recorded in checkpoint {source}; "
            "--force resumes anyway"
        )


def head_sha256(path: str, length: int) -> str:
    fd = 0 if path == "-" else os.open(path, os.O_RDONLY)
    try:
        return hashlib.sha256(os.pread(fd, length, 0)).hexdigest()
    finally:
        if path != "-":
            os.close(fd)


class Clock:
    """When to save: at most every `interval` seconds, or every `every` frames if given."""

    def __init__(self, interval: float, every: int | None) -> None:
        self._interval = interval
        self._every = every
        self._last = time.monotonic()
        self._frames = 0

    def due(self) -> bool:
        self._frames += 1
        if self._every is not None and self._frames >= self._every:
            return True
        return time.monotonic() - self._last >= self._interval

    def reset(self) -> None:
        self._last = time.monotonic()
        self._frames = 0
