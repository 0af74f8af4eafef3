"""A run spread over a Dask cluster: parts of the input run as tasks, outputs written in order.

The input is cut into parts (stream/parts.py: whole records, whole frames under fixed framing);
each part is a task that runs `Transform.run_part` on a worker, with the run's own options. The
module's bytes are scattered to every worker once, and each worker compiles them once and keeps
the result (`KeptTransforms`: the few most recently used). The client submits parts in input
order, at most `window` in flight, and writes each part's output as soon as it and every part
before it are done: memory stays flat however large the input. Failed frames follow the run's
`--on-error`, numbered in the whole input; dead letters are written by the client, in order. A
failure that stops a part (a guest's under `--on-error fail`, an oversized record) comes back
with the output before it: the client writes that, then raises it, as a local run would.

The checkpoint is the run's usual one: parts are written in order, so the parts written are
those before `input_bytes`, and `output_bytes` is where their output ends. A worker that dies
has its tasks run again elsewhere (Dask's scheduler does that); a scheduler that goes away
ends the run with exit 8 and a checkpoint `--resume` continues from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from functools import partial
from time import perf_counter
from typing import Any, Protocol, cast

from wasmstream.engines import LoadedModule, read_module
from wasmstream.errors import GuestError, IOFailure, UsageError, WasmstreamError
from wasmstream.run import interrupts
from wasmstream.run.on_error import dead_letter
from wasmstream.run.options import (
    DEFAULT_PART_SIZE,
    MIN_AUTO_PART,
    PARTS_PER_WORKER,
    Notify,
    OnError,
    RunConfig,
    auto_part_size,
    local_workers,
)
from wasmstream.run.skeleton import (
    ProgressFactory,
    Run,
    RunSummary,
    execute,
    plan_run,
    run_steps,
    shard_start,
    sink_opener,
)
from wasmstream.run.skeleton import run as run_locally
from wasmstream.stream import output_parts
from wasmstream.stream.framing import Frame
from wasmstream.stream.locks import RunFiles
from wasmstream.stream.parts import Part, grid_step, split
from wasmstream.stream.parts_layout import MAX_PARTS
from wasmstream.stream.sources import INSTALL_DASK, Inputs, absolute
from wasmstream.transform import FailedFrame, PartResult, Transform
from wasmstream.units import format_size

MiB = 1 << 20
POLL = 2.0  # seconds between looks at the cluster while a part runs
NO_WORKERS_GRACE = 60.0  # seconds a run waits for a worker to (re)appear
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler
STOP_GRACE = 2.0  # seconds a stopped run waits for its running parts here to end

log = logging.getLogger(__name__)


def run(
    config: RunConfig,
    notify: Notify = lambda message: None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """`wasmstream.run.skeleton.run`, or with `config.part_size` (--cluster), the same run
    spread over a cluster."""
    if not config.in_parts:
        return run_locally(config, notify, progress)
    if config.clustered:
        require_dask()
        check_scheduler(config)
    place = None if config.output_parts is None else output_parts.place_for(config.output_parts)
    if place is not None:
        place.check_inputs_outside(config.inputs)
    created = place is not None and place.make()
    count = local_workers(config.cluster) if config.clustered else None
    started = None if count is None else _LocalWorkers(count)  # before Dask is even imported
    try:
        body = partial(_run_in_parts, started=started)
        return execute(config, body, notify, progress)
    except BaseException:
        if created:  # refused before anything was written: the folder goes again
            assert place is not None
            place.unmake()
        raise
    finally:
        if started is not None:
            started.close()


def _asyncio_timeout() -> type[BaseException]:
    import asyncio  # loaded by Dask already; not by wasmstream's own start-up

    return asyncio.TimeoutError


def scheduler_address(config: RunConfig) -> str | None:
    """The address of the scheduler a run joins (None: it starts a local cluster), from
    `--cluster` or the scheduler file `--cluster-file` names. Raises UsageError for a file
    that is missing, unreadable or not a scheduler's (Dask itself would wait for it forever)."""
    if config.cluster_file is None:
        return None if local_workers(config.cluster) is not None else config.cluster
    import json

    path = config.cluster_file
    try:
        with open(path, "rb") as scheduler_file:
            info = json.loads(scheduler_file.read())
    except OSError as error:
        raise UsageError(f"cannot read the scheduler file {path}: {error.strerror}") from None
    except ValueError as error:
        raise UsageError(f"scheduler file {path} is not JSON: {error}") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or not address:
        raise UsageError(
            f'scheduler file {path} names no scheduler: it has no "address" (it is written '
            "by dask scheduler --scheduler-file)"
        )
    return address


