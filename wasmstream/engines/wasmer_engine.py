"""The wasmer engine (1.1, Cranelift), behind the same interface as wasmtime.

wasmer's Python objects panic when used from a thread other than their creator's, and guest
calls hold the GIL, so threads give no parallel speed-up. Every instance therefore lives in a
worker process of its own (`wasmer_worker`), driven over two pipes with frames and outputs in
shared memory; the thread pool above is unchanged (each of its threads owns one worker), and
the workers run on separate cores.

Limits, since wasmer's Python API has none: `--timeout` is a watchdog — a frame that overruns
has its worker process killed, and a fresh worker takes its place; `--max-memory` is checked
after every guest call (a guest may exceed it inside a call; it cannot continue past it);
`--fuel`, read-only `--dir` grants and WASI command mode are refused with an error naming the
option. wasmer wheels exist only for Python <= 3.10.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from wasmstream.engines.base import CopyingInstance, Sandbox, check_header
from wasmstream.engines.wasmer_worker import (
    CLOCK,
    GUEST_ERROR,
    MEMORY_LIMIT,
    MODULE,
    OK,
    REPLY,
    REQUEST,
    STARTUP,
    STATE_REFUSED,
    TIMEOUT,
    TRAP,
    read_exactly,
    write_all,
)
from wasmstream.errors import (
    GuestError,
    GuestMemoryLimit,
    GuestTimeout,
    GuestTrap,
    ModuleError,
    StartupError,
    StateRefused,
    UsageError,
)
from wasmstream.guest.abi import ExportDesc, FuncSig, GuestAbi, ImportDesc, ModuleInfo
from wasmstream.run import interrupts
from wasmstream.units import format_duration, format_size

T = TypeVar("T")
STARTUP_GRACE = 30.0  # seconds for a worker to start Python, compile and initialise
# Frames in the ring between wasmstream and a worker: reading one, transforming one, writing one.
PIPELINE_DEPTH = 3


def _import_wasmer() -> Any:
    try:
        import wasmer
        import wasmer_compiler_cranelift
    except ImportError as error:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise UsageError(
            f"the wasmer engine is not available on Python {version} ({error}): wasmer 1.1 has "
            "wheels only for Python <= 3.10; install wasmstream[wasmer] under Python 3.10, or "
            "use --engine wasmtime"
        ) from None
    return wasmer, wasmer_compiler_cranelift


class WasmerEngine:
    name = "wasmer"

    def __init__(self, sandbox: Sandbox) -> None:
        self._wasmer, compiler = _import_wasmer()
        # A worker forked now, before anything here compiles (wasmer's compiler starts
        # threads, after which a fork is unsafe), is ready by the time the first instance is
        # wanted: a started worker costs a Python start-up (~35 ms) on every run.
        self._spare: _WorkerProcess | None = _WorkerProcess.forked()
        self._spare_lock = threading.Lock()
        self._store = self._wasmer.Store(self._wasmer.engine.Universal(compiler.Compiler))
        self._sandbox = sandbox
        # Ctrl-C and SIGTERM: a guest looping in a worker never answers, and the threads
        # waiting for it would keep the run from stopping. Kill the workers; their frames fail.
        self._remove_hook = interrupts.on_interrupt(_kill_workers)

    def version(self) -> str:
        from importlib.metadata import version

        return version("wasmer")

    def compile(self, wasm: bytes, source: str) -> WasmerModule:
        check_header(wasm, source)
        try:  # compiled here to check it and read its exports; each worker compiles its own
            module = self._wasmer.Module(self._store, wasm)
        except Exception as error:
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise ModuleError(f"{source}: invalid WebAssembly: {first}") from None
        info = _module_info(self._wasmer, module)
        return WasmerModule(wasm, info, self._sandbox, source, self._worker_process)

    def _worker_process(self) -> _WorkerProcess:
        """The spare forked at the start, the first time; a started one after that."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return spare if spare is not None else _WorkerProcess.started()

    def close(self) -> None:
        self._remove_hook()
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()  # it reads end of file where its spec would be, and exits


