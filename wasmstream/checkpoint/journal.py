"""Keeping the checkpoint up to date while a run goes on.

Called after each frame's output is written (from whichever thread writes), it saves at most
every interval: first the output is made durable, then the checkpoint that covers it is
replaced. `finish` writes the final state: complete, failed (with where), or interrupted
(resumable as it is).

A stateful run's journal also saves the guest's state with each position: the snapshot is
taken by the thread that owns the one instance (the serial path writes and records each frame
on that thread, between frames), written to its own file and fsynced before the checkpoint that
names it replaces the old one; the superseded state file is removed after. A stateful run that
fails or is interrupted keeps its last saved position and state (only the status changes): the
instance may have been stopped half-way through a frame, so its state now is not trusted.

Each save also records what a resumed run needs to recognise its data: for a stream (stdin, a
pipe), digests of its first bytes and of the bytes just before the saved offset; for an output
file, a digest of its bytes just before the saved output offset.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import TYPE_CHECKING, Protocol

import msgspec

from wasmstream.checkpoint import record as checkpoint
from wasmstream.checkpoint import state_files as state
from wasmstream.checkpoint.record import (
    Checkpoint,
    Digest,
    Failure,
    PartRecord,
    Position,
    StateRecord,
    Status,
)
from wasmstream.errors import BrokenPipe, GuestError, WasmstreamError
from wasmstream.run.options import Reached
from wasmstream.run.tally import Tally
from wasmstream.stream.framing import Frame
from wasmstream.stream.input import WINDOW

if TYPE_CHECKING:
    from wasmstream.stream.parts_layout import Committed


class StreamProgress(Protocol):
    """What the journal asks of the input (a ConcatenatedInput, or a cluster run's parts)."""

    @property
    def head(self) -> bytearray: ...

    @property
    def skipped_tail(self) -> bytes: ...

    def progress(self, stream_offset: int) -> list[int]:
        """Bytes of each input done once this run has done `stream_offset` bytes."""
        ...


class StreamTail:
    """The last bytes of the input stream up to the last frame recorded (WINDOW of them, and
    SLACK more, so that a save may claim a little less than all that was written: see
    `Journal`'s pipe outputs).

    Fed with each frame as it is recorded, whose input is still intact then (the run keeps
    frames in host buffers when it watches a stream; a dropped frame is recorded over a copy);
    a gap starts it afresh — bytes skipped before a frame, or a dropped frame whose bytes were
    gone (recorded over fewer bytes than its length: see `pool._Scratch`) — so it only ever
    holds bytes that really precede the offset, and a digest after a gap covers fewer bytes,
    never other ones.
    """

    SLACK = 4 << 20

    def __init__(self, seed: bytes, end: int) -> None:
        self._bytes = bytearray(seed[-WINDOW:])
        self._end = end  # the stream offset just after the last byte held

    def frame_written(self, frame: Frame, written: int) -> None:
        known = len(frame.buffer) >= frame.length  # a dropped frame's bytes may be gone
        if frame.span != frame.length or not known:  # bytes the tail cannot hold: a gap
            self._bytes.clear()
        if known:
            self._bytes += frame.data[-(WINDOW + self.SLACK) :]
            del self._bytes[: -(WINDOW + self.SLACK)]
        self._end = frame.offset + frame.length

    def digest(self, at: int) -> Digest:
        """The digest of the WINDOW bytes (or fewer, if fewer are known) before offset `at`."""
        held = len(self._bytes) - (self._end - at)
        return Digest.of(self._bytes[max(held - WINDOW, 0) : max(held, 0)])


def unread_in_pipe(fd: int) -> int:
    """Bytes written to the pipe at `fd` that its reader has not taken yet (0 if not a pipe)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except OSError:
        return 0


def reader_gone(fd: int) -> bool:
    """Whether the pipe at `fd` has no reader left (poll reports an error on its write end)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


class _Saver:
    """The thread that writes a stateful run's saves, in order, while the guest goes on.

    Started with the journal, before any frame: a thread started mid-run, by a `start()` that a
    signal interrupts, could go on writing unwatched. `drain` waits for everything submitted so
    far (an end marker through the same queue: nothing submitted escapes it, even when a
    signal interrupts the waiting) and raises the first failure since the last drain.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[Callable[[], None] | threading.Event | None] = SimpleQueue()
        self._failure: BaseException | None = None
        threading.Thread(target=self._loop, name="wasmstream-save", daemon=True).start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            if isinstance(job, threading.Event):
                job.set()
            elif self._failure is None:  # after a failure, nothing more until it is raised
                try:
                    job()
                except BaseException as error:  # raised again in the run's thread, by drain
                    self._failure = error

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def drain(self) -> None:
        done = threading.Event()
        self._jobs.put(done)
        done.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        self._jobs.put(None)


class Journal:
    def __init__(
        self,
        path: str,
        record: Checkpoint,
        *,
        syncs: list[Callable[[], None]],
        stream: StreamProgress,
        tally: Tally,
        clock: checkpoint.Clock,
        stream_tail: StreamTail | None = None,
        output_fd: int | None = None,
        snapshot: Callable[[], bytes | None] | None = None,
        state_kind: str = "exports",
        pipe_fd: int | None = None,
        log_sizes: Callable[[], tuple[int | None, int | None]] | None = None,
        parts: Callable[[], list[tuple[int, Committed]] | None] | None = None,
    ) -> None:
        self.path = path
        self._parts = parts or (lambda: None)
        self._log_sizes = log_sizes or (lambda: (None, None))
        self._start_logs = self._log_sizes()
        self._snapshot = snapshot
        self._state_kind = state_kind
        self.completed = False
        self._saver = _Saver() if snapshot is not None else None
        self._record = record
        self._start = record.position
        self._syncs = syncs
        self._stream = stream
        self._tally = tally
        self._clock = clock
        self._stream_tail = stream_tail
        self._output_fd = output_fd
        # Output to a pipe (stdout, a FIFO): a save claims only what its reader has taken, so
        # that if the reader dies the bytes left in the pipe are not counted as delivered.
        self._pipe_fd = pipe_fd
        self._ends: deque[Reached] = deque()  # since this run started, frame by frame
        self._last: Reached | None = None
        self.saves = 0
        if stream_tail is not None:
            tally.on_frame_written.append(stream_tail.frame_written)
        tally.on_frame_written.append(self.frame_written)

    def frame_written(self, frame: Frame, written: int) -> None:
        if self._pipe_fd is not None:
            self._ends.append(self._reached())
        if self._clock.due():
            self.save("running")

    def save(self, status: Status, failure: Failure | None = None, finished: bool = False) -> None:
        if self._snapshot is not None:
            self._save_with_state(status, failure, finished)
            return
        for sync in self._syncs:  # the invariant: never claim output that is not durable
            sync()
        self._record = msgspec.structs.replace(
            self._record,
            position=self._position(finished, complete=status == "complete"),
            status=status,
            failure=failure,
            updated=checkpoint.now(),
        )
        checkpoint.save(self.path, self._record)
        self.saves += 1
        self._clock.reset()

    def save_start(self) -> None:
        """Before the first frame: where the run starts and how long its logs are. The state
        there is a fresh instance's, so none is written."""
        if self._snapshot is None:
            self.save("running")
        else:
            self._commit(self._position(), None, "running", None, 1)
            self._clock.reset()

    def _save_with_state(self, status: Status, failure: Failure | None, finished: bool) -> None:
        """Between two frames, on the instance's thread, the position and the guest's state are
        taken together, now. The rest — making the output durable, compressing and writing the
        state file, replacing the checkpoint — runs on a thread of its own while the guest goes
        on (zlib and fsync release the GIL); a final save does it at once. One save at a time,
        in order: a save waits for the one before, and raises its failure."""
        assert self._saver is not None
        self._saver.drain()
        if self._pipe_fd is not None:
            # The state is the instance's now: to a pipe, the position must be now too, so wait
            # until the reader has taken all (a reader that dies ends the wait with the run).
            while unread_in_pipe(self._pipe_fd):
                if reader_gone(self._pipe_fd):  # what it left unread stays there for ever
                    raise BrokenPipe("output pipe closed")
                time.sleep(0.001)
        position = self._position(finished, complete=status == "complete")  # finish's output too
        data = self._snapshot() if self._snapshot is not None else None
        self._clock.reset()
        if status == "running":
            self._saver.submit(functools.partial(self._commit, position, data, status, failure, 1))
        else:  # the run waits for this one: compress on every core
            self._commit(position, data, status, failure, min(os.cpu_count() or 1, 4))

    def _commit(
        self,
        position: Position,
        data: bytes | None,
        status: Status,
        failure: Failure | None,
        parts: int,
    ) -> None:
        for sync in self._syncs:  # everything written so far: at least what `position` covers
            sync()
        saved_state = None
        if data is not None:  # None: no instance yet, a fresh one is the state at `position`
            # durable before the checkpoint names it
            name, digest = state.write(self.path, data, parts)
            kind = self._state_kind
            saved_state = StateRecord(kind=kind, file=name, sha256=digest, size=len(data))  # type: ignore[arg-type]
        record = msgspec.structs.replace(
            self._record,
            position=position,
            state=saved_state,
            status=status,
            failure=failure,
            updated=checkpoint.now(),
        )
        checkpoint.save(self.path, record)
        self._record = record
        state.remove_others(self.path, saved_state.file if saved_state else None)
        self.saves += 1

    def _keep_last(self, status: Status, failure: Failure | None) -> None:
        """Only the status changes: the position and state stay those last saved (a save
        still being written completes first; if it failed, the one before it stays)."""
        assert self._saver is not None
        while True:  # even through a second Ctrl-C: no save may go on behind this one
            try:
                self._saver.drain()
            except KeyboardInterrupt:
                continue
            except WasmstreamError:
                pass  # that save failed: the one before it stays
            break
        self._record = msgspec.structs.replace(
            self._record, status=status, failure=failure, updated=checkpoint.now()
        )
        checkpoint.save(self.path, self._record)
        self.saves += 1

    def complete(self, finished: bool) -> None:
        """The final save of a run that went through to the end (with `finished`: the finish
        function's output is written, and counted)."""
        self.save("complete", finished=finished)
        self.completed = True

    def _reached(self) -> Reached:
        """Where this run has got to since it started (the tally, and its logs' sizes)."""
        tally = self._tally
        return Reached(
            tally.input_bytes,
            frames=tally.frames,
            output_bytes=tally.output_bytes,
            log_bytes=self._log_sizes(),
        )

    def _delivered(self, complete: bool) -> Reached:
        """Where this run has got to: its last frame written; to a pipe, while the run goes on
        or when its reader went away, the last frame whose output the reader has taken. (A run
        that completed has put everything in the pipe, for a reader that is still there.)"""
        now = self._reached()
        if self._pipe_fd is None or complete:
            return now
        taken = now.output_bytes - unread_in_pipe(self._pipe_fd)
        nothing = delivered = Reached(log_bytes=self._start_logs)
        while self._ends and self._ends[0].output_bytes <= taken:
            delivered = self._ends.popleft()
        if delivered == nothing and self._last is not None:
            delivered = self._last  # nothing newer was taken: where the last save stood
        self._ends.appendleft(delivered)  # later saves can only move on from here
        self._last = delivered
        return delivered

    def _position(self, finished: bool = False, complete: bool = False) -> Position:
        done = self._delivered(complete)
        input_bytes = self._start.input_bytes + done.input_bytes
        output_bytes = self._start.output_bytes + done.output_bytes
        head = tail = None
        if self._stream_tail is not None:
            head = Digest.of(self._stream.head[: min(WINDOW, input_bytes)])
            tail = self._stream_tail.digest(input_bytes)
        output_tail = None
        if self._output_fd is not None:
            output_tail = checkpoint.output_tail(self._output_fd, output_bytes)
        return Position(
            input_bytes=input_bytes,
            per_input=self._stream.progress(done.input_bytes),
            frames=self._start.frames + done.frames,
            output_bytes=output_bytes,
            stream_head=head,
            stream_tail=tail,
            output_tail=output_tail,
            finished=finished,
            dead_letter_bytes=done.log_bytes[0],
            drop_log_bytes=done.log_bytes[1],
            parts=self._part_records(),
        )

    def _part_records(self) -> list[PartRecord] | None:
        """--output-parts: every part committed so far (they cover what the position claims:
        the client records a part before it counts its input as done)."""
        parts = self._parts()
        if parts is None:
            return None
        return [
            PartRecord(
                number=number,
                size=part.size,
                tail=Digest(length=part.tail_length, sha256=part.tail_sha256),
                dead_letters=part.dead_letters,
            )
            for number, part in parts
        ]

    @property
    def input_bytes(self) -> int:
        return self._record.position.input_bytes

    def finish(self, error: BaseException | None) -> None:
        """The final save: complete, failed at a frame, or interrupted (resumable)."""
        if error is None:
            if not self.completed:
                self.complete(finished=False)
            if self._saver is not None:
                self._saver.close()
            return
        try:
            self._final_save(error)
        finally:
            if self._saver is not None:
                self._saver.close()

    def _final_save(self, error: BaseException) -> None:
        save = self._keep_last if self._snapshot is not None else self.save
        if isinstance(error, GuestError):
            save("failed", Failure(message=str(error), frame=error.frame, offset=error.offset))
        elif isinstance(error, KeyboardInterrupt) or getattr(error, "status", 0) >= 128:
            save("interrupted", None)  # a signal or the output pipe closed: resumable as it is
        else:
            save("failed", Failure(message=str(error)))
