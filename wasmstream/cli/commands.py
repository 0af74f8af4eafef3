"""The command line: a thin click layer over `wasmstream.run.skeleton`.

Each command parses its options into a frozen config and calls one core function. `main` is the
only place where exceptions become messages and exit codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import click

from wasmstream._version import __version__
from wasmstream.engines import (
    DEFAULT_ENGINE,
    DEFAULT_MAX_MEMORY,
    ENGINE_NAMES,
    DirGrant,
    Sandbox,
)
from wasmstream.errors import (
    BrokenPipe,
    ExitStatus,
    FramesFailed,
    FramingError,
    Interrupted,
    WasmstreamError,
)
from wasmstream.guest.abi import (
    ALLOCATOR_NAMES,
    DEALLOCATOR_NAMES,
    DEFAULT_INIT,
    DEFAULT_TRANSFORM,
    STATE_MODES,
    AbiOptions,
    init_for,
)
from wasmstream.run import interrupts
from wasmstream.run.options import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_FRAME_SIZE,
    DEFAULT_PART_SIZE,
    POLICIES,
    OnError,
    Overload,
    RunConfig,
    Shard,
    check_cluster_address,
    parse_dir,
    parse_env,
    sidecar_for,
)
from wasmstream.run.skeleton import ProgressFactory, run
from wasmstream.stream import stdio
from wasmstream.stream.framing import Framing, FramingSpec, Oversize
from wasmstream.stream.locks import is_own_file
from wasmstream.units import format_duration, format_size, parse_duration, parse_size, plural

if TYPE_CHECKING:
    from wasmstream.run.metrics import MetricsFile
    from wasmstream.run.tally import Tally


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
    from importlib.metadata import PackageNotFoundError, version  # 20 ms: only when asked

    in_use = os.environ.get("WASMSTREAM_ENGINE") or DEFAULT_ENGINE
    found = []
    for name in ENGINE_NAMES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    engines = [f"{name} {number}" for name, number in found if name == in_use] or [
        f"{in_use} (not installed)"
    ]
    others = [f"{name} {number}" for name, number in found if name != in_use]
    also = f"; also installed: {', '.join(others)}" if others else ""
    click.echo(f"wasmstream {__version__} (engine: {engines[0]}{also})")
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
      printf 'hello\\n' | wasmstream run fixtures/upper.wasm
      wasmstream run fixtures/c/redact.wasm access.log -o redacted.log
      wasmstream init upper --lang c    # a transform of your own
      wasmstream guide                  # how to write one
    """


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | float) -> float:
    try:
        seconds = value if isinstance(value, float) else parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None
    if seconds <= 0:
        raise click.BadParameter("must be longer than 0", ctx, param)
    return seconds


def _optional_duration(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> float | None:
    return None if value is None else _duration_option(ctx, param, value)


def _optional_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A size, or none: `unlimited` (or `none`) lifts the limit."""
    if value is None or value.lower() in ("unlimited", "none"):
        return None
    return _size_option(ctx, param, value)


def _env_pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_env(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _dir_grants(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[DirGrant, ...]:
    try:
        return tuple(parse_dir(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


_ESCAPES = {"\\0": b"\0", "\\n": b"\n", "\\t": b"\t", "\\r": b"\r", "\\\\": b"\\"}


def _delimiter_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> bytes | None:
    """One byte: given literally, or as \\0, \\n, \\t, \\r, \\\\ or \\xHH."""
    if value is None:
        return None
    if value in _ESCAPES:
        return _ESCAPES[value]
    if len(value) == 4 and value.startswith("\\x"):
        try:
            return bytes([int(value[2:], 16)])
        except ValueError:
            pass
    encoded = value.encode()
    if len(encoded) == 1:
        return encoded
    raise click.BadParameter(
        f"{value!r} is not one byte (try ',', '\\0', '\\t', '\\x1e')", ctx, param
    )


def _linger_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    if value.lower() in ("off", "0"):
        return 0.0  # explicitly off (None would mean: the default for the input)
    return _duration_option(ctx, param, value)


def _overload_option(ctx: click.Context, param: click.Parameter, value: str) -> Overload:
    try:
        return Overload.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _shard_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Shard | None:
    if value is None:
        return None
    try:
        return Shard.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _cluster_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_cluster_address(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _stack(
    *options: Callable[[Callable[..., None]], Callable[..., None]],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Several click options as one decorator, in the order given."""

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


# Options that change what the person at the terminal sees, never the output.
operator_options = _stack(
    click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors."),
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Show progress on stderr [default: when stderr is a terminal].",
    ),
    click.option("--stats", is_flag=True, help="Print a summary on stderr at the end."),
    click.option("--stats-json", metavar="FILE", help="Write the summary to FILE as JSON."),
    click.option(
        "--metrics-file",
        metavar="FILE",
        help="Keep the run's numbers in FILE for Prometheus (node_exporter's textfile "
        "collector), updated as it goes and at exit.",
    ),
    click.option("--no-cache", is_flag=True, help="Do not use or fill the compiled-module cache."),
)


