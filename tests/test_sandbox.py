"""Hostile guests, limits, error policies and WASI: never a hang, a crash or a lost frame."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from wasmstream.errors import ExitStatus

from conftest import PeakRSS, assert_clean_failure, fixture, spawn, wasmstream

HOSTILE = fixture("hostile.wasm")
GOOD, BAD = b"good", b"ba!d"  # hostile.wasm misbehaves on frames holding '!'
STREAM = GOOD + BAD + GOOD + GOOD  # four 4-byte frames, the second one bad
STARTUP = 1.0  # generous allowance for interpreter start-up on a loaded CI machine


def timed(*args: str, input: bytes = STREAM) -> tuple[subprocess.CompletedProcess[bytes], float]:
    start = time.monotonic()
    result = wasmstream(*args, input=input, timeout=60)
    return result, time.monotonic() - start


CASE_IDS = ["timeout", "fuel", "memory", "recursion"]
CASES = [
    # (name, extra options, exit status, message, limit in seconds)
    ("spin", ["--timeout", "1s"], ExitStatus.TIMEOUT, "timed out after 1s", 1.0),
    pytest.param(
        "spin",
        ["--fuel", "1000000"],
        ExitStatus.OUT_OF_FUEL,
        "ran out of fuel (1000000)",
        0.0,
        marks=pytest.mark.wasmtime_only,
    ),
    (
        "grow_bomb",
        ["--max-memory", "32MiB"],
        ExitStatus.MEMORY_LIMIT,
        "memory limit 32MiB exceeded",
        0.0,
    ),
    ("recurse", [], ExitStatus.GUEST_ERROR, "guest trapped: stack overflow", 0.0),
]


@pytest.mark.parametrize(
    ("function", "options", "status", "message", "limit"),
    CASES,
    ids=CASE_IDS,
)
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_hostile_guest_fails_cleanly_and_in_bounded_time(
    function: str, options: list[str], status: int, message: str, limit: float, jobs: str
) -> None:
    result, elapsed = timed(
        "run", HOSTILE, "--function", function, "--frame-size", "4", "-j", jobs, *options
    )
    assert_clean_failure(result, status, f"frame 1 at offset 4: {message}")
    assert result.stdout == GOOD
    assert elapsed < limit + 1 + STARTUP


@pytest.mark.parametrize(
    ("function", "options", "status", "message", "limit"),
    CASES,
    ids=CASE_IDS,
)
def test_under_skip_the_good_frames_come_out(
    function: str, options: list[str], status: int, message: str, limit: float
) -> None:
    result, elapsed = timed(
        "run",
        HOSTILE,
        "--function",
        function,
        "--frame-size",
        "4",
        "-j",
        "2",
        "--on-error",
        "skip",
        *options,
    )
    assert_clean_failure(
        result, ExitStatus.FRAMES_FAILED, "1 of 4 frames failed", "skipped", message
    )
    assert result.stdout == GOOD * 3
    assert elapsed < limit + 1 + STARTUP


def test_passthrough_writes_the_failed_input_unchanged_and_dead_letters_keep_it(
    tmp_path: Path,
) -> None:
    letters = tmp_path / "dead.jsonl"
    stream = GOOD + BAD + GOOD + BAD
    result = wasmstream(
        "run",
        fixture("trap.wasm"),
        "--frame-size",
        "4",
        "-j",
        "1",
        "--on-error",
        "passthrough",
        "--dead-letter",
        str(letters),
        input=stream,
    )
    assert_clean_failure(
        result, ExitStatus.FRAMES_FAILED, "2 of 4 frames failed (2 trap)", "passed through"
    )
    assert result.stdout == stream
    lines = [json.loads(line) for line in letters.read_text().splitlines()]
    assert [(d["frame"], d["offset"], d["length"], d["kind"]) for d in lines] == [
        (1, 4, 4, "trap"),
        (3, 12, 4, "trap"),
    ]
    assert all(base64.b64decode(d["data"]) == BAD for d in lines)
    assert lines[0]["message"] == "guest trapped: unreachable instruction executed"


def test_dead_letter_under_fail_keeps_the_one_failed_frame(tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    result = wasmstream(
        "run",
        fixture("trap.wasm"),
        "--frame-size",
        "4",
        "-j",
        "2",
        "--dead-letter",
        str(letters),
        input=STREAM,
    )
    assert result.returncode == ExitStatus.GUEST_ERROR
    (line,) = letters.read_text().splitlines()
    assert base64.b64decode(json.loads(line)["data"]) == BAD


def test_output_range_and_allocator_errors_are_guest_errors_not_crashes() -> None:
    for function in ("past_end", "near_4gib", "too_long"):
        result = wasmstream(
            "run",
            fixture("broken.wasm"),
            "--function",
            function,
            "--on-error",
            "skip",
            "--frame-size",
            "10",
            input=b"x" * 10,
        )
        assert_clean_failure(result, ExitStatus.FRAMES_FAILED, "1 of 1 frames failed")


def test_traps_while_starting() -> None:
    reactor = wasmstream("run", fixture("trapinit.wasm"), input=b"x")
    assert_clean_failure(
        reactor, ExitStatus.GUEST_ERROR, "while starting an instance: _initialize: guest trapped"
    )
    init = wasmstream(
        "run", HOSTILE, "--function", "spin", "--init", "init_trap", "-j", "2", input=b"x"
    )
    assert_clean_failure(init, ExitStatus.GUEST_ERROR, "init_trap: guest trapped: unreachable")


def test_output_hundreds_of_times_the_input_is_bounded_by_max_output() -> None:
    refused = wasmstream(
        "run", HOSTILE, "--function", "bloat", "--max-output", "1MiB", input=b"y" * 4096
    )
    assert_clean_failure(
        refused,
        ExitStatus.GUEST_ERROR,
        "output of 2048000 bytes exceeds the --max-output limit of 1MiB",
    )


def test_output_hundreds_of_times_the_input_keeps_host_memory_bounded(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(os.urandom(4 << 20))  # 4 MiB in, 2000 MiB out at 500x
    command = [
        sys.executable,
        "-m",
        "wasmstream",
        "run",
        HOSTILE,
        "--function",
        "bloat",
        "-j",
        "2",
        "--frame-size",
        "16K",
    ]
    with open(source, "rb") as stdin:
        process = subprocess.Popen(
            command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        rss = PeakRSS(process.pid)
        assert process.stdout is not None
        total = 0
        with process.stdout:
            # read slowly at first: backpressure must hold the outputs back, not buffer them
            time.sleep(0.5)
            while chunk := process.stdout.read(1 << 20):
                total += len(chunk)
        # VmHWM is read while the process lives; wait for it after the poller has its last look
        peak = rss.result()
        assert process.wait(timeout=60) == 0
    assert total == 500 * (4 << 20)
    # 2 instances x (16 KiB x 500 output) + queued copies: tens of MiB, never the 2 GB stream
    assert 0 < peak < 300 * 2**20, peak


@pytest.mark.wasmtime_only  # part of it uses --dir, which the wasmer engine refuses
def test_the_sandbox_grants_nothing_by_default(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("top secret\n")
    env = {"SECRET": "from the host environment"}
    denied = wasmstream("run", fixture("c/sneaky.wasm"), input=b"x", env=env)
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout == b"file=DENIED env=NONE\n"
    granted = wasmstream(
        "run",
        fixture("c/sneaky.wasm"),
        "--dir",
        f"{tmp_path}:/data:rw",
        "--env",
        "SECRET=given",
        input=b"x",
    )
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout == b"file=top secret env=given\n"


class Grant:
    """A granted directory holding secret.txt, beside outside.txt, with two symlinks out."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.data.mkdir()
        (self.data / "secret.txt").write_text("top secret\n")
        self.outside = tmp_path / "outside.txt"
        self.outside.write_text("outside\n")
        (self.data / "link").symlink_to(self.outside)  # absolute target
        (self.data / "uplink").symlink_to("../outside.txt")  # relative target, through ..

    def attempt(self, mode: str) -> str:
        # the frame is outside.txt's host path, which the guest also tries to open as it is
        result = wasmstream(
            "run",
            fixture("c/escape.wasm"),
            "--dir",
            f"{self.data}:/data:{mode}",
            input=str(self.outside).encode(),
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.decode()

    def contents(self) -> dict[str, str]:
        return {
            path.name: "<dir>" if path.is_dir() else path.read_text()
            for path in sorted(self.data.iterdir())
            if not path.is_symlink()
        }


ESCAPES = "dotdot=DENIED absolute=DENIED symlink=DENIED outwrite=DENIED"


@pytest.mark.wasmtime_only  # the wasmer engine refuses every grant (see test_wasmer.py)
def test_a_read_only_grant_can_be_read_and_nothing_else(tmp_path: Path) -> None:
    grant = Grant(tmp_path)
    report = grant.attempt("ro")
    assert report == (f"read=OK {ESCAPES} create=DENIED append=DENIED rename=DENIED mkdir=DENIED\n")
    assert grant.contents() == {"secret.txt": "top secret\n"}
    assert grant.outside.read_text() == "outside\n"


@pytest.mark.wasmtime_only  # the wasmer engine refuses every grant (see test_wasmer.py)
def test_a_writable_grant_can_be_changed_but_not_left(tmp_path: Path) -> None:
    grant = Grant(tmp_path)
    report = dict(word.split("=") for word in grant.attempt("rw").split())
    report.pop("symlink")  # see the test below
    assert report == dict(
        word.split("=")
        for word in f"read=OK {ESCAPES} create=OK append=OK rename=OK mkdir=OK".split()
        if not word.startswith("symlink=")
    )
    assert grant.contents() == {
        "created.txt": "created\n",
        "newdir": "<dir>",
        "renamed.txt": "top secret\nappended\n",
    }
    assert grant.outside.read_text() == "outside\n"


@pytest.mark.wasmtime_only  # the wasmer engine refuses every grant (see test_wasmer.py)
def test_symlinks_do_not_lead_out_of_a_grant(tmp_path: Path) -> None:
    grant = Grant(tmp_path)
    assert " symlink=DENIED " in grant.attempt("rw")
    assert grant.outside.read_text() == "outside\n"


@pytest.mark.parametrize(
    "args", [["--env", "NOEQUALS"], ["--dir", "/no/such/dir"], ["--dir", "a:b:c:d"]]
)
def test_bad_grants_are_usage_errors(args: list[str]) -> None:
    assert_clean_failure(
        wasmstream("run", fixture("identity.wasm"), *args, input=b""), ExitStatus.USAGE
    )


@pytest.mark.wasmtime_only  # WASI command mode
@pytest.mark.parametrize("jobs", ["1", "3"])
def test_wasi_command_program_as_a_filter(jobs: str) -> None:
    lines = [f"line {n:03d} of tex".encode() for n in range(64)]  # 16 bytes each with \n
    data = b"\n".join(lines) + b"\n"
    result = wasmstream("run", fixture("c/rev.wasm"), "--frame-size", "64", "-j", jobs, input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(line[::-1] + b"\n" for line in lines)


@pytest.mark.wasmtime_only  # wasmer refuses WASI command mode
def test_arg_gives_a_wasi_command_its_arguments_after_argv0() -> None:
    args = ["--arg", "one", "--arg", "two words", "--arg=-x", "--arg", ""]
    done = wasmstream("run", fixture("echoargs.wasm"), *args, input=b"frame\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"echoargs.wasm\none\ntwo words\n-x\n\nframe\n"
    bare = wasmstream("run", fixture("echoargs.wasm"), input=b"frame\n")
    assert bare.stdout == b"echoargs.wasm\nframe\n"  # no arguments unless given


@pytest.mark.wasmtime_only  # WASI command mode
def test_wasi_command_failure_follows_the_policy() -> None:
    data = b"abc\n" * 4 + b"a\0c\n" * 4 + b"xyz\n" * 4
    failed = wasmstream(
        "run", fixture("c/rev.wasm"), "--wasi-command", "--frame-size", "16", input=data
    )
    assert result_line(failed, ExitStatus.GUEST_ERROR) == (
        "wasmstream: error: frame 1 at offset 16: guest exited with status 1"
    )
    assert failed.stdout == b"cba\n" * 4
    skipped = wasmstream(
        "run", fixture("c/rev.wasm"), "--frame-size", "16", "--on-error", "skip", input=data
    )
    assert skipped.returncode == ExitStatus.FRAMES_FAILED
    assert skipped.stdout == b"cba\n" * 4 + b"zyx\n" * 4
    assert b"rev: binary input" in skipped.stderr  # the program's stderr reaches ours


def result_line(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.decode().splitlines() if line.startswith("wasmstream:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.wasmtime_only  # WASI command mode
def test_wasi_command_timeout_applies_per_frame() -> None:
    # sleepy.wasm copies its stdin after N x 100 ms for a leading digit N; '!' spins forever
    slow = b"4 frame\n" * 4  # 0.4 s a frame: 1.6 s in all, longer than the timeout
    ok = wasmstream(
        "run", fixture("sleepy.wasm"), "--frame-size", "8", "-j", "1", "--timeout", "1s", input=slow
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == slow
    stuck, elapsed = timed(
        "run",
        fixture("sleepy.wasm"),
        "--frame-size",
        "8",
        "-j",
        "1",
        "--timeout",
        "1s",
        input=b"1 frame\n! stuck\n1 never\n",
    )
    assert_clean_failure(stuck, ExitStatus.TIMEOUT, "frame 1 at offset 8: timed out after 1s")
    assert stuck.stdout == b"1 frame\n"
    assert elapsed < 1 + 0.1 + 1 + STARTUP


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGINT, ExitStatus.INTERRUPTED), (signal.SIGTERM, ExitStatus.TERMINATED)],
    ids=["SIGINT", "SIGTERM"],
)
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_signal_stops_a_guest_stuck_in_a_loop(
    sig: int, status: int, jobs: str, tmp_path: Path
) -> None:
    """Even with no --timeout, and even at -j 1 where the main thread is inside the guest."""
    out = tmp_path / "out"
    process = spawn(
        ["run", HOSTILE, "--function", "spin", "--frame-size", "4", "-j", jobs, "-o", str(out)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(GOOD + BAD)  # the second frame spins forever
    process.stdin.close()
    process.stdin = None  # closed: communicate() has nothing to send
    # the first frame written: the second is in the guest (a fixed sleep lost the race on a
    # loaded machine, signalling a run still starting up)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_bytes() == GOOD):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert process.poll() is None
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"still running 10 s after {signal.Signals(sig).name}")
    assert process.returncode == status, stderr
    assert time.monotonic() - sent < 5
    assert b"Traceback" not in stderr and b"panicked" not in stderr
    saved = json.loads((tmp_path / "out.ckpt.json").read_text())
    assert saved["status"] == "interrupted" and saved["position"]["input_bytes"] == 4
    assert out.read_bytes() == GOOD


@pytest.mark.wasmtime_only  # once.wasm keeps its mark in a --dir grant, refused by wasmer
@pytest.mark.parametrize(
    "options", [["-j", "1"], ["-j", "1", "--on-overload", "sample:1"]], ids=["serial", "pool"]
)
def test_the_run_stops_when_a_replacement_instance_cannot_start(
    options: list[str], tmp_path: Path
) -> None:
    # once.wasm starts once per directory: the instance replacing the one that failed cannot
    result = wasmstream(
        "run",
        fixture("c/once.wasm"),
        "--init",
        "init",
        "--dir",
        f"{tmp_path}:/data:rw",
        "--frame-size",
        "4",
        "--on-error",
        "skip",
        *options,
        input=GOOD + BAD + GOOD + GOOD,
    )
    assert_clean_failure(
        result,
        ExitStatus.GUEST_ERROR,
        "while starting an instance: init function init returned error code -1",
    )
    assert result.stdout == GOOD


@pytest.mark.wasmtime_only  # limited.wasm keeps its marks in a --dir grant, refused by wasmer
@pytest.mark.parametrize("jobs", ["2", "4"])
@pytest.mark.parametrize("on_error", ["skip", "passthrough"])
def test_a_replacement_that_cannot_start_stops_a_pool_of_turns_at_its_frame(
    jobs: str, on_error: str, tmp_path: Path
) -> None:
    """-j N (under block, threads taking turns) passed the failed frame's turn on before its
    replacement started: the other threads went on writing frames after it, and the run
    failed somewhere later (at -j 2, after the whole input) rather than at that frame."""
    # limited.wasm starts --config times per directory: the first instances all start, the
    # one replacing the failed frame's cannot
    marks = tmp_path / "marks"
    marks.mkdir()
    out, dead = tmp_path / "out", tmp_path / "dead.jsonl"
    command = ["run", fixture("c/limited.wasm"), "--init", "init", "--config", jobs]
    command += ["--dir", f"{marks}:/data:rw", "--frame-size", "4", "-j", jobs]
    command += ["--on-error", on_error, "--dead-letter", str(dead), "-o", str(out)]
    stream = GOOD * 50 + BAD + GOOD * 200
    result = wasmstream(*command, input=stream)
    assert_clean_failure(result, ExitStatus.GUEST_ERROR, "while starting an instance")
    kept = BAD if on_error == "passthrough" else b""
    assert out.read_bytes() == GOOD * 50 + kept
    saved = json.loads((tmp_path / "out.ckpt.json").read_text())
    assert saved["position"]["input_bytes"] == len(GOOD * 50 + BAD)
    for mark in marks.iterdir():  # the resumed run's instances can all start
        mark.unlink()
    resumed = wasmstream(*command, "--resume", input=stream)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == GOOD * 50 + kept + GOOD * 200
    assert len(dead.read_text().splitlines()) == 1


def test_timeout_counts_each_frame_from_its_own_start(tmp_path: Path) -> None:
    """Frames may be queued behind others (the wasmer engine keeps three in its worker): a
    frame's --timeout runs from when the guest starts on it, not from when it was read."""
    # clock.wasm spends 100 ms on each frame; six frames queued three deep wait up to 200 ms
    # before their turn, so a timeout counted from reading would fail them at 250 ms.
    data = tmp_path / "six-frames"
    data.write_bytes(bytes(16 * 6))
    result = wasmstream(
        "run",
        fixture("clock.wasm"),
        "--frame-size",
        "16",
        "-j",
        "1",
        "--timeout",
        "250ms",
        str(data),
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 16 * 6


def test_a_slow_reader_downstream_does_not_time_out_frames_that_finished(tmp_path: Path) -> None:
    """Frames finish while wasmstream waits on a full output pipe; their --timeout counts the
    guest's time, not the reader's (the wasmer engine's watchdog once killed them)."""
    data = tmp_path / "three-mb"
    data.write_bytes(bytes(range(256)) * (3 * 4096))
    process = spawn(
        [
            "run",
            fixture("upper.wasm"),
            str(data),
            "--frame-size",
            "256K",
            "--timeout",
            "500ms",
            "-j",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2)  # a reader that is late: the pipe fills, and frames wait behind it
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out == data.read_bytes().upper()


class FailingRun(NamedTuple):
    """A checkpointed run in which every frame fails (a replacement instance each time), its
    failed frames dead-lettered: its process and files."""

    process: subprocess.Popen[bytes]
    data: Path
    out: Path
    checkpoint: Path
    letters: Path
    count: int

    @classmethod
    def start(cls, tmp_path: Path, *options: str) -> FailingRun:
        wasmer = os.environ.get("WASMSTREAM_ENGINE") == "wasmer"  # ~35 ms a replacement there
        count = 120 if wasmer else 3000  # well past the 20 + 5 frames the tests wait for
        data, out = tmp_path / "all-bad", tmp_path / "out"
        data.write_bytes(BAD * count)
        checkpoint, letters = tmp_path / "ck.json", tmp_path / "dead.jsonl"
        process = spawn(
            [
                "run",
                fixture("trap.wasm"),
                str(data),
                "-o",
                str(out),
                "--checkpoint",
                str(checkpoint),
                "--frame-size",
                "4",
                "--dead-letter",
                str(letters),
                *options,
            ],
            stderr=subprocess.PIPE,
        )
        return cls(process, data, out, checkpoint, letters, count)

    def wait_until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline and self.process.poll() is None, "never got there"
            time.sleep(0.005)

    def resume_logs_each_once(self) -> None:
        resumed = wasmstream("resume", "--checkpoint", str(self.checkpoint), timeout=300)
        assert resumed.returncode == ExitStatus.FRAMES_FAILED, resumed.stderr
        frames = [json.loads(line)["frame"] for line in self.letters.read_text().splitlines()]
        assert frames == list(range(self.count))


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_interrupted_while_replacing_a_failed_instance_no_dead_letter_twice(
    tmp_path: Path,
) -> None:
    """Every frame fails, so most of the run is spent starting replacement instances; Ctrl-C
    there, then resume: each failed frame is dead-lettered exactly once."""
    run = FailingRun.start(tmp_path, "-j", "1", "--on-error", "skip")
    run.wait_until(lambda: lines_in(run.letters) >= 20)
    run.process.send_signal(signal.SIGINT)
    _, err = run.process.communicate(timeout=30)
    assert run.process.returncode == ExitStatus.INTERRUPTED, err
    run.resume_logs_each_once()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_dead_letters_are_exactly_once_across_a_kill_and_resume(tmp_path: Path, jobs: str) -> None:
    """SIGKILL leaves dead letters written after the last checkpoint; the resumed run does
    those frames again, so it first cuts the log back to what the checkpoint recorded."""
    run = FailingRun.start(
        tmp_path, "-j", jobs, "--on-error", "passthrough", "--checkpoint-every", "20"
    )

    def letters_past_the_checkpoint() -> bool:
        if not run.checkpoint.exists():
            return False
        saved = json.loads(run.checkpoint.read_text())["position"]["frames"]
        return saved >= 20 and lines_in(run.letters) >= saved + 5

    run.wait_until(letters_past_the_checkpoint)
    run.process.kill()
    run.process.communicate(timeout=10)
    run.resume_logs_each_once()
    assert run.out.read_bytes() == run.data.read_bytes()


@pytest.mark.parametrize("jobs", ["2", "4"])
def test_a_failed_frame_ends_the_run_while_a_later_guest_loops(jobs: str) -> None:
    """Frame 0 traps (policy fail) while frame 1's guest loops for ever on another thread: the
    run ends at once with frame 0's error; it does not wait for the loop."""
    frame = 4 << 20  # frame 0's guest reads all 4 MiB before it traps: frame 1 is read by then
    stream = b"!" + bytes(frame - 1) + b"?" + bytes(frame - 1) + bytes(frame)
    result, elapsed = timed(
        "run",
        HOSTILE,
        "--function",
        "trap_or_spin",
        "--frame-size",
        str(frame),
        "-j",
        jobs,
        input=stream,
    )
    assert_clean_failure(result, ExitStatus.GUEST_ERROR, "frame 0 at offset 0")
    assert result.stdout == b""
    assert elapsed < 5 + STARTUP


def failing_module(tmp_path: Path, error_message: str) -> str:
    """A transform that fails every frame (-1); `error_message` is its reason export's body."""
    import wasmtime

    module = tmp_path / "failing.wasm"
    module.write_bytes(
        wasmtime.wat2wasm(
            f"""(module
              (memory (export "memory") 2)
              (data (i32.const 100) "bad  record\\nat column 7")
              (func (export "alloc") (param i32) (result i32) (i32.const 1024))
              (func (export "process_chunk") (param i32 i32) (result i32) (i32.const -1))
              {error_message})"""
        )
    )
    return str(module)


def test_the_guests_reason_is_the_message_on_one_line(tmp_path: Path) -> None:
    packed = (100 << 32) | 23
    module = failing_module(
        tmp_path, f'(func (export "error_message") (result i64) (i64.const {packed}))'
    )
    letters = tmp_path / "dead.jsonl"
    result = wasmstream(
        "run", module, "--on-error", "skip", "--dead-letter", str(letters), input=b"x"
    )
    reason = "guest failed: bad record at column 7 (error code -1)"
    assert_clean_failure(result, ExitStatus.FRAMES_FAILED, reason)
    assert json.loads(letters.read_text())["message"] == reason


@pytest.mark.parametrize(
    "body",
    [
        "(i64.const 0)",  # no reason given
        f"(i64.const {(200000 << 32) | 5})",  # a range outside memory
        "(unreachable)",  # a reporter that traps
    ],
)
def test_without_a_usable_reason_the_error_code_is_the_message(tmp_path: Path, body: str) -> None:
    module = failing_module(tmp_path, f'(func (export "error_message") (result i64) {body})')
    result = wasmstream("run", module, input=b"x")
    assert_clean_failure(
        result, ExitStatus.GUEST_ERROR, "frame 0 at offset 0: guest returned error code -1"
    )


def test_an_error_message_export_of_another_signature_is_refused(tmp_path: Path) -> None:
    module = failing_module(tmp_path, '(func (export "error_message") (result i32) (i32.const 0))')
    result = wasmstream("run", module, input=b"x")
    assert_clean_failure(result, ExitStatus.INVALID_MODULE, "error_message (failure reason)")
