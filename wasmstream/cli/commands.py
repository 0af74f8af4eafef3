"""The commands: a thin click layer over `wasmstream.run`.

Each command takes its options (declared once, in `cli.options`), builds a frozen config from
them and calls one function of the core. `cli.main` is the only place where what they raise
becomes a message and an exit status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from click.core import ParameterSource

from wasmstream._version import __version__
from wasmstream.cli.argtypes import JOBS, Size
from wasmstream.cli.options import (
    CHECKPOINTING,
    CONFIG,
    ENGINE,
    EXPORTS,
    FAILURES,
    FORCE,
    FRAME_SIZE,
    FRAMING,
    GUEST_STATE,
    JOBS_OPTION,
    JSON,
    NO_CACHE,
    OPERATOR,
    OUTPUT,
    OVERLOAD_POLICY,
    PLACEMENT,
    QUEUE_DEPTH,
    QUIET,
    RESUMING,
    SANDBOX,
    WASI_COMMAND,
    OptionGroup,
    default_engine,
    option,
)
from wasmstream.engines import ENGINE_NAMES
from wasmstream.errors import (
    ExitStatus,
    FramesFailed,
    Interrupted,
    UsageError,
    WasmstreamError,
)
from wasmstream.guest.abi import AbiOptions
from wasmstream.run import configure
from wasmstream.run.options import OnError, RunConfig
from wasmstream.run.skeleton import ProgressFactory, run
from wasmstream.stream.sources import is_url
from wasmstream.units import format_size, plural

F = TypeVar("F", bound=Callable[..., None])

if TYPE_CHECKING:
    from wasmstream.run.metrics import MetricsFile
    from wasmstream.run.tally import Tally


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version  # 20 ms: only when asked

    in_use = default_engine()
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


class _Commands(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # click would print an empty line for it, and exit 130
            raise Interrupted() from None  # every command's Ctrl-C, as run's: one line


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    allow_from_autoenv=False,  # WASMSTREAM_VERSION is a build script's, not ours
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


@dataclasses.dataclass(frozen=True)
class Operator:
    """How the run talks to the person at the terminal."""

    quiet: bool = False
    progress: bool | None = None
    stats: bool = False
    stats_json: str | None = None
    metrics_file: str | None = None

    @property
    def wants_timings(self) -> bool:
        """Whether the run counts its time in the guest and waiting (two clock reads a frame
        each way, else not taken)."""
        return self.stats or self.stats_json is not None

    def notify(self, message: str) -> None:
        if not self.quiet:
            notice(message)

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
    if operator.stats_json is not None:
        from wasmstream.cli.progress import check_stats_json

        check_stats_json(operator.stats_json)
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


def _pointing_to_help(command: F) -> F:
    """A usage error of the run's own rules (one option needing another, a value the engine
    cannot hold) reads as click's do: ending with where to look."""

    @functools.wraps(command)
    def with_hint(**values: Any) -> None:
        try:
            command(**values)
        except UsageError as error:
            raise click.UsageError(str(error)) from None

    return cast("F", with_hint)


