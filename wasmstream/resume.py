"""Where a run starts: the checkpoint record a run keeps, the checks before resuming from one,
and the run a checkpoint records (`wasmstream resume`).

Imported only by runs that keep a checkpoint, so that the others never load msgspec.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from . import checkpoint
from ._version import __version__
from .abi import AbiOptions
from .checkpoint import Checkpoint, Command, ModuleRecord, OutputOptions, Position
from .engines import DirGrant, Sandbox
from .errors import CheckpointError
from .framing import Framing, FramingSpec, Oversize
from .inputs import STDIN, ConcatenatedInput
from .journal import Journal
from .pool import Overload

if TYPE_CHECKING:
    from .core import LoadedModule, Notify, RunConfig, StartPoint
    from .pool import Tally


class CheckpointPlan:
    """The checkpoint side of a run: its record, where it starts, and its journal."""

    def __init__(
        self, config: RunConfig, loaded: LoadedModule, config_bytes: bytes, notify: Notify
    ) -> None:
        self.config = config
        self.record = new_record(config, loaded, config_bytes)
        self.saved = previous_checkpoint(config, self.record, notify)

    @property
    def start(self) -> StartPoint:
        from .core import StartPoint

        if self.saved is None:
            return StartPoint()
        position = self.saved.position
        return StartPoint(
            position.input_bytes, tuple(position.per_input), position.frames, position.output_bytes
        )

    def nothing_new(self) -> bool:
        return self.saved is not None and nothing_new(self.saved, self.record)

    def open_journal(
        self, syncs: list[Callable[[], None]], stream: ConcatenatedInput, tally: Tally
    ) -> Journal:
        """The journal. Under --restart a first checkpoint replaces the old one at once (it
        describes output this run has just truncated); otherwise what is on disk already
        describes where this run starts (a resumed checkpoint, or none: start afresh)."""
        config = self.config
        assert config.checkpoint is not None
        journal = Journal(
            config.checkpoint,
            with_position(self.record, self.saved),
            syncs=syncs,
            stream=stream,
            tally=tally,
            clock=checkpoint.Clock(config.checkpoint_interval, config.checkpoint_every),
        )
        if config.restart:
            journal.save("running")
        tally.on_frame_written.append(journal.frame_written)
        return journal


def new_record(config: RunConfig, loaded: LoadedModule, config_bytes: bytes) -> Checkpoint:
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


def previous_checkpoint(config: RunConfig, record: Checkpoint, notify: Notify) -> Checkpoint | None:
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


def nothing_new(saved: Checkpoint, current: Checkpoint | None) -> bool:
    if saved.status != "complete" or current is None:
        return False
    done = saved.position.per_input
    return all(i.regular and i.size == d for i, d in zip(current.inputs, done, strict=False))


def with_position(record: Checkpoint, saved: Checkpoint | None) -> Checkpoint:
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
    from .core import RunConfig

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
