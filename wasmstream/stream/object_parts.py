"""`--output-parts s3://bucket/prefix/`: a folder of parts in an object store. The layout and
the commit protocol are stream/output_parts.py's; what a folder gives for free is had here so:

- **Commit.** An attempt uploads its part straight to the part's key as a multipart upload,
  which stays invisible until it is completed, and it is completed only if no object has that
  key yet (`If-None-Match: *`): the first attempt to commit a part wins, a later one is refused,
  aborts its upload and keeps the committed part. Dead letters go first, the same way. An
  attempt that dies leaves an incomplete upload, never visible, which the next run in the
  prefix (or this run, when its parts stop) aborts. No rename and no fsync: a completed upload
  is durable, and listings are strongly consistent.
- **Lock.** An object, `_lock` (a run of the whole input) or `_lock.K-of-N` (shard K of N),
  created only if absent and naming the checkpoint of the run that holds it (host and path).
  Each run creates its own, then looks for those that exclude it (a shard: the whole run's, and
  those of shards of another count): of two runs that start together, at least one sees the
  other and stops. A lock left by a run that died is taken over by a run of
  the same checkpoint (it holds the checkpoint's own lock: the other is not running); any other
  run is refused until the lock is removed.
- **Checkpoint.** A local file (`--checkpoint FILE`, required): it is saved often, and its lock
  is what keeps two runs from resuming it at once. A finished run puts a copy of it in the
  prefix (`_checkpoint.json`, a shard's `_checkpoint.K-of-N.json`), where shards read each
  other's before the last writes `_SUCCESS`.

Only `s3://` is taken (AWS S3, and servers that implement its conditional writes): the commit
rests on the conditional write, which other stores' fsspec packages do not offer alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from wasmstream.errors import CheckpointError, IOFailure, UsageError
from wasmstream.stream.parts_layout import (
    SUCCESS,
    TAIL,
    Committed,
    Tail,
    committed_part,
    dead_letters_name,
    number_of,
    part_name,
)
from wasmstream.stream.sources import links, object_store, writing_to

if TYPE_CHECKING:
    from wasmstream.checkpoint.record import Checkpoint

BLOCK = 8 << 20  # an attempt uploads in blocks of this (S3's least is 5 MiB): its memory
LOCK = "_lock"
PROTOCOLS = ("s3", "s3a")


class ObjectPrefix:
    """Parts under a prefix of an S3 bucket (output_parts.Place)."""

    def __init__(self, url: str) -> None:
        self.where = url
        self._url = url.rstrip("/")
        self.title = f"prefix {self._url}/"
        self.fs, root = object_store(url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if not set(protocols) & set(PROTOCOLS):
            raise UsageError(
                f"--output-parts {url}: parts go to a folder or to an s3:// prefix (a commit "
                f"there is S3's conditional write), not to {protocols[0]}://"
            )
        self._root = root.rstrip("/")
        if not self._root or self._root.startswith("/"):
            raise UsageError(f"--output-parts {url} names no bucket: s3://bucket/prefix/")
        self._bucket, _, inner = self._root.partition("/")
        self._inner = f"{inner}/" if inner else ""  # the keys' prefix in the bucket
        self._lock: str | None = None
        self._prefixes: set[str] = set()  # the names listed last that are prefixes of objects

    def name_of(self, name: str) -> str:
        return f"{self._url}/{name}"

    def key(self, name: str) -> str:
        return f"{self._root}/{name}"

    def make(self) -> bool:
        with writing_to(self.where):
            if "/" in self._root and self.fs.isfile(self._root):
                raise UsageError(f"--output-parts {self.where} is an object, not a prefix")
            try:  # not fs.exists, which takes no credentials or no server for no bucket
                self.fs.call_s3("head_bucket", Bucket=self._bucket)
            except FileNotFoundError:
                raise IOFailure(
                    f"cannot write {self.where}: there is no bucket {self._bucket}"
                ) from None
        return False  # a prefix exists once something is under it: nothing to make or undo

    def unmake(self) -> None:
        pass

    def check_inputs_outside(self, inputs: Iterable[str]) -> None:
        for path in inputs:
            # by bucket and key: s3:// and s3a:// name the same objects
            read = [rest for protocol, rest in links(path) if protocol in PROTOCOLS]
            if any(key.startswith(self._root + "/") for key in read):
                raise UsageError(
                    f"input {path} is inside --output-parts {self.where}: the run would remove it"
                )

    def attempt(self, number: int) -> ObjectPartAttempt:
        return ObjectPartAttempt(self, number)

    def names(self) -> list[str]:
        with writing_to(self.where):
            try:
                listed = self.fs.ls(self._root, detail=True, refresh=True)
            except FileNotFoundError:
                return []
        named = [(str(entry["name"]).rstrip("/").rsplit("/", 1)[-1], entry) for entry in listed]
        self._prefixes = {name for name, entry in named if entry.get("type") == "directory"}
        return [name for name, _ in named]

    def size(self, name: str) -> int:
        key = self.key(name)
        with writing_to(self.name_of(name)):
            self.fs.invalidate_cache(key)
            try:
                info = self.fs.info(key)
            except FileNotFoundError:
                info = None
        if info is None:
            raise OSError(errno.ENOENT, "No such file or directory")
        if info.get("type") != "file":
            raise OSError(errno.EINVAL, "not an object")
        return int(info["size"])

    def describe(self, name: str) -> Committed:
        size = self.size(name)
        length = min(TAIL, size)
        if length == 0:
            return committed_part(0, b"")
        with writing_to(self.name_of(name)):
            tail = bytes(self.fs.cat_file(self.key(name), start=size - length, end=size))
        return committed_part(size, tail)

    def remove(self, names: list[str], numbers: range) -> None:
        below = sorted(self._prefixes.intersection(names))
        if below:  # objects under part-00001/: removing the part would leave them in part-*
            raise IOFailure(
                f"cannot write {self.where}: {self.name_of(below[0])}/ holds objects, where the "
                "run writes a part: remove them"
            )
        with writing_to(self.where):
            if names:
                self.fs.rm([self.key(name) for name in names])
            for key, upload in self._uploads():
                known = number_of(key.rsplit("/", 1)[-1])
                if known is not None and known[0] in numbers:
                    self.fs.call_s3(
                        "abort_multipart_upload", Bucket=self._bucket, Key=key, UploadId=upload
                    )

    def _uploads(self) -> Iterator[tuple[str, str]]:
        """(key, upload id) of the incomplete uploads directly under the prefix."""
        prefix = self._inner
        marks: dict[str, str] = {}
        while True:
            page = self.fs.call_s3(
                "list_multipart_uploads", Bucket=self._bucket, Prefix=prefix, Delimiter="/", **marks
            )
            for upload in page.get("Uploads", []):
                # not those of a prefix below: servers that ignore the delimiter list them too
                if "/" not in upload["Key"][len(prefix) :]:
                    yield upload["Key"], upload["UploadId"]
            if not page.get("IsTruncated"):
                return
            marks = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    def identity(self) -> None:
        return None  # an object store has no inodes: a prefix is its name

    def lock(self, shard: tuple[int, int] | None, checkpoint: str) -> None:
        mine = LOCK if shard is None else f"{LOCK}.{shard[0]}-of-{shard[1]}"
        token = f"{socket.gethostname()}:{os.path.realpath(checkpoint)}"
        held = self._create(mine, token.encode())
        if held is not None and held != token:
            raise CheckpointError(
                f"{self.title} is in use by the run of checkpoint {held}: wait for it, or, if "
                f"that run is dead, remove {self.name_of(mine)}"
            )
        self._lock = mine  # made, or left by a run of this checkpoint that died: taken over
        # a run of the whole input excludes any other; shards, those of another count (their
        # ranges of parts overlap): only shards of one count share a prefix
        ours = None if shard is None else f"-of-{shard[1]}"
        others = [
            name
            for name in self.names()
            if name != mine
            and (
                name == LOCK
                or (name.startswith(LOCK + ".") and (ours is None or not name.endswith(ours)))
            )
        ]
        if others:
            self.unlock()
            if others[0] == LOCK:
                what = "a run of the whole input"
            else:
                what = "a shard run" if shard is None else "a shard run of another shard count"
            raise CheckpointError(
                f"{self.title} is in use by {what} ({self.name_of(others[0])}): wait for it, "
                "or use another prefix (if that run is dead, remove that object)"
            )

    def _create(self, name: str, data: bytes) -> str | None:
        """Put `data` as `name` if there is no such object (None), else what that object holds."""
        with writing_to(self.name_of(name)):
            for _ in range(3):  # the holder may remove it between our put and our read
                try:
                    self.fs.pipe_file(self.key(name), data, mode="create")
                    return None
                except FileExistsError:
                    pass
                try:
                    return bytes(self.fs.cat_file(self.key(name))).decode(errors="replace")
                except FileNotFoundError:
                    continue
        raise IOFailure(f"cannot write {self.name_of(name)}: it keeps changing")

    def unlock(self) -> None:
        if self._lock is not None:
            name, self._lock = self._lock, None
            try:
                with writing_to(self.name_of(name)):
                    self.fs.rm(self.key(name))
            except IOFailure:
                pass  # the next run of this checkpoint takes it over; another is told to remove it

    def write_success(self) -> None:
        with writing_to(self.name_of(SUCCESS)):
            self.fs.pipe_file(self.key(SUCCESS), b"")

    def publish_checkpoint(self, name: str, path: str) -> None:
        with open(path, "rb") as saved:
            data = saved.read()
        with writing_to(self.name_of(name)):
            self.fs.pipe_file(self.key(name), data)

    def withdraw_checkpoint(self, name: str) -> None:
        with writing_to(self.name_of(name)):
            self.fs.rm(self.key(name))

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        from wasmstream.checkpoint import record as checkpoint

        with writing_to(self.name_of(name)):
            try:
                raw = bytes(self.fs.cat_file(self.key(name)))
            except FileNotFoundError:
                return None
        return checkpoint.parse(raw, self.name_of(name))


class ObjectPartAttempt:
    """One attempt at a part, as a multipart upload to its key (output_parts.Attempt)."""

    def __init__(self, prefix: ObjectPrefix, number: int) -> None:
        self._prefix = prefix
        self.number = number
        self._name = part_name(number)
        self._where = prefix.name_of(self._name)
        self._file: Any = None
        # a backend that looks up front may refuse a part committed already: nothing to write
        with writing_to(self._where), contextlib.suppress(FileExistsError):
            self._file = prefix.fs.open(prefix.key(self._name), "xb", block_size=BLOCK)
        self._taken = self._file is None
        self._tail = Tail()

    def write(self, data: bytes | memoryview) -> int:
        if not self._taken:
            with writing_to(self._where):
                self._file.write(data)
        self._tail.add(data)
        return len(data)

    def commit(self, dead_letters: bytes = b"") -> Committed:
        try:
            dead = self._commit_dead_letters(dead_letters) if dead_letters else None
            won = False
            with writing_to(self._where):
                try:
                    if self._taken:
                        pass  # refused when the upload began: committed already
                    elif (
                        self._tail.size == 0
                    ):  # s3fs puts an empty file whether the key is free or not
                        self.abandon()
                        self._prefix.fs.pipe_file(self._prefix.key(self._name), b"", mode="create")
                        won = True
                    else:
                        self._file.close()  # completes the upload, if the key is free
                        won = True
                except FileExistsError:
                    pass
            if won:
                return self._tail.committed(dead)
            self.abandon()
            return self._prefix.describe(self._name)._replace(dead_letters=dead)
        except OSError as error:
            self.abandon()
            raise IOFailure(f"cannot commit {self._where}: {error.strerror}") from None
        except BaseException:
            self.abandon()
            raise

    def _commit_dead_letters(self, data: bytes) -> int:
        name = dead_letters_name(self.number)
        with writing_to(self._prefix.name_of(name)):
            try:
                self._prefix.fs.pipe_file(self._prefix.key(name), data, mode="create")
                return len(data)
            except FileExistsError:
                return self._prefix.size(name)

    def abandon(self) -> None:
        """The upload is aborted (an upload already completed is not this attempt's)."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            with writing_to(self._where):
                file.discard()  # aborts the multipart upload, if one was started
        except IOFailure:
            pass  # left incomplete, never visible: the next run in the prefix aborts it
        file.closed = True  # nothing to flush when it is collected