def check_scheduler(config: RunConfig) -> None:
    """Before any file is touched: the scheduler is named, and listens (IOFailure if not)."""
    address = scheduler_address(config)
    if address is None:
        return  # a local cluster, started for the run
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, where = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return  # a transport only Dask knows how to reach
        with socket.create_connection(parse_host_port(where, 8786), timeout=CONNECT_TIMEOUT):
            pass
    except (OSError, ValueError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise IOFailure(f"cannot reach the Dask scheduler at {address}: {why}") from None


def require_dask() -> None:
    """Fail at once, before any file is opened, when Dask is not installed (without importing
    it: that takes most of a second, which a local cluster's workers spend starting meanwhile)."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UsageError(f"--cluster needs Dask: {INSTALL_DASK}")


# --- on the workers ------------------------------------------------------------------------

KEPT_TRANSFORMS = 4  # compiled transforms a worker keeps, the most recently used


class _Kept:
    """A transform a worker keeps, and how many parts are running on it now."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform
        self.users = 0
        self.evicted = False


class KeptTransforms:
    """A worker's compiled transforms: compiled on a run's first part, then kept for its later
    ones. A long-lived worker serves many runs, and each transform holds an engine (with a
    ticker thread under --timeout) and compiled code: only the `size` most recently used are
    kept, and one pushed out is closed once no part is running on it."""

    def __init__(self, size: int = KEPT_TRANSFORMS) -> None:
        self._size = size
        self._kept: OrderedDict[Hashable, _Kept] = OrderedDict()
        self._lock = threading.Lock()  # held while compiling, too: each module compiles once

    @contextmanager
    def use(self, key: Hashable, make: Callable[[], Transform]) -> Iterator[Transform]:
        kept = self._acquire(key, make)
        try:
            yield kept.transform
        finally:
            self._release(kept)

    def _acquire(self, key: Hashable, make: Callable[[], Transform]) -> _Kept:
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                kept = self._kept[key] = _Kept(make())
                while len(self._kept) > self._size:
                    _, oldest = self._kept.popitem(last=False)
                    oldest.evicted = True
                    self._close_unused(oldest)
            self._kept.move_to_end(key)
            kept.users += 1
            return kept

    def _release(self, kept: _Kept) -> None:
        with self._lock:
            kept.users -= 1
            self._close_unused(kept)

    @staticmethod
    def _close_unused(kept: _Kept) -> None:
        if kept.evicted and kept.users == 0:
            kept.transform.close()

    def __len__(self) -> int:
        return len(self._kept)


_TRANSFORMS = KeptTransforms()


def run_part_task(
    sha256: str,
    wasm: bytes,
    settings: RunConfig,
    config: bytes,
    paths: tuple[str, ...],
    part: Part,
    keep_input: bool,
    timed: bool = False,
    parts_dir: str | None = None,
) -> PartResult:
    """A cluster task: one part of the input through the module (on a worker). Every failure
    comes back in the result, as plain data (`WasmstreamError.detached`): raised, Dask would
    pickle its traceback and chained errors, or log them on the worker."""
    try:
        make = partial(Transform.from_config, settings, wasm, config)
        with _TRANSFORMS.use((sha256, settings, config), make) as transform:
            return run_part(transform, paths, part, keep_input, timed, parts_dir)
    except WasmstreamError as error:
        return PartResult(error=error.detached())


def run_part(
    transform: Transform,
    paths: tuple[str, ...],
    part: Part,
    keep_input: bool,
    timed: bool,
    parts_dir: str | None,
) -> PartResult:
    """One part, wherever it runs: its output returned, or (`parts_dir`) written to its own
    file there and committed (output_parts.py), with its failed frames beside it. A failure comes
    back in the result; a part that failed is not committed."""
    try:
        with Inputs(paths) as inputs:
            if parts_dir is None:
                return transform.run_part(inputs, part, keep_input, timed)
            return _run_part_into(transform, inputs, part, timed, parts_dir)
    except WasmstreamError as error:
        return PartResult(error=error.detached())


def _run_part_into(
    transform: Transform, inputs: Inputs, part: Part, timed: bool, parts_dir: str
) -> PartResult:
    attempt = output_parts.attempt_at(parts_dir, part.number)
    try:
        result = transform.run_part(inputs, part, True, timed, write=attempt.write)
        if result.error is None:
            lines = [_dead_letter_line(failed) for failed in result.failed]
            result.committed = attempt.commit(b"".join(lines))
        else:
            attempt.abandon()
    except BaseException:
        attempt.abandon()
        raise
    # the client counts them; their input is in the part's dead letters, not sent back
    result.failed = [dataclasses.replace(failed, data=b"") for failed in result.failed]
    return result


def _dead_letter_line(failed: FailedFrame) -> bytes:
    import json

    record = dead_letter(failed.frame, failed.offset, failed.length, failed.error, failed.data)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def task_settings(config: RunConfig) -> RunConfig:
    """What a worker needs of a run's options to run its parts: the module (its path names it
    in errors) and how to frame, run and limit it; not the client's files, nor what only the
    client uses (jobs, --stats, checkpoints). Runs that differ only in those share a worker's
    compiled transform."""
    return RunConfig(
        module=config.module,
        frame_size=config.frame_size,
        abi=config.abi,
        engine=config.engine,
        sandbox=config.sandbox,
        on_error=config.on_error,
        framing=config.framing,
        cache=config.cache,
    )


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


def _run_in_parts(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    files: RunFiles,
    notify: Notify,
    progress: ProgressFactory | None,
    *,
    started: _LocalWorkers | None = None,
) -> RunSummary:
    with _tasks(config, loaded, config_bytes, notify, started) as tasks:
        config, why = _sized(config, tasks.expected())
        origin, end = shard_start(config)
        run = plan_run(config, loaded, config_bytes, notify, files.output_fd, origin, end)
        folder = None if config.output_parts is None else _parts_folder(run)
        opener = folder.open if folder is not None else sink_opener(config, files, run.summary)
        for _ in run_steps(run, ClusterParts(tasks, folder, why), opener, progress):
            pass
    return run.summary


def _sized(config: RunConfig, workers: int) -> tuple[RunConfig, str]:
    """The run with its part size decided, and why it is that (for --stats): given, as the
    checkpoint recorded it (a resumed run), or about PARTS_PER_WORKER parts per worker."""
    if not config.part_size_auto:
        return config, "as given (--part-size)"
    recorded = _recorded_part_size(config)
    if recorded is not None:
        return dataclasses.replace(config, part_size=recorded), "as the checkpoint records"
    with Inputs(config.inputs) as inputs:
        total = inputs.total
    size = auto_part_size(total, workers)
    why = (
        f"chosen for {format_size(total)} on {workers} worker{'' if workers == 1 else 's'}: "
        f"about {PARTS_PER_WORKER} each, {format_size(MIN_AUTO_PART)} to "
        f"{format_size(DEFAULT_PART_SIZE)}"
    )
    return dataclasses.replace(config, part_size=size), why


def _recorded_part_size(config: RunConfig) -> int | None:
    """A resumed run keeps the parts its checkpoint was cut in."""
    if not config.resume or config.checkpoint is None:
        return None
    from wasmstream.checkpoint import record as checkpoint

    saved = checkpoint.load(config.checkpoint)  # a bad one is refused later, by the plan
    return None if saved is None else saved.options.part_size


def _parts_folder(run: Run) -> output_parts.PartsFolder:
    """The run's folder of parts, with the range of part numbers it writes (a shard's: its
    own), and what its checkpoint records of them."""
    config, plan = run.config, run.plan
    assert config.output_parts is not None and config.part_size is not None
    assert plan is not None and config.checkpoint is not None
    step = grid_step(config.framing.framing, config.frame_size, config.part_size)
    first = plan.origin.input_bytes // step
    numbers = range(first, MAX_PARTS if run.end is None else run.end // step)
    fresh = plan.saved is None and not plan.replaces
    return output_parts.PartsFolder(
        config.output_parts, config.checkpoint, config.shard, numbers, plan.saved_parts(), fresh
    )


class ClusterParts:
    """The executor of a run in parts: the input from where the run starts cut into parts
    (parts.py), each a task on the cluster or (--output-parts without --cluster) on a thread
    here; their outputs written in order by `_Client`, or each committed to its own file in
    the parts folder where it ran, the client recording them in order."""

    def __init__(
        self, tasks: _Tasks, folder: output_parts.PartsFolder | None = None, why: str = ""
    ) -> None:
        self._tasks = tasks
        self._inputs: Inputs | None = None
        self._parts: list[Part] = []
        self._folder = folder
        self._why = why  # how the part size was decided

    def open(self, run: Run) -> _Done:
        config = run.config
        assert config.part_size is not None
        self._inputs = inputs = Inputs(config.inputs)
        # Cut from where the run starts: a resumed run's start is a record start (where a part,
        # or the input, ended), and the input may have grown since.
        self._parts = split(
            inputs,
            config.framing,
            config.frame_size,
            config.part_size,
            run.start.input_bytes,
            run.end,
        )
        if self._folder is not None and self._parts:
            self._folder.check_count(self._parts[-1].number)
        return _Done(inputs, run.start.input_bytes)

    def execute(self, run: Run) -> Iterator[None]:
        assert self._inputs is not None
        try:
            runner = _Client(self._tasks, run, self._folder)
            runner.run(self._parts, self._why)
            run.notify(runner.report())
        finally:
            if self._folder is not None:  # what ran but was not recorded goes again
                self._folder.tidy()
        return iter(())

    def snapshot(self) -> bytes | None:
        return None  # a module that keeps state is refused before the run starts

    def close(self) -> None:
        if self._inputs is not None:
            self._inputs.close()


@contextmanager
def _tasks(
    config: RunConfig,
    loaded: LoadedModule,
    config_bytes: bytes,
    notify: Notify,
    started: _LocalWorkers | None,
) -> Iterator[_Tasks]:
    """Where the parts run: on a Dask cluster, or (--output-parts alone) here."""
    parts_dir = None if config.output_parts is None else absolute(config.output_parts)
    if not config.clustered:
        assert parts_dir is not None
        with _HereTasks(config, loaded, config_bytes, parts_dir) as here:
            yield here
        return
    with _client(config, notify, started) as client:
        yield _DaskTasks(client, config, loaded, config_bytes, parts_dir, started)


class _Tasks(Protocol):
    """What the client asks of whatever runs its parts."""

    def workers(self) -> int:
        """How many are there now."""
        ...

    def expected(self) -> int:
        """How many there are to be (a local cluster's workers may still be starting)."""
        ...

    def submit(self, part: Part) -> Any:
        """Start the part; a future whose `result(timeout)` is its PartResult."""
        ...

    def stop(self, futures: list[Any]) -> None:
        """The run stops: parts not started are not started, and (here) running ones end."""
        ...


class _DaskTasks:
    """Parts as tasks on a Dask cluster. The module's bytes are scattered to every worker
    once (on the first part)."""

    def __init__(
        self,
        client: Any,
        config: RunConfig,
        loaded: LoadedModule,
        config_bytes: bytes,
        parts_dir: str | None,
        started: _LocalWorkers | None,
    ) -> None:
        self._client = client
        self._args = (
            loaded.sha256,
            None,  # the module's bytes on the workers, once scattered
            task_settings(config),
            config_bytes,
            _as_workers_see_them(tuple(config.inputs)),
        )
        self._expected = started.count if started is not None else max(1, self.workers())
        self._keep_input = config.dead_letter is not None or config.on_error is OnError.PASSTHROUGH
        self._timed = config.timings
        self._parts_dir = parts_dir
        self._module = config.module
        self._run_id = uuid.uuid4().hex  # task keys: two runs on one scheduler never share

    def workers(self) -> int:
        return len(self._client.scheduler_info().get("workers", {}))

    def expected(self) -> int:
        return self._expected

    def stop(self, futures: list[Any]) -> None:
        with contextlib.suppress(Exception):  # a scheduler gone away has nothing to cancel
            self._client.cancel(futures)  # running tasks end on their own: the next run tidies

    def submit(self, part: Part) -> Any:
        if self._args[1] is None:
            wasm = self._client.scatter(read_module(self._module), broadcast=True, hash=False)
            self._args = (self._args[0], wasm, *self._args[2:])
        return self._client.submit(
            run_part_task,
            *self._args,
            part,
            self._keep_input,
            self._timed,
            self._parts_dir,
            key=f"wasmstream-part-{self._run_id}-{part.number}",
            pure=False,
        )


class _HereTasks:
    """Parts on this machine (--output-parts without --cluster): `--jobs` threads, each
    running one part at a time on an instance of the run's own compiled module, committing
    it to the folder as a worker does. No Dask."""

    def __init__(
        self, config: RunConfig, loaded: LoadedModule, config_bytes: bytes, parts_dir: str
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._jobs = config.max_jobs
        self._pool = ThreadPoolExecutor(self._jobs, thread_name_prefix="wasmstream-part")
        self._transform = Transform.of_loaded(task_settings(config), loaded, config_bytes)
        self._paths = tuple(config.inputs)
        self._timed = config.timings
        self._parts_dir = parts_dir
        self._abandoned = False  # parts still running when the run stopped

    def __enter__(self) -> _HereTasks:
        return self

    def __exit__(self, *exc: object) -> None:
        # parts not started are not started; running ones end (a signal stops their guests),
        # but for those `stop` gave up on (stuck in a request to the store)
        self._pool.shutdown(wait=not self._abandoned, cancel_futures=True)

    def workers(self) -> int:
        return self._jobs

    def expected(self) -> int:
        return self._jobs

    def stop(self, futures: list[Any]) -> None:
        from concurrent.futures import wait

        for future in futures:
            future.cancel()
        # running parts end (a signal stops their guests): then tidy. A part stuck in a request
        # to an object store that stopped answering is left behind (a daemon's fate: the run
        # records nothing more, and the next run aborts the upload it began).
        _, running = wait(futures, timeout=STOP_GRACE)
        self._abandoned = bool(running)

    def submit(self, part: Part) -> Any:
        return self._pool.submit(
            run_part, self._transform, self._paths, part, True, self._timed, self._parts_dir
        )


class _LocalWorkers:
    """`--cluster local:N`'s workers: N Dask worker processes, started as the run begins —
    before this process imports Dask, reads or compiles the module — and pointed at the
    scheduler this process starts later on a port chosen now; they import Dask, wasmstream and
    the engine meanwhile (start-up was most of a second: the client's import of Dask, then a
    nanny process per worker importing it, then the worker importing it again; now all at
    once, without nannies). Each is a process of its own (spawned, not forked: a process that
    has used wasmtime must not fork) in a session of its own, so the terminal's Ctrl-C reaches
    only the client, which closes them; a worker whose scheduler goes away (the client killed)
    closes itself."""

    def __init__(self, count: int) -> None:
        import socket
        import sys

        self.count = count
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        command = [sys.executable, "-m", "distributed.cli.dask_worker"]
        command += [f"tcp://127.0.0.1:{self.port}", "--nthreads", "1", "--no-nanny"]
        command += ["--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "60"]
        command += ["--preload", "wasmstream.run.interrupts"]  # its dask_setup: deaf to Ctrl-C
        logs = None if os.environ.get("WASMSTREAM_DEBUG") else subprocess.DEVNULL
        self._processes = [
            subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=logs,
                start_new_session=True,
            )
            for _ in range(count)
        ]

    def stop(self) -> None:
        """Tell every worker to stop (SIGTERM: each closes at once)."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()

    def close(self) -> None:
        self.stop()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except Exception:
                process.kill()
                process.wait()


@contextmanager
def _client(config: RunConfig, notify: Notify, started: _LocalWorkers | None) -> Iterator[Any]:
    """A Dask client: of a local cluster started for the run (a scheduler here, for the
    workers `started`), or of a running scheduler."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # found by require_dask, but broken
        raise UsageError(f"--cluster needs Dask: {INSTALL_DASK}") from None

    quiet = _quiet_dask()
    try:
        if started is not None:
            local = LocalCluster(
                n_workers=0,  # its workers are `started`'s processes
                scheduler_port=started.port,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback only; bokeh shows it when installed
                silence_logs=quiet,
                processes=False,
            )
            client = Client(local, set_as_default=False)
        else:
            address = scheduler_address(config)
            client = Client(address, set_as_default=False, timeout=f"{CONNECT_TIMEOUT:.0f}s")
            local = None
    except (OSError, ValueError) as error:
        where = config.cluster_file or config.cluster
        raise IOFailure(f"cannot reach the Dask scheduler at {where}: {error}") from None
    try:
        _announce(client, notify, started)
        yield client
    finally:
        if started is not None:
            started.stop()  # the parts are done: the workers close while the scheduler does
        client.close()
        if local is not None:
            local.close()


DASK_LOGGERS = ("distributed", "bokeh", "tornado", "asyncio")
SILENT = logging.CRITICAL + 1  # above every level Dask logs at


def _quiet_dask() -> int:
    """Keep Dask's log lines (tracebacks, often with a task's arguments: input bytes) off
    stderr: what goes wrong on the cluster is reported by wasmstream, in one line. Unless
    WASMSTREAM_DEBUG is set. Returns the level for a local cluster's workers to log at.

    By the handlers' level, not the loggers': Dask gives its child loggers levels of their own
    ("distributed.client": warning), and their records reach the parents' handlers anyway."""
    if os.environ.get("WASMSTREAM_DEBUG"):
        return logging.ERROR
    for name in DASK_LOGGERS:
        logging.getLogger(name).setLevel(SILENT)
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.split(".")[0] in DASK_LOGGERS:
            for handler in logger.handlers:
                handler.setLevel(SILENT)
    return SILENT


def _announce(client: Any, notify: Notify, started: _LocalWorkers | None) -> None:
    info = client.scheduler_info()
    workers = started.count if started is not None else len(info.get("workers", {}))
    dashboard = client.dashboard_link if info.get("services", {}).get("dashboard") else None
    also = f", dashboard {dashboard}" if dashboard else ""
    notify(f"cluster: {workers} workers at {info.get('address')}{also}")


class _Client:
    """Submits parts in order, a bounded number at a time, and writes their outputs in order."""

    def __init__(self, tasks: _Tasks, run: Run, folder: output_parts.PartsFolder | None) -> None:
        config, summary = run.config, run.summary
        self._tasks = tasks
        self._config = config
        self._write_output = run.write
        self._folder = folder
        self._summary = summary
        self._frames = run.start.frames  # frames of the whole input before the next part
        workers = max(1, tasks.expected())
        self.window = 2 * workers  # parts in flight: each worker busy, one more waiting
        self._in_flight: deque[tuple[Part, Any]] = deque()
        self._workers = workers
        self._parts_done = 0
        self._started = perf_counter()
        summary.tally.queue_fill = lambda: (len(self._in_flight), self.window)
        summary.tally.workers = workers

    def run(self, parts: list[Part], why: str) -> None:
        self._summary.jobs_reason = _how_cut(parts, self._config, self.window, why)
        try:
            for part in parts:
                self._in_flight.append((part, self._tasks.submit(part)))
                if len(self._in_flight) >= self.window:
                    self._write_next()
            while self._in_flight:
                self._write_next()
        except BaseException:
            self._tasks.stop([future for _, future in self._in_flight])
            raise
        self._summary.tally.workers = self._tasks.workers()

    def _write_next(self) -> None:
        part, future = self._in_flight[0]
        result = self._result(part, future)
        self._in_flight.popleft()
        self._write(part, result)

    def _result(self, part: Part, future: Any) -> PartResult:
        try:
            result: PartResult = self._wait(part, future)
        except WasmstreamError:
            raise  # a task returns its own failures (`run_part_task`); this is the client's
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
            except (TimeoutError, _asyncio_timeout(), FuturesTimeout):  # distinct before 3.11
                interrupts.raise_pending()
                if self._tasks.workers():
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
        if result.committed is not None:  # on the worker, already: only recorded here
            assert self._folder is not None
            self._folder.record(part.number, result.committed)
            written = result.committed.size
        else:
            written = self._write_output(result.output)
        tally.output_seconds += perf_counter() - started
        for failed in result.failed:  # in order: dead letters and counts, numbered globally
            index = self._frames + failed.frame - part.first_frame
            frame = Frame(index, failed.offset, bytearray(failed.data), failed.length)
            summary.failures.handle(frame, failed.error.at(index, failed.offset))  # fail: raises
        summary.skipped.records += result.skipped_records
        summary.skipped.bytes += result.skipped_bytes
        tally.guest_seconds += result.guest_seconds
        if result.error is not None:  # the output before it is written; the checkpoint stays
            raise self._in_whole_input(part, result.error)  # before the part: exact
        tally.frames += result.frames - 1
        tally.record(Frame(self._frames, part.start, bytearray(), 0, span=part.length), written)
        self._frames += result.frames
        self._parts_done += 1
        interrupts.raise_pending()  # a SIGTERM that a Dask or asyncio finalizer swallowed

    def _in_whole_input(self, part: Part, error: WasmstreamError) -> WasmstreamError:
        """A part's failure, a guest's numbered by its frame in the whole input (a worker
        numbers frames from the part's first)."""
        if isinstance(error, GuestError) and error.frame is not None and error.offset is not None:
            return error.at(self._frames + error.frame - part.first_frame, error.offset)
        return error

    def report(self) -> str:
        """One line for the end of the run: parts, workers, bytes and throughput."""
        elapsed = perf_counter() - self._started
        done = self._summary.tally.input_bytes
        where, workers = ("cluster", "workers") if self._config.clustered else ("parts", "threads")
        rate = done / MiB / elapsed if elapsed > 0 else 0.0
        return (
            f"{where}: {self._parts_done} parts on {self._workers} {workers}, "
            f"{format_size(done)} in {elapsed:.1f}s ({rate:.1f} MiB/s)"
        )


def _as_workers_see_them(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Input paths as a worker opens them: a worker's working folder is its own, so a path
    relative to the client's names another file there (or none)."""
    return tuple(absolute(path) for path in paths)


def _how_cut(parts: list[Part], config: RunConfig, window: int, why: str) -> str:
    """--stats' reason line for a run in parts: how its input was cut and why, and how much
    ran at once."""
    assert config.part_size is not None
    count = f"{len(parts)} part{'' if len(parts) == 1 else 's'}"
    who = "cluster workers" if config.clustered else "threads here"
    size = format_size(config.part_size)
    return f"{who}; {count} of {size} ({why}) to run, {window} at a time"
