"""The checkpoint sidecar: what a run has durably done, so a later run can continue exactly.

Invariant: a checkpoint never claims input whose output is not durably written. The output is
fsynced (when it is a regular file) before the checkpoint that covers it is written, and the
checkpoint itself is replaced atomically (temp file in the same folder, fsync, rename, fsync
the folder). A checkpoint that cannot be parsed is never overwritten or deleted.

Everything here is plain data and checks on it; `core` decides when to save.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Annotated, Literal

import msgspec

from wasmstream.checkpoint.durable import fsync_folder, replace_durably
from wasmstream.errors import CheckpointError, IOFailure
from wasmstream.run.options import OnError
from wasmstream.stream.framing import Framing, Oversize
from wasmstream.stream.input import STDIN, WINDOW
from wasmstream.stream.sources import is_url, read_head, size_of

FORMAT_VERSION = 2  # a checkpoint of another version is refused, never guessed at
HEAD_BYTES = 64 * 1024  # inputs are identified by the hash of their first 64 KiB
# "interrupted": stopped by a signal or a closed output pipe, resumable as it is. Files of
# older versions said "running" for that: it still loads, and means the same.
Status = Literal["running", "interrupted", "complete", "failed"]

# Every number is checked when a checkpoint is loaded: a hand-edited `"jobs": 0` made resume
# hang forever, a negative offset overwrote data. A checkpoint that breaks a rule is refused.
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
FrameSize = Annotated[int, msgspec.Meta(ge=1, le=(1 << 32) - (1 << 16))]  # fits guest memory
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
OneByte = Annotated[str, msgspec.Meta(min_length=1, max_length=1)]
OverloadText = Annotated[str, msgspec.Meta(pattern="^(block|adaptive|drop|sample:[1-9][0-9]*)$")]
ShardText = Annotated[str, msgspec.Meta(pattern="^[1-9][0-9]*/[1-9][0-9]*$")]
StateMode = Literal["auto", "none", "memory"]
StateName = Literal["exports", "memory"]
StateFile = Annotated[str, msgspec.Meta(pattern=r"^[^/\0]+\.state-[0-9a-f]{16}$")]

# Paths are kept as text when they are UTF-8 (nearly always); a name that is not (Linux allows
# any bytes) is kept as NUL + base64 of its bytes, which no real path can start with.
_BYTES_PATH = "\0"


def path_text(path: str) -> str:
    """A path as JSON can hold it (see `text_path`)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return _BYTES_PATH + base64.b64encode(os.fsencode(path)).decode("ascii")
    return path


def text_path(text: str) -> str:
    """The path `path_text` stored."""
    if text.startswith(_BYTES_PATH):
        return os.fsdecode(base64.b64decode(text[len(_BYTES_PATH) :]))
    return text


def optional_path_text(path: str | None) -> str | None:
    return None if path is None else path_text(path)


def optional_text_path(text: str | None) -> str | None:
    return None if text is None else text_path(text)


class ModuleRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str
    sha256: Sha256


class OutputOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every option that can change the bytes written: resuming with any of them changed is
    refused, naming it. Being a field here is what marks an option so (`check_resumable`
    compares every field); the limits count because, under `--on-error skip|passthrough`, which
    frames fail decides what is written, and so do the guest's environment and directories.
    """

    function: str
    alloc: str | None
    free: str | None
    init: str | None
    config_sha256: Sha256
    frame_size: FrameSize
    framing: Framing = Framing.FIXED
    delimiter: OneByte = "\n"  # latin-1: one byte, any value
    oversize: Oversize = Oversize.ERROR
    on_error: OnError = OnError.FAIL
    wasi_command: bool = False
    timeout: Seconds | None = None
    fuel: Positive | None = None
    max_memory: Positive | None = None
    max_output: Positive | None = None
    env: list[tuple[str, str]] = msgspec.field(default_factory=list)
    dirs: list[tuple[str, str, bool]] = msgspec.field(default_factory=list)
    args: list[str] = msgspec.field(default_factory=list)  # --arg, in order
    overload: OverloadText = "block"
    state: StateMode = "auto"
    finish: str | None = None
    shard: ShardText | None = None  # --shard K/N: which part of the input this run is
    part_size: Positive | None = None  # with --cluster: where parts (and so frames) are cut


# How each field of OutputOptions is spelled on the command line, where it differs.
FLAGS = {
    "config_sha256": "--config",
    "overload": "--on-overload",
    "dirs": "--dir",
    "args": "--arg",
}


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The rest of how to re-run the job (`wasmstream resume`): options that cannot change the
    bytes written (how fast, how often to save, where failures are logged)."""

    config_arg: str | None = None  # --config as given: TEXT or @FILE
    jobs: Positive | None = None  # None: auto
    queue_depth: Positive | None = None
    checkpoint_interval: Seconds
    checkpoint_every: Positive | None = None
    dead_letter: str | None = None
    linger: Annotated[float, msgspec.Meta(ge=0)] | None = None
    drop_log: str | None = None
    cluster: str | None = None  # --cluster ADDRESS (a cluster run of the same parts may move)
    cluster_file: str | None = None


class InputRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str  # absolute, or "-" for standard input
    regular: bool
    size: Count | None = None
    mtime_ns: int | None = None
    device: int | None = None
    inode: int | None = None
    head_length: Count = 0
    head_sha256: Sha256 | None = None


class Digest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The sha256 of `length` bytes at a known place (a stream's head, the bytes before an
    offset): how a resumed run recognises data it cannot identify by inode."""

    length: Annotated[int, msgspec.Meta(ge=0, le=WINDOW)]
    sha256: Sha256

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        return cls(length=len(data), sha256=hashlib.sha256(data).hexdigest())


class Position(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    input_bytes: Count = 0  # of the input stream, always at a frame boundary
    per_input: list[Count] = msgspec.field(default_factory=list)
    frames: Count = 0
    output_bytes: Count = 0
    # For a stream (stdin, a pipe or FIFO): its first bytes, and the bytes just before
    # input_bytes. A resumed run reads past them and checks both before writing anything.
    stream_head: Digest | None = None
    stream_tail: Digest | None = None
    # The output's last bytes before output_bytes: a resumed run checks them before it cuts
    # the output there, so it never keeps (or truncates) a file that is not this run's output.
    output_tail: Digest | None = None
    # The finish function's output is written and counted in output_bytes: the run is over.
    finished: bool = False
    # How long --dead-letter and --drop-log were: a resumed run cuts them back to that, so the
    # frames it does again are logged once (None: no such log, or a checkpoint from before).
    dead_letter_bytes: Count | None = None
    drop_log_bytes: Count | None = None
    # --output-parts: the parts committed, in input order (output_bytes is their total size)
    parts: list[PartRecord] | None = None


class PartRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A part committed to `--output-parts DIR` (stream/output_parts.py): `DIR/part-NUMBER`, its
    size and the digest of its last bytes, and the size of its dead letters (None: it had
    none)."""

    number: Count
    size: Count
    tail: Digest
    dead_letters: Count | None = None


class StateRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The guest's state at `position`, in a file beside the checkpoint (see state_files.py)."""

    kind: StateName  # the module's own snapshot, or an image of the whole instance
    file: StateFile
    sha256: Sha256
    size: Count


class OutputFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Which file the output was: a resume refuses another one (replaced, or a link swapped in)."""

    device: int
    inode: int


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
    output_parts: bool = False  # `output` is a folder of parts (--output-parts)
    output_file: OutputFile | None = None
    position: Position
    # Where the run stops in the input: a shard that is not the last keeps the end its first
    # run found, so that shards resumed after the input grew still join up (None: the input's
    # end, growth included).
    end: Count | None = None
    state: StateRecord | None = None
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
    """The identity of an input as it is now: enough to tell later whether it is the same data.

    Only regular files are opened: opening a FIFO and closing it again would end the stream
    for its writer (and opening it may block until one comes).
    """
    if path == STDIN:
        return _describe_fd(STDIN, 0)
    if is_url(path):  # an object: no inode to record, its size and first bytes tell
        head = read_head(path, HEAD_BYTES)
        return InputRecord(
            path=path,
            regular=True,
            size=size_of(path),
            head_length=len(head),
            head_sha256=hashlib.sha256(head).hexdigest(),
        )
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return InputRecord(path=os.path.abspath(path), regular=False)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise IOFailure(f"cannot read input {path}: {error.strerror}") from None
    try:
        return _describe_fd(os.path.abspath(path), fd)
    finally:
        os.close(fd)


def _describe_fd(path: str, fd: int) -> InputRecord:
    """The input at `fd`, from where it is now: a file on stdin may have been read partly
    before wasmstream got it, and its data starts there."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return InputRecord(path=path, regular=False)
    origin = os.lseek(fd, 0, os.SEEK_CUR)
    head = os.pread(fd, HEAD_BYTES, origin)
    return InputRecord(
        path=path,
        regular=True,
        size=info.st_size - origin,
        mtime_ns=info.st_mtime_ns,
        device=info.st_dev,
        inode=info.st_ino,
        head_length=len(head),
        head_sha256=hashlib.sha256(head).hexdigest(),
    )


def load(path: str) -> Checkpoint | None:
    """The checkpoint at `path`, or None if there is none. Raises CheckpointError if corrupt,
    or if its values break a rule or contradict each other."""
    try:
        with open(path, "rb") as data:
            raw = data.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from None
    return parse(raw, path)


def parse(raw: bytes, path: str) -> Checkpoint:
    """The checkpoint in `raw`, read from `path` (a file, or an object of --output-parts in an
    object store). Raises CheckpointError as `load` does."""
    try:
        version = _version_decoder.decode(raw).version
    except msgspec.ValidationError:  # JSON, but not shaped like any checkpoint
        raise CheckpointError(
            f"{path} is not a wasmstream checkpoint: it holds {_json_kind(raw)}"
        ) from None
    except msgspec.DecodeError:
        raise CheckpointError(
            f"{path} is not a wasmstream checkpoint: it is not JSON "
            "(corrupt or truncated, or another kind of file)"
        ) from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this wasmstream reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        saved = _decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise CheckpointError(f"checkpoint {path} is invalid: {error}") from None
    except msgspec.DecodeError as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {error}") from None
    problem = inconsistency(saved)
    if problem:
        raise CheckpointError(f"checkpoint {path} is inconsistent: {problem}")
    return saved


def _json_kind(raw: bytes) -> str:
    """What a JSON document is, for people (the decoder's own words name its types)."""
    value = msgspec.json.decode(raw)
    if isinstance(value, dict):
        return "a JSON object without a numeric format version"
    kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
    return f"{kinds.get(type(value), 'a number')}, not an object"


def inconsistency(saved: Checkpoint) -> str | None:
    """What contradicts itself in `saved` (each value was already checked on its own)."""
    position = saved.position
    for path in _paths(saved):
        problem = _path_problem(path)
        if problem:
            return problem
    if saved.output_parts != (position.parts is not None):
        return "its output is a folder of parts, or records parts, but not both"
    if position.parts is not None and sum(p.size for p in position.parts) != position.output_bytes:
        return "the parts it records do not add up to the output bytes written"
    if (
        saved.output is not None
        and not saved.output_parts
        and position.output_bytes
        and position.output_tail is None
    ):
        return "it records output written to a file but no digest of it"
    if not saved.inputs:
        return "it lists no input"
    if len(position.per_input) != len(saved.inputs):
        return f"{len(position.per_input)} per-input offsets for {len(saved.inputs)} inputs"
    if sum(position.per_input) != position.input_bytes:
        return (
            f"the per-input offsets add up to {sum(position.per_input)}, not to the "
            f"{position.input_bytes} input bytes done"
        )
    if position.frames > position.input_bytes:
        return f"{position.frames} frames cannot come from {position.input_bytes} bytes"
    if saved.output is None and position.output_tail is not None:
        return "it has an output digest but no output file"
    return None


