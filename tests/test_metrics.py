"""`--metrics-file`: what node_exporter's textfile collector reads, read here by Prometheus' own
parser, written whole (renamed into place) before, during and at the end of a run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wasmstream.errors import ExitStatus

from conftest import assert_clean_failure, fixture, spawn, wasmstream

UPPER = fixture("upper.wasm")


def read_metrics(path: Path) -> dict[str, tuple[dict[str, str], float]]:
    """Each sample's name: its labels and value, as Prometheus reads them."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family
        for sample in family.samples:
            assert sample.name not in found, f"{sample.name} twice"
            found[sample.name] = (sample.labels, sample.value)
    return found


def values(path: Path) -> dict[str, float]:
    return {name: value for name, (_, value) in read_metrics(path).items()}


def wait_until(condition: object, process: subprocess.Popen[bytes], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if callable(condition) and condition():
                return
        except FileNotFoundError:  # not written yet: the run is still starting
            pass
        time.sleep(0.01)
    raise AssertionError("the run ended, or never got there")


def test_a_run_leaves_metrics_prometheus_reads(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "in").write_bytes(data)
    metrics, stats = tmp_path / "wasmstream.prom", tmp_path / "stats.json"
    result = wasmstream(
        "run", UPPER, "in", "-o", "out", "--frame-size", "4K", "--metrics-file", str(metrics),
        "--stats-json", str(stats), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = read_metrics(metrics)
    wanted = {"module": UPPER, "output": str(tmp_path / "out")}
    assert all(labels == wanted for labels, _ in samples.values()), samples
    got, summary = values(metrics), json.loads(stats.read_text())
    assert got["wasmstream_frames"] == summary["frames"] == 74
    assert got["wasmstream_input_bytes"] == got["wasmstream_output_bytes"] == len(data)
    assert got["wasmstream_failed_frames"] == got["wasmstream_dropped_frames"] == 0
    assert (got["wasmstream_running"], got["wasmstream_exit_status"]) == (0, 0)
    assert got["wasmstream_elapsed_seconds"] > 0
    assert got["wasmstream_last_success_timestamp_seconds"] == pytest.approx(time.time(), abs=60)
    assert (
        got["wasmstream_start_timestamp_seconds"]
        <= got["wasmstream_last_success_timestamp_seconds"]
        == got["wasmstream_last_update_timestamp_seconds"]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "in", "out", "out.ckpt.json", "stats.json", "wasmstream.prom",
    ]  # fmt: skip


def test_a_failed_run_records_its_status_and_keeps_the_last_success(tmp_path: Path) -> None:
    metrics = tmp_path / "job.prom"
    ok = wasmstream("run", UPPER, "--metrics-file", str(metrics), input=b"fine")
    assert ok.returncode == 0
    success = values(metrics)["wasmstream_last_success_timestamp_seconds"]
    failed = wasmstream(
        "run", fixture("trap.wasm"), "--frame-size", "4", "--on-error", "skip",
        "--metrics-file", str(metrics), input=b"okok!!!!okok",
    )  # fmt: skip
    assert failed.returncode == ExitStatus.FRAMES_FAILED
    got = values(metrics)
    assert got["wasmstream_exit_status"] == ExitStatus.FRAMES_FAILED
    assert got["wasmstream_failed_frames"] == 1 and got["wasmstream_frames"] == 3
    assert got["wasmstream_last_success_timestamp_seconds"] == success  # carried over
    assert got["wasmstream_last_update_timestamp_seconds"] > success
    # a run that fails before its first frame (no such module) still says how it ended
    missing = wasmstream("run", "nope.wasm", "--metrics-file", str(metrics), cwd=tmp_path)
    assert missing.returncode == ExitStatus.INVALID_MODULE
    got = values(metrics)
    assert got["wasmstream_exit_status"] == ExitStatus.INVALID_MODULE
    assert got["wasmstream_frames"] == 0
    assert got["wasmstream_last_success_timestamp_seconds"] == success
    first = wasmstream("run", UPPER, "--metrics-file", str(tmp_path / "new.prom"), input=b"x!")
    assert first.returncode == 0  # with no earlier file, a success is the first timestamp


def test_metrics_are_updated_while_the_run_goes(tmp_path: Path) -> None:
    metrics = tmp_path / "live.prom"
    run = spawn(
        ["run", UPPER, "-o", str(tmp_path / "out"), "--frame-size", "4", "--checkpoint-interval",
         "50ms", "--metrics-file", str(metrics)],
        stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.stdin is not None
    run.stdin.write(b"abcd" * 10)
    run.stdin.flush()

    def mid_run() -> bool:
        got = values(metrics)
        return bool(got["wasmstream_frames"] == 10 and got["wasmstream_running"] == 1)

    wait_until(mid_run, run)
    assert "wasmstream_exit_status" not in values(metrics)  # not known yet: absent
    run.stdin.write(b"efgh")
    run.stdin.close()
    assert run.wait(timeout=60) == 0
    got = values(metrics)
    assert (got["wasmstream_frames"], got["wasmstream_running"]) == (11, 0)
    assert got["wasmstream_exit_status"] == 0


def test_a_symlinked_metrics_file_is_replaced_at_its_target(tmp_path: Path) -> None:
    collector = tmp_path / "textfile"
    collector.mkdir()
    target, link = collector / "job.prom", tmp_path / "job.prom"
    link.symlink_to(target)
    assert wasmstream("run", UPPER, "--metrics-file", str(link), input=b"abc").returncode == 0
    assert link.is_symlink() and values(target)["wasmstream_input_bytes"] == 3
    assert sorted(path.name for path in collector.iterdir()) == ["job.prom"]


def test_a_metrics_file_that_cannot_be_written_refuses_the_run_before_any_output(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    bad = tmp_path / "no-such-folder" / "job.prom"
    result = wasmstream("run", UPPER, "-o", str(out), "--metrics-file", str(bad), input=b"abc")
    assert_clean_failure(
        result, ExitStatus.IO_ERROR, f"cannot write --metrics-file {bad}", "No such file"
    )
    assert out.read_bytes() == b"precious"


def test_a_full_disk_keeps_the_last_metrics_and_the_run_goes_on(
    small_disk: Path, tmp_path: Path
) -> None:
    metrics, out = small_disk / "job.prom", tmp_path / "out"
    run = spawn(
        ["run", UPPER, "-o", str(out), "--frame-size", "4", "--checkpoint-interval", "20ms",
         "--metrics-file", str(metrics)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert run.stdin is not None
    run.stdin.write(b"abcd")
    run.stdin.flush()
    wait_until(lambda: values(metrics)["wasmstream_frames"] == 1, run)
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # the disk fills up
        while os.write(filler, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(filler)
    run.stdin.write(b"efgh" * 100)
    run.stdin.close()
    run.stdin = None  # closed: communicate() has nothing to send
    stderr = run.communicate(timeout=60)[1].decode()
    assert run.returncode == 0, stderr
    assert stderr.count(f"cannot write --metrics-file {metrics}") == 1, stderr
    assert "No space left on device" in stderr and "the run goes on" in stderr
    assert out.read_bytes() == b"ABCD" + b"EFGH" * 100  # the data is whole
    assert values(metrics)["wasmstream_running"] == 1  # the last version that fitted, intact
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "job.prom"]
    (small_disk / "filler").unlink()
    again = wasmstream("run", UPPER, "--metrics-file", str(metrics), input=b"abc")
    assert again.returncode == 0 and values(metrics)["wasmstream_exit_status"] == 0


@pytest.mark.cluster
def test_a_cluster_run_writes_the_same_metrics(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (tmp_path / "in").write_bytes(data)
    metrics = tmp_path / "cluster.prom"
    result = wasmstream(
        "run", UPPER, "in", "-o", "out", "--cluster", "local:1", "--part-size", "64K",
        "--metrics-file", str(metrics), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = values(metrics)
    assert got["wasmstream_input_bytes"] == got["wasmstream_output_bytes"] == len(data)
    assert got["wasmstream_exit_status"] == 0 and got["wasmstream_running"] == 0


def test_a_shard_run_writes_its_own_numbers(tmp_path: Path) -> None:
    data = b"".join(b"line %d\n" % n for n in range(10_000))
    (tmp_path / "in").write_bytes(data)
    totals = 0.0
    for k in (1, 2):
        metrics = tmp_path / f"shard{k}.prom"
        result = wasmstream(
            "run", UPPER, "in", "-o", f"out{k}", "--shard", f"{k}/2", "--framing", "lines",
            "--metrics-file", str(metrics), cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        totals += values(metrics)["wasmstream_input_bytes"]
    assert totals == len(data)
