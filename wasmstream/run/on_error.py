"""What becomes of a frame that fails: `--on-error fail|skip|passthrough` and `--dead-letter`.

Called in input order, by whichever thread writes the output, so dead letters are in order too.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from typing import Protocol

from wasmstream.errors import GuestError, IOFailure
from wasmstream.run.options import OnError
from wasmstream.run.tally import Tally
from wasmstream.stream.framing import Frame


class JsonLines:
    """An append-only file of JSON lines (json, not msgspec: runs without a checkpoint never
    import msgspec, which costs start-up time; and json only once a line is written, since
    most runs write none)."""

    what = "log"

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
            self.size = os.fstat(self._fd).st_size  # what a checkpoint records as done
        except OSError as error:
            raise IOFailure(f"cannot write {self.what} {path}: {error.strerror}") from None

    def keep(self, size: int) -> None:
        """A resumed run: drop the lines written after the checkpoint (their frames are done
        again), so that each frame is logged once. A file shorter than that was cut by someone
        else: it is left as it is."""
        if self.size > size:
            try:
                os.ftruncate(self._fd, size)
            except OSError as error:
                raise IOFailure(f"cannot write {self.what} {self.path}: {error.strerror}") from None
            self.size = size

    def write_record(self, record: dict[str, object]) -> None:
        """Append one whole line, or nothing: a short write (a full disk) is cut off again, so
        the file never ends in half a JSON line that breaks every reader after it."""
        import json

        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        try:
            before = os.fstat(self._fd).st_size
            written = os.write(self._fd, line)  # O_APPEND: one write, one whole line
            if written != len(line):
                os.ftruncate(self._fd, before)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.size = before + written
        except OSError as error:
            raise IOFailure(f"cannot write {self.what} {self.path}: {error.strerror}") from None

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as error:
            raise IOFailure(f"cannot write {self.what} {self.path}: {error.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)


class DeadLetters(JsonLines):
    """`--dead-letter FILE`: every failed frame, with enough to replay it later."""

    what = "dead letters"

    def append(self, frame: Frame, error: GuestError) -> None:
        self.write_record(dead_letter(frame.index, frame.offset, frame.length, error, frame.data))


def dead_letter(
    index: int, offset: int, length: int, error: GuestError, data: bytes | memoryview
) -> dict[str, object]:
    """A failed frame as a dead-letter line holds it (`wasmstream replay` reads them)."""
    import base64  # as json: only once a frame has failed

    # kind: trap, timeout, fuel, memory, exit, guest-error or startup
    return {
        "frame": index,
        "offset": offset,
        "length": length,
        "kind": error.kind,
        "message": error.what,
        "data": base64.b64encode(data).decode("ascii"),
    }


class DropLog(JsonLines):
    """`--drop-log FILE`: every frame dropped under --on-overload drop|sample."""

    what = "drop log"

    def append(self, frame: Frame) -> None:
        self.write_record({"frame": frame.index, "offset": frame.offset, "length": frame.length})


class DeadLetterSink(Protocol):
    """Where failed frames go: `--dead-letter FILE`, or a cluster task's result (whose client
    writes them to the file, in order)."""

    def append(self, frame: Frame, error: GuestError) -> None: ...


class FailureHandler:
    """Applies the error policy to failed frames, and counts them in the run's tally (the one
    count that progress, checkpoints and the summary read)."""

    def __init__(
        self,
        policy: OnError = OnError.FAIL,
        dead_letters: DeadLetterSink | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.policy = policy
        self.dead_letters = dead_letters
        self.tally = tally if tally is not None else Tally()
        self.by_kind: Counter[str] = Counter()
        self.first: GuestError | None = None

    @property
    def needs_input(self) -> bool:
        """Whether a failed frame's original input must still be at hand after the guest ran."""
        return self.policy is not OnError.FAIL or self.dead_letters is not None

    def handle(self, frame: Frame, error: GuestError) -> bytes | memoryview:
        """The output to write in place of the failed frame's; raises `error` under `fail`."""
        if self.dead_letters is not None:
            self.dead_letters.append(frame, error)
        if self.policy is OnError.FAIL:
            raise error
        self.tally.failed += 1
        self.by_kind[error.kind] += 1
        self.first = self.first or error
        return b"" if self.policy is OnError.SKIP else frame.data

    @property
    def failed(self) -> int:
        return self.tally.failed

    def summary(self, frames: int) -> str:
        verb = "skipped" if self.policy is OnError.SKIP else "passed through unchanged"
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.by_kind.items()))
        return (
            f"{self.failed} of {frames} frames failed ({kinds}) and were {verb}; "
            f"first: {self.first}"
        )
