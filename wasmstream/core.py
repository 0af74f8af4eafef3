"""`wasmstream run` and `wasmstream resume` as library calls: a frozen RunConfig in, a summary out.

The core never prints or exits; it raises WasmstreamError subclasses, which the CLI maps to
messages and exit codes in one place, and reports notices through the `notify` callback.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

from .engines import LoadedModule, load_module, stateful
from .errors import ExitStatus, FramesFailed, Interrupted, UsageError
from .files import Role, RunFiles, check_distinct
from .framing import (
    Buffer,
    Frame,
    FramingSpec,
    Skipped,
    fixed_frames,
    record_frames,
)
from .inputs import STDIN, ConcatenatedInput, check_inputs
from .options import DEFAULT_LINGER, Notify, RunConfig, StartPoint
from .parts import shard_part
from .policy import DeadLetters, DropLog, FailureHandler
from .pool import PoolSettings, run_frames
from .sink import STDOUT, Sink
from .sources import Inputs, is_url, size_of
from .tally import Tally
from .units import format_size

WASM32_MEMORY = 1 << 32  # a 32-bit guest addresses at most 4 GiB
PAGE = 1 << 16

if TYPE_CHECKING:
    from .journal import Journal
    from .resume import CheckpointPlan


@dataclass
class RunSummary:
    tally: Tally
    failures: FailureHandler = field(default_factory=FailureHandler)
    resumed_from: StartPoint | None = None
    checkpoints_written: int = 0
    skipped_records: int = 0
    skipped_bytes: int = 0
    nothing_to_do: bool = False


def read_config_arg(arg: str | None) -> bytes:
    """The bytes `--config` stands for: TEXT itself, or the contents of @FILE."""
    if arg is None:
        return b""
    if not arg.startswith("@"):
        return arg.encode()
    try:
        with open(arg[1:], "rb") as config_file:
            return config_file.read()
    except OSError as error:
        raise UsageError(f"--config: cannot read {arg[1:]}: {error.strerror}") from None


ProgressFactory = Callable[[Tally, "int | None", int], AbstractContextManager[object]]
"""Called with (tally, total input bytes if known, bytes already done) around the run."""


Body = Callable[
    [RunConfig, LoadedModule, bytes, RunFiles, Notify, "ProgressFactory | None"], RunSummary
]
"""What a run does once its checks pass, its module is loaded and its files are locked."""


def run(
    config: RunConfig,
    notify: Notify = lambda message: None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """Run the module over the inputs into the output. Raises WasmstreamError on failure.

    Under --on-error skip|passthrough, a run whose frames partly failed completes (checkpoint
    `complete`) and then raises FramesFailed, so the exit status still tells. A run with
    `config.cluster` goes through `wasmstream.cluster.run`.
    """
    if config.cluster is not None:
        raise UsageError("a cluster run goes through wasmstream.cluster.run")
    return execute(config, _run_loaded, notify, progress)


def execute(
    config: RunConfig,
    body: Body,
    notify: Notify = lambda message: None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """The checks, module and locks every run needs, around `body`."""
    check_inputs(config.inputs)
    if config.shard is not None or config.cluster is not None:
        _check_splittable(config)
    check_distinct(
        [Role("input", path) for path in config.inputs or (STDIN,)], _written_files(config)
    )
    check_frame_size(config.frame_size, config.sandbox.max_memory)
    config_bytes = read_config_arg(config.config_arg)
    loaded = load_module(config.module, config.abi, config.engine, config.sandbox, config.cache)
    try:
        if (config.shard or config.cluster) and stateful(loaded):
            what = "--cluster" if config.cluster else "--shard"
            raise UsageError(
                f"module {config.module} is stateful (it exports snapshot and restore): its "
                f"state follows the stream in order, so it cannot run with {what}"
            )
        with RunFiles(config.checkpoint, config.output) as files:
            summary = body(config, loaded, config_bytes, files, notify, progress)
    finally:
        loaded.engine.close()
    if summary.failures.failed:
        failed = FramesFailed(summary.failures.summary(summary.tally.frames))
        failed.summary = summary
        raise failed
    return summary


def _check_splittable(config: RunConfig) -> None:
    """Shards and cluster parts are byte ranges of files: a stream cannot be cut so."""
    what = "--cluster" if config.cluster is not None else "--shard"
    if not config.inputs or STDIN in config.inputs:
        raise UsageError(f"standard input cannot be split with {what}: give INPUT files")
    for path in config.inputs:
        if not is_url(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"input {path} is not a regular file: it cannot be split ({what})")
    if config.cluster is not None and config.overload.policy != "block":
        raise UsageError(
            "--on-overload drop|sample has no queue to act on with --cluster (tasks in flight "
            "are bounded instead)"
        )


def shard_start(config: RunConfig) -> tuple[StartPoint, int | None]:
    """Where a run starts when nothing is saved, and how many bytes it reads (None: all)."""
    if config.shard is None:
        return StartPoint(), None
    with Inputs(config.inputs) as inputs:
        part = shard_part(inputs, config.framing, config.frame_size, *config.shard)
    start = StartPoint(part.start, inputs.per_input(part.start), part.first_frame, 0)
    return start, part.end


def _written_files(config: RunConfig) -> list[Role]:
    """Every file the run writes, for the same-file check."""
    named = [
        ("output", config.output or STDOUT),
        ("checkpoint", config.checkpoint),
        ("dead letters", config.dead_letter),
        ("drop log", config.drop_log),
    ]
    return [Role(what, path) for what, path in named if path is not None]


def check_frame_size(frame_size: int, max_memory: int | None) -> None:
    """A frame lives in the guest's linear memory (32-bit: 4 GiB at most), within --max-memory:
    refuse a frame size that can never fit now, not after gigabytes of allocation."""
    limit = min(max_memory or WASM32_MEMORY, WASM32_MEMORY)
    if frame_size > limit - PAGE:
        raise UsageError(
            f"a frame of {format_size(frame_size)} cannot fit in guest memory, which is limited "
            f"to {format_size(limit)}: choose a smaller frame size or a larger memory limit"
        )


def _run_loaded(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    files: RunFiles,
    notify: Notify,
    progress: ProgressFactory | None,
) -> RunSummary:
    plan = None
    origin, end = shard_start(config)
    if config.checkpoint is not None:
        from .resume import CheckpointPlan  # msgspec and the checkpoint code load only here

        plan = CheckpointPlan(config, loaded, config_bytes, notify, files.output_fd, origin)
    start = plan.start if plan else origin
    summary = RunSummary(Tally(), resumed_from=start if plan and plan.saved else None)
    if plan is not None and plan.nothing_new():
        notify(f"nothing new to process since checkpoint {config.checkpoint}")
        summary.nothing_to_do = True
        return summary
    watch = plan is not None and plan.watches_stream
    limit = None if end is None else end - start.input_bytes
    stream = ConcatenatedInput(config.inputs, start.per_input, keep_head=watch, limit=limit)
    try:
        if plan is not None and plan.saved:
            stream.skip_to_start()  # a stream that does not hold what was done is refused here
            plan.check_stream(stream)
            for name, count in stream.discarded:
                notify(f"skipped the first {count} bytes of {name}: already processed")
        elif start.input_bytes:
            stream.skip_to_start()  # a shard starts where its part does
        summary = _run_stream(
            config, loaded, config_bytes, files, plan, stream, summary, start, progress
        )
    finally:
        stream.close()
    report_losses(summary, notify)
    return summary


def _run_stream(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    files: RunFiles,
    plan: CheckpointPlan | None,
    stream: ConcatenatedInput,
    summary: RunSummary,
    start: StartPoint,
    progress: ProgressFactory | None,
) -> RunSummary:
    frames, skipped = _framer(config, _TimedInput(stream, summary.tally), start)
    # Only now is the output cut: the module is usable and the checkpoint agrees with this run.
    sink = Sink(
        config.output,
        keep=start.output_bytes if plan and plan.saved else None,
        durable=plan is not None,
        fd=files.output_fd,
    )
    files.output_used()
    logs = Logs(config, summary)
    journal = plan.open_journal([sink.sync, *logs.syncs], stream, summary.tally) if plan else None
    watch = plan is not None and plan.watches_stream
    try:
        with progress_of(progress, summary.tally, config, start):
            run_frames(
                frames,
                lambda: loaded.compiled.instantiate(loaded.abi, config.frame_size, config_bytes),
                _timed_write(sink, summary.tally),
                # Frames go straight into guest memory unless the framing carries bytes across
                # frames, or a watched stream's frames must stay intact until written.
                _pool_settings(config, direct_read=not config.framing.record_based and not watch),
                summary.tally,
                summary.failures,
            )
    except BaseException as error:
        if journal is not None:
            journal.finish(error)
        if isinstance(error, (KeyboardInterrupt, Interrupted)):
            raise _stopped(error, journal, config.checkpoint) from None
        raise
    else:
        if journal is not None:
            journal.finish(None)
    finally:
        sink.close()
        logs.close()
        summary.checkpoints_written = journal.saves if journal else 0
        summary.skipped_records = skipped.records
        summary.skipped_bytes = skipped.bytes
    return summary


def _stopped(
    error: KeyboardInterrupt | Interrupted, journal: Journal | None, checkpoint: str | None
) -> Interrupted:
    """A signal stopped the run: say how far it got and how to go on."""
    status = error.status if isinstance(error, Interrupted) else ExitStatus.INTERRUPTED
    if journal is None or checkpoint is None:
        return Interrupted(status)
    return Interrupted(
        status,
        f"interrupted at {journal.input_bytes} input bytes; continue with: "
        f"wasmstream resume --checkpoint {shlex.quote(checkpoint)}",
    )


def _framer(
    config: RunConfig, stream: _TimedInput, start: StartPoint
) -> tuple[Callable[[Callable[[], Buffer]], Iterator[Frame]], Skipped]:
    """How this run cuts its input into frames, numbered on from `start`."""
    spec = _with_default_linger(config.framing, config.inputs)
    skipped = Skipped()

    def frames(next_buffer: Callable[[], Buffer]) -> Iterator[Frame]:
        first = {"first_index": start.frames, "first_offset": start.input_bytes}
        if spec.record_based:
            return record_frames(stream, next_buffer, spec, skipped=skipped, **first)
        return fixed_frames(stream, next_buffer, linger=spec.linger, **first)

    return frames, skipped


class Logs:
    """The dead-letter and drop logs, when asked for, hooked to the run's failure handling."""

    def __init__(self, config: RunConfig, summary: RunSummary) -> None:
        self.dead_letters = DeadLetters(config.dead_letter) if config.dead_letter else None
        self.drop_log = DropLog(config.drop_log) if config.drop_log else None
        summary.failures = FailureHandler(config.on_error, self.dead_letters)
        if self.drop_log is not None:
            summary.tally.on_frame_dropped.append(self.drop_log.append)
        self.syncs = [log.sync for log in (self.dead_letters, self.drop_log) if log is not None]

    def close(self) -> None:
        for log in (self.dead_letters, self.drop_log):
            if log is not None:
                log.close()


