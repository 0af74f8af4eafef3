"""Where the guide to writing transforms is: installed beside the man page, or in a checkout.

A wheel installs it as data (`share/doc/wasmstream/writing-transforms.md` under the
environment's prefix, wherever the install scheme puts that); a source checkout, an editable
install included, has it in `docs/`. `wasmstream guide` prints it.
"""

from __future__ import annotations

from pathlib import Path

from wasmstream.errors import IOFailure

GUIDE_NAME = "writing-transforms.md"


def guide_path() -> Path:
    """The guide's file. Raises IOFailure when neither the install nor a checkout has it."""
    for candidate in (*_installed(), Path(__file__).resolve().parent.parent / "docs" / GUIDE_NAME):
        if candidate.is_file():
            return candidate
    raise IOFailure(f"the guide ({GUIDE_NAME}) is not installed with wasmstream")


def _installed() -> list[Path]:
    # The wheel's RECORD names the data file relative to site-packages, so this finds it under
    # every scheme (a venv, pipx, --user, --prefix) without guessing the prefix.
    from importlib.metadata import PackageNotFoundError, files

    try:
        recorded = files("wasmstream") or []
    except PackageNotFoundError:
        return []
    return [Path(str(f.locate())) for f in recorded if f.name == GUIDE_NAME]
