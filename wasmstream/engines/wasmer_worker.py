"""The wasmer engine's worker process: one instance of the module, driven over two pipes.

wasmer's Python objects may only be used by the thread that created them and hold the GIL
while guest code runs, so threads cannot run wasmer guests in parallel. Each instance lives
instead in a process of its own (this module, started by `wasmer_engine`). Frames and outputs
cross through shared memory (memfd), in a ring of `depth` slots, so that the parent can read
the next frames while this process transforms the earlier ones; only small headers cross the
pipes, and the parent waits for a reply only when the ring is full or its input is idle:

    parent -> worker   b"T" + u32 slot + u32 length   a frame is in that input slot
                       b"S" + 0 + 0          snapshot: the state comes back as the message
                       b"R" + 0 + u32 length restore: that many bytes of state follow
                       b"F" + 0 + 0          finish: its output goes to output slot 0
    worker -> parent   status u8, value u64, message u32 + message bytes, one reply per
                       request, in order; status 0 after "T": value bytes of output are in
                       the output slot of the same number

Before it calls the guest on a frame, the worker writes the time (CLOCK_MONOTONIC, ns) into the
clock region at the frame's slot: the parent's watchdog times each frame from its own start,
not from when it was queued.

Start-up: the parent sends one length-prefixed JSON message (module bytes in hex, the ABI and
limits) and the worker answers with a status header like any frame's. The worker's stdout is
wasmstream's stderr, so whatever the guest prints through WASI never reaches the data stream.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import struct
import sys
import time
from typing import Any, NoReturn

from wasmstream.errors import GuestError, GuestMemoryLimit, GuestTrap, StartupError, StateRefused
from wasmstream.guest.abi import GuestAbi, ResultKind, StateKind
from wasmstream.guest.protocol import Call, Guest

REPLY = struct.Struct("<BQI")
REQUEST = struct.Struct("<cII")
CLOCK = struct.Struct("<Q")  # one per slot: when the guest started on that slot's frame
OK, TRAP, GUEST_ERROR, MEMORY_LIMIT, STARTUP, MODULE, STATE_REFUSED, TIMEOUT = range(8)

TRAP_WORDS = {
    "unreachable": "unreachable instruction executed",
    "call stack exhausted": "stack overflow",
    "out of bounds memory access": "out-of-bounds memory access",
    "integer divide by zero": "integer divide by zero",
    "integer overflow": "integer overflow",
}


class Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def trap_message(error: BaseException) -> str:
    first = str(error).split("\n", 1)[0].removeprefix("RuntimeError: ").strip()
    return TRAP_WORDS.get(first, first)


class WasmerRuntime:
    """The instance, as the guest protocol's `Runtime` (guest.py drives it, as every engine's).

    Calls raise GuestError subclasses, which `main` turns into reply statuses for the parent.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import wasmer
        import wasmer_compiler_cranelift

        self.spec = spec
        store = wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))
        try:
            module = wasmer.Module(store, bytes.fromhex(spec["wasm"]))
            self.instance = wasmer.Instance(module, self._imports(wasmer, store, module))
        except RuntimeError as error:
            raise Failure(
                STARTUP, f"start function: guest trapped: {trap_message(error)}"
            ) from None
        except Exception as error:
            raise Failure(MODULE, f"cannot instantiate: {str(error).splitlines()[0]}") from None
        self._memory = self.instance.exports.memory

    def _imports(self, wasmer: Any, store: Any, module: Any) -> Any:
        if not self.spec["abi"]["wasi"]:
            return wasmer.ImportObject()
        builder = wasmer.wasi.StateBuilder(self.spec["name"])
        for arg in self.spec.get("args", []):
            builder = builder.argument(arg)
        for key, value in self.spec["env"]:
            builder = builder.environment(key, value)
        for host, guest in self.spec["dirs"]:
            builder = builder.map_directory(guest, host)
        version = wasmer.wasi.get_version(module, strict=False)
        return builder.finalize().generate_import_object(store, version)

    def export(self, name: str) -> Call:
        func = getattr(self.instance.exports, name)
        return lambda *args: self._call(func, *args)

    def memory(self) -> memoryview:
        return memoryview(self._memory.buffer)

    def _call(self, func: Any, *args: int) -> Any:
        try:
            result = func(*args)
        except RuntimeError as error:
            if self._over_memory_limit():
                raise GuestMemoryLimit(self._limit_message(trap_message(error))) from None
            raise GuestTrap(f"guest trapped: {trap_message(error)}") from None
        if self._over_memory_limit():
            raise GuestMemoryLimit(self._limit_message("after the call"))
        return result

    def _over_memory_limit(self) -> bool:
        limit = self.spec["max_memory"]
        return limit is not None and self._memory.data_size > limit

    def _limit_message(self, what: str) -> str:
        return f"memory limit {self.spec['max_memory_text']} exceeded ({what})"


def start(spec: dict[str, Any]) -> Guest:
    """The instance, started by the guest protocol. Raises Failure."""
    abi = GuestAbi(
        **{
            **spec["abi"],
            "result": ResultKind(spec["abi"]["result"]),
            "state": StateKind(spec["abi"]["state"]),
            "state_globals": tuple(map(tuple, spec["abi"]["state_globals"])),
        }
    )
    try:
        return Guest(
            WasmerRuntime(spec),
            abi,
            spec["buffer_size"],
            bytes.fromhex(spec["config"]),
            spec["max_output"],
        )
    except GuestError as error:
        raise _failure(error) from None


