"""Where input bytes come from: local files, or fsspec URLs (`s3://`, `gs://`, `memory://`, …).

A leaf: opening, sizing and reading at an offset, the same for both. fsspec is imported only
when a URL is given; without it (or without the protocol's package) the error names what to
install. Every call into fsspec is made here, under `_fsspec_failures`: the one place its
failures become a usage error or an input that cannot be read.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

from wasmstream.errors import IOFailure, UsageError, WasmstreamError

INSTALL_DASK = "pip install 'wasmstream[dask]'"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether `path` is an fsspec URL (`s3://bucket/key`, `memory://x`, `file:///tmp/x`)."""
    return bool(_URL.match(path))


@contextlib.contextmanager
def _fsspec_failures(url: str, parsing: bool = False) -> Iterator[None]:
    """Where every failure of fsspec (or of the package behind its protocol) becomes an error
    of ours, naming the URL and the reason in one line. Backends raise what they like
    (botocore's NoCredentialsError, zipfile.BadZipFile, aiohttp's errors, OSError…), so any
    Exception is taken: a URL fsspec cannot parse, or whose package is missing, is a usage
    error; any other failure is an input that cannot be read."""
    try:
        yield
    except WasmstreamError:
        raise
    except ImportError as error:  # fsspec names the protocol's package (s3fs, gcsfs, …)
        raise UsageError(f"input {url}: {_reason(error)}") from None
    except ValueError as error:
        if parsing:
            raise UsageError(f"input {url}: {_reason(error)}") from None
        raise IOFailure(f"cannot read input {url}: {_reason(error)}") from None
    except Exception as error:
        raise IOFailure(f"cannot read input {url}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, FileNotFoundError):  # fsspec's carry only the path, named already
        return "No such file or directory"
    text = " ".join(str(error).split())  # one line, whatever the backend put in its message
    return text or type(error).__name__


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"input {url} is a URL: reading it needs fsspec ({INSTALL_DASK})"
        ) from None
    with _fsspec_failures(url, parsing=True):
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(url))


def size_of(path: str) -> int:
    """The size of an input in bytes. Raises IOFailure when it is missing or unreadable."""
    if not is_url(path):
        try:
            return os.stat(path).st_size
        except OSError as error:
            raise IOFailure(f"cannot read input {path}: {error.strerror}") from None
    fs, inner = _filesystem(path)
    with _fsspec_failures(path):
        return int(fs.size(inner))


class InputFile(Protocol):
    """An opened input: a local file (io.FileIO) or an fsspec file."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def read(self, size: int = -1, /) -> bytes | None: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def close(self) -> None: ...


class _UrlFile:
    """An fsspec file whose failures are ours (see `_fsspec_failures`): reads go on talking to
    the object store long after it was opened."""

    def __init__(self, url: str, file: Any) -> None:
        self._url = url
        self._file = file

    def readinto(self, buffer: memoryview, /) -> int | None:
        with _fsspec_failures(self._url):
            return cast("int | None", self._file.readinto(buffer))

    def read(self, size: int = -1, /) -> bytes | None:
        with _fsspec_failures(self._url):
            return cast("bytes | None", self._file.read(size))

    def seek(self, offset: int, whence: int = 0, /) -> int:
        with _fsspec_failures(self._url):
            return cast(int, self._file.seek(offset, whence))

    def close(self) -> None:
        with _fsspec_failures(self._url):
            self._file.close()


def open_input(path: str) -> InputFile:
    """An input opened for reading: unbuffered for a local file, fsspec's file for a URL."""
    if is_url(path):
        fs, inner = _filesystem(path)
        with _fsspec_failures(path):
            return _UrlFile(path, fs.open(inner, "rb"))
    try:
        return io.FileIO(path, "rb")
    except OSError as error:
        raise IOFailure(f"cannot read input {path}: {error.strerror}") from None


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
