"""How a run's options are recorded in its checkpoint and read back: one table, both ways.

Each recorded field of the checkpoint (`OutputOptions`: can change the bytes written;
`Command`: cannot) names the `RunConfig` attribute it comes from and how its value is kept in
JSON. Building the record and rebuilding the run from it both walk this table, so an option
cannot be recorded one way and read back another; a test fails when a RunConfig option is
neither recorded nor listed here as deliberately not recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from wasmstream.checkpoint.record import (
    Command,
    OutputOptions,
    optional_path_text,
    optional_text_path,
    path_text,
    text_path,
)
from wasmstream.engines.base import DirGrant, Sandbox
from wasmstream.guest.abi import AbiOptions
from wasmstream.run.options import Overload, RunConfig, Shard
from wasmstream.stream.framing import FramingSpec


class Codec(NamedTuple):
    to_record: Callable[[Any], Any]
    from_record: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


SAME = Codec(_same, _same)
ONE_BYTE = Codec(lambda delimiter: delimiter.decode("latin-1"), lambda text: text.encode("latin-1"))
OVERLOAD = Codec(str, Overload.parse)
SHARD = Codec(
    lambda shard: None if shard is None else str(shard),
    lambda text: None if text is None else Shard.parse(text),
)
PAIRS = Codec(lambda pairs: [list(pair) for pair in pairs], lambda pairs: tuple(map(tuple, pairs)))
GRANTS = Codec(
    lambda grants: [(path_text(grant.host), grant.guest, grant.writable) for grant in grants],
    lambda grants: tuple(DirGrant(text_path(host), guest, rw) for host, guest, rw in grants),
)
ARGS = Codec(list, tuple)
TEXT = Codec(optional_path_text, optional_text_path)  # as given (--config @FILE: relative)
FILE = Codec(  # a file the run writes: absolute, so a resume from elsewhere finds it
    lambda path: optional_path_text(path and os.path.abspath(path)), optional_text_path
)

# checkpoint field -> (RunConfig attribute, dotted for option groups; how it is kept)
RECORDED: dict[str, tuple[str, Codec]] = {
    # OutputOptions: every one of these can change the bytes written
    "function": ("abi.function", SAME),
    "alloc": ("abi.alloc", SAME),
    "free": ("abi.free", SAME),
    "init": ("abi.init", SAME),
    "wasi_command": ("abi.wasi_command", SAME),
    "frame_size": ("frame_size", SAME),
    "framing": ("framing.framing", SAME),
    "delimiter": ("framing.delimiter", ONE_BYTE),
    "oversize": ("framing.oversize", SAME),
    "on_error": ("on_error", SAME),
    "timeout": ("sandbox.timeout", SAME),
    "fuel": ("sandbox.fuel", SAME),
    "max_memory": ("sandbox.max_memory", SAME),
    "max_output": ("sandbox.max_output", SAME),
    "env": ("sandbox.env", PAIRS),
    "dirs": ("sandbox.dirs", GRANTS),
    "args": ("sandbox.args", ARGS),
    "overload": ("overload", OVERLOAD),
    "state": ("abi.state", SAME),
    "finish": ("abi.finish", SAME),
    "shard": ("shard", SHARD),  # which part of the input this run is
    "part_size": ("part_size", SAME),  # a cluster run's parts (and so its frames)
    # Command: how to run it again; none of these changes the bytes written
    "config_arg": ("config_arg", TEXT),
    "jobs": ("jobs", SAME),
    "queue_depth": ("queue_depth", SAME),
    "checkpoint_interval": ("checkpoint_interval", SAME),
    "checkpoint_every": ("checkpoint_every", SAME),
    "dead_letter": ("dead_letter", FILE),
    "linger": ("framing.linger", SAME),
    "drop_log": ("drop_log", FILE),
    "cluster": ("cluster", SAME),  # where parts ran: a resumed run may use another cluster
    "cluster_file": ("cluster_file", FILE),
}
# Recorded elsewhere in the checkpoint (module, inputs, output, engine), or not part of the
# run's definition (what the invocation asks of the checkpoint, caching, measuring, tests).
NOT_RECORDED = frozenset(
    {"module", "inputs", "output", "output_parts", "engine", "checkpoint"}
    | {"resume", "restart", "force"}
    | {"cache", "timings", "flip_every"}
    # how part_size was decided: the size itself is recorded, and a resume keeps it
    | {"part_size_auto"}
    # derived from the module (a text component), whose hash the checkpoint records
    | {"framing.whole_chars"}
)
GROUPS: dict[str, type[Any]] = {"abi": AbiOptions, "sandbox": Sandbox, "framing": FramingSpec}


def _get(config: RunConfig, path: str) -> Any:
    value: Any = config
    for name in path.split("."):
        value = getattr(value, name)
    return value


def record_options(config: RunConfig, config_bytes: bytes) -> tuple[OutputOptions, Command]:
    """The checkpoint's two option sections for `config` (validated as they are loaded)."""
    values = {
        field: codec.to_record(_get(config, path)) for field, (path, codec) in RECORDED.items()
    }
    values["config_sha256"] = hashlib.sha256(config_bytes).hexdigest()
    return (
        msgspec.convert(_pick(values, OutputOptions), OutputOptions),
        msgspec.convert(_pick(values, Command), Command),
    )


def _pick(values: dict[str, Any], struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {field: values[field] for field in struct.__struct_fields__ if field in values}


def recorded_run(options: OutputOptions, command: Command) -> dict[str, Any]:
    """The RunConfig keyword arguments the two sections record (groups rebuilt whole)."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for field, (path, codec) in RECORDED.items():
        section = options if field in OutputOptions.__struct_fields__ else command
        value = codec.from_record(getattr(section, field))
        head, _, rest = path.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    return {**top, **{name: GROUPS[name](**fields) for name, fields in groups.items()}}


def unrecorded_options() -> set[str]:
    """RunConfig options (group members dotted) that are neither recorded nor meant not to be:
    empty, or an option was added without deciding how a checkpoint keeps it."""
    recorded = {path for path, _ in RECORDED.values()}
    missing = set()
    for field in dataclasses.fields(RunConfig):
        if field.name in NOT_RECORDED:
            continue
        group = GROUPS.get(field.name)
        names = (
            [f"{field.name}.{f.name}" for f in dataclasses.fields(group)] if group else [field.name]
        )
        missing |= {name for name in names if name not in recorded | NOT_RECORDED}
    return missing
