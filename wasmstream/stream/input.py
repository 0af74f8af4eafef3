"""The INPUT arguments, read in order as one stream.

Files are opened one at a time, unbuffered (frames are large, and `readinto` then goes straight
from the kernel into the frame buffer). `-` is standard input. When resuming, each input starts
where the checkpoint says: seekable inputs are seeked, pipes are read and the prefix discarded.
"""

from __future__ import annotations

import io
import os
import select
import stat
from collections.abc import Callable, Sequence
from time import perf_counter

from wasmstream.errors import CheckpointError, IOFailure, UsageError
from wasmstream.run.tally import Tally
from wasmstream.stream.pipes import enlarge_pipe
from wasmstream.stream.sources import InputFile, is_url, open_input, size_of
from wasmstream.stream.stdio import STDIO, was_closed

STDIN = STDIO
STDIN_FD = 0  # not sys.stdin: Python sets that to None when descriptor 0 was closed
WINDOW = 64 * 1024  # how much of a stream's head and tail a checkpoint recognises it by


def check_inputs(paths: Sequence[str]) -> None:
    """Fail before any output is produced if an input is missing, a directory or unreadable."""
    for path in paths or (STDIN,):
        if path == STDIN:
            if was_closed(STDIN_FD):
                raise UsageError("standard input is closed: give an INPUT file, or data on stdin")
            continue
        if is_url(path):
            size_of(path)  # raises when it is missing, or fsspec (or its protocol) is not there
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            raise IOFailure(f"cannot read input {path}: {error.strerror}") from None
        if stat.S_ISDIR(mode):
            raise IOFailure(f"cannot read input {path}: Is a directory")
        if not os.access(path, os.R_OK):
            raise IOFailure(f"cannot read input {path}: Permission denied")


def is_live(paths: Sequence[str]) -> bool:
    """Whether the input includes a live stream: standard input that is a pipe or a terminal."""
    reads_stdin = not paths or STDIN in paths
    return reads_stdin and not stat.S_ISREG(os.fstat(STDIN_FD).st_mode)


def total_size(paths: Sequence[str]) -> int | None:
    """The input's size when every part is a regular file (for percent and ETA), else None."""
    total = 0
    for path in paths or (STDIN,):
        if is_url(path):
            total += size_of(path)
            continue
        info = os.fstat(STDIN_FD) if path == STDIN else os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        total += info.st_size - (os.lseek(STDIN_FD, 0, os.SEEK_CUR) if path == STDIN else 0)
    return total


class _Span:
    """Where one input sits in the stream: for the checkpoint's per-input positions."""

    __slots__ = ("read", "skipped", "stream_start")

    def __init__(self, stream_start: int, skipped: int) -> None:
        self.stream_start = stream_start
        self.skipped = skipped
        self.read = 0


