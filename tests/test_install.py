"""The installed package, as a newcomer gets it: a wheel built from this tree, installed into a
fresh venv, run from outside the source (so nothing comes from the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT, fixture

pytestmark = pytest.mark.install
UNSHIPPED = (".git", ".venv*", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


class Installed:
    def __init__(self, prefix: Path, build_log: str) -> None:
        self.prefix = prefix
        self.build_log = build_log
        # Only the venv's bin and the system's: man must find the page from PATH alone.
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "MANPATH", "VIRTUAL_ENV", "WASMSTREAM_ENGINE")
        }
        self.env["PATH"] = f"{prefix / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"

    def run(self, *args: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            args, cwd=cwd, env=self.env, capture_output=True, timeout=100, check=False, **kwargs
        )  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One wheel build and one install per session: the rest of the tests share them."""
    scratch = tmp_path_factory.mktemp("install")
    wheels = scratch / "wheels"
    # From a clean copy: setuptools builds in the source tree, and a build/ left there by an
    # earlier build would put files since removed into the wheel.
    source = scratch / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*UNSHIPPED))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("wasmstream-*.whl")
    prefix = scratch / "venv"
    venv.create(prefix, with_pip=True)
    install = subprocess.run(
        [str(prefix / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    return Installed(prefix, build.stdout + build.stderr)


def test_the_build_says_nothing_about_ignored_packages(installed: Installed) -> None:
    assert "would be ignored" not in installed.build_log
    assert "is absent from the `packages` configuration" not in installed.build_log


@pytest.mark.skipif(shutil.which("man") is None, reason="no man(1) here")
def test_man_finds_the_page_from_path(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("man", "-w", "wasmstream", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    page = Path(result.stdout.decode().strip())
    assert page == installed.prefix / "share" / "man" / "man1" / "wasmstream.1"
    assert page.read_bytes() == (ROOT / "man" / "wasmstream.1").read_bytes()
    # and what run --help sends the reader to is in it
    help_text = installed.run("wasmstream", "run", "--help", cwd=tmp_path).stdout.decode()
    assert "man wasmstream" in help_text and "wasmstream guide" in help_text
    assert ".SH GUEST ABI" in page.read_text()


def test_the_guide_is_installed_and_printed(installed: Installed, tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "writing-transforms.md").read_text()
    result = installed.run("wasmstream", "guide", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == guide
    where = installed.run("wasmstream", "guide", "--path", cwd=tmp_path).stdout.decode().strip()
    assert Path(where).is_relative_to(installed.prefix), where


def test_init_and_run_from_the_install(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("wasmstream", "init", "mine", "--lang", "c", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert {"Makefile", "transform.c", "wasmstream.h", "sample.txt", "test.mk"} <= {
        path.name for path in (tmp_path / "mine").iterdir()
    }
    assert (tmp_path / "mine" / ".gitignore").is_file()
    ran = installed.run("wasmstream", "run", fixture("upper.wasm"), input=b"hello\n", cwd=tmp_path)
    assert (ran.returncode, ran.stdout) == (0, b"HELLO\n"), ran.stderr.decode()
