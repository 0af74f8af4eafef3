"""Running frames through instances of the module, and writing outputs in input order.

Two shapes, one contract (outputs leave strictly in input order; at most `queue_depth + jobs`
frames exist at once; the first failure stops the run with everything before it written):

- `jobs == 1`: one instance on the calling thread. Read, transform, write the output straight
  from guest memory. No threads, queues or copies beyond the one into guest memory.
- `jobs > 1`: the calling thread reads frames into a fixed set of recycled buffers; `jobs`
  worker threads each own one instance for their whole life (wasmtime Stores are not
  thread-safe) and copy each output out of guest memory; one writer thread waits for frames in
  input order and writes them. wasmtime releases the GIL during guest calls, so the workers run
  on separate cores. When the output is slow, buffers run out, the reader blocks, and so does
  whoever feeds our standard input: backpressure with flat memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from queue import SimpleQueue

from .engines import Instance
from .errors import GuestError
from .framing import Buffer, Frame
from .policy import FailureHandler

Frames = Callable[[Callable[[], Buffer]], Iterator[Frame]]
"""Cuts the input into frames, filling buffers taken from the callable it is given."""

Write = Callable[[memoryview | bytes], int]


@dataclass
class Tally:
    """What has been written so far. Updated only after a frame's output is written."""

    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    on_frame_written: list[Callable[[Frame, int], None]] = field(default_factory=list)

    def record(self, frame: Frame, written: int) -> None:
        self.frames += 1
        self.bytes_in += frame.length
        self.bytes_out += written
        for callback in self.on_frame_written:
            callback(frame, written)


def run_frames(
    frames: Frames,
    new_instance: Callable[[], Instance],
    write: Write,
    *,
    frame_size: int,
    jobs: int,
    queue_depth: int,
    tally: Tally,
    failures: FailureHandler,
) -> None:
    """Transform every frame and write the outputs in order. Raises the first failure.

    A frame that fails goes to `failures`, which raises (policy fail) or says what to write in
    its place; the instance it failed in is replaced by a fresh one, its state being suspect.
    """
    if jobs == 1:
        _run_serial(frames, new_instance, write, frame_size, tally, failures)
    else:
        run = _ParallelRun(
            frames, new_instance, write, frame_size, jobs, queue_depth, tally, failures
        )
        run.run()


def _run_serial(
    frames: Frames,
    new_instance: Callable[[], Instance],
    write: Write,
    frame_size: int,
    tally: Tally,
    failures: FailureHandler,
) -> None:
    instance = new_instance()
    # Frames are read straight into guest memory (one copy fewer) unless a failed frame's input
    # must survive the guest, which may have changed it in place.
    host_buffer = bytearray(frame_size) if failures.needs_input else None

    def next_buffer() -> Buffer:
        return host_buffer if host_buffer is not None else instance.input_buffer()

    try:
        for frame in frames(next_buffer):
            try:
                if host_buffer is None:
                    written = instance.transform_buffer(frame.length, write)
                else:  # the output is written only once the whole frame has succeeded
                    written = write(instance.transform(frame.data, bytes))
            except GuestError as error:
                written = write(failures.handle(frame, error.at(frame.index, frame.offset)))
                instance.close()
                instance = new_instance()
            tally.record(frame, written)
    finally:
        instance.close()


class _Job:
    __slots__ = ("done", "error", "frame", "output")

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.output: bytes = b""
        self.error: BaseException | None = None
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
        frame_size: int,
        jobs: int,
        queue_depth: int,
        tally: Tally,
        failures: FailureHandler,
    ) -> None:
        self._frames = frames
        self._failures = failures
        self._new_instance = new_instance
        self._write = write
        self._tally = tally
        self._jobs = jobs
        self._free: SimpleQueue[Buffer] = SimpleQueue()
        for _ in range(queue_depth + jobs):
            self._free.put(bytearray(frame_size))
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

    def run(self) -> None:
        for worker in self._workers:
            worker.start()
        try:
            for _ in self._workers:  # all instances start before any input is read
                self._ready.acquire()
            if self._failure is None:
                self._writer.start()
                self._feed()
        except BaseException as error:  # Ctrl-C or an input error: stop everything
            self._fail(error)
            raise
        finally:
            self._shut_down()
        if self._failure is not None:
            raise self._failure

    def _feed(self) -> None:
        for frame in self._frames(self._free.get):
            if self._failure is not None:
                return
            job = _Job(frame)
            self._work.put(job)
            self._in_order.put(job)

    def _shut_down(self) -> None:
        for _ in self._workers:
            self._work.put(None)
        self._in_order.put(None)
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
                instance = self._run_job(job, instance)
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
            instance = self._replacement()
        except BaseException as error:
            job.error = error
        finally:
            job.done.release()
        return instance

    def _replacement(self) -> Instance | None:
        try:
            return self._new_instance()
        except BaseException as error:
            self._fail(error)
            return None

    def _write_loop(self) -> None:
        while (job := self._in_order.get()) is not None:
            job.done.acquire()
            try:
                if self._failure is None:
                    self._write_job(job)
            except BaseException as error:
                self._fail(error)
            finally:
                self._free.put(job.frame.buffer)

    def _write_job(self, job: _Job) -> None:
        if isinstance(job.error, _Stop):
            return
        if isinstance(job.error, GuestError):
            written = self._write(self._failures.handle(job.frame, job.error))
        elif job.error is not None:
            raise job.error
        else:
            written = self._write(job.output)
        self._tally.record(job.frame, written)