class Regions:
    """The shared memory: `depth` input slots, `depth` output slots, a start time per slot."""

    def __init__(self, spec: dict[str, Any], input_fd: int, output_fd: int, clock_fd: int):
        depth = spec["depth"]
        self.input_size, self.output_size = spec["buffer_size"], spec["max_output"]
        self.input = memoryview(mmap.mmap(input_fd, depth * self.input_size))
        self.output = memoryview(mmap.mmap(output_fd, depth * self.output_size))
        self.clock = mmap.mmap(clock_fd, depth * CLOCK.size)
        timeout = spec["timeout"]
        self.timeout_ns = None if timeout is None else int(timeout * 1e9)
        self.timeout_text = spec["timeout_text"]

    def run(self, guest: Guest, slot: int, length: int) -> int:
        """One frame: from its input slot to its output slot; the output's length."""
        start = slot * self.input_size
        guest.input_buffer()[:length] = self.input[start : start + length]
        started = time.monotonic_ns()
        CLOCK.pack_into(self.clock, slot * CLOCK.size, started)
        output_start = slot * self.output_size

        def stage(output: memoryview) -> int:
            self.output[output_start : output_start + len(output)] = output
            return len(output)

        try:
            # The parent reads the output slot only after an OK reply: no copy is needed
            # to keep a failed frame's output from leaving.
            written = guest.transform(length, stage, consume_is_final=False)
        except GuestError as error:
            raise _failure(error) from None
        # The parent's watchdog stops a guest still running at its deadline; a frame that
        # ended past it (while the parent was busy, say writing to a slow pipe) has timed out
        # all the same, as under wasmtime's deadline.
        if self.timeout_ns is not None and time.monotonic_ns() - started > self.timeout_ns:
            raise Failure(TIMEOUT, f"timed out after {self.timeout_text}")
        return written


def _failure(error: GuestError) -> Failure:
    """A guest failure, as the status the parent turns back into the same error class."""
    if isinstance(error, StartupError):
        return Failure(STARTUP, error.what)
    if isinstance(error, StateRefused):
        return Failure(STATE_REFUSED, error.what)
    if isinstance(error, GuestMemoryLimit):
        return Failure(MEMORY_LIMIT, error.what)
    if isinstance(error, GuestTrap):
        return Failure(TRAP, error.what)
    return Failure(GUEST_ERROR, error.what)


def read_exactly(fd: int, size: int) -> bytes:
    if not size:
        return b""
    first = os.read(fd, min(size, 1 << 20))  # a header: nearly always whole in one read
    if len(first) == size:
        return first
    if not first:
        raise EOFError
    data = bytearray(first)
    while len(data) < size:
        chunk = os.read(fd, min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def reply(fd: int, status: int, value: int = 0, message: str = "") -> None:
    encoded = message.encode()
    os.write(fd, REPLY.pack(status, value, len(encoded)) + encoded)


def _die_with_parent() -> None:
    """A worker must not outlive wasmstream: if the parent ends without stopping it (killed,
    or interrupted while this worker's guest spins), the kernel kills the worker too."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such safety net
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _name_process(name: bytes) -> None:
    import ctypes

    PR_SET_NAME = 15
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name))


def main(argv: list[str]) -> int:
    """A worker started as `python -m wasmstream.engines.wasmer_worker FD...`."""
    # Ctrl-C at a terminal reaches the whole process group: the parent decides what to do
    # (save a checkpoint, then stop its workers), so the worker does not die on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    requests, replies, input_fd, output_fd, clock_fd = (int(arg) for arg in argv)
    return serve(requests, replies, input_fd, output_fd, clock_fd)


def forked(fds: tuple[int, int, int, int, int]) -> NoReturn:
    """A worker forked from wasmstream itself, before it loaded wasmer: it has every module
    it needs already, so it is ready in milliseconds rather than a Python start-up's tens.
    It keeps only its own descriptors (no output, no lock may stay open through it) and
    prints to standard error, like a started worker."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent()
        _name_process(b"wasmer_worker")  # what ps and top show: its command line is ours
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(2, 1)  # what the guest prints must never reach the data
        kept = sorted({0, 1, 2, *fds})
        for low, high in zip(kept, [*kept[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        import wasmer  # noqa: F401  (loaded while the parent compiles, not after)

        code = serve(*fds)
    finally:
        os._exit(code)


def serve(requests: int, replies: int, input_fd: int, output_fd: int, clock_fd: int) -> int:
    """Read the spec, start the instance, then answer requests until the parent hangs up."""
    try:
        (length,) = struct.unpack("<I", read_exactly(requests, 4))
        spec = json.loads(read_exactly(requests, length))
    except EOFError:  # a spare worker nobody needed
        return 0
    regions = Regions(spec, input_fd, output_fd, clock_fd)
    try:
        guest = start(spec)
    except Failure as failure:
        reply(replies, failure.status, message=failure.message)
        return 1
    reply(replies, OK)
    while True:
        try:
            command, slot, length = REQUEST.unpack(read_exactly(requests, REQUEST.size))
            if command == b"T":
                reply(replies, OK, regions.run(guest, slot, length))
            else:
                handle_state(guest, command, length, requests, replies, regions.output)
        except EOFError:
            return 0
        except Failure as failure:
            reply(replies, failure.status, message=failure.message)


def handle_state(
    guest: Guest, command: bytes, length: int, requests: int, replies: int, output: memoryview
) -> None:
    """A snapshot, restore or finish request: answered here, or raises Failure."""
    try:
        if command == b"S":
            state = guest.snapshot() or b""
            os.write(replies, REPLY.pack(OK, len(state), len(state)))
            write_all(replies, state)
        elif command == b"R":
            guest.restore(read_exactly(requests, length))
            reply(replies, OK)
        else:
            finished = guest.finish()
            output[: len(finished)] = finished
            reply(replies, OK, len(finished))
    except GuestError as error:
        raise _failure(error) from None


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to the pipe `fd` (a pipe takes at most its capacity per write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