class WasmerModule:
    def __init__(
        self,
        wasm: bytes,
        info: ModuleInfo,
        sandbox: Sandbox,
        source: str,
        worker_process: Callable[[], _WorkerProcess],
    ) -> None:
        self._wasm = wasm
        self.info = info
        self._sandbox = sandbox
        self._source = source
        self._worker_process = worker_process

    def instantiate(self, abi: GuestAbi, buffer_size: int, config: bytes) -> WasmerWorker:
        assert not abi.command  # refused before any run starts: engines.refuse_unsupported
        return WasmerWorker(
            self._worker_process(),
            self._wasm,
            abi,
            buffer_size,
            config,
            self._sandbox,
            self._source,
        )


class _Forked:
    """A worker forked from this process, with the part of `subprocess.Popen` used here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"wasmer worker {self.pid}", timeout or 0)
            else:
                time.sleep(0.005)
        return self.returncode


class _WorkerProcess:
    """A worker process waiting for its spec, and this side's ends of its pipes and of its
    shared memory (sized once the spec is known)."""

    def __init__(self) -> None:
        requests_read, self.requests = os.pipe()
        self.replies, replies_write = os.pipe()
        input_fd, output_fd, clock_fd = (
            os.memfd_create(f"wasmstream-{name}") for name in ("input", "output", "clock")
        )
        self.memfds = [input_fd, output_fd, clock_fd]
        self.theirs = (requests_read, replies_write, input_fd, output_fd, clock_fd)
        self.process: subprocess.Popen[bytes] | _Forked | None = None

    @classmethod
    def forked(cls) -> _WorkerProcess | None:
        """A worker forked from here; None where that is unsafe (threads not of Python's
        own, such as a compiler's, may hold locks a child would wait on forever)."""
        if len(os.listdir("/proc/self/task")) > threading.active_count():
            return None
        worker = cls()
        pid = os.fork()
        if pid == 0:
            from wasmstream.engines.wasmer_worker import forked

            forked(worker.theirs)  # never returns
        worker._started(_Forked(pid))
        return worker

    @classmethod
    def started(cls) -> _WorkerProcess:
        """A worker started as a new Python process."""
        worker = cls()
        process = subprocess.Popen(
            [sys.executable, "-m", "wasmstream.engines.wasmer_worker", *map(str, worker.theirs)],
            pass_fds=worker.theirs,
            stdin=subprocess.DEVNULL,
            stdout=2,  # what the guest prints must never reach the data
        )
        worker._started(process)
        return worker

    def _started(self, process: subprocess.Popen[bytes] | _Forked) -> None:
        self.process = process
        _WORKERS.add(process)
        for fd in self.theirs[:2]:  # the worker's ends of the pipes; memfds are sized later
            os.close(fd)

    def map(self, sizes: tuple[int, int, int]) -> list[mmap.mmap]:
        """The shared regions, sized: the worker maps them once it reads the spec."""
        regions = []
        for fd, size in zip(self.memfds, sizes, strict=True):
            os.ftruncate(fd, size)  # sparse until used
            regions.append(mmap.mmap(fd, size))
            os.close(fd)
        self.memfds = []
        return regions

    def close(self) -> None:
        """Stop a worker that was never given its spec."""
        for fd in (self.requests, self.replies, *self.memfds):
            with contextlib.suppress(OSError):
                os.close(fd)
        assert self.process is not None
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WasmerWorker(CopyingInstance):
    """An instance in a worker process; frames and outputs cross through shared memory.

    A `Pipelined` instance: frames are submitted to a ring of `depth` slots and collected in
    order, so that the worker transforms one frame while the caller reads the next and writes
    the last (on two cores, the pipe's round trip is hidden). `transform_buffer` is a submit
    and a collect, for callers that take one frame at a time.
    """

    depth = PIPELINE_DEPTH

    def __init__(
        self,
        worker: _WorkerProcess,
        wasm: bytes,
        abi: GuestAbi,
        buffer_size: int,
        config: bytes,
        sandbox: Sandbox,
        source: str,
    ) -> None:
        self._timeout = sandbox.timeout
        self._message = b""
        depth = self.depth
        max_output = sandbox.output_limit(buffer_size)
        assert worker.process is not None
        self._process = worker.process
        self._requests, self._replies = worker.requests, worker.replies
        self._input, self._output, self._clock = worker.map(
            (depth * buffer_size, depth * max_output, depth * CLOCK.size)
        )
        inputs, outputs = memoryview(self._input), memoryview(self._output)
        self._slots = [inputs[n * buffer_size : (n + 1) * buffer_size] for n in range(depth)]
        self._outputs = [outputs[n * max_output : (n + 1) * max_output] for n in range(depth)]
        self._next = 0  # the slot the next frame goes to
        self._in_flight: deque[tuple[int, int]] = deque()  # (slot, when submitted), oldest first
        self._last_reply = 0  # when the latest reply was read (time.monotonic_ns)
        spec = {
            "wasm": wasm.hex(),
            "name": os.path.basename(source),
            # GuestAbi again there
            "abi": {
                **dataclasses.asdict(abi),
                "result": abi.result.value,
                "state": abi.state.value,
            },
            "buffer_size": buffer_size,
            "depth": depth,
            "config": config.hex(),
            "max_memory": sandbox.max_memory,
            "max_memory_text": format_size(sandbox.max_memory or 0),
            "max_output": max_output,
            "max_output_text": format_size(max_output),
            "timeout": self._timeout,
            "timeout_text": format_duration(self._timeout or 0),
            "env": list(sandbox.env),
            "args": list(sandbox.args),
            "dirs": [(grant.host, grant.guest) for grant in sandbox.dirs],
        }
        message = json.dumps(spec).encode()
        try:
            os.write(self._requests, struct.pack("<I", len(message)))
            write_all(self._requests, message)
            self._await(STARTUP_GRACE + (self._timeout or 0), starting=True)
        except BaseException:
            self.close()
            raise

    def input_buffer(self) -> memoryview:
        """The slot the next frame goes to (the same view each time round the ring)."""
        return self._slots[self._next]

    def submit(self, length: int) -> None:
        """Start the transform on the frame in `input_buffer()`; returns at once."""
        assert len(self._in_flight) < self.depth, "collect before submitting more"
        slot = self._next
        CLOCK.pack_into(self._clock, slot * CLOCK.size, 0)  # not started: the worker sets it
        os.write(self._requests, REQUEST.pack(b"T", slot, length))
        self._in_flight.append((slot, time.monotonic_ns()))
        self._next = (slot + 1) % self.depth

    def collect(self, consume: Callable[[memoryview], T]) -> T:
        """`consume(output)` for the oldest frame submitted, once it is done. Raises GuestError
        (or a subclass) when that frame failed; the frames after it are then lost with this
        instance, which the caller must close."""
        slot, submitted = self._in_flight.popleft()
        length = self._await_frame(slot, submitted)
        return consume(self._outputs[slot][:length])

    def transform_buffer(self, length: int, consume: Callable[[memoryview], T]) -> T:
        self.submit(length)
        return self.collect(consume)

    def snapshot(self) -> bytes | None:
        self._request_alone(b"S")
        self._await(self._timeout)
        return self._message

    def restore(self, state: bytes) -> None:
        self._request_alone(b"R", len(state))
        write_all(self._requests, state)
        self._await(self._timeout)

    def finish(self) -> bytes:
        self._request_alone(b"F")
        return bytes(self._outputs[0][: self._await(self._timeout)])

    def _request_alone(self, command: bytes, length: int = 0) -> None:
        assert not self._in_flight, "state requests are made between frames"
        os.write(self._requests, REQUEST.pack(command, 0, length))

    def _await_frame(self, slot: int, submitted: int) -> int:
        """The reply for the frame in `slot`; the watchdog times the frame from when the worker
        started on it (or, until it says so, from when it could have started at the earliest)."""
        if self._timeout is None:
            return self._reply(starting=False)
        limit = int(self._timeout * 1e9)
        earliest = max(submitted, self._last_reply)  # it ran after the frame before it
        while True:
            (started,) = CLOCK.unpack_from(self._clock, slot * CLOCK.size)
            deadline = (started or earliest) + limit
            wait = (deadline - time.monotonic_ns()) / 1e9
            if wait <= 0:
                if select.select([self._replies], [], [], 0)[0]:
                    # It ended while this side was busy (writing to a slow pipe, say); the
                    # worker itself says whether that was past its deadline.
                    return self._reply(starting=False)
                (started,) = CLOCK.unpack_from(self._clock, slot * CLOCK.size)
                if (started or earliest) + limit <= time.monotonic_ns():
                    self._process.kill()  # the watchdog: the only way to stop a wasmer guest
                    raise GuestTimeout(f"timed out after {format_duration(self._timeout)}")
                continue
            if select.select([self._replies], [], [], wait)[0]:
                return self._reply(starting=False)

    def _await(self, timeout: float | None, starting: bool = False) -> int:
        ready, _, _ = select.select([self._replies], [], [], timeout)
        if not ready:
            self._process.kill()  # the watchdog: the only way to stop a wasmer guest
            assert timeout is not None
            if starting:
                raise StartupError(f"did not start within {format_duration(timeout)}")
            raise GuestTimeout(f"timed out after {format_duration(timeout)}")
        return self._reply(starting)

    def _reply(self, starting: bool) -> int:
        """Read one reply: the value of an OK one; a failure raises the error it names."""
        try:
            status, value, size = REPLY.unpack(read_exactly(self._replies, REPLY.size))
            self._message = read_exactly(self._replies, size)
        except EOFError:
            code = self._process.wait()
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            raise GuestTrap(f"the wasmer worker process died ({how})") from None
        self._last_reply = time.monotonic_ns()
        if status == OK:
            return int(value)
        raise _error(status, self._message.decode(errors="replace"), starting)

    def close(self) -> None:
        if self._in_flight:  # frames nobody will collect (a failure, or an interruption)
            self._process.kill()
        for fd in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            self._process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._slots.clear()
        self._outputs.clear()
        for region in (self._input, self._output, self._clock):
            with contextlib.suppress(BufferError):  # a frame still viewing it: freed with it
                region.close()


_WORKERS: weakref.WeakSet[subprocess.Popen[bytes] | _Forked] = weakref.WeakSet()


def _kill_workers() -> None:
    for process in list(_WORKERS):
        with contextlib.suppress(OSError):
            process.kill()


def _error(status: int, message: str, starting: bool) -> Exception:
    if status == MODULE:
        return ModuleError(message)
    if status == STARTUP or starting:
        return StartupError(message)
    if status == STATE_REFUSED:
        return StateRefused(message)
    if status == MEMORY_LIMIT:
        return GuestMemoryLimit(message)
    if status == TRAP:
        return GuestTrap(message)
    if status == TIMEOUT:
        return GuestTimeout(message)
    assert status == GUEST_ERROR
    return GuestError(message)


def _module_info(wasmer: Any, module: Any) -> ModuleInfo:
    names = {
        wasmer.Type.I32: "i32",
        wasmer.Type.I64: "i64",
        wasmer.Type.F32: "f32",
        wasmer.Type.F64: "f64",
        wasmer.Type.V128: "v128",
        wasmer.Type.EXTERN_REF: "externref",
        wasmer.Type.FUNC_REF: "funcref",
    }

    def describe(name: str, kind: Any) -> ExportDesc:
        if isinstance(kind, wasmer.FunctionType):
            sig = FuncSig(
                tuple(names[t] for t in kind.params), tuple(names[t] for t in kind.results)
            )
            return ExportDesc(name, "func", sig)
        if isinstance(kind, wasmer.MemoryType):
            return ExportDesc(name, "memory", pages=(kind.minimum, kind.maximum))
        return ExportDesc(name, _kind(wasmer, kind))

    return ModuleInfo(
        exports=tuple(describe(e.name, e.type) for e in module.exports),
        imports=tuple(ImportDesc(i.module, i.name, _kind(wasmer, i.type)) for i in module.imports),
    )


def _kind(wasmer: Any, kind: Any) -> str:
    for cls, name in (
        (wasmer.FunctionType, "func"),
        (wasmer.MemoryType, "memory"),
        (wasmer.TableType, "table"),
        (wasmer.GlobalType, "global"),
    ):
        if isinstance(kind, cls):
            return name
    return type(kind).__name__
