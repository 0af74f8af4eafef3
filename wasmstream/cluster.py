"""A run spread over a Dask cluster: parts of the input run as tasks, outputs written in order.

The input is cut into parts (parts.py: whole records, whole frames under fixed framing); each
part is a task that runs `Transform.run_part` on a worker, with the run's own options. The
module's bytes are scattered to every worker once, and each worker compiles them once and keeps
the result (`_transform_for`). The client submits parts in input order, at most `window` in
flight, and writes each part's output as soon as it and every part before it are done: memory
stays flat however large the input. Failed frames follow the run's `--on-error`, numbered in
the whole input; dead letters are written by the client, in order.

The checkpoint is the run's usual one: parts are written in order, so the parts written are
those before `input_bytes`, and `output_bytes` is where their output ends. A worker that dies
has its tasks run again elsewhere (Dask's scheduler does that); a scheduler that goes away
ends the run with exit 8 and a checkpoint `--resume` continues from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any, cast

from .core import ProgressFactory, Run, RunSummary, execute, plan_run, run_steps, sink_opener
from .core import run as run_locally
from .engines import LoadedModule, read_module
from .errors import IOFailure, UsageError, WasmstreamError
from .files import RunFiles
from .framing import Frame
from .options import Notify, RunConfig, local_workers
from .parts import Part, split
from .sources import INSTALL_DASK, Inputs
from .transform import PartResult, Transform
from .units import format_size

MiB = 1 << 20
POLL = 2.0  # seconds between looks at the cluster while a part runs
NO_WORKERS_GRACE = 60.0  # seconds a run waits for a worker to (re)appear

log = logging.getLogger(__name__)


def run(
    config: RunConfig,
    notify: Notify = lambda message: None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """`wasmstream.core.run`, or with `config.part_size` (--cluster), the same run spread over
    a cluster."""
    if not config.clustered:
        return run_locally(config, notify, progress)
    require_dask()
    return execute(config, _run_on_cluster, notify, progress)


def _asyncio_timeout() -> type[BaseException]:
    import asyncio  # loaded by Dask already; not by wasmstream's own start-up

    return asyncio.TimeoutError


def require_dask() -> None:
    """Fail at once, before any file is opened, when Dask is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(f"--cluster needs Dask: {INSTALL_DASK}") from None


# --- on the workers ------------------------------------------------------------------------

_TRANSFORMS: dict[tuple[str, RunConfig, bytes], Transform] = {}
_COMPILING = threading.Lock()


def _transform_for(sha256: str, wasm: bytes, settings: RunConfig, config: bytes) -> Transform:
    """This worker's transform for the module: compiled on its first part, then kept."""
    key = (sha256, settings, config)
    with _COMPILING:
        if key not in _TRANSFORMS:
            _TRANSFORMS[key] = Transform.from_config(settings, wasm, config)
        return _TRANSFORMS[key]


def run_part_task(
    sha256: str,
    wasm: bytes,
    settings: RunConfig,
    config: bytes,
    paths: tuple[str, ...],
    part: Part,
    keep_input: bool,
) -> PartResult:
    """A cluster task: one part of the input through the module (on a worker)."""
    transform = _transform_for(sha256, wasm, settings, config)
    with Inputs(paths) as inputs:
        return transform.run_part(inputs, part, keep_input)


# --- on the client -------------------------------------------------------------------------


class _Done:
    """The journal's view of the input: which bytes of each input are done (parts in order)."""

    def __init__(self, inputs: Inputs, start: int) -> None:
        self._inputs = inputs
        self._start = start
        self.head = bytearray()  # files are recognised by inode and head hash, not by these
        self.skipped_tail = b""

    def progress(self, stream_offset: int) -> list[int]:
        return list(self._inputs.per_input(self._start + stream_offset))


def _run_on_cluster(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    files: RunFiles,
    notify: Notify,
    progress: ProgressFactory | None,
) -> RunSummary:
    run = plan_run(config, loaded, config_bytes, notify, files.output_fd)
    for _ in run_steps(run, ClusterParts(), sink_opener(config, files, run.summary), progress):
        pass
    return run.summary


