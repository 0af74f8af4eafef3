"""Record framing, live streams (--linger) and overload policies, through the real CLI."""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import subprocess
import time
from pathlib import Path

import pytest

from wasmstream.errors import ExitStatus

from conftest import assert_clean_failure, fixture, spawn, wasmstream


@pytest.mark.wasmtime_only  # rev.wasm is a WASI command
def test_lines_framing_never_splits_a_line_for_a_line_based_program() -> None:
    # rev.wasm reverses each line of its stdin: a line cut in two would come out scrambled.
    rng = random.Random(4)
    lines = [
        bytes(rng.choice(b"abcdefghij") for _ in range(rng.randrange(0, 90))) for _ in range(500)
    ]
    data = b"\n".join(lines)  # the last line has no newline: passed on as it is
    result = wasmstream(
        "run",
        fixture("c/rev.wasm"),
        "--framing",
        "lines",
        "--frame-size",
        "256",
        "-j",
        "2",
        input=data,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"\n".join(line[::-1] for line in lines)


@pytest.mark.parametrize(
    ("delimiter", "byte"), [("\\0", b"\0"), ("\\x1e", b"\x1e"), (",", b","), ("\\t", b"\t")]
)
def test_delimiter_escapes(delimiter: str, byte: bytes) -> None:
    records = [b"rec%d" % n * (n % 7) for n in range(200)]
    data = byte.join(records)
    result = wasmstream(
        "run",
        fixture("upper.wasm"),
        "--framing",
        "delimiter",
        "--delimiter",
        delimiter,
        "--frame-size",
        "64",
        input=data,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == data.upper()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_oversized_record_is_an_error_naming_offset_and_length(jobs: str) -> None:
    """Everything before the record is written first, however many instances run."""
    data = b"ok\n" * 2000 + b"z" * 5000 + b"\nok\n"
    result = wasmstream(
        "run",
        fixture("upper.wasm"),
        "--framing",
        "lines",
        "--frame-size",
        "1K",
        "-j",
        jobs,
        input=data,
    )
    assert_clean_failure(
        result,
        ExitStatus.FRAMING,
        "record at offset 6000 is at least 1025 bytes, larger than the frame size (1024 bytes)",
        "(--frame-size SIZE, or --oversize split|skip)",
    )
    assert result.stdout == b"OK\n" * 2000


def test_oversized_records_skipped_are_counted() -> None:
    data = b"ok\n" + b"z" * 5000 + b"\nfine\n"
    result = wasmstream(
        "run",
        fixture("upper.wasm"),
        "--framing",
        "lines",
        "--frame-size",
        "1K",
        "--oversize",
        "skip",
        input=data,
    )
    assert result.returncode == 0
    assert result.stdout == b"OK\nFINE\n"
    assert b"skipped 1 oversized records (5001 bytes)" in result.stderr


# marks.wasm: each frame comes out as its length (4 bytes, big-endian), then the frame itself
MARKS = fixture("marks.wasm")


def marked(frames: list[bytes]) -> bytes:
    """What marks.wasm makes of these frames: where the input was cut shows in the output."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def test_length_prefixed_records_reach_the_guest_whole(tmp_path: Path) -> None:
    rng = random.Random(5)
    records = [rng.randbytes(rng.randrange(0, 300)) for _ in range(300)]
    prefixed = [len(r).to_bytes(4, "big") + r for r in records]
    source = tmp_path / "records"
    source.write_bytes(b"".join(prefixed))
    result = wasmstream(
        "run",
        MARKS,
        str(source),
        "--free",
        "release",
        "--framing",
        "length-prefixed",
        "--frame-size",
        "1K",
    )
    assert result.returncode == 0, result.stderr
    # as many whole records as fit in 1 KiB, prefixes included, and never part of one
    frames, frame = [], b""
    for record in prefixed:
        if len(frame) + len(record) > 1024:
            frames.append(frame)
            frame = b""
        frame += record
    frames.append(frame)
    assert result.stdout == marked(frames)


def test_oversize_split_cuts_a_long_record_into_full_frames(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"ab\n" + b"x" * 40 + b"\ncd\n")
    result = wasmstream(
        "run",
        MARKS,
        str(source),
        "--free",
        "release",
        "--framing",
        "lines",
        "--frame-size",
        "16",
        "--oversize",
        "split",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == marked([b"ab\n", b"x" * 16, b"x" * 16, b"x" * 8 + b"\ncd\n"])


def test_free_names_the_deallocator_the_host_calls() -> None:
    # marks.wasm's outputs are released only through `release`; its memory holds ~120 of them
    data = bytes(range(256)) * 1200  # 300 frames of 1 KiB
    leaked = wasmstream("run", MARKS, "--frame-size", "1K", "-j", "1", input=data)
    assert_clean_failure(leaked, ExitStatus.GUEST_ERROR, "guest trapped")
    freed = wasmstream("run", MARKS, "--frame-size", "1K", "--free", "release", input=data)
    assert freed.returncode == 0, freed.stderr
    assert freed.stdout == marked([data[n : n + 1024] for n in range(0, len(data), 1024)])


def test_checkpoint_resume_with_lines_framing(tmp_path: Path) -> None:
    source, out = tmp_path / "in.log", tmp_path / "out"
    text = b"".join(b"line %d %s\n" % (n, b"x" * (n % 50)) for n in range(3000))
    source.write_bytes(text[:70_000] + b"!" + text[70_001:])  # beyond the first 64 KiB
    args = [
        "run",
        fixture("trap.wasm"),
        str(source),
        "-o",
        str(out),
        "--framing",
        "lines",
        "--frame-size",
        "1000",
    ]
    assert wasmstream(*args).returncode == ExitStatus.GUEST_ERROR
    saved = json.loads((tmp_path / "out.ckpt.json").read_text())
    done = saved["position"]["input_bytes"]
    assert text[done - 1 : done] == b"\n"  # checkpoints fall on frame, hence record, boundaries
    with open(source, "r+b") as fix:
        fix.seek(70_000)
        fix.write(text[70_000:70_001])
    assert wasmstream(*args, "--resume").returncode == 0
    assert out.read_bytes() == text


def finish(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    process.wait(timeout=10)


def read_line_within(stream: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    got = b""
    while not got.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            return got
        got += os.read(stream, 4096)
    return got


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_live_stream_latency_is_under_linger_plus_100ms(jobs: str) -> None:
    """A writer sends one line and waits: the line comes out within linger + 100 ms."""
    process = spawn(
        [
            "run",
            fixture("upper.wasm"),
            "--framing",
            "lines",
            "-j",
            jobs,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(b"warm up\n")  # the first line also waits for start-up
        process.stdin.flush()
        assert read_line_within(process.stdout.fileno(), 10) == b"WARM UP\n"
        latencies = []
        for n in range(5):
            sent = time.monotonic()
            process.stdin.write(b"event %d\n" % n)
            process.stdin.flush()
            assert read_line_within(process.stdout.fileno(), 5) == b"EVENT %d\n" % n
            latencies.append(time.monotonic() - sent)
        latencies.sort()
        print(
            f"latency with the default 100ms linger, -j {jobs}: median {latencies[2] * 1000:.0f} ms"
        )
        assert (
            latencies[2] < 0.1 + 0.1 + 0.15
        )  # linger + 100 ms, plus slack for a loaded CI machine
    finally:
        finish(process)


def live(*options: str) -> subprocess.Popen[bytes]:
    return spawn(
        ["run", MARKS, "--free", "release", "-j", "1", *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_within(stream: int, size: int, timeout: float) -> bytes:
    """Up to `size` bytes from `stream`, whatever arrives within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    got = b""
    while len(got) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            break
        chunk = os.read(stream, size - len(got))
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--frame-size", "8"], id="fixed"),
        pytest.param(
            ["--frame-size", "64", "--framing", "lines", "--linger", "off"],
            id="lines-linger-off",
        ),
    ],
)
def test_a_pipe_is_read_until_frames_are_full_unless_asked(options: list[str]) -> None:
    """Fixed frames (and record frames with --linger off) wait for a full frame on a pipe."""
    process = live(*options)
    assert process.stdin is not None and process.stdout is not None
    try:
        first = b"1234567\n" if "lines" in options else b"12345678"
        process.stdin.write(first + b"part\n")
        process.stdin.flush()
        if "lines" not in options:  # a full fixed frame goes at once; the part waits
            assert read_within(process.stdout.fileno(), 12, 10) == marked([first])
        # the partial frame is held back while the writer is quiet, however long
        assert read_within(process.stdout.fileno(), 100, 1.0) == b""
        process.stdin.close()  # end of input: what is left goes as the last frame
        rest = read_within(process.stdout.fileno(), 100, 10)
        expected = marked([first + b"part\n"] if "lines" in options else [first, b"part\n"])
        assert (b"" if "lines" in options else marked([first])) + rest == expected
    finally:
        finish(process)


