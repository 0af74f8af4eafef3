"""Keeping the checkpoint up to date while a run goes on.

Called after each frame's output is written (from whichever thread writes), it saves at most
every interval: first the output is made durable, then the checkpoint that covers it is
replaced. `finish` writes the final state: complete, failed (with where), or still running
(interrupted: resumable).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from . import checkpoint
from .checkpoint import Checkpoint, Failure, Position, Status
from .errors import GuestError
from .framing import Frame
from .inputs import ConcatenatedInput
from .pool import Tally


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
    ) -> None:
        self.path = path
        self._record = record
        self._start = record.position
        self._syncs = syncs
        self._stream = stream
        self._tally = tally
        self._clock = clock
        self.saves = 0

    def frame_written(self, frame: Frame, written: int) -> None:
        if self._clock.due():
            self.save("running")

    def save(self, status: Status, failure: Failure | None = None) -> None:
        for sync in self._syncs:  # the invariant: never claim output that is not durable
            sync()
        input_bytes = self._start.input_bytes + self._tally.bytes_in
        position = Position(
            input_bytes=input_bytes,
            per_input=self._stream.progress(self._tally.bytes_in),
            frames=self._start.frames + self._tally.frames,
            output_bytes=self._start.output_bytes + self._tally.bytes_out,
        )
        self._record = msgspec.structs.replace(
            self._record,
            position=position,
            status=status,
            failure=failure,
            updated=checkpoint.now(),
        )
        checkpoint.save(self.path, self._record)
        self.saves += 1
        self._clock.reset()

    def finish(self, error: BaseException | None) -> None:
        """The final save: complete, failed at a frame, or running (interrupted, resumable)."""
        if error is None:
            self.save("complete")
        elif isinstance(error, GuestError):
            self.save("failed", Failure(message=str(error), frame=error.frame, offset=error.offset))
        elif isinstance(error, KeyboardInterrupt) or getattr(error, "status", 0) >= 128:
            self.save("running")  # interrupted or the output pipe closed: resumable as it is
        else:
            self.save("failed", Failure(message=str(error)))
