"""`wasmstream init`: the files of a new transform project, and which toolchains are here.

A project is the templates of one language (`templates/<lang>/`) plus those every language
shares (`templates/common/`: the sample input, its expected output, the `make test` rules),
with the project's name filled in. `plan_project` decides the files without touching the disk;
`create_project` checks the directory and writes them. `find_toolchain` looks for a compiler
the way the generated Makefile will, so `init --list` and `make` agree.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from wasmstream.errors import IOFailure, UsageError

LANGUAGES = ("c", "zig", "rust", "assemblyscript", "python")
# Languages whose transform is a component: their project gets the contract's WIT, as shipped.
COMPONENT_LANGUAGES = ("python",)
WIT = "wit/transform.wit"
# Languages with a stateful template (`init --stateful`), laid over the plain one.
STATEFUL = ("c",)  # templates/<lang>-stateful
# What to install when a language's toolchain is missing (the generated Makefiles say the same).
INSTALL = {
    "c": "pip install ziglang (or zig from ziglang.org, or clang with wasi-libc)",
    "zig": "pip install ziglang (or zig from ziglang.org)",
    "rust": "rustup target add wasm32-wasip1 (or apt install rustc libstd-rust-dev-wasm32)",
    "assemblyscript": "Node.js with npm (nodejs.org, or apt install nodejs npm)",
    "python": "pip install componentize-py==0.25.1",
}
# How messages name each language.
TITLES = {
    "c": "C",
    "zig": "Zig",
    "rust": "Rust",
    "assemblyscript": "AssemblyScript",
    "python": "Python",
}
# Template files whose names packaging tools would drop or misread, renamed when written.
RENAMED = {"gitignore": ".gitignore"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_PROBE_TIMEOUT = 30  # seconds; `python3 -m ziglang version` is the slowest probe, at ~0.1 s


@dataclass(frozen=True)
class Toolchain:
    """Whether a language's compiler is here: `found` describes it, else `install` says how."""

    lang: str
    found: str | None
    install: str

    def status(self) -> str:
        return f"found: {self.found}" if self.found else f"missing: {self.install}"


def default_name(directory: Path) -> str:
    """The project's name from its directory: the basename, reduced to a safe file name."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", directory.resolve().name).strip("-_")
    return name or "transform"


def check_name(name: str) -> str:
    """NAME becomes a file name, a Rust crate and an npm package: letters, digits, - and _."""
    if not _NAME.match(name):
        raise UsageError(
            f"project name {name!r} must start with a letter or digit and hold only letters, "
            "digits, '-' and '_'"
        )
    return name


def plan_project(lang: str, name: str, stateful: bool = False) -> dict[str, bytes]:
    """The project's files, relative path to contents, with the name filled in. `stateful`: the
    language's stateful template laid over its plain one (its files replace theirs)."""
    if lang not in LANGUAGES:
        raise UsageError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    if stateful and lang not in STATEFUL:
        raise UsageError(
            f"--stateful has a template for {', '.join(STATEFUL)} only, not yet for {lang}"
        )
    root = resources.files("wasmstream") / "templates"
    files: dict[str, bytes] = {}
    for template in ("common", lang, *([f"{lang}-stateful"] if stateful else [])):
        for relative, text in _template_files(root / template, ""):
            files[relative] = _render(text, name)
    if lang in COMPONENT_LANGUAGES:  # one WIT for the package and every project, never copied
        files[WIT] = (resources.files("wasmstream") / WIT).read_bytes()
    return files


def _template_files(folder: Traversable, prefix: str) -> Iterator[tuple[str, str]]:
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            yield from _template_files(entry, f"{prefix}{entry.name}/")
        else:
            yield prefix + RENAMED.get(entry.name, entry.name), entry.read_text(encoding="utf-8")


def _render(text: str, name: str) -> bytes:
    # @NAME@ rather than $name or {name}: Makefiles, C and Rust use both of those themselves.
    return text.replace("@NAME@", name).replace("@PACKAGE@", name.lower()).encode()


