"""Every committed fixture binary is what its source builds to (`make fixtures` rebuilds)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
import build


@pytest.mark.parametrize("source", sorted(FIXTURES.glob("*.wat")), ids=lambda p: p.name)
def test_wat_source_builds_to_committed_binary(source) -> None:  # type: ignore[no-untyped-def]
    assert build.build_wat(source) == source.with_suffix(".wasm").read_bytes()


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None, reason="ziglang not installed")
@pytest.mark.parametrize("source", sorted((FIXTURES / "c").glob("*.c")), ids=lambda p: p.name)
def test_c_source_builds_to_committed_binary(source) -> None:  # type: ignore[no-untyped-def]
    assert build.build_c(source) == source.with_suffix(".wasm").read_bytes()


@pytest.mark.skipif(build.wasm_tools() is None, reason="wasm-tools not installed")
@pytest.mark.parametrize("source", build.component_sources(), ids=lambda p: p.name)
def test_component_source_builds_to_committed_binary(source) -> None:  # type: ignore[no-untyped-def]
    assert build.build_component(source) == source.with_suffix(".wasm").read_bytes()
