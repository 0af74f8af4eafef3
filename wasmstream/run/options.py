"""Every option of a run, and its defaults: plain data, a leaf that every layer imports.

The CLI parses options into a `RunConfig`; the core runs it; the checkpoint records it. Nothing
here does anything.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from wasmstream.engines import DEFAULT_ENGINE
from wasmstream.engines.base import DirGrant, Sandbox
from wasmstream.guest.abi import AbiOptions
from wasmstream.stream.framing import FramingSpec


class OnError(enum.Enum):
    """`--on-error`: what a failed frame does — stops the run, produces no output, or passes its
    input through unchanged."""

    FAIL = "fail"
    SKIP = "skip"
    PASSTHROUGH = "passthrough"


POLICIES = tuple(policy.value for policy in OnError)

DEFAULT_FRAME_SIZE = 64 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 2.0
DEFAULT_PART_SIZE = 64 << 20  # --part-size: the input a cluster task runs on, at most
PARTS_PER_WORKER = 8  # without --part-size: enough parts for every worker to stay busy
MIN_AUTO_PART = 1 << 20  # ...but no smaller than this (a part costs a task's round trip)

Notify = Callable[[str], None]


def sidecar_for(output: str) -> str:
    """The default checkpoint of a run writing to `output`."""
    return f"{output}.ckpt.json"


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Overload:
    """What the reader does as the queue fills: `--on-overload block|adaptive|drop|sample:N`.

    block waits for a free buffer; adaptive slows down before that (see pool.Pacer); drop and
    sample let frames go when no buffer is free."""

    policy: str = "block"
    keep_one_in: int = 1  # sample:N keeps one frame in N while the queue stays full

    @classmethod
    def parse(cls, text: str) -> Overload:
        name, _, count = text.partition(":")
        if name in ("block", "adaptive", "drop") and not count:
            return cls(name)
        if name == "sample" and count.isdigit() and int(count) >= 1:
            return cls("sample", int(count))
        raise ValueError(f"not an overload policy: {text!r} (block, adaptive, drop or sample:N)")

    def __str__(self) -> str:
        return f"sample:{self.keep_one_in}" if self.policy == "sample" else self.policy


class Shard(NamedTuple):
    """`--shard K/N`: the K-th (from 1) of N parts of the input."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        k, sep, n = text.partition("/")
        if sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n):
            return cls(int(k), int(n))
        raise ValueError(f"not a shard: {text!r} (K/N with 1 <= K <= N, e.g. 2/8)")

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def parse_env(text: str) -> tuple[str, str]:
    """`--env KEY=VALUE`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


def parse_dir(text: str) -> DirGrant:
    """`--dir HOST[:GUEST][:ro|rw]`: read-only unless `:rw`; HOST must be a directory."""
    parts = text.split(":")
    mode = parts.pop() if len(parts) > 1 and parts[-1] in ("ro", "rw") else "ro"
    if not 1 <= len(parts) <= 2 or not parts[0]:
        raise ValueError(f"{text!r} is not HOST[:GUEST][:ro|rw]")
    host = parts[0]
    if not os.path.isdir(host):
        raise ValueError(f"{host} is not a directory")
    guest = parts[1] if len(parts) == 2 else host
    return DirGrant(os.path.abspath(host), guest, writable=mode == "rw")


def auto_part_size(total: int, workers: int) -> int:
    """The part size when --part-size is not given: about PARTS_PER_WORKER parts for each
    worker (so that none idles long at the end however the parts' costs vary), in whole MiB,
    from MIN_AUTO_PART up to DEFAULT_PART_SIZE."""
    per_part = -(-total // (PARTS_PER_WORKER * max(1, workers)))
    whole = -(-per_part // MIN_AUTO_PART) * MIN_AUTO_PART
    return max(MIN_AUTO_PART, min(DEFAULT_PART_SIZE, whole))


def local_workers(address: str | None) -> int | None:
    """Worker processes to start for `--cluster local[:N]` (None: join a running scheduler)."""
    if address is None or not address.startswith("local"):
        return None
    _, _, count = address.partition(":")
    return int(count) if count else default_jobs()


def check_cluster_address(text: str) -> str:
    """`--cluster`: local, local:N, or a scheduler's address (tcp://HOST:PORT)."""
    name, sep, count = text.partition(":")
    if name == "local" and (not sep or (count.isdigit() and int(count) >= 1)):
        return text
    if "://" in text:
        return text
    raise ValueError(f"not a cluster: {text!r} (local, local:N or tcp://HOST:PORT)")


@dataclass(frozen=True)
class RunConfig:
    module: str
    inputs: tuple[str, ...] = ()
    output: str | None = None
    frame_size: int = DEFAULT_FRAME_SIZE
    jobs: int | None = None  # None: auto, up to one instance per CPU (see run/jobs_auto.py)
    queue_depth: int | None = None  # None: twice the jobs
    abi: AbiOptions = field(default_factory=AbiOptions)
    config_arg: str | None = None  # --config as given: TEXT or @FILE
    engine: str = DEFAULT_ENGINE
    sandbox: Sandbox = field(default_factory=Sandbox)
    on_error: OnError = OnError.FAIL
    dead_letter: str | None = None
    framing: FramingSpec = field(default_factory=FramingSpec)
    overload: Overload = field(default_factory=Overload)
    drop_log: str | None = None
    checkpoint: str | None = None
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    checkpoint_every: int | None = None
    resume: bool = False
    restart: bool = False
    force: bool = False
    cache: bool = True  # keep compiled modules in the user's cache directory
    timings: bool = True  # count time spent waiting for input and output (for --stats)
    flip_every: int | None = None  # tests only: --jobs auto switches shape every N frames
    shard: Shard | None = None
    # A cluster run (--cluster ADDRESS or --cluster-file FILE), or one writing a folder of
    # parts (--output-parts DIR), cuts its input in part_size parts; part_size is None for
    # every other run.
    cluster: str | None = None
    cluster_file: str | None = None
    part_size: int | None = None
    part_size_auto: bool = False  # not given: chosen from the input and the workers at start
    output_parts: str | None = None  # --output-parts DIR: each part's output a file in DIR

    @property
    def clustered(self) -> bool:
        return self.cluster is not None or self.cluster_file is not None

    @property
    def in_parts(self) -> bool:
        """Run as parts (parts.split), each on its own: on a cluster, or into a parts folder."""
        return self.part_size is not None

    @property
    def effective_queue_depth(self) -> int:
        return self.queue_depth if self.queue_depth is not None else 2 * self.max_jobs

    @property
    def max_jobs(self) -> int:
        """Instances at most: the fixed --jobs, or under auto one per CPU."""
        return self.jobs if self.jobs is not None else default_jobs()


class Reached(NamedTuple):
    """How far a run got, in input order: bytes of the input stream done (and of each input),
    frames, output bytes written, and how long its logs were then (dead letters, drop log;
    None: no such log). Where a run starts (zero, a shard's start, a checkpoint's position),
    and in the journal, where each frame written left it."""

    input_bytes: int = 0
    per_input: tuple[int, ...] = ()
    frames: int = 0
    output_bytes: int = 0
    log_bytes: tuple[int | None, int | None] = (None, None)
