"""The wasmer engine's own machinery: worker processes, the watchdog, the memory check after a
call, and what it refuses. Run by `make test-wasmer` (WASMSTREAM_ENGINE=wasmer); skipped
otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wasmstream.errors import ExitStatus

from conftest import assert_clean_failure, fixture, spawn, wasmstream

pytestmark = pytest.mark.wasmer_only

HOSTILE = fixture("hostile.wasm")
GOOD, BAD = b"good", b"ba!d"  # hostile.wasm misbehaves on frames holding '!'


def workers(parent: int) -> set[int]:
    """The wasmer worker processes started by `parent` (by any of its threads)."""
    pids = []
    try:
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as children:
                pids += [int(pid) for pid in children.read().split()]
    except FileNotFoundError:
        return set()
    found = set()
    for pid in pids:
        try:
            # started as `python -m wasmstream.engines.wasmer_worker`, or forked and named so
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/comm") as comm:
                if b"wasmer_worker" in cmdline.read() or comm.read().strip() == "wasmer_worker":
                    found.add(pid)
        except FileNotFoundError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_watchdog_kills_a_stuck_worker_and_starts_another(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = spawn(
        [
            "run",
            HOSTILE,
            "--function",
            "spin",
            "--frame-size",
            "4",
            "-j",
            "1",
            "--timeout",
            "1s",
            "--on-error",
            "skip",
            "-o",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(GOOD)
        process.stdin.flush()
        wait_for(lambda: out.exists() and out.read_bytes() == GOOD, "the first frame")
        (first,) = workers(process.pid)
        process.stdin.write(BAD + GOOD)  # BAD spins until the watchdog ends it
        process.stdin.flush()
        wait_for(lambda: out.read_bytes() == GOOD * 2, "the frame after the stuck one")
        (second,) = workers(process.pid)
        assert second != first and not alive(first)
        process.stdin.close()
        process.stdin = None
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == ExitStatus.FRAMES_FAILED, stderr
    assert b"frame 1 at offset 4: timed out after 1s" in stderr
    assert out.read_bytes() == GOOD * 2


def test_memory_is_checked_after_every_call() -> None:
    # greedy.wasm grows by 64 MiB on '!' and returns normally: wasmer cannot refuse the growth
    result = wasmstream(
        "run",
        fixture("greedy.wasm"),
        "--max-memory",
        "32MiB",
        "--frame-size",
        "4",
        "-j",
        "1",
        input=GOOD + BAD + GOOD,
    )
    assert_clean_failure(
        result,
        ExitStatus.MEMORY_LIMIT,
        "frame 1 at offset 4: memory limit 32MiB exceeded (after the call)",
    )
    assert result.stdout == GOOD


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            [HOSTILE, "--function", "spin", "--fuel", "1000"],
            "--fuel is not supported by the wasmer engine",
        ),
        (
            [fixture("c/sneaky.wasm"), "--dir", "{tmp}:/data:ro"],
            "--dir is not supported by the wasmer engine",
        ),
        (
            [fixture("c/sneaky.wasm"), "--dir", "{tmp}"],  # read-only by default
            "--dir is not supported by the wasmer engine",
        ),
        (
            # its WASI follows symlinks out of a granted directory: no grant is safe
            [fixture("c/sneaky.wasm"), "--dir", "{tmp}:/data:rw"],
            "follows symlinks out of a granted directory",
        ),
    ],
    ids=["fuel", "read-only-dir", "default-dir", "writable-dir"],
)
def test_what_the_wasmer_engine_refuses(args: list[str], needle: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = wasmstream("run", *args, "-o", str(out), input=b"abc\n")
    assert_clean_failure(result, ExitStatus.USAGE, needle, "--engine wasmtime")
    assert not out.exists()


def test_the_wasmer_engine_refuses_wasi_commands() -> None:
    result = wasmstream("run", fixture("c/rev.wasm"), input=b"abc\n")
    assert_clean_failure(
        result,
        ExitStatus.USAGE,
        "WASI command mode is not supported by the wasmer engine",
        "--engine wasmtime",
    )
    assert result.stdout == b""


def test_refusing_a_wasi_command_leaves_the_output_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    result = wasmstream("run", fixture("c/rev.wasm"), "-o", str(out), input=b"abc\n")
    assert result.returncode == ExitStatus.USAGE
    assert out.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [out]


def test_workers_die_with_wasmstream() -> None:
    process = spawn(
        ["run", HOSTILE, "--function", "spin", "--frame-size", "4", "-j", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    pids: set[int] = set()
    try:
        process.stdin.write(BAD + BAD)  # both workers spin, forever
        process.stdin.flush()
        wait_for(lambda: len(workers(process.pid)) == 2, "two workers")
        pids = workers(process.pid)
        time.sleep(0.5)  # well inside their guests
        process.kill()  # no chance to stop them itself
        process.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in pids), "the workers to end", 10)
    finally:
        process.stdin.close()
        if process.poll() is None:
            pids |= workers(process.pid)
            process.kill()
            process.wait()
        for pid in pids:  # a failed test leaves no spinning worker behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_forked_worker_holds_none_of_the_runs_files(tmp_path: Path) -> None:
    """The first worker is forked from wasmstream itself (ready in milliseconds): it must keep
    only its own pipes and shared memory, never the run's input, output, checkpoint or lock,
    nor its standard output (data must not stay open, or leak, through it)."""
    data, out, checkpoint = tmp_path / "in", tmp_path / "out", tmp_path / "ck.json"
    data.write_bytes(bytes(16 * 40))  # clock.wasm: 100 ms a frame, 4 s in all
    process = spawn(
        [
            "run",
            fixture("clock.wasm"),
            str(data),
            "--frame-size",
            "16",
            "-j",
            "1",
            "-o",
            str(out),
            "--checkpoint",
            str(checkpoint),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: len(workers(process.pid)) == 1, "the worker")
        (worker,) = workers(process.pid)
        with open(f"/proc/{worker}/comm") as comm:
            assert comm.read().strip() == "wasmer_worker"  # forked, not started
        held = {os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
        ours = {str(data), str(out), str(checkpoint), f"{checkpoint}.lock"}
        assert not held & ours, held
        parent_stdout = os.readlink(f"/proc/{process.pid}/fd/1")
        assert parent_stdout not in held, held
        assert not any(target.startswith("socket:") for target in held), held
    finally:
        process.kill()
        process.communicate(timeout=30)


def test_a_component_is_refused_in_one_line_before_anything_is_read(tmp_path: Path) -> None:
    """Under WASMSTREAM_ENGINE=wasmer (this suite), a component is refused by the engine
    registry, not by wasmer's compiler: exit 2, one line, no output file."""
    out = tmp_path / "out"
    module = fixture("components/textupper.wasm")
    failed = wasmstream("run", module, "-o", str(out), input=b"text")
    assert_clean_failure(
        failed, ExitStatus.USAGE, "a WebAssembly component is not supported by the wasmer engine"
    )
    assert not out.exists()
