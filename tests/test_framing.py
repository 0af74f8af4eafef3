"""Framing is pure: checked with hypothesis against streams that return short reads."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from wasmstream.framing import fill, fixed_frames


class ShortReads(io.RawIOBase):
    """A stream that hands data over in the piece sizes it is given, like a pipe."""

    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self._data = data
        self._pos = 0
        self._pieces = pieces or [len(data) or 1]
        self._n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = self._pieces[self._n % len(self._pieces)]
        self._n += 1
        chunk = self._data[self._pos : self._pos + min(piece, len(buffer))]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def cut(data: bytes, frame_size: int, pieces: list[int]) -> list[tuple[int, int, bytes]]:
    stream = ShortReads(data, pieces)
    buffer = bytearray(frame_size)
    return [(f.index, f.offset, bytes(f.data)) for f in fixed_frames(stream, lambda: buffer)]


@given(st.binary(max_size=3000), st.integers(1, 700), st.lists(st.integers(1, 900), max_size=8))
def test_frames_concatenate_to_the_input_whatever_the_read_sizes(
    data: bytes, frame_size: int, pieces: list[int]
) -> None:
    frames = cut(data, frame_size, pieces)
    assert b"".join(f for _, _, f in frames) == data
    assert all(len(f) == frame_size for _, _, f in frames[:-1])
    assert all(0 < len(f) <= frame_size for _, _, f in frames)
    assert [i for i, _, _ in frames] == list(range(len(frames)))
    assert [o for _, o, _ in frames] == [i * frame_size for i in range(len(frames))]
    # where frames are cut never depends on how the reads were chunked
    assert frames == cut(data, frame_size, [])


def test_empty_input_has_no_frames() -> None:
    assert cut(b"", 16, [3]) == []


def test_exact_multiple_has_no_empty_tail() -> None:
    assert [len(f) for _, _, f in cut(b"x" * 32, 16, [5])] == [16, 16]


def test_fill_stops_at_end_of_stream() -> None:
    buffer = bytearray(10)
    assert fill(ShortReads(b"abc", [1]), memoryview(buffer)) == 3
    assert buffer[:3] == b"abc"


def test_first_offset_shifts_offsets() -> None:
    buffer = bytearray(4)
    frames = list(fixed_frames(io.BytesIO(b"abcdefgh"), lambda: buffer, first_offset=100))
    assert [f.offset for f in frames] == [100, 104]
