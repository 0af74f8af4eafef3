"""Running frames through instances of the module, and writing outputs in input order.

Four shapes, one contract (outputs leave strictly in input order; memory is bounded by the
frames in flight; the first failure stops the run with everything before it written):

- `jobs == 1` (and `--on-overload block`): one instance on the calling thread. Read,
  transform, write the output straight from guest memory. No threads, no queues, and no
  copies but the one into guest memory. A stateful run always takes this path: its one
  instance sees every frame in order, and whoever records a frame (the checkpoint's journal)
  runs on the instance's own thread between frames, where a snapshot of it is consistent; after
  the last frame, `end` gets the instance (to call its finish function) before it is closed.
- `jobs == 1` with a `Pipelined` instance (the wasmer engine, whose guest runs in a process of
  its own): the same, but up to `depth` frames are in that process at once, so that reading,
  transforming and writing overlap; see `_Pipeline`.
- `jobs > 1` under `--on-overload block` (the default): ordered turns. `jobs` threads each own
  one instance for their whole life (wasmtime Stores are not thread-safe) and take turns, in
  input order, to read a frame straight into their guest memory and to write its output
  straight from there; wasmtime releases the GIL during guest calls, so the guests run on
  separate cores. When the output is slow, write turns wait, then read turns, and so does
  whoever feeds our standard input: backpressure, with one frame per instance. See `_Turns`.
- `jobs > 1` under `--on-overload drop|sample:N|adaptive`: the calling thread reads frames into
  a bounded set of recycled buffers (at most `queue_depth + jobs`), worker threads transform
  copies of them, and a writer thread writes them in order. Under drop/sample the reader does
  not wait: a frame with no free buffer is read (into scratch space, see `_Scratch`) and
  dropped; under adaptive it slows down.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from time import perf_counter, sleep
from typing import Protocol

from wasmstream.engines.base import Instance, Pipelined
from wasmstream.errors import GuestError, Interrupted, WasmstreamError
from wasmstream.run.on_error import FailureHandler
from wasmstream.run.options import Overload
from wasmstream.run.tally import Tally
from wasmstream.stream.framing import Buffer, Frame
from wasmstream.stream.input import WINDOW

Frames = Callable[[Callable[[], Buffer]], Iterator[Frame]]
"""Cuts the input into frames, filling buffers taken from the callable it is given."""

Write = Callable[[memoryview | bytes], int]


@dataclass(frozen=True)
class PoolSettings:
    frame_size: int
    jobs: int = 1
    queue_depth: int = 2
    direct_read: bool = True  # frames may be read straight into guest memory (jobs == 1)
    measured: bool = True  # guest time is counted (read by --stats and --jobs auto)
    overload: Overload = field(default_factory=Overload)


class InputWaits(Protocol):
    """Where the input says that a read is about to wait (`inputs.ConcatenatedInput`)."""

    before_wait: Callable[[], None] | None


def run_frames(
    frames: Frames,
    new_instance: Callable[[], Instance],
    write: Write,
    settings: PoolSettings,
    tally: Tally,
    failures: FailureHandler,
    end: Callable[[Instance], None] | None = None,
    input_waits: InputWaits | None = None,
) -> None:
    """Transform every frame and write the outputs in order. Raises the first failure.

    A frame that fails goes to `failures`, which raises (policy fail) or says what to write in
    its place; the instance it failed in is replaced by a fresh one, its state being suspect.
    `end`: called with the serial path's instance after the last frame (a stateful run).
    `input_waits`: told when the input is about to wait, so that outputs held back by a
    pipelined instance are written first and never wait for input that has not come.
    """
    if settings.jobs == 1 and settings.overload.policy == "block":
        instance = new_instance()
        if end is None and isinstance(instance, Pipelined):
            pipeline = _Pipeline(instance, new_instance, write, tally, failures)
            pipeline.run(frames, settings, input_waits)
            return
        for _ in serial_steps(
            frames, instance, new_instance, write, settings, tally, failures, end
        ):
            pass
    elif settings.overload.policy == "block":
        assert end is None, "a stateful run is serial"
        _Turns(frames, new_instance, write, settings, tally, failures).run()
    else:
        assert end is None, "a stateful run is serial"
        _ParallelRun(frames, new_instance, write, settings, tally, failures).run()


def _write_failed(frame: Frame, error: GuestError, write: Write, failures: FailureHandler) -> int:
    """Write what the failure policy puts in place of a failed frame (which counts it); under
    `--on-error fail` this raises the error, located at the frame. Every shape's one way."""
    return write(failures.handle(frame, error.at(frame.index, frame.offset)))


