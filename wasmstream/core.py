"""`wasmstream run` and `wasmstream resume` as library calls: a frozen RunConfig in, a summary out.

The core never prints or exits; it raises WasmstreamError subclasses, which the CLI maps to
messages and exit codes in one place, and reports notices through the `notify` callback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from time import perf_counter

import msgspec

from . import checkpoint
from ._version import __version__
from .abi import AbiOptions, GuestAbi, resolve_abi
from .checkpoint import Checkpoint, Command, ModuleRecord, OutputOptions, Position
from .engines import (
    DEFAULT_ENGINE,
    CompiledModule,
    DirGrant,
    Engine,
    Instance,
    Sandbox,
    get_engine,
)
from .errors import CheckpointError, FramesFailed, ModuleError, UsageError
from .framing import (
    Buffer,
    Frame,
    Framing,
    FramingSpec,
    Oversize,
    Skipped,
    fixed_frames,
    record_frames,
)
from .inputs import STDIN, ConcatenatedInput, check_inputs
from .journal import Journal
from .policy import DeadLetters, DropLog, FailureHandler
from .pool import Overload, PoolSettings, Tally, run_frames
from .sink import Sink

DEFAULT_FRAME_SIZE = 64 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 2.0
DEFAULT_LINGER = 0.1

Notify = Callable[[str], None]


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunConfig:
    module: str
    inputs: tuple[str, ...] = ()
    output: str | None = None
    frame_size: int = DEFAULT_FRAME_SIZE
    jobs: int = 1
    queue_depth: int | None = None  # None: twice the jobs
    abi: AbiOptions = field(default_factory=AbiOptions)
    config_arg: str | None = None  # --config as given: TEXT or @FILE
    engine: str = DEFAULT_ENGINE
    sandbox: Sandbox = field(default_factory=Sandbox)
    on_error: str = "fail"
    dead_letter: str | None = None
    framing: FramingSpec = field(default_factory=FramingSpec)
    overload: Overload = field(default_factory=Overload)
    drop_log: str | None = None
    checkpoint: str | None = None
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    checkpoint_every: int | None = None
    resume: bool = False
    restart: bool = False
    force: bool = False
    cache: bool = True  # keep compiled modules in the user's cache directory

    @property
    def effective_queue_depth(self) -> int:
        return self.queue_depth if self.queue_depth is not None else 2 * self.jobs


@dataclass
class RunSummary:
    tally: Tally
    failures: FailureHandler = field(default_factory=FailureHandler)
    resumed_from: Position | None = None
    checkpoints_written: int = 0
    skipped_records: int = 0
    nothing_to_do: bool = False


@dataclass(frozen=True)
class LoadedModule:
    """A module compiled and checked against the guest ABI, ready to instantiate."""

    engine: Engine
    compiled: CompiledModule
    abi: GuestAbi
    sha256: str


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


def load_module(
    path: str,
    abi_options: AbiOptions,
    engine_name: str = DEFAULT_ENGINE,
    sandbox: Sandbox | None = None,
    cache: bool = True,
) -> LoadedModule:
    try:
        with open(path, "rb") as module_file:
            wasm = module_file.read()
    except OSError as error:
        raise ModuleError(f"cannot read module {path}: {error.strerror}") from None
    engine = get_engine(engine_name, sandbox, cache)
    try:
        compiled = engine.compile(wasm, path)
        abi = resolve_abi(compiled.info, abi_options, path)
    except BaseException:
        engine.close()
        raise
    return LoadedModule(engine, compiled, abi, hashlib.sha256(wasm).hexdigest())


ProgressFactory = Callable[[Tally, "int | None", int], AbstractContextManager[object]]
"""Called with (tally, total input bytes if known, bytes already done) around the run."""


def run(
    config: RunConfig,
    notify: Notify = lambda message: None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """Run the module over the inputs into the output. Raises WasmstreamError on failure.

    Under --on-error skip|passthrough, a run whose frames partly failed completes (checkpoint
    `complete`) and then raises FramesFailed, so the exit status still tells.
    """
    check_inputs(config.inputs)
    config_bytes = read_config_arg(config.config_arg)
    loaded = load_module(config.module, config.abi, config.engine, config.sandbox, config.cache)
    try:
        summary = _run_loaded(config, loaded, config_bytes, notify, progress)
    finally:
        loaded.engine.close()
    if summary.failures.failed:
        failed = FramesFailed(summary.failures.summary(summary.tally.frames))
        failed.summary = summary
        raise failed
    return summary


def _run_loaded(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    notify: Notify,
    progress: ProgressFactory | None,
) -> RunSummary:
    record = _new_record(config, loaded, config_bytes) if config.checkpoint else None
    saved = _previous_checkpoint(config, record, notify) if record else None
    start = saved.position if saved else Position()
    summary = RunSummary(Tally(), resumed_from=start if saved else None)
    if saved is not None and _nothing_new(saved, record):
        notify(f"nothing new to process since checkpoint {config.checkpoint}")
        summary.nothing_to_do = True
        return summary

    def new_instance() -> Instance:
        return loaded.compiled.instantiate(loaded.abi, config.frame_size, config_bytes)

    stream = ConcatenatedInput(config.inputs, start.per_input, notify)
    timed_stream = _TimedInput(stream, summary.tally)
    spec = _with_default_linger(config.framing, config.inputs)
    skipped = Skipped()

    def frames(next_buffer: Callable[[], Buffer]) -> Iterator[Frame]:
        first = {"first_index": start.frames, "first_offset": start.input_bytes}
        if spec.record_based:
            return record_frames(timed_stream, next_buffer, spec, skipped=skipped, **first)
        return fixed_frames(timed_stream, next_buffer, linger=spec.linger, **first)

    # Opened only now: the module is usable and the checkpoint agrees with this run.
    sink = Sink(config.output, keep=start.output_bytes if saved else None)
    dead_letters = DeadLetters(config.dead_letter) if config.dead_letter else None
    drop_log = DropLog(config.drop_log) if config.drop_log else None
    summary.failures = FailureHandler(config.on_error, dead_letters)
    if drop_log is not None:
        summary.tally.on_frame_dropped.append(drop_log.append)
    syncs = [sink.sync] + [log.sync for log in (dead_letters, drop_log) if log is not None]
    journal = None
    if record is not None and config.checkpoint is not None:
        clock = checkpoint.Clock(config.checkpoint_interval, config.checkpoint_every)
        journal = Journal(
            config.checkpoint,
            _with_position(record, saved),
            syncs=syncs,
            stream=stream,
            tally=summary.tally,
            clock=clock,
        )
        journal.save("running")  # from now on a crash leaves a resumable checkpoint
        summary.tally.on_frame_written.append(journal.frame_written)
    try:
        settings = PoolSettings(
            frame_size=config.frame_size,
            jobs=config.jobs,
            queue_depth=config.effective_queue_depth,
            direct_read=not spec.record_based,  # record framing carries bytes across frames
            overload=config.overload,
        )
        tally = summary.tally

        def write(data: memoryview | bytes) -> int:
            started = perf_counter()
            written = sink.write(data)
            tally.output_seconds += perf_counter() - started
            return written

        with (
            progress(tally, _total_input(config.inputs), start.input_bytes)
            if progress
            else nullcontext()
        ):
            run_frames(frames, new_instance, write, settings, tally, summary.failures)
    except BaseException as error:
        if journal is not None:
            journal.finish(error)
        raise
    else:
        if journal is not None:
            journal.finish(None)
    finally:
        stream.close()
        sink.close()
        for log in (dead_letters, drop_log):
            if log is not None:
                log.close()
        summary.checkpoints_written = journal.saves if journal else 0
    summary.skipped_records = skipped.records
    _report_losses(summary.tally, skipped, notify)
    return summary


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


def _total_input(inputs: tuple[str, ...]) -> int | None:
    """The input's size when every part is a regular file (for percent and ETA), else None."""
    total = 0
    for path in inputs or (STDIN,):
        info = os.fstat(0) if path == STDIN else os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        total += info.st_size
    return total


