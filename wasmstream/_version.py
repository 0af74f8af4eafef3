"""The version of wasmstream, in one place."""

__version__ = "0.1.0"
