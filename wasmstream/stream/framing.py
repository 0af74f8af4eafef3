"""Cutting a byte stream into frames: fixed-size, or whole records (lines, a delimiter, or
length-prefixed records).

Pure code: the only I/O is `readinto` on the stream it is given (and, with a linger, asking it
whether more input is waiting). A frame is filled across short reads — pipes hand data over in
whatever pieces the kernel chose — so where frames are cut never depends on how the input
arrived (unless a linger is asked for: then a quiet input releases what is waiting).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from wasmstream.errors import FramingError

Buffer = bytearray | memoryview
"""Where a frame is read to: a host buffer, or the guest's own input buffer (saving a copy)."""

LENGTH_PREFIX = 4  # length-prefixed records: a 4-byte big-endian length, then the payload
DEFAULT_LINGER = 0.1  # seconds: record framings on a live input (see with_default_linger)


class ReadableInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Framing(enum.Enum):
    FIXED = "fixed"
    LINES = "lines"
    DELIMITER = "delimiter"
    LENGTH_PREFIXED = "length-prefixed"


class Oversize(enum.Enum):
    ERROR = "error"
    SPLIT = "split"
    SKIP = "skip"


@dataclass(frozen=True)
class FramingSpec:
    framing: Framing = Framing.FIXED
    delimiter: bytes = b"\n"
    oversize: Oversize = Oversize.ERROR
    linger: float | None = None  # seconds; None: wait for a full frame
    # Fixed frames end on a UTF-8 character boundary: a character split at a frame's end
    # moves to the next frame (set for a text component, not by an option of its own).
    whole_chars: bool = False

    @property
    def record_based(self) -> bool:
        return self.framing is not Framing.FIXED


class Frame:
    """One frame of the input: `length` bytes at the start of `buffer`, found at `offset`.

    `span` is how much of the input the frame accounts for: its length, plus any oversized
    records skipped just before it (so checkpoint offsets stay exact).
    """

    __slots__ = ("buffer", "index", "length", "offset", "span")

    def __init__(
        self, index: int, offset: int, buffer: Buffer, length: int, span: int | None = None
    ) -> None:
        self.index = index
        self.offset = offset
        self.buffer = buffer
        self.length = length
        self.span = length if span is None else span

    @property
    def data(self) -> memoryview:
        return memoryview(self.buffer)[: self.length]

    def __repr__(self) -> str:
        return f"Frame(index={self.index}, offset={self.offset}, length={self.length})"


@dataclass
class Skipped:
    """Oversized records skipped under `--oversize skip`."""

    records: int = 0
    bytes: int = 0


def fill(stream: ReadableInto, buffer: memoryview) -> int:
    """Read into `buffer` until it is full or the stream ends; return how many bytes were read.

    Fewer than `len(buffer)` bytes means the stream has ended.
    """
    filled = 0
    size = len(buffer)
    while filled < size:
        got = stream.readinto(buffer[filled:] if filled else buffer)
        if not got:  # 0 is the end of the stream
            break
        filled += got
    return filled


def _fill_lingering(
    stream: ReadableInto,
    buffer: memoryview,
    start: int,
    linger: float | None,
    ready: Callable[[int], bool],
) -> tuple[int, bool]:
    """Read into `buffer[start:]`; return (bytes now in buffer, whether the stream ended).

    Stops when the buffer is full or the stream ends; with a linger, also when `ready(filled)`
    says a frame could be released and no input has come for `linger` seconds.
    """
    filled, size = start, len(buffer)
    while filled < size:
        if linger is not None and ready(filled) and not _wait(stream, linger):
            return filled, False
        got = stream.readinto(buffer[filled:])
        if not got:
            return filled, True
        filled += got
    return filled, False


def _wait(stream: ReadableInto, timeout: float) -> bool:
    wait = getattr(stream, "wait_readable", None)
    return True if wait is None else bool(wait(timeout))


