"""`--output-parts DIR`: a folder of part outputs, each written where its part ran and
committed once, and the metadata the run's client keeps of them.

The layout, its names and what the client records of a part: stream/parts_layout.py.

The commit protocol. An attempt writes its part to a temporary name of its own (dot-prefixed:
no `part-*` glob sees it; attempt-unique: two attempts never share one), fsyncs it, and
commits it with `link(2)`, which never replaces: the first attempt to commit a part wins, a
later one finds the part there, keeps it, and removes its own. A part's dead letters are
committed the same way, before the part: a part that is there has its dead letters there too.
Then the folder is fsynced. An attempt that dies leaves only a temporary file, which the next
run or resume in the folder removes; a part committed but not recorded in the checkpoint (its
client died first) is removed and run again. The client only records, per part, its size and
the digest of its last 64 KiB, and checks them before resuming.

DIR may also be an object-store prefix (`s3://bucket/out/`, stream/object_parts.py): the same
layout and the same protocol, with a multipart upload completed only if the name is free
(`If-None-Match: *`) as the commit, and a lock object for the folder lock. Both are a `Place`,
the one thing the protocol asks of where parts go.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from wasmstream.checkpoint.durable import fsync_folder, replace_durably
from wasmstream.errors import CheckpointError, IOFailure, UsageError
from wasmstream.stream.parts_layout import (
    MAX_PARTS,
    SUCCESS,
    TAIL,
    Committed,
    Tail,
    checkpoint_name,
    committed_part,
    dead_letters_name,
    number_of,
    part_name,
)
from wasmstream.stream.sources import is_url, links

if TYPE_CHECKING:
    from wasmstream.checkpoint.record import Checkpoint

LOCAL = ("", "file", "local")  # the protocols of an input on this machine (sources.links)


class Attempt(Protocol):
    """One attempt at a part, where it runs: written, then committed once or abandoned."""

    def write(self, data: bytes | memoryview) -> int: ...

    def commit(self, dead_letters: bytes = b"") -> Committed:
        """The part visible under its name, its dead letters first; an attempt that finds it
        committed already (the same part run twice) keeps that one and says what it is."""
        ...

    def abandon(self) -> None:
        """Nothing of the attempt is left visible."""
        ...


class Place(Protocol):
    """Where a run's parts go: a folder (`Folder`) or an object-store prefix
    (object_parts.ObjectPrefix). What the commit protocol and the client's record ask of it."""

    where: str  # as given: a folder's path, or a URL
    title: str  # for messages: "folder clean", "prefix s3://bucket/clean/"

    def name_of(self, name: str) -> str:
        """`name` in the place, for messages."""
        ...

    def make(self) -> bool:
        """It exists afterwards; True if made here. UsageError if it is something else."""
        ...

    def unmake(self) -> None:
        """Undo `make`: the run was refused before it wrote anything."""
        ...

    def check_inputs_outside(self, inputs: Iterable[str]) -> None: ...

    def attempt(self, number: int) -> Attempt: ...

    def names(self) -> list[str]:
        """The names in it (not in folders below)."""
        ...

    def describe(self, name: str) -> Committed:
        """What the committed part `name` is now; OSError if it is missing or not a file."""
        ...

    def size(self, name: str) -> int:
        """The size of file `name`; OSError if it is missing or not a file."""
        ...

    def remove(self, names: list[str], numbers: range) -> None:
        """Remove `names`, and what attempts at parts `numbers` left that `names` cannot show."""
        ...

    def identity(self) -> tuple[int, int] | None:
        """What tells this place from another one swapped in under its name (None: nothing)."""
        ...

    def lock(self, shard: tuple[int, int] | None, checkpoint: str) -> None:
        """Held while a run writes it: a whole run alone, or shards together; refused at once
        (CheckpointError)."""
        ...

    def unlock(self) -> None: ...

    def write_success(self) -> None: ...

    def publish_checkpoint(self, name: str, path: str) -> None:
        """The final checkpoint at `path`, kept in the place as `name` (shards read each
        other's there)."""
        ...

    def withdraw_checkpoint(self, name: str) -> None:
        """What `publish_checkpoint` kept as `name` is gone: the run writes the place again,
        and a shard's copy saying complete would tell the other shards it is done."""
        ...

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        """The checkpoint kept in the place as `name`, or None."""
        ...


