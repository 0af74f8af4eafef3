"""`wasmstream run` and `wasmstream resume` as library calls: a frozen RunConfig in, a summary out.

The core never prints or exits; it raises WasmstreamError subclasses, which the CLI maps to
messages and exit codes in one place, and reports notices through the `notify` callback.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from . import framing
from .abi import GuestAbi, StateKind
from .adaptive import run_adaptive
from .engines import LoadedModule, load_module
from .engines.base import Instance
from .errors import CheckpointError, ExitStatus, FramesFailed, Interrupted, StateRefused, UsageError
from .files import Role, RunFiles, check_checkpoint_path, check_distinct
from .framing import Skipped
from .inputs import STDIN, ConcatenatedInput, check_inputs, is_live, total_size
from .options import Notify, RunConfig, StartPoint
from .parts import shard_part
from .policy import DeadLetters, DropLog, FailureHandler
from .pool import Frames, InputWaits, PoolSettings, Write, run_frames
from .settle import settle_for_component
from .sink import STDOUT, Sink
from .sources import Inputs, is_url
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
    jobs_reason: str = ""  # how many instances ran, and why (--stats)
    switches: int = 0  # --jobs auto: how often the run changed shape


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
    `config.part_size` (--cluster) goes through `wasmstream.cluster.run`.
    """
    if config.clustered:
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
    if config.shard is not None or config.clustered:
        _check_splittable(config)
    check_distinct(
        [Role("input", path) for path in config.inputs or (STDIN,)], _written_files(config)
    )
    check_frame_size(config.frame_size, config.sandbox.max_memory)
    if config.checkpoint is not None:
        check_checkpoint_path(config.checkpoint)
    config_bytes = read_config_arg(config.config_arg)
    loaded = load_module(config.module, config.abi, config.engine, config.sandbox, config.cache)
    try:
        config = settle_for_component(config, loaded.abi, config.config_arg is not None)
        if (config.shard or config.clustered) and loaded.abi.one_instance:
            raise UsageError(_sequential(config, loaded.abi))
        config = settle_for_state(config, loaded.abi)
        with RunFiles(config.checkpoint, config.output) as files:
            summary = body(config, loaded, config_bytes, files, notify, progress)
    finally:
        loaded.engine.close()
    if summary.failures.failed:
        failed = FramesFailed(summary.failures.summary(summary.tally.frames))
        failed.summary = summary
        raise failed
    return summary


def settle_for_state(config: RunConfig, abi: GuestAbi) -> RunConfig:
    """A stateful module (or one with a finish function) runs as one instance, frames in input
    order: `--jobs auto` (the default) means 1 for it, and what cannot keep its state whole is
    refused up front."""
    if not abi.one_instance:
        return config
    why = (
        f"keeps state across frames ({abi.state.value})"
        if abi.state is not StateKind.NONE
        else f"has a finish function ({abi.finish})"
    )
    if config.jobs is not None and config.jobs > 1:
        raise UsageError(
            f"{config.module} {why}: it runs as one instance, frames in order; "
            f"-j {config.jobs} cannot apply (leave -j out, or give -j 1 or auto)"
        )
    if config.overload.policy != "block":
        raise UsageError(
            f"{config.module} {why}: every frame must reach it; --on-overload {config.overload} "
            "cannot apply"
        )
    if config.on_error != "fail" and abi.state is not StateKind.NONE:
        raise UsageError(
            f"{config.module} {why}: a failed frame may leave that state half-updated, so "
            f"--on-error {config.on_error} is refused for it (use --on-error fail, or --state none)"
        )
    return dataclasses.replace(config, jobs=1)


def _check_splittable(config: RunConfig) -> None:
    """Shards and cluster parts are byte ranges of files: a stream cannot be cut so."""
    what = "--cluster" if config.clustered else "--shard"
    if not config.inputs or STDIN in config.inputs:
        raise UsageError(f"standard input cannot be split with {what}: give INPUT files")
    for path in config.inputs:
        if not is_url(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"input {path} is not a regular file: it cannot be split ({what})")
    if config.clustered and config.overload.policy != "block":
        raise UsageError(
            f"--on-overload {config.overload} has no queue to act on with --cluster (tasks in "
            "flight are bounded instead)"
        )


def shard_start(config: RunConfig) -> tuple[StartPoint, int | None]:
    """Where a run starts when nothing is saved, and how many bytes it reads (None: all)."""
    if config.shard is None:
        return StartPoint(), None
    with Inputs(config.inputs) as inputs:
        part = shard_part(inputs, config.framing, config.frame_size, *config.shard)
    start = StartPoint(part.start, inputs.per_input(part.start), part.first_frame, 0)
    return start, part.end


