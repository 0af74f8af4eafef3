"""A cache of compiled modules, so a large module starts in milliseconds instead of seconds.

Entries live in `$WASMSTREAM_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmstream` (or
`~/.cache/wasmstream`), named by the sha256 of the module, the engine's name and version, and
the engine settings that change the compiled code. A corrupt or stale entry is ignored and
replaced; entries are written to a temp file and renamed into place, so runs starting at once
never see half an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os


def cache_dir() -> str:
    """$WASMSTREAM_CACHE_DIR, else $XDG_CACHE_HOME/wasmstream, else ~/.cache/wasmstream.

    (os.path, not pathlib: this runs at every start, and pathlib costs milliseconds to import.)
    """
    if chosen := os.environ.get("WASMSTREAM_CACHE_DIR"):
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wasmstream")


def entry_name(wasm: bytes, engine: str, version: str, settings: str) -> str:
    digest = hashlib.sha256(wasm).hexdigest()
    tag = hashlib.sha256(f"{engine}\0{version}\0{settings}".encode()).hexdigest()[:16]
    return f"{digest}-{tag}.{engine}"


class ModuleCache:
    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or cache_dir()

    def find(self, name: str) -> str | None:
        """The entry's path if it exists (engines map it rather than read it: it may be large)."""
        path = os.path.join(self.directory, name)
        return path if os.path.isfile(path) else None

    def store(self, name: str, artifact: bytes) -> None:
        """Best effort: a cache that cannot be written only costs the next run some time."""
        import tempfile

        with contextlib.suppress(OSError):
            os.makedirs(self.directory, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(artifact)
                os.replace(temp, os.path.join(self.directory, name))
            except OSError:
                os.unlink(temp)
                raise

    def discard(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.directory, name))
