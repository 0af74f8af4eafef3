"""Guests built by real toolchains (componentize-py, componentize-js), once per content.

A build takes 10-25 s, so each built component is kept under build/guests/ (git-ignored), named
by a hash of everything that decides its bytes: the source, the world, the WIT, the toolchain's
pinned versions and the build flags. A later test, or a later session, with the same inputs
reuses it; a changed input builds anew.

The JavaScript toolchain is pinned in tools/js/package-lock.json and installed by `npm ci` into
tools/js/node_modules (git-ignored) the first time a guest needs it. Where a toolchain cannot
be had (no npm, the registry unreachable), `build_*` raise ToolchainMissing; the tests' `*_guest`
then skip saying why, except under CI (CI=true), which must run these tests and so fails.
bench/bench.py builds its guests here too (without pytest).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
WIT = ROOT / "wasmstream" / "wit" / "transform.wit"
CACHE = ROOT / "build" / "guests"
JS_TOOLS = ROOT / "tools" / "js"
JS_LOCK = JS_TOOLS / "package-lock.json"
# Without -d http fetch-event a componentize-js guest imports wasi:http, which a plain p2
# linker (wasmstream's sandbox) refuses.
JS_DISABLED = ("http", "fetch-event")
INSTALL_TIMEOUT = 600  # seconds: ~390 MB of node_modules, ~20 s with a warm npm cache


class ToolchainMissing(Exception):
    """A guest's toolchain is not here and cannot be installed; the message says why."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, which must run every guest's tests."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must build this guest, and cannot: {reason}")
    pytest.skip(reason)


def js_guest(source: str, world: str) -> Path:
    """build_js, for a test: skipped (failed under CI) without the toolchain."""
    try:
        return build_js(source, world)
    except ToolchainMissing as missing:
        unavailable(str(missing))


def python_guest(source: str, world: str) -> Path:
    """build_python, for a test: skipped (failed under CI) without the toolchain."""
    try:
        return build_python(source, world)
    except ToolchainMissing as missing:
        unavailable(str(missing))


def js_toolchain() -> Path:
    """componentize_js, for a test: skipped (failed under CI) without the toolchain."""
    try:
        return componentize_js()
    except ToolchainMissing as missing:
        unavailable(str(missing))


class BuildFailed(Exception):
    """The toolchain ran and refused the source: its output says why (a test's failure)."""


def componentize_py() -> str | None:
    beside = Path(sys.executable).parent / "componentize-py"
    return str(beside) if beside.exists() else shutil.which("componentize-py")


def componentize_js(tools: Path = JS_TOOLS) -> Path:
    """tools/js's componentize-js, installed by `npm ci` if it is not there (or is stale)."""
    binary = tools / "node_modules" / ".bin" / "componentize-js"
    lock = (tools / "package-lock.json").read_bytes()
    stamp = tools / "node_modules" / f".installed-{_digest(lock)}"
    if stamp.exists() and binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ToolchainMissing("the JavaScript guest toolchain needs Node.js with npm: none here")
    with _locked(tools / ".install.lock"):
        if not stamp.exists():
            _npm_ci(str(npm), tools)
            stamp.touch()
    return binary


def _npm_ci(npm: str, tools: Path) -> None:
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"]
    try:
        done = subprocess.run(
            command, cwd=tools, capture_output=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise ToolchainMissing(f"npm ci in {tools} took over {INSTALL_TIMEOUT} s") from None
    if done.returncode != 0:
        last = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-3:])
        raise ToolchainMissing(f"npm ci in {tools} failed (registry unreachable?): {last}")


def build_js(source: str, world: str, aot: bool = False) -> Path:
    """The component componentize-js makes of `source` (an ES module) for `world`; `aot`:
    with --aot (weval, which componentize-js fetches from GitHub's releases when first used)."""
    binary = componentize_js()
    flags = ["-w", str(WIT), "-n", world, "-d", *JS_DISABLED, *(["--aot"] if aot else [])]
    key = _digest(
        b"js", source.encode(), *map(str.encode, flags), WIT.read_bytes(), JS_LOCK.read_bytes()
    )

    def build(folder: Path) -> list[str]:
        (folder / "app.js").write_text(source)
        return [str(binary), "app.js", *flags, "-o", "guest.wasm"]

    return _cached(key, build)


def build_python(source: str, world: str) -> Path:
    """The component componentize-py makes of `source` (app.py) for `world`."""
    program = componentize_py()
    if program is None:
        raise ToolchainMissing("no componentize-py here (pip install componentize-py==0.25.1)")
    version = subprocess.run(
        [str(program), "--version"], capture_output=True, check=True, timeout=60
    ).stdout
    key = _digest(b"py", source.encode(), world.encode(), WIT.read_bytes(), version)

    def build(folder: Path) -> list[str]:
        (folder / "app.py").write_text(source)
        flags = ["-d", str(WIT), "-w", world, "componentize", "app"]
        return [str(program), *flags, "-o", "guest.wasm"]

    return _cached(key, build)


def _cached(key: str, build: Callable[[Path], list[str]]) -> Path:
    """build/guests/KEY.wasm, built in a private folder then moved in whole (never half)."""
    target = CACHE / f"{key}.wasm"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        folder = Path(scratch)
        command = build(folder)
        done = subprocess.run(command, cwd=folder, capture_output=True, timeout=600, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise BuildFailed(f"{' '.join(command)} failed:\n{output}")
        os.replace(folder / "guest.wasm", target)
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time (two sessions' tests may start at once)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little") + part)
    return hasher.hexdigest()[:24]
