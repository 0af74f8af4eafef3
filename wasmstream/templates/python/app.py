"""@NAME@: a wasmstream transform in Python, built into a WebAssembly component.

wasmstream calls `process` once per frame (64 KiB of the input by default; whole lines with
`--framing lines`) and writes what it returns, in input order. Raising `Err("why")` fails the
frame with that message, and `--on-error` decides what becomes of it. See README.md.
"""

import wit_world
from componentize_py_types import Err  # noqa: F401 (raise Err("why") to fail a frame)


class WitWorld(wit_world.WitWorld):
    def process(self, frame: bytes) -> bytes:
        return frame.upper()  # ASCII letters only, as `tr a-z A-Z`: any bytes pass