def place_for(where: str) -> Place:
    """The place `--output-parts` names: a URL is an object-store prefix, else a folder."""
    if is_url(where):
        from wasmstream.stream.object_parts import ObjectPrefix

        return ObjectPrefix(where)
    return Folder(where)


def attempt_at(where: str, number: int) -> Attempt:
    """An attempt at part `number` in the place `where` names (on a worker, or here)."""
    return place_for(where).attempt(number)


# --- where a part runs ---------------------------------------------------------------------


class PartAttempt:
    """One attempt at a part: its output written to a temporary file of its own in DIR, then
    committed (or abandoned). On a worker, or on this machine for a local run."""

    def __init__(self, folder: str, number: int) -> None:
        self.folder = folder
        self.number = number
        self._attempt = uuid.uuid4().hex[:16]
        self._temp = self._temp_for(part_name(number))
        self._fd = self._create(self._temp)
        self._tail = Tail()

    def _temp_for(self, name: str) -> str:
        return os.path.join(self.folder, f".{name}.{self._attempt}.tmp")

    def _create(self, path: str) -> int:
        try:  # O_EXCL | O_NOFOLLOW: a name planted in advance (a link) is refused, not followed
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(path, flags, 0o666)
        except OSError as error:
            raise IOFailure(f"cannot write part {path}: {error.strerror}") from None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as error:
            raise IOFailure(
                f"cannot write {os.path.join(self.folder, part_name(self.number))}: "
                f"{error.strerror}"
            ) from None
        self._tail.add(data)
        return len(data)

    def commit(self, dead_letters: bytes = b"") -> Committed:
        """Make the part durable and visible under its name, once: dead letters first, then
        the part; an attempt that finds it committed already keeps that one."""
        name = part_name(self.number)
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            dead = self._commit_dead_letters(dead_letters) if dead_letters else None
            final = os.path.join(self.folder, name)
            if _link_once(self._temp, final):
                committed = self._tail.committed(dead)
            else:
                committed = describe(self.folder, name)._replace(dead_letters=dead)
            os.unlink(self._temp)
            fsync_folder(self.folder)
        except OSError as error:
            self.abandon()
            raise IOFailure(
                f"cannot commit {os.path.join(self.folder, name)}: {error.strerror}"
            ) from None
        except BaseException:
            self.abandon()
            raise
        return committed

    def _commit_dead_letters(self, data: bytes) -> int:
        name = dead_letters_name(self.number)
        temp = self._temp_for(name)
        fd = self._create(temp)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            final = os.path.join(self.folder, name)
            if not _link_once(temp, final):
                return os.lstat(final).st_size
            return len(data)
        finally:
            os.unlink(temp)

    def abandon(self) -> None:
        """Nothing of this attempt stays visible (nor, as far as it can tell, at all)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for temp in (self._temp, self._temp_for(dead_letters_name(self.number))):
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _link_once(temp: str, final: str) -> bool:
    """Give `temp` the name `final` unless it is taken (False then). `link` never replaces;
    where a filesystem has no hard links, a rename after a look (two attempts may then race:
    both write the same bytes)."""
    try:
        os.link(temp, final, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
    if os.path.lexists(final):
        return False
    os.rename(temp, final)
    os.link(final, temp)  # the caller unlinks `temp` either way
    return True


def describe(folder: str, name: str) -> Committed:
    """What the committed file `name` is now (OSError if it is not a regular file)."""
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        length = min(TAIL, info.st_size)
        tail = os.pread(fd, length, info.st_size - length)
    finally:
        os.close(fd)
    return committed_part(info.st_size, tail)


# --- a folder ------------------------------------------------------------------------------


class Folder:
    """Parts in a folder of this machine's (or of a filesystem the cluster shares)."""

    def __init__(self, path: str) -> None:
        self.where = path
        self.title = f"folder {path}"
        self._lock_fd: int | None = None

    def name_of(self, name: str) -> str:
        return os.path.join(self.where, name)

    def make(self) -> bool:
        try:
            os.mkdir(self.where, 0o777)
            return True
        except FileExistsError:
            if not os.path.isdir(self.where):
                raise UsageError(f"--output-parts {self.where} is not a folder") from None
            return False
        except OSError as error:
            raise IOFailure(f"cannot create folder {self.where}: {error.strerror}") from None

    def unmake(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.where)

    def check_inputs_outside(self, inputs: Iterable[str]) -> None:
        """Refuse an input inside the folder: the run removes what in it is not its own (a
        `--restart` all its parts), as `-o` refuses an output that is an input."""
        inside = os.path.realpath(self.where)
        for path in inputs:
            if path == "-":
                continue
            local_files = [rest for protocol, rest in links(path) if protocol in LOCAL]
            for local in local_files:
                real = os.path.realpath(local)
                if os.path.commonpath([real, inside]) == inside:
                    raise UsageError(
                        f"input {path} is inside --output-parts {self.where}: the run would "
                        "remove it"
                    )

    def attempt(self, number: int) -> PartAttempt:
        return PartAttempt(self.where, number)

    def names(self) -> list[str]:
        return os.listdir(self.where)

    def describe(self, name: str) -> Committed:
        return describe(self.where, name)

    def size(self, name: str) -> int:
        info = os.lstat(os.path.join(self.where, name))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return info.st_size

    def remove(self, names: list[str], numbers: range) -> None:
        # an attempt's leftovers are dot-named files of its part's number: among `names`
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.where, name))
        if names:
            fsync_folder(self.where)

    def identity(self) -> tuple[int, int]:
        info = os.stat(self.where)
        return info.st_dev, info.st_ino

    def lock(self, shard: tuple[int, int] | None, checkpoint: str) -> None:
        """flock(2) on the folder itself (no file of the lock's own is left in it): exclusive
        for a run of the whole input, shared by shards."""
        import fcntl

        try:
            fd = os.open(self.where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise IOFailure(f"cannot lock folder {self.where}: {error.strerror}") from None
        mode = fcntl.LOCK_SH if shard is not None else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            what = "a run of the whole input" if shard is not None else "another run"
            raise CheckpointError(
                f"folder {self.where} is in use by {what}: wait for it, or use another folder"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_success(self) -> None:
        replace_durably(os.path.join(self.where, SUCCESS), b"", ".tmp")

    def publish_checkpoint(self, name: str, path: str) -> None:
        pass  # the run's checkpoint is in the folder already, under that name

    def withdraw_checkpoint(self, name: str) -> None:
        pass  # it is the run's own, saved as the run goes: not a copy of a finished one

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        from wasmstream.checkpoint import record as checkpoint

        return checkpoint.load(os.path.join(self.where, name))


# --- on the client -------------------------------------------------------------------------


def check_recorded(place: Place, recorded: Iterable[tuple[int, Committed]], source: str) -> None:
    """Before a resume keeps them: every part (and dead-letter file) the checkpoint records is
    in the place, a regular file, of its recorded size, ending in its recorded bytes."""
    for number, committed in recorded:
        name = place.name_of(part_name(number))
        try:
            now = place.describe(part_name(number))
        except OSError as error:
            raise CheckpointError(
                f"{name}, recorded in checkpoint {source}, cannot be used: {_why(error)}"
            ) from None
        if now != committed._replace(dead_letters=None):
            raise CheckpointError(
                f"{name} is not the part recorded in checkpoint {source} "
                f"({now.size} bytes, {committed.size} recorded, or other bytes)"
            )
        if committed.dead_letters is not None:
            dead = place.name_of(dead_letters_name(number))
            try:
                size = place.size(dead_letters_name(number))
            except OSError as error:
                raise CheckpointError(
                    f"{dead}, recorded in checkpoint {source}, cannot be used: {_why(error)}"
                ) from None
            if size != committed.dead_letters:
                raise CheckpointError(
                    f"{dead} is not the dead-letter file recorded in checkpoint {source}"
                )


def _why(error: OSError) -> str:
    return error.strerror or "No such file or directory"


def clear(
    place: Place, numbers: range, keep: set[int], fresh: bool, withdraw: str | None = None
) -> None:
    """Remove what is not this run's in its range of part numbers: attempts' leftovers, parts
    and dead letters the checkpoint does not record, and _SUCCESS (the place changes).
    `fresh`: a run without a checkpoint refuses (CheckpointError) a place holding committed
    parts in its range, another run's, rather than remove them. `withdraw`: the run's
    published checkpoint, withdrawn before any part goes (a shard's copy saying complete
    would have the last shard write _SUCCESS over parts removed here)."""
    names = sorted(place.names())
    if fresh:
        theirs = [n for n in names if (k := number_of(n)) and k[1] and k[0] in numbers]
        if theirs:
            raise CheckpointError(
                f"{place.title} holds parts of another run ({theirs[0]} …) and no checkpoint "
                "of this one: use --restart to replace them, or write elsewhere"
            )
    stale = []
    for name in names:
        known = number_of(name)
        if name == SUCCESS or (
            known is not None and known[0] in numbers and not (known[1] and known[0] in keep)
        ):
            stale.append(name)
    if withdraw is not None:
        place.withdraw_checkpoint(withdraw)
    place.remove(stale, numbers)


def _run_of(saved: Checkpoint) -> tuple[object, ...]:
    """What shards of one run share: all of it but the shard itself and its progress."""
    import msgspec

    inputs = [(i.path, i.device, i.inode, i.head_sha256) for i in saved.inputs]
    return saved.module.sha256, msgspec.structs.replace(saved.options, shard=None), inputs


def mark_complete(
    where: str,
    checkpoint: str,
    shard: tuple[int, int] | None,
    recorded: list[tuple[int, Committed]],
) -> None:
    """`_SUCCESS` for a run whose checkpoint says complete (a run killed after its last save
    but before writing it is finished so, by the next): as the run itself would, once every
    shard is done, and only over the parts it recorded, as recorded."""
    parts = PartsFolder(where, checkpoint, shard, range(0), [], fresh=False)
    parts.place.lock(shard, checkpoint)  # takes over the lock object a killed run left
    try:
        check_recorded(parts.place, recorded, checkpoint)
        parts._identity = parts.place.identity()
        parts.complete()
    finally:
        parts.place.unlock()  # which goes now, as it would have gone with that run


class PartsFolder:
    """The run's output when it is a folder of parts, as its client sees it: the parts it
    recorded, in order (what the checkpoint keeps), with nothing passing through it. Opened
    by the run's skeleton where it would cut an output file: a resumed run's recorded parts
    are checked, and what is not this run's in its range is removed."""

    fd = -1
    is_pipe = False

    def __init__(
        self,
        where: str,
        checkpoint: str,
        shard: tuple[int, int] | None,
        numbers: range,
        recorded: list[tuple[int, Committed]],
        fresh: bool,
    ) -> None:
        """`where`: the folder or object-store prefix; `numbers`: the part numbers this run
        writes (a shard's range), wherever it resumes; `recorded`: the parts its checkpoint
        records (a resumed run); `fresh`: it has no checkpoint at all, so parts already in its
        range are another run's."""
        self.place = place_for(where)
        self._checkpoint = checkpoint
        self._shard = shard
        self._numbers = numbers
        self._recorded = recorded
        self._fresh = fresh
        self._parts: list[tuple[int, Committed]] = []
        self._identity: tuple[int, int] | None = None

    def open(self, keep: int | None, durable: bool) -> PartsFolder:
        self.place.lock(self._shard, self._checkpoint)  # before anything in it changes
        try:
            if keep is not None:  # resumed: its parts must be those recorded
                check_recorded(self.place, self._recorded, self._checkpoint)
                self._parts = list(self._recorded)
            self._clear(self._fresh, withdraw=checkpoint_name(self._shard))
            self._identity = self.place.identity()
        except BaseException:
            self.place.unlock()  # refused: the next run must not find the place held
            raise
        return self

    def _clear(self, fresh: bool, withdraw: str | None = None) -> None:
        try:
            keep = {number for number, _ in self._parts}
            clear(self.place, self._numbers, keep, fresh, withdraw)
        except OSError as error:
            raise IOFailure(f"cannot write {self.place.title}: {error.strerror}") from None

    def check_count(self, last: int) -> None:
        if last >= MAX_PARTS:
            raise UsageError(
                f"--output-parts: the input makes {last + 1} parts, more than {MAX_PARTS - 1} "
                "(their names would no longer sort in order): choose a larger --part-size"
            )

    def record(self, number: int, committed: Committed) -> None:
        """A part a worker committed, in input order."""
        self._parts.append((number, committed))

    def committed(self) -> list[tuple[int, Committed]]:
        return list(self._parts)

    def write(self, data: memoryview | bytes) -> int:
        if data:
            raise AssertionError("a folder of parts is written where the parts run")
        return 0

    def sync(self) -> None:
        pass  # each part was made durable, and its name, when it was committed

    def tidy(self) -> None:
        """After the parts stopped running: what was committed but not recorded (a run that
        failed or was stopped) goes, as the next run would remove it. Given up after a while
        (a store that stopped answering must not hold a Ctrl-C): the next run does it."""
        keep = {number for number, _ in self._parts}

        def tidy() -> None:
            with contextlib.suppress(OSError, CheckpointError, IOFailure):
                clear(self.place, self._numbers, keep, False)

        within(CLEANUP_GRACE, tidy)

    def complete(self) -> None:
        """The run is over and its checkpoint says so: `_SUCCESS`, last (a shard's run only
        once every shard's checkpoint says complete)."""
        title = self.place.title
        if self.place.identity() != self._identity:
            raise IOFailure(f"{title} was replaced during the run: no {SUCCESS}")
        try:
            self.place.publish_checkpoint(checkpoint_name(self._shard), self._checkpoint)
            if self._shard is not None and not self._all_shards_complete(*self._shard):
                return
            self.place.write_success()
        except OSError as error:
            raise IOFailure(f"cannot write {SUCCESS} in {title}: {error.strerror}") from None

    def _all_shards_complete(self, k: int, n: int) -> bool:
        """Whether every shard of the folder is done, each as a shard of this very run: the
        same module, the options that change output (part size included), the same inputs.
        Shards of different runs would join into bytes missing or repeated: refused, with no
        `_SUCCESS` (CheckpointError)."""
        from wasmstream.checkpoint import record as checkpoint

        own = checkpoint.load(self._checkpoint)
        assert own is not None  # saved complete just before
        for j in range(1, n + 1):
            name = checkpoint_name((j, n))
            try:
                saved = own if j == k else self.place.load_checkpoint(name)
            except CheckpointError:
                return False
            if saved is None:
                return False
            if _run_of(saved) != _run_of(own):
                raise CheckpointError(
                    f"shard {j}/{n} in {self.place.title} was run with another module, other "
                    f"options or other inputs than shard {k}/{n} (see "
                    f"{self.place.name_of(name)}): their parts do not join into one output, "
                    f"and no {SUCCESS} is written"
                )
            if saved.status != "complete":
                return False
        return True

    def close(self) -> None:
        within(CLEANUP_GRACE, self.place.unlock)  # else taken over by the next run of it


CLEANUP_GRACE = 3.0  # seconds a run's last tidying of its place may take, however it ends


def within(seconds: float, work: Callable[[], None]) -> bool:
    """Do `work` on a thread of its own, waiting at most `seconds` for it (False: given up;
    it goes on, a daemon, until the process ends)."""
    import threading

    worker = threading.Thread(target=work, name="wasmstream-cleanup", daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()
