"""B4's baseline: the loop a Python user would write with wasmtime-py for an in-place module.

Read 64 KiB from stdin, memory.write it into the guest, call process_chunk, memory.read the
result, write it to stdout.
"""

import sys

import wasmtime

FRAME = 64 * 1024


def main(path: str) -> None:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module.from_file(engine, path), [])
    exports = instance.exports(store)
    memory, alloc, process = exports["memory"], exports["alloc"], exports["process_chunk"]
    ptr = alloc(store, FRAME)
    read, write = sys.stdin.buffer.read, sys.stdout.buffer.write
    while chunk := read(FRAME):
        memory.write(store, chunk, ptr)
        n = process(store, ptr, len(chunk))
        write(memory.read(store, ptr, ptr + n))


if __name__ == "__main__":
    main(sys.argv[1])