def _pool_settings(config: RunConfig, direct_read: bool) -> PoolSettings:
    return PoolSettings(
        frame_size=config.frame_size,
        jobs=config.jobs,
        queue_depth=config.effective_queue_depth,
        direct_read=direct_read,  # record framing carries bytes across frames: host buffers
        overload=config.overload,
    )


def _timed_write(sink: Sink, tally: Tally) -> Callable[[memoryview | bytes], int]:
    def write(data: memoryview | bytes) -> int:
        started = perf_counter()
        written = sink.write(data)
        tally.output_seconds += perf_counter() - started
        return written

    return write


def progress_of(
    progress: ProgressFactory | None, tally: Tally, config: RunConfig, start: StartPoint
) -> AbstractContextManager[object]:
    if progress is None:
        return nullcontext()
    return progress(tally, total_input(config.inputs), start.input_bytes)


class _TimedInput:
    """The input stream, counting the time spent waiting for it (for --stats)."""

    def __init__(self, stream: ConcatenatedInput, tally: Tally) -> None:
        self._stream = stream
        self._tally = tally

    def readinto(self, buffer: memoryview, /) -> int:
        started = perf_counter()
        try:
            return self._stream.readinto(buffer)
        finally:
            self._tally.input_seconds += perf_counter() - started

    def wait_readable(self, timeout: float) -> bool:
        started = perf_counter()
        try:
            return self._stream.wait_readable(timeout)
        finally:
            self._tally.input_seconds += perf_counter() - started