def _sequential(config: RunConfig, abi: GuestAbi) -> str:
    """Why a module that must see the stream in order, in one instance, cannot be split."""
    what = "--cluster" if config.clustered else "--shard"
    why = (
        f"keeps state across frames ({abi.state.value})"
        if abi.state is not StateKind.NONE
        else f"has a finish function ({abi.finish})"
    )
    return (
        f"module {config.module} {why}: it must see the stream in order, in one instance, so "
        f"it cannot run with {what}"
    )


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
        abi = loaded.abi
        if plan.saved is not None and abi.finish is not None and abi.state is StateKind.NONE:
            notify(
                f"resuming without the guest's state (it keeps none in checkpoints): {abi.finish}"
                " will see only the frames from here on"
            )
    start = plan.start if plan else origin
    summary = RunSummary(Tally(), resumed_from=start if plan and plan.saved else None)
    if plan is not None and plan.nothing_new():
        notify(f"nothing new to process since checkpoint {config.checkpoint}")
        summary.nothing_to_do = True
        return summary
    watch = plan is not None and plan.watches_stream
    limit = None if end is None else end - start.input_bytes
    stream = ConcatenatedInput(
        config.inputs,
        start.per_input,
        keep_head=watch,
        tally=_timed(config, summary),
        limit=limit,
    )
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
    skipped = Skipped()
    # The pool pulls frames from framing, which reads from the stream, and writes to the sink:
    # per frame, nothing passes through here.
    frames = partial(
        framing.frames,
        stream,
        spec=framing.with_default_linger(config.framing, is_live(config.inputs)),
        first_index=start.frames,
        first_offset=start.input_bytes,
        skipped=skipped,
    )
    instances = _Instances(config, loaded, config_bytes)
    if loaded.abi.one_instance:  # started, and its saved state restored, before any file changes
        instances.start_first(plan.saved_state(loaded.abi.state) if plan else None, plan)
    try:
        return _run_started(
            config,
            loaded,
            files,
            plan,
            stream,
            summary,
            start,
            progress,
            frames,
            skipped,
            instances,
        )
    finally:
        instances.close_unused()


