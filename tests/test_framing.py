"""Framing is pure: checked with hypothesis against streams that return short reads."""

from __future__ import annotations

import io
import itertools

from hypothesis import given
from hypothesis import strategies as st

from wasmstream.stream.framing import fill, fixed_frames


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


# Record framings -----------------------------------------------------------------------------

import pytest  # noqa: E402

from wasmstream.errors import FramingError  # noqa: E402
from wasmstream.stream.framing import (  # noqa: E402
    Framing,
    FramingSpec,
    Oversize,
    Skipped,
    record_frames,
)


def cut_records(
    data: bytes,
    frame_size: int,
    pieces: list[int],
    spec: FramingSpec,
    skipped: Skipped | None = None,
) -> list[tuple[int, int, bytes]]:
    stream = ShortReads(data, pieces)
    buffer = bytearray(frame_size)
    return [
        (f.offset, f.span, bytes(f.data))
        for f in record_frames(stream, lambda: buffer, spec, skipped=skipped)
    ]


lines_text = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30).map(
    lambda records: b"\n".join(records)
)


@given(lines_text, st.integers(41, 200), st.lists(st.integers(1, 300), max_size=6))
def test_line_frames_hold_whole_lines(data: bytes, frame_size: int, pieces: list[int]) -> None:
    frames = cut_records(data, frame_size, pieces, FramingSpec(Framing.LINES))
    assert b"".join(f for _, _, f in frames) == data
    assert all(0 < len(f) <= frame_size for _, _, f in frames)
    assert all(f.endswith(b"\n") for _, _, f in frames[:-1])  # no line is ever split
    offsets = [o for o, _, _ in frames]
    assert offsets == [sum(len(f) for _, _, f in frames[:n]) for n in range(len(frames))]
    assert frames == cut_records(data, frame_size, [], FramingSpec(Framing.LINES))
    # as many whole lines as fit: the next line would not have fitted
    for (_, _, frame), (_, _, following) in itertools.pairwise(frames):
        if b"\n" not in following:
            continue  # the unterminated last line: until EOF is seen, it may still grow
        next_line = following.split(b"\n")[0] + b"\n"
        assert len(frame) + len(next_line) > frame_size


@given(
    st.lists(st.binary(max_size=30), max_size=20),
    st.integers(34, 120),
    st.lists(st.integers(1, 50), max_size=6),
)
def test_length_prefixed_frames_hold_whole_records(
    records: list[bytes], frame_size: int, pieces: list[int]
) -> None:
    data = b"".join(len(r).to_bytes(4, "big") + r for r in records)
    frames = cut_records(data, frame_size, pieces, FramingSpec(Framing.LENGTH_PREFIXED))
    assert b"".join(f for _, _, f in frames) == data
    for _, _, frame in frames:  # every frame parses into whole records, prefixes included
        position = 0
        while position < len(frame):
            position += 4 + int.from_bytes(frame[position : position + 4], "big")
        assert position == len(frame)
        assert len(frame) <= frame_size
    assert frames == cut_records(data, frame_size, [], FramingSpec(Framing.LENGTH_PREFIXED))


@given(
    st.lists(
        st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\x1e", b"")), max_size=25
    ),
    st.lists(st.integers(1, 70), max_size=6),
)
def test_oversize_skip_and_split(records: list[bytes], pieces: list[int]) -> None:
    data = b"".join(r + b"\x1e" for r in records)
    # skip: the records that fit, packed as many to a frame as fit; the others counted
    skip = FramingSpec(Framing.DELIMITER, delimiter=b"\x1e", oversize=Oversize.SKIP)
    skipped = Skipped()
    frames = cut_records(data, 20, pieces, skip, skipped)
    kept = [r + b"\x1e" for r in records if len(r) + 1 <= 20]
    gone = [r + b"\x1e" for r in records if len(r) + 1 > 20]
    assert b"".join(f for _, _, f in frames) == b"".join(kept)
    assert (skipped.records, skipped.bytes) == (len(gone), sum(map(len, gone)))
    for offset, _, frame in frames:  # each frame is the input found at its offset
        assert data[offset : offset + len(frame)] == frame
    if frames:  # spans cover the input up to the last frame's end: skipped bytes included
        last_offset, _, last = frames[-1]
        assert sum(span for _, span, _ in frames) == last_offset + len(last)
    # split: nothing lost; a frame ends a record unless it is a full piece of a long one
    split = FramingSpec(Framing.DELIMITER, delimiter=b"\x1e", oversize=Oversize.SPLIT)
    pieces_of = cut_records(data, 20, pieces, split)
    assert b"".join(f for _, _, f in pieces_of) == data
    for _, _, frame in pieces_of:
        if not frame.endswith(b"\x1e"):  # a piece of a long record: a full frame of it alone
            assert len(frame) == 20 and b"\x1e" not in frame
    assert sum(span for _, span, _ in pieces_of) == len(data)


def test_oversize_error_names_offset_and_length() -> None:
    data = b"short\n" + b"x" * 50 + b"\nend\n"
    with pytest.raises(
        FramingError,
        match=r"record at offset 6 is at least 17 bytes, larger than the frame size \(16 bytes\)",
    ):
        cut_records(data, 16, [7], FramingSpec(Framing.LINES))


def test_spans_account_for_skipped_records() -> None:
    data = b"a\n" + b"y" * 30 + b"\nb\n"
    frames = cut_records(data, 8, [], FramingSpec(Framing.LINES, oversize=Oversize.SKIP))
    assert [(o, s, f) for o, s, f in frames] == [(0, 2, b"a\n"), (33, 33, b"b\n")]


# --- whole UTF-8 characters (a text component's fixed frames) -------------------------------

WHOLE_CHARS = FramingSpec(Framing.FIXED, whole_chars=True)


@given(
    st.text(max_size=400),
    st.integers(4, 64),
    st.lists(st.integers(1, 90), max_size=6),
)
def test_fixed_frames_can_keep_utf8_characters_whole(
    text: str, frame_size: int, pieces: list[int]
) -> None:
    data = text.encode()
    frames = cut_records(data, frame_size, pieces, WHOLE_CHARS)
    assert b"".join(f for _, _, f in frames) == data
    for _, _, frame in frames:
        frame.decode()  # every frame is valid UTF-8 on its own
        assert 0 < len(frame) <= frame_size
    # at most a character's first 3 bytes move on to the next frame
    assert all(len(f) > frame_size - 4 for _, _, f in frames[:-1])
    assert frames == cut_records(data, frame_size, [], WHOLE_CHARS)


def test_invalid_utf8_is_cut_where_it_is_and_left_to_the_transform() -> None:
    data = b"ab\xff\xfe\xfd\xfcgh\x80"
    frames = [f for _, _, f in cut_records(data, 4, [], WHOLE_CHARS)]
    assert b"".join(frames) == data
    assert [len(f) for f in frames] == [4, 4, 1]
