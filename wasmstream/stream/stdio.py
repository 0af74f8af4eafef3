"""Standard descriptors that were closed when wasmstream started (`<&-`, `>&-`, `2>&-`).

A closed descriptor 0, 1 or 2 is a trap: the next file opened takes its number, and whatever
is meant for the terminal lands in it (an error message in the output file, data in the
checkpoint). `guard` puts /dev/null there first and remembers which were closed, so that a run
that needs one of them can refuse clearly (a closed stdin as input, a closed stdout as output)
instead of reading nothing or writing nowhere.
"""

from __future__ import annotations

import io
import os
import sys

STDIO = "-"  # on the command line: standard input as an input, standard output as the output

_closed: set[int] = set()


def guard() -> None:
    """Call first thing in the process, before any file is opened."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _closed.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # Python sets sys.stdin/stdout/stderr to None for a descriptor closed at start-up, and
    # print(file=None) then writes to stdout: give each a stream on its (now /dev/null) fd.
    if sys.stdin is None:
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    if sys.stdout is None:
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    if sys.stderr is None:
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)


def was_closed(fd: int) -> bool:
    return fd in _closed
