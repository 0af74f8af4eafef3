"""One run, whatever executes it: a frozen RunConfig in, a summary out.

`run_steps` is the skeleton every way of running shares — check, plan (checkpoint, resume
point), open the output and logs (kept to the checkpoint's sizes), journal (pipe accounting,
log sizes, state), frames through an *executor*, finish, close and report. The executors are
`LocalFrames` here (serial, ordered turns, the queued pool, --jobs auto), `cluster.ClusterParts`
(a Dask client) and the library's iterator (`transform`); none repeats the skeleton, so a
promise kept here is kept on every path.

The core never prints or exits; it raises WasmstreamError subclasses, which the CLI maps to
messages and exit codes in one place, and reports notices through the `notify` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from wasmstream.engines import LoadedModule, load_module
from wasmstream.engines.base import Instance
from wasmstream.errors import (
    CheckpointError,
    ExitStatus,
    FramesFailed,
    Interrupted,
    StateRefused,
    UsageError,
)
from wasmstream.guest.abi import WASM32_MEMORY, WASM_PAGE, GuestAbi, StateKind
from wasmstream.run.jobs_auto import run_adaptive
from wasmstream.run.on_error import DeadLetters, DeadLetterSink, DropLog, FailureHandler
from wasmstream.run.options import Notify, Reached, RunConfig
from wasmstream.run.pool import Frames, InputWaits, PoolSettings, Write, run_frames
from wasmstream.run.settle import settle_for_component, settle_for_state
from wasmstream.run.tally import Tally
from wasmstream.stream import framing
from wasmstream.stream.framing import Skipped
from wasmstream.stream.input import STDIN, ConcatenatedInput, check_inputs, is_live, total_size
from wasmstream.stream.locks import Role, RunFiles, check_checkpoint_path, check_distinct
from wasmstream.stream.parts import shard_of_parts, shard_part
from wasmstream.stream.sink import STDOUT, Sink
from wasmstream.stream.sources import Inputs, seekable
from wasmstream.units import format_size

if TYPE_CHECKING:
    from wasmstream.checkpoint.journal import Journal, StreamProgress
    from wasmstream.checkpoint.resume import CheckpointPlan
    from wasmstream.stream.parts_layout import Committed


@dataclass
class RunSummary:
    tally: Tally
    failures: FailureHandler = field(default_factory=FailureHandler)
    resumed_from: Reached | None = None
    checkpoints_written: int = 0
    skipped: Skipped = field(default_factory=Skipped)  # oversized records (--oversize skip)
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
    `config.part_size` (--cluster) goes through `wasmstream.run.cluster.run`.
    """
    if config.in_parts:
        raise UsageError("a run in parts goes through wasmstream.run.cluster.run")
    return execute(config, _run_loaded, notify, progress)


