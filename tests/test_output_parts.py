"""--output-parts DIR on this machine: parts written apart, committed once, one run's output.

The commit protocol itself (output_parts.PartAttempt) on real files, then the CLI: every framing,
shards into one folder, a run killed and resumed, a tampered part, refusals, dead letters,
a full disk. The cluster's variants are in test_cluster.py (they share its scheduler).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from wasmstream.stream import output_parts
from wasmstream.stream.framing import Framing

from conftest import fixture, kill_once_recorded, recorded_parts, records, spawn, wasmstream

UPPER = fixture("upper.wasm")
MARKS = fixture("marks.wasm")  # its output shows where every frame was cut


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def joined(folder: Path) -> bytes:
    return b"".join((folder / name).read_bytes() for name in listing(folder) if name[:5] == "part-")


# --- the protocol ---------------------------------------------------------------------------


def test_an_attempt_is_invisible_until_committed_and_then_committed_once(tmp_path: Path) -> None:
    first, second = (
        output_parts.PartAttempt(str(tmp_path), 3),
        output_parts.PartAttempt(str(tmp_path), 3),
    )
    first.write(b"one")
    second.write(b"two, longer")
    assert [n for n in listing(tmp_path) if not n.startswith(".")] == []  # no glob sees them
    won = first.commit(b'{"frame":1}\n')
    kept = second.commit(b'{"frame":2}\n')  # the same part run again: the first one stays
    assert (tmp_path / "part-00003").read_bytes() == b"one"
    assert (tmp_path / "_dead-letters-00003.jsonl").read_bytes() == b'{"frame":1}\n'
    assert (
        won == kept == output_parts.describe(str(tmp_path), "part-00003")._replace(dead_letters=12)
    )
    assert listing(tmp_path) == ["_dead-letters-00003.jsonl", "part-00003"]


def test_an_abandoned_attempt_leaves_nothing_and_a_planted_link_is_not_followed(
    tmp_path: Path,
) -> None:
    attempt = output_parts.PartAttempt(str(tmp_path), 0)
    attempt.write(b"half")
    attempt.abandon()
    assert listing(tmp_path) == []
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    os.symlink(target, tmp_path / "part-00001")
    planted = output_parts.PartAttempt(str(tmp_path), 1)
    planted.write(b"data")
    with pytest.raises(Exception, match="cannot commit"):
        planted.commit()  # the name is taken by a link: not a part, and not written through
    assert target.read_bytes() == b"precious"
    assert not [n for n in listing(tmp_path) if n.startswith(".")]


# --- the CLI --------------------------------------------------------------------------------


def parts_run(folder: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return wasmstream("run", *args, "--output-parts", str(folder), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("framing", list(Framing))
def test_parts_joined_are_one_run_for_every_framing(tmp_path: Path, framing: Framing) -> None:
    data = records(framing, [n % 53 for n in range(3000)])
    (tmp_path / "in").write_bytes(data)
    if framing is Framing.FIXED:  # the very frames of one run: marks shows each cut
        args = [MARKS, "in", "--free", "release", "--frame-size", "1000"]
    else:
        args = [UPPER, "in", "--framing", framing.value, "--frame-size", "1K"]
        args += ["--delimiter", "\\x1e"] if framing is Framing.DELIMITER else []
    whole = wasmstream("run", *args, "-j", "1", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    done = parts_run(tmp_path / "out", *args, "--part-size", "7K", "-j", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert joined(tmp_path / "out") == whole.stdout
    names = listing(tmp_path / "out")
    assert "_SUCCESS" in names and done.stdout == b""
    assert not [n for n in names if n.startswith(".")]  # no attempt left behind
    saved = json.loads((tmp_path / "out" / "_checkpoint.json").read_text())
    assert saved["status"] == "complete" and saved["output_parts"] is True
    recorded = saved["position"]["parts"]
    assert [f"part-{p['number']:05d}" for p in recorded] == [n for n in names if n[:5] == "part-"]
    assert sum(p["size"] for p in recorded) == len(whole.stdout)


def test_shards_write_the_very_folder_one_run_writes(tmp_path: Path) -> None:
    data = records(Framing.LINES, [n % 47 for n in range(4000)])
    (tmp_path / "in").write_bytes(data)
    args = [UPPER, "in", "--framing", "lines", "--part-size", "9K"]
    one = parts_run(tmp_path / "one", *args, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    for k in (2, 3, 1):  # in any order, into one folder
        assert not (tmp_path / "many" / "_SUCCESS").exists()  # until the last shard ends
        shard = parts_run(tmp_path / "many", *args, "--shard", f"{k}/3", cwd=tmp_path)
        assert shard.returncode == 0, shard.stderr
    parts = [n for n in listing(tmp_path / "one") if n[:5] == "part-"]
    assert parts == [n for n in listing(tmp_path / "many") if n[:5] == "part-"]
    for name in parts:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()
    assert (tmp_path / "many" / "_SUCCESS").exists()
    assert joined(tmp_path / "many") == data.upper()


def slow_input(parts: int) -> bytes:
    return b"".join(b"2%03d" % n for n in range(parts))  # sleepy: 200 ms per 4-byte frame


@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_a_killed_run_resumes_exactly_with_nothing_left_over(tmp_path: Path) -> None:
    data = slow_input(16)
    (tmp_path / "in").write_bytes(data)
    out = tmp_path / "out"
    args = ["run", fixture("sleepy.wasm"), "in", "--frame-size", "4", "--part-size", "4"]
    args += ["-j", "2", "--output-parts", "out", "--checkpoint-interval", "10ms"]
    client = spawn(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_once_recorded(client, out / "_checkpoint.json", 2)
    assert not (out / "_SUCCESS").exists()  # a killed run never says it finished
    assert 2 <= len(recorded_parts(out / "_checkpoint.json")) < 16
    (out / ".part-00009.0123456789abcdef.tmp").write_bytes(b"a lost attempt")
    (out / "part-00015").write_bytes(b"committed, never recorded")
    resumed = wasmstream("run", *args[1:], "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert joined(out) == data
    assert listing(out) == ["_SUCCESS", "_checkpoint.json", *(f"part-{n:05d}" for n in range(16))]


def failed_run(tmp_path: Path) -> list[str]:
    """A run that fails at frame 10 (trap.wasm on '!'), parts 0-2 recorded before it."""
    (tmp_path / "in").write_bytes(b"a" * 1000 + b"!" + b"a" * 999)
    args = ["run", fixture("trap.wasm"), "in", "--frame-size", "100", "--part-size", "300"]
    return [*args, "--output-parts", "out", "-j", "2"]


def test_a_failed_part_is_not_committed_nor_anything_after_it(tmp_path: Path) -> None:
    args = failed_run(tmp_path)
    failed = wasmstream(*args, cwd=tmp_path)
    assert failed.returncode == 4 and b"frame 10 at offset 1000" in failed.stderr
    out = tmp_path / "out"
    assert listing(out) == ["_checkpoint.json", "part-00000", "part-00001", "part-00002"]
    assert joined(out) == b"a" * 900
    again = wasmstream(*args, "--resume", cwd=tmp_path)  # the same frame fails the same way
    assert again.returncode == 4 and listing(out)[1:] == ["part-00000", "part-00001", "part-00002"]


@pytest.mark.parametrize("tamper", ["bytes", "size", "link", "gone"])
def test_a_resume_refuses_a_recorded_part_that_is_not_what_was_committed(
    tmp_path: Path, tamper: str
) -> None:
    args = failed_run(tmp_path)
    assert wasmstream(*args, cwd=tmp_path).returncode == 4
    part = tmp_path / "out" / "part-00001"
    if tamper == "bytes":
        part.write_bytes(b"b" * 300)
    elif tamper == "size":
        part.write_bytes(b"a" * 299)
    elif tamper == "link":
        (tmp_path / "copy").write_bytes(part.read_bytes())
        part.unlink()
        part.symlink_to(tmp_path / "copy")
    else:
        part.unlink()
    before = {name: (tmp_path / "out" / name).read_bytes() for name in listing(tmp_path / "out")}
    refused = wasmstream(*args, "--resume", cwd=tmp_path)
    assert refused.returncode == 9, refused.stderr
    lines = refused.stderr.decode().splitlines()
    assert len(lines) == 1 and "part-00001" in lines[0] and "Traceback" not in lines[0]
    after = {name: (tmp_path / "out" / name).read_bytes() for name in listing(tmp_path / "out")}
    assert after == before  # nothing removed or written


def test_another_runs_parts_are_refused_and_restart_replaces_them(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 100)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-00000").write_bytes(b"someone else's")
    refused = parts_run(tmp_path / "out", UPPER, "in", cwd=tmp_path)
    assert refused.returncode == 9
    assert b"holds parts of another run" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert (tmp_path / "out" / "part-00000").read_bytes() == b"someone else's"
    replaced = parts_run(tmp_path / "out", UPPER, "in", "--restart", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert joined(tmp_path / "out") == b"ABC\n" * 100


def test_two_runs_on_one_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 100)
    (tmp_path / "out").mkdir()
    lock = os.open(tmp_path / "out" / "_checkpoint.json.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a run holding the folder holds it
        refused = parts_run(tmp_path / "out", UPPER, "in", cwd=tmp_path)
    finally:
        os.close(lock)
    assert refused.returncode == 9 and b"in use by" in refused.stderr
    assert [n for n in listing(tmp_path / "out") if n[:5] == "part-"] == []


@pytest.mark.parametrize(
    ("more", "says"),
    [
        (["-o", "x"], b"--output-parts and -o/--output exclude each other"),
        (["--checkpoint", "c"], b"--output-parts and --checkpoint exclude"),
        (["--dead-letter", "d"], b"--output-parts and --dead-letter exclude"),
        (["--on-overload", "drop"], b"--on-overload drop has no queue to act on"),
    ],
)
def test_options_that_cannot_apply_are_refused(
    tmp_path: Path, more: list[str], says: bytes
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n")
    refused = parts_run(tmp_path / "out", UPPER, "in", *more, cwd=tmp_path)
    assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    assert not (tmp_path / "out").exists()  # refused before the folder was made


def test_stdin_and_a_file_as_the_folder_are_refused(tmp_path: Path) -> None:
    assert parts_run(tmp_path / "out", UPPER, input=b"abc").returncode == 2
    (tmp_path / "in").write_bytes(b"abc\n")
    (tmp_path / "file").write_bytes(b"not a folder")
    refused = parts_run(tmp_path / "file", UPPER, "in", cwd=tmp_path)
    assert refused.returncode == 2 and b"is not a folder" in refused.stderr
    assert (tmp_path / "file").read_bytes() == b"not a folder"


def test_dead_letters_are_kept_once_beside_their_parts(tmp_path: Path) -> None:
    data = b"".join((b"!" if n % 5 == 3 else b"a") + b"a" * 99 for n in range(30))
    (tmp_path / "in").write_bytes(data)
    args = ["run", fixture("trap.wasm"), "in", "--frame-size", "100", "--on-error", "skip"]
    local = wasmstream(*args, "-o", "local", "--dead-letter", "local.dead", cwd=tmp_path)
    assert local.returncode == 10, local.stderr
    done = wasmstream(*args, "--part-size", "500", "--output-parts", "out", cwd=tmp_path)
    assert done.returncode == 10, done.stderr  # completed, some frames failed
    out = tmp_path / "out"
    assert joined(out) == (tmp_path / "local").read_bytes()
    letters = [n for n in listing(out) if n.startswith("_dead-letters-")]
    assert letters == [f"_dead-letters-{n:05d}.jsonl" for n in range(6)]  # every part had one
    lines = b"".join((out / name).read_bytes() for name in letters)
    assert lines == (tmp_path / "local.dead").read_bytes()  # the same lines, once each
    assert (out / "_SUCCESS").exists()


def test_a_full_disk_stops_the_run_resumably_with_no_part_half_written(
    small_disk: Path, tmp_path: Path
) -> None:
    data = records(Framing.LINES, [n % 61 for n in range(40000)])  # ~1.2 MiB of output
    (tmp_path / "in").write_bytes(data)
    args = [UPPER, str(tmp_path / "in"), "--framing", "lines", "--part-size", "128K"]
    full = parts_run(small_disk / "out", *args)
    assert full.returncode == 8, full.stderr
    assert b"No space left on device" in full.stderr and len(full.stderr.splitlines()) == 1
    names = listing(small_disk / "out")
    assert not [n for n in names if n.startswith(".")] and "_SUCCESS" not in names
    saved = json.loads((small_disk / "out" / "_checkpoint.json").read_text())
    recorded = {f"part-{p['number']:05d}" for p in saved["position"]["parts"]}
    assert {n for n in names if n[:5] == "part-"} == recorded
    subprocess.run(["mount", "-o", "remount,size=8M", str(small_disk)], timeout=30, check=True)
    resumed = parts_run(small_disk / "out", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert joined(small_disk / "out") == data.upper()


def test_without_part_size_parts_are_cut_for_the_workers_and_a_resume_keeps_them(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (17 << 12)  # 17 MiB: 8 parts for each of 2 workers are ~1.1 MiB
    (tmp_path / "in").write_bytes(data)
    identity = fixture("identity.wasm")
    args = [identity, "in", "-j", "2", "--stats-json", "stats.json"]
    done = parts_run(tmp_path / "out", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "out" / "_checkpoint.json").read_text())
    assert saved["options"]["part_size"] == 2 << 20  # in whole MiB, rounded up
    jobs = json.loads((tmp_path / "stats.json").read_text())["jobs"]
    assert "9 parts of 2MiB (chosen for 17MiB on 2 workers: about 8 each" in jobs, jobs
    # for one worker 3 MiB would be chosen: a resume keeps the size recorded
    again = parts_run(tmp_path / "out", identity, "in", "-j", "1", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert b"nothing new" in again.stderr
    assert joined(tmp_path / "out") == data


def test_a_resume_refuses_another_folder_swapped_in_for_dir(tmp_path: Path) -> None:
    args = failed_run(tmp_path)
    assert wasmstream(*args, cwd=tmp_path).returncode == 4
    os.rename(tmp_path / "out", tmp_path / "moved")
    subprocess.run(["cp", "-a", str(tmp_path / "moved"), str(tmp_path / "copy")], check=True)
    os.symlink(tmp_path / "copy", tmp_path / "out")  # the same names and bytes, another folder
    refused = wasmstream(*args, "--resume", cwd=tmp_path)
    assert refused.returncode == 9 and b"is not the one recorded" in refused.stderr
    assert listing(tmp_path / "copy") == listing(tmp_path / "moved")  # nothing changed there


def test_a_file_url_input_inside_the_folder_is_refused_not_removed(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-00000").write_bytes(b"abc\n")  # a --restart would remove it
    url = (tmp_path / "out" / "part-00000").as_uri()
    inside = wasmstream("run", UPPER, url, "--output-parts", "out", "--restart", cwd=tmp_path)
    assert inside.returncode == 2 and b"is inside --output-parts out" in inside.stderr
    assert (tmp_path / "out" / "part-00000").read_bytes() == b"abc\n"