@dataclasses.dataclass(frozen=True)
class Operator:
    """How the run talks to the person at the terminal."""

    quiet: bool
    progress: bool | None
    stats: bool
    stats_json: str | None
    metrics_file: str | None = None

    def notify(self, message: str) -> None:
        if not self.quiet:
            _notice(message)

    def progress_factory(self, output: str | None) -> ProgressFactory | None:
        # As pv does: by default only on a terminal, and not on the one the data is shown on
        # (the line would be drawn over it).
        data_on_stderr = output in (None, "-") and _same_terminal(1, 2)
        show = self.progress if self.progress is not None else os.isatty(2) and not data_on_stderr
        if not show or self.quiet:
            return None
        from wasmstream.cli.progress import ProgressDisplay  # only when progress is shown

        return ProgressDisplay


def _same_terminal(fd: int, other: int) -> bool:
    try:
        if not (os.isatty(fd) and os.isatty(other)):
            return False
        one, two = os.fstat(fd), os.fstat(other)
    except OSError:
        return False
    return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)


def _hint_terminal_input(config: RunConfig, operator: Operator) -> None:
    """A run waiting on a terminal's keyboard looks hung: say once what it is waiting for."""
    reads_stdin = not config.inputs or "-" in config.inputs
    if reads_stdin and os.isatty(0):
        operator.notify("reading the input from this terminal: end it with Ctrl-D")


def _run_as_operator(config: RunConfig, operator: Operator) -> None:
    started = time.perf_counter()
    summary = None
    _hint_terminal_input(config, operator)
    metrics = _metrics_for(config, operator)
    status: int = ExitStatus.FAILURE
    try:
        runner = run
        if config.in_parts:  # Dask and asyncio load only for a cluster run: 20 ms of start-up
            from wasmstream.run.cluster import run as runner
        progress = _observers(
            # a folder of parts puts nothing on standard output: progress may go to the terminal
            operator.progress_factory(config.output_parts or config.output),
            metrics.observe if metrics else None,
        )
        summary = runner(config, notify=operator.notify, progress=progress)
        status = ExitStatus.OK
    except FramesFailed as failed:
        summary = failed.summary
        status = failed.status
        raise
    except KeyboardInterrupt:
        # Here rather than in main: click would print an empty line for it on the way out.
        status = ExitStatus.INTERRUPTED
        raise Interrupted() from None
    except WasmstreamError as error:
        status = error.status
        raise
    finally:
        if metrics is not None:
            metrics.finish(status)
        if summary is not None and (operator.stats or operator.stats_json):
            from wasmstream.cli.progress import Stats, write_stats

            stats = Stats.of(summary, time.perf_counter() - started)
            write_stats(stats, operator.stats and not operator.quiet, operator.stats_json)


def _metrics_for(config: RunConfig, operator: Operator) -> MetricsFile | None:
    """--metrics-file: written once now (refusing the run if it cannot be), then as it goes."""
    if operator.metrics_file is None:
        return None
    from wasmstream.run.metrics import DEFAULT_INTERVAL, MetricsFile

    interval = config.checkpoint_interval if config.checkpoint else DEFAULT_INTERVAL
    return MetricsFile(
        operator.metrics_file,
        config.module,
        config.output_parts or config.output,
        interval,
        operator.notify,
    )


