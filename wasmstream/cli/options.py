"""Every option of every command, declared once, in groups that build one part of a run each.

A group is a decorator that gives a command its options, and `take` hands the command the
group's values as the keywords of its builder in `wasmstream.run.configure` (the library's
builders too). Commands share groups (run, resume, replay, bench, inspect), so an option has one
declaration, one help text, and one environment variable: click reads WASMSTREAM_<COMMAND>_<NAME>
for every option, NAME its long name (`--max-memory`: WASMSTREAM_RUN_MAX_MEMORY), which holds as
long as no option is given a parameter name of its own (a test checks every one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

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
from wasmstream.engines import DEFAULT_ENGINE, DEFAULT_MAX_MEMORY, ENGINE_NAMES
from wasmstream.guest.abi import (
    ALLOCATOR_NAMES,
    DEALLOCATOR_NAMES,
    DEFAULT_INIT,
    DEFAULT_TRANSFORM,
    STATE_MODES,
)
from wasmstream.run.configure import LARGEST_COUNT
from wasmstream.run.options import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_FRAME_SIZE,
    DEFAULT_PART_SIZE,
    POLICIES,
)
from wasmstream.stream.framing import Framing, Oversize
from wasmstream.units import format_duration, format_size

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class OptionGroup:
    """Options that belong together (the sandbox, the framing, …), declared once."""

    options: tuple[click.Option, ...]

    def __call__(self, command: F) -> F:
        """Give `command` these options, in this order, as click's own decorators would."""
        params = command.__dict__.setdefault("__click_params__", [])
        params.extend(reversed(self.options))  # click lists a function's options bottom-up
        return command

    def __add__(self, other: OptionGroup) -> OptionGroup:
        return OptionGroup(self.options + other.options)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(option.name for option in self.options if option.name)

    def take(self, values: dict[str, Any]) -> dict[str, Any]:
        """This group's values, removed from a command's: what is left is the command's own."""
        return {name: values.pop(name) for name in self.names}


def option(*decls: str, **attrs: Any) -> OptionGroup:
    return OptionGroup((click.Option(decls, **attrs),))


# Options whose default is read from an environment variable of their own (not click's
# WASMSTREAM_<COMMAND>_<OPTION>): a bad value there is named by the error (cli/main.py).
ENGINE_VARIABLE = "WASMSTREAM_ENGINE"
DEFAULTS_FROM_ENVIRONMENT = {"engine": ENGINE_VARIABLE}


def default_engine() -> str:
    # WASMSTREAM_ENGINE sets the engine for every command; WASMSTREAM_<COMMAND>_ENGINE (the
    # rule every option follows) and --engine take precedence, in that order.
    return os.environ.get(ENGINE_VARIABLE) or DEFAULT_ENGINE


ENGINE = option(
    "--engine",
    type=click.Choice(ENGINE_NAMES),
    default=default_engine,
    help=f"WebAssembly runtime [default: {DEFAULT_ENGINE}, or $WASMSTREAM_ENGINE].",
)

# The exports wasmstream calls, by name (configure.abi_options).
EXPORTS = (
    option(
        "--function",
        metavar="NAME",
        default=DEFAULT_TRANSFORM,
        show_default=True,
        help="The transform export: (i32 ptr, i32 len) -> i32 or i64.",
    )
    + option(
        "--alloc",
        metavar="NAME",
        help=f"Allocator export [default: first of {', '.join(ALLOCATOR_NAMES)}].",
    )
    + option(
        "--free",
        metavar="NAME",
        help=f"Deallocator export [default: first of {', '.join(DEALLOCATOR_NAMES)}].",
    )
    + option(
        "--init",
        metavar="NAME",
        help="Export called once per instance with the --config bytes [default with --config: "
        f"{DEFAULT_INIT}].",
    )
)
CONFIG = option(
    "--config",
    metavar="TEXT|@FILE",
    help="Bytes passed to --init (a component's init export): TEXT, or the contents of FILE.",
)
WASI_COMMAND = option(
    "--wasi-command",
    is_flag=True,
    help="Run the module's _start once per frame: frame on stdin, output from stdout.",
)
GUEST_STATE = option(
    "--state",
    type=click.Choice(STATE_MODES),
    default="auto",
    show_default=True,
    help="Guest state kept in checkpoints: the module's snapshot/restore exports if it has "
    "them (auto), none, or the whole instance's memory and globals (memory).",
) + option(
    "--finish",
    metavar="NAME",
    help="Export called once after the last frame, () -> i64 packed; its output ends the "
    "output [default: finish, if exported].",
)