def _paths(saved: Checkpoint) -> list[str]:
    command, options = saved.command, saved.options
    named = [saved.module.path, saved.output, command.config_arg, command.dead_letter]
    named += [command.drop_log, *(i.path for i in saved.inputs), *(d[0] for d in options.dirs)]
    return [path for path in named if path is not None]


def _path_problem(text: str) -> str | None:
    """Why a recorded path cannot be a path (hand-edited: a NUL, broken base64), or None."""
    try:
        path = text_path(text)
    except ValueError:  # binascii.Error is a ValueError
        return f"path {text!r} is not a path encoded as this wasmstream writes them"
    if not path or "\0" in path:
        return f"path {text!r} is empty or holds a NUL byte"
    return None


def save(path: str, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint at `path` atomically and durably. Raises IOFailure."""
    data = msgspec.json.format(_encoder.encode(checkpoint), indent=2) + b"\n"
    try:
        replace_durably(path, data, ".ckpt.tmp")
    except OSError as error:
        raise IOFailure(f"cannot save checkpoint {path}: {error.strerror}") from None


def remove(path: str) -> None:
    """Remove the checkpoint at `path` (if any), durably. Raises IOFailure."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise IOFailure(f"cannot replace checkpoint {path}: {error.strerror}") from None
    fsync_folder(os.path.dirname(os.path.abspath(path)))


def check_writable(path: str) -> None:
    """Fail now (IOFailure) if a checkpoint could not be saved at `path` later: a missing or
    read-only folder, a full disk. Goes through every step of a save but the last rename."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=".", suffix=".ckpt.probe", dir=folder)
        try:
            os.write(fd, b"{}\n")
            os.fsync(fd)
            os.rename(temp, temp + "2")
            temp += "2"
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
    except OSError as error:
        raise IOFailure(f"cannot save checkpoint {path}: {error.strerror}") from None


def check_resumable(
    saved: Checkpoint,
    *,
    module: ModuleRecord,
    options: OutputOptions,
    inputs: Sequence[InputRecord],
    output: str | None,
    output_fd: int | None,
    force: bool,
    source: str,
    output_parts: bool = False,
) -> None:
    """Refuse (CheckpointError) when continuing from `saved` could not give correct output.

    `output_fd`: the output file, opened (and locked) but not yet changed. `force` overrides
    only the identity checks by inode (an input or the output copied elsewhere) and an input's
    first-block hash; never a check that the bytes to keep are the ones recorded.
    """
    if saved.module.sha256 != module.sha256:
        recorded = text_path(saved.module.path)
        what = (
            f"changed since checkpoint {source} was written"
            if recorded == module.path
            else f"is not the module {recorded} that checkpoint {source} was written with"
        )
        raise CheckpointError(
            f"module {module.path} {what} (sha256 {saved.module.sha256[:12]}… then, "
            f"{module.sha256[:12]}… now)"
        )
    for field in OutputOptions.__struct_fields__:
        then, now_ = getattr(saved.options, field), getattr(options, field)
        if then != now_:
            name = FLAGS.get(field, f"--{field.replace('_', '-')}")
            raise CheckpointError(
                f"{name} changed since checkpoint {source} was written ({then!r} then, "
                f"{now_!r} now): it changes the output"
            )
    if [i.path for i in saved.inputs] != [i.path for i in inputs]:
        raise CheckpointError(f"the inputs differ from those recorded in checkpoint {source}")
    if saved.output != output or saved.output_parts != output_parts:
        raise CheckpointError(f"the output differs from the one recorded in checkpoint {source}")
    for then, current, done in zip(saved.inputs, inputs, saved.position.per_input, strict=False):
        _check_input(then, current, done, force, source)
    if output is not None and output_fd is not None:
        _check_output(saved, text_path(output), output_fd, force, source)
    if output is not None and output_parts and not is_url(output):
        _check_folder(saved, text_path(output), force, source)


def _check_folder(saved: Checkpoint, folder: str, force: bool, source: str) -> None:
    """--output-parts: the folder is the one the checkpoint was written in (a link or another
    folder swapped in for it is refused; --force resumes a copy). Its parts are checked when
    the run opens them (output_parts.check_recorded)."""
    _check_identity(saved, f"folder {folder}", ("one", "folder"), os.stat(folder), force, source)


def _check_identity(
    saved: Checkpoint,
    name: str,
    kind: tuple[str, str],
    info: os.stat_result,
    force: bool,
    source: str,
) -> None:
    """The output (a file, or a folder of parts) is the one the checkpoint was written with."""
    recorded = saved.output_file
    if recorded is None or force or (recorded.device, recorded.inode) == (info.st_dev, info.st_ino):
        return
    raise CheckpointError(
        f"{name} is not the {kind[0]} recorded in checkpoint {source} (another inode: replaced, "
        f"or a link to another {kind[1]}); --force resumes anyway if it is a copy"
    )


def _check_output(saved: Checkpoint, output: str, fd: int, force: bool, source: str) -> None:
    info = os.fstat(fd)
    _check_identity(saved, f"output {output}", ("file", "file"), info, force, source)
    kept = saved.position.output_bytes
    if info.st_size < kept:
        raise CheckpointError(
            f"output {output} has {info.st_size} bytes but checkpoint {source} records "
            f"{kept} written: output was lost"
        )
    tail = saved.position.output_tail
    if tail is not None and _digest_at(fd, tail.length, kept - tail.length) != tail:
        raise CheckpointError(
            f"output {output} does not hold the bytes checkpoint {source} records before offset "
            f"{kept}: it is not this run's output"
        )


def output_tail(fd: int, size: int) -> Digest | None:
    """The digest of the last WINDOW bytes (or fewer) before `size` in the output at `fd`;
    None if the output cannot be read back (opened write-only)."""
    length = min(WINDOW, size)
    return _digest_at(fd, length, size - length)


def _digest_at(fd: int, length: int, offset: int) -> Digest | None:
    """The digest of `length` bytes at `offset`; None if they cannot all be read."""
    try:
        data = os.pread(fd, length, offset) if length else b""
    except OSError:
        return None
    return Digest.of(data) if len(data) == length else None


def _check_input(
    then: InputRecord, current: InputRecord, done: int, force: bool, source: str
) -> None:
    path = text_path(current.path)
    name = "standard input" if path == STDIN else path
    if path != STDIN and then.regular != current.regular:
        kind = {True: "a regular file", False: "a stream (pipe, FIFO or device)"}
        raise CheckpointError(
            f"input {name} was {kind[then.regular]} when checkpoint {source} was written and "
            f"is {kind[current.regular]} now"
        )
    if current.regular and current.size is not None and current.size < done:
        raise CheckpointError(
            f"input {name} has {current.size} bytes, fewer than the {done} already processed "
            f"according to checkpoint {source}"
        )
    if force or not (then.regular and current.regular):
        return
    same_file = (then.device, then.inode) == (current.device, current.inode)
    if then.path != STDIN and not same_file:
        raise CheckpointError(
            f"input {name} is not the file recorded in checkpoint {source} (another inode); "
            "--force resumes anyway"
        )
    if then.head_sha256 != head_sha256(path, then.head_length):
        raise CheckpointError(
            f"input {name} does not start with the data recorded in checkpoint {source}; "
            "--force resumes anyway"
        )


def head_sha256(path: str, length: int) -> str:
    if path != STDIN:
        return hashlib.sha256(read_head(path, length)).hexdigest()
    origin = os.lseek(0, 0, os.SEEK_CUR)  # from where stdin starts (see _describe_fd)
    return hashlib.sha256(os.pread(0, length, origin)).hexdigest()


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
