"""Docs move with the code: every option of every command is in the man page and the README."""

from __future__ import annotations

import re

import click
import pytest

from wasmstream.cli import cli
from wasmstream.errors import ExitStatus

from conftest import ROOT

MAN = (ROOT / "man" / "wasmstream.1").read_text().replace("\\-", "-")
README = (ROOT / "README.md").read_text()


def options() -> list[tuple[str, str]]:
    found = [("wasmstream", name) for p in cli.params for name in p.opts if name.startswith("--")]
    assert isinstance(cli, click.Group)
    for command_name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                found += [(command_name, name) for name in param.opts + param.secondary_opts]
    return found


@pytest.mark.parametrize(("command", "option"), options())
def test_option_is_documented(command: str, option: str) -> None:
    whole_option = re.compile(rf"(?<![\w-]){re.escape(option)}(?![\w-])")
    assert whole_option.search(MAN), f"{command} {option} missing from man/wasmstream.1"
    assert whole_option.search(README), f"{command} {option} missing from README"


@pytest.mark.parametrize("status", list(ExitStatus))
def test_exit_status_is_documented(status: ExitStatus) -> None:
    assert re.search(rf"^\.B {status.value}$", MAN, re.M), f"exit {status.value} missing from man"
    assert f"| {status.value} |" in README, f"exit {status.value} missing from README"


def test_man_page_has_the_sections() -> None:
    for section in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "GUEST ABI",
        "EXIT STATUS",
        "ENVIRONMENT",
        "EXAMPLES",
        "SEE ALSO",
    ):
        assert f".SH {section}" in MAN


def test_readme_opens_with_the_two_setup_commands() -> None:
    opening = "\n".join(README.splitlines()[:12])
    assert "make demo" in opening and "make test" in opening
