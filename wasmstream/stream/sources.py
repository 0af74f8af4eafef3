"""Where input bytes come from: local files, or fsspec URLs (`s3://`, `gs://`, `memory://`, …).

A leaf, and the one place that tells a URL from a local path: checking, opening, sizing and
reading at an offset, the same for both. fsspec is imported only
when a URL is given; without it (or without the protocol's package) the error names what to
install. Every call into fsspec is made under `_fsspec_failures` (here, or through
`writing_to` for parts written to an object store): the one place its failures become a usage
error, an input that cannot be read or an output that cannot be written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

from wasmstream.errors import IOFailure, UsageError, WasmstreamError

INSTALL_DASK = "pip install 'wasmstream[dask]'"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether `path` is an fsspec URL (`s3://bucket/key`, `memory://x`, `file:///tmp/x`)."""
    return bool(_URL.match(path))


def links(path: str) -> list[tuple[str, str]]:
    """What an input names, link by link: (protocol, the rest) of each link of a URL, chained
    ones too (`simplecache::s3://b/k`, `zip://x::file:///d/a.zip`), or ("", path) for a local
    path. For telling whether an input lies where a run writes, however it is spelled."""
    if not is_url(path):
        return [("", path)]
    split = (link.partition("://") for link in path.split("::"))
    return [(protocol, rest) for protocol, found, rest in split if found]


@contextlib.contextmanager
def _fsspec_failures(url: str, parsing: bool = False, writing: bool = False) -> Iterator[None]:
    """Where every failure of fsspec (or of the package behind its protocol) becomes an error
    of ours, naming the URL and the reason in one line. Backends raise what they like
    (botocore's NoCredentialsError, zipfile.BadZipFile, aiohttp's errors, OSError…), so any
    Exception is taken: a URL fsspec cannot parse, or whose package is missing, is a usage
    error; any other failure is an input that cannot be read (`writing`: an output that
    cannot be written, `--output-parts` in an object store)."""
    subject = "--output-parts" if writing else "input"
    failed = "cannot write" if writing else "cannot read input"
    try:
        yield
    except WasmstreamError:
        raise
    except ImportError as error:  # fsspec names the protocol's package (s3fs, gcsfs, …)
        raise UsageError(f"{subject} {url}: {_reason(error)}") from None
    except ValueError as error:
        if parsing:
            raise UsageError(f"{subject} {url}: {_reason(error)}") from None
        raise IOFailure(f"{failed} {url}: {_reason(error)}") from None
    except Exception as error:
        raise IOFailure(f"{failed} {url}: {_reason(error)}") from None


@contextlib.contextmanager
def writing_to(url: str) -> Iterator[None]:
    """For `--output-parts` in an object store (stream/object_parts.py): fsspec's failures
    while writing `url`, as ours."""
    with _fsspec_failures(url, writing=True):
        yield


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, FileNotFoundError):  # fsspec's carry only the path, named already
        return "No such file or directory"
    text = " ".join(str(error).split())  # one line, whatever the backend put in its message
    return text or type(error).__name__


def _filesystem(url: str, writing: bool = False) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        what = "--output-parts" if writing else "input"
        raise UsageError(f"{what} {url} is a URL: it needs fsspec ({INSTALL_DASK})") from None
    with _fsspec_failures(url, parsing=True, writing=writing):
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(url))


def object_store(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of an output URL, and the path in it (`s3://b/out` → fs, `b/out`)."""
    return _filesystem(url, writing=True)


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


def check_readable(path: str) -> None:
    """Fail if the input is missing, a directory or unreadable (for a URL: missing, or fsspec or
    its protocol is not installed)."""
    if is_url(path):
        size_of(path)
        return
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise IOFailure(f"cannot read input {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise IOFailure(f"cannot read input {path}: Is a directory")
    if not os.access(path, os.R_OK):
        raise IOFailure(f"cannot read input {path}: Permission denied")


def seekable(path: str) -> bool:
    """Whether the input can be read at any offset (a regular file or an object), so cut into
    parts; a FIFO or a character device cannot."""
    return is_url(path) or stat.S_ISREG(os.stat(path).st_mode)


def known_size(path: str) -> int | None:
    """The input's size if it has one (a regular file or an object), else None."""
    if is_url(path):
        return size_of(path)
    info = os.stat(path)
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def absolute(path: str) -> str:
    """The input's name as another process elsewhere can use it: a URL as it is, a local path
    made absolute."""
    return path if is_url(path) else os.path.abspath(path)


def read_head(path: str, length: int) -> bytes:
    """The first `length` bytes of a seekable input (fewer if it is shorter)."""
    if is_url(path):
        with Inputs([path]) as inputs:
            return inputs.read_at(0, length)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, 0)
    finally:
        os.close(fd)