def _report_losses(tally: Tally, skipped: Skipped, notify: Notify) -> None:
    """Deliberate loss is accounted, never silent."""
    if tally.dropped:
        notify(f"dropped {tally.dropped} of {tally.frames} frames: the queue was full")
    if skipped.records:
        notify(f"skipped {skipped.records} oversized records ({skipped.bytes} bytes)")


def _with_default_linger(spec: FramingSpec, inputs: tuple[str, ...]) -> FramingSpec:
    """Record framings linger 100 ms by default when reading a pipe or a terminal: on a live
    stream a frame may take minutes to fill. Fixed frames keep their exact size unless asked."""
    if spec.linger is not None or not spec.record_based:
        return spec
    reads_stdin = not inputs or STDIN in inputs
    if reads_stdin and not stat.S_ISREG(os.fstat(0).st_mode):
        return dataclasses.replace(spec, linger=DEFAULT_LINGER)
    return spec


def _new_record(config: RunConfig, loaded: LoadedModule, config_bytes: bytes) -> Checkpoint:
    """The checkpoint this run would write, at position zero."""
    stamp = checkpoint.now()
    sandbox = config.sandbox
    output = None if config.output in (None, STDIN) else os.path.abspath(str(config.output))
    return Checkpoint(
        version=checkpoint.FORMAT_VERSION,
        wasmstream_version=__version__,
        engine=loaded.engine.name,
        engine_version=loaded.engine.version(),
        module=ModuleRecord(path=os.path.abspath(config.module), sha256=loaded.sha256),
        options=OutputOptions(
            function=config.abi.function,
            alloc=config.abi.alloc,
            free=config.abi.free,
            init=config.abi.init,
            config_sha256=hashlib.sha256(config_bytes).hexdigest(),
            frame_size=config.frame_size,
            framing=config.framing.framing.value,
            delimiter=config.framing.delimiter.decode("latin-1"),
            oversize=config.framing.oversize.value,
            on_error=config.on_error,
            wasi_command=config.abi.wasi_command,
        ),
        command=Command(
            config_arg=config.config_arg,
            jobs=config.jobs,
            queue_depth=config.queue_depth,
            checkpoint_interval=config.checkpoint_interval,
            checkpoint_every=config.checkpoint_every,
            timeout=sandbox.timeout,
            fuel=sandbox.fuel,
            max_memory=sandbox.max_memory,
            max_output=sandbox.max_output,
            env=list(sandbox.env),
            dirs=[(d.host, d.guest, d.writable) for d in sandbox.dirs],
            dead_letter=config.dead_letter and os.path.abspath(config.dead_letter),
            linger=config.framing.linger,
            overload=str(config.overload),
            drop_log=config.drop_log and os.path.abspath(config.drop_log),
        ),
        inputs=[checkpoint.describe_input(path) for path in (config.inputs or (STDIN,))],
        output=output,
        position=Position(per_input=[0] * max(len(config.inputs), 1)),
        created=stamp,
        updated=stamp,
    )


