"""A run's configuration built from option values, as the command line and the library give them.

One check per kind of value (a size, a duration, a job count, …) and one builder per part of the
configuration (the ABI, the sandbox, the framing, where the run is placed). The command line's
argument types (`cli.argtypes`) and option groups (`cli.options`) call these, and so does
`Transform`: a value means the same whichever way it comes, and is refused with the same message.
A check takes the text a user types or a value already of its type (so a value that went
through click's conversion passes again unchanged); it raises ValueError, a builder UsageError.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from wasmstream.engines import DEFAULT_MAX_MEMORY
from wasmstream.engines.base import DirGrant, Sandbox
from wasmstream.errors import UsageError
from wasmstream.guest.abi import DEFAULT_TRANSFORM, STATE_MODES, AbiOptions, init_for
from wasmstream.run.options import (
    DEFAULT_PART_SIZE,
    POLICIES,
    OnError,
    Overload,
    Shard,
    check_cluster_address,
    parse_dir,
    parse_env,
)
from wasmstream.stream.framing import Framing, FramingSpec, Oversize
from wasmstream.units import parse_duration, parse_size

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
LONGEST = 366 * 24 * 3600.0  # seconds: the longest duration any option takes
LARGEST_COUNT = 2**63 - 1  # what the engines count in (fuel is a u64; a signed 64-bit is safe)
UNLIMITED = ("unlimited", "none")  # a limit's value that lifts it
OFF = ("off", "0")  # --linger's value that turns it off


def as_size(name: str, value: int | str | None, *, unlimited: bool = False) -> int | None:
    """A size of at least one byte: a number of bytes, or text such as `64K` or `1MiB`. Where
    the limit may be lifted (`unlimited`), None or `unlimited` gives None."""
    if value is None or (isinstance(value, str) and value.lower() in UNLIMITED):
        if not unlimited:
            raise ValueError(f"{name} must be a size, not {value!r}")
        return None
    bytes_ = parse_size(value) if isinstance(value, str) else value
    if not isinstance(bytes_, int) or isinstance(bytes_, bool) or bytes_ < 1:
        raise ValueError(f"{name} must be a size of at least 1 byte, not {value!r}")
    return bytes_


def as_duration(name: str, value: float | str | None, *, off: bool = False) -> float | None:
    """Seconds longer than 0: a number, or text such as `500ms`, `2s` or `1m`. Where it can be
    turned off (`off`), `off` or `0` gives 0.0."""
    if value is None:
        return None
    if off and (value == 0 or (isinstance(value, str) and value.lower() in OFF)):
        return 0.0
    seconds = parse_duration(value) if isinstance(value, str) else value
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds > 0:
        raise ValueError(f"{name} must be a duration longer than 0, not {value!r}")
    if seconds > LONGEST:  # inf included: deadlines and clocks are finite
        raise ValueError(f"{name} must be a duration of at most a year, not {value!r}")
    return float(seconds)


def as_count(name: str, value: int | str | None) -> int | None:
    """A whole number of at least 1 (None: not given)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    if value is not None and value > LARGEST_COUNT:
        raise ValueError(f"{name} must be at most {LARGEST_COUNT}, not {value!r}")
    return value


def as_jobs(value: int | str | None) -> int | None:
    """`--jobs`: N (at least 1), or `auto` (None)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and not value.isdigit():
        raise ValueError(f"{value!r} is not a number of at least 1, or 'auto'")
    number = as_count("jobs", value)
    if number is None:  # pragma: no cover - count gives None only for None
        raise ValueError("jobs must be given")
    return number


def as_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


_ESCAPES = {"\\0": b"\0", "\\n": b"\n", "\\t": b"\t", "\\r": b"\r", "\\\\": b"\\"}


def as_delimiter(value: bytes | str | None) -> bytes | None:
    """One byte: as bytes, or as text given literally or as \\0, \\n, \\t, \\r, \\\\ or \\xHH."""
    if value is None or isinstance(value, bytes):
        if value is not None and len(value) != 1:
            raise ValueError(f"delimiter must be one byte, not {value!r}")
        return value
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
    raise ValueError(f"{value!r} is not one byte (try ',', '\\0', '\\t', '\\x1e')")


def as_overload(value: str | Overload) -> Overload:
    return value if isinstance(value, Overload) else Overload.parse(value)


def as_shard(value: str | Shard | None) -> Shard | None:
    return value if value is None or isinstance(value, Shard) else Shard.parse(value)


def as_cluster(value: str | None) -> str | None:
    return None if value is None else check_cluster_address(value)


def as_env_pair(value: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, str):
        raise ValueError(f"env must hold KEY=VALUE texts, not {value!r}")
    return parse_env(value)


EnvValues = Mapping[str, str] | Sequence[str | tuple[str, str]]


def as_env(values: EnvValues) -> tuple[tuple[str, str], ...]:
    """The guest's environment: a mapping, or `KEY=VALUE` texts."""
    if isinstance(values, Mapping):
        return tuple((str(key), str(value)) for key, value in values.items())
    if isinstance(values, str):
        raise ValueError(f"env must be a mapping or a list of KEY=VALUE texts, not {values!r}")
    return tuple(as_env_pair(value) for value in values)


