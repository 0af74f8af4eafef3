"""The entry point: where every outcome of a command becomes a message and an exit status.

Errors are defined once, each with its status (`wasmstream.errors`); this is the one place that
turns them, click's usage errors, signals and bugs into one line on stderr and a status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

import click

from wasmstream.cli.commands import cli, notice
from wasmstream.cli.options import DEFAULTS_FROM_ENVIRONMENT
from wasmstream.errors import BrokenPipe, ExitStatus, FramingError, Interrupted, WasmstreamError
from wasmstream.run import interrupts
from wasmstream.stream import stdio


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    interrupts.deliver(Interrupted(ExitStatus.TERMINATED))


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    interrupts.deliver(KeyboardInterrupt())


def _error(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr gone too: nothing left to tell
        print(f"wasmstream: error: {message}", file=sys.stderr, flush=True)


def handle_signals() -> None:
    """SIGTERM and SIGINT as the CLI takes them: each raises its exception (Interrupted,
    KeyboardInterrupt), kept for when a finalizer swallows it (see run/interrupts.py), and
    reaches a guest stuck in a loop. SIGINT only if it was not ignored when the process
    started: a background job must stay deaf to the terminal's Ctrl-C."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    sys.unraisablehook = interrupts.quiet_when_pending(sys.unraisablehook)
    interrupts.install()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the CLI and turn every outcome into an exit status."""
    stdio.guard()  # before anything opens a file: see stream/stdio.py
    handle_signals()
    # With -j N, threads hand turns (and, under an overload policy, frames) to each other;
    # Python's default 5 ms switch interval makes every hand-off wait that long for the GIL.
    # Set by the CLI, which owns the process; not the core.
    sys.setswitchinterval(0.001)
    status = _run_cli(argv)
    # End the process here, without interpreter finalisation: at exit, wasmtime's WASI runtime
    # threads sometimes panic while Python tears down (a Rust backtrace on stderr in about one
    # run in four with a WASI module, measured here; never with os._exit). Everything of ours
    # is already written: outputs go out with os.write, checkpoints are closed and synced.
    # (A library user's process does finalise: wasmtime_engine._CustomOutputs covers it.)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", None)  # click >= 8.2


def _from_environment(error: click.exceptions.UsageError) -> str:
    """For a bad value that came from the environment: which variable held it (the message
    names the option, which the command line never mentioned)."""
    from click.core import ParameterSource

    if not isinstance(error, click.BadParameter) or error.param is None or error.ctx is None:
        return ""
    name = error.param.name
    if name is None:
        return ""
    source = error.ctx.get_parameter_source(name)
    own = DEFAULTS_FROM_ENVIRONMENT.get(name)
    if source is ParameterSource.DEFAULT and own is not None and os.environ.get(own):
        return f" (from the environment: {own})"
    if source is not ParameterSource.ENVIRONMENT:
        return ""
    declared = error.param.envvar
    candidates = [declared] if isinstance(declared, str) else list(declared or [])
    candidates.append(f"{error.ctx.auto_envvar_prefix}_{name.upper()}")
    held = [variable for variable in candidates if os.environ.get(variable)]
    return f" (from the environment: {held[0]})" if held else " (from the environment)"


def _run_cli(argv: Sequence[str] | None) -> int:
    try:
        # Every option can also come from the environment: WASMSTREAM_RUN_JOBS=4 and so on.
        cli.main(
            args=argv,
            prog_name="wasmstream",
            standalone_mode=False,
            auto_envvar_prefix="WASMSTREAM",
        )
        # A signal a finalizer swallowed where no loop raised it again (its traceback was kept
        # quiet for that loop): the command went on to its end, and says it was interrupted.
        interrupts.raise_pending()
    except click.exceptions.UsageError as error:
        if _NoArgsIsHelp is not None and isinstance(error, _NoArgsIsHelp) and error.ctx:
            click.echo(error.ctx.get_help())  # `wasmstream` alone: help, as click tools do
            return ExitStatus.OK
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        _error(f"{error.format_message()}{_from_environment(error)}{hint}")
        return ExitStatus.USAGE
    except click.exceptions.Abort:
        return ExitStatus.INTERRUPTED
    except click.exceptions.ClickException as error:
        _error(error.format_message())
        return error.exit_code
    except BrokenPipe:
        _quiet_stdout()
        return ExitStatus.BROKEN_PIPE
    except Interrupted as error:
        notice(str(error))  # not an error: how far the run got, and how to go on
        return error.status
    except WasmstreamError as error:
        _error(f"{error}{_OPTION_HINTS.get(type(error), '')}")
        return error.status
    except KeyboardInterrupt:
        notice("interrupted")
        return ExitStatus.INTERRUPTED
    except Exception as error:  # a bug: say so in one line, with the trace only on request
        if os.environ.get("WASMSTREAM_DEBUG"):
            import traceback  # only here: 1 ms of every start otherwise

            traceback.print_exc()
        _error(f"internal error: {type(error).__name__}: {error}")
        return ExitStatus.FAILURE
    return ExitStatus.OK


# The options that answer an error, which the layers below do not know by name.
_OPTION_HINTS: dict[type[WasmstreamError], str] = {
    FramingError: " (--frame-size SIZE, or --oversize split|skip)"
}


def _quiet_stdout() -> None:
    """After EPIPE, keep Python's exit-time flush of stdout from complaining."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
