"""Where output goes: standard output or a file, written straight from the frame's output view.

Writes are unbuffered `os.write` calls, one or more per frame: frames are large, a buffer would
only add a copy, and every frame leaves as soon as it is done (which live streams need).
"""

from __future__ import annotations

import errno
import os
import sys

from .errors import BrokenPipe, IOFailure
from .pipes import enlarge_pipe

STDOUT = "-"


class Sink:
    def __init__(self, path: str | None) -> None:
        self.path = path if path not in (None, STDOUT) else None
        self.name = self.path or "<stdout>"
        if self.path is None:
            self._fd = sys.stdout.fileno()
            self._owned = False
            enlarge_pipe(self._fd)
        else:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as error:
                raise IOFailure(f"cannot write output {self.path}: {error.strerror}") from None
            self._owned = True

    def write(self, data: memoryview | bytes) -> int:
        """Write all of `data`; return its length. A closed pipe raises BrokenPipe."""
        total = len(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as error:
            if error.errno == errno.EPIPE:
                raise BrokenPipe("output pipe closed") from None
            raise IOFailure(f"cannot write output {self.name}: {error.strerror}") from None
        return total

    def close(self) -> None:
        if self._owned:
            self._owned = False
            os.close(self._fd)