def serial_steps(
    frames: Frames,
    instance: Instance,
    new_instance: Callable[[], Instance],
    write: Write,
    settings: PoolSettings,
    tally: Tally,
    failures: FailureHandler,
    end: Callable[[Instance], None] | None = None,
) -> Iterator[None]:
    """The serial shape, one step per frame: it yields once each frame is written and recorded
    (a run goes straight through; the library's iterator hands each frame's output on there).
    The instance is closed when the steps end, however they end."""
    # Frames are read straight into guest memory (one copy fewer) unless a failed frame's input
    # must survive the guest, which may change it in place, or the framing carries bytes over.
    direct = settings.direct_read and not failures.needs_input
    host_buffer = None if direct else bytearray(settings.frame_size)
    timed = tally if settings.measured else None  # two clock reads a frame, when nobody reads

    def next_buffer() -> Buffer:
        return host_buffer if host_buffer is not None else instance.input_buffer()

    tally.queue_fill = lambda: (1, 1)
    try:
        for frame in frames(next_buffer):
            if timed is not None:
                started, writing_before = perf_counter(), timed.output_seconds
            try:
                if host_buffer is None:
                    written = instance.transform_buffer(frame.length, write)
                elif failures.needs_input:  # write only once the whole frame has succeeded
                    written = write(instance.transform(frame.data, bytes))
                else:
                    written = instance.transform(frame.data, write)
            except GuestError as error:
                written = _write_failed(frame, error, write, failures)
                tally.record(frame, written)  # before the replacement starts (see _Pipeline)
                instance.close()
                instance = new_instance()
                yield
                continue
            if timed is not None:
                writing = timed.output_seconds - writing_before  # writes happen in the call
                timed.guest_seconds += perf_counter() - started - writing
            tally.record(frame, written)
            yield
        if end is not None:
            end(instance)
    finally:
        instance.close()