# What the guest may use (configure.sandbox).
SANDBOX = (
    option(
        "--timeout",
        metavar="DURATION",
        type=Duration(),
        help="Wall-clock limit per frame: 500ms, 2s, 1m [default: none].",
    )
    + option(
        "--fuel",
        type=click.IntRange(min=1, max=LARGEST_COUNT),
        metavar="N",
        help="Instruction budget per frame (deterministic) [default: none].",
    )
    + option(
        "--max-memory",
        metavar="SIZE",
        type=Size(unlimited=True),
        default=format_size(DEFAULT_MAX_MEMORY),
        show_default=True,
        help="Linear memory limit per instance (unlimited: none).",
    )
    + option(
        "--max-output",
        metavar="SIZE",
        type=Size(unlimited=True),
        help="Output limit per frame [default: 64MiB or 4 frames, the larger].",
    )
    + option(
        "--env",
        metavar="KEY=VALUE",
        multiple=True,
        type=ENV_PAIR,
        help="Give the guest an environment variable (repeatable) [default: none].",
    )
    + option(
        "--arg",
        metavar="TEXT",
        multiple=True,
        help="An argument for a WASI program, after argv[0] (repeatable, in order) "
        "[default: none].",
    )
    + option(
        "--dir",
        metavar="HOST[:GUEST][:ro|rw]",
        multiple=True,
        type=DIR_GRANT,
        help="Give the guest a directory, read-only unless :rw (repeatable) [default: none].",
    )
)

# How frames are cut (configure.framing_spec).
FRAME_SIZE = option(
    "--frame-size",
    metavar="SIZE",
    type=Size(),
    default=format_size(DEFAULT_FRAME_SIZE),
    show_default=True,
    help="Bytes per frame: 4096, 64K, 64KiB, 1M, 1MiB.",
)
RECORDS = option(
    "--framing",
    type=click.Choice([f.value for f in Framing]),
    default=Framing.FIXED.value,
    show_default=True,
    help="How frames are cut: fixed size, or whole lines / delimited / length-prefixed records.",
) + option(
    "--delimiter",
    metavar="D",
    type=DELIMITER,
    help="Record delimiter for --framing delimiter: one byte, or \\0 \\n \\t \\r \\\\ \\xHH.",
)
FRAMING = (
    RECORDS
    + option(
        "--oversize",
        type=click.Choice([o.value for o in Oversize]),
        default=Oversize.ERROR.value,
        show_default=True,
        help="A record larger than the frame size stops the run, is split, or is skipped.",
    )
    + option(
        "--linger",
        metavar="DURATION|off",
        type=Duration(off=True),
        help="Release a partial frame after the input is quiet this long "
        "[default: 100ms for record framings on a pipe or terminal, else off].",
    )
)

JOBS_OPTION = option(
    "-j",
    "--jobs",
    metavar="N|auto",
    type=JOBS,
    default="auto",
    show_default=True,
    help="Instances running frames in parallel; auto: one on this thread or up to one per CPU, "
    "whichever the run measures faster.",
)
QUEUE_DEPTH = option(
    "--queue-depth",
    type=click.IntRange(min=1),
    metavar="N",
    help="Frames read ahead of the workers under --on-overload drop|sample|adaptive (under "
    "block, each instance reads its own frame in turn); bounds memory [default: 2 x jobs].",
)

