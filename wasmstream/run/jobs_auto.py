"""`--jobs auto`, the default: one instance on the calling thread, or a pool of workers, chosen
while the run goes on, by measuring it.

Passing the read and write turns between threads costs the host more than a cheap guest call
does (a no-op guest runs slower on two threads than on one), while a heavy guest runs nearly
twice as fast on two cores.
Which one wins depends on how long the guest takes per frame against the host's own cost per
frame, and that can change within a run (a log whose first megabytes are cheap and the rest
expensive). So the run is cut into segments at frame boundaries, each run by the shape that the
last measurements favour:

- serial: the run measures guest time and wall time per frame; if the guest's share is large
  enough that `workers` instances would beat one even after paying the hand-off cost, it
  switches to the pool;
- parallel: it measures wall time per frame written; if that is no better than serial was (or
  the guest has become cheap), it switches back, remembering what the pool cost.

Every segment is an ordinary run of `pool`'s serial or parallel shape over the same frame
generator, so output order, checkpoints, failure handling and memory bounds are theirs; a
switch waits until every frame of the segment is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from time import perf_counter
from typing import Protocol

from wasmstream.engines.base import Instance
from wasmstream.run.on_error import FailureHandler
from wasmstream.run.pool import Frames, InputWaits, PoolSettings, Write, run_frames
from wasmstream.run.tally import Tally
from wasmstream.stream.framing import Buffer, Frame

FIRST_LOOK = 0.05  # seconds of a run before the first decision
LOOK = 0.25  # seconds between later decisions: switches cost a pool start and a drain
MIN_FRAMES = 8  # frames a decision needs at the least
GAIN = 0.8  # switch to the pool only for a predicted gain of 20% or more
# Seconds of host time per frame in the pool, until measured. It is a few times what passing
# turns costs, on purpose: the first look at a run is noisy (its first frames cost more: cold
# pages, first calls), and a guess close to the true cost sent no-op guests to the pool on that
# noise, where they stayed. `make bench` (F1, F2) shows whether it still chooses well.
HAND_OFF_GUESS = 60e-6


class _Reasoned(Protocol):
    """Where the latest decision is told (the run's summary, for --stats)."""

    jobs_reason: str


class _Segments:
    """One frame generator for the whole run, handed out in segments: each runner gets frames
    until `should_switch` says so, reading them into buffers of its own."""

    def __init__(self, frames: Frames) -> None:
        self._next_buffer: Callable[[], Buffer] | None = None
        self._source = frames(self._buffer)
        self.exhausted = False

    def _buffer(self) -> Buffer:
        assert self._next_buffer is not None
        return self._next_buffer()

    def segment(self, should_switch: Callable[[], bool], started: Callable[[], None]) -> Frames:
        """The next segment's frames; `started` is called when its runner, its instances
        started, asks for the first one."""

        def frames(next_buffer: Callable[[], Buffer]) -> Iterator[Frame]:
            self._next_buffer = next_buffer
            started()
            return self._frames(should_switch)

        return frames

    def _frames(self, should_switch: Callable[[], bool]) -> Iterator[Frame]:
        for frame in self._source:
            yield frame
            # Decided before the next buffer is asked for: it must come from the next runner.
            if should_switch():
                return
        self.exhausted = True


class Controller:
    """Measures the current segment and decides when the other shape would do better."""

    def __init__(
        self,
        tally: Tally,
        workers: int,
        flip_every: int | None = None,
        on_decision: _Reasoned | None = None,
    ) -> None:
        self._tally = tally
        self._on_decision = on_decision
        self.workers = workers
        self.parallel = False
        self._flip_every = flip_every  # tests: switch every N frames, whatever is measured
        self._hand_off = HAND_OFF_GUESS
        self._serial_per_frame: float | None = None
        self._serial_host: float | None = None
        self.switches = 0
        self._reason = ""
        self.reason = "serial: the run ended before a first measurement"
        self._begin(FIRST_LOOK)

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, text: str) -> None:
        self._reason = text
        if self._on_decision is not None:
            self._on_decision.jobs_reason = f"auto, {text}"

    def _begin(self, look: float) -> None:
        self._look = look
        self._start_time = perf_counter()
        self._start_frames = self._tally.frames
        self._start_guest = self._tally.guest_seconds
        self._calls = 0

    def should_switch(self) -> bool:
        """Called by the reader after each frame it hands on."""
        self._calls += 1
        if self._flip_every is not None:
            return self._calls >= self._flip_every
        if self._calls < MIN_FRAMES or self._calls & 7:  # the clock, every 8 frames at most
            return False
        elapsed = perf_counter() - self._start_time
        frames = self._tally.frames - self._start_frames  # written, in order
        if elapsed < self._look or frames < MIN_FRAMES:
            return False
        guest = (self._tally.guest_seconds - self._start_guest) / frames
        per_frame = elapsed / frames
        decide = self._from_parallel if self.parallel else self._from_serial
        if decide(guest, per_frame):
            return True
        self._begin(LOOK)
        return False

    def _from_serial(self, guest: float, per_frame: float) -> bool:
        self._serial_per_frame, self._serial_host = per_frame, max(per_frame - guest, 0.0)
        predicted = max(guest / self.workers, self._hand_off)
        if self.workers > 1 and predicted < GAIN * per_frame:
            self.reason = (
                f"{self.workers} workers: guest {_us(guest)}/frame, predicted "
                f"{_us(predicted)}/frame against {_us(per_frame)}/frame serially"
            )
            return True
        self.reason = (
            f"serial: guest {_us(guest)}/frame, host {_us(self._serial_host)}/frame; "
            f"{self.workers} workers would take {_us(predicted)}/frame"
        )
        return False

    def _from_parallel(self, guest: float, per_frame: float) -> bool:
        serial = self._serial_per_frame
        if serial is not None and self._serial_host is not None:
            serial = min(serial, guest + self._serial_host)  # the guest may have got cheaper
        if serial is not None and per_frame > serial / (GAIN + 0.15):
            self._hand_off = max(self._hand_off, per_frame)  # what the pool really costs
            self.reason = (
                f"serial: {self.workers} workers took {_us(per_frame)}/frame, one "
                f"{_us(serial)}/frame"
            )
            return True
        self.reason = (
            f"{self.workers} workers: {_us(per_frame)}/frame against "
            f"{_us(serial or 0.0)}/frame serially (guest {_us(guest)}/frame)"
        )
        return False

    def segment_started(self) -> None:
        """Measure from here: starting instances (a wasmer worker process takes ~50 ms) is not
        a cost per frame of either shape."""
        self._begin(self._look)

    def switched(self) -> None:
        self.parallel = not self.parallel
        self.switches += 1
        self._begin(LOOK)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def run_adaptive(
    frames: Frames,
    new_instance: Callable[[], Instance],
    write: Write,
    settings: PoolSettings,
    tally: Tally,
    failures: FailureHandler,
    *,
    flip_every: int | None = None,
    on_decision: _Reasoned | None = None,
    input_waits: InputWaits | None = None,
) -> Controller:
    """Like `pool.run_frames` with `settings.jobs` instances at most, switching between one
    instance on this thread and a pool of them as measurements say. Returns the controller,
    which says what it chose and why (for --stats)."""
    controller = Controller(tally, settings.jobs, flip_every, on_decision)
    tally.workers = 1
    segments = _Segments(frames)
    serial = replace(settings, jobs=1)
    while not segments.exhausted:
        shape = settings if controller.parallel else serial
        tally.workers = shape.jobs
        run_frames(
            segments.segment(controller.should_switch, controller.segment_started),
            new_instance,
            write,
            shape,
            tally,
            failures,
            input_waits=input_waits,
        )
        if not segments.exhausted:
            controller.switched()
    return controller
