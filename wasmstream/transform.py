"""The library API: a module, compiled once, run over chunks of bytes or a byte range of files.

    >>> t = Transform("upper.wasm", framing="lines", frame_size=1 << 20)
    >>> b"".join(t.stream([b"a\\nb", b"c\\n"]))
    b'A\\nBC\\n'

This is `wasmstream run`'s own run (`run_steps`, run/skeleton.py), with an executor that hands each
frame's output to the caller as it is done: frames are cut as the CLI cuts them, run one after
another on one instance with the CLI's failure policy, and a module's finish output ends the stream.
`run_range` runs one part of the input by Hadoop's rule (stream/parts.py): what a `--shard` or a
cluster task runs, and what a Ray Data or Spark task can call on its own split; like `--shard`, it
refuses a module that must see the whole stream in order. A Transform may be used from several
threads: each call starts its own instance of the shared compiled module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace

from wasmstream.engines import DEFAULT_ENGINE, DEFAULT_MAX_MEMORY, LoadedModule, load_wasm
from wasmstream.engines import read_module as _read_module
from wasmstream.engines.base import DirGrant
from wasmstream.errors import GuestError, Interrupted, UsageError, WasmstreamError
from wasmstream.guest.abi import DEFAULT_TRANSFORM
from wasmstream.run import configure
from wasmstream.run.options import (
    DEFAULT_FRAME_SIZE,
    OnError,
    Reached,
    RunConfig,
)
from wasmstream.run.pool import Frames, PoolSettings, serial_steps
from wasmstream.run.settle import settle_for_component, settle_for_state
from wasmstream.run.skeleton import (
    SEQUENTIAL,
    LocalFrames,
    Run,
    check_frame_size,
    plan_run,
    read_config_arg,
    run_steps,
)
from wasmstream.stream.framing import Frame, Framing, Oversize
from wasmstream.stream.parts import Part, align
from wasmstream.stream.parts_layout import Committed
from wasmstream.stream.sources import Inputs


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
    """What running one part gave: its whole output, and what happened on the way. Plain data:
    it crosses from a cluster worker to the client (its errors are `detached`)."""

    output: bytes = b""
    frames: int = 0
    failed: list[FailedFrame] = field(default_factory=list)
    # The failure that stopped the part (a guest's under on_error="fail", an oversized record
    # under --oversize error, an unreadable input): output holds the frames before it.
    error: WasmstreamError | None = None
    skipped_records: int = 0
    skipped_bytes: int = 0
    guest_seconds: float = 0.0  # in guest calls, when asked to time them (--stats)
    # --output-parts: the part as committed to its folder (its output is there, not here)
    committed: Committed | None = None


Size = int | str
Duration = float | str


class Transform:
    """A WebAssembly transform, compiled once, run over chunks or byte ranges.

    `module` is a path or the module's bytes. The keyword arguments are `wasmstream run`'s
    options of the same names, taking the same values: sizes as numbers of bytes or as text
    (`"1MiB"`), durations as seconds or text (`"500ms"`), `max_memory=None` or `"unlimited"`
    for no limit, `env` as a mapping or `KEY=VALUE` texts, `dirs` as `HOST[:GUEST][:ro|rw]`
    texts, `args` a WASI program's `--arg`s, `config` as bytes or as the CLI's TEXT or @FILE.
    `dead_letter` appends failed frames to a file as `--dead-letter` does (else they are listed
    in `failed`). Raises UsageError for a bad option and ModuleError when the module cannot be
    used, both before any data is read.
    """

    def __init__(
        self,
        module: str | os.PathLike[str] | bytes,
        *,
        framing: str | Framing = Framing.FIXED,
        frame_size: Size = DEFAULT_FRAME_SIZE,
        delimiter: bytes = b"\n",
        oversize: str | Oversize = Oversize.ERROR,
        function: str = DEFAULT_TRANSFORM,
        alloc: str | None = None,
        free: str | None = None,
        init: str | None = None,
        config: bytes | str = b"",
        state: str = "auto",
        finish: str | None = None,
        wasi_command: bool = False,
        engine: str = DEFAULT_ENGINE,
        timeout: Duration | None = None,
        fuel: int | None = None,
        max_memory: Size | None = DEFAULT_MAX_MEMORY,
        max_output: Size | None = None,
        env: Mapping[str, str] | Sequence[str] = (),
        dirs: Sequence[str | DirGrant] = (),
        args: Sequence[str] = (),
        on_error: str | OnError = OnError.FAIL,
        dead_letter: str | os.PathLike[str] | None = None,
        cache: bool = True,
    ) -> None:
        path = "<bytes>" if isinstance(module, bytes) else os.fspath(module)
        # The command line's builders: a value means here what it means to `wasmstream run`.
        settings = RunConfig(
            module=path,
            frame_size=configure.checked(lambda: configure.as_size("frame_size", frame_size)) or 0,
            abi=configure.abi_options(
                function=function,
                alloc=alloc,
                free=free,
                init=init,
                config_given=bool(config),
                wasi_command=wasi_command,
                state=state,
                finish=finish,
            ),
            engine=engine,
            sandbox=configure.sandbox(
                timeout=timeout,
                fuel=fuel,
                max_memory=max_memory,
                max_output=max_output,
                env=env,
                dir=dirs,
                arg=args,
            ),
            on_error=configure.checked(lambda: configure.as_on_error(on_error)),
            dead_letter=configure.checked(lambda: _path_or_none("dead_letter", dead_letter)),
            # `delimiter` has a default, so it counts only where it is used (the CLI refuses a
            # --delimiter given with another framing: there it can only be a mistake)
            framing=configure.framing_spec(
                framing=framing,
                delimiter=delimiter if _is_delimited(framing) else None,
                oversize=oversize,
            ),
            cache=cache,
        )
        check_frame_size(settings.frame_size, settings.sandbox.max_memory)
        if not isinstance(config, (bytes, str)):
            raise UsageError(f"config must be bytes, or the CLI's TEXT or @FILE, not {config!r}")
        config_bytes = config if isinstance(config, bytes) else read_config_arg(config)
        wasm = module if isinstance(module, bytes) else _read_module(path)
        self._setup(settings, wasm, config_bytes)

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
            settled = settle_for_component(settings, self.loaded.abi)
            self.settings = settle_for_state(settled, self.loaded.abi)
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

    def stream(self, chunks: Iterable[bytes]) -> Generator[bytes, None, None]:
        """The outputs of the frames cut from `chunks` (any sizes), in order, one per frame,
        then the module's finish output (if it has a finish function).

        Raises GuestError (with the frame's number and offset) under `on_error="fail"`.
        """
        recorder = _Recorder(self.failed, self.settings.on_error, keep_input=False)
        return self._outputs(_OneByOne(chunks), Reached(), None, recorder)

    def run_range(
        self, paths: str | Sequence[str], start: int, end: int, *, aligned: bool = False
    ) -> Iterator[bytes]:
        """The outputs of the records that start in bytes [start, end) of the files `paths`
        (one stream, in order), by Hadoop's rule: the range is first moved forward to record
        starts (frame-size multiples under fixed framing), unless `aligned` says it is.

        Running consecutive ranges covering the input, and joining their outputs, gives the
        output of one run (stream/parts.py says when byte for byte). Files may be fsspec URLs.
        Refuses (UsageError) a module that keeps state or has a finish function: it must see
        the whole stream, in order.
        """
        self._check_splittable()
        for bound in (start, end):
            if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
                raise UsageError(f"a range's start and end are offsets of 0 or more, not {bound!r}")
        if end < start:
            raise UsageError(f"a range ends at or after its start, not [{start}, {end})")
        with Inputs([paths] if isinstance(paths, str) else paths) as inputs:
            if not aligned:
                if self.settings.framing.framing is Framing.FIXED:
                    size = self.settings.frame_size
                    start, end = (-(-x // size) * size for x in (start, end))
                start, end = align(inputs, self.settings.framing, [start, end])
        first = start // self.settings.frame_size if not self.settings.framing.record_based else 0
        part = Part(0, start, max(start, end), first)
        recorder = _Recorder(self.failed, self.settings.on_error, keep_input=False)
        yield from self._range_outputs(inputs, part, recorder)

    @classmethod
    def of_loaded(cls, settings: RunConfig, loaded: LoadedModule, config: bytes) -> Transform:
        """The transform of a run whose module is loaded already (`settings` settled for it):
        its parts run here, sharing its engine, which the run closes."""
        transform = cls.__new__(cls)
        transform._config = config
        transform.loaded = loaded
        transform.settings = settings
        transform.failed = []
        return transform

    def run_part(
        self,
        inputs: Inputs,
        part: Part,
        keep_input: bool = False,
        timed: bool = False,
        write: Callable[[bytes], object] | None = None,
    ) -> PartResult:
        """One aligned part, its output gathered (a cluster task), or handed to `write` as it
        is done (a part written to its file). A failure that stops the part (a guest's under
        `on_error="fail"`, an oversized record, an unreadable input) is returned, with the
        output of the frames before it, not raised: the caller writes that output, then raises
        it, as a local run would. `keep_input`: failed frames keep their input (for dead
        letters); `timed`: count the seconds spent in the guest."""
        self._check_splittable()
        result = PartResult()
        recorder = _Recorder(result.failed, self.settings.on_error, keep_input)
        chunks: list[bytes] = []
        try:
            for output in self._range_outputs(inputs, part, recorder, result, timed):
                if write is None:
                    chunks.append(output)
                else:
                    write(output)
                result.frames += 1
        except Interrupted:
            raise
        except WasmstreamError as error:
            result.error = error.detached()
        result.output = b"".join(chunks)
        result.failed = [replace(f, error=f.error.detached()) for f in result.failed]
        return result

    def _check_splittable(self) -> None:
        abi = self.loaded.abi
        if abi.one_instance:
            raise UsageError(
                f"module {self.settings.module} {abi.why_one_instance}: {SEQUENTIAL}, so a "
                "range of it cannot run alone (use stream)"
            )

    def _range_outputs(
        self,
        inputs: Inputs,
        part: Part,
        recorder: _Recorder,
        result: PartResult | None = None,
        timed: bool = False,
    ) -> Iterator[bytes]:
        settings = replace(self.settings, inputs=tuple(inputs.paths))
        origin = Reached(part.start, inputs.per_input(part.start), part.first_frame)
        executor = LocalOneByOne(timed)
        return self._outputs(executor, origin, part.end, recorder, settings, result)

    def _outputs(
        self,
        executor: LocalOneByOne,
        origin: Reached,
        end: int | None,
        recorder: _Recorder,
        settings: RunConfig | None = None,
        result: PartResult | None = None,
    ) -> Generator[bytes, None, None]:
        """The run's outputs, one per frame as it is done (then the finish output, if any)."""
        run = plan_run(
            settings or self.settings, self.loaded, self._config, _ignore, None, origin, end
        )
        collected = _Collected()
        steps = run_steps(run, executor, lambda keep, durable: collected, dead_letters=recorder)
        try:
            with closing(steps):
                for _ in steps:
                    yield collected.take()
        finally:
            if result is not None:
                result.skipped_records = run.summary.skipped.records
                result.skipped_bytes = run.summary.skipped.bytes
                result.guest_seconds = run.summary.tally.guest_seconds
        finished = collected.take()
        if finished:
            yield finished


def _ignore(message: str) -> None:
    """The library's runs have no one to tell: what they would say is in their results."""


def _path_or_none(name: str, path: str | os.PathLike[str] | None) -> str | None:
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path, not {path!r}")
    return None if path is None else os.fspath(path)


def _is_delimited(framing: str | Framing) -> bool:
    return framing in (Framing.DELIMITER, Framing.DELIMITER.value)


class _Recorder:
    """The library's dead letters: failed frames listed (under `fail`, only when their input
    is kept, for the cluster client's dead letters: the error itself ends the run)."""

    def __init__(self, failed: list[FailedFrame], policy: OnError, keep_input: bool) -> None:
        self._failed = failed
        self._policy = policy
        self._keep_input = keep_input

    def append(self, frame: Frame, error: GuestError) -> None:
        if self._policy is not OnError.FAIL or self._keep_input:
            data = bytes(frame.data) if self._keep_input else b""
            self._failed.append(FailedFrame(frame.index, frame.offset, frame.length, error, data))


class _Collected:
    """The library's output: what the run writes, handed on frame by frame."""

    fd = -1
    is_pipe = False

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: memoryview | bytes) -> int:
        self._chunks.append(bytes(data))  # guest memory is reused by the next frame
        return len(data)

    def take(self) -> bytes:
        taken = b"".join(self._chunks)
        self._chunks.clear()
        return taken

    def sync(self) -> None:
        pass

    def committed(self) -> None:
        return None

    def complete(self) -> None:
        pass

    def close(self) -> None:
        pass


