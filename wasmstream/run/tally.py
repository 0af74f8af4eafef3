"""What a run has decided so far, counted in input order (for checkpoints, progress, --stats).

Plain data with two lists of callbacks: whoever writes a frame's output records it here, and
the journal and progress read it. A leaf: it knows frames, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from wasmstream.stream.framing import Frame


@dataclass
class Tally:
    """What has been decided so far, in input order: frames written (or dropped, under an
    overload policy). Updated only after a frame's output is written."""

    frames: int = 0  # written + dropped
    dropped: int = 0
    failed: int = 0  # skipped or passed through under --on-error
    input_bytes: int = 0
    output_bytes: int = 0
    # where the time went (--stats): reading input, running guests (summed), writing output
    input_seconds: float = 0.0
    guest_seconds: float = 0.0
    output_seconds: float = 0.0
    queue_fill: Callable[[], tuple[int, int]] = lambda: (0, 1)  # frames in flight, capacity
    workers: int = 1  # instances running frames now (--jobs auto changes it during a run)
    on_frame_written: list[Callable[[Frame, int], None]] = field(default_factory=list)
    on_frame_dropped: list[Callable[[Frame], None]] = field(default_factory=list)

    def record(self, frame: Frame, written: int) -> None:
        self.frames += 1
        self.input_bytes += frame.span
        self.output_bytes += written
        for callback in self.on_frame_written:
            callback(frame, written)

    def record_dropped(self, frame: Frame) -> None:
        self.dropped += 1
        for callback in self.on_frame_dropped:
            callback(frame)
        self.record(frame, 0)  # decided: a checkpoint after it does not read it again

    def record_finish(self, written: int) -> None:
        """The finish function's output, written after the last frame (no frame of its own)."""
        self.output_bytes += written