def execute(
    config: RunConfig,
    body: Body,
    notify: Notify = lambda message: None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """The checks, module and locks every run needs, around `body`."""
    check_inputs(config.inputs)
    if config.shard is not None or config.in_parts:
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
        config = settle_for_component(config, loaded.abi)
        if (config.shard or config.in_parts) and loaded.abi.one_instance:
            raise UsageError(_sequential(config, loaded.abi))
        config = settle_for_state(config, loaded.abi)
        with RunFiles(config.checkpoint, config.output, config.output_parts is None) as files:
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
    what = _split_by(config)
    if not config.inputs or STDIN in config.inputs:
        raise UsageError(f"standard input cannot be split with {what}: give INPUT files")
    for path in config.inputs:
        if not seekable(path):
            raise UsageError(f"input {path} is not a regular file: it cannot be split ({what})")
    if config.in_parts and config.overload.policy != "block":
        raise UsageError(
            f"--on-overload {config.overload} has no queue to act on with {what} (parts in "
            "flight are bounded instead)"
        )
    if config.in_parts and config.queue_depth is not None:  # run, resume and library alike
        raise UsageError(
            f"--queue-depth has no queue to act on with {what}: parts run whole, with no "
            "queue of frames"
        )


def _split_by(config: RunConfig) -> str:
    """The option that splits a run, for messages."""
    if config.clustered:
        return "--cluster"
    return "--output-parts" if config.output_parts is not None else "--shard"


def shard_start(config: RunConfig) -> tuple[Reached, int | None]:
    """Where a run starts when nothing is saved, and the input offset it stops at (None: the
    input's end, as for the last shard, which takes whatever the input grows by)."""
    if config.shard is None:
        return Reached(), None
    with Inputs(config.inputs) as inputs:
        if config.part_size is not None:  # a shard of a folder of parts: whole parts
            part = shard_of_parts(
                inputs, config.framing, config.frame_size, config.part_size, *config.shard
            )
        else:
            part = shard_part(inputs, config.framing, config.frame_size, *config.shard)
    start = Reached(part.start, inputs.per_input(part.start), part.first_frame, 0)
    k, n = config.shard
    return start, None if k == n else part.end


SEQUENTIAL = "it must see the stream in order, in one instance"


def _sequential(config: RunConfig, abi: GuestAbi) -> str:
    """Why a module that must see the stream in order, in one instance, cannot be split."""
    what = _split_by(config)
    return (
        f"module {config.module} {abi.why_one_instance}: {SEQUENTIAL}, so it cannot run with {what}"
    )


def _written_files(config: RunConfig) -> list[Role]:
    """Every file the run writes, for the same-file check."""
    named = [
        ("output", config.output_parts or config.output or STDOUT),
        ("checkpoint", config.checkpoint),
        ("dead letters", config.dead_letter),
        ("drop log", config.drop_log),
    ]
    return [Role(what, path) for what, path in named if path is not None]


def check_frame_size(frame_size: int, max_memory: int | None) -> None:
    """A frame lives in the guest's linear memory (32-bit: 4 GiB at most), within --max-memory:
    refuse a frame size that can never fit now, not after gigabytes of allocation."""
    limit = min(max_memory or WASM32_MEMORY, WASM32_MEMORY)
    if frame_size > limit - WASM_PAGE:
        raise UsageError(
            f"a frame of {format_size(frame_size)} cannot fit in guest memory, which is limited "
            f"to {format_size(limit)}: choose a smaller frame size or a larger memory limit"
        )


class Executor(Protocol):
    """How a run's frames get done: on local instances (`LocalFrames`), as parts on a Dask
    cluster (`cluster.ClusterParts`), or one frame at a time for the library's iterator
    (`transform`). The skeleton (`run_steps`) does everything else, once for all of them."""

    def open(self, run: Run) -> StreamProgress:
        """Open the input where the run starts, refusing (before any file is changed) one that
        does not hold what the checkpoint says was done; start what must start before that."""
        ...

    def execute(self, run: Run) -> Iterator[None]:
        """Do every frame from `run.start`, writing through `run.write`. May run them all at
        once and return an empty iterator, or yield after each frame (the library's)."""
        ...

    def snapshot(self) -> bytes | None:
        """The guest's state now (a stateful run's one instance; None: nothing to save)."""
        ...

    def close(self) -> None: ...


class Output(Protocol):
    """Where a run's output goes: a `Sink` (stdout or a file), or the library's collector."""

    @property
    def fd(self) -> int: ...

    @property
    def is_pipe(self) -> bool: ...

    def write(self, data: memoryview | bytes) -> int: ...

    def sync(self) -> None: ...

    def committed(self) -> list[tuple[int, Committed]] | None:
        """--output-parts: the parts committed so far, in order (None: not a folder of parts)."""
        ...

    def complete(self) -> None:
        """After the final save of a run that finished (a folder of parts marks it so)."""
        ...

    def close(self) -> None: ...


OpenOutput = Callable[["int | None", bool], Output]
"""Opens the output once every check has passed: (bytes to keep of it, or None to start it
afresh; whether checkpoints will make it durable)."""


@dataclass
class Run:
    """One run as the skeleton has planned it: what its executor reads. `end` is the input
    offset it stops at (a shard's or a range's end; None: the input's end, growth included)."""

    config: RunConfig
    loaded: LoadedModule
    config_bytes: bytes
    summary: RunSummary
    start: Reached
    end: int | None
    plan: CheckpointPlan | None
    notify: Notify
    write: Write = field(default=lambda data: 0)
    journal: Journal | None = None

    @property
    def resumed(self) -> bool:
        return self.plan is not None and self.plan.saved is not None

    @property
    def watches_stream(self) -> bool:
        return self.plan is not None and self.plan.watches_stream

    def finish_with(self, instance: Instance) -> None:
        """After the last frame, on the one instance's thread: the finish function's output,
        written after the last frame's; then the final checkpoint (complete only once that is
        durable)."""
        finish = self.loaded.abi.finish
        if finish is not None:
            output = instance.finish()
            self.summary.tally.record_finish(self.write(output) if output else 0)
        if self.journal is not None:
            self.journal.complete(finished=finish is not None)


def plan_run(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    notify: Notify,
    output_fd: int | None,
    origin: Reached | None = None,
    end: int | None = None,
) -> Run:
    """Where the run starts and stops: `origin` and `end` (a shard's, a range's), or with a
    checkpoint, where the saved run got to and the end it recorded."""
    origin = origin or Reached()
    plan = None
    if config.checkpoint is not None:
        from wasmstream.checkpoint.resume import (
            CheckpointPlan,  # msgspec and the checkpoint code load only here
        )

        plan = CheckpointPlan(config, loaded, config_bytes, notify, output_fd, origin, end)
        abi = loaded.abi
        if plan.saved is not None and abi.finish is not None and abi.state is StateKind.NONE:
            notify(
                f"resuming without the guest's state (it keeps none in checkpoints): {abi.finish}"
                " will see only the frames from here on"
            )
        end = plan.end
    start = plan.start if plan else origin
    summary = RunSummary(Tally(), resumed_from=start if plan and plan.saved else None)
    return Run(config, loaded, config_bytes, summary, start, end, plan, notify)


def run_steps(
    run: Run,
    executor: Executor,
    open_output: OpenOutput,
    progress: ProgressFactory | None = None,
    dead_letters: DeadLetterSink | None = None,
) -> Generator[None, None, None]:
    """One run's life, whatever executes its frames: open the input (checked against the
    checkpoint), then the output and the logs (cut back to what the checkpoint covers), then
    the journal (which saves before the first frame, so that a kill at any moment is resumed
    exactly once), then the frames, then the final save; everything closed however it ends.
    A generator: it yields wherever the executor does (the library hands outputs on there).
    `dead_letters`: where failed frames go instead of `--dead-letter` (a cluster task's)."""
    config, summary, plan = run.config, run.summary, run.plan
    if plan is not None and plan.nothing_new():
        run.notify(f"nothing new to process since checkpoint {config.checkpoint}")
        summary.nothing_to_do = True
        if config.output_parts is not None:  # killed between its last save and _SUCCESS
            from wasmstream.stream.output_parts import mark_complete

            assert config.checkpoint is not None
            mark_complete(config.output_parts, config.checkpoint, config.shard, plan.saved_parts())
        return
    with ExitStack() as cleanup:  # whatever was opened is closed, however the run ends
        cleanup.callback(executor.close)
        stream = executor.open(run)
        # Only now is the output cut: the input and module are usable and the checkpoint
        # agrees with this run (or, starting over, no longer claims the output cut here).
        if plan is not None:
            plan.forget_replaced()
        output = open_output(run.start.output_bytes if run.resumed else None, plan is not None)
        cleanup.callback(output.close)
        logs = Logs(config, summary, dead_letters)
        cleanup.callback(logs.close)
        if run.resumed:
            logs.keep(run.start.log_bytes)  # what was logged after the checkpoint is again
        run.write = output.write
        try:
            if plan is not None:
                stateful = run.loaded.abi.state is not StateKind.NONE
                run.journal = plan.open_journal(
                    [output.sync, *logs.syncs],
                    stream,
                    summary.tally,
                    pipe_fd=output.fd if output.is_pipe else None,
                    snapshot=executor.snapshot if stateful else None,
                    state_kind=run.loaded.abi.state.value,
                    log_sizes=logs.sizes,
                    parts=output.committed,
                )
                journal = run.journal
                cleanup.callback(lambda: setattr(summary, "checkpoints_written", journal.saves))
                # Known to the handler below before its first save: a signal that arrives
                # just after that save is recorded as an interruption, not left "running".
                plan.begin(journal)
            with progress_of(progress, summary.tally, config, run.start):
                yield from executor.execute(run)
        except BaseException as error:
            if run.journal is not None:
                run.journal.finish(error)
            if run.journal is not None and isinstance(error, (KeyboardInterrupt, Interrupted)):
                raise stopped(error, run.journal, config.checkpoint) from None
            raise  # a library caller's Ctrl-C stays a KeyboardInterrupt
        if run.journal is not None:
            run.journal.finish(None)
        output.complete()
    report_losses(summary, run.notify)


def _run_loaded(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    files: RunFiles,
    notify: Notify,
    progress: ProgressFactory | None,
) -> RunSummary:
    origin, end = shard_start(config)
    run = plan_run(config, loaded, config_bytes, notify, files.output_fd, origin, end)
    for _ in run_steps(run, LocalFrames(), sink_opener(config, files, run.summary), progress):
        pass
    return run.summary


def sink_opener(config: RunConfig, files: RunFiles, summary: RunSummary) -> OpenOutput:
    """The run's output file or stdout, opened (and cut) only when the skeleton says so."""

    def open_sink(keep: int | None, durable: bool) -> Output:
        sink = Sink(
            config.output,
            keep=keep,
            durable=durable,
            fd=files.output_fd,
            # --jobs auto reads the guest's time as call time less write time: writes happen
            # inside the call, so they are timed whenever auto is measuring, --stats or not
            tally=summary.tally if config.jobs is None else _timed(config, summary),
        )
        files.output_used()
        return sink

    return open_sink


class LocalFrames:
    """The executor of a run on this machine: the input read as one stream, cut into frames
    (stream/framing.py), run through instances of the module (pool.py, or jobs_auto.py for auto)."""

    def __init__(self) -> None:
        self.stream: ConcatenatedInput | None = None
        self.instances: _Instances | None = None

    def open(self, run: Run) -> ConcatenatedInput:
        config, start, plan = run.config, run.start, run.plan
        limit = None if run.end is None else max(run.end - start.input_bytes, 0)
        self.stream = stream = ConcatenatedInput(
            config.inputs,
            start.per_input,
            keep_head=run.watches_stream,
            tally=_timed(config, run.summary),
            limit=limit,
        )
        if run.resumed:
            assert plan is not None
            stream.skip_to_start()  # a stream that does not hold what was done is refused here
            plan.check_stream(stream)
            for name, count in stream.discarded:
                run.notify(f"skipped the first {count} bytes of {name}: already processed")
        elif start.input_bytes:
            stream.skip_to_start()  # a shard starts where its part does
        self.instances = self._new_instances(run)
        return stream

    @staticmethod
    def _new_instances(run: Run) -> _Instances:
        instances = _Instances(run.config, run.loaded, run.config_bytes)
        if run.loaded.abi.one_instance:  # started, its state restored, before any file changes
            plan = run.plan
            instances.start_first(plan.saved_state(run.loaded.abi.state) if plan else None, plan)
        return instances

    def frames(self, run: Run) -> Frames:
        assert self.stream is not None
        live = is_live(run.config.inputs)
        return self._frames_of(
            self.stream, run, framing.with_default_linger(run.config.framing, live)
        )

    @staticmethod
    def _frames_of(stream: framing.ReadableInto, run: Run, spec: framing.FramingSpec) -> Frames:
        """The pool pulls frames from framing, which reads from the stream: per frame, nothing
        passes through here."""
        return partial(
            framing.frames,
            stream,
            spec=spec,
            first_index=run.start.frames,
            first_offset=run.start.input_bytes,
            skipped=run.summary.skipped,
        )

    def execute(self, run: Run) -> Iterator[None]:
        assert self.instances is not None and self.stream is not None
        config, abi = run.config, run.loaded.abi
        _run_frames(
            config,
            self.frames(run),
            self.instances.new,
            run.write,
            # Frames go straight into guest memory unless the framing carries bytes across
            # frames, or a watched stream's frames must stay intact until written.
            _pool_settings(
                config, direct_read=not config.framing.record_based and not run.watches_stream
            ),
            run.summary,
            end=run.finish_with if abi.one_instance else None,
            input_waits=self.stream,
        )
        return iter(())

    def snapshot(self) -> bytes | None:
        return self.instances.snapshot() if self.instances is not None else None

    def close(self) -> None:
        if self.instances is not None:
            self.instances.close_unused()
        if self.stream is not None:
            self.stream.close()


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


def _timed(config: RunConfig, summary: RunSummary) -> Tally | None:
    """Where input and output count their waiting time: only when someone will read it."""
    return summary.tally if config.timings else None


def stopped(
    error: KeyboardInterrupt | Interrupted, journal: Journal, checkpoint: str | None
) -> Interrupted:
    """A signal stopped a checkpointed run: say how far it got and how to go on."""
    status = error.status if isinstance(error, Interrupted) else ExitStatus.INTERRUPTED
    if checkpoint is None:
        return Interrupted(status)
    import shlex  # only for this message

    return Interrupted(
        status,
        f"interrupted at {journal.input_bytes} input bytes; continue with: "
        f"wasmstream resume --checkpoint {shlex.quote(checkpoint)}",
    )


class Logs:
    """The dead-letter and drop logs, when asked for, hooked to the run's failure handling.
    `dead_letters`: where failed frames go when not to `--dead-letter` (a cluster task's)."""

    def __init__(
        self, config: RunConfig, summary: RunSummary, dead_letters: DeadLetterSink | None = None
    ) -> None:
        self.dead_letters = DeadLetters(config.dead_letter) if config.dead_letter else None
        self.drop_log = DropLog(config.drop_log) if config.drop_log else None
        summary.failures = FailureHandler(
            config.on_error, self.dead_letters or dead_letters, summary.tally
        )
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
    """A fixed --jobs runs as asked; auto adapts while it runs (jobs_auto.py), except under an
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
    progress: ProgressFactory | None, tally: Tally, config: RunConfig, start: Reached
) -> AbstractContextManager[object]:
    if progress is None:
        return nullcontext()
    return progress(tally, total_size(config.inputs), start.input_bytes)


def report_losses(summary: RunSummary, notify: Notify) -> None:
    """Deliberate loss is accounted, never silent."""
    tally = summary.tally
    if tally.dropped:
        notify(f"dropped {tally.dropped} of {tally.frames} frames: the queue was full")
    if summary.skipped.records:
        notify(
            f"skipped {summary.skipped.records} oversized records ({summary.skipped.bytes} bytes)"
        )
