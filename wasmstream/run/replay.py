"""`wasmstream replay`: dead-lettered frames run again, each exactly as it was cut.

A dead letter (`--dead-letter FILE`) keeps a failed frame's number, offset and bytes. Replaying
runs those bytes as one frame each through the library's `Transform` (a fresh instance per
frame, as a failed frame's successor gets), in frame order, and the run's own failure policy
(`policy.FailureHandler`: `--on-error`, `--dead-letter`) decides what a frame that fails again
becomes. The typical use: after fixing a transform, to see why a frame failed (the guest's
stderr is shown) or to produce the output it should have had.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from wasmstream.engines import read_module
from wasmstream.errors import BrokenPipe, FramesFailed, GuestError, IOFailure, UsageError
from wasmstream.run.on_error import DeadLetters, FailureHandler
from wasmstream.run.options import OnError, RunConfig
from wasmstream.run.skeleton import read_config_arg
from wasmstream.stream.framing import Frame
from wasmstream.stream.locks import Role, check_distinct
from wasmstream.transform import Transform


@dataclass(frozen=True)
class Letter:
    """One dead-lettered frame: where it was in the input, and its bytes."""

    frame: int
    offset: int
    data: bytes


def read_letters(path: str, only: int | None = None) -> list[Letter]:
    """The frames of dead-letter file `path` (or those numbered `only`), in input order, each
    once. A frame is known by its offset with its number: a folder of parts numbers frames
    from each part's start, so files of several parts joined hold the same number twice.
    Raises UsageError naming the line that is not a dead letter, IOFailure if unreadable."""
    import base64
    import binascii
    import json

    try:
        with open(path, "rb") as lines:
            raw = lines.read().splitlines()
    except OSError as error:
        raise IOFailure(f"cannot read dead letters {path}: {error.strerror}") from None
    letters: dict[tuple[int, int], Letter] = {}
    for number, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            letter = Letter(
                int(record["frame"]),
                int(record["offset"]),
                base64.b64decode(record["data"], validate=True),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            what = f"no {error}" if isinstance(error, KeyError) else "not JSON with base64 data"
            raise UsageError(f"{path} line {number} is not a dead letter ({what})") from None
        # a frame dead-lettered twice (a retried part) is run once
        letters.setdefault((letter.offset, letter.frame), letter)
    ordered = [letters[key] for key in sorted(letters)]
    if only is not None:
        chosen = [letter for letter in ordered if letter.frame == only]
        if not chosen:
            held = ", ".join(sorted({str(letter.frame) for letter in ordered}, key=int))
            raise UsageError(
                f"{path} has no dead letter for frame {only} (it holds: {held or 'none'})"
            )
        return chosen
    return ordered


def replay(
    config: RunConfig, letters_path: str, only: int | None, notify: Callable[[str], None]
) -> int:
    """Run the letters' frames through `config`'s module into `config.output` (stdout if
    None), in frame order; returns how many ran. Raises as a run does: GuestError under
    `--on-error fail`, FramesFailed when frames failed under skip or passthrough."""
    written = [Role("output", config.output or "-")]
    if config.dead_letter is not None:
        written.append(Role("dead letters", config.dead_letter))
    check_distinct([Role("input", letters_path)], written)
    letters = read_letters(letters_path, only)
    # Each frame in one buffer, as large as the run's or the largest frame, whichever is larger.
    size = max([config.frame_size, *(len(letter.data) for letter in letters)])
    # The transform only runs frames; what a failed one becomes is decided here, frame by frame.
    settings = dataclasses.replace(config, frame_size=size, on_error=OnError.FAIL, dead_letter=None)
    transform = Transform.from_config(
        settings, read_module(config.module), read_config_arg(config.config_arg)
    )
    dead_letters = DeadLetters(config.dead_letter) if config.dead_letter else None
    failures = FailureHandler(config.on_error, dead_letters)
    try:
        if transform.loaded.abi.one_instance:
            notify(
                f"{config.module} keeps state across frames: each frame is replayed on a fresh "
                "instance, without the state it had then"
            )
        with _Output(config.output) as out:
            for letter in letters:
                out.write(_run_one(transform, letter, failures))
    finally:
        transform.close()
        if dead_letters is not None:
            dead_letters.close()
    if failures.failed:
        raise FramesFailed(failures.summary(len(letters)))
    return len(letters)


def _run_one(transform: Transform, letter: Letter, failures: FailureHandler) -> bytes:
    """One frame's output, or what the failure policy puts in its place (raising under fail)."""
    try:
        # no longer than a frame: one frame, whose output comes first (a finish function's,
        # which would follow, belongs to a whole stream, not to one frame replayed)
        with closing(transform.stream([letter.data])) as outputs:
            return next(outputs, b"")
    except GuestError as error:
        frame = Frame(letter.frame, letter.offset, bytearray(letter.data), len(letter.data))
        return bytes(failures.handle(frame, error.at(letter.frame, letter.offset)))


class _Output:
    """The output file (created or truncated) or standard output, written whole."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._fd = 1

    def __enter__(self) -> _Output:
        if self._path not in (None, "-"):
            try:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            except OSError as error:
                raise IOFailure(f"cannot write output {self._path}: {error.strerror}") from None
        return self

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BrokenPipeError:
            raise BrokenPipe() from None
        except OSError as error:
            raise IOFailure(
                f"cannot write output {self._path or 'standard output'}: {error.strerror}"
            ) from None

    def __exit__(self, *exc: object) -> None:
        if self._fd != 1:
            os.close(self._fd)
