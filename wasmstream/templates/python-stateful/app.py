"""@NAME@: a stateful wasmstream transform in Python, built into a WebAssembly component.

It numbers lines across frames and ends with their count. wasmstream runs a stateful component
as one instance that sees every frame in order; each checkpoint saves `snapshot()` beside the
position, and a resumed run `restore`s it into a fresh instance, so its output is the same as
an uninterrupted run's. See README.md.
"""

import wit_world
from componentize_py_types import Err


class State:
    """Everything carried from one frame to the next: keep snapshot and restore in step."""

    def __init__(self) -> None:
        self.lines = 0  # lines begun so far
        self.at_start = True  # whether the next byte begins a line


state = State()


class WitWorld(wit_world.WitWorld):
    def init(self, config: bytes) -> None:
        pass  # `--config`'s bytes (empty without); raise Err("why") to refuse them

    def process(self, frame: bytes) -> bytes:
        out = bytearray()
        pieces = frame.split(b"\n")
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            if last and not piece:
                break  # the frame ended with a newline, or was empty
            if state.at_start:
                state.lines += 1
                out += b"%d: " % state.lines
            out += piece if last else piece + b"\n"
            state.at_start = not last
        return bytes(out)

    def finish(self) -> bytes:
        return b"%d lines\n" % state.lines

    def snapshot(self) -> bytes:
        return b"%d %d" % (state.lines, state.at_start)

    def restore(self, saved: bytes) -> None:
        try:
            lines, at_start = saved.split()
            state.lines, state.at_start = int(lines), at_start == b"1"
        except ValueError:
            raise Err(f"not a state of this transform: {saved[:40]!r}") from None