class _Pipeline:
    """The serial shape for a `Pipelined` instance (the wasmer engine's worker process): up to
    `depth` frames in flight while this thread reads the next and writes the oldest, outputs in
    input order, a failed frame's instance replaced and the frames after it run again on the
    fresh one. Frames are read straight into the instance's input slots, which the guest never
    changes: a failed frame's input is still there for the failure policy.

    An output is written when the ring is full, or when the input is about to wait (so output
    never waits for input that has not come), or at the end.
    """

    def __init__(
        self,
        instance: Pipelined,
        new_instance: Callable[[], Instance],
        write: Write,
        tally: Tally,
        failures: FailureHandler,
    ) -> None:
        self._instance = instance
        self._new_instance = new_instance
        self._write = write
        self._tally = tally
        self._failures = failures
        self._in_flight: deque[Frame] = deque()
        self._stopped = False  # an output failed: the frames after it are not written

    def run(self, frames: Frames, settings: PoolSettings, input_waits: InputWaits | None) -> None:
        # A framing that carries bytes across frames fills a buffer of its own: frames are
        # copied into a slot as they are submitted.
        host_buffer = None if settings.direct_read else bytearray(settings.frame_size)

        def next_buffer() -> Buffer:
            return self._instance.input_buffer() if host_buffer is None else host_buffer

        self._tally.queue_fill = lambda: (len(self._in_flight), self._instance.depth)
        if input_waits is not None:
            input_waits.before_wait = self.drain
        try:
            for frame in frames(next_buffer):
                self._submit(frame)
                if len(self._in_flight) == self._instance.depth:
                    self._collect()
            self.drain()
        except Interrupted:  # SIGTERM (Ctrl-C is a KeyboardInterrupt): stop now
            raise
        except WasmstreamError:
            # Unreadable input (or a record too large): first write what came before it,
            # unless the error is an output's own (a frame failing under --on-error fail).
            if not self._stopped:
                self.drain()
            raise
        finally:
            if input_waits is not None:
                input_waits.before_wait = None
            self._instance.close()

    def drain(self) -> None:
        """Write every output in flight."""
        while self._in_flight:
            self._collect()

    def _submit(self, frame: Frame) -> None:
        slot = self._instance.input_buffer()
        if frame.buffer is not slot:  # read into a host buffer, or into a replaced instance's
            slot[: frame.length] = frame.data
            frame = Frame(frame.index, frame.offset, slot, frame.length, frame.span)
        self._instance.submit(frame.length)
        self._in_flight.append(frame)

    def _collect(self) -> None:
        frame = self._in_flight.popleft()
        tally = self._tally
        started, writing_before = perf_counter(), tally.output_seconds
        failed = False
        try:
            try:
                written = self._instance.collect(self._write)
            except GuestError as error:
                written = _write_failed(frame, error, self._write, self._failures)
                failed = True
            # Time spent waiting for the guest, less the write (auto mode reads it).
            tally.guest_seconds += (
                perf_counter() - started - (tally.output_seconds - writing_before)
            )
            # Recorded before a replacement starts (which takes a while): a Ctrl-C then must
            # not leave a frame whose dead letter is written to be done again on resume.
            tally.record(frame, written)
            if failed:
                self._replace_instance()
        except BaseException:  # an output failed, or cannot be written: nothing after it may be
            self._stopped = True
            raise

    def _replace_instance(self) -> None:
        """After a failed frame: a fresh instance, given again the frames that were behind it
        (copied from the failed instance's slots before that is closed)."""
        failed = self._instance
        try:
            fresh = self._new_instance()
            assert isinstance(fresh, Pipelined)
            self._instance = fresh
            behind = list(self._in_flight)
            self._in_flight.clear()
            for frame in behind:
                self._submit(frame)
        finally:
            failed.close()


