"""What the person at the terminal sees: progress, stats, inspect, checkpoint show, cache."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from wasmstream.cli.progress import Snapshot, terminal_line
from wasmstream.engines.cache import HEADER, header_for
from wasmstream.errors import ExitStatus

from conftest import FIXTURES, assert_clean_failure, fixture, spawn, wasmstream


def test_progress_in_a_real_terminal_updates_and_leaves_stdout_clean(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    primary, secondary = pty.openpty()
    process = spawn(
        [
            "run",
            fixture("upper.wasm"),
            "-j",
            "2",
            "--frame-size",
            "16K",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(secondary)
    assert process.stdin is not None and process.stdout is not None
    screen = b""
    output = bytearray()
    for n in range(0, len(data), 256 << 10):  # feed slowly: ~1.5 s, several refreshes
        process.stdin.write(data[n : n + (256 << 10)])
        process.stdin.flush()
        time.sleep(0.1)
        while select.select([primary], [], [], 0)[0]:
            screen += os.read(primary, 65536)
        while select.select([process.stdout], [], [], 0)[0]:
            chunk = os.read(process.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            output += chunk
    process.stdin.close()
    process.stdin = None  # closed: communicate() has nothing to send
    rest, _ = process.communicate(timeout=30)
    output += rest
    assert process.returncode == 0
    while select.select([primary], [], [], 0.2)[0]:
        try:
            screen += os.read(primary, 65536)
        except OSError:
            break
    os.close(primary)
    text = screen.decode(errors="replace")
    assert "wasmstream" in text
    assert text.count("frames") >= 3, text  # it was redrawn as the run went on
    assert "queue" in text
    assert bytes(output) == data.upper()  # progress never touched stdout


def test_no_progress_when_stderr_is_not_a_terminal_unless_forced() -> None:
    quiet = wasmstream("run", fixture("upper.wasm"), input=b"abc")
    assert quiet.stderr == b""
    forced = wasmstream("run", fixture("upper.wasm"), "--progress", input=b"abc")
    assert forced.stdout == b"ABC"
    assert b"wasmstream" in forced.stderr and b"1 frame," in forced.stderr


def in_terminal(
    args: list[str],
    *,
    stdin_terminal: bool = False,
    stdout_terminal: bool = False,
    data: bytes = b"",
    typed: bytes = b"",
    columns: int = 80,
) -> tuple[str, bytes, int]:
    """Run the CLI with stderr (and stdin, stdout if asked) on a real pseudo-terminal of
    `columns` columns: what the screen got, what stdout got (when a pipe), the exit status."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    process = spawn(
        args,
        stdin=secondary if stdin_terminal else subprocess.PIPE,
        stdout=secondary if stdout_terminal else subprocess.PIPE,
        stderr=secondary,
        env={**env, "TERM": "xterm"},
    )
    os.close(secondary)
    screen = bytearray()
    reader = threading.Thread(target=drain, args=(primary, screen))  # a full terminal blocks
    reader.start()
    if stdin_terminal:
        os.write(primary, typed)
        output = process.communicate(timeout=60)[0] or b""
    else:
        output = process.communicate(data, timeout=60)[0] or b""
    reader.join(timeout=10)
    os.close(primary)
    return screen.decode(errors="replace"), output, process.returncode


def drain(primary: int, screen: bytearray) -> None:
    """Read the terminal until its other side is closed by every process holding it."""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the other side is closed
            return
        if not chunk:
            return
        screen += chunk


def test_no_automatic_progress_over_data_shown_on_the_same_terminal() -> None:
    screen, _, status = in_terminal(
        ["run", fixture("upper.wasm")], stdout_terminal=True, data=b"abc\n" * 1000
    )
    assert status == 0
    assert "ABC" in screen and "wasmstream" not in screen, screen
    # to a file, the same terminal shows progress again
    screen, _, _ = in_terminal(
        ["run", fixture("upper.wasm"), "-o", os.devnull], stdout_terminal=True, data=b"abc"
    )
    assert "wasmstream" in screen and "frame" in screen, screen