@cli.command("run")
@click.argument("module", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@OUTPUT
@FRAME_SIZE
@JOBS_OPTION
@QUEUE_DEPTH
@EXPORTS
@CONFIG
@GUEST_STATE
@WASI_COMMAND
@ENGINE
@FRAMING
@SANDBOX
@FAILURES
@OVERLOAD_POLICY
@CHECKPOINTING
@RESUMING
@PLACEMENT
@OPERATOR
@NO_CACHE
@_pointing_to_help
def run_command(**values: Any) -> None:
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
    operator = Operator(**OPERATOR.take(values))
    cache = not values.pop("no_cache")
    output_parts = values["output_parts"]
    if output_parts is not None:
        _check_output_parts(values)
    output = values.pop("output")
    kept = CHECKPOINTING.take(values)
    if output_parts is not None and is_url(output_parts):
        checkpoint: str | None = kept["checkpoint"]  # a local file (_check_output_parts)
    elif output_parts is not None:
        from wasmstream.stream.parts_layout import checkpoint_name

        checkpoint = os.path.join(output_parts, checkpoint_name(values["shard"]))
    else:
        checkpoint = configure.checkpoint_path(kept["checkpoint"], kept["no_checkpoint"], output)
    resuming = RESUMING.take(values)
    if resuming["resume"] and resuming["restart"]:
        raise click.UsageError("--resume and --restart exclude each other")
    if any(resuming.values()) and checkpoint is None:
        raise click.UsageError(
            "--resume, --restart and --force need a checkpoint: --checkpoint FILE, or -o FILE"
        )
    given_part_size = values["part_size"]
    shard, cluster, cluster_file, part_size = configure.placement(**PLACEMENT.take(values))
    failures, overload = FAILURES.take(values), OVERLOAD_POLICY.take(values)
    config = RunConfig(
        module=values.pop("module"),
        inputs=values.pop("inputs"),
        output=output,
        frame_size=values.pop("frame_size"),
        jobs=values.pop("jobs"),
        queue_depth=values.pop("queue_depth"),
        abi=_abi(values, GUEST_STATE, WASI_COMMAND),
        config_arg=values.pop("config"),
        engine=values.pop("engine"),
        sandbox=configure.sandbox(**SANDBOX.take(values)),
        on_error=OnError(failures["on_error"]),
        dead_letter=failures["dead_letter"],
        framing=configure.framing_spec(**FRAMING.take(values)),
        overload=overload["on_overload"],
        drop_log=overload["drop_log"],
        checkpoint=checkpoint,
        checkpoint_interval=kept["checkpoint_interval"],
        checkpoint_every=kept["checkpoint_every"],
        **resuming,
        cache=cache,
        flip_every=_flip_every(),
        timings=operator.wants_timings,  # else two clock reads a frame each way
        shard=shard,
        cluster=cluster,
        cluster_file=cluster_file,
        part_size=part_size,
        # shards of one folder must agree on their parts: the default, not a choice of each
        part_size_auto=given_part_size is None and (output_parts is None or shard is None),
        output_parts=output_parts,
    )
    _all_taken(values)
    _run_as_operator(config, operator)


# What --output-parts cannot go with, and why.
NOT_WITH_PARTS = {
    "output": ("-o/--output", "the output is the folder's parts"),
    "checkpoint": ("--checkpoint", "the checkpoint lives in DIR (given only for s3://)"),
    "no_checkpoint": ("--no-checkpoint", "the folder's parts are recorded in its checkpoint"),
    "dead_letter": ("--dead-letter", "dead letters go beside their parts, in DIR"),
    "drop_log": ("--drop-log", "nothing is dropped: parts in flight are bounded"),
}


def _check_output_parts(values: dict[str, Any]) -> None:
    if values["output_parts"] in ("", "-"):
        raise click.UsageError(
            f"--output-parts needs a folder's name, not {values['output_parts']!r} (the parts "
            "are files: they cannot go to standard output)"
        )
    in_a_store = is_url(values["output_parts"])
    if in_a_store and values["checkpoint"] is None:
        raise click.UsageError(
            f"--output-parts {values['output_parts']} needs --checkpoint FILE, a local file: "
            "an object store has no lock to keep two runs from resuming one checkpoint"
        )
    for name, (flag, why) in NOT_WITH_PARTS.items():
        if name == "checkpoint" and in_a_store:
            continue
        if values[name] not in (None, False):
            raise click.UsageError(f"--output-parts and {flag} exclude each other: {why}")


def _abi(values: dict[str, Any], *more: OptionGroup) -> AbiOptions:
    """The exports named by EXPORTS (and `more`), --config (still in `values`) going to init."""
    taken = EXPORTS.take(values)
    for group in more:
        taken.update(group.take(values))
    return configure.abi_options(**taken, config_given=values.get("config") is not None)


def _all_taken(values: dict[str, Any]) -> None:
    """Every option a command declares is used: a leftover is one it would silently ignore."""
    assert not values, f"options declared but not used: {sorted(values)}"


@cli.command("resume")
@click.option(
    "--checkpoint",
    metavar="FILE",
    required=True,
    help="The checkpoint of the run to continue.",
)
@option("-j", "--jobs", metavar="N|auto", type=JOBS, help="Override the recorded --jobs.")
@option(
    "--queue-depth",
    type=click.IntRange(min=1),
    metavar="N",
    help="Override the recorded --queue-depth.",
)
@FORCE
@OPERATOR
@NO_CACHE
@_pointing_to_help
def resume_command(**values: Any) -> None:
    """Continue the run recorded in a checkpoint, with the same module, inputs and output.

    Only options that do not change the output may be overridden; anything else is refused, as
    is a checkpoint whose module, options or inputs no longer match.
    """
    from wasmstream.checkpoint.resume import config_from_checkpoint

    operator = Operator(**OPERATOR.take(values))
    # -j auto overrides a recorded -j N; no -j at all keeps what was recorded
    keep_jobs = not _given("jobs")
    config = config_from_checkpoint(
        values.pop("checkpoint"), values.pop("jobs"), values.pop("queue_depth"), keep_jobs=keep_jobs
    )
    config = dataclasses.replace(
        config,
        force=values.pop("force"),
        cache=not values.pop("no_cache"),
        timings=operator.wants_timings,
    )
    _all_taken(values)
    _run_as_operator(config, operator)


def _given(name: str) -> bool:
    """Whether option `name` was given (on the command line or in the environment), not left
    to its default (click's own record of where each value came from)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT)


@cli.command("replay")
@click.argument("dead_letters", metavar="DEAD_LETTERS", type=click.Path(dir_okay=False))
@click.argument("module", type=click.Path(dir_okay=False))
@option("--frame", type=click.IntRange(min=0), metavar="N", help="Replay frame N alone.")
@OUTPUT
@FRAME_SIZE
@EXPORTS
@CONFIG
@WASI_COMMAND
@ENGINE
@SANDBOX
@FAILURES
@QUIET
@_pointing_to_help
def replay_command(**values: Any) -> None:
    """Run the frames of a --dead-letter file through MODULE again, in frame order.

    Each frame runs alone on a fresh instance, exactly as it was cut; its output goes to stdout
    or -o, the guest's stderr to stderr. The run options that say how a frame runs apply, with
    run's meaning (see `wasmstream run --help`); the exit status is a run's.

    \b
      wasmstream replay dead.jsonl fixed.wasm -o recovered
      wasmstream replay dead.jsonl fixed.wasm --frame 17
    """
    from wasmstream.run.replay import replay

    failures = FAILURES.take(values)
    config = RunConfig(
        module=values.pop("module"),
        output=values.pop("output"),
        frame_size=values.pop("frame_size"),
        abi=_abi(values, WASI_COMMAND),
        config_arg=values.pop("config"),
        engine=values.pop("engine"),
        sandbox=configure.sandbox(**SANDBOX.take(values)),
        on_error=OnError(failures["on_error"]),
        dead_letter=failures["dead_letter"],
    )
    dead_letters, only = values.pop("dead_letters"), values.pop("frame")
    operator = Operator(quiet=values.pop("quiet"))
    _all_taken(values)
    replay(config, dead_letters, only, operator.notify)


@cli.command("inspect")
@click.argument("module", type=click.Path(dir_okay=False))
@EXPORTS
@JSON
@ENGINE
@_pointing_to_help
def inspect_command(**values: Any) -> None:
    """Show MODULE's exports and imports, and how wasmstream would run it (or what is missing).

    Exits 0 when the module is ready to run, 3 when it is not.
    """
    import json

    from wasmstream.cli.reports import format_module_report, inspect_module

    module, as_json, engine = values.pop("module"), values.pop("json"), values.pop("engine")
    options = _abi(values)
    _all_taken(values)
    report = inspect_module(module, options, engine)
    click.echo(json.dumps(report, indent=2) if as_json else format_module_report(report))
    if report["abi"] is None:
        raise SystemExit(ExitStatus.INVALID_MODULE)


@cli.command("bench")
@click.argument("module", type=click.Path(dir_okay=False))
@click.argument("input", required=False, metavar="[INPUT]")
@option(
    "--sample",
    metavar="SIZE",
    type=Size(),
    default="32MiB",
    show_default=True,
    help="How much of INPUT to measure with (random bytes without INPUT).",
)
@option(
    "--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per setting."
)
@EXPORTS
@CONFIG
@WASI_COMMAND
@ENGINE
@FRAMING
@SANDBOX
@_pointing_to_help
def bench_command(**values: Any) -> None:
    """Measure MODULE's throughput for several frame sizes and job counts; recommend the best.

    Runs the real pipeline on a sample of INPUT ('-' for stdin; random bytes without it) with
    output to /dev/null, and prints the median of --runs runs for each setting. The options
    that say how a frame is cut and run are run's: a module is measured as it will run.
    """
    from wasmstream.run.bench import Trial, bench

    def show(trial: Trial) -> None:
        click.echo(
            f"  --frame-size {format_size(trial.frame_size):>7}  -j {trial.jobs:<3}"
            f"{trial.mib_per_second:9.1f} MiB/s",
            err=True,
        )

    module, runs = values.pop("module"), values.pop("runs")
    base = RunConfig(
        module=module,
        abi=_abi(values, WASI_COMMAND),
        config_arg=values.pop("config"),
        engine=values.pop("engine"),
        framing=configure.framing_spec(**FRAMING.take(values)),
        sandbox=configure.sandbox(**SANDBOX.take(values)),
    )
    input_path, sample = values.pop("input"), values.pop("sample")
    _all_taken(values)
    click.echo(f"wasmstream: measuring {module} ({plural(runs, 'run')} per setting)…", err=True)
    trials = bench(base, input_path, sample, runs, show)
    if not trials:
        raise click.UsageError("the input is empty: nothing to measure")
    best = max(trials, key=lambda trial: trial.mib_per_second)
    slowest = min(trials, key=lambda trial: trial.mib_per_second)
    click.echo(
        f"fastest: --frame-size {format_size(best.frame_size)} -j {best.jobs} "
        f"({best.mib_per_second:.1f} MiB/s; the slowest setting measured "
        f"{slowest.mib_per_second:.1f} MiB/s)"
    )


def _flip_every() -> int | None:
    """WASMSTREAM_AUTO_FLIP_EVERY=N makes --jobs auto switch shape every N frames, whatever it
    measures: for tests of the switching itself, which timing alone would not reach."""
    value = os.environ.get("WASMSTREAM_AUTO_FLIP_EVERY", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


@cli.command("init")
@click.argument("directory", required=False, metavar="[DIR]", type=click.Path(file_okay=False))
@click.option(
    "--lang",
    # scaffold.LANGUAGES, spelled out so that the module loads only when init runs (a test checks).
    type=click.Choice(["c", "zig", "rust", "assemblyscript", "python", "javascript"]),
    help="The language of the transform.",
)
@click.option("--name", metavar="NAME", help="The module's name, NAME.wasm [default: DIR's name].")
@click.option("--force", is_flag=True, help="Write into DIR even if it is not empty.")
@click.option(
    "--stateful",
    is_flag=True,
    help="A transform that keeps state across frames (snapshot, restore, finish): C (the "
    "default --lang with it), Python or JavaScript.",
)
@click.option(
    "--list",
    is_flag=True,
    help="List the languages, whether each one's toolchain is here, and what to install if not.",
)
def init_command(
    directory: str | None,
    lang: str | None,
    name: str | None,
    force: bool,
    stateful: bool,
    list: bool,
) -> None:
    """Create DIR with a transform that upper-cases ASCII, ready to change and build.

    With --stateful (C, Python, JavaScript), a transform that numbers lines across frames and
    counts them at the end instead: its state is saved with each checkpoint.

    DIR gets the transform's source, the guest SDK for its language (one file; for Python and
    JavaScript, whose transforms are components, the contract's WIT), a Makefile (`make` builds
    NAME.wasm, `make test` runs it through wasmstream on sample.txt and compares the output with
    expected.txt) and a README on what to change.

    \b
      wasmstream init upper --lang c && make -C upper test
      wasmstream init --list

    The guide: `wasmstream guide`.
    """
    from pathlib import Path

    from wasmstream.cli import scaffold

    if list:
        for toolchain in map(scaffold.find_toolchain, scaffold.LANGUAGES):
            click.echo(f"{toolchain.lang:<15} {toolchain.status()}")
        return
    if lang is None and stateful:
        lang = scaffold.STATEFUL_DEFAULT
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
@click.option("--path", is_flag=True, help="Print where the guide is instead.")
def guide_command(path: bool) -> None:
    """Print the guide to writing transforms (the SDKs, worked examples, testing, debugging).

    Through a pager when stdout is a terminal. It is installed as
    share/doc/wasmstream/writing-transforms.md, beside the man page.
    """
    from wasmstream.cli.guide import guide_path

    guide = guide_path()
    if path:
        click.echo(str(guide))
    elif sys.stdout.isatty():
        click.echo_via_pager(guide.read_text(encoding="utf-8"))
    else:
        click.echo(guide.read_text(encoding="utf-8"), nl=False)


@cli.group("checkpoint")
def checkpoint_group() -> None:
    """Look at checkpoint files."""


@checkpoint_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", is_flag=True, help="Print the report and the record as JSON.")
def checkpoint_show_command(file: str, json: bool) -> None:
    """Show a checkpoint: module, inputs, percent done, output offset, age, status, last error."""
    from json import dumps

    from wasmstream.cli.reports import checkpoint_report, format_checkpoint_report

    report = checkpoint_report(file)
    click.echo(dumps(report, indent=2) if json else format_checkpoint_report(report))


def notice(message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"wasmstream: {message}", file=sys.stderr, flush=True)
