"""Defects a hostile review found in the option layer (cli/options.py, cli/argtypes.py,
run/configure.py) and in --output-parts: each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wasmstream import Transform
from wasmstream.errors import UsageError

from conftest import assert_clean_failure, fixture, wasmstream

UPPER = fixture("upper.wasm")


# --- --output-parts DIR: a DIR the option layer lets through ---------------------------------


@pytest.mark.parametrize("folder", ["-", ""])
def test_output_parts_unusable_name_is_a_usage_error(tmp_path: Path, folder: str) -> None:
    """`--output-parts -` died with "internal error: FileNotFoundError: ... 'None'" (exit 1):
    new_record takes `-` for stdout and stats the folder `None`; `--output-parts ''` was an
    I/O failure (exit 8) about creating the folder ''."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"a\nb\n")
    result = wasmstream("run", UPPER, str(data), "--output-parts", folder, cwd=tmp_path)
    assert_clean_failure(result, 2, "--output-parts")


def test_output_parts_dash_never_records_a_folder_it_cannot_resume(tmp_path: Path) -> None:
    """With a file named `None` in the working directory, `--output-parts -` ran: it wrote
    parts to ./- and a checkpoint recording "output": null, whose resume then failed with an
    internal AssertionError (exit 1). It must be refused before anything is written."""
    (tmp_path / "None").write_bytes(b"")
    data = tmp_path / "in.txt"
    data.write_bytes(b"a\nb\n")
    result = wasmstream(
        "run", UPPER, str(data), "--framing", "lines", "--output-parts", "-", cwd=tmp_path
    )
    if result.returncode == 0:  # what it did: then its checkpoint must resume
        saved = json.loads((tmp_path / "-" / "_checkpoint.json").read_text())
        assert saved["output"] is not None, "the checkpoint does not say where its parts are"
    assert_clean_failure(result, 2, "--output-parts")
    assert not (tmp_path / "-").exists()


# --- the library: every bad value a UsageError with a sensible message -------------------------


@pytest.mark.parametrize("seconds", [float("inf"), float("nan")])
def test_library_timeout_not_finite_is_usage_error(seconds: float) -> None:
    """as_duration accepts inf and nan; the engine then raised OverflowError / ValueError
    ("cannot convert float infinity to integer") on the first frame."""
    with pytest.raises(UsageError, match="timeout"), Transform(UPPER, timeout=seconds) as t:
        b"".join(t.stream([b"hello\n"]))


