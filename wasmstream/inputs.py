"""The INPUT arguments, read in order as one stream.

Files are opened one at a time, unbuffered (frames are large, and `readinto` then goes straight
from the kernel into the frame buffer). `-` is standard input.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Sequence

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


class ConcatenatedInput:
    """`readinto` over several inputs in turn, as if they were one file."""

    def __init__(self, paths: Sequence[str]) -> None:
        self._pending = list(paths) or [STDIN]
        self._pending.reverse()
        self._current: io.FileIO | None = None
        self._current_path = ""

    def readinto(self, buffer: memoryview, /) -> int:
        while True:
            if self._current is None:
                if not self._pending:
                    return 0
                self._open(self._pending.pop())
            assert self._current is not None
            try:
                got = self._current.readinto(buffer)
            except OSError as error:
                raise IOFailure(
                    f"cannot read input {self._current_path}: {error.strerror}"
                ) from None
            if got:
                return got
            self._close_current()

    def _open(self, path: str) -> None:
        self._current_path = "<stdin>" if path == STDIN else path
        try:
            if path == STDIN:
                enlarge_pipe(sys.stdin.fileno())
                self._current = io.FileIO(sys.stdin.fileno(), "rb", closefd=False)
            else:
                self._current = io.FileIO(path, "rb")
        except OSError as error:
            raise IOFailure(f"cannot read input {path}: {error.strerror}") from None

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def close(self) -> None:
        self._close_current()
        self._pending.clear()
