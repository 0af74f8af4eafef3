"""The command line: a thin click layer over the run."""

from wasmstream.cli.commands import main

__all__ = ["main"]
