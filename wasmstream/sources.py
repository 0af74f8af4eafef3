"""Where input bytes come from: local files, or fsspec URLs (`s3://`, `gs://`, `memory://`, …).

A leaf: opening, sizing and reading at an offset, the same for both. fsspec is imported only
when a URL is given; without it (or without the protocol's package) the error names what to
install.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, cast

from .errors import IOFailure, UsageError

INSTALL_DASK = "pip install 'wasmstream[dask]'"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether `path` is an fsspec URL (`s3://bucket/key`, `memory://x`, `file:///tmp/x`)."""
    return bool(_URL.match(path))


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"input {url} is a URL: reading it needs fsspec ({INSTALL_DASK})"
        ) from None
    try:
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(url))
    except ImportError as error:  # fsspec names the protocol's package (s3fs, gcsfs, …)
        raise UsageError(f"input {url}: {error}") from None
    except ValueError as error:
        raise UsageError(f"input {url}: {error}") from None


def size_of(path: str) -> int:
    """The size of an input in bytes. Raises IOFailure when it is missing or unreadable."""
    if not is_url(path):
        try:
            return os.stat(path).st_size
        except OSError as error:
            raise IOFailure(f"cannot read input {path}: {error.strerror}") from None
    fs, inner = _filesystem(path)
    try:
        return int(fs.size(inner))
    except (OSError, KeyError) as error:  # fsspec raises FileNotFoundError, memory fs KeyError
        raise IOFailure(f"cannot read input {path}: {error}") from None


class InputFile(Protocol):
    """An opened input: a local file (io.FileIO) or an fsspec file."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def read(self, size: int = -1, /) -> bytes | None: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def close(self) -> None: ...


def open_input(path: str) -> InputFile:
    """An input opened for reading: unbuffered for a local file, fsspec's file for a URL."""
    try:
        if not is_url(path):
            return io.FileIO(path, "rb")
        fs, inner = _filesystem(path)
        return cast(InputFile, fs.open(inner, "rb"))
    except (OSError, KeyError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise IOFailure(f"cannot read input {path}: {reason}") from None


class Inputs:
    """Several inputs as one stream of known size, read at any offset (for cutting parts)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = tuple(paths)
        self.sizes = tuple(size_of(path) for path in self.paths)
        self.starts = tuple(sum(self.sizes[:n]) for n in range(len(self.sizes)))
        self.total = sum(self.sizes)
        self._open: dict[int, InputFile] = {}

    def per_input(self, offset: int) -> tuple[int, ...]:
        """How much of each input lies before `offset` of the stream."""
        return tuple(
            min(max(offset - start, 0), size)
            for start, size in zip(self.starts, self.sizes, strict=True)
        )

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` of the stream (fewer only at its end)."""
        out = bytearray()
        for n, (start, size) in enumerate(zip(self.starts, self.sizes, strict=True)):
            if len(out) == length:
                break
            if offset + len(out) >= start + size or size == 0:
                continue
            at = offset + len(out) - start
            out += self._read(n, at, min(length - len(out), size - at))
        return bytes(out)

    def _read(self, n: int, at: int, length: int) -> bytes:
        if n not in self._open:
            self._open[n] = open_input(self.paths[n])
        stream = self._open[n]
        try:
            stream.seek(at)
            data = bytearray()
            while len(data) < length:
                got = stream.read(length - len(data))
                if not got:
                    break
                data += got
            return bytes(data)
        except OSError as error:
            raise IOFailure(f"cannot read input {self.paths[n]}: {error}") from None

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for stream in self._open.values():
            stream.close()
        self._open.clear()
