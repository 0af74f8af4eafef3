"""Where a run starts: the checkpoint record a run keeps, the checks before resuming from one,
and the run a checkpoint records (`wasmstream resume`).

Imported only by runs that keep a checkpoint, so that the others never load msgspec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from wasmstream._version import __version__
from wasmstream.checkpoint import record as checkpoint
from wasmstream.checkpoint import state_files as state
from wasmstream.checkpoint.journal import Journal, StreamProgress, StreamTail
from wasmstream.checkpoint.record import (
    Checkpoint,
    Digest,
    InputRecord,
    ModuleRecord,
    OutputFile,
    Position,
)
from wasmstream.checkpoint.recorded_options import record_options, recorded_run
from wasmstream.engines import LoadedModule
from wasmstream.errors import CheckpointError
from wasmstream.guest.abi import StateKind
from wasmstream.run.options import Notify, Reached, RunConfig
from wasmstream.stream.input import STDIN, ConcatenatedInput
from wasmstream.stream.sources import absolute, is_url

if TYPE_CHECKING:
    from wasmstream.run.tally import Tally
    from wasmstream.stream.parts_layout import Committed


class CheckpointPlan:
    """The checkpoint side of a run: its record, where it starts, and its journal.

    Made while the run holds its locks and before anything is written: every refusal here
    leaves the checkpoint, the output and the logs as they were.
    """

    def __init__(
        self,
        config: RunConfig,
        loaded: LoadedModule,
        config_bytes: bytes,
        notify: Notify,
        output_fd: int | None,
        origin: Reached | None = None,
        end: int | None = None,
    ) -> None:
        assert config.checkpoint is not None
        self.config = config
        self.output_fd = output_fd
        self.origin = origin or Reached()  # where the run starts when nothing is saved
        self.record = new_record(config, loaded, config_bytes, output_fd, origin, end)
        self.replaces = config.restart
        self.saved = self._previous(notify)
        checkpoint.check_writable(config.checkpoint)  # a full disk fails now, not mid-run

    def _previous(self, notify: Notify) -> Checkpoint | None:
        config = self.config
        assert config.checkpoint is not None
        if config.restart:
            return None  # asked to start over: the old checkpoint is replaced, unread
        saved = checkpoint.load(config.checkpoint)
        if saved is not None and not config.resume and saved.status == "complete":
            notify(f"starting over: checkpoint {config.checkpoint} is of a finished run")
            self.replaces = True
            return None
        return previous_checkpoint(config, self.record, saved, notify, self.output_fd)

    @property
    def watches_stream(self) -> bool:
        """Whether an input can only be recognised by its bytes (stdin, a pipe, a FIFO)."""
        return any(not i.regular or i.path == STDIN for i in self.record.inputs)

    @property
    def end(self) -> int | None:
        """Where the run stops: the end the first run recorded (a shard's), else the one given."""
        saved = self.saved
        return saved.end if saved is not None and saved.end is not None else self.record.end

    @property
    def start(self) -> Reached:
        if self.saved is None:
            return self.origin
        position = self.saved.position
        command = self.saved.command
        # A log counts only if it is the file the checkpoint measured.
        same = [
            checkpoint.optional_text_path(recorded) == (os.path.abspath(now) if now else None)
            for recorded, now in (
                (command.dead_letter, self.config.dead_letter),
                (command.drop_log, self.config.drop_log),
            )
        ]
        return Reached(
            position.input_bytes,
            tuple(position.per_input),
            position.frames,
            position.output_bytes,
            (
                position.dead_letter_bytes if same[0] else None,
                position.drop_log_bytes if same[1] else None,
            ),
        )

    def nothing_new(self) -> bool:
        return self.saved is not None and nothing_new(self.saved, self.record)

    def forget_replaced(self) -> None:
        """Before the output is cut: a run that starts over removes the checkpoint it replaces,
        which describes that output. Killed before its own first save, it then leaves none, and
        is started over again, rather than one that claims output no longer there."""
        if self.replaces:
            assert self.config.checkpoint is not None
            checkpoint.remove(self.config.checkpoint)

    def check_stream(self, stream: ConcatenatedInput) -> None:
        """After `stream.skip_to_start`: refuse a stream whose bytes before the start are not
        the ones recorded (another file on stdin, a pipe fed other data). --force skips the
        check of its first bytes (as of a file's first block), never of the bytes just before
        the start: resuming after bytes that are not the ones processed duplicates or loses."""
        assert self.saved is not None
        position = self.saved.position
        for what, digest, data in (
            ("first", position.stream_head, bytes(stream.head)),
            ("last", position.stream_tail, stream.skipped_tail),
        ):
            if digest is None or (what == "first" and self.config.force):
                continue
            window = data[: digest.length] if what == "first" else data[-digest.length :]
            if digest.length and (len(window) != digest.length or Digest.of(window) != digest):
                hint = "; --force resumes anyway" if what == "first" else ""
                raise CheckpointError(
                    f"the input's {what} {digest.length} bytes before offset "
                    f"{position.input_bytes} differ from those recorded in checkpoint "
                    f"{self.config.checkpoint}: it is not the same data{hint}"
                )

    def saved_parts(self) -> list[tuple[int, Committed]]:
        """--output-parts: the parts the checkpoint records as committed (none: a fresh run)."""
        from wasmstream.stream.parts_layout import Committed

        parts = self.saved.position.parts if self.saved is not None else None
        return [
            (p.number, Committed(p.size, p.tail.length, p.tail.sha256, p.dead_letters))
            for p in parts or ()
        ]

    def saved_state(self, kind: StateKind) -> bytes | None:
        """The guest state to restore before going on (None: start the guest afresh). Refuses
        (CheckpointError) a state that is missing, altered, of another kind, or a position past
        the start of a stateful run with no state saved."""
        saved, path = self.saved, self.config.checkpoint
        assert path is not None
        if saved is None or kind is StateKind.NONE:
            return None
        record = saved.state
        if record is None:
            if saved.position.input_bytes == 0:
                return None
            raise CheckpointError(
                f"checkpoint {path} saved no guest state, but the module keeps one ({kind.value}):"
                " resuming would start it afresh in the middle of the stream; use --restart"
            )
        if record.kind != kind.value:
            raise CheckpointError(
                f"checkpoint {path} saved a {record.kind} state; this run keeps a {kind.value} one"
            )
        return state.read(path, record.file, record.sha256)

    def open_journal(
        self,
        syncs: list[Callable[[], None]],
        stream: StreamProgress,
        tally: Tally,
        pipe_fd: int | None = None,
        snapshot: Callable[[], bytes | None] | None = None,
        state_kind: str = "exports",
        log_sizes: Callable[[], tuple[int | None, int | None]] | None = None,
        parts: Callable[[], list[tuple[int, Committed]] | None] | None = None,
    ) -> Journal:
        """The journal (which saves nothing yet: see `begin`)."""
        config = self.config
        assert config.checkpoint is not None
        journal = Journal(
            config.checkpoint,
            with_position(self.record, self.saved),
            syncs=syncs,
            stream=stream,
            tally=tally,
            clock=checkpoint.Clock(config.checkpoint_interval, config.checkpoint_every),
            stream_tail=(
                StreamTail(stream.skipped_tail, self.start.input_bytes)
                if self.watches_stream
                else None
            ),
            output_fd=self.output_fd,
            pipe_fd=pipe_fd,
            snapshot=snapshot,
            state_kind=state_kind,
            log_sizes=log_sizes,
            parts=parts,
        )
        return journal

    def begin(self, journal: Journal) -> None:
        """A run that starts afresh saves at once, before its first frame: an old checkpoint
        (--restart, or a finished run's) would describe output this run has just truncated,
        and without any, a run killed before its first interval would leave its logs' lines to
        be written again. A resumed run's checkpoint already says where it starts."""
        if self.replaces or self.saved is None:
            journal.save_start()


def new_record(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    output_fd: int | None,
    origin: Reached | None = None,
    end: int | None = None,
) -> Checkpoint:
    """The checkpoint this run would write, at its start (`origin`: a shard's, else zero;
    `end`: where it stops, None for the input's end)."""
    origin = origin or Reached()
    stamp = checkpoint.now()
    options, command = record_options(config, config_bytes)
    written = config.output_parts or config.output
    output = None if written in (None, STDIN) else absolute(str(written))
    output_file = None
    in_a_folder = config.output_parts is not None and not is_url(config.output_parts)
    if output_fd is not None or in_a_folder:  # the file, or the folder (an object has no inode)
        info = os.fstat(output_fd) if output_fd is not None else os.stat(str(output))
        output_file = OutputFile(device=info.st_dev, inode=info.st_ino)
    text = checkpoint.path_text
    optional = checkpoint.optional_path_text
    return Checkpoint(
        version=checkpoint.FORMAT_VERSION,
        wasmstream_version=__version__,
        engine=loaded.engine.name,
        engine_version=loaded.engine.version(),
        module=ModuleRecord(path=text(os.path.abspath(config.module)), sha256=loaded.sha256),
        options=options,
        command=command,
        inputs=[_input_record(path) for path in (config.inputs or (STDIN,))],
        output=optional(output),
        output_parts=config.output_parts is not None,
        output_file=output_file,
        position=Position(
            input_bytes=origin.input_bytes,
            per_input=list(origin.per_input) or [0] * max(len(config.inputs), 1),
            frames=origin.frames,
            parts=[] if config.output_parts is not None else None,
        ),
        end=end,
        created=stamp,
        updated=stamp,
    )


def _input_record(path: str) -> InputRecord:
    record = checkpoint.describe_input(path)
    return msgspec.structs.replace(record, path=checkpoint.path_text(record.path))


def previous_checkpoint(
    config: RunConfig,
    record: Checkpoint,
    saved: Checkpoint | None,
    notify: Notify,
    output_fd: int | None,
) -> Checkpoint | None:
    """The checkpoint to continue from, after checking that continuing is right; or None."""
    path = config.checkpoint
    assert path is not None
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
    checkpoint.check_resumable(
        saved,
        module=ModuleRecord(path=os.path.abspath(config.module), sha256=record.module.sha256),
        options=record.options,
        inputs=record.inputs,
        output=record.output,
        output_fd=output_fd,
        force=config.force,
        source=path,
        output_parts=record.output_parts,
    )
    _check_growth_is_at_the_end(saved, record, path)
    return saved


def _check_growth_is_at_the_end(saved: Checkpoint, current: Checkpoint, path: str) -> None:
    """New data may follow only the last input processed: anything else would reorder the stream.
    Nor may it follow a finish function's output, which ends the output."""
    done = saved.position.per_input
    if saved.position.finished and not nothing_new(saved, current):
        raise CheckpointError(
            f"the input has grown since checkpoint {path}, but that run's finish output already "
            "ends the output: cannot append to it; use --restart to start over"
        )
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
    if saved.end is not None and saved.position.input_bytes >= saved.end:
        return True  # a shard that is not the last: its range is done, whatever came after
    done = saved.position.per_input
    return all(i.regular and i.size == d for i, d in zip(current.inputs, done, strict=False))


def with_position(record: Checkpoint, saved: Checkpoint | None) -> Checkpoint:
    if saved is None:
        return record
    return msgspec.structs.replace(
        record, position=saved.position, state=saved.state, created=saved.created
    )


def config_from_checkpoint(
    path: str, jobs: int | None, queue_depth: int | None, *, keep_jobs: bool = True
) -> RunConfig:
    """The run recorded in the checkpoint at `path`; only -j and the queue depth may change.
    `keep_jobs`: -j was not given, keep the recorded one (else `jobs`, None being auto)."""
    saved = checkpoint.load(path)
    if saved is None:
        raise CheckpointError(f"no checkpoint at {path}")
    path_of = checkpoint.text_path
    recorded = recorded_run(saved.options, saved.command)
    if not keep_jobs:
        recorded["jobs"] = jobs
    if queue_depth is not None:
        recorded["queue_depth"] = queue_depth
    output = checkpoint.optional_text_path(saved.output)
    return RunConfig(
        module=path_of(saved.module.path),
        inputs=tuple(path_of(i.path) for i in saved.inputs),
        output=None if saved.output_parts else output,
        output_parts=output if saved.output_parts else None,
        engine=saved.engine,
        checkpoint=path,
        resume=True,
        **recorded,
    )
