"""The command line: a thin click layer over `wasmstream.core`.

Each command parses its options into a frozen config and calls one core function. `main` is the
only place where exceptions become messages and exit codes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

import click

from . import __version__
from .abi import ALLOCATOR_NAMES, DEALLOCATOR_NAMES, DEFAULT_TRANSFORM, AbiOptions
from .core import DEFAULT_FRAME_SIZE, RunConfig, default_jobs, run
from .engines import DEFAULT_ENGINE, ENGINE_NAMES
from .errors import BrokenPipe, ExitStatus, Interrupted, WasmstreamError
from .units import format_size, parse_size


def _size_option(ctx: click.Context, param: click.Parameter, value: str | int) -> int:
    """Callback for size options (a callback rather than a ParamType, generic only in new click)."""
    try:
        size = value if isinstance(value, int) else parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None
    if size <= 0:
        raise click.BadParameter("must be at least 1 byte", ctx, param)
    return size


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version  # only here: importing it costs 20 ms at start-up

    click.echo(f"wasmstream {__version__} (wasmtime {version('wasmtime')})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version of wasmstream and of its engine, and exit.",
)
def cli() -> None:
    """Run a WebAssembly transform over a data stream, frame by frame, in order.

    \b
      cat data.bin | wasmstream run transformer.wasm > out
      wasmstream run upper.wasm access.log -o ACCESS.LOG
    """


@cli.command("run")
@click.argument("module", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@click.option("-o", "--output", metavar="FILE", help="Write output to FILE instead of stdout.")
@click.option(
    "--frame-size",
    metavar="SIZE",
    callback=_size_option,
    default=format_size(DEFAULT_FRAME_SIZE),
    show_default=True,
    help="Bytes per frame: 4096, 64K, 64KiB, 1M, 1MiB.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    metavar="N",
    default=default_jobs,
    show_default="number of CPUs",
    help="Instances running frames in parallel.",
)
@click.option(
    "--queue-depth",
    type=click.IntRange(min=1),
    metavar="N",
    show_default="2 x jobs",
    help="Frames read ahead of the workers; bounds memory.",
)
@click.option(
    "--function",
    metavar="NAME",
    default=DEFAULT_TRANSFORM,
    show_default=True,
    help="The transform export: (i32 ptr, i32 len) -> i32 or i64.",
)
@click.option(
    "--alloc",
    metavar="NAME",
    help=f"Allocator export [default: first of {', '.join(ALLOCATOR_NAMES)}].",
)
@click.option(
    "--free",
    metavar="NAME",
    help=f"Deallocator export [default: first of {', '.join(DEALLOCATOR_NAMES)}].",
)
@click.option(
    "--init", metavar="NAME", help="Export called once per instance with the --config bytes."
)
@click.option(
    "--config",
    "config_text",
    metavar="TEXT|@FILE",
    help="Bytes passed to --init: TEXT, or the contents of FILE.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINE_NAMES),
    default=DEFAULT_ENGINE,
    show_default=True,
    envvar="WASMSTREAM_ENGINE",
    help="WebAssembly runtime.",
)
def run_command(
    module: str,
    inputs: tuple[str, ...],
    output: str | None,
    frame_size: int,
    jobs: int,
    queue_depth: int | None,
    function: str,
    alloc: str | None,
    free: str | None,
    init: str | None,
    config_text: str | None,
    engine: str,
) -> None:
    """Transform INPUT files (or stdin; '-' is stdin) through MODULE, in order.

    The inputs are read as one stream, cut into frames of --frame-size bytes (the last may be
    shorter), transformed by --jobs instances of MODULE in parallel, and written to stdout or
    --output strictly in input order. See the GUEST ABI section of `man wasmstream`.
    """
    if config_text is not None and init is None:
        raise click.UsageError("--config needs --init NAME (the export that receives it)")
    config = RunConfig(
        module=module,
        inputs=inputs,
        output=output,
        frame_size=frame_size,
        jobs=jobs,
        queue_depth=queue_depth,
        abi=AbiOptions(function=function, alloc=alloc, free=free, init=init),
        config=_read_config(config_text),
        engine=engine,
    )
    run(config)


def _read_config(text: str | None) -> bytes:
    if text is None:
        return b""
    if not text.startswith("@"):
        return text.encode()
    try:
        with open(text[1:], "rb") as config_file:
            return config_file.read()
    except OSError as error:
        raise click.BadParameter(
            f"cannot read {text[1:]}: {error.strerror}", param_hint="--config"
        ) from None


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(ExitStatus.TERMINATED)


def _error(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr gone too: nothing left to tell
        print(f"wasmstream: error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the CLI and turn every outcome into an exit status."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    status = _run_cli(argv)
    sys.exit(status)


def _run_cli(argv: Sequence[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="wasmstream", standalone_mode=False)
    except click.exceptions.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        _error(f"{error.format_message()}{hint}")
        return ExitStatus.USAGE
    except click.exceptions.Abort:
        return ExitStatus.INTERRUPTED
    except click.exceptions.ClickException as error:
        _error(error.format_message())
        return error.exit_code
    except BrokenPipe:
        _quiet_stdout()
        return ExitStatus.BROKEN_PIPE
    except WasmstreamError as error:
        _error(str(error))
        return error.status
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except Exception as error:  # a bug: say so in one line, with the trace only on request
        if os.environ.get("WASMSTREAM_DEBUG"):
            traceback.print_exc()
        _error(f"internal error: {type(error).__name__}: {error}")
        return ExitStatus.FAILURE
    return ExitStatus.OK


def _quiet_stdout() -> None:
    """After EPIPE, keep Python's exit-time flush of stdout from complaining."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
