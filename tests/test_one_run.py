"""One run, every path: the promises of a local run hold for shards, clusters and the library.

Each test here was a defect of a copy of the run (the cluster path and transform.py had their own
skeletons): they now share `run_steps` (run/skeleton.py), and each test failed before that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasmstream
from wasmstream import GuestError, Transform, UsageError
from wasmstream.errors import ExitStatus

from conftest import ENGINE, ROOT, fixture, spawn
from conftest import wasmstream as run_cli

IDENTITY = fixture("identity.wasm")
UPPER = fixture("upper.wasm")
TRAP = fixture("trap.wasm")
WC = fixture("c/wc.wasm")  # passes frames through; its totals come out of `finish`
ENV = {"PYTHONPATH": str(ROOT)}

needs_dask = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason="Dask is not installed (pip install 'wasmstream[dask]')",
)


def shell(command: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sh", "-c", command, sys.executable, *args],
        capture_output=True,
        timeout=180,
        check=False,
        env={**os.environ, **ENV},
    )


def lines(count: int, seed: int) -> bytes:
    chance = random.Random(seed)
    return b"".join(b"line %d %s\n" % (n, b"x" * chance.randrange(0, 60)) for n in range(count))


def saved(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# 1. A cluster writing to a pipe counts only what the reader took ---------------------------


@needs_dask
def test_a_cluster_run_to_a_pipe_claims_only_what_the_reader_took(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(8 << 20)
    source, ckpt = tmp_path / "in", tmp_path / "c.json"
    source.write_bytes(data)
    cluster = "--cluster local:2 --part-size 256K"
    first = shell(
        f'"$0" -m wasmstream run {IDENTITY} "$1" {cluster} --checkpoint "$2" | head -c 3000000',
        str(source),
        str(ckpt),
    )
    assert first.stdout == data[:3_000_000]
    delivered = saved(ckpt)["position"]["output_bytes"]
    assert 0 < delivered <= 3_000_000  # before: 3,145,728, the part in the pipe counted
    rest = shell(
        f'"$0" -m wasmstream run {IDENTITY} "$1" {cluster} --checkpoint "$2" --resume',
        str(source),
        str(ckpt),
    )
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout == data[delivered:]


# 2. Shards resumed after the input grew join up to one run over the grown input ------------


def test_shards_resumed_after_the_input_grew_equal_one_run_over_it(tmp_path: Path) -> None:
    source = tmp_path / "log"
    source.write_bytes(lines(20_000, 2))
    outs = [tmp_path / f"out.{k}" for k in (1, 2)]

    def shards(*more: str) -> None:
        for k, out in enumerate(outs, 1):
            args = ["run", UPPER, str(source), "--framing", "lines", "-o", str(out)]
            result = run_cli(*args, "--shard", f"{k}/2", *more)
            assert result.returncode == 0, result.stderr

    shards()
    with source.open("ab") as log:
        log.write(lines(12_000, 3))
    shards("--resume")
    joined = b"".join(out.read_bytes() for out in outs)
    assert joined == source.read_bytes().upper()  # before: shard 1 grew into shard 2's range


# 3 and 4. Dead letters are written once, however a run is killed ---------------------------


def _letters(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["frame"] for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(["-j", "1"], id="local-j1"),
        pytest.param(["-j", "2"], id="local-j2"),
        pytest.param(
            ["--cluster", "local:2", "--part-size", "4K"],
            id="cluster",
            # the client's logs are the engine's business nowhere; wasmer's slow replacements
            # would leave too few parts to kill the run between
            marks=[needs_dask, pytest.mark.wasmtime_only],
        ),
    ],
)
def test_dead_letters_are_once_after_a_kill_before_the_first_save(
    tmp_path: Path, how: list[str]
) -> None:
    """Killed before its first interval's save (an hour away): the resumed run must not append
    the killed run's dead letters a second time."""
    # every frame fails, and its instance is replaced: ~35 ms each for a wasmer worker
    count = 80 if ENGINE == "wasmer" else 30_000  # the kill comes after 50
    source, out = tmp_path / "bad", tmp_path / "out"
    source.write_bytes(b"bad!" * count)  # trap.wasm fails every frame holding a "!"
    ckpt, letters = tmp_path / "c.json", tmp_path / "dead.jsonl"
    args = [
        "run",
        TRAP,
        str(source),
        "-o",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--checkpoint-interval",
        "1h",
        "--frame-size",
        "4",
        "--on-error",
        "skip",
        "--dead-letter",
        str(letters),
        *how,
    ]
    process = spawn(args, stderr=subprocess.PIPE, env={**os.environ, **ENV})
    deadline = time.monotonic() + 120
    while len(_letters(letters)) < 50:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr
        time.sleep(0.01)
    process.kill()
    process.communicate(timeout=30)
    resumed = run_cli(*args, "--resume", timeout=300, env=ENV)
    assert resumed.returncode == ExitStatus.FRAMES_FAILED, resumed.stderr
    assert _letters(letters) == list(range(count))


