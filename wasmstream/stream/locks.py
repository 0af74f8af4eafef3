"""The files a run writes: refused when one is also an input or another of them, and locked.

Both checks run before anything is opened for writing, so a refused run leaves every file as it
was. A run that keeps a checkpoint locks it (through `CHECKPOINT.lock`: the checkpoint itself is
replaced by rename at every save, so it cannot carry a lock); a run writing a regular file locks
that file. The locks are `flock` locks: advisory, released by the kernel when the process ends,
however it ends, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from wasmstream.errors import IOFailure, RunLocked, UsageError
from wasmstream.stream.stdio import STDIO


@dataclass(frozen=True)
class Role:
    """A file a run touches, and what it is to the run (named in refusals)."""

    what: str  # "input", "output", "checkpoint", "dead letters", "drop log"
    path: str  # a path, or "-" for standard input (as an input) or output (as the output)

    @property
    def name(self) -> str:
        if self.path != STDIO:
            return self.path
        return "standard input" if self.what == "input" else "standard output"

    @property
    def label(self) -> str:
        """`output out.bin`; standard input and output need no role in front."""
        return self.name if self.path == STDIO else f"{self.what} {self.path}"


def _identity(role: Role) -> tuple[int, int] | None:
    """(device, inode) of the regular file behind `role`, or None (absent, a pipe, a device…)."""
    try:
        if role.path == STDIO:
            info = os.fstat(0 if role.what == "input" else 1)
        else:
            info = os.stat(role.path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def check_distinct(inputs: Iterable[Role], written: Iterable[Role]) -> None:
    """Refuse (UsageError) a file written by the run that is also an input, or that is written
    twice: `run m in -o in` would truncate its own input, `--checkpoint` equal to `-o` would put
    JSON in the output, `< f >> f` grows until the disk is full (cat: "input file is output file").
    """
    seen: dict[tuple[int, int] | str, Role] = {}
    for role in inputs:
        key = _identity(role)
        if key is not None:
            seen.setdefault(key, role)
    for role in written:
        written_key = _written_key(role)
        if written_key is None:
            continue
        other = seen.get(written_key)
        if other is not None:
            raise UsageError(_same_file_message(role, other))
        seen[written_key] = role


def _written_key(role: Role) -> tuple[int, int] | str | None:
    """A regular file by (device, inode); a file not created yet by its resolved name (links
    followed, a dangling one included: writing through it creates its target); None for what
    may be written by several at once (a pipe, a terminal, /dev/null)."""
    identity = _identity(role)
    if identity is not None or role.path == STDIO:
        return identity
    return os.path.realpath(role.path) if not os.path.exists(role.path) else None


def check_checkpoint_path(path: str) -> None:
    """A checkpoint is a regular file, or a name not taken yet: never a device, a FIFO or a
    directory (a save renames a file over it; reading a FIFO waits forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise IOFailure(f"cannot use checkpoint {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"checkpoint {path} is not a regular file: name a file for it")


def _same_file_message(role: Role, other: Role) -> str:
    if other.what == "input":
        return f"{role.label} is the same file as {other.label}: input file is output file"
    return f"{role.label} is the same file as the {other.label}"


class RunLock:
    """An exclusive lock held for a whole run; `release` (or process exit) lets it go.

    `acquire_file` locks a file the run will write itself (the output: opened without
    truncating, locked, and only then truncated by the caller through `fd`); `acquire_sidecar`
    locks `PATH.lock`, created for the purpose and removed on release.
    """

    def __init__(self, fd: int, path: str, sidecar: bool) -> None:
        self.fd = fd
        self.path = path
        self._sidecar = sidecar

    @classmethod
    def acquire_file(cls, path: str, what: str, flags: int, shown: str | None = None) -> RunLock:
        """`shown`: how messages name the file (`path` itself by default)."""
        named = f"{what} {path}" if shown is None else shown
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise IOFailure(f"cannot write {named}: {error.strerror}") from None
        cls._lock_or_refuse(fd, named)
        return cls(fd, path, sidecar=False)

    @classmethod
    def acquire_sidecar(cls, path: str, what: str) -> RunLock:
        # by the checkpoint's resolved name: a link to it shares its lock
        lock_path = f"{os.path.realpath(path)}.lock"
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as error:
                raise IOFailure(f"cannot create lock file {lock_path}: {error.strerror}") from None
            cls._lock_or_refuse(fd, f"{what} {path}")
            # The holder before us may have removed the file between our open and our lock: then
            # we hold a lock on a name nobody else can find. Only a lock on the file that is at
            # the path now counts.
            if _same_inode(fd, lock_path):
                break
            os.close(fd)
        lock = cls(fd, lock_path, sidecar=True)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for people; the kernel keeps the lock
        except OSError as error:
            lock.release()
            raise IOFailure(f"cannot write lock file {lock_path}: {error.strerror}") from None
        return lock

    @staticmethod
    def _lock_or_refuse(fd: int, named: str) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _lock_holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise IOFailure(f"cannot lock {named}: {error.strerror}") from None
            by = f"another wasmstream run (PID {holder})" if holder else "another run"
            raise RunLocked(f"{named} is in use by {by}") from None

    def release(self) -> None:
        if self.fd < 0:
            return
        if self._sidecar:  # removed while still locked: see acquire_sidecar
            with contextlib.suppress(OSError):
                if _same_inode(self.fd, self.path):
                    os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def checkpoint_holder(path: str) -> int | None:
    """The PID of the run holding the checkpoint's lock (0: held, PID unknown), or None when
    no process holds it: a checkpoint that says "running" then belongs to a killed run."""
    lock_path = f"{os.path.realpath(path)}.lock"
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: a run removes it on release, and takes it before it saves
        return None
    try:
        holder = _lock_holder(fd)
        if holder is not None or os.path.exists("/proc/locks"):
            return holder
        try:  # no /proc/locks: probe, as briefly as can be (a run starting now may be refused)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _same_inode(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _lock_holder(fd: int) -> int | None:
    """The PID holding a flock on the file behind `fd`, from /proc/locks (Linux), if known."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF" ("->" marks waiters)
                if "->" not in fields and len(fields) >= 6 and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


class RunFiles:
    """The locks of one run, held from before any check to after the last checkpoint save.

    The checkpoint is locked through its sidecar; an output that is (or will be) a regular file
    is locked itself and handed on as `output_fd`, so the file checked is the file written. An
    output created here and never used (the run was refused before writing) is removed again.
    """

    def __init__(self, checkpoint: str | None, output: str | None, to_stdout: bool = True) -> None:
        """`to_stdout`: with no `output`, the run writes standard output (not a folder)."""
        self._checkpoint = checkpoint
        self._output = output if output not in (None, STDIO) else None
        self._to_stdout = to_stdout
        self._locks: list[RunLock] = []
        self._created = False
        self._used = False
        self.output_fd: int | None = None

    def __enter__(self) -> RunFiles:
        try:
            if self._output is not None and is_own_file(self._output):
                self._lock_output(self._output)
            elif self._output is None and self._to_stdout and _stdout_is_a_file():
                # `>> log` from two runs at once would interleave: lock the file behind stdout
                # through a descriptor of our own (its lock ends with this process, whoever
                # else holds the shell's descriptor)
                lock = RunLock.acquire_file(
                    "/proc/self/fd/1", "output", os.O_RDONLY, shown="standard output (a file)"
                )
                self._locks.append(lock)
            if self._checkpoint is not None:
                self._locks.append(RunLock.acquire_sidecar(self._checkpoint, "checkpoint"))
        except BaseException:
            self._release()
            raise
        return self

    def _lock_output(self, path: str) -> None:
        self._created = not os.path.lexists(path)
        try:  # read-write: a checkpoint records a digest of the output's last bytes
            lock = RunLock.acquire_file(path, "output", os.O_RDWR)
        except IOFailure:
            if self._checkpoint is not None:  # it could not be checked on resume: say so now
                raise
            lock = RunLock.acquire_file(path, "output", os.O_WRONLY)
        self._locks.append(lock)
        self.output_fd = lock.fd

    def output_used(self) -> None:
        """The output is being written: from now on it stays, whatever happens."""
        self._used = True

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._created and not self._used and self._output is not None:
            with contextlib.suppress(OSError):
                if self.output_fd is not None and os.fstat(self.output_fd).st_size == 0:
                    os.unlink(self._output)
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()


def _stdout_is_a_file() -> bool:
    try:
        return stat.S_ISREG(os.fstat(1).st_mode)
    except OSError:
        return False


def is_own_file(path: str) -> bool:
    """Whether an output is a file of the run's own, to lock, cut, checkpoint and resume: a
    regular file or a name not taken yet. Not a FIFO, a terminal or /dev/null, nor /dev/stdout
    and its kin, which may lead to a regular file but name a descriptor someone else opened
    (and whose sidecar would land in /dev): those are written to as they are."""
    special = ("/dev/", "/proc/")
    if os.path.abspath(path).startswith(special) or os.path.realpath(path).startswith(special):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False
