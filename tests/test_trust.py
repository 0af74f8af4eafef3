"""Trust: no run loses or corrupts data, whatever the user, the input or the system does.

Each test is a path by which a run once lost or corrupted data (or hung, or lied about it):
concurrent runs, a file that is both read and written, a stream or output that changed between
a crash and its resume, FIFOs, memory, start functions, hand-edited checkpoints, full disks,
closed descriptors, signals during compilation, the module cache. Real CLI, real files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from wasmstream.errors import ExitStatus

from conftest import PeakRSS, assert_clean_failure, fixture, spawn, wasmstream

HEAVY = fixture("heavy.wasm")
UPPER = fixture("upper.wasm")


def snapshot(*paths: Path) -> dict[Path, bytes | None]:
    return {path: path.read_bytes() if path.exists() else None for path in paths}


def checkpoint_of(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# 1. Locks ----------------------------------------------------------------------------------


def slow_run(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A run that holds its output for a while: the input comes through a pipe we keep open."""
    out = tmp_path / "out"
    process = spawn(
        ["run", UPPER, "-", "-o", str(out), "--frame-size", "4K", *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(b"first part\n" * 1000)
    process.stdin.flush()
    wait_for(lambda: (tmp_path / "out.ckpt.json.lock").exists())
    return process, out


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path: Path) -> None:
    first, out = slow_run(tmp_path)
    (tmp_path / "other").write_bytes(b"other input")
    try:
        for extra in ([], ["--restart"], ["--resume"], ["--no-checkpoint"]):
            result = wasmstream("run", UPPER, str(tmp_path / "other"), "-o", str(out), *extra)
            line = assert_clean_failure(
                result, ExitStatus.CHECKPOINT, f"output {out} ", "in use by"
            )
            assert f"PID {first.pid}" in line
    finally:
        _, stderr = first.communicate(b"last part\n", timeout=30)
    assert first.returncode == 0, stderr
    assert out.read_bytes() == b"FIRST PART\n" * 1000 + b"LAST PART\n"
    assert not (tmp_path / "out.ckpt.json.lock").exists()  # released and removed
    assert checkpoint_of(tmp_path / "out.ckpt.json")["status"] == "complete"


def test_two_runs_started_together_one_wins_and_the_output_is_whole(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 << 20)
    other = random.Random(2).randbytes(3 << 20)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(other)
    out = tmp_path / "out"
    runs = [
        spawn(
            ["run", HEAVY, str(tmp_path / name), "-o", str(out), "-j", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    results = [(run.wait(timeout=60), run.communicate(timeout=10)[1]) for run in runs]
    statuses = sorted(status for status, _ in results)
    assert statuses == [0, ExitStatus.CHECKPOINT], results
    winner = data if results[0][0] == 0 else other
    reference = tmp_path / "reference"
    assert wasmstream("run", HEAVY, "-o", str(reference), "-", input=winner).returncode == 0
    assert out.read_bytes() == reference.read_bytes()


# 2. The same file read and written ---------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        ["{in}", "-o", "{in}"],
        ["{in}", "-o", "{out}", "--checkpoint", "{out}"],
        ["{in}", "-o", "{out}", "--dead-letter", "{in}"],
        ["{in}", "-o", "{out}", "--drop-log", "{out}"],
        ["{in}", "-o", "{out}", "--checkpoint", "{link}"],  # the checkpoint, through a link
    ],
)
def test_a_file_written_that_is_also_read_or_written_is_refused(
    tmp_path: Path, arguments: list[str]
) -> None:
    source, out, link = tmp_path / "in", tmp_path / "out", tmp_path / "link"
    source.write_bytes(b"data\n" * 100)
    out.write_bytes(b"old output")
    link.symlink_to(out)
    before = snapshot(source, out)
    names = {"in": str(source), "out": str(out), "link": str(link)}
    result = wasmstream("run", UPPER, *(a.format(**names) for a in arguments))
    assert_clean_failure(result, ExitStatus.USAGE, "is the same file as")
    assert snapshot(source, out) == before
    assert not (tmp_path / "out.ckpt.json").exists()


def test_stdin_appended_to_itself_is_refused(tmp_path: Path) -> None:
    """`wasmstream run m < f >> f` would grow f until the disk is full."""
    data = tmp_path / "f"
    data.write_bytes(b"line\n" * 1000)
    result = subprocess.run(
        ["sh", "-c", f'"$0" -m wasmstream run {UPPER} < "$1" >> "$1"', _python(), str(data)],
        capture_output=True,
        timeout=30,
    )
    assert_clean_failure(result, ExitStatus.USAGE, "input file is output file")
    assert data.read_bytes() == b"line\n" * 1000


def _python() -> str:
    import sys

    return sys.executable


# 3. A stream has no inode: it is recognised by its bytes ------------------------------------


def interrupted_stdin_run(tmp_path: Path, data: bytes) -> Path:
    """A checkpointed run from stdin, stopped by SIGKILL after part of `data`."""
    out = tmp_path / "out"
    process = spawn(
        ["run", HEAVY, "-", "-o", str(out), "--frame-size", "4K", "--checkpoint-every", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    process.stdin.write(data[: len(data) // 2])
    process.stdin.flush()
    ckpt = tmp_path / "out.ckpt.json"
    wait_for(lambda: ckpt.exists() and checkpoint_of(ckpt)["position"]["input_bytes"] > 70_000)
    process.kill()
    process.communicate(timeout=10)
    return out


@pytest.mark.parametrize("replacement", ["empty", "shorter", "other bytes"])
def test_resuming_from_a_different_stream_is_refused(tmp_path: Path, replacement: str) -> None:
    data = random.Random(3).randbytes(400_000)
    out = interrupted_stdin_run(tmp_path, data)
    ckpt = tmp_path / "out.ckpt.json"
    done = checkpoint_of(ckpt)["position"]["input_bytes"]
    other = {
        "empty": b"",
        "shorter": data[: done - 1],
        "other bytes": data[:1000] + bytes(done - 2000) + data[done - 1000 :],
    }[replacement]
    before = snapshot(out, ckpt)
    result = wasmstream(
        "run", HEAVY, "-", "-o", str(out), "--frame-size", "4K", "--resume", input=other
    )
    assert_clean_failure(result, ExitStatus.CHECKPOINT)
    assert snapshot(out, ckpt) == before
    # a resume from the right stream still completes, exactly once
    resumed = wasmstream(
        "run", HEAVY, "-", "-o", str(out), "--frame-size", "4K", "--resume", input=data
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = wasmstream("run", HEAVY, "--frame-size", "4K", input=data).stdout
    assert out.read_bytes() == reference


def test_a_different_file_on_stdin_is_refused_too(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(400_000)
    out = interrupted_stdin_run(tmp_path, data)
    done = checkpoint_of(tmp_path / "out.ckpt.json")["position"]["input_bytes"]
    other = tmp_path / "other"
    other.write_bytes(data[: done - 5000] + b"x" * 5000 + data[done:])
    with open(other, "rb") as stdin:
        result = subprocess.run(
            [
                _python(),
                "-m",
                "wasmstream",
                "run",
                HEAVY,
                "-o",
                str(out),
                "--frame-size",
                "4K",
                "--resume",
            ],
            stdin=stdin,
            capture_output=True,
            timeout=60,
        )
    assert_clean_failure(result, ExitStatus.CHECKPOINT, "differ from those recorded")


def killed_run(
    tmp_path: Path, size: int = 300_000, seed: int = 7, past_output: int = 0
) -> tuple[Path, Path, Path]:
    """A checkpointed run to a file, SIGKILLed once its checkpoint holds more than 20,000 input
    bytes and `past_output` output bytes: (input, output, checkpoint)."""
    source, out, ckpt = tmp_path / "in", tmp_path / "out", tmp_path / "out.ckpt.json"
    source.write_bytes(random.Random(seed).randbytes(size))
    process = spawn(
        [
            "run",
            HEAVY,
            str(source),
            "-o",
            str(out),
            "--frame-size",
            "4K",
            "--checkpoint-every",
            "1",
            "-j",
            "1",
        ],
        stderr=subprocess.DEVNULL,
    )

    def far_enough() -> bool:
        position = checkpoint_of(ckpt)["position"] if ckpt.exists() else None
        return bool(
            position and position["input_bytes"] > 20_000 and position["output_bytes"] > past_output
        )

    wait_for(far_enough)
    process.kill()
    process.wait(timeout=10)
    return source, out, ckpt


# 4. The output's identity ------------------------------------------------------------------


def test_an_output_replaced_by_a_link_to_another_file_is_not_touched(tmp_path: Path) -> None:
    source, out, _ = killed_run(tmp_path, size=2 << 20, seed=5)
    precious = tmp_path / "precious"
    precious.write_bytes(b"p" * (4 << 20))
    out.unlink()
    out.symlink_to(precious)
    result = wasmstream(
        "run", HEAVY, str(source), "-o", str(out), "-j", "1", "--frame-size", "4K", "--resume"
    )
    assert_clean_failure(result, ExitStatus.CHECKPOINT, "not the file recorded")
    assert precious.read_bytes() == b"p" * (4 << 20)


def test_an_output_rewritten_in_place_is_not_cut(tmp_path: Path) -> None:
    source, out, ckpt = killed_run(tmp_path, size=2 << 20, seed=6, past_output=8192)
    kept = checkpoint_of(ckpt)["position"]["output_bytes"]
    with open(out, "r+b") as rewrite:  # same inode, other bytes just before the kept offset
        rewrite.seek(kept - 10)
        rewrite.write(b"0123456789")
    before = snapshot(out)
    result = wasmstream("run", HEAVY, str(source), "-o", str(out), "--frame-size", "4K", "--resume")
    assert_clean_failure(result, ExitStatus.CHECKPOINT, "not this run's output")
    assert snapshot(out) == before


# 5. A named FIFO as input ------------------------------------------------------------------


def test_a_fifo_input_with_an_output_file_is_read_once_like_a_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = b"through a fifo\n" * 5000

    def feed() -> None:
        with open(fifo, "wb") as writer:
            writer.write(data)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    out = tmp_path / "out"
    result = wasmstream("run", UPPER, str(fifo), "-o", str(out), timeout=30)
    feeder.join(timeout=5)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data.upper()
    saved = checkpoint_of(tmp_path / "out.ckpt.json")
    assert saved["status"] == "complete" and saved["inputs"][0]["regular"] is False
    assert saved["position"]["stream_head"]["length"] == 65536


# 6. Memory ---------------------------------------------------------------------------------


def test_a_deep_queue_of_large_frames_costs_nothing_for_a_small_input(tmp_path: Path) -> None:
    args = [
        "run",
        fixture("identity.wasm"),
        "-j",
        "2",
        "--queue-depth",
        "100",
        "--frame-size",
        "16MiB",
    ]
    process = spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = PeakRSS(process.pid)
    stdout, stderr = process.communicate(b"abc", timeout=60)
    assert (process.returncode, stdout) == (0, b"abc"), stderr
    assert peak.result() < 250 << 20  # it was 1.7 GB: one 16 MiB buffer per queue slot


def test_a_frame_that_cannot_fit_in_guest_memory_is_refused_at_once() -> None:
    started = time.monotonic()
    result = wasmstream("run", UPPER, "--frame-size", "5G", input=b"abc")
    assert_clean_failure(result, ExitStatus.USAGE, "cannot fit in guest memory")
    result = wasmstream("run", UPPER, "--frame-size", "64M", "--max-memory", "32M", input=b"a")
    assert_clean_failure(result, ExitStatus.USAGE, "limited to 32MiB")
    assert time.monotonic() - started < 20


# 7. Modules with a start function ----------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_module_with_a_start_function_runs_under_the_limits(jobs: str) -> None:
    data = b"abcdefgh"
    result = wasmstream(
        "run",
        fixture("started.wasm"),
        "--frame-size",
        "4",
        "-j",
        jobs,
        "--timeout",
        "5s",
        input=data,
    )
    assert (result.returncode, result.stdout) == (0, b">abcd>efgh"), result.stderr


@pytest.mark.wasmtime_only  # fuel
def test_a_start_function_out_of_fuel_fails_as_fuel() -> None:
    result = wasmstream("run", fixture("started.wasm"), "--fuel", "100", input=b"a")
    assert_clean_failure(result, ExitStatus.OUT_OF_FUEL, "start function", "fuel")
    ok = wasmstream("run", fixture("started.wasm"), "--fuel", "10000000", input=b"a")
    assert (ok.returncode, ok.stdout) == (0, b">a")


@pytest.mark.wasmtime_only  # the start function runs inside the worker process under wasmer
def test_a_start_function_that_never_returns_times_out_and_inspect_says_so() -> None:
    result = wasmstream("run", fixture("startloop.wasm"), "--timeout", "300ms", input=b"a")
    assert_clean_failure(result, ExitStatus.TIMEOUT, "start function", "timed out")
    report = wasmstream("inspect", fixture("startloop.wasm"))
    assert report.returncode == ExitStatus.INVALID_MODULE
    assert b"ready to run" not in report.stdout
    assert b"cannot run: while starting an instance" in report.stdout


# 8. Checkpoints edited by hand -------------------------------------------------------------


def _set(path: list[str], value: object):  # type: ignore[no-untyped-def]
    def edit(record: dict) -> None:  # type: ignore[type-arg]
        for key in path[:-1]:
            record = record[key]
        record[path[-1]] = value

    return edit


def _nul_path(record: dict) -> None:  # type: ignore[type-arg]
    record["inputs"][0]["path"] += "\u0000.txt"


def _no_output_digest(record: dict) -> None:  # type: ignore[type-arg]
    record["position"]["output_tail"] = None


def _stream_now(record: dict) -> None:  # type: ignore[type-arg]
    record["inputs"][0]["regular"] = False


def _shift_first_offset(record: dict) -> None:  # type: ignore[type-arg]
    record["position"]["per_input"][0] += 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_set(["command", "jobs"], 0), "jobs"),
        (_set(["command", "queue_depth"], -3), "queue_depth"),
        (_set(["options", "frame_size"], 0), "frame_size"),
        (_set(["position", "per_input"], []), "per-input offsets"),
        (_shift_first_offset, "add up to"),
        (_set(["position", "output_bytes"], -5), "output_bytes"),
        (_set(["position", "input_bytes"], -4096), "input_bytes"),
        (_set(["options", "framing"], "paragraphs"), "framing"),
        (_set(["options", "overload"], "sometimes"), "overload"),
        (_set(["command", "checkpoint_interval"], 0), "checkpoint_interval"),
        (_set(["status"], "sleeping"), "status"),
        (_nul_path, "holds a NUL byte"),
        (_no_output_digest, "no digest"),
        (_stream_now, "was a stream"),
    ],
)
def test_a_checkpoint_that_breaks_a_rule_is_refused_untouched(
    tmp_path: Path,
    edit,
    needle: str,  # type: ignore[no-untyped-def]
) -> None:
    source, out, ckpt = killed_run(tmp_path)
    record = checkpoint_of(ckpt)
    edit(record)
    ckpt.write_text(json.dumps(record))
    before = snapshot(out, ckpt)
    for command in (
        ["resume", "--checkpoint", str(ckpt)],
        ["run", HEAVY, str(source), "-o", str(out), "--frame-size", "4K", "--resume"],
    ):
        result = wasmstream(*command, timeout=30)
        assert_clean_failure(result, ExitStatus.CHECKPOINT, needle)
        assert snapshot(out, ckpt) == before


# 9. A frame whose deallocator traps --------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_frame_whose_deallocator_traps_writes_nothing(jobs: str) -> None:
    data = b"aaaabbbbcccc"
    failed = wasmstream("run", fixture("badfree.wasm"), "--frame-size", "4", "-j", jobs, input=data)
    assert failed.returncode == ExitStatus.GUEST_ERROR
    assert failed.stdout == b"aaaa"  # frame 1's output never appears
    skipped = wasmstream(
        "run",
        fixture("badfree.wasm"),
        "--frame-size",
        "4",
        "-j",
        jobs,
        "--on-error",
        "skip",
        input=data,
    )
    assert (skipped.returncode, skipped.stdout) == (ExitStatus.FRAMES_FAILED, b"aaaacccc")


# 10. An oversized record on an endless input -----------------------------------------------


def test_an_oversized_record_on_an_endless_input_is_reported_at_once() -> None:
    result = wasmstream(
        "run", UPPER, "/dev/zero", "--framing", "lines", "--frame-size", "4K", timeout=30
    )
    assert_clean_failure(result, ExitStatus.FRAMING, "record at offset 0 is at least 4097 bytes")


# 11. A checkpoint that cannot be saved -----------------------------------------------------


def test_a_checkpoint_in_a_missing_folder_fails_before_the_output_is_touched(
    tmp_path: Path,
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"data\n" * 100)
    out.write_bytes(b"keep me")
    result = wasmstream(
        "run",
        UPPER,
        str(source),
        "-o",
        str(out),
        "--checkpoint",
        str(tmp_path / "missing" / "c.json"),
    )
    assert_clean_failure(result, ExitStatus.IO_ERROR, "missing", "No such file or directory")
    assert out.read_bytes() == b"keep me"


def test_an_output_name_that_is_not_utf8_is_checkpointed_and_resumed(tmp_path: Path) -> None:
    name = os.fsdecode(bytes(tmp_path) + b"/out-\xff\xfe")
    source = tmp_path / "in"
    source.write_bytes(b"data\n" * 1000)
    first = wasmstream("run", UPPER, str(source), "-o", name)
    assert first.returncode == 0, first.stderr
    ckpt = name + ".ckpt.json"
    assert checkpoint_of(Path(ckpt))["status"] == "complete"
    show = wasmstream("checkpoint", "show", ckpt)
    assert show.returncode == 0, show.stderr
    again = wasmstream("resume", "--checkpoint", ckpt)
    assert again.returncode == 0, again.stderr
    assert Path(name).read_bytes() == b"DATA\n" * 1000


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs: a disk that fills up (needs root and mount; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_cleanly_and_the_run_resumes_exactly(
    tmp_path: Path, small_disk: Path
) -> None:
    data = random.Random(8).randbytes(3 << 20)
    source = tmp_path / "in"
    source.write_bytes(data)
    out = small_disk / "out"
    args = [
        "run",
        HEAVY,
        str(source),
        "-o",
        str(out),
        "--frame-size",
        "16K",
        "--checkpoint-every",
        "4",
        "--dead-letter",
        str(small_disk / "dead"),
    ]
    full = wasmstream(*args)
    assert_clean_failure(full, ExitStatus.IO_ERROR, "No space left on device")
    saved = checkpoint_of(small_disk / "out.ckpt.json")
    assert saved["status"] == "failed" or saved["position"]["output_bytes"] <= out.stat().st_size
    # move everything to a disk with room, and continue
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    for name in ("out", "out.ckpt.json"):
        shutil.copy(small_disk / name, roomy / name)
    record = checkpoint_of(roomy / "out.ckpt.json")
    record["output"] = str(roomy / "out")
    (roomy / "out.ckpt.json").write_text(json.dumps(record))
    resumed = wasmstream(
        "run",
        HEAVY,
        str(source),
        "-o",
        str(roomy / "out"),
        "--frame-size",
        "16K",
        "--resume",
        "--force",
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = wasmstream("run", HEAVY, "--frame-size", "16K", input=data).stdout
    assert (roomy / "out").read_bytes() == reference


# 12. Closed standard descriptors -----------------------------------------------------------


def shell(command: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", command, _python(), *args], capture_output=True, timeout=60)


def test_a_closed_stdout_with_an_output_file_is_no_problem(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"data\n" * 100)
    result = shell(f'"$0" -m wasmstream run {UPPER} "$1" -o "$2" >&-', str(source), str(out))
    assert (result.returncode, result.stderr) == (0, b"")
    assert out.read_bytes() == b"DATA\n" * 100
    assert checkpoint_of(tmp_path / "out.ckpt.json")["status"] == "complete"


def test_a_closed_stdout_as_the_output_is_an_error() -> None:
    result = shell(f'echo data | "$0" -m wasmstream run {UPPER} >&-')
    assert_clean_failure(result, ExitStatus.IO_ERROR, "standard output", "closed")


def test_a_closed_stderr_keeps_errors_out_of_the_output() -> None:
    result = shell(f'echo data | "$0" -m wasmstream run {fixture("noexports.wasm")} 2>&-')
    assert result.returncode == ExitStatus.INVALID_MODULE
    assert result.stdout == b""


def test_a_closed_stdin_is_a_usage_error() -> None:
    result = shell(f'"$0" -m wasmstream run {UPPER} <&-')
    assert_clean_failure(result, ExitStatus.USAGE, "standard input is closed")


# 13. Signals while compiling, and the module cache -----------------------------------------


def big_module(path: Path, functions: int) -> None:
    import wasmtime

    body = "(local.get 0) " + "(i32.add (i32.const 1)) " * 40
    funcs = "\n".join(
        f'(func (export "f{n}") (param i32) (result i32) {body})' for n in range(functions)
    )
    path.write_bytes(wasmtime.wat2wasm(f"(module {funcs})"))


@pytest.mark.wasmtime_only  # wasmer compiles while holding the GIL
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_long_compilation_at_once(tmp_path: Path, sig: int, status: int) -> None:
    module = tmp_path / "big.wasm"
    big_module(module, 30_000)
    process = spawn(
        ["run", str(module), "--no-cache"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.8)  # well inside the compilation (several seconds for this module)
    assert process.poll() is None, "compiled too fast for this test to mean anything"
    sent = time.monotonic()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 1.5
    assert process.returncode == status, stderr
    assert stderr.decode().splitlines() == ["wasmstream: interrupted"]


@pytest.mark.wasmtime_only  # the cache holds wasmtime's serialized modules
def test_the_cache_is_private_and_an_entry_never_runs_as_another_module(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"WASMSTREAM_CACHE_DIR": str(cache)}
    assert wasmstream("run", UPPER, input=b"a", env=env).stdout == b"A"
    assert wasmstream("run", fixture("identity.wasm"), input=b"a", env=env).stdout == b"a"
    assert cache.stat().st_mode & 0o777 == 0o700
    upper_entry, identity_entry = sorted(cache.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    shutil.copy(upper_entry, identity_entry)  # upper's machine code under identity's name
    assert wasmstream("run", fixture("identity.wasm"), input=b"a", env=env).stdout == b"a"
    os.chmod(cache, 0o777)  # a folder others may write to is not trusted at all
    shutil.copy(upper_entry, identity_entry)
    assert wasmstream("run", fixture("identity.wasm"), input=b"a", env=env).stdout == b"a"


# 14 and 15. Running again; stopping ---------------------------------------------------------


def test_running_the_same_command_again_starts_over(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"first\n" * 100)
    assert wasmstream("run", UPPER, str(source), "-o", str(out)).returncode == 0
    source.write_bytes(b"second\n" * 100)
    again = wasmstream("run", UPPER, str(source), "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == b"SECOND\n" * 100
    assert b"starting over" in again.stderr and len(again.stderr.splitlines()) == 1


def test_an_unfinished_checkpoint_still_needs_resume_or_restart(tmp_path: Path) -> None:
    source, out, ckpt = killed_run(tmp_path)
    before = snapshot(out, ckpt)
    result = wasmstream("run", HEAVY, str(source), "-o", str(out), "--frame-size", "4K")
    assert_clean_failure(result, ExitStatus.CHECKPOINT, "--resume", "--restart")
    assert snapshot(out, ckpt) == before


def test_quiet_ctrl_c_still_says_how_to_continue(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(random.Random(9).randbytes(6 << 20))
    out = tmp_path / "out"
    process = spawn(
        [
            "run",
            HEAVY,
            str(source),
            "-o",
            str(out),
            "-q",
            "-j",
            "1",
            "--frame-size",
            "4K",
            "--checkpoint-every",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    ckpt = tmp_path / "out.ckpt.json"
    wait_for(lambda: ckpt.exists())
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitStatus.INTERRUPTED
    saved = checkpoint_of(ckpt)
    assert saved["status"] == "interrupted"
    done = saved["position"]["input_bytes"]
    assert stderr.decode().splitlines() == [
        f"wasmstream: interrupted at {done} input bytes; continue with: "
        f"wasmstream resume --checkpoint {ckpt}"
    ]
    resumed = wasmstream("resume", "--checkpoint", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr
    reference = wasmstream("run", HEAVY, "--frame-size", "4K", input=source.read_bytes()).stdout
    assert out.read_bytes() == reference


# The crash suite ---------------------------------------------------------------------------


def ended_or_saved(process: subprocess.Popen[bytes], ckpt: Path, before: int) -> bool:
    return process.poll() is not None or progressed(ckpt, before)


def progressed(ckpt: Path, before: int) -> bool:
    try:
        return bool(checkpoint_of(ckpt)["position"]["input_bytes"] > before)
    except (OSError, ValueError):
        return False


def test_ten_random_kills_at_two_jobs_give_the_uninterrupted_output(tmp_path: Path) -> None:
    data = random.Random(10).randbytes(24 << 20)
    source = tmp_path / "in"
    source.write_bytes(data)
    out = tmp_path / "out"
    args = [
        "run",
        HEAVY,
        str(source),
        "-o",
        str(out),
        "-j",
        "2",
        "--frame-size",
        "64K",
        "--checkpoint-interval",
        "50ms",
    ]
    chance = random.Random(11)
    resumed_past_zero = 0
    ckpt = tmp_path / "out.ckpt.json"
    for _ in range(10):
        before = checkpoint_of(ckpt)["position"]["input_bytes"] if ckpt.exists() else 0
        resumed_past_zero += before > 0
        process = spawn([*args, "--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # killed at a random moment after this run has saved progress of its own, however slow
        # the machine is to start it
        wait_for(partial(ended_or_saved, process, ckpt, before), timeout=60)
        time.sleep(chance.uniform(0.0, 0.25))
        process.kill()
        process.communicate(timeout=10)
    final = wasmstream(*args, "--resume", timeout=120)
    assert final.returncode == 0, final.stderr
    assert resumed_past_zero >= 9  # every round but the first resumed from a checkpoint
    reference = wasmstream("run", HEAVY, "--frame-size", "64K", str(source), timeout=120).stdout
    assert out.read_bytes() == reference


# Found by a hostile tester of the fixes above --------------------------------------------


def test_a_dangling_link_cannot_put_dead_letters_into_the_output(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"hello world\nbang!here\nmore data\n")
    (tmp_path / "dl.json").symlink_to(tmp_path / "out.txt")  # out.txt does not exist yet
    result = wasmstream(
        "run",
        fixture("trap.wasm"),
        str(source),
        "-o",
        str(tmp_path / "out.txt"),
        "--frame-size",
        "10",
        "--on-error",
        "skip",
        "--dead-letter",
        str(tmp_path / "dl.json"),
    )
    assert_clean_failure(result, ExitStatus.USAGE, "is the same file as the output")
    assert not (tmp_path / "out.txt").exists()


def test_a_checkpoint_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"hello\n")
    os.mkfifo(tmp_path / "ck.fifo")
    for extra in ([], ["--restart"]):
        result = wasmstream(
            "run",
            UPPER,
            str(source),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tmp_path / "ck.fifo"),
            *extra,
            timeout=20,
        )
        assert_clean_failure(result, ExitStatus.USAGE, "is not a regular file")
    assert (tmp_path / "ck.fifo").is_fifo()


def test_output_through_dev_stdout_keeps_no_sidecar_and_appends(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"kept\n")
    result = shell(f'echo data | "$0" -m wasmstream run {UPPER} -o /dev/stdout >> "$1"', str(log))
    assert (result.returncode, result.stderr) == (0, b"")
    assert log.read_bytes() == b"kept\nDATA\n"
    assert not Path("/dev/stdout.ckpt.json").exists()


def test_stdin_that_starts_after_a_header_resumes_from_there(tmp_path: Path) -> None:
    lines = b"".join(b"line %07d abcdefghijklmnopqrstuvwxyz\n" % n for n in range(120_000))
    data = tmp_path / "data.txt"
    data.write_bytes(b"HEADER\n" + lines)
    ckpt, out = tmp_path / "c.json", tmp_path / "out.txt"
    command = (
        f'{{ read -r h; exec "$0" -m wasmstream run {HEAVY} -j 1 --frame-size 4K '
        f'--checkpoint {ckpt} --checkpoint-every 1 -o {out} "$@"; }} < {data}'
    )
    process = subprocess.Popen(["sh", "-c", command, _python()], stderr=subprocess.DEVNULL)
    wait_for(lambda: progressed(ckpt, 8192))
    process.kill()
    process.wait(timeout=10)
    resumed = shell(command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == wasmstream("run", HEAVY, "--frame-size", "4K", input=lines).stdout


def test_at_least_once_to_a_pipe_whose_reader_goes_away(tmp_path: Path) -> None:
    """`| head -c` closes the pipe with much of what was written still unread in it: the
    checkpoint must not count those bytes as delivered."""
    data = random.Random(12).randbytes(3 << 20)
    source, ckpt = tmp_path / "in", tmp_path / "c.json"
    source.write_bytes(data)
    expected = data.upper()
    first = shell(
        f'"$0" -m wasmstream run {UPPER} "$1" --checkpoint "$2" | head -c 100000',
        str(source),
        str(ckpt),
    )
    assert first.stdout == expected[:100_000]
    saved = checkpoint_of(ckpt)
    assert saved["status"] == "interrupted"
    delivered = saved["position"]["output_bytes"]
    assert 0 < delivered <= 100_000  # not the megabyte the pipe still held
    rest = wasmstream("run", UPPER, str(source), "--checkpoint", str(ckpt), "--resume")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout == expected[delivered:]


def test_two_runs_appending_to_one_file_on_stdout_do_not_interleave(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "ab") as appended:
        first = spawn(
            ["run", UPPER, "--frame-size", "6"],
            stdin=subprocess.PIPE,
            stdout=appended,
            stderr=subprocess.PIPE,
        )
        assert first.stdin is not None
        first.stdin.write(b"aaaa1\n")
        first.stdin.flush()
        time.sleep(0.5)
        second = subprocess.run(
            [_python(), "-m", "wasmstream", "run", UPPER],
            input=b"cccc\n",
            stdout=appended,
            stderr=subprocess.PIPE,
            timeout=30,
        )
        _, stderr = first.communicate(b"aaaa2\n", timeout=30)
    assert second.returncode == ExitStatus.CHECKPOINT
    assert b"standard output (a file) is in use" in second.stderr
    assert first.returncode == 0, stderr
    assert out.read_bytes() == b"AAAA1\nAAAA2\n"


def test_a_link_to_a_busy_checkpoint_shares_its_lock(tmp_path: Path) -> None:
    first, _ = slow_run(tmp_path)
    (tmp_path / "alias.json").symlink_to(tmp_path / "out.ckpt.json")
    try:
        other = wasmstream("run", UPPER, "--checkpoint", str(tmp_path / "alias.json"), input=b"x")
        assert_clean_failure(other, ExitStatus.CHECKPOINT, "in use by")
    finally:
        first.communicate(b"", timeout=30)


def test_sigterm_while_pool_instances_start_is_an_interruption(tmp_path: Path) -> None:
    source = tmp_path / "hi.txt"
    source.write_bytes(b"hi\n")
    process = spawn(
        ["run", fixture("startloop.wasm"), str(source), "-j", "2", "-o", str(tmp_path / "out")],
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == ExitStatus.TERMINATED, stderr
    assert checkpoint_of(tmp_path / "out.ckpt.json")["status"] == "interrupted"


@pytest.mark.wasmer_only
def test_sigterm_stops_wasmer_workers_stuck_in_a_guest(tmp_path: Path) -> None:
    source = tmp_path / "bang.txt"
    source.write_bytes(b"a" * 100_000 + b"!" + b"b" * 100_000)
    process = spawn(
        [
            "run",
            fixture("hostile.wasm"),
            str(source),
            "--function",
            "spin",
            "--frame-size",
            "4K",
            "-j",
            "2",
            "-o",
            str(tmp_path / "out"),
        ],
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == ExitStatus.TERMINATED, stderr
    assert time.monotonic() - sent < 5


def test_a_non_utf8_input_name_resumes(tmp_path: Path) -> None:
    name = os.fsdecode(bytes(tmp_path) + b"/in-\xfe")
    Path(name).write_bytes(b"data\n" * 100)
    out = tmp_path / "out"
    assert wasmstream("run", UPPER, name, "-o", str(out)).returncode == 0
    again = wasmstream("run", UPPER, name, "-o", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    show = wasmstream("checkpoint", "show", str(tmp_path / "out.ckpt.json"))
    assert b"in-\\xfe" in show.stdout


def test_a_full_checkpoint_folder_at_start_is_an_io_error(tmp_path: Path, small_disk: Path) -> None:
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={small_disk / 'fill'}", "bs=1k", "count=1024"],
        capture_output=True,
    )
    source = tmp_path / "in"
    source.write_bytes(b"data\n")
    result = wasmstream(
        "run",
        UPPER,
        str(source),
        "-o",
        str(tmp_path / "out"),
        "--checkpoint",
        str(small_disk / "c.json"),
    )
    assert_clean_failure(result, ExitStatus.IO_ERROR, "No space left on device")


@pytest.mark.wasmtime_only  # the cache holds wasmtime's serialized modules
def test_a_fifo_in_the_cache_cannot_hang_a_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"WASMSTREAM_CACHE_DIR": str(cache)}
    assert wasmstream("run", UPPER, input=b"a", env=env).stdout == b"A"
    (entry,) = cache.iterdir()
    entry.unlink()
    os.mkfifo(entry)
    result = wasmstream("run", UPPER, input=b"a", env=env, timeout=20)
    assert (result.returncode, result.stdout) == (0, b"A")
