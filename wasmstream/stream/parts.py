"""Cutting the input into parts that can run apart: shards (`--shard K/N`) and cluster tasks.

Hadoop's rule: a record belongs to the part in which it starts. A part is a byte range of the
concatenated input whose ends are record starts, found from nominal cut points:

- fixed framing: cuts fall on multiples of the frame size, so each part holds whole frames and
  the frames are exactly those of one run;
- lines and delimiter: a cut moves forward to just after the next delimiter (a cut that already
  follows one stays), so it can be found by reading near it;
- length-prefixed: records carry no marker, so record starts are found by walking the length
  headers from the start of the input (a 4-byte read per record, buffered).

Concatenating the parts' outputs in order gives one run's output: byte for byte under fixed
framing; under a record framing, for any transform that treats records on their own (frames are
cut afresh at each part's start, as they would be by a run started there).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

from wasmstream.stream.framing import LENGTH_PREFIX, Framing, FramingSpec
from wasmstream.stream.sources import Inputs

SCAN = 64 * 1024  # how much is read at a time looking for a delimiter or walking headers


class Part(NamedTuple):
    """Bytes [start, end) of the input stream; `first_frame` numbers its frames on (fixed
    framing; under record framings a part's frame numbers are counted by whoever joins them)."""

    number: int
    start: int
    end: int
    first_frame: int

    @property
    def length(self) -> int:
        return self.end - self.start


def shard_part(inputs: Inputs, spec: FramingSpec, frame_size: int, k: int, n: int) -> Part:
    """The K-th (from 1) of N shards of the input."""
    if spec.framing is Framing.FIXED:
        frames = -(-inputs.total // frame_size)
        cuts = [frames * j // n * frame_size for j in (k - 1, k)]
    else:
        cuts = [inputs.total * j // n for j in (k - 1, k)]
    start, end = align(inputs, spec, cuts)
    return Part(k - 1, start, end, _first_frame(spec, start, frame_size))


def grid_step(framing: Framing, frame_size: int, part_size: int) -> int:
    """The distance between nominal cuts: `part_size`, whole frames under fixed framing."""
    if framing is Framing.FIXED:
        return max(1, -(-part_size // frame_size)) * frame_size
    return part_size


def split(
    inputs: Inputs,
    spec: FramingSpec,
    frame_size: int,
    part_size: int,
    start: int = 0,
    end: int | None = None,
) -> list[Part]:
    """The input from `start` to `end` (record starts: 0, where a part ended, a shard's ends;
    None: the input's end) cut into parts of about `part_size` bytes (whole frames under fixed
    framing). The cuts are those of the whole input, wherever the run starts, and a part's
    number is its place among them (part N starts at the first record start at or after
    N * step), so that a resumed run or a shard cuts the same parts as one run from 0; parts
    left empty (a record longer than a part) are left out."""
    step = grid_step(spec.framing, frame_size, part_size)
    stop = inputs.total if end is None else min(end, inputs.total)
    first = start // step  # `start` is where part `first` begins (see above)
    numbers = range(first, max(first + 1, -(-stop // step)))
    cuts = [start, *(n * step for n in numbers[1:]), max(start, stop)]
    bounds = align(inputs, spec, cuts)
    bounds[-1] = max(start, stop)
    return [
        Part(number, begin, finish, _first_frame(spec, begin, frame_size))
        for number, (begin, finish) in zip(numbers, itertools.pairwise(bounds), strict=False)
        if finish > begin
    ]


def shard_of_parts(
    inputs: Inputs, spec: FramingSpec, frame_size: int, part_size: int, k: int, n: int
) -> Part:
    """The K-th (from 1) of N shards of a run in parts (--output-parts): whole parts, the K-th
    of N runs of the grid's parts, so that shards write the very parts one run would."""
    step = grid_step(spec.framing, frame_size, part_size)
    count = max(1, -(-inputs.total // step))
    first, last = ((count * j // n) for j in (k - 1, k))
    start, end = align(inputs, spec, [first * step, last * step])
    return Part(first, start, end, _first_frame(spec, start, frame_size))


def _first_frame(spec: FramingSpec, start: int, frame_size: int) -> int:
    return start // frame_size if spec.framing is Framing.FIXED else 0


def align(inputs: Inputs, spec: FramingSpec, cuts: Sequence[int]) -> list[int]:
    """Each cut (in increasing order) moved forward to the first record start at or after it."""
    if spec.framing is Framing.FIXED:
        return [min(cut, inputs.total) for cut in cuts]
    if spec.framing is Framing.LENGTH_PREFIXED:
        return _walk_headers(inputs, cuts)
    delimiter = b"\n" if spec.framing is Framing.LINES else spec.delimiter
    return [_after_delimiter(inputs, delimiter, cut) for cut in cuts]


def _after_delimiter(inputs: Inputs, delimiter: bytes, cut: int) -> int:
    if cut <= 0 or cut >= inputs.total:
        return max(0, min(cut, inputs.total))
    position = cut - 1  # a cut just after a delimiter is a record start already
    while position < inputs.total:
        block = inputs.read_at(position, SCAN)
        found = block.find(delimiter)
        if found >= 0:
            return position + found + 1
        position += len(block)
    return inputs.total


def _walk_headers(inputs: Inputs, cuts: Sequence[int]) -> list[int]:
    """Record starts of a length-prefixed stream at or after each cut, in one walk from 0."""
    reader = _BlockReader(inputs)
    aligned = []
    record = 0
    for cut in cuts:
        while record < min(cut, inputs.total):
            header = reader.read(record, LENGTH_PREFIX)
            if len(header) < LENGTH_PREFIX:  # a truncated last header: the rest is one record
                record = inputs.total
                break
            record += LENGTH_PREFIX + int.from_bytes(header, "big")
        aligned.append(min(record, inputs.total))
    return aligned


class _BlockReader:
    """Small reads at increasing offsets, served from one block (object stores charge per
    request: a header walk must not make one per record)."""

    def __init__(self, inputs: Inputs) -> None:
        self._inputs = inputs
        self._start = 0
        self._block = b""

    def read(self, offset: int, length: int) -> bytes:
        end = self._start + len(self._block)
        if not (self._start <= offset and offset + length <= end):
            self._start = offset
            self._block = self._inputs.read_at(offset, max(SCAN, length))
        at = offset - self._start
        return self._block[at : at + length]
