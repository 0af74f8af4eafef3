"""Keeping the checkpoint up to date while a run goes on.

Called after each frame's output is written (from whichever thread writes), it saves at most
every interval: first the output is made durable, then the checkpoint that covers it is
replaced. `finish` writes the final state: complete, failed (with where), or interrupted
(resumable as it is).

Each save also records what a resumed run needs to recognise its data: for a stream (stdin, a
pipe), digests of its first bytes and of the bytes just before the saved offset; for an output
file, a digest of its bytes just before the saved output offset.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from . import checkpoint
from .checkpoint import WINDOW, Checkpoint, Digest, Failure, Position, Status
from .errors import GuestError
from .framing import Frame
from .inputs import ConcatenatedInput
from .tally import Tally


class StreamTail:
    """The last bytes of the input stream up to the last frame written (WINDOW of them, and
    SLACK more, so that a save may claim a little less than all that was written: see
    `Journal`'s pipe outputs).

    Fed with each frame as it is written, whose input is still intact then (the run keeps frames
    in host buffers when it watches a stream); a gap (bytes skipped or dropped, never seen in a
    frame) starts it afresh, so it only ever holds bytes that really precede the offset.
    """

    SLACK = 4 << 20

    def __init__(self, seed: bytes, end: int) -> None:
        self._bytes = bytearray(seed[-WINDOW:])
        self._end = end  # the stream offset just after the last byte held
        self._gap = False

    def frame_dropped(self, frame: Frame) -> None:
        self._gap = True  # a dropped frame's buffer is scratch space, overwritten since

    def frame_written(self, frame: Frame, written: int) -> None:
        if self._gap or frame.span != frame.length:  # bytes the frames never held
            self._bytes.clear()
            self._gap = False
        self._bytes += frame.data[-(WINDOW + self.SLACK) :]
        del self._bytes[: -(WINDOW + self.SLACK)]
        self._end = frame.offset + frame.length

    def digest(self, at: int) -> Digest:
        """The digest of the WINDOW bytes (or fewer, if fewer are known) before offset `at`."""
        held = len(self._bytes) - (self._end - at)
        return Digest.of(self._bytes[max(held - WINDOW, 0) : max(held, 0)])


class _FrameEnd(NamedTuple):
    bytes_in: int
    frames: int
    bytes_out: int


def unread_in_pipe(fd: int) -> int:
    """Bytes written to the pipe at `fd` that its reader has not taken yet (0 if not a pipe)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except OSError:
        return 0


class Journal:
    def __init__(
        self,
        path: str,
        record: Checkpoint,
        *,
        syncs: list[Callable[[], None]],
        stream: ConcatenatedInput,
        tally: Tally,
        clock: checkpoint.Clock,
        stream_tail: StreamTail | None = None,
        output_fd: int | None = None,
        pipe_fd: int | None = None,
    ) -> None:
        self.path = path
        self._record = record
        self._start = record.position
        self._syncs = syncs
        self._stream = stream
        self._tally = tally
        self._clock = clock
        self._stream_tail = stream_tail
        self._output_fd = output_fd
        # Output to a pipe (stdout, a FIFO): a save claims only what its reader has taken, so
        # that if the reader dies the bytes left in the pipe are not counted as delivered.
        self._pipe_fd = pipe_fd
        self._ends: deque[_FrameEnd] = deque()
        self._last: _FrameEnd | None = None
        self.saves = 0
        if stream_tail is not None:
            tally.on_frame_dropped.append(stream_tail.frame_dropped)
            tally.on_frame_written.append(stream_tail.frame_written)
        tally.on_frame_written.append(self.frame_written)

    def frame_written(self, frame: Frame, written: int) -> None:
        if self._pipe_fd is not None:
            tally = self._tally
            self._ends.append(_FrameEnd(tally.bytes_in, tally.frames, tally.bytes_out))
        if self._clock.due():
            self.save("running")

    def save(self, status: Status, failure: Failure | None = None) -> None:
        for sync in self._syncs:  # the invariant: never claim output that is not durable
            sync()
        self._record = msgspec.structs.replace(
            self._record,
            position=self._position(finished=status == "complete"),
            status=status,
            failure=failure,
            updated=checkpoint.now(),
        )
        checkpoint.save(self.path, self._record)
        self.saves += 1
        self._clock.reset()

    def _delivered(self, finished: bool) -> _FrameEnd:
        """Where this run has got to: its last frame written; to a pipe, while the run goes on
        or when its reader went away, the last frame whose output the reader has taken. (A run
        that finished has put everything in the pipe, for a reader that is still there.)"""
        tally = self._tally
        now = _FrameEnd(tally.bytes_in, tally.frames, tally.bytes_out)
        if self._pipe_fd is None or finished:
            return now
        taken = now.bytes_out - unread_in_pipe(self._pipe_fd)
        delivered = _FrameEnd(0, 0, 0)
        while self._ends and self._ends[0].bytes_out <= taken:
            delivered = self._ends.popleft()
        if delivered == _FrameEnd(0, 0, 0) and self._last is not None:
            delivered = self._last  # nothing newer was taken: where the last save stood
        self._ends.appendleft(delivered)  # later saves can only move on from here
        self._last = delivered
        return delivered

    def _position(self, finished: bool) -> Position:
        done = self._delivered(finished)
        input_bytes = self._start.input_bytes + done.bytes_in
        output_bytes = self._start.output_bytes + done.bytes_out
        head = tail = None
        if self._stream_tail is not None:
            head = Digest.of(self._stream.head[: min(WINDOW, input_bytes)])
            tail = self._stream_tail.digest(input_bytes)
        output_tail = None
        if self._output_fd is not None:
            output_tail = checkpoint.output_tail(self._output_fd, output_bytes)
        return Position(
            input_bytes=input_bytes,
            per_input=self._stream.progress(done.bytes_in),
            frames=self._start.frames + done.frames,
            output_bytes=output_bytes,
            stream_head=head,
            stream_tail=tail,
            output_tail=output_tail,
        )

    @property
    def input_bytes(self) -> int:
        return self._record.position.input_bytes

    def finish(self, error: BaseException | None) -> None:
        """The final save: complete, failed at a frame, or interrupted (resumable)."""
        if error is None:
            self.save("complete")
        elif isinstance(error, GuestError):
            self.save("failed", Failure(message=str(error), frame=error.frame, offset=error.offset))
        elif isinstance(error, KeyboardInterrupt) or getattr(error, "status", 0) >= 128:
            self.save("interrupted")  # a signal or the output pipe closed: resumable as it is
        else:
            self.save("failed", Failure(message=str(error)))
