"""The layout of `--output-parts DIR` (Hadoop's and Spark's convention; `cat DIR/part-*` is one
run's output), the same in a folder (stream/output_parts.py) and under an object-store prefix
(stream/object_parts.py):

    DIR/part-00000 …              the output of each part, numbered by its place on the grid of
                                   --part-size cuts (a part left empty by a long record is absent)
    DIR/_dead-letters-00000.jsonl  a part's failed frames (only for parts that had some)
    DIR/_checkpoint.json           the run's checkpoint (a shard's: _checkpoint.K-of-N.json)
    DIR/_SUCCESS                   written last, only by a run (or the last shard) that finished

and what the client records of a committed part (`Committed`).
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

PART = "part-"
DEAD_LETTERS = "_dead-letters-"
SUCCESS = "_SUCCESS"
CHECKPOINT = "_checkpoint"
WIDTH = 5  # part-00000: lexical order is input order below 10**WIDTH parts
MAX_PARTS = 10**WIDTH
TAIL = 64 * 1024  # a committed part is recognised by its size and the digest of its last bytes

# a part or its dead letters, committed, or an attempt's temporary file (dot-named, .tmp)
_NUMBERED = re.compile(rf"^\.?({PART}|{DEAD_LETTERS})(\d{{{WIDTH}}})(\.jsonl)?(\..+\.tmp)?$")


def part_name(number: int) -> str:
    return f"{PART}{number:0{WIDTH}d}"


def dead_letters_name(number: int) -> str:
    return f"{DEAD_LETTERS}{number:0{WIDTH}d}.jsonl"


def checkpoint_name(shard: tuple[int, int] | None) -> str:
    """The run's checkpoint in DIR: one per shard, so that shards share the folder."""
    return f"{CHECKPOINT}.json" if shard is None else f"{CHECKPOINT}.{shard[0]}-of-{shard[1]}.json"


def number_of(name: str) -> tuple[int, bool] | None:
    """(part number, whether committed) for a file of the protocol's, else None."""
    match = _NUMBERED.match(name)
    if match is None:
        return None
    committed = not name.startswith(".") and match.group(4) is None
    return int(match.group(2)), committed


class Committed(NamedTuple):
    """What a committed part is, as recorded by the client: its size, the digest of its last
    bytes, and the size of its dead letters (None: it had none)."""

    size: int
    tail_length: int
    tail_sha256: str
    dead_letters: int | None = None


def committed_part(
    size: int, tail: bytes | bytearray, dead_letters: int | None = None
) -> Committed:
    """What a part of `size` bytes ending in `tail` (its last TAIL bytes, or all) is recorded as."""
    return Committed(size, len(tail), hashlib.sha256(tail).hexdigest(), dead_letters)


class Tail:
    """The last TAIL bytes written to an attempt, kept as it is written."""

    def __init__(self) -> None:
        self.size = 0
        self._last = bytearray()

    def add(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._last += data[-TAIL:]
        del self._last[:-TAIL]

    def committed(self, dead_letters: int | None = None) -> Committed:
        return committed_part(self.size, self._last, dead_letters)
