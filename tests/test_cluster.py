"""Past one machine: shards, parts and cluster runs all give one run's output.

Shards and parts need no Dask (the library API and `--shard`); the cluster tests start a local
cluster, or a scheduler and two workers as processes on 127.0.0.1, and an S3 server (moto) for
`s3://` inputs. Each skips, saying why, when what it needs is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmstream import Transform
from wasmstream.stream.framing import Framing
from wasmstream.stream.parts import shard_part, split
from wasmstream.stream.sources import Inputs

from conftest import (
    HEAVY_TABLE,
    ROOT,
    assert_clean_failure,
    fixture,
    free_port,
    records,
    spawn,
    wasmstream,
)

UPPER = fixture("upper.wasm")
MARKS = fixture("marks.wasm")  # its output shows where every frame was cut
HEAVY = fixture("heavy.wasm")
ENV = {"PYTHONPATH": str(ROOT)}  # workers started as processes import this package

needs_dask = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason="Dask is not installed (pip install 'wasmstream[dask]')",
)


def transform_for(framing: Framing, frame_size: int) -> Transform:
    if framing is Framing.FIXED:  # fixed frames must be the very same frames: marks shows them
        return Transform(MARKS, frame_size=frame_size, free="release")
    delimiter = b"\x1e" if framing is Framing.DELIMITER else b"\n"
    return Transform(UPPER, framing=framing, frame_size=frame_size, delimiter=delimiter)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    framing=st.sampled_from(list(Framing)),
    sizes=st.lists(st.integers(0, 40), max_size=40),
    n=st.integers(1, 5),
    split_at=st.integers(0, 200),
    frame_size=st.sampled_from([48, 64, 100]),
)
def test_shards_concatenate_to_one_run(
    tmp_path_factory: pytest.TempPathFactory,
    framing: Framing,
    sizes: list[int],
    n: int,
    split_at: int,
    frame_size: int,
) -> None:
    """For every framing, the N shards' outputs joined are one run's output, whatever N, and
    whichever two files the input is split over."""
    data = records(framing, sizes)
    folder = tmp_path_factory.mktemp("shards")
    (folder / "a").write_bytes(data[:split_at])
    (folder / "b").write_bytes(data[split_at:])
    paths = [str(folder / "a"), str(folder / "b")]
    spec = transform_for(framing, frame_size)
    with spec as transform:
        whole = b"".join(transform.stream([data]))
        with Inputs(paths) as inputs:
            shards = [
                shard_part(inputs, transform.settings.framing, frame_size, k, n)
                for k in range(1, n + 1)
            ]
        joined = b"".join(b"".join(transform.run_range(paths, p.start, p.end)) for p in shards)
    assert joined == whole
    assert [p.start for p in shards[1:]] == [p.end for p in shards[:-1]]


@settings(max_examples=10, deadline=None)
@given(
    framing=st.sampled_from(list(Framing)),
    sizes=st.lists(st.integers(0, 30), max_size=30),
    part_size=st.integers(1, 300),
)
def test_parts_of_any_size_concatenate_to_one_run(
    tmp_path_factory: pytest.TempPathFactory, framing: Framing, sizes: list[int], part_size: int
) -> None:
    data = records(framing, sizes)
    path = tmp_path_factory.mktemp("parts") / "in"
    path.write_bytes(data)
    with transform_for(framing, 64) as transform:
        whole = b"".join(transform.stream([data]))
        with Inputs([str(path)]) as inputs:
            parts = split(inputs, transform.settings.framing, 64, part_size)
            results = [transform.run_part(inputs, part) for part in parts]
    assert b"".join(r.output for r in results) == whole
    assert all(r.error is None for r in results)


def test_a_range_follows_hadoops_rule(tmp_path: Path) -> None:
    """A record belongs to the range it starts in; a range starting mid-record skips it."""
    path = tmp_path / "in"
    path.write_bytes(b"one\ntwo\nthree\n")
    with Transform(UPPER, framing="lines") as transform:
        assert b"".join(transform.run_range(str(path), 0, 1)) == b"ONE\n"
        assert b"".join(transform.run_range(str(path), 1, 5)) == b"TWO\n"
        assert b"".join(transform.run_range(str(path), 4, 5)) == b"TWO\n"  # starts at 4
        assert b"".join(transform.run_range(str(path), 5, 14)) == b"THREE\n"


def test_stream_cuts_frames_as_the_cli_does() -> None:
    data = bytes(range(256)) * 5
    with Transform(MARKS, frame_size=100, free="release") as transform:
        outputs = list(transform.stream([data[:7], data[7:300], data[300:]]))
    cli = wasmstream(
        "run", MARKS, "--frame-size", "100", "--free", "release", "-j", "1", input=data
    )
    assert b"".join(outputs) == cli.stdout
    assert len(outputs) == 13


def test_failed_frames_keep_their_place_in_the_whole_input(tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"a" * 250 + b"!" + b"a" * 49)
    with Transform(fixture("trap.wasm"), frame_size=100, on_error="skip") as transform:
        output = b"".join(transform.run_range(str(path), 200, 300))
    assert output == b""
    assert [(f.frame, f.offset) for f in transform.failed] == [(2, 200)]


# --- --shard ---------------------------------------------------------------------------------


def test_shard_option_joins_to_one_run_and_resumes_on_its_own(tmp_path: Path) -> None:
    data = records(Framing.LINES, [n % 37 for n in range(2000)])
    (tmp_path / "in").write_bytes(data)
    args = ["run", UPPER, "in", "--framing", "lines", "--frame-size", "1K", "-j", "1"]
    for k in (1, 2, 3):
        done = wasmstream(*args, "--shard", f"{k}/3", "-o", f"out{k}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    joined = b"".join((tmp_path / f"out{k}").read_bytes() for k in (1, 2, 3))
    assert joined == data.upper()
    saved = json.loads((tmp_path / "out2.ckpt.json").read_text())
    assert saved["options"]["shard"] == "2/3" and saved["status"] == "complete"
    # a finished shard resumed: nothing to redo, the output stays as it is
    again = wasmstream(*args, "--shard", "2/3", "-o", "out2", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert b"".join((tmp_path / f"out{k}").read_bytes() for k in (1, 2, 3)) == joined
    other = wasmstream(*args, "--shard", "1/3", "-o", "out2", "--resume", cwd=tmp_path)
    assert other.returncode == 9 and b"--shard changed" in other.stderr


def test_stdin_cannot_be_sharded() -> None:
    done = wasmstream("run", UPPER, "--shard", "1/2", input=b"x\n")
    assert done.returncode == 2 and b"standard input cannot be split" in done.stderr


def test_stateful_modules_are_refused(tmp_path: Path) -> None:
    wat = """(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "process_chunk") (param i32 i32) (result i32) (local.get 1))
      (func (export "snapshot") (result i64) (i64.const 0))
      (func (export "restore") (param i32 i32) (result i32) (i32.const 0)))"""
    import wasmtime

    (tmp_path / "stateful.wasm").write_bytes(wasmtime.wat2wasm(wat))
    (tmp_path / "in").write_bytes(b"data\n")
    done = wasmstream("run", "stateful.wasm", "in", "--shard", "1/2", cwd=tmp_path)
    assert done.returncode == 2 and b"keeps state across frames" in done.stderr


def test_shard_in_a_bad_form_is_a_usage_error() -> None:
    done = wasmstream("run", UPPER, "x", "--shard", "3/2")
    assert done.returncode == 2 and b"not a shard" in done.stderr


# --- --cluster -------------------------------------------------------------------------------


def heavy_input(size: int) -> bytes:
    return bytes((n * 7919 + n // 997) & 255 for n in range(size))


@needs_dask
@pytest.mark.cluster
def test_local_cluster_equals_one_run(tmp_path: Path) -> None:
    data = records(Framing.LINES, [n % 61 for n in range(6000)])
    (tmp_path / "in").write_bytes(data)
    args = ["run", UPPER, "in", "--framing", "lines", "--frame-size", "4K"]
    done = wasmstream(
        *args,
        "--cluster",
        "local:2",
        "--part-size",
        "16K",
        "-o",
        "out",
        "--stats",
        cwd=tmp_path,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == data.upper()
    assert b"cluster: 2 workers" in done.stderr
    assert b"parts on 2 workers" in done.stderr
    saved = json.loads((tmp_path / "out.ckpt.json").read_text())
    assert saved["options"]["part_size"] == 16384 and saved["status"] == "complete"


@needs_dask
@pytest.mark.cluster
def test_cluster_failures_are_numbered_in_the_whole_input(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"a" * 1000 + b"!" + b"a" * 999)
    args = [
        "run",
        fixture("trap.wasm"),
        "in",
        "--frame-size",
        "100",
        "--part-size",
        "300",
        "--cluster",
        "local:1",
    ]
    done = wasmstream(
        *args, "--on-error", "skip", "--dead-letter", "dead", "-o", "out", cwd=tmp_path, env=ENV
    )
    assert done.returncode == 10, done.stderr
    assert (tmp_path / "out").read_bytes() == b"a" * 1900
    letter = json.loads((tmp_path / "dead").read_text())
    assert (letter["frame"], letter["offset"], letter["length"]) == (10, 1000, 100)
    failed = wasmstream(*args, "-o", "out2", cwd=tmp_path, env=ENV)
    assert failed.returncode == 4
    assert b"frame 10 at offset 1000" in failed.stderr
    assert (tmp_path / "out2").read_bytes() == b"a" * 1000  # every frame before it


def test_cluster_needs_dask_or_says_how_to_get_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "distributed.py").write_text("raise ImportError('no distributed here')\n")
    (tmp_path / "in").write_bytes(b"x\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    done = wasmstream("run", UPPER, "in", "--cluster", "local:1", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert b"pip install 'wasmstream[dask]'" in done.stderr


class Scheduler:
    """A Dask scheduler and workers as processes on 127.0.0.1, as on a real cluster."""

    def __init__(self, folder: Path) -> None:
        self.file = str(folder / "scheduler.json")
        self.dask = str(Path(sys.executable).parent / "dask")
        self.env = {**os.environ, **ENV}
        self.scheduler = subprocess.Popen(
            [
                self.dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                self.file,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers: list[subprocess.Popen[bytes]] = []

    def add_worker(self) -> None:
        self.workers.append(
            subprocess.Popen(
                [
                    self.dask,
                    "worker",
                    "--scheduler-file",
                    self.file,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def wait_for_workers(self, count: int) -> None:
        probe = (
            "import sys; from distributed import Client; "
            f"c = Client(scheduler_file={self.file!r}, timeout='20s'); "
            f"c.wait_for_workers({count}, timeout=30); c.close()"
        )
        subprocess.run(
            [sys.executable, "-c", probe], env=self.env, check=True, timeout=60, capture_output=True
        )

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def close(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    if shutil.which("dask", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("Dask is not installed (pip install 'wasmstream[dask]')")
    running = Scheduler(tmp_path_factory.mktemp("scheduler"))
    try:
        for _ in range(2):
            running.add_worker()
        running.wait_for_workers(2)
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def heavy_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = heavy_input(6 << 20)
    path = tmp_path_factory.mktemp("heavy") / "in"
    path.write_bytes(data)
    return path, data.translate(HEAVY_TABLE)


def cluster_run(scheduler: Scheduler, path: Path, out: Path, *more: str) -> list[str]:
    return [
        "run",
        HEAVY,
        str(path),
        "--cluster-file",
        scheduler.file,
        "--part-size",
        "256K",
        "-o",
        str(out),
        "--checkpoint-interval",
        "100ms",
        *more,
    ]


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.cluster
def test_scheduler_and_workers_equal_one_run(
    scheduler: Scheduler, heavy_data: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, expected = heavy_data
    done = wasmstream(*cluster_run(scheduler, path, tmp_path / "out"), env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == expected


@pytest.mark.cluster
def test_client_killed_then_resumed_equals_one_run(
    scheduler: Scheduler, heavy_data: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, expected = heavy_data
    out = tmp_path / "out"
    checkpoint = tmp_path / "out.ckpt.json"
    client = spawn(
        cluster_run(scheduler, path, out),
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def part_way() -> bool:
        try:
            return json.loads(checkpoint.read_text())["position"]["input_bytes"] > 0
        except (OSError, ValueError):
            return False

    wait_for(part_way)
    client.send_signal(signal.SIGKILL)
    client.wait()
    done_before = json.loads(checkpoint.read_text())["position"]["input_bytes"]
    assert 0 < done_before < len(expected)
    # the recorded command, cluster included
    resumed = wasmstream("resume", "--checkpoint", str(checkpoint), env=ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == expected


@pytest.mark.cluster
def test_a_worker_killed_mid_run_changes_nothing(
    scheduler: Scheduler, heavy_data: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, expected = heavy_data
    out = tmp_path / "out"
    client = spawn(
        cluster_run(scheduler, path, out),
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: out.exists() and out.stat().st_size > 0)
    victim = scheduler.alive()[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr
    assert out.read_bytes() == expected
    assert error_lines(stderr) == [], stderr  # Dask's own lines about the lost worker: none
    scheduler.add_worker()  # as it was, for whoever comes next


# --- --output-parts on the scheduler: workers write the parts, the client only records them


def parts_of(folder: Path) -> bytes:
    names = sorted(name for name in os.listdir(folder) if name.startswith("part-"))
    return b"".join((folder / name).read_bytes() for name in names)


def only_committed(folder: Path, parts: int) -> bool:
    """No attempt left, no part twice or out of range: exactly parts 0..N-1 and _SUCCESS."""
    names = sorted(os.listdir(folder))
    return names == ["_SUCCESS", "_checkpoint.json", *(f"part-{n:05d}" for n in range(parts))]


def parts_run_on(scheduler: Scheduler, path: Path, folder: Path, *more: str) -> list[str]:
    args = cluster_run(scheduler, path, folder, *more)
    args[args.index("-o")] = "--output-parts"
    return args


@pytest.mark.cluster
@pytest.mark.parametrize("framing", list(Framing))
def test_parts_written_by_workers_equal_one_run_for_every_framing(
    scheduler: Scheduler, tmp_path: Path, framing: Framing
) -> None:
    data = records(framing, [n % 59 for n in range(2000)])
    (tmp_path / "in").write_bytes(data)
    if framing is Framing.FIXED:  # the very frames of one run: marks shows each cut
        args = [MARKS, "in", "--free", "release", "--frame-size", "1000"]
    else:
        args = [UPPER, "in", "--framing", framing.value, "--frame-size", "1K"]
        args += ["--delimiter", "\\x1e"] if framing is Framing.DELIMITER else []
    whole = wasmstream("run", *args, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    done = wasmstream(
        "run",
        *args,
        "--cluster-file",
        scheduler.file,
        "--part-size",
        "8K",
        "--output-parts",
        "out",
        cwd=tmp_path,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert parts_of(tmp_path / "out") == whole.stdout
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".")]


@pytest.mark.cluster
@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_parts_with_a_worker_killed_mid_run_are_exact_and_once(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    data = b"".join(b"2%03d" % n for n in range(12))  # sleepy: 200 ms per 4-byte part
    (tmp_path / "in").write_bytes(data)
    out = tmp_path / "out"
    args = ["run", fixture("sleepy.wasm"), "in", "--frame-size", "4", "--part-size", "4"]
    args += ["--cluster-file", scheduler.file, "--output-parts", "out"]
    client = spawn(
        args,
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: out.exists() and any(n.startswith("part-") for n in os.listdir(out)))
    victim = scheduler.alive()[0]  # busy: every part takes 200 ms, and there are 12
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr
    assert parts_of(out) == data
    assert only_committed(out, 12), sorted(os.listdir(out))  # its lost attempt removed too
    scheduler.add_worker()  # as it was, for whoever comes next
    scheduler.wait_for_workers(2)


@pytest.mark.cluster
def test_parts_with_the_client_killed_then_resumed_are_exact_and_once(
    scheduler: Scheduler, heavy_data: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, expected = heavy_data
    out = tmp_path / "out"
    checkpoint = out / "_checkpoint.json"
    client = spawn(
        parts_run_on(scheduler, path, out),
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def part_way() -> bool:
        try:
            return bool(json.loads(checkpoint.read_text())["position"]["parts"])
        except (OSError, ValueError, KeyError):
            return False

    wait_for(part_way)
    client.send_signal(signal.SIGKILL)
    client.wait()
    assert not (out / "_SUCCESS").exists()
    done_before = json.loads(checkpoint.read_text())["position"]["input_bytes"]
    assert 0 < done_before < len(expected)
    # what a worker lost with the client may leave: an attempt, and a part never recorded
    (out / ".part-00023.0123456789abcdef.tmp").write_bytes(b"half an attempt")
    (out / "part-00023").write_bytes(b"committed, never recorded")
    resumed = wasmstream("resume", "--checkpoint", str(checkpoint), env=ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert parts_of(out) == expected
    assert only_committed(out, len(expected) // (256 << 10)), sorted(os.listdir(out))


@needs_dask
@pytest.mark.cluster
def test_the_scheduler_gone_stops_the_run_resumably(
    heavy_data: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, expected = heavy_data
    own = Scheduler(tmp_path)
    try:
        own.add_worker()
        own.wait_for_workers(1)
        out = tmp_path / "out"
        client = spawn(
            cluster_run(own, path, out),
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: out.exists() and out.stat().st_size > 0)
        own.scheduler.send_signal(signal.SIGKILL)
        _, stderr = client.communicate(timeout=60)
    finally:
        own.close()
    assert client.returncode == 8, stderr
    lines = stderr.decode().strip().splitlines()
    assert lines[-1].startswith("wasmstream: error: the cluster lost the part"), stderr
    assert "--resume" in lines[-1]
    assert error_lines(stderr) == [lines[-1]], stderr  # nothing of Dask's own: one line
    saved = json.loads((tmp_path / "out.ckpt.json").read_text())
    assert saved["status"] == "failed"
    resumed = wasmstream(
        "run",
        HEAVY,
        str(path),
        "--cluster",
        "local:1",
        "--part-size",
        "256K",
        "-o",
        str(out),
        "--resume",
        env=ENV,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == expected


# --- a cluster run fails, stops and reports as a local one does -----------------------------


def installed(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """The CLI as users start it, by its installed script. A local cluster's workers are spawned
    from the script, so they import wasmstream before Dask, and Dask's tblib then pickles its
    errors with their whole chain (`python -m` workers import neither first)."""
    script = Path(sys.executable).parent / "wasmstream"
    if not script.exists():
        pytest.skip("the wasmstream script is not installed (pip install -e .)")
    env = {**os.environ, **ENV, **kwargs.pop("env", {})}
    return subprocess.run(
        [str(script), *args], capture_output=True, timeout=120, env=env, check=False, **kwargs
    )


def error_lines(stderr: bytes) -> list[str]:
    """stderr without the cluster's start-up notice: what the run had to say."""
    lines = stderr.decode().splitlines()
    return [line for line in lines if not line.startswith("wasmstream: cluster: ")]


