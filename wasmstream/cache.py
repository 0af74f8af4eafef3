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
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """$WASMSTREAM_CACHE_DIR, else $XDG_CACHE_HOME/wasmstream, else ~/.cache/wasmstream."""
    if chosen := os.environ.get("WASMSTREAM_CACHE_DIR"):
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wasmstream"


def entry_name(wasm: bytes, engine: str, version: str, settings: str) -> str:
    digest = hashlib.sha256(wasm).hexdigest()
    tag = hashlib.sha256(f"{engine}\0{version}\0{settings}".encode()).hexdigest()[:16]
    return f"{digest}-{tag}.{engine}"


class ModuleCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or cache_dir()

    def load(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except OSError:
            return None

    def store(self, name: str, artifact: bytes) -> None:
        """Best effort: a cache that cannot be written only costs the next run some time."""
        with contextlib.suppress(OSError):
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(artifact)
                os.replace(temp, self.directory / name)
            except OSError:
                os.unlink(temp)
                raise

    def discard(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.directory / name).unlink()
