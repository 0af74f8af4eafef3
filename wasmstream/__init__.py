"""wasmstream: run WebAssembly transforms over data streams, in parallel, in order.

The library surface: build a `RunConfig` and call `run` (a whole run, locally or on a Dask
cluster), or use a `Transform` on chunks or byte ranges of your own; errors are
`WasmstreamError`s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmstream._version import __version__
from wasmstream.errors import ExitStatus, GuestError, UsageError, WasmstreamError
from wasmstream.guest.abi import AbiOptions, GuestAbi, ResultKind

if TYPE_CHECKING:
    from wasmstream.run.cluster import run
    from wasmstream.run.options import RunConfig
    from wasmstream.transform import Transform


def __getattr__(name: str) -> Any:
    """`run`, `Transform` and `RunConfig` load on first use. Every import of a submodule runs
    this file first, and not every one needs them: the command line needs neither `run` nor
    `Transform` at start-up (the cluster path imports asyncio, 20 ms of every start otherwise),
    and the wasmer engine's worker process needs no `RunConfig` (options.py and the engine
    registry it loads, 8 ms of each worker's start)."""
    if name == "run":
        from wasmstream.run.cluster import run

        return run
    if name == "Transform":
        from wasmstream.transform import Transform

        return Transform
    if name == "RunConfig":
        from wasmstream.run.options import RunConfig

        return RunConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AbiOptions",
    "ExitStatus",
    "GuestAbi",
    "GuestError",
    "ResultKind",
    "RunConfig",
    "Transform",
    "UsageError",
    "WasmstreamError",
    "__version__",
    "run",
]