def create_project(
    directory: Path, lang: str, name: str, force: bool, stateful: bool = False
) -> list[Path]:
    """Write the project into `directory` (created if need be); return the files written.

    Raises UsageError for a bad name or language, or a non-empty directory without `force`
    (checked before anything is written), and IOFailure when the directory is not writable.
    """
    files = plan_project(lang, check_name(name), stateful)
    _check_directory(directory, force)
    written = []
    for relative, contents in files.items():
        path = directory / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(contents)
        except OSError as error:
            raise IOFailure(f"cannot write {path}: {error.strerror or error}") from None
        written.append(path)
    return written


def _check_directory(directory: Path, force: bool) -> None:
    if directory.is_symlink() and not directory.exists():
        # Refused rather than followed: a link to nowhere often means something is not there
        # yet (a disk not mounted, a checkout not made), and creating its target would write
        # the project where nobody looks for it. A link to a directory is followed.
        raise UsageError(
            f"{directory} is a symbolic link to {os.readlink(directory)}, which does not exist "
            "(create it first, or give another DIR)"
        )
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    if force or not directory.is_dir():
        return
    try:
        empty = next(directory.iterdir(), None) is None
    except OSError as error:
        raise IOFailure(f"cannot read {directory}: {error.strerror or error}") from None
    if not empty:
        raise UsageError(f"{directory} is not empty (--force writes the project into it anyway)")


def find_toolchain(lang: str) -> Toolchain:
    """Look for `lang`'s compiler as the generated Makefile does, in the same order."""
    found = _FINDERS[lang]()
    return Toolchain(lang, found, INSTALL[lang])


def _find_zig() -> str | None:
    if shutil.which("zig"):
        return "zig"
    if _succeeds(["python3", "-m", "ziglang", "version"]):
        return "ziglang package (python3 -m ziglang)"
    # ziglang installed beside wasmstream but not for python3: the Makefile needs telling.
    if _succeeds([sys.executable, "-m", "ziglang", "version"]):
        return f"ziglang package, with make PYTHON={sys.executable}"
    return None


def _find_c() -> str | None:
    return _find_zig() or _find_clang()


def _find_clang() -> str | None:
    program = b"#include <stdlib.h>\nint main(void) { return 0; }\n"
    for clang in ("clang", *(f"clang-{version}" for version in range(19, 13, -1))):
        command = [clang, "--target=wasm32-wasi", "-x", "c", "-", "-o", "/dev/null"]
        if shutil.which(clang) and _succeeds(command, program):
            return f"{clang} with wasi-libc"
    return None


def _find_rust() -> str | None:
    for rustc in ("rustc", "/usr/bin/rustc"):
        for target in ("wasm32-wasip1", "wasm32-wasi"):
            libdir = _output([rustc, "--print", "target-libdir", "--target", target])
            if libdir and glob.glob(f"{glob.escape(libdir)}/libstd-*.rlib"):
                return f"{rustc} --target {target}"
    return None


def _find_componentize() -> str | None:
    if shutil.which("componentize-py"):
        return "componentize-py"
    if _succeeds(["python3", "-c", "import componentize_py"]):
        return "componentize-py package (python3)"
    # installed beside wasmstream but not for python3: the Makefile needs telling.
    if _succeeds([sys.executable, "-c", "import componentize_py"]):
        return f"componentize-py package, with make PYTHON={sys.executable}"
    return None


def _find_npm() -> str | None:
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    version = _output(["node", "--version"])
    return f"node {version} and npm (make installs assemblyscript)"


_FINDERS: dict[str, Callable[[], str | None]] = {
    "c": _find_c,
    "zig": _find_zig,
    "rust": _find_rust,
    "assemblyscript": _find_npm,
    "python": _find_componentize,
}


def _succeeds(command: list[str], stdin: bytes = b"") -> bool:
    return _output(command, stdin) is not None


def _output(command: list[str], stdin: bytes = b"") -> str | None:
    """The command's stdout, stripped, or None if it cannot run or fails."""
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, timeout=_PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else None