@pytest.mark.parametrize(
    "keywords",
    [
        {"env": [1]},  # AttributeError: 'int' object has no attribute 'partition'
        {"dirs": [1]},  # AttributeError: 'int' object has no attribute 'split'
        {"config": 123},  # AttributeError: 'int' object has no attribute 'startswith'
        {"dead_letter": 123},  # TypeError: expected str, bytes or os.PathLike object
    ],
    ids=lambda keywords: next(iter(keywords)),
)
def test_library_wrong_types_raise_usage_error(keywords: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        Transform(UPPER, **keywords).close()


def test_library_dirs_given_as_one_text_is_refused_as_such(tmp_path: Path) -> None:
    """dirs="/some/dir" (a text, not a list) was iterated character by character: "/" was
    granted, then the run was refused with "o is not a directory"."""
    with pytest.raises(UsageError) as refused:
        Transform(UPPER, dirs=str(tmp_path)).close()
    assert "dirs" in str(refused.value) or str(tmp_path) in str(refused.value)


@pytest.mark.parametrize(
    ("keywords", "choice"),
    [({"oversize": "bogus"}, "split"), ({"framing": "bogus"}, "lines")],
    ids=["oversize", "framing"],
)
def test_library_bad_choice_names_keyword_and_choices(
    keywords: dict[str, Any], choice: str
) -> None:
    """The message was "'bogus' is not a valid Oversize": an enum's class name, neither the
    keyword nor what it may be (on_error and state say both)."""
    with pytest.raises(UsageError) as refused:
        Transform(UPPER, **keywords).close()
    message = str(refused.value)
    assert next(iter(keywords)) in message and choice in message, message


# --- the command line: a bad value is a usage error naming its option --------------------------


def test_huge_linger_is_a_usage_error(tmp_path: Path) -> None:
    """A --linger too long for a timestamp: "internal error: OverflowError: timestamp out of
    range for platform time_t" (exit 1), on the base too."""
    result = wasmstream(
        "run", UPPER, "--framing", "lines", "--linger", "999999999999999999999999h", input=b"a\n"
    )
    assert_clean_failure(result, 2, "--linger")


def test_fuel_beyond_what_the_engine_counts_is_a_usage_error() -> None:
    """--fuel 2**64 was accepted, then every instance "ran out of fuel (18446744073709551616)"
    at start-up (exit 4): a budget the engine cannot hold, reported as if too small."""
    result = wasmstream("run", UPPER, "--fuel", str(2**64), input=b"a\n")
    assert_clean_failure(result, 2, "--fuel")


def test_usage_errors_of_the_builders_point_to_help() -> None:
    """click's own usage errors end "(see 'wasmstream run --help')", and so did these before
    the move; raised by run/configure.py as wasmstream's UsageError they lost it."""
    result = wasmstream("run", UPPER, "--delimiter", ",", input=b"a\n")
    line = assert_clean_failure(result, 2, "--delimiter needs --framing delimiter")
    assert line.endswith("(see 'wasmstream run --help')"), line


# --- the environment ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.1.0", "1"])
def test_a_version_variable_does_not_change_commands(value: str) -> None:
    """auto_envvar_prefix gives the group's --version the variable WASMSTREAM_VERSION, which
    README does not name (it names WASMSTREAM_<COMMAND>_<OPTION>): set to a version, as build
    scripts do, every command failed with exit 2 "Invalid value for '--version'"; set to 1,
    every command printed the version and did nothing."""
    result = wasmstream("run", UPPER, input=b"a\n", env={"WASMSTREAM_VERSION": value})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"A\n"


def test_engine_default_in_help_reads_as_a_default() -> None:
    """`--engine`'s default in --help is "[default: (wasmtime, or $WASMSTREAM_ENGINE)]": click
    wraps a show_default text in parentheses (the old help said "[default: wasmtime]")."""
    result = wasmstream("run", "--help", env={"COLUMNS": "200"})
    text = " ".join(result.stdout.decode().split())
    assert "[default: (" not in text, text[text.find("--engine") :][:200]


# --- --output-parts with --shard: shards that are not one run's ---------------------------------


@pytest.mark.parametrize(
    "second",
    [
        ["--part-size", "100"],  # another grid: its parts overlap the first shard's bytes
        ["--module", fixture("identity.wasm")],  # another module
        ["--input", "other.txt"],  # another input
    ],
    ids=["part-size", "module", "input"],
)
def test_shards_of_different_runs_never_make_a_success(tmp_path: Path, second: list[str]) -> None:
    """Shards into one folder are trusted to be one run's: the last to finish writes _SUCCESS
    when every shard's checkpoint says complete, without comparing what they record. With
    --part-size 300 for shard 1/2 and 100 for shard 2/2 (WASMSTREAM_RUN_PART_SIZE set on one
    host only does it too) the folder's parts hold bytes 0-600 and 500-1000 of a 1000-byte
    input: 1100 bytes, duplicated, under _SUCCESS, both runs exit 0 (with 100K and 64K on a
    2 MB input, 24603 bytes are lost instead). A shard of another module or input is as
    welcome."""
    lines = b"".join(b"line %04d\n" % i for i in range(100))
    (tmp_path / "in.txt").write_bytes(lines)
    (tmp_path / "other.txt").write_bytes(lines.replace(b"line", b"LEAF"))
    common = ["--framing", "lines", "--output-parts", "out"]
    first = wasmstream(
        "run", UPPER, "in.txt", *common, "--shard", "1/2", "--part-size", "300", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr.decode()
    module, data, part_size = UPPER, "in.txt", "300"
    if second[0] == "--module":
        module = second[1]
    elif second[0] == "--input":
        data = second[1]
    else:
        part_size = second[1]
    wasmstream(
        "run", module, data, *common, "--shard", "2/2", "--part-size", part_size, cwd=tmp_path
    )
    folder = tmp_path / "out"
    joined = b"".join(p.read_bytes() for p in sorted(folder.glob("part-*")))
    assert not (folder / "_SUCCESS").exists() or joined == lines.upper(), (
        f"_SUCCESS over {len(joined)} bytes that are not one run's output of {len(lines)}"
    )


def test_restart_into_the_folder_of_its_own_input_keeps_the_input(tmp_path: Path) -> None:
    """`-o IN` on its own input is refused (exit 2, "input file is output file") and nothing
    changes. `--output-parts DIR --restart` with an input that is one of DIR's parts (a
    second stage reading the first's folder, a slip of the folder's name) removed the input
    with the folder's parts, then failed "cannot read input DIR/part-00000" (exit 8): the
    data is gone."""
    lines = b"".join(b"line %04d\n" % i for i in range(100))
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "part-00000").write_bytes(lines)
    result = wasmstream(
        "run", UPPER, "stage/part-00000", "--framing", "lines", "--output-parts", "stage",
        "--restart", cwd=tmp_path,
    )  # fmt: skip
    assert (folder / "part-00000").exists(), result.stderr.decode()
    assert (folder / "part-00000").read_bytes() in (lines, lines.upper())
    if result.returncode != 0:
        assert_clean_failure(result, 2, "part-00000")


@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_a_shard_run_cannot_restart_a_folder_another_run_is_writing(tmp_path: Path) -> None:
    """README: "two runs on one folder are refused by the checkpoint's lock (exit 9)". The lock
    is the checkpoint's, and a shard's checkpoint is another file (_checkpoint.1-of-2.json):
    `--shard 1/2 --restart` started while an unsharded run writes DIR was let in and removed
    that run's recorded parts and its attempt's temporary file; the first run then failed
    "cannot commit DIR/part-00003: No such file or directory" (exit 8), its checkpoint now
    recording parts that are gone."""
    import signal
    import subprocess
    import time

    from conftest import spawn

    (tmp_path / "in.txt").write_bytes(b"".join(b"1%04d\n" % i for i in range(80)))
    # sleepy: a frame starting with '1' takes 100 ms; 10 frames a part, 8 parts, one thread
    common = ["--framing", "lines", "--frame-size", "6", "--part-size", "60", "-j", "1"]
    sleepy = fixture("sleepy.wasm")
    first = spawn(
        ["run", sleepy, "in.txt", *common, "--output-parts", "out"],
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "out" / "part-00000").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = wasmstream(
            "run", sleepy, "in.txt", *common, "--output-parts", "out", "--shard", "1/2",
            "--restart", cwd=tmp_path, timeout=30,
        )  # fmt: skip
        assert (tmp_path / "out" / "part-00000").exists(), "the running run's part was removed"
        assert_clean_failure(second, 9, "in use")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)


