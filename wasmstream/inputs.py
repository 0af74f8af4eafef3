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
import sys
from collections.abc import Callable, Sequence

from .errors import IOFailure
from .pipes import enlarge_pipe

STDIN = "-"


def check_inputs(paths: Sequence[str]) -> None:
    """Fail before any output is produced if an input is missing, a directory or unreadable."""
    for path in paths:
        if path == STDIN:
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            raise IOFailure(f"cannot read input {path}: {error.strerror}") from None
        if stat.S_ISDIR(mode):
            raise IOFailure(f"cannot read input {path}: Is a directory")
        if not os.access(path, os.R_OK):
            raise IOFailure(f"cannot read input {path}: Permission denied")


class _Span:
    """Where one input sits in the stream: for the checkpoint's per-input positions."""

    __slots__ = ("read", "skipped", "stream_start")

    def __init__(self, stream_start: int, skipped: int) -> None:
        self.stream_start = stream_start
        self.skipped = skipped
        self.read = 0


class ConcatenatedInput:
    """`readinto` over several inputs in turn, as if they were one file."""

    def __init__(
        self,
        paths: Sequence[str],
        start_at: Sequence[int] = (),
        notify: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.paths = list(paths) or [STDIN]
        self._start_at = list(start_at) or [0] * len(self.paths)
        self._notify = notify
        self._spans: list[_Span] = []
        self._current: io.FileIO | None = None
        self._stream_position = 0

    def readinto(self, buffer: memoryview, /) -> int:
        while True:
            if self._current is None:
                if len(self._spans) == len(self.paths):
                    return 0
                self._open_next()
            assert self._current is not None
            try:
                got = self._current.readinto(buffer)
            except OSError as error:
                raise IOFailure(f"cannot read input {self._name()}: {error.strerror}") from None
            if got:
                self._spans[-1].read += got
                self._stream_position += got
                return got
            self._close_current()

    def wait_readable(self, timeout: float) -> bool:
        """Whether input (or its end) arrives within `timeout` seconds: for --linger."""
        if self._current is None:
            return True
        poller = select.poll()
        poller.register(self._current.fileno(), select.POLLIN | select.POLLHUP)
        return bool(poller.poll(timeout * 1000))

    def progress(self, stream_offset: int) -> list[int]:
        """Bytes of each input consumed once the stream has been processed up to `stream_offset`."""
        done = list(self._start_at)
        for n, span in enumerate(self._spans):
            done[n] = span.skipped + min(max(stream_offset - span.stream_start, 0), span.read)
        return done

    def _name(self) -> str:
        path = self.paths[len(self._spans) - 1]
        return "<stdin>" if path == STDIN else path

    def _open_next(self) -> None:
        path = self.paths[len(self._spans)]
        skip = self._start_at[len(self._spans)]
        self._spans.append(_Span(self._stream_position, skip))
        try:
            if path == STDIN:
                enlarge_pipe(sys.stdin.fileno())
                self._current = io.FileIO(sys.stdin.fileno(), "rb", closefd=False)
            else:
                self._current = io.FileIO(path, "rb")
            if skip:
                self._skip(self._current, skip)
        except OSError as error:
            raise IOFailure(f"cannot read input {self._name()}: {error.strerror}") from None

    def _skip(self, stream: io.FileIO, count: int) -> None:
        if stream.seekable():
            stream.seek(count)
            return
        self._notify(f"discarding the first {count} bytes of {self._name()}: already processed")
        scratch = bytearray(min(count, 1 << 20))
        remaining = count
        while remaining:
            got = stream.readinto(memoryview(scratch)[: min(remaining, len(scratch))])
            if not got:
                raise IOFailure(
                    f"input {self._name()} ended after {count - remaining} bytes, before the "
                    f"{count} already processed"
                )
            remaining -= got

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def close(self) -> None:
        self._close_current()
