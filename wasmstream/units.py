"""Parsing of the sizes users type on the command line: `4096`, `64K`, `64KiB`, `1M`, `1MiB`."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>[KMGT]?)(?:i?B)?", re.IGNORECASE)
_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def parse_size(text: str) -> int:
    """Bytes in `text`. K, M, G and T are binary units (1K = 1KiB = 1024), as in dd and pv.

    Raises ValueError with a message fit for the user when the text is not a size.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 65536, 64K, 64KiB or 1M)")
    power: int = _POWERS[match["unit"].upper()]
    return int(match["number"]) << (10 * power)


def format_size(size: int) -> str:
    """`size` bytes in the largest binary unit that divides it exactly: 65536 -> '64KiB'."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return f"{size}B"


_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h)?", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`: `500ms`, `2s`, `1.5s`, `1m`, `1h`; a bare number is seconds.

    Raises ValueError with a message fit for the user when the text is not a duration.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 500ms, 2s or 1m)")
    return float(match["number"]) * _SECONDS[(match["unit"] or "s").lower()]


def format_duration(seconds: float) -> str:
    """A duration as a user would write it: 0.5 -> '500ms', 2.0 -> '2s', 90.0 -> '90s'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, in the plural unless it is one: '1 frame', '2 frames'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
