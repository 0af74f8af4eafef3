"""Progress on stderr while a run goes on, and the summary (`--stats`) at its end.

Progress appears only when stderr is a terminal (or `--progress` insists), never on stdout, and
rich is imported only then: a cron job pays nothing for it. It is drawn by a thread that reads
the run's counters a few times a second; the data path never waits for it.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import RunSummary
    from .tally import Tally

MiB = 1 << 20


class ProgressDisplay:
    """A rich progress line on stderr, refreshed from the tally by its own thread."""

    def __init__(self, tally: Tally, total_bytes: int | None, done_before: int = 0) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._tally = tally
        self._done_before = done_before
        self._progress = Progress(
            TextColumn("[bold]wasmstream"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            # the speed is in the detail, in MiB/s as --stats says (rich's column says MB/s)
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task = self._progress.add_task(
            "run", total=total_bytes, detail="", completed=done_before
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._refresh, name="wasmstream-progress", daemon=True
        )

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        self._progress.stop()

    def _refresh(self) -> None:
        while not self._stop.wait(0.2):
            self._update()

    def _update(self) -> None:
        tally = self._tally
        used, capacity = tally.queue_fill()
        speed = self._progress.tasks[0].speed or 0.0
        workers = f"{tally.workers} worker{'s' if tally.workers > 1 else ''}"
        detail = (
            f"{speed / MiB:.1f} MiB/s, {tally.frames} frames, {workers}, queue {used}/{capacity}"
        )
        if tally.failed:
            detail += f", {tally.failed} failed"
        if tally.dropped:
            detail += f", {tally.dropped} dropped"
        self._progress.update(
            self._task, completed=self._done_before + tally.input_bytes, detail=detail
        )


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
            f"in guest    {share(self.in_guest_seconds)} (summed over instances)",
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
        with open(json_path, "w") as out:
            out.write(stats.as_json())