# What becomes of a failed frame.
FAILURES = option(
    "--on-error",
    type=click.Choice(POLICIES),
    default="fail",
    show_default=True,
    help="A failed frame stops the run, is skipped, or passes through unchanged.",
) + option(
    "--dead-letter",
    metavar="FILE",
    help="Append every failed frame to FILE as a JSON line (with its data, base64).",
)
OVERLOAD_POLICY = option(
    "--on-overload",
    metavar="block|adaptive|drop|sample:N",
    type=OVERLOAD,
    default="block",
    show_default=True,
    help="When the queue fills: wait (backpressure), slow down smoothly from half full, drop "
    "the frame, or keep one in N.",
) + option(
    "--drop-log",
    metavar="FILE",
    help="Append the offset and length of every dropped frame to FILE (JSON lines).",
)

FORCE = option(
    "--force", is_flag=True, help="Resume even if an input's identity (inode, first block) changed."
)
CHECKPOINTING = (
    option(
        "--checkpoint",
        metavar="FILE",
        help="Keep a checkpoint in FILE [default with -o OUT: OUT.ckpt.json].",
    )
    + option("--no-checkpoint", is_flag=True, help="Keep no checkpoint, even with -o.")
    + option(
        "--checkpoint-interval",
        metavar="DURATION",
        type=Duration(),
        default=format_duration(DEFAULT_CHECKPOINT_INTERVAL),
        show_default=True,
        help="Save the checkpoint at most this often: 500ms, 2s, 1m.",
    )
    + option(
        "--checkpoint-every",
        type=click.IntRange(min=1),
        metavar="N",
        help="Also save the checkpoint every N frames.",
    )
)
RESUMING = (
    option("--resume", is_flag=True, help="Continue from the checkpoint (none: start).")
    + option("--restart", is_flag=True, help="Start over, replacing an existing checkpoint.")
    + FORCE
)

# Where the run goes (configure.placement).
PLACEMENT = (
    option(
        "--shard",
        metavar="K/N",
        type=SHARD,
        help="Process only the K-th of N parts of the INPUT files, cut where records start.",
    )
    + option(
        "--cluster",
        metavar="local|local:N|tcp://HOST:PORT",
        type=CLUSTER,
        help="Run parts of the input as tasks on a Dask cluster (local: started for the run).",
    )
    + option(
        "--cluster-file",
        metavar="FILE",
        help="Join the Dask scheduler described in FILE (dask scheduler --scheduler-file).",
    )
    + option(
        "--part-size",
        metavar="SIZE",
        type=Size(),
        help="Input bytes per part (cluster task) [default: 8 per worker, 1MiB to "
        f"{format_size(DEFAULT_PART_SIZE)}].",
    )
    + option(
        "--output-parts",
        metavar="DIR",
        help="Write each part's output where it runs, to DIR/part-00000 …; DIR/_SUCCESS at "
        "the end. DIR may be an s3://bucket/prefix/ (then --checkpoint FILE is needed).",
    )
)

# What the person at the terminal sees, never the output (commands.Operator).
QUIET = option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors.")
OPERATOR = (
    QUIET
    + option(
        "--progress/--no-progress",
        default=None,
        help="Show progress on stderr [default: when stderr is a terminal].",
    )
    + option("--stats", is_flag=True, help="Print a summary on stderr at the end.")
    + option("--stats-json", metavar="FILE", help="Write the summary to FILE as JSON.")
    + option(
        "--metrics-file",
        metavar="FILE",
        help="Keep the run's numbers in FILE for Prometheus (node_exporter's textfile "
        "collector), updated as it goes and at exit.",
    )
)
NO_CACHE = option("--no-cache", is_flag=True, help="Do not use or fill the compiled-module cache.")
OUTPUT = option("-o", "--output", metavar="FILE", help="Write output to FILE instead of stdout.")
JSON = option("--json", is_flag=True, help="Print the report as JSON.")