def _run_started(
    config: RunConfig,
    loaded: LoadedModule,
    files: RunFiles,
    plan: CheckpointPlan | None,
    stream: ConcatenatedInput,
    summary: RunSummary,
    start: StartPoint,
    progress: ProgressFactory | None,
    frames: Frames,
    skipped: Skipped,
    instances: _Instances,
) -> RunSummary:
    # Only now is the output cut: the module is usable and the checkpoint agrees with this run.
    sink = Sink(
        config.output,
        keep=start.output_bytes if plan and plan.saved else None,
        durable=plan is not None,
        fd=files.output_fd,
        # --jobs auto reads the guest's time as call time less write time: writes happen
        # inside the call, so they are timed whenever auto is measuring, --stats or not
        tally=summary.tally if config.jobs is None else _timed(config, summary),
    )
    files.output_used()
    logs = Logs(config, summary)
    if plan is not None and plan.saved:
        logs.keep(start.log_bytes)  # what was logged after the checkpoint is logged again
    abi = loaded.abi
    journal = None
    if plan is not None:
        stateful = abi.state is not StateKind.NONE
        journal = plan.open_journal(
            [sink.sync, *logs.syncs],
            stream,
            summary.tally,
            pipe_fd=sink.fd if sink.is_pipe else None,
            snapshot=instances.snapshot if stateful else None,
            state_kind=abi.state.value,
            log_sizes=logs.sizes,
        )
    watch = plan is not None and plan.watches_stream
    try:
        with progress_of(progress, summary.tally, config, start):
            _run_frames(
                config,
                frames,
                instances.new,
                sink.write,
                # Frames go straight into guest memory unless the framing carries bytes across
                # frames, or a watched stream's frames must stay intact until written.
                _pool_settings(config, direct_read=not config.framing.record_based and not watch),
                summary,
                end=_ending(abi, sink.write, summary.tally, journal) if abi.one_instance else None,
                input_waits=stream,
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


class _Instances:
    """The run's instances. A one-instance run's first is started (and given its saved state)
    before any file is changed, so that a module refusing that state leaves everything as it
    was; the latest one made is what a snapshot reads (on the thread that owns it)."""

    def __init__(self, config: RunConfig, loaded: LoadedModule, config_bytes: bytes) -> None:
        self._loaded = loaded
        self._frame_size = config.frame_size
        self._config_bytes = config_bytes
        self._first: Instance | None = None
        self.current: Instance | None = None

    def start_first(self, saved: bytes | None, plan: CheckpointPlan | None) -> None:
        instance = self._make()
        try:
            if saved is not None:
                instance.restore(saved)
        except StateRefused as error:
            instance.close()
            assert plan is not None
            raise CheckpointError(
                f"module {plan.config.module} refused the state saved with checkpoint "
                f"{plan.config.checkpoint}: {error.what}"
            ) from None
        except BaseException:
            instance.close()
            raise
        self._first = self.current = instance

    def _make(self) -> Instance:
        return self._loaded.compiled.instantiate(
            self._loaded.abi, self._frame_size, self._config_bytes
        )

    def new(self) -> Instance:
        if self._first is not None:
            instance, self._first = self._first, None
            return instance
        self.current = self._make()
        return self.current

    def snapshot(self) -> bytes | None:
        return self.current.snapshot() if self.current is not None else None

    def close_unused(self) -> None:
        if self._first is not None:
            self._first.close()
            self._first = None


def _ending(
    abi: GuestAbi,
    write: Write,
    tally: Tally,
    journal: Journal | None,
) -> Callable[[Instance], None]:
    """After the last frame, on the instance's thread: the finish function's output, written
    after the last frame's; then the final checkpoint (complete only once that is durable)."""

    def end(instance: Instance) -> None:
        if abi.finish is not None:
            output = instance.finish()
            tally.record_finish(write(output) if output else 0)
        if journal is not None:
            journal.complete(finished=abi.finish is not None)

    return end


def _timed(config: RunConfig, summary: RunSummary) -> Tally | None:
    """Where input and output count their waiting time: only when someone will read it."""
    return summary.tally if config.timings else None


def _stopped(
    error: KeyboardInterrupt | Interrupted, journal: Journal | None, checkpoint: str | None
) -> Interrupted:
    """A signal stopped the run: say how far it got and how to go on."""
    status = error.status if isinstance(error, Interrupted) else ExitStatus.INTERRUPTED
    if journal is None or checkpoint is None:
        return Interrupted(status)
    import shlex  # only for this message

    return Interrupted(
        status,
        f"interrupted at {journal.input_bytes} input bytes; continue with: "
        f"wasmstream resume --checkpoint {shlex.quote(checkpoint)}",
    )


class Logs:
    """The dead-letter and drop logs, when asked for, hooked to the run's failure handling."""

    def __init__(self, config: RunConfig, summary: RunSummary) -> None:
        self.dead_letters = DeadLetters(config.dead_letter) if config.dead_letter else None
        self.drop_log = DropLog(config.drop_log) if config.drop_log else None
        summary.failures = FailureHandler(config.on_error, self.dead_letters)
        if self.drop_log is not None:
            summary.tally.on_frame_dropped.append(self.drop_log.append)
        self.syncs = [log.sync for log in (self.dead_letters, self.drop_log) if log is not None]

    def sizes(self) -> tuple[int | None, int | None]:
        """How long the logs are now (None: not asked for), for the checkpoint."""
        dead, drops = self.dead_letters, self.drop_log
        return (None if dead is None else dead.size, None if drops is None else drops.size)

    def keep(self, sizes: tuple[int | None, int | None]) -> None:
        for log, size in zip((self.dead_letters, self.drop_log), sizes, strict=True):
            if log is not None and size is not None:
                log.keep(size)

    def close(self) -> None:
        for log in (self.dead_letters, self.drop_log):
            if log is not None:
                log.close()


def _pool_settings(config: RunConfig, direct_read: bool) -> PoolSettings:
    return PoolSettings(
        frame_size=config.frame_size,
        jobs=config.max_jobs,
        queue_depth=config.effective_queue_depth,
        direct_read=direct_read,  # record framing carries bytes across frames: host buffers
        measured=config.timings or config.jobs is None,  # --stats, or auto deciding
        overload=config.overload,
    )


def _run_frames(
    config: RunConfig,
    frames: Frames,
    new_instance: Callable[[], Instance],
    write: Write,
    settings: PoolSettings,
    summary: RunSummary,
    end: Callable[[Instance], None] | None = None,
    input_waits: InputWaits | None = None,
) -> None:
    """A fixed --jobs runs as asked; auto adapts while it runs (adaptive.py), except under an
    overload policy, which only the pool has, or on one CPU. A stateful run (`end`) is serial."""
    adapt = config.jobs is None and settings.jobs > 1 and settings.overload.policy == "block"
    if not adapt or end is not None:
        summary.jobs_reason = "as asked" if config.jobs is not None else "one CPU, or overload"
        if end is not None:
            summary.jobs_reason = "one instance: the module keeps state, or has a finish function"
        summary.tally.workers = settings.jobs
        run_frames(
            frames, new_instance, write, settings, summary.tally, summary.failures, end, input_waits
        )
        return
    controller = run_adaptive(
        frames,
        new_instance,
        write,
        settings,
        summary.tally,
        summary.failures,
        flip_every=config.flip_every,
        on_decision=summary,
        input_waits=input_waits,
    )
    summary.switches = controller.switches


def progress_of(
    progress: ProgressFactory | None, tally: Tally, config: RunConfig, start: StartPoint
) -> AbstractContextManager[object]:
    if progress is None:
        return nullcontext()
    return progress(tally, total_size(config.inputs), start.input_bytes)


def report_losses(summary: RunSummary, notify: Notify) -> None:
    """Deliberate loss is accounted, never silent."""
    tally = summary.tally
    if tally.dropped:
        notify(f"dropped {tally.dropped} of {tally.frames} frames: the queue was full")
    if summary.skipped_records:
        notify(
            f"skipped {summary.skipped_records} oversized records ({summary.skipped_bytes} bytes)"
        )
