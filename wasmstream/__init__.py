"""wasmstream: run WebAssembly transforms over data streams, in parallel, in order.

The library surface: build a `RunConfig` and call `run` (a whole run, locally or on a Dask
cluster), or use a `Transform` on chunks or byte ranges of your own; errors are
`WasmstreamError`s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .abi import AbiOptions, GuestAbi, ResultKind
from .errors import ExitStatus, WasmstreamError
from .options import RunConfig

if TYPE_CHECKING:
    from .cluster import run
    from .transform import Transform


def __getattr__(name: str) -> Any:
    """`run` and `Transform` load on first use: the command line needs neither at start-up
    (the cluster path imports asyncio, 20 ms of every start otherwise)."""
    if name == "run":
        from .cluster import run

        return run
    if name == "Transform":
        from .transform import Transform

        return Transform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
