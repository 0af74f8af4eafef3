"""`--metrics-file FILE`: a run's numbers for Prometheus, as node_exporter's textfile collector
reads them (cron jobs are watched this way).

The file is the text exposition format, one gauge per number, each labelled with the module and
the output. It is written whole to a temporary file beside it and renamed over it, so a reader
sees the last version or the one before, never half of one: before the run starts (a file that
cannot be written refuses the run before any data moves), every `interval` while it goes, and
at the end with the exit status. `wasmstream_last_success_timestamp_seconds` is carried over
from the file's previous version by a run that does not succeed, so an alert can ask how long
ago the job last succeeded.

The writer observes the run the way progress does (entered around it with the run's Tally); it
never touches the data path. A write that fails once the run has started (a full disk) is told
once and skipped: the run's data matters more than its metrics.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from wasmstream.errors import ExitStatus, IOFailure
from wasmstream.run.tally import Tally

DEFAULT_INTERVAL = 5.0  # seconds between updates of a run that keeps no checkpoint
_LAST_SUCCESS = "wasmstream_last_success_timestamp_seconds"
# (name, help); values come from `MetricsFile._values`
_GAUGES = (
    ("wasmstream_running", "1 while the run goes, 0 once it has ended."),
    ("wasmstream_frames", "Frames decided so far (written, failed or dropped)."),
    ("wasmstream_input_bytes", "Input bytes decided so far."),
    ("wasmstream_output_bytes", "Output bytes written so far."),
    ("wasmstream_failed_frames", "Frames that failed (skipped or passed through)."),
    ("wasmstream_dropped_frames", "Frames dropped under --on-overload."),
    ("wasmstream_elapsed_seconds", "Seconds since the run started."),
    ("wasmstream_start_timestamp_seconds", "When the run started (Unix time)."),
    ("wasmstream_last_update_timestamp_seconds", "When this file was written (Unix time)."),
    ("wasmstream_exit_status", "The run's exit status (written when it has ended)."),
    (_LAST_SUCCESS, "When a run last ended with exit status 0 (Unix time)."),
)


def _label(value: str) -> str:
    """A label value, escaped as the exposition format wants (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Exactly, in full: 3000000, not 3e+06 (nor a timestamp rounded to 1.79636e+09)."""
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass
class _Numbers:
    tally: Tally | None = None
    status: int | None = None  # set once the run has ended


class MetricsFile:
    """The metrics of one run, kept in `path` (a symlink is followed: its target is replaced)."""

    def __init__(
        self,
        path: str,
        module: str,
        output: str | None,
        interval: float,
        notify: Callable[[str], None],
    ) -> None:
        self._shown = path
        self._path = os.path.realpath(path)
        self._labels = (
            f'module="{_label(os.path.abspath(module))}",'
            f'output="{_label(os.path.abspath(output) if output not in (None, "-") else "-")}"'
        )
        self._interval = interval
        self._notify = notify
        self._started = time.time()
        self._clock = time.monotonic()
        self._numbers = _Numbers()
        self._last_success = self._previous_success()
        self._warned = False
        self._lock = threading.Lock()  # the ticker and the final write never interleave
        self._write(strict=True)  # refused here, before the run, if it cannot be written

    def observe(self, tally: Tally, total: int | None, done_before: int) -> _Ticker:
        """A ProgressFactory: entered around the run, it updates the file as the run goes."""
        self._numbers.tally = tally
        return _Ticker(self)

    def finish(self, status: int) -> None:
        """The last version: the run's exit status, and the time of this success if it is one."""
        self._numbers.status = int(status)
        if status == ExitStatus.OK:
            self._last_success = time.time()
        self.update()

    def update(self) -> None:
        self._write(strict=False)

    @property
    def interval(self) -> float:
        return self._interval

    def _previous_success(self) -> float | None:
        try:
            with open(self._path, encoding="utf-8", errors="replace") as old:
                text = old.read()
        except OSError:
            return None
        found = re.search(rf"^{_LAST_SUCCESS}\{{[^}}]*\}} (\S+)$", text, re.M)
        try:
            return float(found.group(1)) if found else None
        except ValueError:
            return None

    def _values(self) -> dict[str, float | None]:
        tally, status = self._numbers.tally, self._numbers.status

        def count(name: str) -> float:
            return float(getattr(tally, name)) if tally is not None else 0.0

        return {
            "wasmstream_running": 0.0 if status is not None else 1.0,
            "wasmstream_frames": count("frames"),
            "wasmstream_input_bytes": count("input_bytes"),
            "wasmstream_output_bytes": count("output_bytes"),
            "wasmstream_failed_frames": count("failed"),
            "wasmstream_dropped_frames": count("dropped"),
            "wasmstream_elapsed_seconds": round(time.monotonic() - self._clock, 3),
            "wasmstream_start_timestamp_seconds": round(self._started, 3),
            "wasmstream_last_update_timestamp_seconds": round(time.time(), 3),
            "wasmstream_exit_status": None if status is None else float(status),
            _LAST_SUCCESS: None if self._last_success is None else round(self._last_success, 3),
        }

    def _text(self) -> str:
        values = self._values()
        lines = []
        for name, help_text in _GAUGES:
            value = values[name]
            if value is None:
                continue  # not known yet: absent rather than a made-up number
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name}{{{self._labels}}} {_number(value)}",
            ]
        return "\n".join(lines) + "\n"

    def _write(self, strict: bool) -> None:
        with self._lock:
            try:
                self._replace(self._text())
            except OSError as error:
                message = f"cannot write --metrics-file {self._shown}: {error.strerror or error}"
                if strict:
                    raise IOFailure(message) from None
                if not self._warned:
                    self._warned = True
                    self._notify(f"{message} (the run goes on; metrics are not updated)")

    def _replace(self, text: str) -> None:
        folder, name = os.path.split(self._path)
        # A unique temporary name (another run may be writing the same file), not ending in
        # .prom: the textfile collector reads only *.prom files, and must not read this one.
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from node_exporter
            os.replace(temporary, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


class _Ticker:
    """Updates the file every interval while the run goes (a thread; the run never waits)."""

    def __init__(self, metrics: MetricsFile) -> None:
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="wasmstream-metrics", daemon=True)

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._metrics.update()

    def _tick(self) -> None:
        while not self._stop.wait(self._metrics.interval):
            self._metrics.update()