def test_progress_fits_an_80_column_terminal(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(os.urandom(4 << 20))
    screen, _, status = in_terminal(
        ["run", fixture("upper.wasm"), str(source), "-o", os.devnull, "--frame-size", "4K",
         "-j", "2"],
    )  # fmt: skip
    assert status == 0, screen
    drawn = [line.replace("\x1b[K", "") for line in re.split(r"[\r\n]", screen) if line]
    assert any("[####" in line and "100%" in line for line in drawn), screen  # a bar, finished
    assert max(map(len, drawn)) < 80, drawn


@pytest.mark.parametrize("columns", [20, 40, 60, 80, 100, 200])
def test_every_progress_line_is_narrower_than_its_terminal(columns: int) -> None:
    widest = Snapshot(
        done=123_456_789_012, total=987_654_321_098, speed=12_345_678.9, frames=123_456_789,
        workers=64, queue=(128, 128), failed=12_345, dropped=67_890,
    )  # fmt: skip
    line = terminal_line(widest, columns)
    assert len(line) < columns and line.startswith("wasmstream"), line
    if columns >= 80:
        assert "%" in line and "failed" in line and "dropped" in line, line


def test_progress_to_a_file_is_plain_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    source = tmp_path / "in"
    source.write_bytes(os.urandom(1 << 20))
    with log.open("wb") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", "wasmstream", "run", fixture("upper.wasm"), str(source),
             "-o", os.devnull, "--progress"],
            stderr=stderr, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text and "#" not in text, repr(text)
    lines = text.splitlines()
    assert lines and all(line.startswith("wasmstream: ") for line in lines), lines
    assert "100%, 1.0 MiB of 1.0 MiB" in lines[-1], lines


def test_one_hint_when_reading_the_terminal() -> None:
    screen, output, status = in_terminal(
        ["run", fixture("upper.wasm")], stdin_terminal=True, typed=b"abc\n\x04"
    )
    assert (status, output) == (0, b"ABC\n"), screen
    assert screen.count("reading the input from this terminal") == 1, screen
    assert "Ctrl-D" in screen
    # from a pipe, nothing is said
    quiet = wasmstream("run", fixture("upper.wasm"), input=b"abc")
    assert quiet.stderr == b""


def test_quiet_silences_notices_but_not_errors(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"data")
    args = [
        "run",
        fixture("upper.wasm"),
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "--resume",
    ]
    assert wasmstream(*args).returncode == 0
    assert b"nothing new" in wasmstream(*args).stderr
    assert wasmstream(*args, "-q").stderr == b""
    failed = wasmstream("run", fixture("trap.wasm"), "-q", input=b"!")
    assert_clean_failure(failed, ExitStatus.GUEST_ERROR, "guest trapped")


