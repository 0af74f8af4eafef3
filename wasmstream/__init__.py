"""wasmstream: run WebAssembly transforms over data streams, in parallel, in order.

The library surface: build a `RunConfig` and call `run`; errors are `WasmstreamError`s.
"""

from __future__ import annotations

from ._version import __version__
from .abi import AbiOptions, GuestAbi, ResultKind
from .core import run
from .errors import ExitStatus, WasmstreamError
from .options import RunConfig

__all__ = [
    "AbiOptions",
    "ExitStatus",
    "GuestAbi",
    "ResultKind",
    "RunConfig",
    "WasmstreamError",
    "__version__",
    "run",
]
