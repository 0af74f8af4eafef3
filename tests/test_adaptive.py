"""`--jobs auto`: one instance on the calling thread or a pool, chosen by measuring the run.

Behaviour, not timing: which shape a run ends up in is read from --stats-json; that switching
between shapes never changes the output is checked with switches forced at every possible
frame boundary (WASMSTREAM_AUTO_FLIP_EVERY), since timing alone would reach only a few.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REFERENCES, fixture, per_frame, wasmstream


def stats_of(tmp_path: Path, *args: str, data: bytes) -> dict:  # type: ignore[type-arg]
    stats = tmp_path / "stats.json"
    result = wasmstream("run", *args, "--stats-json", str(stats), "-o", os.devnull, input=data)
    assert result.returncode == 0, result.stderr
    return json.loads(stats.read_text())  # type: ignore[no-any-return]


@pytest.mark.wasmtime_only  # wasmer's guest time is a round trip to another process: it pays
def test_a_cheap_guest_runs_on_one_instance(tmp_path: Path) -> None:
    stats = stats_of(tmp_path, fixture("identity.wasm"), "--frame-size", "4K", data=bytes(48 << 20))
    assert stats["workers"] == 1 and stats["shape_changes"] == 0, stats
    assert stats["jobs"].startswith("auto, serial"), stats


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to go parallel")
def test_a_heavy_guest_goes_to_a_pool(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 << 20)
    stats = stats_of(tmp_path, fixture("heavy.wasm"), "--frame-size", "4K", data=data)
    # It moved to the pool once measured; whether it stays depends on the machine's load.
    assert stats["shape_changes"] >= 1, stats


def test_an_explicit_job_count_is_kept(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(1 << 20)
    stats = stats_of(tmp_path, fixture("heavy.wasm"), "-j", "1", "--frame-size", "4K", data=data)
    assert (stats["workers"], stats["shape_changes"], stats["jobs"]) == (1, 0, "as asked")


def test_bad_job_counts_are_usage_errors() -> None:
    for bad in ("0", "-1", "many", "1.5"):
        result = wasmstream("run", fixture("identity.wasm"), "-j", bad, input=b"")
        assert result.returncode == 2, (bad, result.stderr)


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    flip_every=st.integers(min_value=1, max_value=9),
    frame_size=st.sampled_from([16, 100, 4096]),
    module=st.sampled_from(["upper.wasm", "varying.wasm", "hexdump.wasm"]),
    size=st.integers(min_value=0, max_value=20_000),
)
def test_switching_shapes_never_changes_the_output(
    flip_every: int, frame_size: int, module: str, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    if module == "varying.wasm":  # its cost grows with each frame's first byte: keep it cheap
        data = bytes(b & 0x0F for b in data)
    result = wasmstream(
        "run",
        fixture(module),
        "--frame-size",
        str(frame_size),
        env={"WASMSTREAM_AUTO_FLIP_EVERY": str(flip_every)},
        input=data,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == per_frame(REFERENCES[module], data, frame_size)


def test_switching_keeps_checkpoints_exact(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(1 << 20)
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    result = wasmstream(
        "run",
        fixture("hexdump.wasm"),
        str(source),
        "-o",
        str(out),
        "--frame-size",
        "4K",
        "--checkpoint-every",
        "3",
        env={"WASMSTREAM_AUTO_FLIP_EVERY": "5"},
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == per_frame(REFERENCES["hexdump.wasm"], data, 4096)
    saved = json.loads((tmp_path / "out.ckpt.json").read_text())
    assert saved["position"]["input_bytes"] == len(data) and saved["status"] == "complete"


def test_adaptive_overload_slows_down_and_loses_nothing(tmp_path: Path) -> None:
    """The output is read slowly: the queue fills, the reader is paced, and every frame is
    written in order (the accounting of block: nothing dropped)."""
    import subprocess
    import time

    from conftest import spawn

    data = random.Random(4).randbytes(400 << 10)
    stats = tmp_path / "stats.json"
    process = spawn(
        [
            "run",
            fixture("upper.wasm"),
            "--frame-size",
            "4K",
            "-j",
            "2",
            "--queue-depth",
            "8",
            "--on-overload",
            "adaptive",
            "--stats-json",
            str(stats),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(data)
    process.stdin.close()
    got = b""
    while chunk := process.stdout.read(8192):  # a slow reader downstream
        got += chunk
        time.sleep(0.002)
    assert process.stderr is not None
    with process.stdout, process.stderr:
        stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0, stderr
    assert got == data.upper()
    summary = json.loads(stats.read_text())
    assert summary["dropped_frames"] == 0 and summary["frames"] == 100


def test_the_pacer_waits_more_the_fuller_the_queue() -> None:
    from wasmstream.run.pool import Pacer

    pacer = Pacer()
    pacer.per_frame = 0.004
    waited = []
    for used in (2, 5, 6, 7, 9, 10):  # of 10
        before = pacer.paused
        pacer.pause(used, 10)
        waited.append(round(pacer.paused - before, 4))
    assert waited == [0.0, 0.0, 0.001, 0.002, 0.004, 0.004]
