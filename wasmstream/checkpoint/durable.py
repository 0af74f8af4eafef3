"""Replacing a file atomically and durably: the one way checkpoints and state files are written.

A temporary file in the same folder (so the rename cannot cross filesystems), written and
fsynced; renamed over the target (readers see the old file or the new one, never half of
one); then the folder fsynced, so that the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def replace_durably(path: str, data: bytes, suffix: str = ".tmp") -> None:
    """Make `path` hold `data`, atomically and durably. Raises OSError; a temporary file left
    by a failure is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".", suffix=suffix, dir=folder)
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
    fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
