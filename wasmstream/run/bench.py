"""`wasmstream bench`: try frame sizes and job counts on a sample of the input, measured.

Each setting runs the real pipeline (in process, output to /dev/null) on the same sample; the
table reports the median throughput of a few runs, and the fastest setting is recommended.
Nothing is guessed: a setting that was not measured is not recommended.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from wasmstream.run.options import RunConfig, default_jobs
from wasmstream.run.skeleton import run
from wasmstream.stream.input import STDIN

FRAME_SIZES = (16 << 10, 64 << 10, 256 << 10, 1 << 20)


@dataclass(frozen=True)
class Trial:
    frame_size: int
    jobs: int
    seconds: float
    sample_bytes: int

    @property
    def mib_per_second(self) -> float:
        return self.sample_bytes / (1 << 20) / self.seconds


def job_counts() -> list[int]:
    cpus = default_jobs()
    return sorted({1, *range(2, cpus + 1), 2 * cpus})


def make_sample(source: str | None, size: int, directory: str) -> str:
    """The first `size` bytes of `source` (a file, or '-' for stdin), or random bytes."""
    path = os.path.join(directory, "sample")
    with open(path, "wb") as sample:
        if source is None:
            sample.write(os.urandom(size))
        elif source == STDIN:
            sample.write(os.read(0, size) if size < (1 << 16) else _read_up_to(0, size))
        else:
            with open(source, "rb") as data:
                shutil.copyfileobj(_Limited(data, size), sample)
    return path


def _read_up_to(fd: int, size: int) -> bytes:
    chunks, total = [], 0
    while total < size and (chunk := os.read(fd, min(1 << 20, size - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class _Limited:
    def __init__(self, stream: object, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data: bytes = self._stream.read(want)  # type: ignore[attr-defined]
        self._left -= len(data)
        return data


def measure(
    base: RunConfig,
    sample: str,
    frame_sizes: Sequence[int],
    jobs: Sequence[int],
    runs: int,
    on_trial: Callable[[Trial], None] = lambda trial: None,
) -> list[Trial]:
    size = os.path.getsize(sample)
    run(replace(base, inputs=(sample,), output=os.devnull))  # warm up: compile, page cache
    trials = []
    for frame_size in frame_sizes:
        for job_count in jobs:
            config = replace(
                base, inputs=(sample,), output=os.devnull, frame_size=frame_size, jobs=job_count
            )
            seconds = []
            for _ in range(runs):
                started = time.perf_counter()
                run(config)
                seconds.append(time.perf_counter() - started)
            trial = Trial(frame_size, job_count, statistics.median(seconds), size)
            on_trial(trial)
            trials.append(trial)
    return trials


def bench(
    base: RunConfig,
    source: str | None,
    sample_size: int,
    runs: int,
    on_trial: Callable[[Trial], None] = lambda trial: None,
) -> list[Trial]:
    with tempfile.TemporaryDirectory(prefix="wasmstream-bench-") as scratch:
        sample = make_sample(source, sample_size, scratch)
        if os.path.getsize(sample) == 0:
            return []
        return measure(base, sample, FRAME_SIZES, job_counts(), runs, on_trial)
