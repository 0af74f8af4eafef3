"""Cutting a byte stream into frames.

Pure code: the only I/O is `readinto` on the stream it is given. A frame is filled completely
across short reads (pipes hand data over in whatever pieces the kernel chose), so where frames
are cut never depends on how the input arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

Buffer = bytearray | memoryview
"""Where a frame is read to: a host buffer, or the guest's own input buffer (saving a copy)."""


class ReadableInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Frame:
    """One frame of the input: `length` bytes at the start of `buffer`, found at `offset`."""

    __slots__ = ("buffer", "index", "length", "offset")

    def __init__(self, index: int, offset: int, buffer: Buffer, length: int) -> None:
        self.index = index
        self.offset = offset
        self.buffer = buffer
        self.length = length

    @property
    def data(self) -> memoryview:
        return memoryview(self.buffer)[: self.length]

    def __repr__(self) -> str:
        return f"Frame(index={self.index}, offset={self.offset}, length={self.length})"


def fill(stream: ReadableInto, buffer: memoryview) -> int:
    """Read into `buffer` until it is full or the stream ends; return how many bytes were read.

    Fewer than `len(buffer)` bytes means the stream has ended.
    """
    filled = 0
    size = len(buffer)
    while filled < size:
        got = stream.readinto(buffer[filled:])
        if not got:  # 0 is the end of the stream
            break
        filled += got
    return filled


def fixed_frames(
    stream: ReadableInto,
    next_buffer: Callable[[], Buffer],
    *,
    first_index: int = 0,
    first_offset: int = 0,
) -> Iterator[Frame]:
    """Cut `stream` into frames the size of the buffers `next_buffer` hands out.

    Every frame is full except the last, which may be shorter; empty input yields nothing.
    `next_buffer` may block until a buffer is free: that is how backpressure reaches the reader.
    A resumed run numbers its frames and offsets on from where the last run stopped.
    """
    index, offset = first_index, first_offset
    while True:
        buffer = next_buffer()
        length = fill(stream, memoryview(buffer))
        if length:
            yield Frame(index, offset, buffer, length)
            index += 1
            offset += length
        if length < len(buffer):
            return
