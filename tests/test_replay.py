"""`wasmstream replay`: dead-lettered frames run again, each as it was cut, in frame order."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from wasmstream.errors import ExitStatus

from conftest import assert_clean_failure, fixture, wasmstream

TRAP, UPPER = fixture("trap.wasm"), fixture("upper.wasm")
# frames of 4 bytes; frames 1, 3 and 4 hold '!', on which trap.wasm traps
DATA = b"okok!!ab" + b"fine" + b"cd!!" + b"!!!!" + b"last"
FAILED = {1: b"!!ab", 3: b"cd!!", 4: b"!!!!"}


def dead_letters(tmp_path: Path, *more: str) -> Path:
    letters = tmp_path / "dead.jsonl"
    result = wasmstream(
        "run", TRAP, "--frame-size", "4", "-j", "2", "--on-error", "skip",
        "--dead-letter", str(letters), *more, input=DATA,
    )  # fmt: skip
    assert result.returncode == ExitStatus.FRAMES_FAILED, result.stderr
    return letters


def frames_of(letters: Path) -> list[tuple[int, int, bytes]]:
    records = [json.loads(line) for line in letters.read_text().splitlines()]
    return [(r["frame"], r["offset"], base64.b64decode(r["data"])) for r in records]


def test_replay_runs_every_frame_again_in_frame_order(tmp_path: Path) -> None:
    letters = dead_letters(tmp_path)
    assert [(frame, data) for frame, _, data in frames_of(letters)] == sorted(FAILED.items())
    # whatever order the file holds them in, the outputs come in frame order
    lines = letters.read_text().splitlines()
    letters.write_text("\n".join(reversed(lines)) + "\n")
    result = wasmstream("replay", str(letters), UPPER)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(data.upper() for _, data in sorted(FAILED.items()))
    assert result.stderr == b""


def test_replay_of_one_frame_to_a_file(tmp_path: Path) -> None:
    letters = dead_letters(tmp_path)
    out = tmp_path / "out"
    result = wasmstream(
        "replay", str(letters), fixture("hexdump.wasm"), "--frame", "3", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, out.read_bytes()) == (b"", FAILED[3].hex().encode())
    missing = wasmstream("replay", str(letters), UPPER, "--frame", "2")
    assert_clean_failure(missing, ExitStatus.USAGE, "no dead letter for frame 2", "1, 3, 4")


def test_a_frame_that_fails_again_ends_the_replay_as_it_ended_the_run(tmp_path: Path) -> None:
    letters = dead_letters(tmp_path)
    failed = wasmstream("replay", str(letters), TRAP)
    assert_clean_failure(failed, ExitStatus.GUEST_ERROR, "frame 1 at offset 4: guest trapped")
    assert failed.stdout == b""
    again = tmp_path / "again.jsonl"
    skipped = wasmstream(
        "replay", str(letters), TRAP, "--on-error", "skip", "--dead-letter", str(again)
    )
    assert_clean_failure(
        skipped, ExitStatus.FRAMES_FAILED, "3 of 3 frames failed (3 trap) and were skipped"
    )
    assert frames_of(again) == frames_of(letters)  # the same frames, numbers and offsets
    passed = wasmstream("replay", str(letters), TRAP, "--on-error", "passthrough")
    assert passed.returncode == ExitStatus.FRAMES_FAILED
    assert passed.stdout == b"".join(data for _, data in sorted(FAILED.items()))


def test_replay_shows_the_guests_stderr_and_takes_the_run_options(tmp_path: Path) -> None:
    letters = dead_letters(tmp_path)
    chatty = wasmstream("replay", str(letters), fixture("chatty.wasm"), "--frame", "1")
    assert chatty.returncode == 0, chatty.stderr
    assert chatty.stderr and chatty.stdout == FAILED[1]  # chatty talks on its stdout and stderr
    xor = wasmstream("replay", str(letters), fixture("xor.wasm"), "--config", " ")
    assert xor.stdout == bytes(b ^ 0x20 for _, data in sorted(FAILED.items()) for b in data)
    spin = wasmstream(
        "replay", str(letters), fixture("hostile.wasm"), "--function", "spin", "--timeout", "200ms"
    )
    assert_clean_failure(spin, ExitStatus.TIMEOUT, "frame 1 at offset 4")


def test_record_frames_of_any_length_replay_whole(tmp_path: Path) -> None:
    lines = [b"short!\n", b"x" * 900 + b"!\n", b"fine\n" * 50, b"again !\n"]
    letters = tmp_path / "dead.jsonl"
    run = wasmstream(
        "run", TRAP, "--framing", "lines", "--frame-size", "1K", "--on-error", "skip",
        "--dead-letter", str(letters), input=b"".join(lines),
    )  # fmt: skip
    assert run.returncode == ExitStatus.FRAMES_FAILED, run.stderr
    failed = [data for _, _, data in frames_of(letters)]
    assert failed and max(map(len, failed)) > 16
    # a frame size smaller than a frame: the buffer holds the largest one all the same
    replayed = wasmstream("replay", str(letters), UPPER, "--frame-size", "16")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == b"".join(failed).upper()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not json\n", "line 1 is not a dead letter (not JSON with base64 data)"),
        (b'{"frame": 1, "offset": 0, "data": "AA=="}\n{"frame": 2}\n', "line 2 is not a dead"),
        (b'{"frame": 1, "offset": 0, "data": "!!"}\n', "line 1 is not a dead letter"),
    ],
)
def test_a_file_that_is_not_dead_letters_is_refused_naming_the_line(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    letters = tmp_path / "dead.jsonl"
    letters.write_bytes(content)
    result = wasmstream("replay", str(letters), UPPER)
    assert_clean_failure(result, ExitStatus.USAGE, str(letters), needle)


def test_replay_refuses_to_write_over_its_own_dead_letters(tmp_path: Path) -> None:
    letters = dead_letters(tmp_path)
    before = letters.read_bytes()
    for args in (["-o", str(letters)], ["--dead-letter", str(letters)]):
        result = wasmstream("replay", str(letters), UPPER, *args)
        assert_clean_failure(result, ExitStatus.USAGE, "is the same file as")
    assert letters.read_bytes() == before
    gone = wasmstream("replay", str(tmp_path / "nope.jsonl"), UPPER)
    assert_clean_failure(gone, ExitStatus.IO_ERROR, "cannot read dead letters")