@pytest.mark.parametrize("how", ["run --resume", "resume"])
def test_resume_of_a_complete_folder_writes_its_missing_success(tmp_path: Path, how: str) -> None:
    """_SUCCESS is written after the checkpoint is saved complete: a run killed between the
    two leaves a complete checkpoint and no _SUCCESS (here: the folder as such a kill leaves
    it). Resuming said "nothing new to process since checkpoint" and stopped, so the folder
    was never marked done (what a Hadoop or Spark reader waits for)."""
    (tmp_path / "in.txt").write_bytes(b"".join(b"line %04d\n" % i for i in range(100)))
    args = ["run", UPPER, "in.txt", "--framing", "lines", "--output-parts", "out"]
    assert wasmstream(*args, "--part-size", "300", cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "_SUCCESS").unlink()
    if how == "resume":
        again = wasmstream("resume", "--checkpoint", "out/_checkpoint.json", cwd=tmp_path)
    else:
        again = wasmstream(*args, "--part-size", "300", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "out" / "_SUCCESS").exists(), again.stderr.decode()


def test_replay_of_a_folders_dead_letters_runs_every_failed_frame(tmp_path: Path) -> None:
    """Under a record framing a folder's dead letters number frames from each part's start
    (a --cluster run with -o numbers them over the whole input), and replay keeps one letter
    per frame number ("a frame dead-lettered twice is run once"): the folder's dead letters
    together (`cat DIR/_dead-letters-*`) replayed 1 of 4 failed frames, exit 0."""
    lines = b"".join(b"line %04d%s\n" % (i, b"!" if i % 30 == 7 else b"") for i in range(100))
    (tmp_path / "in.txt").write_bytes(lines)
    run = wasmstream(
        "run", fixture("trap.wasm"), "in.txt", "--framing", "lines", "--frame-size", "20",
        "--output-parts", "out", "--part-size", "300", "--on-error", "skip", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 10, run.stderr.decode()
    letters = sorted((tmp_path / "out").glob("_dead-letters-*.jsonl"))
    (tmp_path / "all.jsonl").write_bytes(b"".join(p.read_bytes() for p in letters))
    replayed = wasmstream("replay", "all.jsonl", fixture("identity.wasm"), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr.decode()
    expected = [line for line in lines.splitlines(keepends=True) if b"!" in line]
    assert replayed.stdout == b"".join(expected)


@pytest.mark.parametrize("aligned", [False, True])
def test_run_range_refuses_a_range_that_is_not_one(tmp_path: Path, aligned: bool) -> None:
    """A negative start was taken: with aligned=True, run_range("in", -5, 100) gave the
    output of bytes 0-105, five bytes past its end, which the next range (100-…) gives
    again: joined, the outputs hold 1005 bytes of a 1000-byte input. A start given as text
    raised TypeError ("bad operand type for unary -")."""
    (tmp_path / "in.txt").write_bytes(b"".join(b"line %04d\n" % i for i in range(100)))
    path = str(tmp_path / "in.txt")
    with Transform(UPPER, frame_size=64) as transform:
        with pytest.raises(UsageError):
            b"".join(transform.run_range(path, -5, 100, aligned=aligned))
        with pytest.raises(UsageError):
            b"".join(transform.run_range(path, "0", 100, aligned=aligned))  # type: ignore[arg-type]


def test_stats_json_that_cannot_be_written_is_an_io_failure(tmp_path: Path) -> None:
    """--metrics-file in a missing folder is refused before the run (exit 8, "cannot write
    --metrics-file"); --stats-json there ran the whole run, then ended "internal error:
    FileNotFoundError" with exit 1, on the base too."""
    result = wasmstream(
        "run", UPPER, "--stats-json", str(tmp_path / "missing" / "s.json"), input=b"a\n"
    )
    assert_clean_failure(result, 8, "--stats-json")


def test_resume_of_a_folder_refuses_a_queue_depth_it_has_no_use_for(tmp_path: Path) -> None:
    """`wasmstream resume --queue-depth N` on a run in parts was accepted and did nothing, as
    `run --output-parts DIR --queue-depth N` is refused."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"a\nb\n" * 50)
    args = ["run", UPPER, str(data), "--framing", "lines", "--output-parts", "out"]
    assert wasmstream(*args, cwd=tmp_path).returncode == 0
    saved = (tmp_path / "out" / "_checkpoint.json").read_bytes()
    checkpoint = str(tmp_path / "out" / "_checkpoint.json")
    refused = wasmstream("resume", "--checkpoint", checkpoint, "--queue-depth", "4")
    assert_clean_failure(refused, 2, "--queue-depth", "--output-parts")
    assert (tmp_path / "out" / "_checkpoint.json").read_bytes() == saved


def test_a_cluster_run_refuses_a_queue_depth_it_has_no_use_for(tmp_path: Path) -> None:
    """`--cluster` (without --output-parts) took --queue-depth and did nothing with it."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"a\nb\n" * 50)
    refused = wasmstream(
        "run", UPPER, str(data), "--cluster", "local:1", "--queue-depth", "4", cwd=tmp_path
    )
    assert_clean_failure(refused, 2, "--queue-depth has no queue to act on with --cluster")