def fixed_frames(
    stream: ReadableInto,
    next_buffer: Callable[[], Buffer],
    *,
    first_index: int = 0,
    first_offset: int = 0,
    linger: float | None = None,
) -> Iterator[Frame]:
    """Cut `stream` into frames the size of the buffers `next_buffer` hands out.

    Every frame is full except the last, which may be shorter; empty input yields nothing.
    `next_buffer` may block until a buffer is free: that is how backpressure reaches the reader.
    A resumed run numbers its frames and offsets on from where the last run stopped. With a
    linger, a partly filled frame is released once the input has been quiet that long.
    """
    index, offset = first_index, first_offset
    while True:
        buffer = next_buffer()
        view = memoryview(buffer)
        if linger is None:
            length = fill(stream, view)
            ended = length < len(view)
        else:
            length, ended = _fill_lingering(stream, view, 0, linger, lambda filled: filled > 0)
        if length:
            yield Frame(index, offset, buffer, length)
            index += 1
            offset += length
        if ended:
            return


def record_frames(
    stream: ReadableInto,
    next_buffer: Callable[[], Buffer],
    spec: FramingSpec,
    *,
    first_index: int = 0,
    first_offset: int = 0,
    skipped: Skipped | None = None,
) -> Iterator[Frame]:
    """Cut `stream` into frames of as many whole records as fit in a buffer.

    A record is never split (except under `--oversize split`); the last record may lack its
    delimiter and is passed on as it is. Records larger than a buffer follow `spec.oversize`.
    """
    cut_of = _cutter(spec)
    skipped = skipped if skipped is not None else Skipped()
    index, offset = first_index, first_offset
    carry = b""
    skipped_before = 0
    ended = False
    while carry or not ended:
        buffer = next_buffer()
        view = memoryview(buffer)
        size = len(view)
        view[: len(carry)] = carry
        filled = len(carry)
        if not ended:
            filled, ended = _fill_lingering(
                stream, view, filled, spec.linger, partial(_has_record, cut_of, buffer)
            )
        cut = cut_of(buffer, filled, ended)
        if cut == 0 and filled == size:  # one record larger than a whole frame
            if spec.oversize is Oversize.ERROR:
                raise _oversize_error(stream, buffer, filled, offset, spec)
            if spec.oversize is Oversize.SKIP:
                rest, gone, ended = _skip_record(stream, buffer, filled, spec, ended)
                skipped.records += 1
                skipped.bytes += gone
                skipped_before += gone
                offset += gone
                carry = rest
                continue
            cut = filled  # split
        if cut == 0:  # only part of a record so far: keep it and read on
            carry = bytes(view[:filled])
            continue
        carry = bytes(view[cut:filled])  # taken before the buffer leaves with its frame
        yield Frame(index, offset, buffer, cut, span=cut + skipped_before)
        index += 1
        offset += cut
        skipped_before = 0


def frames(
    stream: ReadableInto,
    next_buffer: Callable[[], Buffer],
    spec: FramingSpec,
    *,
    first_index: int = 0,
    first_offset: int = 0,
    skipped: Skipped | None = None,
) -> Iterator[Frame]:
    """The frames `spec` cuts `stream` into: fixed-size, or whole records."""
    first = {"first_index": first_index, "first_offset": first_offset}
    if spec.record_based or spec.whole_chars:
        return record_frames(stream, next_buffer, spec, skipped=skipped, **first)
    return fixed_frames(stream, next_buffer, linger=spec.linger, **first)


def with_default_linger(spec: FramingSpec, live: bool) -> FramingSpec:
    """Record framings linger 100 ms by default on a live input (a pipe or a terminal): there a
    frame may take minutes to fill. Fixed frames keep their exact size unless asked.
    `--linger off` (0) waits for full frames whatever the input."""
    if spec.linger == 0:
        return replace(spec, linger=None)
    if spec.linger is not None or not spec.record_based or not live:
        return spec
    return replace(spec, linger=DEFAULT_LINGER)


def _has_record(cut_of: Callable[[Buffer, int, bool], int], buffer: Buffer, filled: int) -> bool:
    return cut_of(buffer, filled, False) > 0