class ClusterParts:
    """The executor of a cluster run: the input from where the run starts cut into parts
    (parts.py), each a task on the cluster, their outputs written in order by `_Client`."""

    def __init__(self) -> None:
        self._inputs: Inputs | None = None
        self._parts: list[Part] = []

    def open(self, run: Run) -> _Done:
        config = run.config
        assert config.part_size is not None
        self._inputs = inputs = Inputs(config.inputs)
        # Cut from where the run starts: a resumed run's start is a record start (where a part,
        # or the input, ended), and the input may have grown since.
        self._parts = split(
            inputs, config.framing, config.frame_size, config.part_size, run.start.input_bytes
        )
        return _Done(inputs, run.start.input_bytes)

    def execute(self, run: Run) -> Iterator[None]:
        assert self._inputs is not None
        with _client(run.config, run.notify) as client:
            runner = _Client(client, run, self._inputs)
            runner.run(self._parts)
            run.notify(runner.report())
        return iter(())

    def snapshot(self) -> bytes | None:
        return None  # a module that keeps state is refused before the run starts

    def close(self) -> None:
        if self._inputs is not None:
            self._inputs.close()


@contextmanager
def _client(config: RunConfig, notify: Notify) -> Iterator[Any]:
    """A Dask client: of a local cluster started for the run, or of a running scheduler."""
    from distributed import Client, LocalCluster

    workers = local_workers(config.cluster)
    # A lost worker or scheduler is reported by us, in one line, not by Dask: nor by a local
    # cluster's workers, which share our stderr (one whose heartbeat meets the scheduler
    # closing logs a traceback at ERROR: seen at the end of loaded crash-suite runs).
    debug = os.environ.get("WASMSTREAM_DEBUG")
    if not debug:
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    try:
        if workers is not None:
            local = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,  # spawned: a process that has used wasmtime must not fork
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback only; bokeh shows it when installed
                silence_logs=logging.ERROR if debug else logging.CRITICAL,
                preload=["wasmstream.interrupts"],  # its dask_setup: deaf to Ctrl-C
            )
            client = Client(local, set_as_default=False)
        elif config.cluster_file is not None:
            client = Client(scheduler_file=config.cluster_file, set_as_default=False)
            local = None
        else:
            client = Client(config.cluster, set_as_default=False, timeout="10s")
            local = None
    except (OSError, ValueError) as error:
        where = config.cluster_file or config.cluster
        raise IOFailure(f"cannot reach the Dask scheduler at {where}: {error}") from None
    try:
        _announce(client, notify)
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def _announce(client: Any, notify: Notify) -> None:
    info = client.scheduler_info()
    workers = len(info.get("workers", {}))
    dashboard = client.dashboard_link if info.get("services", {}).get("dashboard") else None
    also = f", dashboard {dashboard}" if dashboard else ""
    notify(f"cluster: {workers} workers at {info.get('address')}{also}")