def _previous_checkpoint(
    config: RunConfig, record: Checkpoint, notify: Notify
) -> Checkpoint | None:
    """The checkpoint to continue from, after checking that continuing is right; or None."""
    path = config.checkpoint
    assert path is not None
    if config.restart:
        return None  # asked to start over: the old checkpoint is replaced, unread
    saved = checkpoint.load(path)
    if saved is None:
        if config.resume:
            notify(f"no checkpoint at {path}: starting from the beginning")
        return None
    if not config.resume:
        raise CheckpointError(
            f"checkpoint {path} exists (status {saved.status}, {saved.position.input_bytes} input "
            "bytes done): use --resume to continue it or --restart to start over"
        )
    if saved.engine != record.engine:
        # Deterministic wasm gives the same bytes on any engine, except where engines may differ:
        # NaN bit patterns and how limits are enforced. Exactly-once must not rest on "usually".
        raise CheckpointError(
            f"checkpoint {path} was written by the {saved.engine} engine: resume it with "
            f"--engine {saved.engine} (another engine is not guaranteed to give identical output)"
        )
    output_size = _size_or_none(record.output)
    checkpoint.check_resumable(
        saved,
        module=record.module,
        options=record.options,
        inputs=record.inputs,
        output=record.output,
        output_size=output_size,
        force=config.force,
        source=path,
    )
    _check_growth_is_at_the_end(saved, record, path)
    return saved


def _check_growth_is_at_the_end(saved: Checkpoint, current: Checkpoint, path: str) -> None:
    """New data may follow only the last input processed: anything else would reorder the stream."""
    done = saved.position.per_input
    for n, now in enumerate(current.inputs[: len(done)]):
        later_started = any(done[n + 1 :])
        if later_started and now.regular and now.size is not None and now.size > done[n]:
            raise CheckpointError(
                f"input {now.path} has grown since checkpoint {path}, but a later input was "
                "already being processed: cannot resume in stream order"
            )


def _nothing_new(saved: Checkpoint, current: Checkpoint | None) -> bool:
    if saved.status != "complete" or current is None:
        return False
    done = saved.position.per_input
    return all(i.regular and i.size == d for i, d in zip(current.inputs, done, strict=False))


def _with_position(record: Checkpoint, saved: Checkpoint | None) -> Checkpoint:
    if saved is None:
        return record
    return msgspec.structs.replace(record, position=saved.position, created=saved.created)


def _size_or_none(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def config_from_checkpoint(path: str, jobs: int | None, queue_depth: int | None) -> RunConfig:
    """The run recorded in the checkpoint at `path`; only -j and the queue depth may change."""
    saved = checkpoint.load(path)
    if saved is None:
        raise CheckpointError(f"no checkpoint at {path}")
    options, command = saved.options, saved.command
    return RunConfig(
        module=saved.module.path,
        inputs=tuple(i.path for i in saved.inputs),
        output=saved.output,
        frame_size=options.frame_size,
        jobs=jobs or command.jobs,
        queue_depth=queue_depth if queue_depth is not None else command.queue_depth,
        abi=AbiOptions(
            function=options.function,
            alloc=options.alloc,
            free=options.free,
            init=options.init,
            wasi_command=options.wasi_command,
        ),
        config_arg=command.config_arg,
        engine=saved.engine,
        sandbox=Sandbox(
            timeout=command.timeout,
            fuel=command.fuel,
            max_memory=command.max_memory,
            max_output=command.max_output,
            env=tuple(command.env),
            dirs=tuple(DirGrant(host, guest, writable) for host, guest, writable in command.dirs),
        ),
        on_error=options.on_error,
        dead_letter=command.dead_letter,
        framing=FramingSpec(
            framing=Framing(options.framing),
            delimiter=options.delimiter.encode("latin-1"),
            oversize=Oversize(options.oversize),
            linger=command.linger,
        ),
        overload=Overload.parse(command.overload),
        drop_log=command.drop_log,
        checkpoint=path,
        checkpoint_interval=command.checkpoint_interval,
        checkpoint_every=command.checkpoint_every,
        resume=True,
    )
