"""wasmstream: run WebAssembly transforms over data streams, in parallel, in order.

The library surface: build a `RunConfig` and call `run` (a whole run, locally or on a Dask
cluster), or use a `Transform` on chunks or byte ranges of your own; errors are
`WasmstreamError`s.
"""

from __future__ import annotations

from ._version import __version__
from .abi import AbiOptions, GuestAbi, ResultKind
from .cluster import run
from .errors import ExitStatus, WasmstreamError
from .options import RunConfig
from .transform import Transform

__all__ = [
    "AbiOptions",
    "ExitStatus",
    "GuestAbi",
    "ResultKind",
    "RunConfig",
    "Transform",
    "WasmstreamError",
    "__version__",
    "run",
]
