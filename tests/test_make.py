"""The Makefile's promises about the wasmer pass: skipped for a user, never silently in CI."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_test_wasmer(ci: str) -> subprocess.CompletedProcess[str]:
    # PY310= on the command line: as on a machine where no Python 3.10 was found
    return subprocess.run(
        ["make", "--no-print-directory", "test-wasmer", "PY310=", f"CI={ci}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_python_3_10_a_user_is_told_and_passes() -> None:
    result = make_test_wasmer("")
    assert result.returncode == 0, result.stderr
    assert "SKIPPED the wasmer engine's tests" in result.stdout


def test_without_python_3_10_ci_fails() -> None:
    result = make_test_wasmer("true")
    assert result.returncode != 0
    assert "CI must run the wasmer engine's tests" in result.stderr
