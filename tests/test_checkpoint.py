"""Checkpoints and resume: exactly-once output to files, refusals that touch nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wasmstream.errors import ExitStatus

from conftest import REFERENCES, assert_clean_failure, fixture, per_frame, spawn, wasmstream

HEX = REFERENCES["hexdump.wasm"]


def start(*args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    return spawn(
        [*args],
        stdout=kwargs.pop("stdout", subprocess.DEVNULL),  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


def read_checkpoint(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def moved_on(ckpt: Path, start: int, process: subprocess.Popen[bytes], limit: float = 30) -> None:
    """Wait until the checkpoint records progress past `start`, or the process has ended."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if read_checkpoint(ckpt)["position"]["input_bytes"] > start:
                return
        except (OSError, ValueError):
            pass  # not written yet
        time.sleep(0.01)


def test_sigkill_at_random_moments_then_resume_gives_identical_output(tmp_path: Path) -> None:
    data = random.Random(11).randbytes(64 * 2**20)
    source, out = tmp_path / "in.bin", tmp_path / "out.hex"
    source.write_bytes(data)
    args = [
        "run",
        fixture("hexdump.wasm"),
        str(source),
        "-o",
        str(out),
        "-j",
        "2",
        "--frame-size",
        "16K",
        "--checkpoint-interval",
        "50ms",
    ]
    rng = random.Random(12)
    kills, runs = 0, 0
    ckpt = tmp_path / "out.hex.ckpt.json"
    # Where each resume starts: the checkpoint's input position just before it (0: none yet).
    # Killed runs only ever move it forward; a resume that started from 0 would move it back.
    starts: list[int] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        starts.append(read_checkpoint(ckpt)["position"]["input_bytes"] if ckpt.exists() else 0)
        process = start(*args, "--resume")
        runs += 1
        if kills < 10:
            # Kill at a random moment after this run has saved a checkpoint of its own (on a
            # busy machine, start-up alone can outlast a delay counted from the start).
            moved_on(ckpt, starts[-1], process)
            time.sleep(rng.uniform(0.0, 0.3))
            if process.poll() is None:
                process.kill()
                kills += 1
        _, stderr = process.communicate(timeout=60)
        if process.returncode == 0:
            if kills >= 10:
                break
            # finished before the kill came: start the job afresh to get more crashes in
            out.unlink()
            ckpt.unlink()
            starts.append(-1)  # a fresh job: its first run starts at 0
            continue
        assert process.returncode == -signal.SIGKILL, stderr
    assert kills >= 10, f"only {kills} kills in {runs} runs"
    jobs = " ".join(map(str, starts)).split("-1")  # the starts of each job, in order
    for job in jobs:
        positions = [int(n) for n in job.split()]
        assert positions == sorted(positions), starts  # progress is never lost
    resumed_past_zero = sum(1 for n in starts if n > 0)
    assert resumed_past_zero >= kills // 2, starts
    assert out.read_bytes() == per_frame(HEX, data, 16384)
    assert read_checkpoint(tmp_path / "out.hex.ckpt.json")["status"] == "complete"


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGINT, ExitStatus.INTERRUPTED), (signal.SIGTERM, ExitStatus.TERMINATED)],
)
def test_signal_saves_a_checkpoint_and_resume_completes(
    sig: int, status: int, tmp_path: Path
) -> None:
    data = random.Random(13).randbytes(600_000)
    out = tmp_path / "out"
    args = ["run", fixture("hexdump.wasm"), "-", "-o", str(out), "-j", "2", "--frame-size", "4K"]
    process = start(*args, stdin=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(data[:300_000])  # the rest never comes: the run waits for input
    process.stdin.flush()
    time.sleep(1.0)
    process.send_signal(sig)
    # stdin stays open until the run has gone: closing it would end the input, and a reader
    # thread may then take the last, short frame before the signal stops the run
    process.wait(timeout=30)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == status, stderr
    assert b"Traceback" not in stderr
    saved = read_checkpoint(tmp_path / "out.ckpt.json")
    assert saved["status"] == "interrupted"
    done = saved["position"]["input_bytes"]
    assert stderr.decode().splitlines() == [
        f"wasmstream: interrupted at {done} input bytes; continue with: "
        f"wasmstream resume --checkpoint {tmp_path / 'out.ckpt.json'}"
    ]
    assert 0 < done <= 300_000 and done % 4096 == 0
    assert out.stat().st_size >= saved["position"]["output_bytes"] == 2 * done
    # Resuming from a pipe: the processed prefix is read again and discarded, saying so.
    resumed = wasmstream(*args, "--resume", input=data)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped the first {done} bytes of standard input".encode() in resumed.stderr
    assert out.read_bytes() == per_frame(HEX, data, 4096)


def test_resume_from_seekable_stdin_seeks(tmp_path: Path) -> None:
    data = b"a" * 70_000 + b"!" + b"b" * 9_999  # the bad byte lies beyond the first 64 KiB
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    args = ["run", fixture("trap.wasm"), "-o", str(out), "--frame-size", "1000", "-j", "1"]
    with open(source, "rb") as stdin:
        failed = subprocess.run(
            [sys.executable, "-m", "wasmstream", *args],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert failed.returncode == ExitStatus.GUEST_ERROR
    saved = read_checkpoint(tmp_path / "out.ckpt.json")
    assert saved["status"] == "failed"
    assert saved["failure"]["offset"] == 70_000 and saved["failure"]["frame"] == 70
    assert saved["position"]["input_bytes"] == 70_000
    assert saved["inputs"][0]["regular"] is True
    # fix the bad byte in place (same file, same first 64 KiB), then resume: frame 10 is retried
    with open(source, "r+b") as fix:
        fix.seek(70_000)
        fix.write(b"c")
    stats = tmp_path / "stats.json"
    with open(source, "rb") as stdin:
        resumed = subprocess.run(
            [sys.executable, "-m", "wasmstream", *args, "--resume", "--stats-json", str(stats)],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert resumed.returncode == 0, resumed.stderr
    assert b"discarding" not in resumed.stderr
    assert out.read_bytes() == source.read_bytes()
    done = json.loads(stats.read_text())  # only what was left was transformed
    assert (done["frames"], done["bytes_in"], done["bytes_out"]) == (10, 10_000, 10_000)


def test_several_inputs_with_the_checkpoint_inside_the_second(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"1" * 5_000)
    second.write_bytes(b"2" * 100_000 + b"!" + b"2" * 50_000)
    out = tmp_path / "out"
    args = [
        "run",
        fixture("trap.wasm"),
        str(first),
        str(second),
        "-o",
        str(out),
        "--frame-size",
        "1000",
    ]
    assert wasmstream(*args).returncode == ExitStatus.GUEST_ERROR
    saved = read_checkpoint(tmp_path / "out.ckpt.json")
    assert saved["position"]["per_input"] == [5_000, 100_000]
    assert out.read_bytes() == b"1" * 5_000 + b"2" * 100_000
    with open(second, "r+b") as fix:
        fix.seek(100_000)
        fix.write(b"2")
    resumed = wasmstream(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == first.read_bytes() + second.read_bytes()


def test_resume_command_with_and_without_overrides(tmp_path: Path) -> None:
    data = b"hello world " * 20_000
    source, out, ckpt = tmp_path / "in", tmp_path / "out", tmp_path / "job.ckpt"
    source.write_bytes(data[:120_000] + b"!" + data[120_001:])
    args = [
        "run",
        fixture("trap.wasm"),
        str(source),
        "-o",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--frame-size",
        "10K",
        "-j",
        "2",
    ]
    assert wasmstream(*args).returncode == ExitStatus.GUEST_ERROR
    assert wasmstream("resume", "--checkpoint", str(ckpt)).returncode == ExitStatus.GUEST_ERROR
    with open(source, "r+b") as fix:
        fix.seek(120_000)
        fix.write(data[120_000:120_001])
    resumed = wasmstream(
        "resume",
        "--checkpoint",
        str(ckpt),
        "-j",
        "1",
        "--queue-depth",
        "1",
        cwd=str(tmp_path.parent),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == data
    assert read_checkpoint(ckpt)["status"] == "complete"
    refused = wasmstream("resume", "--checkpoint", str(ckpt), "--frame-size", "1K")
    assert refused.returncode == ExitStatus.USAGE


def test_growing_input_is_processed_incrementally(tmp_path: Path) -> None:
    log, out, stats = tmp_path / "app.log", tmp_path / "out", tmp_path / "stats.json"
    log.write_bytes(b"line one\n" * 10_000)
    args = ["run", fixture("upper.wasm"), str(log), "-o", str(out), "--resume"]
    assert wasmstream(*args).returncode == 0
    nothing = wasmstream(*args)
    assert nothing.returncode == 0
    assert b"nothing new to process" in nothing.stderr
    with open(log, "ab") as grow:
        grow.write(b"line two\n" * 5_000)
    assert wasmstream(*args, "--stats-json", str(stats)).returncode == 0
    assert out.read_bytes() == log.read_bytes().upper()
    assert json.loads(stats.read_text())["bytes_in"] == 45_000  # the new lines, and only them


def test_a_grown_input_followed_by_a_started_one_is_refused(tmp_path: Path) -> None:
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    first.write_bytes(b"1" * 5_000)
    second.write_bytes(b"2" * 5_000 + b"!" + b"2" * 999)
    args = ["run", fixture("trap.wasm"), str(first), str(second), "-o", str(out)]
    assert wasmstream(*args, "--frame-size", "1000").returncode == ExitStatus.GUEST_ERROR
    ckpt = tmp_path / "out.ckpt.json"
    before = (ckpt.read_bytes(), out.read_bytes())
    with open(first, "ab") as grow:  # new data in the first input, already passed
        grow.write(b"1" * 1000)
    refused = wasmstream(*args, "--frame-size", "1000", "--resume")
    assert_clean_failure(
        refused, ExitStatus.CHECKPOINT, f"input {first} has grown", "cannot resume in stream order"
    )
    assert (ckpt.read_bytes(), out.read_bytes()) == before


def test_checkpoint_every_n_frames(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(os.urandom(100_000))  # 100 frames
    saves = []
    for every in ([], ["--checkpoint-every", "10"], ["--checkpoint-every", "7"]):
        out, stats = tmp_path / "out", tmp_path / "stats.json"
        result = wasmstream(
            "run",
            fixture("upper.wasm"),
            str(source),
            "-o",
            str(out),
            "--restart",
            "--frame-size",
            "1000",
            "--checkpoint-interval",
            "1h",  # never due by time: only the frame count makes a save
            *every,
            "--stats-json",
            str(stats),
        )
        assert result.returncode == 0, result.stderr
        saves.append(json.loads(stats.read_text())["checkpoints_written"])
    # one save every N frames more than without
    assert [n - saves[0] for n in saves] == [0, 10, 100 // 7]


def test_dropped_frames_count_as_done_in_the_checkpoint(tmp_path: Path) -> None:
    # varying.wasm spins ~10 ms on frames starting with 0xff; the file arrives far faster
    frames = [bytes([255]) + os.urandom(1023) for _ in range(100)]
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"".join(frames))
    args = ["run", fixture("varying.wasm"), str(source), "-o", str(out), "--frame-size", "1K"]
    overload = ["-j", "1", "--queue-depth", "1", "--on-overload", "drop"]
    result = wasmstream(*args, *overload)
    assert result.returncode == 0, result.stderr
    assert b"dropped" in result.stderr
    saved = read_checkpoint(tmp_path / "out.ckpt.json")
    assert saved["status"] == "complete"
    assert saved["position"]["input_bytes"] == 100 * 1024 and saved["position"]["frames"] == 100
    assert saved["position"]["output_bytes"] == out.stat().st_size < 100 * 1024
    again = wasmstream(*args, *overload, "--resume")  # nothing dropped is read again
    assert b"nothing new to process" in again.stderr


def test_a_pipe_run_that_dropped_frames_resumes_with_the_same_input(tmp_path: Path) -> None:
    """Issue 24, item 8: a dropped frame's buffer is scratch space the reader fills again with
    the next frame it drops; the stream tail the checkpoint keeps took its bytes from there,
    so a resume with the very same input was refused ("the input's last … bytes differ")."""
    # varying.wasm spins ~10 ms on frames starting with 0xff: 100 frames arrive at once, two
    # get a buffer and the rest are dropped; the reader is then left waiting in the middle of
    # the next frame, read into scratch space, when the run is stopped.
    data = b"".join(bytes([255]) + os.urandom(1023) for _ in range(200))
    out, ckpt = tmp_path / "out", tmp_path / "out.ckpt.json"
    args = ["run", fixture("varying.wasm"), "-", "-o", str(out), "--frame-size", "1K", "-q"]
    args += ["-j", "1", "--queue-depth", "1", "--on-overload", "drop"]
    for _ in range(3):
        for old in tmp_path.glob("out*"):
            old.unlink()
        process = start(*args, "--checkpoint-every", "1", stdin=subprocess.PIPE)
        assert process.stdin is not None
        process.stdin.write(data[: 100 * 1024 + 500])
        process.stdin.flush()
        moved_on(ckpt, 100 * 1024 - 1, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == ExitStatus.TERMINATED, stderr
        assert read_checkpoint(ckpt)["position"]["input_bytes"] == 100 * 1024
        resumed = wasmstream(*args, "--resume", input=data)
        assert resumed.returncode == 0, resumed.stderr
        saved = read_checkpoint(ckpt)
        assert saved["status"] == "complete" and saved["position"]["input_bytes"] == len(data)


def test_a_dropped_frame_is_recorded_with_its_own_bytes_or_none() -> None:
    """The race the test above cannot time: the reader takes a dropped frame's scratch buffer
    again before the writer records it. The frame is then recorded over no bytes, and the
    stream tail starts again after it, never holding the later frame's bytes."""
    from wasmstream.checkpoint.journal import StreamTail
    from wasmstream.checkpoint.record import Digest
    from wasmstream.run.pool import _Scratch
    from wasmstream.stream.framing import Frame

    stream = os.urandom(200 * 1024)
    scratch, frames = _Scratch(1024), []
    for index in range(200):  # every frame dropped; the writer records none of them yet
        buffer = scratch.take()
        buffer[:] = stream[index * 1024 : (index + 1) * 1024]
        turn = scratch.turn_of(buffer)
        assert turn is not None
        frames.append((Frame(index, index * 1024, buffer, 1024), turn))
    tail = StreamTail(b"", 0)
    for frame, turn in frames:
        recorded = scratch.as_recorded(frame, turn)
        tail.frame_written(recorded, 0)
        end = frame.offset + frame.length
        if len(recorded.buffer) == 0:  # its buffer holds a later frame now
            assert bytes(frame.data) != stream[frame.offset : end]
            assert tail.digest(end).length == 0
        else:
            assert bytes(recorded.data) == stream[frame.offset : end]
            digest = tail.digest(end)
            assert digest.length > 0
            assert digest == Digest.of(stream[end - digest.length : end])
    assert tail.digest(len(stream)).length == 64 * 1024  # the last ring of buffers is intact


class Refusal:
    """A completed-then-failed job whose checkpoint and output must survive a refusal intact."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.module = tmp_path / "m.wasm"
        shutil.copy(fixture("trap.wasm"), self.module)
        self.input = tmp_path / "in"
        self.input.write_bytes(b"x" * 200_000 + b"!" + b"x" * 99_999)
        self.out = tmp_path / "out"
        self.ckpt = tmp_path / "out.ckpt.json"
        self.args = [
            "run",
            str(self.module),
            str(self.input),
            "-o",
            str(self.out),
            "--frame-size",
            "4K",
        ]
        assert wasmstream(*self.args).returncode == ExitStatus.GUEST_ERROR
        self.before = (self.ckpt.read_bytes(), self.out.read_bytes())

    def refused(self, *extra: str, needle: str, args: list[str] | None = None) -> None:
        result = wasmstream(*(args or self.args), "--resume", *extra)
        assert_clean_failure(result, ExitStatus.CHECKPOINT, needle)
        assert (self.ckpt.read_bytes(), self.out.read_bytes()) == self.before


def test_refuses_changed_module(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    shutil.copy(fixture("identity.wasm"), job.module)
    job.refused(needle="m.wasm changed since checkpoint")


def test_refuses_changed_output_option(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    job.refused("--frame-size", "8K", needle="--frame-size changed since checkpoint")


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        pytest.param(["--fuel", "100000000"], "--fuel", marks=pytest.mark.wasmtime_only),
        (["--max-output", "1M"], "--max-output"),
        (["--on-overload", "drop"], "--on-overload"),
        (["--on-error", "skip"], "--on-error"),
        (["--timeout", "10s"], "--timeout"),
        (["--max-memory", "512M"], "--max-memory"),
        (["--env", "K=V"], "--env"),
        (["--arg", "x"], "--arg"),
    ],
)
def test_refuses_every_changed_option_that_can_change_the_bytes(
    tmp_path: Path, change: list[str], flag: str
) -> None:
    """Under --on-error skip, which frames fail decides what is written: a limit, the guest's
    environment or the overload policy changed on resume would make the output differ from one
    uninterrupted run. Each is refused, named; the files stay as they were."""
    job = Refusal(tmp_path)
    job.refused(*change, needle=f"{flag} changed since checkpoint")


def test_options_that_cannot_change_the_bytes_stay_overridable(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    with open(job.input, "r+b") as fix:  # let the failed frame pass this time
        fix.seek(200_000)
        fix.write(b"x")
    changed = ["-j", "2", "--queue-depth", "7", "--checkpoint-interval", "1s", "--force", "-q"]
    resumed = wasmstream(*job.args, "--resume", *changed)
    assert resumed.returncode == 0, resumed.stderr
    assert job.out.read_bytes() == job.input.read_bytes()
    again = wasmstream("resume", "--checkpoint", str(job.ckpt), "-j", "3", "--queue-depth", "2")
    assert again.returncode == 0, again.stderr


def test_refuses_shorter_input(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    os.truncate(job.input, 1000)
    job.refused(needle="fewer than the 196608 already processed")


def test_refuses_different_input_unless_forced(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    content = job.input.read_bytes()
    job.input.rename(tmp_path / "in.1")  # rotated away, as logrotate does: the inode stays taken
    job.input.write_bytes(content.replace(b"!", b"x"))  # a new file (inode), same first block
    job.refused(needle="not the file recorded")
    forced = wasmstream(*job.args, "--resume", "--force")
    assert forced.returncode == 0, forced.stderr
    assert job.out.read_bytes() == job.input.read_bytes()


def test_refuses_input_with_different_first_block(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    with open(job.input, "r+b") as change:
        change.write(b"y")
    job.refused(needle="does not start with the data recorded")


def test_refuses_output_shorter_than_recorded(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    os.truncate(job.out, 100)
    job.before = (job.ckpt.read_bytes(), job.out.read_bytes())
    job.refused(needle="output was lost")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda text: text[: len(text) // 2], "corrupt or truncated"),
        (lambda text: text.replace('"version": 2', '"version": 99'), "format version 99"),
        (lambda text: "[]", "not a wasmstream checkpoint: it holds an array"),
        (
            lambda text: text.replace('"frames"', '"framez"'),
            "invalid: Object contains unknown field `framez`",
        ),
    ],
)
def test_refuses_damaged_checkpoint(tmp_path: Path, damage, needle: str) -> None:  # type: ignore[no-untyped-def]
    job = Refusal(tmp_path)
    job.ckpt.write_text(damage(job.ckpt.read_text()))
    job.before = (job.ckpt.read_bytes(), job.out.read_bytes())
    job.refused(needle=needle)


def test_existing_checkpoint_is_not_overwritten_without_resume_or_restart(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    result = wasmstream(*job.args)
    assert_clean_failure(result, ExitStatus.CHECKPOINT, "use --resume", "--restart")
    assert (job.ckpt.read_bytes(), job.out.read_bytes()) == job.before
    with open(job.input, "r+b") as fix:
        fix.seek(200_000)
        fix.write(b"x")
    restarted = wasmstream(*job.args, "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert job.out.read_bytes() == job.input.read_bytes()


def test_checkpoint_to_stdout_needs_the_flag(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.json"
    data = b"abc" * 1000
    (tmp_path / "in").write_bytes(data)
    for where in ("-", "in"):  # from a pipe and from a file, run where a sidecar could go
        plain = wasmstream("run", fixture("upper.wasm"), where, input=data, cwd=tmp_path)
        assert plain.returncode == 0 and plain.stdout == data.upper()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no checkpoint anywhere
    first = wasmstream("run", fixture("upper.wasm"), "--checkpoint", str(ckpt), input=data)
    assert first.stdout == data.upper()
    saved = read_checkpoint(ckpt)
    assert saved["output"] is None and saved["position"]["output_bytes"] == len(data)
    assert saved["status"] == "complete"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_checkpoint_to_stdout_is_at_least_once(sig: int, tmp_path: Path) -> None:
    """Interrupted, then resumed: both outputs together hold everything, in order."""
    data = random.Random(14).randbytes(400_000)
    expected = per_frame(HEX, data, 4096)
    ckpt, first_out, second_out = tmp_path / "c.json", tmp_path / "1", tmp_path / "2"
    args = ["run", fixture("hexdump.wasm"), "-", "--checkpoint", str(ckpt), "--frame-size", "4K"]
    with open(first_out, "wb") as stdout:
        process = start(
            *args, "--checkpoint-interval", "50ms", stdin=subprocess.PIPE, stdout=stdout
        )
        assert process.stdin is not None
        # Fed slowly (a save comes after a frame, once 50 ms have passed) until a checkpoint
        # past 0 is saved; the rest never comes: the run waits for input.
        sent = 0
        while not (ckpt.exists() and read_checkpoint(ckpt)["position"]["input_bytes"] > 0):
            assert sent < 200_000, "no checkpoint past 0"
            process.stdin.write(data[sent : sent + 8192])
            process.stdin.flush()
            sent += 8192
            time.sleep(0.02)
        process.send_signal(sig)
        process.stdin.close()
        process.stdin = None
        process.communicate(timeout=30)
    assert process.returncode in (ExitStatus.INTERRUPTED, -signal.SIGKILL)
    saved = read_checkpoint(ckpt)["position"]
    with open(second_out, "wb") as stdout:
        resumed = subprocess.run(
            [sys.executable, "-m", "wasmstream", *args, "--resume"],
            input=data,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert resumed.returncode == 0, resumed.stderr
    first, second = first_out.read_bytes(), second_out.read_bytes()
    assert expected.startswith(first)  # what came out before the signal was right
    assert len(first) >= saved["output_bytes"]  # ...and covered what the checkpoint says
    assert second == expected[saved["output_bytes"] :]  # the resume went on from there
    assert len(first) + len(second) >= len(expected)  # nothing missing


def test_no_checkpoint_disables_the_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        wasmstream(
            "run", fixture("upper.wasm"), "-o", str(out), "--no-checkpoint", input=b"a"
        ).returncode
        == 0
    )
    assert not (tmp_path / "out.ckpt.json").exists()


def test_resuming_with_another_engine_is_refused(tmp_path: Path) -> None:
    job = Refusal(tmp_path)
    record = json.loads(job.ckpt.read_text())
    other = "wasmer" if record["engine"] == "wasmtime" else "wasmtime"
    record["engine"] = other  # as if the job had been started with the other engine
    job.ckpt.write_text(json.dumps(record))
    job.before = (job.ckpt.read_bytes(), job.out.read_bytes())
    job.refused(needle=f"written by the {other} engine: resume it with --engine {other}")


def test_no_default_checkpoint_beside_a_device_or_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.DEVNULL)
    assert wasmstream("run", fixture("upper.wasm"), "-o", str(fifo), input=b"abc").returncode == 0
    reader.wait(timeout=10)
    assert not (tmp_path / "fifo.ckpt.json").exists()
    assert wasmstream("run", fixture("upper.wasm"), "-o", os.devnull, input=b"abc").returncode == 0
    assert not Path(os.devnull + ".ckpt.json").exists()


def remount(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], timeout=30, check=True)


def test_a_full_disk_leaves_a_checkpoint_that_resumes_exactly(
    small_disk: Path, tmp_path: Path
) -> None:
    data = random.Random(15).randbytes(3 << 20)  # 6 MiB of output for a 1 MiB disk
    source, out, ckpt = tmp_path / "in", small_disk / "out", tmp_path / "out.ckpt.json"
    source.write_bytes(data)
    args = ["run", fixture("hexdump.wasm"), str(source), "-o", str(out), "--checkpoint", str(ckpt)]
    args += ["-j", "2", "--frame-size", "16K", "--checkpoint-interval", "10ms"]
    full = wasmstream(*args)
    assert_clean_failure(full, ExitStatus.IO_ERROR, f"cannot write output {out}", "No space left")
    saved = read_checkpoint(ckpt)
    assert saved["status"] == "failed"
    done = saved["position"]
    # never more claimed than was written, and what was written is right
    assert 0 < done["output_bytes"] <= out.stat().st_size
    assert (
        out.read_bytes()[: done["output_bytes"]]
        == per_frame(HEX, data, 16384)[: done["output_bytes"]]
    )
    remount(small_disk, "16M")
    resumed = wasmstream(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == per_frame(HEX, data, 16384)


def test_a_full_disk_under_the_checkpoint_too_resumes_exactly(
    small_disk: Path, tmp_path: Path
) -> None:
    data = random.Random(16).randbytes(3 << 20)
    source, out = tmp_path / "in", small_disk / "out"  # the checkpoint beside it, on the same disk
    source.write_bytes(data)
    args = ["run", fixture("hexdump.wasm"), str(source), "-o", str(out), "-j", "2"]
    args += ["--frame-size", "16K", "--checkpoint-interval", "10ms"]
    full = wasmstream(*args)
    assert full.returncode != 0 and b"Traceback" not in full.stderr
    remount(small_disk, "16M")
    resumed = wasmstream(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == per_frame(HEX, data, 16384)


def test_a_full_disk_under_the_checkpoint_is_an_io_error(small_disk: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(random.Random(16).randbytes(3 << 20))
    out = small_disk / "out"
    full = wasmstream("run", fixture("hexdump.wasm"), str(source), "-o", str(out))
    assert_clean_failure(full, ExitStatus.IO_ERROR, "No space left on device")