def _observers(*factories: ProgressFactory | None) -> ProgressFactory | None:
    """Several observers of a run (progress, metrics) entered around it as one."""
    present = [factory for factory in factories if factory is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def enter_all(tally: Tally, total: int | None, done: int) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for factory in present:
            stack.enter_context(factory(tally, total, done))
        return stack

    return enter_all


def parse_jobs(text: str) -> int | None:
    """`--jobs`: N (at least 1), or `auto` (None)."""
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a number of at least 1, or 'auto'")
    return int(text)


def _jobs_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    try:
        return parse_jobs(value or "auto")
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


jobs_option = click.option(
    "-j",
    "--jobs",
    metavar="N|auto",
    default="auto",
    show_default=True,
    callback=_jobs_option,
    help="Instances running frames in parallel; auto: one on this thread or up to one per CPU, "
    "whichever the run measures faster.",
)
queue_depth_option = click.option(
    "--queue-depth",
    type=click.IntRange(min=1),
    metavar="N",
    show_default="2 x jobs",
    help="Frames read ahead of the workers under --on-overload drop|sample|adaptive (under "
    "block, each instance reads its own frame in turn); bounds memory.",
)


# Options that several commands take, declared once (run, bench, inspect).
export_options = _stack(
    click.option(
        "--function",
        metavar="NAME",
        default=DEFAULT_TRANSFORM,
        show_default=True,
        help="The transform export: (i32 ptr, i32 len) -> i32 or i64.",
    ),
    click.option(
        "--alloc",
        metavar="NAME",
        help=f"Allocator export [default: first of {', '.join(ALLOCATOR_NAMES)}].",
    ),
    click.option(
        "--free",
        metavar="NAME",
        help=f"Deallocator export [default: first of {', '.join(DEALLOCATOR_NAMES)}].",
    ),
    click.option(
        "--init",
        metavar="NAME",
        help=f"Export called once per instance with the --config bytes [default with --config: "
        f"{DEFAULT_INIT}].",
    ),
)
config_option = click.option(
    "--config",
    "config_arg",
    metavar="TEXT|@FILE",
    help="Bytes passed to --init (a component's init export): TEXT, or the contents of FILE.",
)
engine_option = click.option(
    "--engine",
    type=click.Choice(ENGINE_NAMES),
    default=DEFAULT_ENGINE,
    show_default=True,
    envvar="WASMSTREAM_ENGINE",
    help="WebAssembly runtime.",
)
framing_option = click.option(
    "--framing",
    type=click.Choice([f.value for f in Framing]),
    default=Framing.FIXED.value,
    show_default=True,
    help="How frames are cut: fixed size, or whole lines / delimited / length-prefixed records.",
)
delimiter_option = click.option(
    "--delimiter",
    metavar="D",
    callback=_delimiter_option,
    help="Record delimiter for --framing delimiter: one byte, or \\0 \\n \\t \\r \\\\ \\xHH.",
)


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
@jobs_option
@queue_depth_option
@export_options
@config_option
@engine_option
@framing_option
@delimiter_option
@click.option(
    "--state",
    type=click.Choice(STATE_MODES),
    default="auto",
    show_default=True,
    help="Guest state kept in checkpoints: the module's snapshot/restore exports if it has "
    "them (auto), none, or the whole instance's memory and globals (memory).",
)
@click.option(
    "--finish",
    metavar="NAME",
    help="Export called once after the last frame, () -> i64 packed; its output ends the "
    "output [default: finish, if exported].",
)
@click.option(
    "--oversize",
    type=click.Choice([o.value for o in Oversize]),
    default=Oversize.ERROR.value,
    show_default=True,
    help="A record larger than the frame size stops the run, is split, or is skipped.",
)
@click.option(
    "--linger",
    metavar="DURATION|off",
    callback=_linger_option,
    help="Release a partial frame after the input is quiet this long "
    "[default: 100ms for record framings on a pipe or terminal, else off].",
)
@click.option(
    "--on-overload",
    metavar="block|adaptive|drop|sample:N",
    callback=_overload_option,
    default="block",
    show_default=True,
    help="When the queue fills: wait (backpressure), slow down smoothly from half full, drop "
    "the frame, or keep one in N.",
)
@click.option(
    "--drop-log",
    metavar="FILE",
    help="Append the offset and length of every dropped frame to FILE (JSON lines).",
)
@click.option(
    "--timeout",
    metavar="DURATION",
    callback=_optional_duration,
    help="Wall-clock limit per frame: 500ms, 2s, 1m [default: none].",
)
@click.option(
    "--fuel",
    type=click.IntRange(min=1),
    metavar="N",
    help="Instruction budget per frame (deterministic) [default: none].",
)
@click.option(
    "--max-memory",
    metavar="SIZE",
    callback=_optional_size,
    default=format_size(DEFAULT_MAX_MEMORY),
    show_default=True,
    help="Linear memory limit per instance.",
)
@click.option(
    "--max-output",
    metavar="SIZE",
    callback=_optional_size,
    help="Output limit per frame [default: 64MiB or 4 frames, the larger].",
)
@click.option(
    "--on-error",
    type=click.Choice(POLICIES),
    default="fail",
    show_default=True,
    help="A failed frame stops the run, is skipped, or passes through unchanged.",
)
@click.option(
    "--dead-letter",
    metavar="FILE",
    help="Append every failed frame to FILE as a JSON line (with its data, base64).",
)
@click.option(
    "--env",
    "env_pairs",
    metavar="KEY=VALUE",
    multiple=True,
    callback=_env_pairs,
    help="Give the guest an environment variable (repeatable) [default: none].",
)
@click.option(
    "--arg",
    "wasi_args",
    metavar="TEXT",
    multiple=True,
    help="An argument for a WASI program, after argv[0] (repeatable, in order) [default: none].",
)
@click.option(
    "--dir",
    "dir_grants",
    metavar="HOST[:GUEST][:ro|rw]",
    multiple=True,
    callback=_dir_grants,
    help="Give the guest a directory, read-only unless :rw (repeatable) [default: none].",
)
@click.option(
    "--wasi-command",
    is_flag=True,
    help="Run the module's _start once per frame: frame on stdin, output from stdout.",
)
@click.option(
    "--checkpoint",
    metavar="FILE",
    help="Keep a checkpoint in FILE [default with -o OUT: OUT.ckpt.json].",
)
@click.option("--no-checkpoint", is_flag=True, help="Keep no checkpoint, even with -o.")
@click.option(
    "--checkpoint-interval",
    metavar="DURATION",
    callback=_duration_option,
    default=format_duration(DEFAULT_CHECKPOINT_INTERVAL),
    show_default=True,
    help="Save the checkpoint at most this often: 500ms, 2s, 1m.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    metavar="N",
    help="Also save the checkpoint every N frames.",
)
@click.option(
    "--shard",
    metavar="K/N",
    callback=_shard_option,
    help="Process only the K-th of N parts of the INPUT files, cut where records start.",
)
@click.option(
    "--cluster",
    metavar="local|local:N|tcp://HOST:PORT",
    callback=_cluster_option,
    help="Run parts of the input as tasks on a Dask cluster (local: started for the run).",
)
@click.option(
    "--cluster-file",
    metavar="FILE",
    help="Join the Dask scheduler described in FILE (dask scheduler --scheduler-file).",
)
@click.option(
    "--part-size",
    metavar="SIZE",
    callback=_optional_size,
    help="Input bytes per part (cluster task) [default: 8 per worker, 1MiB to "
    f"{format_size(DEFAULT_PART_SIZE)}].",
)
@click.option(
    "--output-parts",
    metavar="DIR",
    help="Write each part's output where it runs, to DIR/part-00000 …; DIR/_SUCCESS at the end.",
)
@operator_options
@click.option("--resume", is_flag=True, help="Continue from the checkpoint (none: start).")
@click.option("--restart", is_flag=True, help="Start over, replacing an existing checkpoint.")
@click.option(
    "--force", is_flag=True, help="Resume even if an input's identity (inode, first block) changed."
)
def run_command(
    module: str,
    inputs: tuple[str, ...],
    output: str | None,
    frame_size: int,
    jobs: int | None,
    queue_depth: int | None,
    function: str,
    alloc: str | None,
    free: str | None,
    init: str | None,
    config_arg: str | None,
    state: str,
    finish: str | None,
    engine: str,
    timeout: float | None,
    fuel: int | None,
    max_memory: int | None,
    max_output: int | None,
    on_error: str,
    dead_letter: str | None,
    env_pairs: tuple[tuple[str, str], ...],
    dir_grants: tuple[DirGrant, ...],
    wasi_args: tuple[str, ...],
    wasi_command: bool,
    framing: str,
    delimiter: bytes | None,
    oversize: str,
    linger: float | None,
    on_overload: Overload,
    drop_log: str | None,
    checkpoint: str | None,
    no_checkpoint: bool,
    checkpoint_interval: float,
    checkpoint_every: int | None,
    resume: bool,
    restart: bool,
    force: bool,
    shard: Shard | None,
    cluster: str | None,
    cluster_file: str | None,
    part_size: int | None,
    output_parts: str | None,
    quiet: bool,
    progress: bool | None,
    stats: bool,
    stats_json: str | None,
    metrics_file: str | None,
    no_cache: bool,
) -> None:
    """Transform INPUT files (or stdin; '-' is stdin) through MODULE, in order.

    The inputs are read as one stream, cut into frames of --frame-size bytes (the last may be
    shorter), transformed by --jobs instances of MODULE in parallel, and written to stdout or
    --output strictly in input order. MODULE is a core module or a WebAssembly component. See the
    GUEST ABI and COMPONENTS sections of `man wasmstream`, and `wasmstream guide` on writing
    transforms.

    With -o OUT, progress is checkpointed in OUT.ckpt.json; after a crash or Ctrl-C, the same
    command with --resume continues where it stopped, and OUT ends up byte-identical to an
    uninterrupted run.
    """
    init = init_for(config_arg is not None, init)
    if delimiter is not None and framing != Framing.DELIMITER.value:
        raise click.UsageError("--delimiter needs --framing delimiter")
    if resume and restart:
        raise click.UsageError("--resume and --restart exclude each other")
    if output_parts is not None:
        from wasmstream.stream.output_parts import checkpoint_name

        _check_output_parts(locals())
        checkpoint_path: str | None = os.path.join(output_parts, checkpoint_name(shard))
    else:
        checkpoint_path = _checkpoint_path(checkpoint, no_checkpoint, output)
    if (resume or restart or force) and checkpoint_path is None:
        raise click.UsageError(
            "--resume, --restart and --force need a checkpoint: --checkpoint FILE, or -o FILE"
        )
    config = RunConfig(
        module=module,
        inputs=inputs,
        output=output,
        frame_size=frame_size,
        jobs=jobs,
        queue_depth=queue_depth,
        abi=AbiOptions(
            function=function,
            alloc=alloc,
            free=free,
            init=init,
            wasi_command=wasi_command,
            state=state,
            finish=finish,
        ),
        config_arg=config_arg,
        engine=engine,
        sandbox=Sandbox(
            timeout=timeout,
            fuel=fuel,
            max_memory=max_memory,
            max_output=max_output,
            env=env_pairs,
            dirs=dir_grants,
            args=wasi_args,
        ),
        on_error=OnError(on_error),
        dead_letter=dead_letter,
        framing=FramingSpec(
            framing=Framing(framing),
            delimiter=delimiter or b"\n",
            oversize=Oversize(oversize),
            linger=linger,
        ),
        overload=on_overload,
        drop_log=drop_log,
        checkpoint=checkpoint_path,
        checkpoint_interval=checkpoint_interval,
        checkpoint_every=checkpoint_every,
        resume=resume,
        restart=restart,
        force=force,
        cache=not no_cache,
        flip_every=_flip_every(),
        timings=stats or stats_json is not None,  # else two clock reads a frame each way
        shard=shard,
        cluster=cluster,
        cluster_file=cluster_file,
        part_size=_part_size(cluster, cluster_file, part_size, shard, output_parts),
        # shards of one folder must agree on their parts: the default, not a choice of each
        part_size_auto=part_size is None and (output_parts is None or shard is None),
        output_parts=output_parts,
    )
    _run_as_operator(config, Operator(quiet, progress, stats, stats_json, metrics_file))


def _flip_every() -> int | None:
    """WASMSTREAM_AUTO_FLIP_EVERY=N makes --jobs auto switch shape every N frames, whatever it
    measures: for tests of the switching itself, which timing alone would not reach."""
    value = os.environ.get("WASMSTREAM_AUTO_FLIP_EVERY", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# What --output-parts cannot go with, and why (the option's parameter name: its flag).
NOT_WITH_PARTS = {
    "output": ("-o/--output", "the output is the folder's parts"),
    "checkpoint": ("--checkpoint", "the checkpoint lives in DIR"),
    "no_checkpoint": ("--no-checkpoint", "the folder's parts are recorded in its checkpoint"),
    "dead_letter": ("--dead-letter", "dead letters go beside their parts, in DIR"),
    "drop_log": ("--drop-log", "nothing is dropped: parts in flight are bounded"),
    "queue_depth": ("--queue-depth", "parts run whole, with no queue of frames"),
}


def _check_output_parts(given: dict[str, object]) -> None:
    for name, (flag, why) in NOT_WITH_PARTS.items():
        if given[name] not in (None, False):
            raise click.UsageError(f"--output-parts and {flag} exclude each other: {why}")


def _part_size(
    address: str | None,
    scheduler_file: str | None,
    part_size: int | None,
    shard: Shard | None,
    output_parts: str | None = None,
) -> int | None:
    """The part size of a run in parts: a cluster's, or one writing a folder of parts (None
    for a run on this machine into one output)."""
    if address is not None and scheduler_file is not None:
        raise click.UsageError("--cluster and --cluster-file exclude each other")
    if address is None and scheduler_file is None:
        if output_parts is not None:
            return part_size or DEFAULT_PART_SIZE
        if part_size is not None:
            raise click.UsageError("--part-size needs --cluster, --cluster-file or --output-parts")
        return None
    if shard is not None:
        raise click.UsageError(
            "--shard and --cluster exclude each other: a cluster splits the input itself"
        )
    return part_size or DEFAULT_PART_SIZE


def _checkpoint_path(given: str | None, disabled: bool, output: str | None) -> str | None:
    if disabled:
        if given is not None:
            raise click.UsageError("--checkpoint and --no-checkpoint exclude each other")
        return None
    if given is not None:
        return given
    if output in (None, stdio.STDIO) or not is_own_file(output):
        return None  # -o /dev/null, a FIFO, a terminal: nothing to resume exactly
    return sidecar_for(output)


@cli.command("resume")
@click.option(
    "--checkpoint",
    metavar="FILE",
    required=True,
    help="The checkpoint of the run to continue.",
)
@click.option(
    "-j",
    "--jobs",
    metavar="N|auto",
    help="Override the recorded --jobs.",
)
@click.option(
    "--queue-depth",
    type=click.IntRange(min=1),
    metavar="N",
    help="Override the recorded --queue-depth.",
)
@click.option(
    "--force", is_flag=True, help="Resume even if an input's identity (inode, first block) changed."
)
@operator_options
def resume_command(
    checkpoint: str,
    jobs: str | None,
    queue_depth: int | None,
    force: bool,
    quiet: bool,
    progress: bool | None,
    stats: bool,
    stats_json: str | None,
    metrics_file: str | None,
    no_cache: bool,
) -> None:
    """Continue the run recorded in a checkpoint, with the same module, inputs and output.

    Only options that do not change the output may be overridden; anything else is refused, as
    is a checkpoint whose module, options or inputs no longer match.
    """
    from wasmstream.checkpoint.resume import config_from_checkpoint

    try:
        jobs_override = parse_jobs(jobs) if jobs is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'-j' / '--jobs'") from None
    config = config_from_checkpoint(checkpoint, jobs_override, queue_depth, keep_jobs=jobs is None)
    timings = stats or stats_json is not None
    config = dataclasses.replace(config, force=force, cache=not no_cache, timings=timings)
    _run_as_operator(config, Operator(quiet, progress, stats, stats_json, metrics_file))


# run's options that say how a frame runs, shared by replay (the same click objects: one
# declaration, one help text, the same environment variables' rule).
REPLAY_OPTIONS = (
    "output", "frame_size", "function", "alloc", "free", "init", "config_arg", "engine",
    "timeout", "fuel", "max_memory", "max_output", "on_error", "dead_letter", "env_pairs",
    "dir_grants", "wasi_command", "quiet",
)  # fmt: skip


@cli.command("replay")
@click.argument("dead_letters", metavar="DEAD_LETTERS", type=click.Path(dir_okay=False))
@click.argument("module", type=click.Path(dir_okay=False))
@click.option(
    "--frame", "only", type=click.IntRange(min=0), metavar="N", help="Replay frame N alone."
)
def replay_command(
    dead_letters: str,
    module: str,
    only: int | None,
    output: str | None,
    frame_size: int,
    function: str,
    alloc: str | None,
    free: str | None,
    init: str | None,
    config_arg: str | None,
    engine: str,
    timeout: float | None,
    fuel: int | None,
    max_memory: int | None,
    max_output: int | None,
    on_error: str,
    dead_letter: str | None,
    env_pairs: tuple[tuple[str, str], ...],
    dir_grants: tuple[DirGrant, ...],
    wasi_command: bool,
    quiet: bool,
) -> None:
    """Run the frames of a --dead-letter file through MODULE again, in frame order.

    Each frame runs alone on a fresh instance, exactly as it was cut; its output goes to stdout
    or -o, the guest's stderr to stderr. The run options that say how a frame runs apply, with
    run's meaning (see `wasmstream run --help`); the exit status is a run's.

    \b
      wasmstream replay dead.jsonl fixed.wasm -o recovered
      wasmstream replay dead.jsonl fixed.wasm --frame 17
    """
    from wasmstream.run.replay import replay

    config = RunConfig(
        module=module,
        output=output,
        frame_size=frame_size,
        abi=AbiOptions(
            function=function,
            alloc=alloc,
            free=free,
            init=init_for(config_arg is not None, init),
            wasi_command=wasi_command,
        ),
        config_arg=config_arg,
        engine=engine,
        sandbox=Sandbox(
            timeout=timeout,
            fuel=fuel,
            max_memory=max_memory,
            max_output=max_output,
            env=env_pairs,
            dirs=dir_grants,
        ),
        on_error=OnError(on_error),
        dead_letter=dead_letter,
    )
    replay(config, dead_letters, only, Operator(quiet, None, False, None).notify)


replay_command.params += [p for p in run_command.params if p.name in REPLAY_OPTIONS]


@cli.command("inspect")
@click.argument("module", type=click.Path(dir_okay=False))
@export_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@engine_option
def inspect_command(
    module: str,
    function: str,
    alloc: str | None,
    free: str | None,
    init: str | None,
    as_json: bool,
    engine: str,
) -> None:
    """Show MODULE's exports and imports, and how wasmstream would run it (or what is missing).

    Exits 0 when the module is ready to run, 3 when it is not.
    """
    import json

    from wasmstream.cli.reports import format_module_report, inspect_module

    options = AbiOptions(function=function, alloc=alloc, free=free, init=init)
    report = inspect_module(module, options, engine)
    click.echo(json.dumps(report, indent=2) if as_json else format_module_report(report))
    if report["abi"] is None:
        raise SystemExit(ExitStatus.INVALID_MODULE)


@cli.command("bench")
@click.argument("module", type=click.Path(dir_okay=False))
@click.argument("input", required=False, metavar="[INPUT]")
@click.option(
    "--sample",
    "sample_size",
    metavar="SIZE",
    callback=_size_option,
    default="32MiB",
    show_default=True,
    help="How much of INPUT to measure with (random bytes without INPUT).",
)
@click.option(
    "--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per setting."
)
@export_options
@config_option
@framing_option
@delimiter_option
@engine_option
def bench_command(
    module: str,
    input: str | None,
    sample_size: int,
    runs: int,
    function: str,
    alloc: str | None,
    free: str | None,
    init: str | None,
    config_arg: str | None,
    framing: str,
    delimiter: bytes | None,
    engine: str,
) -> None:
    """Measure MODULE's throughput for several frame sizes and job counts; recommend the best.

    Runs the real pipeline on a sample of INPUT ('-' for stdin; random bytes without it) with
    output to /dev/null, and prints the median of --runs runs for each setting.
    """
    from wasmstream.run.bench import Trial, bench

    def show(trial: Trial) -> None:
        click.echo(
            f"  --frame-size {format_size(trial.frame_size):>7}  -j {trial.jobs:<3}"
            f"{trial.mib_per_second:9.1f} MiB/s",
            err=True,
        )

    init = init_for(config_arg is not None, init)
    base = RunConfig(
        module=module,
        abi=AbiOptions(function=function, alloc=alloc, free=free, init=init),
        config_arg=config_arg,
        engine=engine,
        framing=FramingSpec(framing=Framing(framing), delimiter=delimiter or b"\n"),
    )
    click.echo(f"wasmstream: measuring {module} ({plural(runs, 'run')} per setting)…", err=True)
    trials = bench(base, input, sample_size, runs, show)
    if not trials:
        raise click.UsageError("the input is empty: nothing to measure")
    best = max(trials, key=lambda trial: trial.mib_per_second)
    slowest = min(trials, key=lambda trial: trial.mib_per_second)
    click.echo(
        f"fastest: --frame-size {format_size(best.frame_size)} -j {best.jobs} "
        f"({best.mib_per_second:.1f} MiB/s; the slowest setting measured "
        f"{slowest.mib_per_second:.1f} MiB/s)"
    )


@cli.command("init")
@click.argument("directory", required=False, metavar="[DIR]", type=click.Path(file_okay=False))
@click.option(
    "--lang",
    # scaffold.LANGUAGES, spelled out so that the module loads only when init runs (a test checks).
    type=click.Choice(["c", "zig", "rust", "assemblyscript", "python"]),
    help="The language of the transform.",
)
@click.option("--name", metavar="NAME", help="The module's name, NAME.wasm [default: DIR's name].")
@click.option("--force", is_flag=True, help="Write into DIR even if it is not empty.")
@click.option(
    "--stateful",
    is_flag=True,
    help="A transform that keeps state across frames (snapshot, restore, finish); C only, "
    "the default --lang with it.",
)
@click.option(
    "--list",
    "list_languages",
    is_flag=True,
    help="List the languages, whether each one's toolchain is here, and what to install if not.",
)
def init_command(
    directory: str | None,
    lang: str | None,
    name: str | None,
    force: bool,
    stateful: bool,
    list_languages: bool,
) -> None:
    """Create DIR with a transform that upper-cases ASCII, ready to change and build.

    With --stateful (C), a transform that numbers lines across frames and counts them at the
    end instead: its state is saved with each checkpoint.

    DIR gets the transform's source, the guest SDK for its language (one file), a Makefile
    (`make` builds NAME.wasm, `make test` runs it through wasmstream on sample.txt and compares
    the output with expected.txt) and a README on what to change.

    \b
      wasmstream init upper --lang c && make -C upper test
      wasmstream init --list

    The guide: `wasmstream guide`.
    """
    from pathlib import Path

    from wasmstream.cli import scaffold

    if list_languages:
        for toolchain in map(scaffold.find_toolchain, scaffold.LANGUAGES):
            click.echo(f"{toolchain.lang:<15} {toolchain.status()}")
        return
    if lang is None and stateful and len(scaffold.STATEFUL) == 1:
        lang = scaffold.STATEFUL[0]  # the one language with a stateful template
    if directory is None or lang is None:
        raise click.UsageError("init needs DIR and --lang (or --list)")
    path = Path(directory)
    project_name = name if name is not None else scaffold.default_name(path)
    scaffold.create_project(path, lang, project_name, force, stateful)
    title = scaffold.TITLES[lang]
    kind = f"a stateful {title}" if stateful else f"{'an' if title[0] in 'AEIOU' else 'a'} {title}"
    click.echo(f"created {directory}: {kind} transform that builds {project_name}.wasm")
    toolchain = scaffold.find_toolchain(lang)
    if toolchain.found is None:
        click.echo(f"to build it: {toolchain.install}")
    import shlex

    click.echo(f"next: cd {shlex.quote(directory)} && make test")


@cli.command("guide")
@click.option("--path", "show_path", is_flag=True, help="Print where the guide is instead.")
def guide_command(show_path: bool) -> None:
    """Print the guide to writing transforms (the SDKs, worked examples, testing, debugging).

    Through a pager when stdout is a terminal. It is installed as
    share/doc/wasmstream/writing-transforms.md, beside the man page.
    """
    from wasmstream.cli.guide import guide_path

    path = guide_path()
    if show_path:
        click.echo(str(path))
    elif sys.stdout.isatty():
        click.echo_via_pager(path.read_text(encoding="utf-8"))
    else:
        click.echo(path.read_text(encoding="utf-8"), nl=False)


@cli.group("checkpoint")
def checkpoint_group() -> None:
    """Look at checkpoint files."""


@checkpoint_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report and the record as JSON.")
def checkpoint_show_command(file: str, as_json: bool) -> None:
    """Show a checkpoint: module, inputs, percent done, output offset, age, status, last error."""
    import json

    from wasmstream.cli.reports import checkpoint_report, format_checkpoint_report

    report = checkpoint_report(file)
    click.echo(json.dumps(report, indent=2) if as_json else format_checkpoint_report(report))


def _notice(message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"wasmstream: {message}", file=sys.stderr, flush=True)


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(ExitStatus.TERMINATED)


def _error(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr gone too: nothing left to tell
        print(f"wasmstream: error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the CLI and turn every outcome into an exit status."""
    stdio.guard()  # before anything opens a file: see stdio.py
    signal.signal(signal.SIGTERM, _raise_terminated)
    # With -j N, threads hand turns (and, under an overload policy, frames) to each other;
    # Python's default 5 ms switch interval makes every hand-off wait that long for the GIL.
    # Set by the CLI, which owns the process; not the core.
    sys.setswitchinterval(0.001)
    interrupts.install()
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


def _run_cli(argv: Sequence[str] | None) -> int:
    try:
        # Every option can also come from the environment: WASMSTREAM_RUN_JOBS=4 and so on.
        cli.main(
            args=argv,
            prog_name="wasmstream",
            standalone_mode=False,
            auto_envvar_prefix="WASMSTREAM",
        )
    except click.exceptions.UsageError as error:
        if _NoArgsIsHelp is not None and isinstance(error, _NoArgsIsHelp) and error.ctx:
            click.echo(error.ctx.get_help())  # `wasmstream` alone: help, as click tools do
            return ExitStatus.OK
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
    except Interrupted as error:
        _notice(str(error))  # not an error: how far the run got, and how to go on
        return error.status
    except WasmstreamError as error:
        _error(f"{error}{_OPTION_HINTS.get(type(error), '')}")
        return error.status
    except KeyboardInterrupt:
        _notice("interrupted")
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
