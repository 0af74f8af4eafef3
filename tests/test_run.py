"""`wasmstream run` end to end: the real CLI on real fixtures, byte-exact against Python."""

from __future__ import annotations

import itertools
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmstream.errors import ExitStatus

from conftest import REFERENCES, assert_clean_failure, chunks, fixture, per_frame, spawn, wasmstream

FRAME = 4096
SIZES = [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME, 5 * FRAME + 123, 40_000]


@pytest.mark.parametrize("jobs", [1, 2, 4])
@pytest.mark.parametrize("module", ["identity.wasm", "upper.wasm", "hexdump.wasm", "c/redact.wasm"])
def test_output_matches_python_for_every_size(module: str, jobs: int) -> None:
    rng = random.Random(f"{module}{jobs}")
    for size in [*SIZES, rng.randrange(1, 100_000)]:
        data = rng.randbytes(size)
        result = wasmstream(
            "run", fixture(module), "-j", str(jobs), "--frame-size", str(FRAME), input=data
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == per_frame(REFERENCES[module], data, FRAME), (module, size)
        assert result.stderr == b""


def test_compute_heavy_fixture(random_bytes: Callable[[int, int], bytes]) -> None:
    data = random_bytes(100_000, 1)
    result = wasmstream("run", fixture("heavy.wasm"), "-j", "2", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == per_frame(REFERENCES["heavy.wasm"], data, 65536)


def test_order_is_kept_when_frames_finish_out_of_order() -> None:
    # First bytes chosen so that consecutive frames take very different times.
    rng = random.Random(7)
    frames = [bytes([rng.choice([0, 1, 120, 255])]) + rng.randbytes(1023) for _ in range(48)]
    data = b"".join(frames)
    result = wasmstream("run", fixture("varying.wasm"), "-j", "4", "--frame-size", "1K", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == per_frame(REFERENCES["varying.wasm"], data, 1024)


def call_intervals(jobs: int, frames: int) -> list[tuple[int, int]]:
    """When each guest call ran: clock.wasm returns (entry, exit) nanoseconds per frame."""
    result = wasmstream(
        "run",
        fixture("clock.wasm"),
        "--frame-size",
        "16",
        "-j",
        str(jobs),
        input=bytes(16 * frames),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert len(out) == 16 * frames
    return [struct.unpack("<QQ", out[n : n + 16]) for n in range(0, len(out), 16)]


def overlapping(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [
        (a, b)
        for a, b in itertools.combinations(range(len(intervals)), 2)
        if intervals[a][0] < intervals[b][1] and intervals[b][0] < intervals[a][1]
    ]


def test_guest_calls_run_at_the_same_time_with_two_jobs() -> None:
    """Not a timing test: each call lasts 100 ms by the guest's own clock, and calls that ran
    at once have overlapping intervals, however loaded the machine."""
    intervals = call_intervals(2, 6)
    assert all(end - start >= 100_000_000 for start, end in intervals)
    assert len(overlapping(intervals)) >= 2, intervals  # more than one pair ran at once
    serial = call_intervals(1, 3)  # and the check can tell: one job never overlaps
    assert overlapping(serial) == [], serial


@pytest.mark.parametrize("jobs", [1, 3])
def test_odd_sized_pipe_writes_do_not_change_output(jobs: int, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(300_000)
    process = spawn(
        [
            "run",
            fixture("hexdump.wasm"),
            "-j",
            str(jobs),
            "--frame-size",
            "10000",
            "-o",
            str(tmp_path / "out"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    for piece in chunks(data, [1, 7, 4095, 10_001, 13, 65_537]):
        process.stdin.write(piece)
        process.stdin.flush()
    process.stdin.close()
    process.stdin = None  # closed: communicate() has nothing to send
    _, stderr = process.communicate(timeout=60)
    assert stderr == b""
    assert process.returncode == 0
    assert (tmp_path / "out").read_bytes() == per_frame(REFERENCES["hexdump.wasm"], data, 10000)


def test_several_inputs_are_one_stream(tmp_path: Path) -> None:
    parts = [b"a" * 5000, b"", b"b" * 3, b"c" * 9000]
    paths = []
    for n, part in enumerate(parts):
        path = tmp_path / f"part{n}"
        path.write_bytes(part)
        paths.append(str(path))
    stdin_part = b"d" * 100
    result = wasmstream(
        "run",
        fixture("hexdump.wasm"),
        paths[0],
        paths[1],
        "-",
        paths[2],
        paths[3],
        "--frame-size",
        "4K",
        input=stdin_part,
    )
    assert result.returncode == 0, result.stderr
    whole = parts[0] + stdin_part + parts[2] + parts[3]
    assert result.stdout == per_frame(REFERENCES["hexdump.wasm"], whole, 4096)


def test_output_file(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old content that must be replaced" * 1000)
    result = wasmstream("run", fixture("upper.wasm"), "-o", str(out), input=b"hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert out.read_bytes() == b"HELLO\n"


def test_init_receives_config_text_and_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    key = b" "
    expected = bytes(b ^ key[0] for b in data)
    as_text = wasmstream("run", fixture("xor.wasm"), "--init", "init", "--config", " ", input=data)
    assert as_text.returncode == 0, as_text.stderr
    assert as_text.stdout == expected
    (tmp_path / "key").write_bytes(key + b"ignored")
    as_file = wasmstream(
        "run",
        fixture("xor.wasm"),
        "--init",
        "init",
        "--config",
        f"@{tmp_path / 'key'}",
        "-j",
        "3",
        input=data,
    )
    assert as_file.stdout == expected


def test_config_without_init_goes_to_the_init_export() -> None:
    data = bytes(range(256)) * 10
    result = wasmstream("run", fixture("xor.wasm"), "--config", " ", "-j", "2", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == bytes(b ^ 0x20 for b in data)
    bench = wasmstream(
        "bench", fixture("xor.wasm"), "--config", " ", "--sample", "64K", "--runs", "1"
    )
    assert bench.returncode == 0, bench.stderr
    # a module without one is refused, naming what it lacks, before any output
    refused = wasmstream("run", fixture("upper.wasm"), "--config", " ", input=data)
    assert_clean_failure(refused, ExitStatus.INVALID_MODULE, "missing export init (init function)")
    assert refused.stdout == b""


def test_wasi_guest_output_goes_to_stderr_not_the_data_stream() -> None:
    result = wasmstream(
        "run", fixture("chatty.wasm"), "-j", "1", "--frame-size", "4", input=b"abcdefgh"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"abcdefgh"
    assert result.stderr == b"chatty: ready\nchatty: frame\nchatty: frame\n"


LIBRARY_SCRIPTS = {
    "stream run to its end": (
        "import sys\n"
        "from wasmstream import Transform\n"
        "transform = Transform(sys.argv[1], frame_size=4)\n"
        "sys.stdout.buffer.write(b''.join(transform.stream([b'abcdefgh'])))\n"
    ),
    "stream left unfinished": (
        "import sys\n"
        "from wasmstream import Transform\n"
        "outputs = Transform(sys.argv[1], frame_size=4).stream([b'abcdefgh'])\n"
        "sys.stdout.buffer.write(next(outputs))\n"
    ),
}


@pytest.mark.wasmtime_only
@pytest.mark.parametrize("script", LIBRARY_SCRIPTS.values(), ids=LIBRARY_SCRIPTS.keys())
def test_a_library_user_whose_guest_prints_exits_without_a_panic(script: str) -> None:
    """Issue 24, item 17: wasmtime released a guest's stdout callback on one of its own
    threads while Python finalised, and that thread panicked ("panic in a function that
    cannot unwind") in about three exits in four. A plain script exits normally: no os._exit."""
    for _ in range(4):  # each exit is one chance to panic
        result = subprocess.run(
            [sys.executable, "-c", script, fixture("chatty.wasm")],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert b"panic" not in result.stderr, result.stderr.decode(errors="replace")
        assert result.stdout in (b"abcdefgh", b"abcd")
        assert result.stderr.startswith(b"chatty: ready\nchatty: frame\n")


def test_fast_and_slow_call_paths_agree() -> None:
    data = random.Random(5).randbytes(50_000)
    for module in ("upper.wasm", "hexdump.wasm", "c/redact.wasm"):
        fast = wasmstream("run", fixture(module), "--frame-size", "3000", input=data)
        slow = wasmstream(
            "run",
            fixture(module),
            "--frame-size",
            "3000",
            input=data,
            env={"WASMSTREAM_SLOW_CALLS": "1"},
        )
        assert fast.returncode == slow.returncode == 0, slow.stderr
        assert fast.stdout == slow.stdout == per_frame(REFERENCES[module], data, 3000)


def test_hexdump_deallocator_is_called() -> None:
    # hexdump.wasm caps its memory at 16 MiB and frees each output through dealloc(ptr, len):
    # 400 frames of 64 KiB would need 51 MiB if outputs were never freed.
    data = bytes(400 * 65536)
    result = wasmstream("run", fixture("hexdump.wasm"), "-j", "1", input=data)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 2 * len(data)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=20_000),
    frame_size=st.integers(1, 9000),
    jobs=st.integers(1, 4),
    module=st.sampled_from(["identity.wasm", "upper.wasm"]),
)
def test_in_place_output_does_not_depend_on_frame_size_or_jobs(
    data: bytes, frame_size: int, jobs: int, module: str
) -> None:
    result = wasmstream(
        "run", fixture(module), "--frame-size", str(frame_size), "-j", str(jobs), input=data
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == REFERENCES[module](data)


def test_head_closing_the_pipe_is_quiet() -> None:
    command = (
        f"head -c 3000000 /dev/zero | {sys.executable} -m wasmstream run "
        f'{fixture("hexdump.wasm")} -j 2 | head -c 10; echo " ${{PIPESTATUS[1]}}"'
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, timeout=60, check=False)
    assert result.stdout == b"0000000000 141\n"
    assert result.stderr == b""


def test_backpressure_bounds_what_is_read_ahead() -> None:
    """With nobody reading stdout, wasmstream stops reading stdin after a bounded amount."""
    frame, jobs, depth = 65536, 2, 2
    process = spawn(
        [
            "run",
            fixture("identity.wasm"),
            "-j",
            str(jobs),
            "--queue-depth",
            str(depth),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    os.set_blocking(process.stdin.fileno(), False)
    accepted, idle_since = 0, time.monotonic()
    chunk = bytes(65536)
    while time.monotonic() - idle_since < 1.5:  # until writes have been refused for 1.5 s
        try:
            written = os.write(process.stdin.fileno(), chunk)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        accepted += written
        idle_since = time.monotonic()
        assert accepted < 64 * 2**20, "wasmstream kept reading: no backpressure"
    # frames in flight + both 1 MiB pipe buffers + a little slack for the kernel's rounding
    bound = (depth + jobs + 1) * frame + 2 * 2**20 + 4 * frame
    process.kill()
    process.communicate()
    assert 2**20 < accepted <= bound
