"""Where output goes: standard output or a file, written straight from the frame's output view.

Writes are unbuffered `os.write` calls, one or more per frame: frames are large, a buffer would
only add a copy, and every frame leaves as soon as it is done (which live streams need).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from time import perf_counter

from wasmstream.errors import BrokenPipe, IOFailure
from wasmstream.run.tally import Tally
from wasmstream.stream.pipes import enlarge_pipe
from wasmstream.stream.stdio import STDIO, was_closed

STDOUT = STDIO
STDOUT_FD = 1  # not sys.stdout: Python sets that to None when descriptor 1 was closed


WRITEBACK_STRIDE = 8 << 20
SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python does not wrap; None where it is missing."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class Sink:
    """The output. `keep`: resume after that many bytes of an existing file (None: truncate).

    `fd`: the output file already opened (and locked) by the caller, who closes it; without it,
    the sink opens `path` itself. Either way, nothing is truncated before the sink is made, which
    is after every check of the run has passed.

    `durable`: the output will be fsynced at checkpoints. Writeback of a regular file is then
    started every few MiB (sync_file_range, asynchronous), so that a checkpoint's fsync finds
    little left to write instead of stalling the run while the whole backlog reaches the disk.
    """

    def __init__(
        self,
        path: str | None,
        keep: int | None = None,
        durable: bool = False,
        fd: int | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.path = path if path not in (None, STDOUT) else None
        self.name = self.path or "standard output"
        self._tally = tally  # where time spent writing is counted (--stats); None: not timed
        self._owned = fd is None and self.path is not None
        if self.path is None:
            self._fd = STDOUT_FD
            _check_open(STDOUT_FD)
            enlarge_pipe(self._fd)
        elif fd is None:
            self._fd = self._open(self.path)
        else:
            self._fd = fd
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        if fd is not None:  # the run's own file, locked: cut to where this run starts
            self._cut(keep or 0)
        self._writeback = _sync_file_range() if durable and self._regular else None
        self._position = os.lseek(self._fd, 0, os.SEEK_CUR) if self._writeback else 0
        self._pushed = self._position

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def is_pipe(self) -> bool:
        """A pipe or FIFO: what is written may still wait there, unread."""
        return stat.S_ISFIFO(os.fstat(self._fd).st_mode)

    def _open(self, path: str) -> int:
        """An output that is not the run's own file (a FIFO, a terminal, /dev/stdout): written
        at its end, as it is (/dev/stdout under `>> log` must not write over the log)."""
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise IOFailure(f"cannot write output {path}: {error.strerror}") from None

    def _cut(self, keep: int) -> None:
        """Whatever follows the last checkpoint was written by a run that did not finish: cut
        it, so that the resumed run's output follows on exactly once (0: a fresh run)."""
        try:
            os.ftruncate(self._fd, keep)
            os.lseek(self._fd, keep, os.SEEK_SET)
        except OSError as error:
            raise IOFailure(f"cannot write output {self.name}: {error.strerror}") from None

    def sync(self) -> None:
        """Make everything written so far durable (a no-op for pipes and terminals)."""
        if not self._regular:
            return
        try:
            os.fdatasync(self._fd)  # the data and its size; other metadata need not wait
        except OSError as error:
            raise IOFailure(f"cannot write output {self.name}: {error.strerror}") from None

    def write(self, data: memoryview | bytes) -> int:
        """Write all of `data`; return its length. A closed pipe raises BrokenPipe."""
        if self._tally is None:
            return self._write(data)
        started = perf_counter()
        try:
            return self._write(data)
        finally:
            self._tally.output_seconds += perf_counter() - started

    def _write(self, data: memoryview | bytes) -> int:
        total = len(data)
        try:
            written = os.write(self._fd, data) if total else 0
            if written < total:  # a pipe or a signal can cut a write short
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as error:
            if error.errno == errno.EPIPE:
                raise BrokenPipe("output pipe closed") from None
            raise IOFailure(f"cannot write output {self.name}: {error.strerror}") from None
        if self._writeback is not None:
            self._position += total
            if self._position - self._pushed >= WRITEBACK_STRIDE:
                self._writeback(
                    self._fd, self._pushed, self._position - self._pushed, SYNC_FILE_RANGE_WRITE
                )
                self._pushed = self._position
        return total

    def committed(self) -> None:
        return None  # one file, not a folder of parts

    def complete(self) -> None:
        pass

    def close(self) -> None:
        if self._owned:
            self._owned = False
            os.close(self._fd)


def _check_open(fd: int) -> None:
    """Standard output closed (`>&-`): say so now, rather than lose the output later."""
    if was_closed(fd):
        raise IOFailure("cannot write output to standard output: it is closed")
