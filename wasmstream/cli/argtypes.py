"""The kinds of value options take, as click argument types.

Each one converts by the check in `wasmstream.run.configure` that the library uses too, so a
value means the same and is refused with the same message on both. A refusal becomes click's
usage error: exit status 2, naming the option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from wasmstream.run import configure

if TYPE_CHECKING:  # generic in click >= 8.3, and only to the type checker
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class _Checked(_ParamType):
    """A value converted by one of configure's checks (a ValueError is the user's mistake)."""

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.check(value)
        except ValueError as error:
            self.fail(str(error).lstrip(), param, ctx)


# click names the option itself ("Invalid value for '--fuel': must be …"); the library's
# messages name its keyword instead.
_NAMED_BY_CLICK = ""


class Size(_Checked):
    """Bytes: `4096`, `64K`, `64KiB`, `1M`; with `unlimited`, also `unlimited` (no limit)."""

    name = "size"

    def __init__(self, *, unlimited: bool = False) -> None:
        self.unlimited = unlimited

    def check(self, value: Any) -> int | None:
        return configure.as_size(_NAMED_BY_CLICK, value, unlimited=self.unlimited)


class Duration(_Checked):
    """Seconds: `500ms`, `2s`, `1m`; with `off`, also `off` or `0` (turned off: 0.0)."""

    name = "duration"

    def __init__(self, *, off: bool = False) -> None:
        self.off = off

    def check(self, value: Any) -> float | None:
        return configure.as_duration(_NAMED_BY_CLICK, value, off=self.off)


class _By(_Checked):
    def __init__(self, name: str, check: Callable[[Any], Any]) -> None:
        self.name = name
        self._check = check

    def check(self, value: Any) -> Any:
        return self._check(value)


JOBS = _By("jobs", configure.as_jobs)  # N, or auto (None)
OVERLOAD = _By("overload", configure.as_overload)  # block|adaptive|drop|sample:N
SHARD = _By("shard", configure.as_shard)  # K/N
CLUSTER = _By("cluster", configure.as_cluster)  # local|local:N|tcp://HOST:PORT
DELIMITER = _By("delimiter", configure.as_delimiter)  # one byte
ENV_PAIR = _By("env", configure.as_env_pair)  # KEY=VALUE
DIR_GRANT = _By("dir", configure.as_dir_grant)  # HOST[:GUEST][:ro|rw]
