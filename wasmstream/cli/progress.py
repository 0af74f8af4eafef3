"""Progress on stderr while a run goes on, and the summary (`--stats`) at its end.

Progress appears only when stderr is a terminal that the data does not go to (or `--progress`
insists), never on stdout. On a terminal it is one line redrawn in place, cut to the terminal's
width field by field (the least useful go first); elsewhere (`--progress 2>log`) it is a plain
line every few seconds and one at the end, as a log wants. It is drawn by a thread that reads
the run's counters; the data path never waits for it.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TextIO

from wasmstream.errors import IOFailure

if TYPE_CHECKING:
    from wasmstream.run.skeleton import RunSummary
    from wasmstream.run.tally import Tally

MiB = 1 << 20
TERMINAL_REFRESH = 0.2  # seconds between redraws of the line on a terminal
PLAIN_INTERVAL = 5.0  # seconds between lines in a log: often enough to see a run move
_RATE_WINDOW = 5.0  # seconds of samples the rate is measured over
_BAR_MIN, _BAR_MAX = 10, 30


@dataclass(frozen=True)
class Snapshot:
    """What one progress line shows."""

    done: int  # input bytes, a resumed run's earlier ones included
    total: int | None
    speed: float  # bytes per second, lately
    frames: int
    workers: int
    queue: tuple[int, int]  # frames in flight, capacity
    failed: int
    dropped: int


def _size(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


_BAR = "\0"  # where the bar goes, sized once the fields that fit are known


def _fields(snap: Snapshot, bar: bool) -> list[tuple[int, str]]:
    """(priority, text) in display order; the lowest priority is the first left out."""
    size = _size(snap.done)
    fields = []
    if snap.total:
        if bar:
            fields.append((55, _BAR * (_BAR_MIN + 2)))
        fields.append((90, f"{min(100, 100 * snap.done // snap.total):3d}%"))
        size += f" of {_size(snap.total)}"
    fields += [(100, size), (80, f"{_size(snap.speed)}/s")]
    if snap.total and snap.speed > 0 and snap.done < snap.total:
        fields.append((50, f"ETA {_eta((snap.total - snap.done) / snap.speed)}"))
    fields.append((40, f"{snap.frames} frame{'s' if snap.frames != 1 else ''}"))
    if snap.failed:
        fields.append((70, f"{snap.failed} failed"))
    if snap.dropped:
        fields.append((60, f"{snap.dropped} dropped"))
    plural = "s" if snap.workers != 1 else ""
    fields += [
        (20, f"{snap.workers} worker{plural}"),
        (10, f"queue {snap.queue[0]}/{snap.queue[1]}"),
    ]
    return fields


def _join(fields: list[tuple[int, str]]) -> str:
    return " ".join(["wasmstream", *(text for _, text in fields)])


def terminal_line(snap: Snapshot, width: int) -> str:
    """The line for a terminal `width` columns wide, shorter than it (the cursor stays on it):
    the fields that fit, the least useful left out first, and a bar when the total is known."""
    fields = _fields(snap, bar=True)
    room = width - 1
    while fields and len(_join(fields)) > room:
        fields.remove(min(fields, key=lambda field: field[0]))
    line = _join(fields)
    if _BAR not in line:
        return line
    inside = min(_BAR_MAX, _BAR_MIN + room - len(line))
    filled = min(inside, inside * snap.done // (snap.total or 1))
    return line.replace(_BAR * (_BAR_MIN + 2), f"[{'#' * filled}{'-' * (inside - filled)}]")


def plain_line(snap: Snapshot) -> str:
    """A log's line: every field, no bar, nothing drawn over."""
    return "wasmstream: " + ", ".join(text.strip() for _, text in _fields(snap, bar=False)) + "\n"


def _terminal_width(stream: TextIO) -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


class ProgressDisplay:
    """Progress on stderr, refreshed from the tally by its own thread."""

    def __init__(self, tally: Tally, total_bytes: int | None, done_before: int = 0) -> None:
        self._tally = tally
        self._total = total_bytes
        self._done_before = done_before
        self._out = sys.stderr
        self._live = self._out.isatty()
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._refresh, name="wasmstream-progress", daemon=True
        )

    def __enter__(self) -> ProgressDisplay:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._draw()
        if self._live:
            self._write("\n")

    def _refresh(self) -> None:
        while not self._stop.wait(TERMINAL_REFRESH if self._live else PLAIN_INTERVAL):
            self._draw()

    def _sample(self) -> float:
        """Record the bytes done now; the rate over the last few seconds' samples."""
        now, done = time.monotonic(), self._tally.input_bytes
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW:
            self._samples.popleft()
        then, before = self._samples[0]
        return (done - before) / (now - then) if now > then else 0.0

    def _draw(self) -> None:
        tally = self._tally
        snap = Snapshot(
            done=self._done_before + tally.input_bytes,
            total=self._total,
            speed=self._sample(),
            frames=tally.frames,
            workers=tally.workers,
            queue=tally.queue_fill(),
            failed=tally.failed,
            dropped=tally.dropped,
        )
        if self._live:
            self._write("\r" + terminal_line(snap, _terminal_width(self._out)) + "\x1b[K")
        else:
            self._write(plain_line(snap))

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError):  # stderr gone: nothing to show progress on
            pass