def _cutter(spec: FramingSpec) -> Callable[[Buffer, int, bool], int]:
    """For a framing: (buffer, bytes in it, stream ended) -> end of the last whole record."""
    if spec.framing is Framing.FIXED:  # whole_chars: a "record" is a UTF-8 character
        return _utf8_cut
    if spec.framing is Framing.LENGTH_PREFIXED:
        return _length_prefixed_cut
    delimiter = b"\n" if spec.framing is Framing.LINES else spec.delimiter

    def cut(buffer: Buffer, filled: int, ended: bool) -> int:
        if ended:
            return filled  # the last record may lack its delimiter
        return _rfind(buffer, delimiter, filled) + 1

    return cut


def _rfind(buffer: Buffer, delimiter: bytes, end: int) -> int:
    if isinstance(buffer, bytearray):
        return buffer.rfind(delimiter, 0, end)
    return bytes(buffer[:end]).rfind(delimiter)


def _utf8_cut(buffer: Buffer, filled: int, ended: bool) -> int:
    """Where the last whole UTF-8 character ends: before a lead byte whose character is not all
    in the buffer yet. Anything else (invalid UTF-8 included) is cut where it is; the text
    transform refuses invalid input itself, naming where it is."""
    if ended:
        return filled
    for back in range(1, min(4, filled) + 1):
        byte = buffer[filled - back]
        if byte < 0x80 or byte >= 0xF8:  # ASCII, or no UTF-8 at all: nothing to keep whole
            return filled
        if byte >= 0xC0:  # a lead byte, of a character this many bytes long
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return filled - back if length > back else filled
    return filled  # continuation bytes only: invalid, left to the transform


def _length_prefixed_cut(buffer: Buffer, filled: int, ended: bool) -> int:
    position = 0
    while position + LENGTH_PREFIX <= filled:
        length = int.from_bytes(buffer[position : position + LENGTH_PREFIX], "big")
        if position + LENGTH_PREFIX + length > filled:
            break
        position += LENGTH_PREFIX + length
    return filled if ended else position


def _record_length(buffer: Buffer, filled: int, spec: FramingSpec) -> int | None:
    """The length of the record starting the buffer, if its header says (length-prefixed)."""
    if spec.framing is Framing.LENGTH_PREFIXED and filled >= LENGTH_PREFIX:
        return LENGTH_PREFIX + int.from_bytes(buffer[:LENGTH_PREFIX], "big")
    return None


def _oversize_error(
    stream: ReadableInto, buffer: Buffer, filled: int, offset: int, spec: FramingSpec
) -> FramingError:
    """Reported as soon as a record is known not to fit: the input is not read on to find the
    record's end, which on an endless stream (`/dev/zero --framing lines`) never comes."""
    length = _record_length(buffer, filled, spec)
    size = f"{length} bytes" if length is not None else f"at least {filled + 1} bytes"
    return FramingError(
        f"record at offset {offset} is {size}, larger than the frame size "
        f"({len(buffer)} bytes); raise the frame size, or split or skip oversized records"
    )


def _skip_record(
    stream: ReadableInto, buffer: Buffer, filled: int, spec: FramingSpec, ended: bool
) -> tuple[bytes, int, bool]:
    """Discard the record filling `buffer`; return (what follows it, bytes discarded, ended)."""
    view = memoryview(buffer)
    length = _record_length(buffer, filled, spec)
    if length is not None:  # length-prefixed: skip exactly that many bytes
        remaining = length - filled
        while remaining > 0 and not ended:
            got = stream.readinto(view[: min(remaining, len(view))]) or 0
            ended = got == 0
            remaining -= got
        return b"", length - max(remaining, 0), ended
    delimiter = b"\n" if spec.framing is Framing.LINES else spec.delimiter
    gone = filled
    while not ended:
        got = stream.readinto(view) or 0
        if not got:
            return b"", gone, True
        at = bytes(view[:got]).find(delimiter)
        if at >= 0:
            return bytes(view[at + 1 : got]), gone + at + 1, False
        gone += got
    return b"", gone, ended