class LocalOneByOne(LocalFrames):
    """The library's executor: the run's frames on one instance, on the caller's thread, one
    step per frame (`pool.serial_steps`), so that each output is handed on as it is done.
    `timed`: count the seconds spent in the guest (a cluster task's, for --stats)."""

    def __init__(self, timed: bool = False) -> None:
        super().__init__()
        self._timed = timed

    def execute(self, run: Run) -> Iterator[None]:
        assert self.instances is not None
        settings = PoolSettings(
            frame_size=run.config.frame_size,
            direct_read=not run.config.framing.record_based,
            measured=self._timed,
        )
        return serial_steps(
            self.frames(run),
            self.instances.new(),
            self.instances.new,
            run.write,
            settings,
            run.summary.tally,
            run.summary.failures,
            end=run.finish_with if run.loaded.abi.one_instance else None,
        )


class _OneByOne(LocalOneByOne):
    """The same over chunks of bytes in memory rather than the run's input files."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = _ChunkReader(chunks)

    def open(self, run: Run) -> _ChunkReader:  # type: ignore[override]
        self.instances = self._new_instances(run)
        return self._chunks

    def frames(self, run: Run) -> Frames:
        return self._frames_of(self._chunks, run, run.config.framing)


class _ChunkReader:
    """`readinto` over an iterable of byte strings of any sizes."""

    head = bytearray()
    skipped_tail = b""

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

    def progress(self, stream_offset: int) -> list[int]:
        return [stream_offset]
