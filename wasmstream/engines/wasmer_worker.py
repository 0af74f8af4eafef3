"""The wasmer engine's worker process: one instance of the module, driven over two pipes.

wasmer's Python objects may only be used by the thread that created them and hold the GIL
while guest code runs, so threads cannot run wasmer guests in parallel. Each instance lives
instead in a process of its own (this module, started by `wasmer_engine`). Frames and outputs
cross through shared memory (memfd); only small headers cross the pipes:

    parent -> worker   b"T" + u32 length      the frame is in the input region
    worker -> parent   status u8, value u64, message u32 + message bytes
                       status 0: value bytes of output are in the output region

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
from typing import Any

from ..abi import ResultKind, output_range
from ..errors import GuestError

REPLY = struct.Struct("<BQI")
REQUEST = struct.Struct("<cI")
OK, TRAP, GUEST_ERROR, MEMORY_LIMIT, STARTUP, MODULE = range(6)

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


class Guest:
    """The instance, following the ABI decided by the parent."""

    def __init__(self, spec: dict[str, Any], input_region: mmap.mmap, output_region: mmap.mmap):
        import wasmer
        import wasmer_compiler_cranelift

        self.spec = spec
        self.abi = spec["abi"]
        self.input = input_region
        self.output = output_region
        store = wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))
        try:
            module = wasmer.Module(store, bytes.fromhex(spec["wasm"]))
            self.instance = wasmer.Instance(module, self._imports(wasmer, store, module))
        except RuntimeError as error:
            raise Failure(STARTUP, f"trapped while starting: {trap_message(error)}") from None
        except Exception as error:
            raise Failure(MODULE, f"cannot instantiate: {str(error).splitlines()[0]}") from None
        exports = self.instance.exports
        self.memory = exports.memory
        self.transform = getattr(exports, self.abi["transform"])
        self.dealloc = getattr(exports, self.abi["dealloc"]) if self.abi["dealloc"] else None
        self.start(exports)

    def _imports(self, wasmer: Any, store: Any, module: Any) -> Any:
        if not self.abi["wasi"]:
            return wasmer.ImportObject()
        builder = wasmer.wasi.StateBuilder(self.spec["name"])
        for key, value in self.spec["env"]:
            builder = builder.environment(key, value)
        for host, guest in self.spec["dirs"]:
            builder = builder.map_directory(guest, host)
        version = wasmer.wasi.get_version(module, strict=False)
        return builder.finalize().generate_import_object(store, version)

    def view(self) -> memoryview:
        return memoryview(self.memory.buffer)

    def call(self, func: Any, *args: int) -> Any:
        try:
            result = func(*args)
        except RuntimeError as error:
            status = MEMORY_LIMIT if self.over_memory_limit() else TRAP
            raise Failure(status, self.limit_message(trap_message(error), status)) from None
        if self.over_memory_limit():
            raise Failure(MEMORY_LIMIT, self.limit_message("after the call", MEMORY_LIMIT))
        return result

    def over_memory_limit(self) -> bool:
        limit = self.spec["max_memory"]
        return limit is not None and self.memory.data_size > limit

    def limit_message(self, what: str, status: int) -> str:
        if status != MEMORY_LIMIT:
            return f"guest trapped: {what}"
        return f"memory limit {self.spec['max_memory_text']} exceeded ({what})"

    def start(self, exports: Any) -> None:
        """Reactor initialiser, then the input buffer, then the init function, as wasmtime does."""
        if self.abi["reactor"]:
            self.during_startup("_initialize", exports._initialize)
        self.input_ptr = self.allocate(exports, self.spec["buffer_size"], "the input buffer")
        init = self.abi["init"]
        if init:
            config = bytes.fromhex(self.spec["config"])
            ptr = self.allocate(exports, len(config), "the config") if config else 0
            self.view()[ptr : ptr + len(config)] = config
            status = self.during_startup(init, getattr(exports, init), ptr, len(config))
            if self.abi["init_returns_status"] and status is not None and status < 0:
                raise Failure(STARTUP, f"init function {init} returned error code {status}")

    def during_startup(self, name: str, func: Any, *args: int) -> Any:
        try:
            return self.call(func, *args)
        except Failure as failure:
            raise Failure(STARTUP, f"{name}: {failure.message}") from None

    def allocate(self, exports: Any, size: int, purpose: str) -> int:
        alloc = self.abi["alloc"]
        ptr = int(self.during_startup(alloc, getattr(exports, alloc), size)) & 0xFFFFFFFF
        if ptr + size > self.memory.data_size:
            raise Failure(
                STARTUP,
                f"{purpose} from {self.abi['alloc']}({size}) {ptr:#x}..{ptr + size:#x} "
                f"({size} bytes) is outside guest memory ({self.memory.data_size} bytes)",
            )
        return ptr

    def run(self, length: int) -> int:
        start = self.input_ptr
        self.view()[start : start + length] = self.input[:length]
        result = int(self.call(self.transform, start, length))
        try:
            out_ptr, out_len = output_range(
                result,
                ResultKind(self.abi["result"]),
                start,
                self.spec["buffer_size"],
                self.memory.data_size,
                len(self.output),
            )
        except GuestError as error:
            raise Failure(GUEST_ERROR, error.what) from None
        self.output[:out_len] = self.view()[out_ptr : out_ptr + out_len]
        if self.dealloc is not None and self.abi["result"] == "i64":
            args = (out_ptr, out_len) if self.abi["dealloc_takes_length"] else (out_ptr,)
            self.call(self.dealloc, *args)
        return out_len


def read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


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


def main(argv: list[str]) -> int:
    # Ctrl-C at a terminal reaches the whole process group: the parent decides what to do
    # (save a checkpoint, then stop its workers), so the worker does not die on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    requests, replies, input_fd, output_fd = (int(arg) for arg in argv)
    (length,) = struct.unpack("<I", read_exactly(requests, 4))
    spec = json.loads(read_exactly(requests, length))
    input_region = mmap.mmap(input_fd, spec["buffer_size"])
    output_region = mmap.mmap(output_fd, spec["max_output"])
    try:
        guest = Guest(spec, input_region, output_region)
    except Failure as failure:
        reply(replies, failure.status, message=failure.message)
        return 1
    reply(replies, OK)
    while True:
        try:
            _command, length = REQUEST.unpack(read_exactly(requests, REQUEST.size))
        except EOFError:
            return 0
        try:
            reply(replies, OK, guest.run(length))
        except Failure as failure:
            reply(replies, failure.status, message=failure.message)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
