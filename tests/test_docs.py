"""Docs move with the code: every option of every command is in the man page and the README."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from wasmstream.cli.commands import cli
from wasmstream.errors import ExitStatus

from conftest import ROOT

MAN = (ROOT / "man" / "wasmstream.1").read_text().replace("\\-", "-")
README = (ROOT / "README.md").read_text()


OPTION = re.compile(r"(?<![\w-])(--?[a-z][\w-]*)")


def command_options() -> dict[str, set[str]]:
    """Every option of every command ("" is `wasmstream` itself), nested groups included."""
    found: dict[str, set[str]] = {}

    def walk(command: click.Command, path: str) -> None:
        found[path] = {
            name
            for param in command.params
            if isinstance(param, click.Option)
            for name in param.opts + param.secondary_opts
        }
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return {path: names for path, names in found.items() if names}


def section(text: str, start: str, end: str) -> str:
    """From the line starting with `start` up to the next line starting with `end`."""
    match = re.search(rf"^{re.escape(start)}.*?(?=^{re.escape(end)}|\Z)", text, re.M | re.S)
    assert match, f"no section {start!r}"
    return match.group(0)


def readme_table_rows(text: str) -> list[set[str]]:
    """The options named in the first cell of each table row."""
    rows = [line.replace("\\|", "") for line in text.splitlines() if line.startswith("| `")]
    return [set(OPTION.findall(row.split("|")[1])) for row in rows]


def man_entries(text: str) -> list[set[str]]:
    """The options named in the tag line of each .TP entry."""
    lines = re.sub(r"\\f[BIRP]", "", text).splitlines()
    return [set(OPTION.findall(tag)) for tp, tag in itertools.pairwise(lines) if tp == ".TP"]


def where(option: str, places: list[set[str]]) -> int:
    return sum(option in place for place in places)


def test_run_options_each_have_a_readme_row_and_a_man_entry() -> None:
    """`run`'s options (and `wasmstream`'s own) have one table row and one .TP entry each."""
    options = command_options()
    expected = options["run"] | options[""] - {"--help"}
    rows = readme_table_rows(section(README, "## `wasmstream run", "## "))
    # run's entries come first under OPTIONS; each other command has its own .SS after them
    entries = man_entries(section(MAN, ".SH OPTIONS", ".S"))
    missing = sorted(o for o in expected if where(o, rows) != 1 or where(o, entries) != 1)
    assert not missing, f"not in exactly one README row and one man entry: {missing}"
    documented = set().union(*rows, *entries) - {"-h", "--help"}
    assert documented <= expected, f"documented but not options: {documented - expected}"


@pytest.mark.parametrize(
    "command", ["resume", "inspect", "checkpoint show", "bench", "replay", "guide"]
)
def test_other_commands_document_their_options_in_their_own_section(command: str) -> None:
    readme = section(README, f"## `wasmstream {command}", "## ")
    man = section(MAN, f".SS wasmstream {command}", ".S")
    mentioned = set(OPTION.findall(readme)), set(OPTION.findall(re.sub(r"\\f[BIRP]", "", man)))
    options = command_options()[command] - {"-h", "--help"}
    for text, name in zip(mentioned, ("README", "man page"), strict=True):
        assert options <= text, f"{command}: {sorted(options - text)} missing from the {name}"


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


# Stand-ins for what README's examples name: the fixture each module stands for, and inputs.
EXAMPLE_MODULES = {
    "transformer.wasm": "identity.wasm",
    "upper.wasm": "upper.wasm",
    "redact.wasm": "c/redact.wasm",
    "parse.wasm": "identity.wasm",
    "csv.wasm": "identity.wasm",
    "fixed.wasm": "upper.wasm",
}


def readme_examples() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    return [line for block in blocks for line in block.splitlines() if "wasmstream" in line]


def example_files(directory: Path) -> None:
    import gzip
    import random

    text = b"".join(
        b"line %d of the log, card 4111 1111 1111 %04d\n" % (n, n) for n in range(40000)
    )
    for name in ("data.bin", "access.log", "other.log", "app.log", "huge.log"):
        (directory / name).write_bytes(text)
    (directory / "dump").write_bytes(text.replace(b"\n", b"\x1e"))  # records end in \x1e
    (directory / "dump.gz").write_bytes(gzip.compress(text))
    # over 1 MiB of lines, as the rev example promises to handle
    rng = random.Random(5)
    lines = b"".join(
        b"%d %s\n" % (n, bytes(rng.choice(b"abcdef") for _ in range(60))) for n in range(20000)
    )
    (directory / "lines.txt").write_bytes(lines)
    for name, fixture_name in EXAMPLE_MODULES.items():
        (directory / name).write_bytes((ROOT / "fixtures" / fixture_name).read_bytes())
    (directory / "fixtures").symlink_to(ROOT / "fixtures")
    letter = {"frame": 17, "offset": 17 << 16, "length": 5, "kind": "trap", "message": "x"}
    (directory / "dead.jsonl").write_text(json.dumps({**letter, "data": "aGVsbG8="}) + "\n")


def test_every_readme_example_runs(tmp_path: Path) -> None:
    """Each shell example in README runs as written (on stand-in files), in order, and exits 0;
    the rev(1) example gives rev's lines on an input of over 1 MiB."""
    example_files(tmp_path)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WASMSTREAM_ENGINE", None)  # the examples run as a reader would: the default engine
    examples = readme_examples()
    assert len(examples) >= 10
    for line in examples:
        command = line.split("  #")[0].strip()
        endless = command.startswith("tail -f")  # a live stream: stopped after a while
        result = subprocess.run(
            ["timeout", "3" if endless else "120", "bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
        )
        expected = {124} if endless else {0}
        assert result.returncode in expected, (command, result.stderr.decode())
        assert b"Traceback" not in result.stderr, command
        if "rev.wasm" in command:
            lines = (tmp_path / "lines.txt").read_bytes().splitlines(keepends=True)
            assert result.stdout == b"".join(line[-2::-1] + b"\n" for line in lines)