class ConcatenatedInput:
    """`readinto` over several inputs in turn, as if they were one file.

    A resumed run first calls `skip_to_start`, which reads (or seeks) past what the checkpoint
    says is done, before any output is touched. `head` keeps the stream's first WINDOW bytes and
    `skipped_tail` the last WINDOW bytes before the start, so that the resumed run can check it
    is reading the stream it recorded (a pipe has no inode to compare).
    """

    def __init__(
        self,
        paths: Sequence[str],
        start_at: Sequence[int] = (),
        keep_head: bool = False,
        tally: Tally | None = None,
        limit: int | None = None,
    ) -> None:
        self.paths = list(paths) or [STDIN]
        self._start_at = list(start_at) or [0] * len(self.paths)
        self._spans: list[_Span] = []
        self._current: InputFile | None = None
        self._limit = limit  # read at most this many bytes (the end of a shard or a part)
        self._stream_position = 0
        self.head = bytearray()
        self._keep_head = keep_head
        self.skipped_tail = b""
        self.discarded: list[tuple[str, int]] = []  # streams read past (not seeked) to start
        self._tally = tally  # where time spent waiting is counted (--stats); None: not timed
        # Called when a read is about to wait for input that has not come yet (a pipe, a
        # FIFO, a terminal): whoever holds finished outputs back hands them on first.
        self.before_wait: Callable[[], None] | None = None
        self._may_wait = False  # whether the current input is one that can keep a reader waiting

    def readinto(self, buffer: memoryview, /) -> int:
        if self._tally is None:
            return self._readinto(buffer)
        started = perf_counter()
        try:
            return self._readinto(buffer)
        finally:
            self._tally.input_seconds += perf_counter() - started

    def _readinto(self, buffer: memoryview) -> int:
        if self._limit is not None:
            remaining = self._limit - self._stream_position
            if remaining <= 0:
                return 0
            buffer = buffer[:remaining]
        while True:
            if self._current is None:
                if len(self._spans) == len(self.paths):
                    return 0
                self._open_next()
            assert self._current is not None
            if self.before_wait is not None and self._may_wait and not self._ready_now():
                self.before_wait()
            try:
                got = self._current.readinto(buffer) or 0
            except OSError as error:
                raise IOFailure(f"cannot read input {self._name()}: {error.strerror}") from None
            if got:
                self._spans[-1].read += got
                self._stream_position += got
                if self._keep_head and len(self.head) < WINDOW:
                    self.head += buffer[: min(got, WINDOW - len(self.head))]
                return got
            self._close_current()

    def skip_to_start(self) -> None:
        """Open every input the checkpoint says was started and move past what it says is done.

        Raises CheckpointError when an input ends before that point: it is not the data that
        was processed (a stdin resumed from /dev/null, a truncated file).
        """
        last = max((n for n, skip in enumerate(self._start_at) if skip), default=-1)
        tail = bytearray()
        while len(self._spans) <= last:
            if self._current is not None:
                self._close_current()
            self._open_next(tail)
        self.skipped_tail = bytes(tail)

    def wait_readable(self, timeout: float) -> bool:
        """Whether input (or its end) arrives within `timeout` seconds: for --linger."""
        if not isinstance(self._current, io.FileIO):
            return True  # nothing read yet, or an object store: data is there or ends
        if self.before_wait is not None and self._may_wait and not self._ready_now():
            self.before_wait()
        poller = select.poll()
        poller.register(self._current.fileno(), select.POLLIN | select.POLLHUP)
        started = perf_counter()
        try:
            return bool(poller.poll(timeout * 1000))
        finally:
            if self._tally is not None:
                self._tally.input_seconds += perf_counter() - started

    def _ready_now(self) -> bool:
        """Whether the current input has data (or its end) to give without waiting."""
        assert isinstance(self._current, io.FileIO)
        return bool(select.select([self._current.fileno()], [], [], 0)[0])

    def progress(self, stream_offset: int) -> list[int]:
        """Bytes of each input consumed once the stream has been processed up to `stream_offset`."""
        done = list(self._start_at)
        for n, span in enumerate(self._spans):
            done[n] = span.skipped + min(max(stream_offset - span.stream_start, 0), span.read)
        return done

    def _name(self) -> str:
        path = self.paths[len(self._spans) - 1]
        return "standard input" if path == STDIN else path

    def _open_next(self, tail: bytearray | None = None) -> None:
        path = self.paths[len(self._spans)]
        skip = self._start_at[len(self._spans)]
        self._spans.append(_Span(self._stream_position, skip))
        try:
            if path == STDIN:
                enlarge_pipe(STDIN_FD)
                self._current = io.FileIO(STDIN_FD, "rb", closefd=False)
            else:
                self._current = open_input(path)
        except OSError as error:
            raise IOFailure(f"cannot read input {self._name()}: {error.strerror}") from None
        self._may_wait = isinstance(self._current, io.FileIO) and not stat.S_ISREG(
            os.fstat(self._current.fileno()).st_mode
        )
        if skip:
            self._skip(self._current, skip, tail if tail is not None else bytearray())

    def _skip(self, stream: InputFile, count: int, tail: bytearray) -> None:
        """Move past `count` bytes of `stream`, keeping the head and tail windows of them.

        A seekable input counts from where it starts: a file on stdin may start past its
        beginning (`{ read -r header; wasmstream …; } < data`), and so may its resume. A URL
        (an object store) seeks."""
        if not isinstance(stream, io.FileIO):
            stream.seek(count)
            return
        try:
            if stream.seekable():
                origin = stream.tell()
                if os.fstat(stream.fileno()).st_size - origin >= count:
                    self._keep(stream.fileno(), tail, origin, count)
                    stream.seek(origin + count)
                    return
            self._discard(stream, count, tail)
            self.discarded.append((self._name(), count))
        except OSError as error:
            raise IOFailure(f"cannot read input {self._name()}: {error.strerror}") from None

    def _keep(self, fd: int, tail: bytearray, origin: int, count: int) -> None:
        """Windows of a seekable input's first `count` bytes from `origin` (read by pread,
        not in full)."""
        if len(self.head) < WINDOW:
            self.head += os.pread(fd, min(count, WINDOW - len(self.head)), origin)
        length = min(count, WINDOW)
        tail += os.pread(fd, length, origin + count - length)
        del tail[:-WINDOW]

    def _discard(self, stream: io.FileIO, count: int, tail: bytearray) -> None:
        scratch = bytearray(min(count, 1 << 20))
        remaining = count
        while remaining:
            view = memoryview(scratch)[: min(remaining, len(scratch))]
            got = stream.readinto(view)
            if not got:
                raise CheckpointError(
                    f"input {self._name()} ended after {count - remaining} bytes, before the "
                    f"{count} already processed: it is not the data the checkpoint describes"
                )
            if len(self.head) < WINDOW:
                self.head += view[: min(got, WINDOW - len(self.head))]
            tail += view[max(0, got - WINDOW) : got]
            del tail[:-WINDOW]
            remaining -= got

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def close(self) -> None:
        self._close_current()