@dataclass(frozen=True)
class Stats:
    frames: int
    bytes_in: int
    bytes_out: int
    elapsed_seconds: float
    throughput_mib_s: float
    waiting_for_input_seconds: float
    in_guest_seconds: float
    waiting_for_output_seconds: float
    failed_frames: int
    dropped_frames: int
    skipped_records: int
    checkpoints_written: int
    workers: int  # instances running frames at the end
    jobs: str  # how that was decided: "as asked", or auto's last measurement
    shape_changes: int  # --jobs auto: switches between one instance and the pool

    @classmethod
    def of(cls, summary: RunSummary, elapsed: float) -> Stats:
        tally = summary.tally
        return cls(
            frames=tally.frames,
            bytes_in=tally.input_bytes,
            bytes_out=tally.output_bytes,
            elapsed_seconds=round(elapsed, 6),
            throughput_mib_s=round(tally.input_bytes / MiB / elapsed, 1) if elapsed > 0 else 0.0,
            waiting_for_input_seconds=round(tally.input_seconds, 6),
            in_guest_seconds=round(tally.guest_seconds, 6),
            waiting_for_output_seconds=round(tally.output_seconds, 6),
            failed_frames=tally.failed,
            dropped_frames=tally.dropped,
            skipped_records=summary.skipped.records,
            checkpoints_written=summary.checkpoints_written,
            workers=tally.workers,
            jobs=summary.jobs_reason,
            shape_changes=summary.switches,
        )

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def _guest_share(self) -> str:
        """Guest time is summed over the instances (a cluster's: over its workers), so its
        share is of their time together, not of the wall clock."""
        workers = max(1, self.workers)
        available = self.elapsed_seconds * workers
        share = f"{100 * self.in_guest_seconds / available:.0f}%" if available else "0%"
        plural = "" if workers == 1 else "s"
        return (
            f"{self.in_guest_seconds:.2f}s, summed over {workers} instance{plural} "
            f"({share} of their time)"
        )

    def as_text(self) -> str:
        def share(seconds: float) -> str:
            return (
                f"{seconds:.2f}s ({100 * seconds / self.elapsed_seconds:.0f}%)"
                if self.elapsed_seconds
                else "0s"
            )

        lines = [
            f"frames      {self.frames}"
            + (f" ({self.failed_frames} failed)" if self.failed_frames else "")
            + (f" ({self.dropped_frames} dropped)" if self.dropped_frames else ""),
            f"bytes       {self.bytes_in} in, {self.bytes_out} out",
            f"elapsed     {self.elapsed_seconds:.2f}s, {self.throughput_mib_s} MiB/s",
            f"input wait  {share(self.waiting_for_input_seconds)}",
            f"in guest    {self._guest_share()}",
            f"output wait {share(self.waiting_for_output_seconds)}",
        ]
        if self.skipped_records:
            lines.append(f"skipped     {self.skipped_records} oversized records")
        lines.append(f"checkpoints {self.checkpoints_written}")
        changes = f", {self.shape_changes} changes" if self.shape_changes else ""
        lines.append(f"jobs        {self.workers} at the end{changes}: {self.jobs}")
        return "\n".join(f"wasmstream: {line}" for line in lines) + "\n"


def write_stats(stats: Stats, to_stderr: bool, json_path: str | None) -> None:
    if to_stderr:
        sys.stderr.write(stats.as_text())
    if json_path:
        try:
            with open(json_path, "w") as out:
                out.write(stats.as_json())
        except OSError as error:
            raise IOFailure(f"cannot write --stats-json {json_path}: {error.strerror}") from None


def check_stats_json(json_path: str) -> None:
    """Before the run, as --metrics-file is: a summary that could not be written at its end
    would fail a run that did all its work."""
    folder = os.path.dirname(json_path) or "."
    if not os.path.isdir(folder):
        raise IOFailure(f"cannot write --stats-json {json_path}: No such file or directory")
    if not os.access(folder, os.W_OK):
        raise IOFailure(f"cannot write --stats-json {json_path}: Permission denied")