PICKLE_PART_RESULTS = """
import json, pickle, sys
import wasmstream.run.cluster  # as on a worker spawned from the script: wasmstream, then tblib
import tblib.pickling_support
from wasmstream import Transform
from wasmstream.stream.parts import Part
from wasmstream.stream.sources import Inputs

tblib.pickling_support.install()  # what importing distributed does
path, cases = sys.argv[1], json.loads(sys.argv[2])
for module, options in cases:
    with Transform(module, frame_size=100, **options) as transform:
        with Inputs([path]) as inputs:
            result = transform.run_part(inputs, Part(0, 0, 300, 0))
    back = pickle.loads(pickle.dumps(result))
    print(type(back.error).__name__, back.error, len(back.output))
"""


def test_a_part_result_with_a_guest_failure_pickles_as_plain_data(tmp_path: Path) -> None:
    """Whatever a guest error was chained to (a wasmtime Trap, holding a ctypes pointer), the
    part's result pickles as Dask pickles it: with tblib's reducers for every exception."""
    pytest.importorskip("tblib")
    (tmp_path / "in").write_bytes(b"a" * 150 + b"!" + b"a" * 149)  # frame 1 holds the '!'
    hostile = fixture("hostile.wasm")
    cases = [
        (fixture("trap.wasm"), {}),
        (hostile, {"function": "spin", "timeout": 0.2}),
        (hostile, {"function": "spin", "fuel": 1_000_000}),
        (hostile, {"function": "grow_bomb", "max_memory": 32 << 20}),
    ]
    done = subprocess.run(
        [sys.executable, "-c", PICKLE_PART_RESULTS, str(tmp_path / "in"), json.dumps(cases)],
        capture_output=True,
        timeout=60,
        env={**os.environ, **ENV},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kinds = ["GuestTrap", "GuestTimeout", "GuestOutOfFuel", "GuestMemoryLimit"]
    for line, kind in zip(done.stdout.decode().splitlines(), kinds, strict=True):
        assert line.startswith(f"{kind} frame 1 at offset 100: ") and line.endswith(" 100"), line


@needs_dask
@pytest.mark.cluster
def test_a_trap_on_a_cluster_fails_and_resumes_as_locally(tmp_path: Path) -> None:
    """Exit 4, one line naming the frame and offset, and the output before it, as a local run
    gives: the failing part's frames before the trap included. A resume fails the same way."""
    (tmp_path / "in").write_bytes(b"a" * 150_000 + b"!" + b"a" * 49_999)
    args = ["run", fixture("trap.wasm"), "in", "--frame-size", "1K"]
    local = installed(*args, "-o", "local", cwd=tmp_path)
    assert local.returncode == 4, local.stderr
    spread = [*args, "--cluster", "local:2", "--part-size", "64K", "-o", "out"]
    for again in ((), ("--resume",)):
        done = installed(*spread, *again, cwd=tmp_path)
        assert done.returncode == 4, done.stderr
        assert error_lines(done.stderr) == local.stderr.decode().splitlines()
        assert "frame 146 at offset 149504" in local.stderr.decode()
        assert (tmp_path / "out").read_bytes() == (tmp_path / "local").read_bytes()


@needs_dask
@pytest.mark.cluster
def test_an_oversized_record_on_a_cluster_writes_the_local_prefix(tmp_path: Path) -> None:
    """The failing part's records before the oversized one are written too."""
    lines = [bytes([97 + n % 26]) * (n % 61) + b"\n" for n in range(4000)]
    lines.insert(2500, b"x" * 5000 + b"\n")
    (tmp_path / "in").write_bytes(b"".join(lines))
    args = ["run", UPPER, "in", "--framing", "lines", "--frame-size", "4K"]
    local = wasmstream(*args, "-o", "local", cwd=tmp_path)
    assert local.returncode == 11, local.stderr
    done = wasmstream(
        *args, "--cluster", "local:2", "--part-size", "16K", "-o", "out", cwd=tmp_path, env=ENV
    )
    assert done.returncode == 11, done.stderr
    assert error_lines(done.stderr) == local.stderr.decode().splitlines()
    assert (tmp_path / "out").read_bytes() == (tmp_path / "local").read_bytes()
    assert len((tmp_path / "local").read_bytes()) > 4 * 16384  # ends inside a part


@needs_dask
@pytest.mark.cluster
def test_cluster_stats_count_the_workers_guest_time_and_parts(tmp_path: Path) -> None:
    data = records(Framing.LINES, [n % 61 for n in range(6000)])
    (tmp_path / "in").write_bytes(data)
    done = wasmstream(
        "run",
        HEAVY,
        "in",
        "--cluster",
        "local:2",
        "--part-size",
        "64K",
        "-o",
        "out",
        "--stats-json",
        "stats.json",
        "--stats",
        cwd=tmp_path,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    parts = -(-len(data) // 65536)
    assert stats["in_guest_seconds"] > 0
    assert stats["workers"] == 2
    assert f"{parts} parts of 64KiB (as given (--part-size))" in stats["jobs"], stats["jobs"]
    # guest time is summed over the workers: its share is of their time, never over 100%
    line = next(x for x in done.stderr.decode().splitlines() if "in guest" in x)
    assert "summed over 2 instances" in line, line
    assert 0 <= int(line.split("(")[1].split("%")[0]) <= 100, line


@needs_dask
@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read the scheduler file"),
        ("", "is not JSON"),
        ("not json", "is not JSON"),
        ("{}", 'no "address"'),
        ("[1, 2]", 'no "address"'),
        ('{"address": 8786}', 'no "address"'),
    ],
)
def test_a_bad_cluster_file_is_a_usage_error_before_anything_is_written(
    tmp_path: Path, content: str | None, says: str
) -> None:
    (tmp_path / "in").write_bytes(b"x\n")
    (tmp_path / "out").write_bytes(b"kept")
    if content is not None:
        (tmp_path / "sched.json").write_text(content)
    done = wasmstream(
        "run", UPPER, "in", "--cluster-file", "sched.json", "-o", "out", cwd=tmp_path, timeout=30
    )
    assert_clean_failure(done, 2, "sched.json", says)
    assert (tmp_path / "out").read_bytes() == b"kept"
    assert not (tmp_path / "out.ckpt.json").exists()


@needs_dask
@pytest.mark.parametrize("how", ["--cluster-file", "--cluster"])
def test_an_unreachable_scheduler_is_an_io_error_before_anything_is_written(
    tmp_path: Path, how: str
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "sched.json").write_text(json.dumps({"address": address}))
    (tmp_path / "in").write_bytes(b"x\n")
    (tmp_path / "out").write_bytes(b"kept")
    where = "sched.json" if how == "--cluster-file" else address
    done = wasmstream("run", UPPER, "in", how, where, "-o", "out", cwd=tmp_path, timeout=30)
    assert_clean_failure(done, 8, f"cannot reach the Dask scheduler at {address}")
    assert (tmp_path / "out").read_bytes() == b"kept"


@pytest.mark.cluster
def test_sigterm_on_a_cluster_run_says_how_to_go_on(
    scheduler: Scheduler, heavy_data: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, expected = heavy_data
    out = tmp_path / "out"
    client = spawn(
        cluster_run(scheduler, path, out),
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: out.exists() and out.stat().st_size > 0)
    client.send_signal(signal.SIGTERM)
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == 143, stderr
    last = stderr.decode().splitlines()[-1]
    checkpoint = tmp_path / "out.ckpt.json"
    assert last.endswith(f"continue with: wasmstream resume --checkpoint {checkpoint}"), stderr
    assert "Traceback" not in stderr.decode()
    resumed = wasmstream("resume", "--checkpoint", str(checkpoint), env=ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == expected


@pytest.mark.cluster
def test_a_relative_input_path_is_the_clients_file_on_every_worker(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    """Workers started elsewhere have working folders of their own."""
    data = records(Framing.LINES, [n % 50 for n in range(2000)])
    (tmp_path / "in").write_bytes(data)
    done = wasmstream(
        *("run", UPPER, "in", "--framing", "lines", "-o", "out", "--part-size", "16K"),
        *("--cluster-file", scheduler.file),
        cwd=tmp_path,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == data.upper()


def test_kept_transforms_close_what_they_push_out_once_no_part_uses_it() -> None:
    """The few most recently used stay; one pushed out while a part runs on it is closed (its
    --timeout ticker stopped) only when that part is done."""
    from wasmstream.run.cluster import KeptTransforms

    def tickers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "wasmstream-epoch"}

    kept = KeptTransforms(size=2)
    started: dict[int, threading.Thread] = {}
    made: list[Transform] = []

    def make(n: int) -> Transform:
        before = tickers()
        made.append(Transform(UPPER, timeout=n + 1.0))
        (started[n],) = tickers() - before
        return made[-1]

    with kept.use(0, lambda: make(0)) as first:
        for n in (1, 2, 3):
            with kept.use(n, lambda n=n: make(n)):
                pass
        assert len(kept) == 2  # 2 and 3
        assert b"".join(first.stream([b"still runs\n"])) == b"STILL RUNS\n"
        assert started[0].is_alive()  # pushed out, but in use
    for n in (0, 1):
        started[n].join(timeout=10)
        assert not started[n].is_alive(), n
    assert started[2].is_alive() and started[3].is_alive()
    with kept.use(2, lambda: make(99)) as again:  # kept: not compiled again
        assert 99 not in started and again is not first
    for transform in made:
        transform.close()


def worker_threads(scheduler: Scheduler) -> dict[str, int]:
    """Each worker's thread count, and how many transforms it keeps, asked of the workers."""
    probe = (
        "import json, threading; from distributed import Client\n"
        f"c = Client(scheduler_file={scheduler.file!r}, timeout='20s')\n"
        "def ask():\n"
        "    import sys\n"
        "    kept = sys.modules.get('wasmstream.run.cluster')\n"
        "    return threading.active_count(), len(kept._TRANSFORMS) if kept else 0\n"
        "print(json.dumps(c.run(ask))); c.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=scheduler.env, timeout=60, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return {worker: threads for worker, (threads, _) in json.loads(done.stdout).items()} | {
        f"{worker} kept": kept for worker, (_, kept) in json.loads(done.stdout).items()
    }


@pytest.mark.cluster
def test_a_long_lived_worker_keeps_a_bounded_number_of_transforms(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    """Runs with distinct --timeout values each compile a transform (with its ticker thread);
    a worker keeps only the few most recently used, and closes the others."""
    from wasmstream.run.cluster import KEPT_TRANSFORMS

    (tmp_path / "in").write_bytes(records(Framing.LINES, [n % 50 for n in range(3000)]))

    def run(n: int, *limits: str) -> None:
        done = wasmstream(
            *("run", UPPER, str(tmp_path / "in"), "--framing", "lines", "-o", f"out{n}"),
            *("--cluster-file", scheduler.file, "--part-size", "16K", *limits),
            cwd=tmp_path,
            env=ENV,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

    run(0)  # without a timeout (no ticker): each worker's task thread is started
    before = worker_threads(scheduler)
    for n in range(1, KEPT_TRANSFORMS + 4):
        run(n, "--timeout", f"{n + 1}s")
    after = worker_threads(scheduler)
    for worker, threads in after.items():
        if worker.endswith(" kept"):
            assert threads <= KEPT_TRANSFORMS, after
        else:
            assert threads - before.get(worker, threads) <= KEPT_TRANSFORMS, (before, after)


# --- fsspec inputs ---------------------------------------------------------------------------


def test_memory_url_input_runs_locally_and_in_shards() -> None:
    fsspec = pytest.importorskip("fsspec")
    data = records(Framing.LINES, [n % 23 for n in range(500)])
    with fsspec.open("memory://wasmstream-test/in.txt", "wb") as remote:
        remote.write(data)
    with Transform(UPPER, framing="lines", frame_size=256) as transform:
        url = "memory://wasmstream-test/in.txt"
        halves = [
            transform.run_range(url, 0, len(data) // 2),
            transform.run_range(url, len(data) // 2, len(data)),
        ]
        assert b"".join(b"".join(half) for half in halves) == data.upper()


def test_a_url_without_fsspecs_protocol_package_names_it() -> None:
    pytest.importorskip("fsspec")
    done = wasmstream("run", UPPER, "nosuchproto://bucket/key")
    assert done.returncode == 2 and b"nosuchproto" in done.stderr


@needs_dask
@pytest.mark.cluster
def test_s3_input_on_a_local_cluster(s3_server: dict[str, str], tmp_path: Path) -> None:
    env = {**ENV, **s3_server}
    data = records(Framing.LINES, [n % 41 for n in range(3000)])
    upload = (
        "import sys, s3fs; fs = s3fs.S3FileSystem(); fs.mkdir('bucket');"
        "fs.pipe('bucket/in.txt', sys.stdin.buffer.read())"
    )
    subprocess.run(
        [sys.executable, "-c", upload],
        input=data,
        check=True,
        timeout=60,
        env={**os.environ, **env},
    )
    args = ["run", UPPER, "s3://bucket/in.txt", "--framing", "lines", "-o", "out"]
    local = wasmstream(*args, cwd=tmp_path, env=env)
    assert local.returncode == 0, local.stderr
    assert (tmp_path / "out").read_bytes() == data.upper()
    spread = wasmstream(
        *args[:-1], "out2", "--cluster", "local:2", "--part-size", "20K", cwd=tmp_path, env=env
    )
    assert spread.returncode == 0, spread.stderr
    assert (tmp_path / "out2").read_bytes() == data.upper()
