"""A cache of compiled modules, so a large module starts in milliseconds instead of seconds.

Entries live in `$WASMSTREAM_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmstream` (or
`~/.cache/wasmstream`), named by the sha256 of the module, the engine's name and version, and
the engine settings that change the compiled code. A corrupt or stale entry is ignored and
replaced; entries are written to a temp file and renamed into place, so runs starting at once
never see half an entry.

A compiled artifact is machine code that the engine loads without checking it (wasmtime's
deserialize trusts its input), so the cache is guarded: its folder is made private (0700), a
folder that another user owns or may write to is not used at all, and each entry starts with
the sha256 of the module it was compiled from and of its own bytes, checked before it is used,
so that an entry copied or renamed to another module's name never runs as that module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat

MAGIC = b"wasmstream-artifact 1\n"
HEADER = len(MAGIC) + 2 * 65  # two hex sha256 digests, each with its newline


def cache_dir() -> str:
    """$WASMSTREAM_CACHE_DIR, else $XDG_CACHE_HOME/wasmstream, else ~/.cache/wasmstream.

    (os.path, not pathlib: this runs at every start, and pathlib costs milliseconds to import.)
    """
    if chosen := os.environ.get("WASMSTREAM_CACHE_DIR"):
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wasmstream")


def entry_name(digest: str, engine: str, version: str, settings: str) -> str:
    """The entry for the module whose sha256 is `digest` (hex), compiled so."""
    tag = hashlib.sha256(f"{engine}\0{version}\0{settings}".encode()).hexdigest()[:16]
    return f"{digest}-{tag}.{engine}"


def header_for(module_digest: str, artifact: bytes) -> bytes:
    """An entry's first bytes: the sha256 (hex) of its module, and of the artifact itself."""
    artifact_digest = hashlib.sha256(artifact).hexdigest()
    return MAGIC + f"{module_digest}\n{artifact_digest}\n".encode()


class ModuleCache:
    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or cache_dir()

    def trusted(self) -> bool:
        """Whether the folder is ours alone: owned by us, writable by nobody else."""
        try:
            info = os.stat(self.directory)
        except OSError:
            return False
        ours = info.st_uid == os.geteuid()
        return stat.S_ISDIR(info.st_mode) and ours and not info.st_mode & 0o022

    def load(self, name: str, module_digest: str) -> bytes | None:
        """The artifact compiled from the module of sha256 `module_digest`, if the entry exists,
        is trusted and checks out."""
        if not self.trusted():
            return None
        try:  # a FIFO put at an entry's name must not hang the run: not blocking, regular only
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        with open(fd, "rb") as entry:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = entry.read()
        artifact = data[HEADER:]
        if data[:HEADER] != header_for(module_digest, artifact):
            self.discard(name)  # another module's, damaged, or of an older layout
            return None
        return artifact

    def store(self, name: str, module_digest: str, artifact: bytes) -> None:
        """Best effort: a cache that cannot be written only costs the next run some time."""
        import tempfile

        with contextlib.suppress(OSError):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            if not self.trusted():
                return
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(header_for(module_digest, artifact))
                    out.write(artifact)
                os.replace(temp, os.path.join(self.directory, name))
            except OSError:
                os.unlink(temp)
                raise

    def discard(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.directory, name))
