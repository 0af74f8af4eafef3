"""Every failure wasmstream reports, each with the exit status it maps to.

Errors are defined once here; the CLI turns any `WasmstreamError` into one line on stderr and
its `status`. Messages say what went wrong and where: module path, export name, frame number and
the input byte offset of the frame.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

E = TypeVar("E", bound="WasmstreamError")


class ExitStatus(enum.IntEnum):
    """Documented exit codes (README, man page): scripts can tell failure classes apart."""

    OK = 0
    FAILURE = 1  # an unexpected internal error
    USAGE = 2  # bad command line (click uses 2 as well)
    INVALID_MODULE = 3  # missing, not wasm, invalid, wrong exports or signatures
    GUEST_ERROR = 4  # trap, negative result, output outside guest memory or too large
    TIMEOUT = 5  # a frame ran past --timeout
    OUT_OF_FUEL = 6  # a frame used up --fuel
    MEMORY_LIMIT = 7  # an instance hit --max-memory
    IO_ERROR = 8  # input unreadable, output unwritable
    CHECKPOINT = 9  # checkpoint corrupt, resuming would be wrong, or another run holds it
    FRAMES_FAILED = 10  # completed under --on-error skip|passthrough, but some frames failed
    FRAMING = 11  # a record larger than the frame size (--oversize error)
    BROKEN_PIPE = 141  # downstream closed the pipe: 128 + SIGPIPE, as coreutils exit
    INTERRUPTED = 130  # SIGINT: 128 + 2
    TERMINATED = 143  # SIGTERM: 128 + 15


class WasmstreamError(Exception):
    """Base of every error the CLI reports as a one-line message.

    Picklable as plain data, its class, arguments and fields, whatever its `__init__` takes:
    a cluster task returns its failures to the client (`detached` says why that is not all).
    """

    status: ExitStatus = ExitStatus.FAILURE

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, self.__dict__)

    def detached(self: E) -> E:
        """This error with nothing chained: no cause, context or traceback, to cross to another
        process. Dask installs tblib's pickling for every exception class, and it pickles the
        chain too; an engine's error raised `from None` still holds the wasmtime Trap (and its
        ctypes pointer, which nothing can pickle) as `__context__`, and a traceback holds the
        frames, input bytes included."""
        return _rebuilt(type(self), self.args, dict(self.__dict__))


def _rebuilt(cls: type[E], args: tuple[Any, ...], fields: dict[str, Any]) -> E:
    """An error of `cls` from its arguments and fields, without calling its `__init__`."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class UsageError(WasmstreamError):
    status = ExitStatus.USAGE


class ModuleError(WasmstreamError):
    """The module cannot be used: missing, not wasm, invalid, or not following the guest ABI."""

    status = ExitStatus.INVALID_MODULE


class IOFailure(WasmstreamError):
    status = ExitStatus.IO_ERROR


class FramingError(WasmstreamError):
    """The input cannot be cut as asked: a record larger than a frame under --oversize error."""

    status = ExitStatus.FRAMING


class CheckpointError(WasmstreamError):
    """A checkpoint is corrupt, of an unknown version, or does not match this run."""

    status = ExitStatus.CHECKPOINT


class RunLocked(WasmstreamError):
    """Another run holds the lock on this run's checkpoint or output: refused before any change."""

    status = ExitStatus.CHECKPOINT


class GuestError(WasmstreamError):
    """A guest failed while running: a trap, a negative result or an impossible output range.

    `frame` and `offset` are filled in by the pool, which knows where the frame came from; the
    engine that raises it only knows what happened.
    """

    status = ExitStatus.GUEST_ERROR
    kind = "guest-error"  # the failure class named in dead letters and stats

    def __init__(self, what: str, *, frame: int | None = None, offset: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.frame = frame
        self.offset = offset

    def at(self, frame: int, offset: int) -> GuestError:
        """This error, located at a frame of the input stream."""
        located = type(self)(self.what, frame=frame, offset=offset)
        located.__cause__ = self.__cause__
        return located

    def __str__(self) -> str:
        if self.frame is None:
            return self.what
        return f"frame {self.frame} at offset {self.offset}: {self.what}"


class GuestTrap(GuestError):
    """The guest trapped (unreachable, out-of-bounds access, divide by zero, …)."""

    kind = "trap"


class GuestTimeout(GuestError):
    status = ExitStatus.TIMEOUT
    kind = "timeout"


class GuestOutOfFuel(GuestError):
    status = ExitStatus.OUT_OF_FUEL
    kind = "fuel"


class GuestMemoryLimit(GuestError):
    status = ExitStatus.MEMORY_LIMIT
    kind = "memory"


class GuestExit(GuestError):
    """A WASI command exited with a non-zero status."""

    kind = "exit"


class StartupError(GuestError):
    """An instance failed while starting (in `_initialize`, the allocator or the init function)."""

    kind = "startup"

    def __str__(self) -> str:
        return f"while starting an instance: {self.what}"


class StateRefused(GuestError):
    """A module refused a saved state (its restore returned a negative status), or a saved
    whole-instance image does not fit the instance: resuming from it is refused."""

    status = ExitStatus.CHECKPOINT
    kind = "state"


class FramesFailed(WasmstreamError):
    """The run completed, but some frames failed and were skipped or passed through."""

    status = ExitStatus.FRAMES_FAILED
    summary: Any = None  # the run's summary, for --stats


class BrokenPipe(WasmstreamError):
    """Downstream closed the output pipe: the run ends quietly."""

    status = ExitStatus.BROKEN_PIPE


class Interrupted(WasmstreamError):
    """SIGINT or SIGTERM: the run stopped early, keeping what was written."""

    def __init__(
        self, status: ExitStatus = ExitStatus.INTERRUPTED, message: str = "interrupted"
    ) -> None:
        super().__init__(message)
        self.status = status