def total_input(inputs: tuple[str, ...]) -> int | None:
    """The input's size when every part is a regular file (for percent and ETA), else None."""
    total = 0
    for path in inputs or (STDIN,):
        if is_url(path):
            total += size_of(path)
            continue
        info = os.fstat(0) if path == STDIN else os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        total += info.st_size
    return total


def report_losses(summary: RunSummary, notify: Notify) -> None:
    """Deliberate loss is accounted, never silent."""
    tally = summary.tally
    if tally.dropped:
        notify(f"dropped {tally.dropped} of {tally.frames} frames: the queue was full")
    if summary.skipped_records:
        notify(
            f"skipped {summary.skipped_records} oversized records ({summary.skipped_bytes} bytes)"
        )


def _with_default_linger(spec: FramingSpec, inputs: tuple[str, ...]) -> FramingSpec:
    """Record framings linger 100 ms by default when reading a pipe or a terminal: on a live
    stream a frame may take minutes to fill. Fixed frames keep their exact size unless asked."""
    if spec.linger == 0:  # `--linger off`: wait for full frames, whatever the input is
        return dataclasses.replace(spec, linger=None)
    if spec.linger is not None or not spec.record_based:
        return spec
    reads_stdin = not inputs or STDIN in inputs
    if reads_stdin and not stat.S_ISREG(os.fstat(0).st_mode):
        return dataclasses.replace(spec, linger=DEFAULT_LINGER)
    return spec
