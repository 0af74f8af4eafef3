"""A large module (~6 MB, like a real Go-built one) for the start-up benchmarks.

identity's ABI plus thousands of functions that do arithmetic, so that compiling it takes
seconds, as it would for a real program, while running a frame through it costs nothing.
"""

from __future__ import annotations

import wasmtime

HEADER = """(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))
    (local.get $ptr))
  (func (export "process_chunk") (param i32 i32) (result i32) (local.get 1))
"""


def function(n: int, statements: int) -> str:
    body = "\n".join(
        f"    (local.set $x (i32.xor (i32.mul (local.get $x) (i32.const {n * 7 + k + 3}))"
        f" (i32.add (local.get $x) (i32.const {k * 13 + 1}))))"
        for k in range(statements)
    )
    return f"  (func $f{n} (param $x i32) (result i32)\n{body}\n    (local.get $x))\n"


def big_module(target_bytes: int = 6_000_000) -> bytes:
    parts = [HEADER]
    size_per_function = len(wasmtime.wat2wasm(HEADER + function(0, 40) + ")")) - len(
        wasmtime.wat2wasm(HEADER + ")")
    )
    for n in range(target_bytes // size_per_function):
        parts.append(function(n, 40))
    parts.append(")")
    return bytes(wasmtime.wat2wasm("".join(parts)))


if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(big_module())
