"""Every option of every command can be set in the environment, by README's one rule:
WASMSTREAM_<COMMAND>_<OPTION> (`checkpoint show --json`: WASMSTREAM_CHECKPOINT_SHOW_JSON).

A cron job configured as README says must run with its settings: each option is set in the
environment alone, and must take the value it takes on the command line. Then the variables
that once were silently ignored are tried end to end, through the real CLI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from wasmstream.cli.argtypes import (
    CLUSTER,
    DELIMITER,
    DIR_GRANT,
    ENV_PAIR,
    JOBS,
    OVERLOAD,
    SHARD,
    Duration,
    Size,
)
from wasmstream.cli.commands import cli

from conftest import fixture, wasmstream


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def variable(path: tuple[str, ...], option: click.Option) -> str:
    """README's rule, from the option's long name (not from its Python parameter's name)."""
    long = max((name for name in option.opts if name.startswith("--")), key=len)
    words = [*path, long.removeprefix("--")]
    return "WASMSTREAM_" + "_".join(word.upper().replace("-", "_") for word in words)


def sample(option: click.Option, default: Any, tmp_path: Path) -> str:
    """A value for `option` other than its default, as a user would type it."""
    kind = option.type
    if option.is_flag:
        return "1"
    if isinstance(kind, click.Choice):
        return next(str(choice) for choice in kind.choices if choice != default)
    if isinstance(kind, click.IntRange):
        return "7"
    by_type: dict[Any, str] = {
        JOBS: "3", OVERLOAD: "drop", SHARD: "2/3", CLUSTER: "local:2", DELIMITER: ",",
        ENV_PAIR: "KEY=value", DIR_GRANT: str(tmp_path),
    }  # fmt: skip
    if kind in by_type:
        return by_type[kind]
    if isinstance(kind, Size):
        return "2KiB"
    if isinstance(kind, Duration):
        return "3s"
    assert kind == click.STRING, f"no sample value for {option.opts} of type {kind!r}"
    return "some-value"


def parsed(path: tuple[str, ...], args: list[str]) -> dict[str, Any]:
    """What `wasmstream PATH... ARGS` parses to, with click's contexts made as `main` makes
    them (the variable's prefix grows by each command's name on the way down)."""
    context = click.Context(cli, info_name="wasmstream", auto_envvar_prefix="WASMSTREAM")
    group: click.Command = cli
    for name in path[:-1]:
        assert isinstance(group, click.Group)
        group = group.commands[name]
        context = click.Context(group, info_name=name, parent=context)
    assert isinstance(group, click.Group)
    command = group.commands[path[-1]]
    with command.make_context(path[-1], list(args), parent=context) as ctx:  # click eats it
        return dict(ctx.params)


def required_arguments(command: click.Command, leaving_out: click.Option) -> list[str]:
    """Placeholders for what `command` cannot parse without (none of them is opened here)."""
    args = []
    for param in command.params:
        if isinstance(param, click.Argument) and param.required:
            args.append("placeholder")
        elif isinstance(param, click.Option) and param.required and param is not leaving_out:
            args += [param.opts[-1], "placeholder"]
    return args


CASES = [
    (path, command, option)
    for path, command in commands(cli)
    for option in command.params
    if isinstance(option, click.Option) and option.name != "help"
]


@pytest.mark.parametrize(
    ("path", "command", "option"),
    CASES,
    ids=[variable(path, option) for path, command, option in CASES],
)
def test_every_option_takes_its_value_from_its_variable(
    path: tuple[str, ...],
    command: click.Command,
    option: click.Option,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("WASMSTREAM_")]:
        monkeypatch.delenv(name)
    args = required_arguments(command, option)
    default = None if option.required else parsed(path, args)[option.name]
    value = sample(option, default, tmp_path)
    given = parsed(path, [*args, option.opts[-1], *([] if option.is_flag else [value])])
    assert given[option.name] != default, "the sample must not be the default"
    monkeypatch.setenv(variable(path, option), value)
    assert parsed(path, args)[option.name] == given[option.name]


def test_variables_once_ignored_reach_the_run(tmp_path: Path) -> None:
    """The variables whose option had a parameter name of its own, so that click looked for
    another name (WASMSTREAM_RUN_CONFIG_ARG): through the real CLI, each one now acts."""
    xor = wasmstream("run", fixture("xor.wasm"), input=b"abc", env={"WASMSTREAM_RUN_CONFIG": " "})
    assert (xor.returncode, xor.stdout) == (0, b"ABC")  # the key reached init

    report = wasmstream("inspect", fixture("upper.wasm"), env={"WASMSTREAM_INSPECT_JSON": "1"})
    assert json.loads(report.stdout)["abi"] is not None

    out = tmp_path / "out"
    done = wasmstream("run", fixture("upper.wasm"), "-o", str(out), input=b"x")
    assert done.returncode == 0
    shown = wasmstream(
        "checkpoint", "show", f"{out}.ckpt.json", env={"WASMSTREAM_CHECKPOINT_SHOW_JSON": "1"}
    )
    assert json.loads(shown.stdout)["status"] == "complete"

    listed = wasmstream("init", env={"WASMSTREAM_INIT_LIST": "1"})
    assert (listed.returncode, listed.stdout.split()[0]) == (0, b"c")


@pytest.mark.parametrize(
    ("variable", "value", "option"),
    [
        ("WASMSTREAM_RUN_JOBS", "many", "--jobs"),
        ("WASMSTREAM_RUN_FRAME_SIZE", "12Q", "--frame-size"),
        ("WASMSTREAM_ENGINE", "wasmtimes", "--engine"),  # every command's, read by the default
    ],
)
def test_a_bad_value_from_the_environment_names_its_variable(
    variable: str, value: str, option: str
) -> None:
    """The message named only the option, which the command line never mentioned."""
    done = wasmstream("run", fixture("upper.wasm"), os.devnull, env={variable: value})
    assert done.returncode == 2
    line = done.stderr.decode()
    assert option in line and f"from the environment: {variable}" in line, line
    given = wasmstream("run", fixture("upper.wasm"), os.devnull, option, value)
    assert b"from the environment" not in given.stderr  # on the command line: no such note
