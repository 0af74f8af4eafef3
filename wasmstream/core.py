"""`wasmstream run` as a library call: a frozen RunConfig in, a summary out.

The core never prints or exits; it raises WasmstreamError subclasses, which the CLI maps to
messages and exit codes in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .abi import AbiOptions, GuestAbi, resolve_abi
from .engines import DEFAULT_ENGINE, CompiledModule, Engine, Instance, get_engine
from .errors import ModuleError
from .framing import Buffer, Frame, fixed_frames
from .inputs import ConcatenatedInput, check_inputs
from .pool import Tally, run_frames
from .sink import Sink

DEFAULT_FRAME_SIZE = 64 * 1024


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunConfig:
    module: str
    inputs: tuple[str, ...] = ()
    output: str | None = None
    frame_size: int = DEFAULT_FRAME_SIZE
    jobs: int = 1
    queue_depth: int | None = None  # None: twice the jobs
    abi: AbiOptions = field(default_factory=AbiOptions)
    config: bytes = b""
    engine: str = DEFAULT_ENGINE

    @property
    def effective_queue_depth(self) -> int:
        return self.queue_depth if self.queue_depth is not None else 2 * self.jobs


@dataclass(frozen=True)
class LoadedModule:
    """A module compiled and checked against the guest ABI, ready to instantiate."""

    engine: Engine
    compiled: CompiledModule
    abi: GuestAbi


def load_module(
    path: str, abi_options: AbiOptions, engine_name: str = DEFAULT_ENGINE
) -> LoadedModule:
    try:
        with open(path, "rb") as module_file:
            wasm = module_file.read()
    except OSError as error:
        raise ModuleError(f"cannot read module {path}: {error.strerror}") from None
    engine = get_engine(engine_name)
    compiled = engine.compile(wasm, path)
    return LoadedModule(engine, compiled, resolve_abi(compiled.info, abi_options, path))


def run(config: RunConfig) -> Tally:
    """Run the module over the inputs into the output. Raises WasmstreamError on failure."""
    check_inputs(config.inputs)
    loaded = load_module(config.module, config.abi, config.engine)

    def new_instance() -> Instance:
        return loaded.compiled.instantiate(loaded.abi, config.frame_size, config.config)

    stream = ConcatenatedInput(config.inputs)

    def frames(next_buffer: Callable[[], Buffer]) -> Iterator[Frame]:
        return fixed_frames(stream, next_buffer)

    tally = Tally()
    sink = Sink(config.output)  # opened only once the module is known to be usable
    try:
        run_frames(
            frames,
            new_instance,
            sink.write,
            frame_size=config.frame_size,
            jobs=config.jobs,
            queue_depth=config.effective_queue_depth,
            tally=tally,
        )
    finally:
        stream.close()
        sink.close()
    return tally
