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

from collections.abc import Callable
from typing import Protocol

import msgspec

from . import checkpoint
from .checkpoint import WINDOW, Checkpoint, Digest, Failure, Position, Status
from .errors import GuestError
from .framing import Frame
from .tally import Tally


class StreamProgress(Protocol):
    """What the journal asks of the input (a ConcatenatedInput, or a cluster run's parts)."""

    @property
    def head(self) -> bytearray: ...

    @property
    def skipped_tail(self) -> bytes: ...

    def progress(self, stream_offset: int) -> list[int]:
        """Bytes of each input done once this run has done `stream_offset` bytes."""
        ...


class StreamTail:
    """The last WINDOW bytes of the input stream up to the last frame written.

    Fed with each frame as it is written, whose input is still intact then (the run keeps frames
    in host buffers when it watches a stream); a gap (bytes skipped or dropped, never seen in a
    frame) starts it afresh, so it only ever holds bytes that really precede the offset.
    """

    def __init__(self, seed: bytes) -> None:
        self._bytes = bytearray(seed[-WINDOW:])
        self._gap = False

    def frame_dropped(self, frame: Frame) -> None:
        self._gap = True  # a dropped frame's buffer is scratch space, overwritten since

    def frame_written(self, frame: Frame, written: int) -> None:
        if self._gap or frame.span != frame.length:
            self._bytes.clear()
            self._gap = False
            if frame.span != frame.length:  # oversized records skipped just before it
                self._bytes += frame.data[-WINDOW:]
            return
        self._bytes += frame.data[-WINDOW:]
        del self._bytes[:-WINDOW]

    def digest(self) -> Digest:
        return Digest.of(self._bytes)


class Journal:
    def __init__(
        self,
        path: str,
        record: Checkpoint,
        *,
        syncs: list[Callable[[], None]],
        stream: StreamProgress,
        tally: Tally,
        clock: checkpoint.Clock,
        stream_tail: StreamTail | None = None,
        output_fd: int | None = None,
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
        self.saves = 0
        if stream_tail is not None:
            tally.on_frame_dropped.append(stream_tail.frame_dropped)
            tally.on_frame_written.append(stream_tail.frame_written)
        tally.on_frame_written.append(self.frame_written)

    def frame_written(self, frame: Frame, written: int) -> None:
        if self._clock.due():
            self.save("running")

    def save(self, status: Status, failure: Failure | None = None) -> None:
        for sync in self._syncs:  # the invariant: never claim output that is not durable
            sync()
        self._record = msgspec.structs.replace(
            self._record,
            position=self._position(),
            status=status,
            failure=failure,
            updated=checkpoint.now(),
        )
        checkpoint.save(self.path, self._record)
        self.saves += 1
        self._clock.reset()

    def _position(self) -> Position:
        input_bytes = self._start.input_bytes + self._tally.bytes_in
        output_bytes = self._start.output_bytes + self._tally.bytes_out
        head = tail = None
        if self._stream_tail is not None:
            head = Digest.of(self._stream.head[: min(WINDOW, input_bytes)])
            tail = self._stream_tail.digest()
        output_tail = None
        if self._output_fd is not None:
            output_tail = checkpoint.output_tail(self._output_fd, output_bytes)
        return Position(
            input_bytes=input_bytes,
            per_input=self._stream.progress(self._tally.bytes_in),
            frames=self._start.frames + self._tally.frames,
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