def test_stats_on_stderr_and_as_json(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    data = b"x" * 300_000
    result = wasmstream(
        "run",
        fixture("hexdump.wasm"),
        "--stats",
        "--stats-json",
        str(stats_file),
        "--frame-size",
        "64K",
        input=data,
    )
    assert result.returncode == 0
    text = result.stderr.decode()
    for label in (
        "frames",
        "bytes",
        "elapsed",
        "input wait",
        "in guest",
        "output wait",
        "checkpoints",
    ):
        assert f"wasmstream: {label}" in text
    stats = json.loads(stats_file.read_text())
    assert stats["frames"] == 5 and stats["bytes_in"] == 300_000 and stats["bytes_out"] == 600_000
    assert stats["in_guest_seconds"] > 0 and stats["throughput_mib_s"] > 0


def test_stats_count_failures_under_skip(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    result = wasmstream(
        "run",
        fixture("trap.wasm"),
        "--frame-size",
        "2",
        "--on-error",
        "skip",
        "--stats-json",
        str(stats_file),
        input=b"ok!!ok",
    )
    assert result.returncode == ExitStatus.FRAMES_FAILED
    assert json.loads(stats_file.read_text())["failed_frames"] == 1


def test_inspect_a_ready_module() -> None:
    result = wasmstream("inspect", fixture("hexdump.wasm"))
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "process_chunk (func (i32, i32) -> i64)" in text
    assert "memory (memory: 128KiB initial, 16MiB)" in text
    assert "deallocator dealloc" in text and "ready to run" in text


def test_inspect_says_what_is_missing() -> None:
    result = wasmstream("inspect", fixture("noexports.wasm"), "--json")
    assert result.returncode == ExitStatus.INVALID_MODULE
    report = json.loads(result.stdout)
    assert report["abi"] is None
    assert "allocator: one of alloc, allocate, malloc" in report["missing"]


def test_inspect_wasi_command_and_reactor() -> None:
    command = json.loads(wasmstream("inspect", fixture("c/rev.wasm"), "--json").stdout)
    assert command["wasi"] and command["abi"]["mode"].startswith("WASI command")
    reactor = json.loads(wasmstream("inspect", fixture("chatty.wasm"), "--json").stdout)
    assert reactor["abi"]["mode"].startswith("reactor")
    assert "wasi_snapshot_preview1.fd_write (func)" in reactor["imports"]


def test_inspect_hints_at_init_only_where_config_alone_would_not_reach_it(
    tmp_path: Path,
) -> None:
    import wasmtime

    plain = wasmstream("inspect", fixture("xor.wasm"))  # exports init, as every SDK module does
    assert plain.returncode == 0
    assert "init        init, when run with --config TEXT|@FILE" in plain.stdout.decode()
    assert "hint" not in plain.stdout.decode() and "--init" not in plain.stdout.decode()
    module = tmp_path / "configure.wasm"
    module.write_bytes(
        wasmtime.wat2wasm(
            """(module (memory (export "memory") 2)
              (func (export "alloc") (param i32) (result i32) (i32.const 1024))
              (func (export "configure") (param i32 i32) (result i32) (i32.const 0))
              (func (export "process_chunk") (param i32 i32) (result i32) (local.get 1)))"""
        )
    )
    hinted = json.loads(wasmstream("inspect", str(module), "--json").stdout)
    assert "--init configure --config" in hinted["hint"]
    assert hinted["abi"]["init"] == "none"
    given = json.loads(wasmstream("inspect", str(module), "--init", "configure", "--json").stdout)
    assert "hint" not in given and given["abi"]["init"] == "configure"


def test_checkpoint_show(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"a" * 10_000 + b"!" + b"a" * 9_999)
    wasmstream("run", fixture("trap.wasm"), str(source), "-o", str(out), "--frame-size", "1000")
    shown = wasmstream("checkpoint", "show", str(tmp_path / "out.ckpt.json"))
    assert shown.returncode == 0
    text = shown.stdout.decode()
    assert "status      failed" in text
    assert "done        10000 bytes of 20000 (50.0%), 10 frames" in text
    assert "last error  frame 10 at offset 10000: guest trapped" in text
    report = json.loads(
        wasmstream("checkpoint", "show", str(tmp_path / "out.ckpt.json"), "--json").stdout
    )
    assert report["percent_done"] == 50.0 and report["record"]["position"]["output_bytes"] == 10_000
    missing = wasmstream("checkpoint", "show", str(tmp_path / "nope.json"))
    assert_clean_failure(missing, ExitStatus.CHECKPOINT, "no checkpoint at")


@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_checkpoint_show_says_a_killed_run_is_not_running_and_how_to_continue(
    tmp_path: Path,
) -> None:
    source, out, ckpt = tmp_path / "in", tmp_path / "out", tmp_path / "out.ckpt.json"
    data = b"3abc" * 5 + b"0abc" * 1000  # sleepy: the first frames take 300 ms each
    source.write_bytes(data)
    run = spawn(
        ["run", fixture("sleepy.wasm"), str(source), "-o", str(out), "--frame-size", "4",
         "-j", "1", "--checkpoint-every", "1"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while run.poll() is None and not (ckpt.exists() and b'"frames": 1' in ckpt.read_bytes()):
        time.sleep(0.01)
    shown = wasmstream("checkpoint", "show", str(ckpt)).stdout.decode()
    assert f"status      running (PID {run.pid})" in shown, shown
    assert "continue" not in shown
    run.kill()
    run.wait()
    shown = wasmstream("checkpoint", "show", str(ckpt)).stdout.decode()
    assert "status      not running: the run was killed" in shown, shown
    assert "no process holds its lock" in shown
    command = f"wasmstream resume --checkpoint {ckpt}"
    assert f"continue    {command}" in shown, shown
    report = json.loads(wasmstream("checkpoint", "show", str(ckpt), "--json").stdout)
    assert (report["status"], report["pid"], report["continue_with"]) == ("stopped", None, command)
    resumed = wasmstream(*command.split()[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == data


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"42", "it holds a number, not an object"),
        (b"[1, 2]", "it holds an array, not an object"),
        (b'{"version": "two"}', "a JSON object without a numeric format version"),
        (b"hello, world\n", "it is not JSON"),
        (b"\x89PNG\r\n\x1a\n\0\0", "it is not JSON"),
    ],
)
def test_checkpoint_show_on_a_file_that_is_not_a_checkpoint(
    tmp_path: Path, content: bytes, what: str
) -> None:
    path = tmp_path / "file.json"
    path.write_bytes(content)
    result = wasmstream("checkpoint", "show", str(path))
    stderr = assert_clean_failure(result, ExitStatus.CHECKPOINT, "is not a wasmstream checkpoint")
    assert what in stderr and str(path) in stderr
    assert "Expected" not in stderr and "`" not in stderr  # not the decoder's own words


def test_every_option_can_come_from_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        "WASMSTREAM_RUN_FRAME_SIZE": "4",  # a size
        "WASMSTREAM_RUN_ON_ERROR": "skip",  # a choice
        "WASMSTREAM_RUN_OUTPUT": str(out),  # a path
        "WASMSTREAM_RUN_QUIET": "true",  # a flag
        "WASMSTREAM_RUN_JOBS": "1",
    }
    result = wasmstream("run", fixture("trap.wasm"), input=b"abcdefgh!xyzijkl", env=env)
    assert result.returncode == ExitStatus.FRAMES_FAILED
    assert result.stdout == b""
    assert out.read_bytes() == b"abcdefghijkl"  # frame 2 of four 4-byte frames skipped
    assert b"1 of 4 frames failed" in result.stderr


def test_the_command_line_wins_over_the_environment(tmp_path: Path) -> None:
    env = {"WASMSTREAM_RUN_FRAME_SIZE": "4", "WASMSTREAM_RUN_ON_ERROR": "skip"}
    result = wasmstream(
        "run",
        fixture("trap.wasm"),
        "--frame-size",
        "2",
        "--on-error",
        "fail",
        input=b"abcdefgh!xyz",
        env=env,
    )
    assert_clean_failure(result, ExitStatus.GUEST_ERROR, "frame 4 at offset 8")
    assert result.stdout == b"abcdefgh"


def test_version() -> None:
    from importlib.metadata import version

    from wasmstream._version import __version__

    result = wasmstream("--version", env={"WASMSTREAM_ENGINE": "wasmtime"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(
        f"wasmstream {__version__} (engine: wasmtime {version('wasmtime')}"
    )
    wasmer = wasmstream("--version", env={"WASMSTREAM_ENGINE": "wasmer"})
    assert wasmer.returncode == 0, wasmer.stderr
    assert wasmer.stdout.decode().startswith(f"wasmstream {__version__} (engine: wasmer")
    assert f"wasmtime {version('wasmtime')}" in wasmer.stdout.decode()  # also installed


@pytest.mark.wasmtime_only  # the cache holds wasmtime's serialized modules
def test_compiled_modules_are_cached_and_bad_entries_replaced(tmp_path: Path) -> None:
    env = {"WASMSTREAM_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path)}
    cache = tmp_path / "wasmstream"
    assert (
        wasmstream("run", fixture("upper.wasm"), "--no-cache", input=b"a", env=env).stdout == b"A"
    )
    assert not cache.exists()
    assert wasmstream("run", fixture("upper.wasm"), input=b"a", env=env).stdout == b"A"
    (entry,) = cache.iterdir()
    good = entry.read_bytes()
    entry.write_bytes(b"corrupt" * 100)
    assert wasmstream("run", fixture("upper.wasm"), input=b"b", env=env).stdout == b"B"
    assert entry.read_bytes() == good  # replaced by a fresh compile


@pytest.mark.wasmtime_only  # the cache holds wasmtime's serialized modules
def test_a_cached_module_is_what_runs(tmp_path: Path) -> None:
    """Put hexdump's compiled code under upper's cache entry, with a header forged for upper:
    a run of upper.wasm that used the cache then prints hex. (A plain copy is refused by the
    header: see test_trust. Forging one needs write access to the private cache folder.)"""
    env = {"WASMSTREAM_CACHE_DIR": str(tmp_path)}
    for name in ("upper.wasm", "hexdump.wasm"):
        assert wasmstream("run", fixture(name), input=b"a", env=env).returncode == 0
    upper_hash = hashlib.sha256((FIXTURES / "upper.wasm").read_bytes()).hexdigest()
    (upper,) = tmp_path.glob(f"{upper_hash}-*")
    (hexdump,) = (p for p in tmp_path.iterdir() if p != upper)
    stamp = upper.stat()
    assert wasmstream("run", fixture("upper.wasm"), input=b"a", env=env).stdout == b"A"
    assert (upper.stat().st_ino, upper.stat().st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    artifact = hexdump.read_bytes()[HEADER:]
    upper_digest = hashlib.sha256((FIXTURES / "upper.wasm").read_bytes()).hexdigest()
    upper.write_bytes(header_for(upper_digest, artifact) + artifact)
    assert wasmstream("run", fixture("upper.wasm"), input=b"a", env=env).stdout == b"61"
    no_cache = wasmstream("run", fixture("upper.wasm"), "--no-cache", input=b"a", env=env)
    assert no_cache.stdout == b"A"


def test_rich_is_imported_only_when_progress_is_shown() -> None:
    probe = (
        "import sys, wasmstream.cli.commands, wasmstream.run.skeleton; print('rich' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, timeout=60, check=True
    )
    assert result.stdout == b"False\n"


def test_bench_command_measures_and_recommends(tmp_path: Path) -> None:
    result = wasmstream(
        "bench", fixture("upper.wasm"), "--sample", "1MiB", "--runs", "1", timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"fastest: --frame-size ")
    assert b"(1 run per setting)" in result.stderr
    assert result.stderr.count(b"MiB/s") >= 8  # every setting tried is shown with its number


@pytest.mark.wasmtime_only
def test_runs_starting_at_once_share_the_cache_safely(tmp_path: Path) -> None:
    env = {**os.environ, "WASMSTREAM_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "wasmstream", "run", fixture("hexdump.wasm"), "-j", "1"]
    runs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for _ in range(6)
    ]
    outputs = [run.communicate(input=b"same", timeout=60)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs == [b"73616d65"] * 6
    (entry,) = (tmp_path / "cache").iterdir()  # one entry, whole: no temp files left behind
    again = subprocess.run(
        command, input=b"same", capture_output=True, env=env, timeout=60, check=True
    )
    assert again.stdout == b"73616d65" and entry.stat().st_size > 0