def test_linger_releases_a_partial_frame_on_a_quiet_pipe() -> None:
    process = live("--frame-size", "1K", "--linger", "50ms")
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(b"partial frame\n")
        process.stdin.flush()
        expected = marked([b"partial frame\n"])
        assert read_within(process.stdout.fileno(), len(expected), 10) == expected
    finally:
        finish(process)


@pytest.mark.parametrize("policy", ["drop", "sample:3"])
def test_overload_loses_frames_deliberately_and_accounts_for_each(
    policy: str, tmp_path: Path
) -> None:
    # varying.wasm spins ~10 ms on frames starting with 0xff; the file arrives far faster.
    frames = [bytes([255]) + n.to_bytes(4, "big") + os.urandom(1019) for n in range(300)]
    source, drops = tmp_path / "in", tmp_path / "drops.jsonl"
    source.write_bytes(b"".join(frames))
    result = wasmstream(
        "run",
        fixture("varying.wasm"),
        str(source),
        "--frame-size",
        "1K",
        "-j",
        "1",
        "--queue-depth",
        "1",
        "--on-overload",
        policy,
        "--drop-log",
        str(drops),
    )
    assert result.returncode == 0, result.stderr
    dropped = [json.loads(line) for line in drops.read_text().splitlines()]
    written = len(result.stdout) // 1024
    assert written + len(dropped) == len(frames)  # frames in = written + dropped, exactly
    assert 0 < len(dropped) < len(frames)
    assert f"dropped {len(dropped)} of {len(frames)} frames".encode() in result.stderr
    dropped_indexes = {d["frame"] for d in dropped}
    assert all(d["offset"] == d["frame"] * 1024 and d["length"] == 1024 for d in dropped)
    kept = [f for n, f in enumerate(frames) if n not in dropped_indexes]
    assert result.stdout == b"".join(bytes((b + 1) & 255 for b in f) for f in kept)
    # The queue stays full (a frame takes ~10 ms, reading one microseconds): `drop` loses long
    # runs of frames; `sample:3` keeps one frame in three, so never loses more than two in a row.
    runs = longest_runs(sorted(dropped_indexes))
    if policy == "drop":
        assert max(runs) > 10, runs
    else:
        assert max(runs) == 2, runs


def longest_runs(indexes: list[int]) -> list[int]:
    """The lengths of the runs of consecutive numbers in `indexes` (sorted)."""
    runs = [1]
    for before, after in itertools.pairwise(indexes):
        runs[-1:] = [runs[-1] + 1] if after == before + 1 else [runs[-1], 1]
    return runs


def test_block_is_the_default_and_loses_nothing(tmp_path: Path) -> None:
    frames = [bytes([255]) + os.urandom(1023) for _ in range(40)]
    result = wasmstream(
        "run",
        fixture("varying.wasm"),
        "--frame-size",
        "1K",
        "-j",
        "2",
        "--queue-depth",
        "1",
        input=b"".join(frames),
    )
    assert result.returncode == 0
    assert len(result.stdout) == 40 * 1024