def test_the_drop_log_is_once_after_a_kill_before_the_first_save(tmp_path: Path) -> None:
    """The drop log too: a resumed run does every frame after the checkpoint again (dropping
    its own choice of them), so the killed run's lines must be cut back first."""
    # varying.wasm spins ~10 ms on frames starting with 0xff; the file arrives far faster
    count = 3000
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(
        b"".join(bytes([255]) + n.to_bytes(4, "big") + bytes(1019) for n in range(count))
    )
    ckpt, drops = tmp_path / "c.json", tmp_path / "drops.jsonl"
    args = [
        "run",
        fixture("varying.wasm"),
        str(source),
        "-o",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--checkpoint-interval",
        "1h",
        "--frame-size",
        "1K",
        "-j",
        "1",
        "--queue-depth",
        "1",
        "--on-overload",
        "drop",
        "--drop-log",
        str(drops),
    ]
    process = spawn(args, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_letters(drops)) < 100:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr
        time.sleep(0.01)
    process.kill()
    process.communicate(timeout=30)
    resumed = run_cli(*args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    dropped = _letters(drops)
    assert len(dropped) == len(set(dropped))  # before: the killed run's lines came again
    assert len(out.read_bytes()) // 1024 + len(dropped) == count


# 5. The library runs a finish function and refuses ranges of one-instance modules ---------


def test_the_library_stream_ends_with_the_finish_output() -> None:
    data = b"one two\nthree\n" * 1000
    cli = run_cli("run", WC, "--frame-size", "1000", input=data)
    assert cli.returncode == 0, cli.stderr
    with Transform(WC, frame_size=1000) as transform:
        outputs = list(transform.stream([data]))
    assert b"".join(outputs) == cli.stdout  # before: the totals were missing
    assert len(outputs) == len(data) // 1000 + 1  # one per frame, then the totals


def test_the_library_refuses_a_range_of_a_module_that_keeps_state(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"a\nb\n")
    with Transform(fixture("linenum_snapshot.wasm"), framing="lines") as transform:
        with pytest.raises(UsageError, match="in order, in one instance"):
            list(transform.run_range(str(source), 0, 4))
        assert (
            b"".join(transform.stream([b"a\n", b"b\n"]))
            == run_cli(
                "run", fixture("linenum_snapshot.wasm"), "--framing", "lines", input=b"a\nb\n"
            ).stdout
        )


# 10. A cluster resume after the input grew takes the new tail -----------------------------


@needs_dask
def test_a_cluster_run_resumed_after_the_input_grew_takes_the_new_tail(tmp_path: Path) -> None:
    source, out = tmp_path / "log", tmp_path / "out"
    source.write_bytes(lines(5_000, 4))
    args = ["run", UPPER, str(source), "-o", str(out), "--framing", "lines"]
    cluster = ["--cluster", "local:2", "--part-size", "64K"]
    first = run_cli(*args, *cluster, timeout=180)
    assert first.returncode == 0, first.stderr
    with source.open("ab") as log:
        log.write(lines(3_000, 5))
    again = run_cli(*args, *cluster, "--resume", timeout=180)
    assert again.returncode == 0, again.stderr  # before: "not where a part starts", exit 9
    assert out.read_bytes() == source.read_bytes().upper()


# 18. The library takes the CLI's values and refuses bad ones at once ----------------------


def test_the_library_takes_the_clis_values() -> None:
    with Transform(UPPER, frame_size="4KiB", timeout="1s", max_memory="64MiB") as transform:
        assert transform.settings.frame_size == 4096
        assert transform.settings.sandbox.timeout == 1.0
        assert b"".join(transform.stream([b"abc"])) == b"ABC"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"frame_size": "lots"}, "not a size"),
        ({"timeout": "soon"}, "not a duration"),
        ({"timeout": -1}, "timeout must be"),
        ({"fuel": "many"}, "fuel must be"),
        ({"on_error": "ignore"}, "on_error must be"),
        ({"framing": "words"}, "words"),
        ({"env": ["NOEQUALS"]}, "KEY=VALUE"),
        ({"dirs": ["/no/such/dir"]}, "not a directory"),
        ({"frame_size": 1 << 33}, "cannot fit in guest memory"),
        ({"config": "@/no/such/file"}, "cannot read"),
    ],
)
def test_the_library_refuses_a_bad_option_when_made(options: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError, match=needle):
        Transform(UPPER, **options)


@pytest.mark.wasmtime_only  # wasmer grants no --dir
def test_the_library_grants_env_and_dirs_as_the_cli_does(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("hello\n")
    sneaky = fixture("c/sneaky.wasm")
    grants = {"env": {"SECRET": "s3"}, "dirs": [f"{tmp_path}:/data"]}
    with Transform(sneaky, **grants) as transform:  # type: ignore[arg-type]
        granted = b"".join(transform.stream([b"x"]))
    cli = run_cli("run", sneaky, "--env", "SECRET=s3", "--dir", f"{tmp_path}:/data", input=b"x")
    assert granted == cli.stdout
    assert b"hello" in granted and b"s3" in granted


def test_guest_errors_are_exported_and_raised_with_their_place() -> None:
    assert wasmstream.GuestError is GuestError
    with Transform(TRAP, frame_size=4) as transform, pytest.raises(GuestError) as raised:
        list(transform.stream([b"good", b"bad!"]))
    assert (raised.value.frame, raised.value.offset) == (1, 4)


@needs_dask
def test_an_interrupted_cluster_run_says_how_to_continue(tmp_path: Path) -> None:
    """SIGTERM on a cluster run: interrupted, and the line that says how to go on."""
    source, out = tmp_path / "in", tmp_path / "out"
    source.write_bytes(random.Random(6).randbytes(64 << 20))
    process = spawn(
        ["run", fixture("heavy.wasm"), str(source), "-o", str(out), "--cluster", "local:2"],
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
    )
    ckpt = Path(f"{out}.ckpt.json")
    deadline = time.monotonic() + 120
    while not (ckpt.exists() and out.exists()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == ExitStatus.TERMINATED, err
    assert b"continue with: wasmstream resume --checkpoint" in err