def as_dir_grant(value: str | DirGrant) -> DirGrant:
    if isinstance(value, DirGrant):
        return value
    if not isinstance(value, str):
        raise ValueError(f"dirs must hold HOST[:GUEST][:ro|rw] texts, not {value!r}")
    return parse_dir(value)


def as_dir_grants(values: Sequence[str | DirGrant]) -> tuple[DirGrant, ...]:
    if isinstance(values, str):  # one text would be granted character by character
        raise ValueError(f"dirs must be a list of HOST[:GUEST][:ro|rw] texts, not {values!r}")
    return tuple(as_dir_grant(grant) for grant in values)


def as_enum(name: str, value: str | E, kind: type[E]) -> E:
    """One of an enumeration's members, or its value as text."""
    if isinstance(value, kind):
        return value
    choices = [str(member.value) for member in kind]
    return kind(as_choice(name, value, choices))  # type: ignore[arg-type]


def as_texts(name: str, values: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"{name} must be a list of texts, not {values!r}")
    return tuple(values)


def as_on_error(value: str | OnError) -> OnError:
    return value if isinstance(value, OnError) else OnError(as_choice("on_error", value, POLICIES))


def abi_options(
    *,
    function: str = DEFAULT_TRANSFORM,
    alloc: str | None = None,
    free: str | None = None,
    init: str | None = None,
    config_given: bool = False,
    wasi_command: bool = False,
    state: str = "auto",
    finish: str | None = None,
) -> AbiOptions:
    """The exports the run calls: --config without --init goes to the module's `init`."""
    return checked(
        lambda: AbiOptions(
            function=function,
            alloc=alloc,
            free=free,
            init=init_for(config_given, init),
            wasi_command=wasi_command,
            state=as_choice("state", state, STATE_MODES),
            finish=finish,
        )
    )


def sandbox(
    *,
    timeout: float | str | None = None,
    fuel: int | str | None = None,
    max_memory: int | str | None = DEFAULT_MAX_MEMORY,
    max_output: int | str | None = None,
    env: EnvValues = (),
    dir: Sequence[str | DirGrant] = (),  # the option's name (--dir)
    arg: Sequence[str] = (),
) -> Sandbox:
    """What the guest may use: the limits, and the WASI grants (none unless given)."""
    return checked(
        lambda: Sandbox(
            timeout=as_duration("timeout", timeout),
            fuel=as_count("fuel", fuel),
            max_memory=as_size("max_memory", max_memory, unlimited=True),
            max_output=as_size("max_output", max_output, unlimited=True),
            env=as_env(env),
            dirs=as_dir_grants(dir),
            args=as_texts("args", arg),
        )
    )


def framing_spec(
    *,
    framing: str | Framing = Framing.FIXED,
    delimiter: bytes | str | None = None,
    oversize: str | Oversize = Oversize.ERROR,
    linger: float | str | None = None,
) -> FramingSpec:
    """How frames are cut: a delimiter only with the delimiter framing."""
    kind = checked(lambda: as_enum("framing", framing, Framing))
    byte = checked(lambda: as_delimiter(delimiter))
    if byte is not None and kind is not Framing.DELIMITER:
        raise UsageError("--delimiter needs --framing delimiter")
    return checked(
        lambda: FramingSpec(
            framing=kind,
            delimiter=byte or b"\n",
            oversize=as_enum("oversize", oversize, Oversize),
            linger=as_duration("linger", linger, off=True),
        )
    )


def placement(
    *,
    shard: Shard | str | None = None,
    cluster: str | None = None,
    cluster_file: str | None = None,
    part_size: int | str | None = None,
    output_parts: str | None = None,
) -> tuple[Shard | None, str | None, str | None, int | None]:
    """Where the run goes: this machine, one shard of the input, or a cluster; a run in parts
    (a cluster's, or one writing a folder of parts) has its part size set, every other run
    None."""
    address = checked(lambda: as_cluster(cluster))
    part = checked(lambda: as_size("part_size", part_size, unlimited=True))
    one_shard = checked(lambda: as_shard(shard))
    if address is not None and cluster_file is not None:
        raise UsageError("--cluster and --cluster-file exclude each other")
    if address is None and cluster_file is None:
        if output_parts is not None:
            return one_shard, None, None, part or DEFAULT_PART_SIZE
        if part is not None:
            raise UsageError("--part-size needs --cluster, --cluster-file or --output-parts")
        return one_shard, None, None, None
    if one_shard is not None:
        raise UsageError(
            "--shard and --cluster exclude each other: a cluster splits the input itself"
        )
    return None, address, cluster_file, part or DEFAULT_PART_SIZE


def checkpoint_path(given: str | None, disabled: bool, output: str | None) -> str | None:
    """The run's checkpoint: --checkpoint FILE, else OUT.ckpt.json beside a regular -o OUT."""
    from wasmstream.run.options import sidecar_for
    from wasmstream.stream import stdio
    from wasmstream.stream.locks import is_own_file

    if disabled:
        if given is not None:
            raise UsageError("--checkpoint and --no-checkpoint exclude each other")
        return None
    if given is not None:
        return given
    if output in (None, stdio.STDIO) or not is_own_file(output):
        return None  # -o /dev/null, a FIFO, a terminal: nothing to resume exactly
    return sidecar_for(output)


def checked(build: Callable[[], T]) -> T:
    """`build()`, its ValueError or TypeError (a bad value) raised as UsageError."""
    try:
        return build()
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
