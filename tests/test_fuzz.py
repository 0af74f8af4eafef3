"""Fuzzing `run` with random and mutated modules: never a traceback, never a hang."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmstream.errors import ExitStatus

from conftest import FIXTURES, wasmstream

SEEDS = [(FIXTURES / name).read_bytes() for name in ("upper.wasm", "hexdump.wasm", "hostile.wasm")]
DOCUMENTED = {int(status) for status in ExitStatus}


@st.composite
def mutated_modules(draw: st.DrawFn) -> bytes:
    module = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, len(module) - 1))
        if action == "flip":
            module[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del module[max(at, 8) :]
        elif action == "insert":
            module[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif len(module) > 9:
            del module[at]
    return bytes(module)


def check_run(module: bytes, data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.wasm"
    path.write_bytes(module)
    result = wasmstream(
        "run", str(path), "--timeout", "1s", "--frame-size", "7", "-j", "2", input=data, timeout=30
    )
    stderr = result.stderr.decode(errors="replace")
    assert "Traceback" not in stderr
    assert result.returncode in DOCUMENTED, stderr
    assert result.returncode != ExitStatus.FAILURE, stderr  # an internal error is a bug
    if result.returncode:
        assert stderr.splitlines()[-1].startswith("wasmstream: error: "), stderr


# derandomize: the same examples every run, so a failure found is a regression gate that stays
# red until fixed, never a random red on someone else's change.
fuzz_settings = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

HEADER = b"\0asm\x01\0\0\0"  # magic and version 1: past the first check, into the parser


@st.composite
def random_sections(draw: st.DrawFn) -> bytes:
    """A valid header, then sections of random ids, (mostly right) lengths and contents."""
    module = bytearray(HEADER)
    for _ in range(draw(st.integers(0, 5))):
        payload = draw(st.binary(max_size=60))
        length = draw(st.one_of(st.just(len(payload)), st.integers(0, 200)))
        module += bytes([draw(st.integers(0, 13))]) + leb128(length) + payload
    return bytes(module)


def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@fuzz_settings
@given(module=random_sections(), data=st.binary(max_size=64))
def test_random_bytes_as_a_module(module: bytes, data: bytes, tmp_path: Path) -> None:
    check_run(module, data, tmp_path)


@fuzz_settings
@given(module=mutated_modules(), data=st.binary(max_size=64))
def test_mutated_valid_modules(module: bytes, data: bytes, tmp_path: Path) -> None:
    check_run(module, data, tmp_path)