class _Turns:
    """`jobs > 1` under `--on-overload block`: `jobs` threads, each owning an instance, taking
    two turns per frame in input order — a read turn, in which a thread reads the next frame
    straight into its own instance's input buffer, and a write turn, in which it writes its
    output straight from guest memory. Between the two it runs the guest, the GIL released.

    There is no reader or writer thread to hand frames to, and no copy, which is why this shape
    beats a reader/worker/writer pool (bench/turns.py measures both).

    Memory: one frame per instance (and a host buffer each when the input must outlive the
    guest). A read error is raised once every frame read before it is written; a failed frame
    stops the run (under `fail`) with everything before it written and nothing after.
    """

    def __init__(
        self,
        frames: Frames,
        new_instance: Callable[[], Instance],
        write: Write,
        settings: PoolSettings,
        tally: Tally,
        failures: FailureHandler,
    ) -> None:
        self._frames = frames
        self._new_instance = new_instance
        self._write = write
        self._settings = settings
        self._tally = tally
        self._failures = failures
        # Straight into guest memory, unless a failed frame's input must survive the guest
        # (which may change it in place) or the framing carries bytes across frames.
        self._direct = settings.direct_read and not failures.needs_input
        self._source: Iterator[Frame] | None = None
        self._reader_buffer: Buffer | None = (
            None  # what the thread holding the read turn reads into
        )
        self._read_turn = threading.Lock()
        self._read = 0  # frames read (the next one's turn number)
        self._input_over = False
        self._input_error: BaseException | None = None
        self._turn_lock = threading.Lock()
        self._writing = False  # a thread has its write turn and has not recorded it yet
        self._no_writer = threading.Condition(self._turn_lock)
        self._written = 0  # frames written: the turn number whose write turn it is
        self._waiting: dict[int, threading.Lock] = {}  # write turns waited for, by number
        self._failure: BaseException | None = None
        self._started = threading.Barrier(settings.jobs)
        self._guest_lock = threading.Lock()

    def run(self) -> None:
        self._tally.queue_fill = lambda: (self._read - self._written, self._settings.jobs)
        threads = [
            threading.Thread(target=self._work, name=f"wasmstream-worker-{n}", daemon=True)
            for n in range(self._settings.jobs)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive() and self._failure is None:
                    thread.join(timeout=0.05)
        except BaseException as error:  # Ctrl-C or SIGTERM: stop everything now
            self._fail(error)
            self._wait_for_writes()
            raise
        if self._failure is not None:
            # A guest stuck in a loop cannot be joined (its thread is a daemon), but a write
            # under way is let finish and be recorded, so the checkpoint agrees with the output.
            self._wait_for_writes()
            raise self._failure
        if self._input_error is not None:
            raise self._input_error

    def _wait_for_writes(self, timeout: float = 10.0) -> None:
        """Wait (a while at most: a pipe nobody reads can block a write for ever) until no
        thread is between its write and recording that write."""
        with self._turn_lock:
            self._no_writer.wait_for(lambda: not self._writing, timeout)

    def _reader_buffer_now(self) -> Buffer:
        assert self._reader_buffer is not None
        return self._reader_buffer

    def _fail(self, error: BaseException) -> None:
        with self._turn_lock:
            if self._failure is None:
                self._failure = error
            waiting, self._waiting = self._waiting, {}
        for lock in waiting.values():
            lock.release()

    def _work(self) -> None:
        instance: Instance | None = None
        try:
            instance = self._new_instance()
        except BaseException as error:
            self._fail(error)
        finally:
            self._started.wait()  # every instance starts before any input is read
        try:
            host_buffer = None if self._direct else bytearray(self._settings.frame_size)
            while instance is not None and self._failure is None:
                taken = self._read_frame(instance, host_buffer)
                if taken is None:
                    return
                instance = self._run_frame(instance, *taken)
        except BaseException as error:
            self._fail(error)
        finally:
            if instance is not None:
                instance.close()

    def _read_frame(
        self, instance: Instance, host_buffer: bytearray | None
    ) -> tuple[int, Frame] | None:
        """This thread's read turn: the next frame and its turn number; None at the end."""
        with self._read_turn:
            if self._input_over or self._failure is not None:
                return None
            self._reader_buffer = (
                host_buffer if host_buffer is not None else instance.input_buffer()
            )
            if self._source is None:  # asked for only now that every instance has started
                self._source = self._frames(self._reader_buffer_now)
            try:
                frame = next(self._source)
            except StopIteration:
                self._input_over = True
                return None
            except BaseException as error:  # unreadable input: raised once the rest is written
                self._input_over = True
                self._input_error = error
                return None
            turn = self._read
            self._read += 1
            return turn, frame

    def _run_frame(self, instance: Instance, turn: int, frame: Frame) -> Instance | None:
        """Transform one frame and write it in its turn; the instance to go on with."""
        measured = self._settings.measured
        started = perf_counter() if measured else 0.0

        def write_in_turn(output: memoryview) -> int:
            if measured:
                self._add_guest_time(perf_counter() - started)
            return self._write_in_turn(turn, frame, output, None)

        try:
            if self._direct:
                instance.transform_buffer(frame.length, write_in_turn)
            else:
                instance.transform(frame.data, write_in_turn)
        except GuestError as error:
            if measured:
                self._add_guest_time(perf_counter() - started)
            # Its state may be corrupt: the next frame gets a fresh instance, started after
            # the failed frame is recorded (a Ctrl-C meanwhile must not make it run again) and
            # before its turn passes on: if none can start, the run stops at this frame, as a
            # serial run does, with nothing after it written.
            fresh: list[Instance] = []

            def replace() -> None:
                instance.close()
                fresh.append(self._new_instance())

            self._write_in_turn(turn, frame, None, error, replace)
            return fresh[0]
        return instance

    def _add_guest_time(self, seconds: float) -> None:
        with self._guest_lock:  # read while the run goes on (--jobs auto)
            self._tally.guest_seconds += seconds

    def _write_in_turn(
        self,
        turn: int,
        frame: Frame,
        output: memoryview | None,
        error: GuestError | None,
        then: Callable[[], None] | None = None,
    ) -> int:
        """Wait for `turn`, then write `output` (or what the failure policy puts in place of a
        failed frame), record the frame and call `then` before passing the turn on (if it
        raises, the run fails here); raises _Stop when the run is already failing."""
        with self._turn_lock:
            if self._failure is not None:
                raise _Stop
            wait = None
            if self._written != turn:
                wait = self._waiting[turn] = threading.Lock()
                wait.acquire()
            else:
                self._writing = True
        if wait is not None:
            wait.acquire()  # released by the turn before this one (or by a failure)
            with self._turn_lock:
                if self._failure is not None:
                    raise _Stop
                self._writing = True
        try:
            if error is None:
                assert output is not None
                written = self._write(output)
            else:
                written = _write_failed(frame, error, self._write, self._failures)
            self._tally.record(frame, written)
        except BaseException as failure:
            self._fail(failure)
            raise _Stop from None
        finally:
            with self._turn_lock:
                self._writing = False
                self._no_writer.notify_all()
        if then is not None:
            try:
                then()
            except BaseException as failure:
                self._fail(failure)
                raise _Stop from None
        with self._turn_lock:
            self._written = turn + 1
            after = self._waiting.pop(turn + 1, None)
        if after is not None:
            after.release()
        return written


class _Buffers:
    """Frame buffers, made only as frames need them and then recycled; at most `capacity`
    exist, which bounds memory. (Made up front, `-j 2 --queue-depth 100 --frame-size 16MiB`
    took 1.7 GB for a 3-byte input.) Taken by the reader thread only; returned by the writer."""

    def __init__(self, size: int, capacity: int) -> None:
        self._size = size
        self.capacity = capacity
        self._free: SimpleQueue[Buffer] = SimpleQueue()
        self._made = 0

    def get(self) -> Buffer:
        """A buffer, waiting for one to come back when all `capacity` are taken."""
        try:
            return self.get_nowait()
        except Empty:
            return self._free.get()

    def get_nowait(self) -> Buffer:
        """A buffer; raises Empty when all `capacity` are taken."""
        try:
            return self._free.get_nowait()
        except Empty:
            if self._made >= self.capacity:
                raise
            self._made += 1
            return bytearray(self._size)

    def put(self, buffer: Buffer) -> None:
        self._free.put(buffer)

    def in_use(self) -> int:
        return self._made - self._free.qsize()


class Pacer:
    """`--on-overload adaptive`: slows the reader smoothly as the queue fills, rather than
    letting it run until the queue is full and then stop dead (block).

    Below LOW of the queue's capacity the reader does not wait; between LOW and HIGH it waits,
    before each frame, a growing share of the time the writer takes per frame (measured, as a
    moving average), so that reading slows towards the pace of writing; at the top it waits for
    a free buffer, as block does. Frames are never dropped: the accounting is block's.
    """

    LOW, HIGH = 0.5, 0.9  # watermarks, as shares of the queue's capacity
    SMOOTHING = 0.1  # weight of the newest interval in the moving average

    def __init__(self) -> None:
        self._last = perf_counter()
        self.per_frame = 0.0  # seconds the writer takes per frame, averaged
        self.paused = 0.0  # seconds the reader was held back in all (read by the tests)

    def frame_written(self) -> None:
        now = perf_counter()
        interval, self._last = now - self._last, now
        self.per_frame += self.SMOOTHING * (interval - self.per_frame)

    def pause(self, used: int, capacity: int) -> None:
        fill = used / capacity
        if fill <= self.LOW:
            return
        share = min(1.0, (fill - self.LOW) / (self.HIGH - self.LOW))
        delay = share * self.per_frame
        if delay > 0:
            self.paused += delay
            sleep(delay)


class _Scratch:
    """The buffers the reader puts the frames it drops into (drop, sample:N), in turn, made as
    they are first needed.

    A dropped frame is recorded by the writer later, with its bytes (the checkpoint keeps the
    stream's last bytes to recognise a pipe: `journal.StreamTail`), while the reader goes on
    and may fill its buffer again with a later frame. Enough buffers in turn to hold a WINDOW
    of the stream make that rare; when it happened, the frame is recorded without its bytes,
    never with a later frame's. Taken by the reader thread; looked at by the writer.
    """

    def __init__(self, frame_size: int) -> None:
        self._size = frame_size
        self._count = max(2, -(-WINDOW // frame_size) + 1)
        self._buffers: list[bytearray] = []
        self._turns = 0
        self._turn_of: dict[int, int] = {}  # id of a buffer: the turn it was last taken at

    def take(self) -> bytearray:
        which = self._turns % self._count
        if which == len(self._buffers):
            self._buffers.append(bytearray(self._size))
        buffer = self._buffers[which]
        self._turn_of[id(buffer)] = self._turns  # before the reader writes into it
        self._turns += 1
        return buffer

    def turn_of(self, buffer: Buffer) -> int | None:
        """The turn `buffer` was last taken at (None: it is not scratch space)."""
        turn = self._turn_of.get(id(buffer))
        return turn if turn is not None and self._buffers[turn % self._count] is buffer else None

    def as_recorded(self, frame: Frame, turn: int) -> Frame:
        """`frame` over a copy of its bytes if its buffer was not taken again since `turn`,
        else over none (its bytes are gone)."""
        copy = bytearray(frame.data)
        if self._turn_of[id(frame.buffer)] != turn:  # checked after the copy: taken during it?
            copy = bytearray()
        return Frame(frame.index, frame.offset, copy, frame.length, frame.span)


class _Job:
    __slots__ = ("done", "dropped", "error", "frame", "output", "then")

    def __init__(self, frame: Frame, dropped: int | None = None) -> None:
        self.frame = frame
        self.dropped = dropped  # dropped: the scratch turn its frame was read in
        self.output: bytes = b""
        self.error: BaseException | None = None
        self.then: BaseException | None = None  # raised once the job is written: the run ends
        self.done = threading.Lock()
        self.done.acquire()  # released by the worker once output or error is set


class _Stop(Exception):
    """A job abandoned because the run is already failing."""


class _ParallelRun:
    def __init__(
        self,
        frames: Frames,
        new_instance: Callable[[], Instance],
        write: Write,
        settings: PoolSettings,
        tally: Tally,
        failures: FailureHandler,
    ) -> None:
        jobs = settings.jobs
        self._frames = frames
        self._overload = settings.overload
        self._overflows = 0
        # Under drop/sample, a frame with no buffer to go to is read here and let go.
        self._scratch = _Scratch(settings.frame_size)
        self._failures = failures
        self._new_instance = new_instance
        self._write = write
        self._tally = tally
        self._free = _Buffers(settings.frame_size, settings.queue_depth + jobs)
        self._pacer = Pacer()
        self._work: SimpleQueue[_Job | None] = SimpleQueue()
        self._in_order: SimpleQueue[_Job | None] = SimpleQueue()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._ready = threading.Semaphore(0)
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"wasmstream-worker-{n}", daemon=True)
            for n in range(jobs)
        ]
        self._writer = threading.Thread(
            target=self._write_loop, name="wasmstream-writer", daemon=True
        )
        tally.queue_fill = lambda: (self._free.in_use(), self._free.capacity)
        self._guest_seconds_lock = threading.Lock()

    def run(self) -> None:
        for worker in self._workers:
            worker.start()
        try:
            for _ in self._workers:  # all instances start before any input is read
                self._ready.acquire()
            if self._failure is None:
                self._writer.start()
                self._feed()
        except Interrupted as error:  # SIGTERM (Ctrl-C is a KeyboardInterrupt): stop now
            self._fail(error)
            raise
        except WasmstreamError as error:  # unreadable input: first write what came before it
            if self._writer.is_alive():
                self._drain()
            self._fail(error)
            raise
        except BaseException as error:  # Ctrl-C: stop everything now
            self._fail(error)
            raise
        finally:
            self._shut_down()
        if self._failure is not None:
            raise self._failure

    def _feed(self) -> None:
        policy = self._overload.policy
        next_buffer = {"block": self._free.get, "adaptive": self._paced_buffer}.get(
            policy, self._buffer_or_scratch
        )
        for frame in self._frames(next_buffer):
            if self._failure is not None:
                return
            dropped = self._scratch.turn_of(frame.buffer)
            if dropped is not None:
                self._in_order.put(_Job(frame, dropped))
                continue
            job = _Job(frame)
            self._work.put(job)
            self._in_order.put(job)

    def _paced_buffer(self) -> Buffer:
        """--on-overload adaptive: a free buffer, after a pause that grows as the queue fills."""
        self._pacer.pause(self._free.in_use(), self._free.capacity)
        return self._free.get()

    def _buffer_or_scratch(self) -> Buffer:
        """A free buffer; when there is none, the scratch buffer (the frame is dropped) or,
        one time in N under sample:N, a wait for a free one."""
        try:
            return self._free.get_nowait()
        except Empty:
            self._overflows += 1
            overload = self._overload
            if overload.policy == "sample" and self._overflows % overload.keep_one_in == 0:
                return self._free.get()
            return self._scratch.take()

    def _drain(self) -> None:
        """Let the frames already read be transformed and written, in order."""
        self._in_order.put(None)
        self._writer.join()

    def _shut_down(self) -> None:
        for _ in self._workers:
            self._work.put(None)
        self._in_order.put(None)  # a second end marker after _drain is never read: harmless
        if self._writer.is_alive():
            self._writer.join()
        for worker in self._workers:
            # A guest stuck in a loop cannot be joined; the threads are daemons.
            worker.join(timeout=0.2 if self._failure is not None else None)

    def _fail(self, error: BaseException) -> None:
        with self._failure_lock:
            if self._failure is None:
                self._failure = error

    def _work_loop(self) -> None:
        try:
            instance: Instance | None = self._new_instance()
        except BaseException as error:
            self._fail(error)
            instance = None
        self._ready.release()
        try:
            while (job := self._work.get()) is not None:
                started = perf_counter()
                instance = self._run_job(job, instance)
                with self._guest_seconds_lock:  # read while the run goes on (--jobs auto)
                    self._tally.guest_seconds += perf_counter() - started
        finally:
            if instance is not None:
                instance.close()

    def _run_job(self, job: _Job, instance: Instance | None) -> Instance | None:
        """Run one job; returns the instance to use next (a fresh one after a guest failure)."""
        frame = job.frame
        try:
            if self._failure is not None or instance is None:
                raise _Stop
            job.output = instance.transform(frame.data, bytes)
        except GuestError as error:
            job.error = error.at(frame.index, frame.offset)
            # Its state may be corrupt: the next frame gets a fresh instance.
            assert instance is not None
            instance.close()
            instance = self._replacement(job)
        except BaseException as error:
            job.error = error
        finally:
            job.done.release()
        return instance

    def _replacement(self, job: _Job) -> Instance | None:
        """A fresh instance after `job`'s guest failed. If none can start, the run fails at
        that job, in order: the frames before it are written first, as a serial run writes
        them (failing the run at once here raced the writer, which then dropped them)."""
        try:
            return self._new_instance()
        except WasmstreamError as error:
            job.then = error
        except BaseException as error:
            self._fail(error)
        return None

    def _write_loop(self) -> None:
        while (job := self._in_order.get()) is not None:
            if job.dropped is not None:
                if self._failure is None:
                    self._tally.record_dropped(self._scratch.as_recorded(job.frame, job.dropped))
                continue
            job.done.acquire()
            try:
                if self._failure is None:
                    self._write_job(job)
            except BaseException as error:
                self._fail(error)
            finally:
                self._free.put(job.frame.buffer)
                self._pacer.frame_written()

    def _write_job(self, job: _Job) -> None:
        if isinstance(job.error, _Stop):
            return
        if isinstance(job.error, GuestError):
            written = _write_failed(job.frame, job.error, self._write, self._failures)
        elif job.error is not None:
            raise job.error
        else:
            written = self._write(job.output)
        self._tally.record(job.frame, written)
        if job.then is not None:
            raise job.then
