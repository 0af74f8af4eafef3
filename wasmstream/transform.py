"""The library API: a module, compiled once, run over chunks of bytes or a byte range of files.

    >>> t = Transform("upper.wasm", framing="lines", frame_size=1 << 20)
    >>> b"".join(t.stream([b"a\\nb", b"c\\n"]))
    b'A\\nBC\\n'

Frames are cut exactly as `wasmstream run` cuts them (framing.py), run one after another on
one instance, and their outputs come back in order. `run_range` runs one part of the input by
Hadoop's rule (parts.py): what a `--shard` or a cluster task runs, and what a Ray Data or Spark
task can call on its own split. A Transform may be used from several threads: each call starts
its own instance of the shared compiled module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .abi import DEFAULT_TRANSFORM, AbiOptions
from .engines import DEFAULT_ENGINE, DEFAULT_MAX_MEMORY, Instance, LoadedModule, Sandbox, load_wasm
from .engines import read_module as _read_module
from .errors import GuestError, UsageError
from .framing import Buffer, Frame, Framing, FramingSpec, Oversize, fixed_frames, record_frames
from .framing import Skipped as _Skipped
from .inputs import ConcatenatedInput
from .options import DEFAULT_FRAME_SIZE, POLICIES, RunConfig
from .parts import Part, align
from .settle import settle_for_component
from .sources import Inputs

Policy = Literal["fail", "skip", "passthrough"]


@dataclass
class FailedFrame:
    """A frame that failed under `on_error="skip"` or `"passthrough"` (picklable)."""

    frame: int  # numbered within the call (a part's first frame is its `first_frame`)
    offset: int  # of the whole input
    length: int
    error: GuestError
    data: bytes = b""  # the frame's input, when asked to keep it (dead letters)


@dataclass
class PartResult:
    """What running one part gave: its whole output, and what happened on the way."""

    output: bytes = b""
    frames: int = 0
    failed: list[FailedFrame] = field(default_factory=list)
    error: GuestError | None = None  # under on_error="fail": output holds the frames before it
    skipped_records: int = 0
    skipped_bytes: int = 0


class Transform:
    """A WebAssembly transform, compiled once, run over chunks or byte ranges.

    `module` is a path or the module's bytes. The keyword arguments are `wasmstream run`'s
    options of the same names (`args`: the `--arg`s). Raises ModuleError when the module cannot
    be used, UsageError for a bad option.
    """

    def __init__(
        self,
        module: str | os.PathLike[str] | bytes,
        *,
        framing: str | Framing = Framing.FIXED,
        frame_size: int = DEFAULT_FRAME_SIZE,
        delimiter: bytes = b"\n",
        oversize: str | Oversize = Oversize.ERROR,
        function: str = DEFAULT_TRANSFORM,
        alloc: str | None = None,
        free: str | None = None,
        init: str | None = None,
        config: bytes = b"",
        engine: str = DEFAULT_ENGINE,
        timeout: float | None = None,
        fuel: int | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        max_output: int | None = None,
        on_error: Policy = "fail",
        cache: bool = True,
        args: Sequence[str] = (),
    ) -> None:
        if on_error not in POLICIES:
            raise UsageError(f"on_error must be one of {', '.join(POLICIES)}, not {on_error!r}")
        try:
            spec = FramingSpec(Framing(framing), delimiter, Oversize(oversize))
        except ValueError as error:
            raise UsageError(str(error)) from None
        path = "<bytes>" if isinstance(module, bytes) else os.fspath(module)
        settings = RunConfig(
            module=path,
            frame_size=frame_size,
            abi=AbiOptions(function=function, alloc=alloc, free=free, init=init),
            engine=engine,
            sandbox=Sandbox(
                timeout=timeout,
                fuel=fuel,
                max_memory=max_memory,
                max_output=max_output,
                args=tuple(args),
            ),
            on_error=on_error,
            framing=spec,
            cache=cache,
        )
        wasm = module if isinstance(module, bytes) else _read_module(path)
        self._setup(settings, wasm, config)

    @classmethod
    def from_config(cls, settings: RunConfig, wasm: bytes, config: bytes = b"") -> Transform:
        """The transform a run of `settings` applies (its module's bytes given: `wasm`)."""
        transform = cls.__new__(cls)
        transform._setup(settings, wasm, config)
        return transform

    def _setup(self, settings: RunConfig, wasm: bytes, config: bytes) -> None:
        self._config = config
        self.loaded: LoadedModule = load_wasm(
            wasm, settings.module, settings.abi, settings.engine, settings.sandbox, settings.cache
        )
        try:
            self.settings = settle_for_component(settings, self.loaded.abi, bool(config))
        except BaseException:
            self.loaded.engine.close()
            raise
        self.failed: list[FailedFrame] = []  # under skip/passthrough, every failed frame so far

    def close(self) -> None:
        """Stop the engine's helper threads. The transform cannot be used afterwards."""
        self.loaded.engine.close()

    def __enter__(self) -> Transform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The outputs of the frames cut from `chunks` (any sizes), in order, one per frame.

        Raises GuestError (with the frame's number and offset) under `on_error="fail"`.
        """
        return self._outputs(_ChunkReader(chunks), 0, 0, _Skipped(), self.failed, False)

    def run_range(
        self, paths: str | Sequence[str], start: int, end: int, *, aligned: bool = False
    ) -> Iterator[bytes]:
        """The outputs of the records that start in bytes [start, end) of the files `paths`
        (one stream, in order), by Hadoop's rule: the range is first moved forward to record
        starts (frame-size multiples under fixed framing), unless `aligned` says it is.

        Running consecutive ranges covering the input, and joining their outputs, gives the
        output of one run (parts.py says when byte for byte). Files may be fsspec URLs.
        """
        with Inputs([paths] if isinstance(paths, str) else paths) as inputs:
            if not aligned:
                if self.settings.framing.framing is Framing.FIXED:
                    size = self.settings.frame_size
                    start, end = (-(-x // size) * size for x in (start, end))
                start, end = align(inputs, self.settings.framing, [start, end])
        first = start // self.settings.frame_size if not self.settings.framing.record_based else 0
        part = Part(0, start, max(start, end), first)
        yield from self._range_outputs(inputs, part, _Skipped(), self.failed, False)

    def run_part(self, inputs: Inputs, part: Part, keep_input: bool = False) -> PartResult:
        """One aligned part, its output gathered (a cluster task). Under `on_error="fail"` a
        guest failure is returned, with the output of the frames before it, not raised.
        `keep_input`: failed frames keep their input (for dead letters)."""
        result = PartResult()
        skipped = _Skipped()
        chunks: list[bytes] = []
        try:
            for output in self._range_outputs(inputs, part, skipped, result.failed, keep_input):
                chunks.append(output)
                result.frames += 1
        except GuestError as error:
            result.error = error
        result.output = b"".join(chunks)
        result.skipped_records, result.skipped_bytes = skipped.records, skipped.bytes
        return result

    def _range_outputs(
        self,
        inputs: Inputs,
        part: Part,
        skipped: _Skipped,
        failed: list[FailedFrame],
        keep_input: bool,
    ) -> Iterator[bytes]:
        stream = ConcatenatedInput(inputs.paths, inputs.per_input(part.start), limit=part.length)
        try:
            stream.skip_to_start()
            yield from self._outputs(
                stream, part.first_frame, part.start, skipped, failed, keep_input
            )
        finally:
            stream.close()

    def _outputs(
        self,
        stream: ConcatenatedInput | _ChunkReader,
        first_index: int,
        first_offset: int,
        skipped: _Skipped,
        failed: list[FailedFrame],
        keep_input: bool,
    ) -> Iterator[bytes]:
        settings = self.settings
        buffer = bytearray(settings.frame_size)

        def next_buffer() -> Buffer:
            return buffer

        where = {"first_index": first_index, "first_offset": first_offset}
        frames = (
            record_frames(stream, next_buffer, settings.framing, skipped=skipped, **where)
            if settings.framing.record_based or settings.framing.whole_chars
            else fixed_frames(stream, next_buffer, **where)
        )
        instance = self._instance()
        try:
            for frame in frames:
                try:
                    output = instance.transform(frame.data, bytes)
                except GuestError as error:
                    instance.close()
                    instance = self._instance()  # its state may be corrupt
                    located = error.at(frame.index, frame.offset)
                    output = self._failed(frame, located, failed, keep_input)
                yield output
        finally:
            instance.close()

    def _instance(self) -> Instance:
        loaded = self.loaded
        return loaded.compiled.instantiate(loaded.abi, self.settings.frame_size, self._config)

    def _failed(
        self, frame: Frame, error: GuestError, failed: list[FailedFrame], keep_input: bool
    ) -> bytes:
        """The output in place of a failed frame's (raises under on_error="fail", after
        recording the frame when its input is kept)."""
        data = bytes(frame.data)
        policy = self.settings.on_error
        if policy != "fail" or keep_input:
            kept = data if keep_input else b""
            failed.append(FailedFrame(frame.index, frame.offset, frame.length, error, kept))
        if policy == "fail":
            raise error
        return b"" if policy == "skip" else data


class _ChunkReader:
    """`readinto` over an iterable of byte strings of any sizes."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readinto(self, buffer: memoryview, /) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