class _Client:
    """Submits parts in order, a bounded number at a time, and writes their outputs in order."""

    def __init__(self, client: Any, run: Run, inputs: Inputs) -> None:
        config, summary = run.config, run.summary
        self._client = client
        self._config = config
        self._sha256 = run.loaded.sha256
        self._config_bytes = run.config_bytes
        self._paths = inputs.paths
        self._write_output = run.write
        self._summary = summary
        self._frames = run.start.frames  # frames of the whole input before the next part
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        self.window = 2 * workers  # parts in flight: each worker busy, one more waiting
        self._in_flight: deque[tuple[Part, Any]] = deque()
        self._workers = workers
        self._run_id = uuid.uuid4().hex  # task keys: two runs on one scheduler never share
        self._parts_done = 0
        self._started = perf_counter()
        summary.tally.queue_fill = lambda: (len(self._in_flight), self.window)
        # What workers need to run a part: the same options, minus the client's own files.
        self._settings = dataclasses.replace(
            config,
            inputs=(),
            output=None,
            checkpoint=None,
            dead_letter=None,
            drop_log=None,
            cluster=None,
            cluster_file=None,
            part_size=None,
            shard=None,
            resume=False,
            restart=False,
        )
        self._keep_input = config.dead_letter is not None or config.on_error == "passthrough"

    def run(self, parts: list[Part]) -> None:
        wasm = read_module(self._config.module)
        wasm_on_workers = self._client.scatter(wasm, broadcast=True, hash=False)
        pending = iter(parts)
        for part in pending:
            self._submit(part, wasm_on_workers)
            if len(self._in_flight) >= self.window:
                self._write_next()
        while self._in_flight:
            self._write_next()

    def _submit(self, part: Part, wasm: Any) -> None:
        future = self._client.submit(
            run_part_task,
            self._sha256,
            wasm,
            self._settings,
            self._config_bytes,
            self._paths,
            part,
            self._keep_input,
            key=f"wasmstream-part-{self._run_id}-{part.number}",
            pure=False,
        )
        self._in_flight.append((part, future))

    def _write_next(self) -> None:
        part, future = self._in_flight[0]
        result = self._result(part, future)
        self._in_flight.popleft()
        self._write(part, result)

    def _result(self, part: Part, future: Any) -> PartResult:
        try:
            result: PartResult = self._wait(part, future)
        except WasmstreamError:
            raise  # raised by the task (an unreadable input, an oversized record): as locally
        except Exception as error:
            why = (str(error) or "the scheduler or its workers went away").splitlines()[0]
            then = (
                f"; continue with --resume (checkpoint {self._config.checkpoint})"
                if self._config.checkpoint
                else ""
            )
            raise IOFailure(
                f"the cluster lost the part at input offset {part.start} "
                f"({type(error).__name__}: {why}){then}"
            ) from None
        return result

    def _wait(self, part: Part, future: Any) -> PartResult:
        """The part's result. Dask waits for workers forever; a run without any for
        NO_WORKERS_GRACE seconds stops (exit 8), resumable, rather than hang."""
        alone_since = None
        while True:
            try:
                return cast(PartResult, future.result(timeout=POLL))
            except (TimeoutError, _asyncio_timeout()):  # distinct before Python 3.11
                if self._client.scheduler_info().get("workers"):
                    alone_since = None
                    continue
                alone_since = alone_since or perf_counter()
                if perf_counter() - alone_since > NO_WORKERS_GRACE:
                    raise IOFailure(
                        f"no Dask workers for {NO_WORKERS_GRACE:.0f}s: the part at input "
                        f"offset {part.start} cannot run"
                    ) from None

    def _write(self, part: Part, result: PartResult) -> None:
        summary, tally = self._summary, self._summary.tally
        started = perf_counter()
        written = self._write_output(result.output)
        tally.output_seconds += perf_counter() - started
        for failed in result.failed:  # in order: dead letters and counts, numbered globally
            index = self._frames + failed.frame - part.first_frame
            frame = Frame(index, failed.offset, bytearray(failed.data), failed.length)
            summary.failures.handle(frame, failed.error.at(index, failed.offset))  # fail: raises
        summary.skipped.records += result.skipped_records
        summary.skipped.bytes += result.skipped_bytes
        error = result.error
        if error is not None:  # the output before it is written; the checkpoint stays before
            assert error.frame is not None and error.offset is not None  # the part: exact
            raise error.at(self._frames + error.frame - part.first_frame, error.offset)
        tally.frames += result.frames - 1
        tally.record(Frame(self._frames, part.start, bytearray(), 0, span=part.length), written)
        self._frames += result.frames
        self._parts_done += 1

    def report(self) -> str:
        """One line for the end of the run: parts, workers, bytes and throughput."""
        elapsed = perf_counter() - self._started
        done = self._summary.tally.bytes_in
        rate = done / MiB / elapsed if elapsed > 0 else 0.0
        return (
            f"cluster: {self._parts_done} parts on {self._workers} workers, "
            f"{format_size(done)} in {elapsed:.1f}s ({rate:.1f} MiB/s)"
        )
