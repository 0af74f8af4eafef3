"""The component rows of `make bench` (issue 20): WebAssembly components and the guest languages
that compile to them, each against a baseline measured in the same run.

    C1  a text component (string) against the same work as a core module     goal >= 0.5x
    C2  a list<u8> component, against the text one on the same input          measured
    C3  a Python guest (componentize-py) against the same code in CPython     goal >= 0.7x
    C4  a JavaScript guest (componentize-js), against the same code in Node   measured; --aot tried
    C5  start-up, a cached ~18 MB Python component on a tiny input            goal < 0.5 s

The guests are built by tests/guests.py (cached by content under build/guests/). A row whose
toolchain is missing says so instead of a figure.

    python bench/bench.py --only c3 [--size MIB] [--runs N]   # one row alone
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench import FIXTURES, PYTHON, WASMSTREAM, MiB, Table, medians, rate, verdict, wall

from guests import BuildFailed, ToolchainMissing, build_js, build_python

# The same redaction in every guest: runs of 4 or more digits (ids, card numbers) become ####.
PYTHON_CODE = """
import re

SECRET = re.compile(r"\\b\\d{4,}\\b")


def transform(frame: str) -> str:
    return SECRET.sub("####", frame)
"""
PYTHON_GUEST = (
    PYTHON_CODE
    + """
import wit_world


class WitWorld(wit_world.WitWorld):
    def process(self, frame: str) -> str:
        return transform(frame)
"""
)
# CPython running PYTHON_CODE as wasmstream runs the guest: 64 KiB frames, whole characters.
PYTHON_NATIVE = (
    PYTHON_CODE
    + """
import codecs
import sys

decoder = codecs.getincrementaldecoder("utf-8")()
read, write = sys.stdin.buffer.read, sys.stdout.buffer.write
while chunk := read(65536):
    write(transform(decoder.decode(chunk)).encode())
write(transform(decoder.decode(b"", final=True)).encode())
"""
)
JS_REDACT = """
const SECRET = /\\b\\d{4,}\\b/g;

function redact(frame) {
  return frame.replace(SECRET, "####");
}
"""
JS_CODE = JS_REDACT + "\nexport function process(frame) {\n  return redact(frame);\n}\n"
# Node running JS_REDACT over stdin in the chunks it reads (64 KiB), whole characters.
JS_NATIVE = (
    JS_REDACT
    + """
const decoder = new TextDecoder();
process.stdin.on("data", (chunk) => {
  process.stdout.write(redact(decoder.decode(chunk, { stream: true })));
});
process.stdin.on("end", () => process.stdout.write(redact(decoder.decode())));
"""
)


def make_text(directory: Path, name: str, size: int) -> Path:
    """ASCII log lines with ids to redact, and none of the characters that make the fixture
    components fail on purpose ('!', '#', '~')."""
    lines = [
        f"2026-12-04T18:{n % 60:02d}:00 user {n * 7919 % 100000} paid with card "
        f"{n * 104729 % 10**12:012d} from 10.0.{n % 256}.{n * 3 % 256}\n"
        for n in range(2000)
    ]
    block = "".join(lines).encode()
    path = directory / name
    with open(path, "wb") as out:
        for _ in range(size // len(block) + 1):
            out.write(block)
        out.truncate(size)
    return path


def c1_text_component(table: Table, text: Path, size: int, runs: int) -> None:
    """textupper (component, string) against upper.wasm (core module): the same ASCII
    upper-casing (textupper also checks each byte for its three failure marks)."""
    component, core = medians(
        runs,
        f"{WASMSTREAM} run {FIXTURES / 'components' / 'textupper.wasm'} -j 1 {text} -o /dev/null",
        f"{WASMSTREAM} run {FIXTURES / 'upper.wasm'} -j 1 {text} -o /dev/null",
    )
    ratio = core / component
    table.add(
        f"C1 text component vs core module, {size // MiB} MiB",
        rate(size, component),
        f"core {rate(size, core)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.5, ">= 0.5x"),
    )


def c2_bytes_component(table: Table, text: Path, size: int, runs: int) -> None:
    """bytesrev (list<u8> in and out) against textupper (string) on the same input: what
    wasmtime-py's per-value conversion of a list<u8> costs (README, Performance)."""
    components = FIXTURES / "components"
    listed, text_time = medians(
        runs,
        f"{WASMSTREAM} run {components / 'bytesrev.wasm'} -j 1 {text} -o /dev/null",
        f"{WASMSTREAM} run {components / 'textupper.wasm'} -j 1 {text} -o /dev/null",
    )
    table.add(
        f"C2 list<u8> component, {size // MiB} MiB",
        rate(size, listed),
        f"string {rate(size, text_time)}",
        f"{text_time / listed:.3f}x",
        "measured",
    )


def _guest(table: Table, name: str, build: Callable[[], Path]) -> Path | None:
    """The built guest, or None with a row saying why it could not be built."""
    try:
        return build()
    except (ToolchainMissing, BuildFailed) as failed:
        table.add(name, "skipped", _reason(str(failed)), "-", "-")
        return None


def _reason(text: str) -> str:
    """The telling line of a failed build: its first error, else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if "Error" in line and not line.startswith("at ")]
    return (telling[-1] if telling else lines[0])[:80]


def c3_python_guest(table: Table, text: Path, size: int, runs: int, scratch: Path) -> None:
    name = f"C3 Python guest vs CPython, {size // MiB} MiB"
    guest = _guest(table, name, lambda: build_python(PYTHON_GUEST, "text"))
    if guest is None:
        return
    native = scratch / "native_redact.py"
    native.write_text(PYTHON_NATIVE)
    wall(f"{WASMSTREAM} run {guest} -o /dev/null < /dev/null")  # compiled once, then cached
    component, cpython = medians(
        runs,
        f"{WASMSTREAM} run {guest} -j 1 {text} -o /dev/null",
        f"{shlex.quote(PYTHON)} {native} < {text} > /dev/null",
    )
    ratio = cpython / component
    table.add(
        name,
        rate(size, component),
        f"CPython {rate(size, cpython)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.7, ">= 0.7x"),
    )


def c4_javascript_guest(table: Table, text: Path, size: int, runs: int, scratch: Path) -> None:
    name = f"C4 JavaScript guest vs Node, {size // MiB} MiB"
    guest = _guest(table, name, lambda: build_js(JS_CODE, "text"))
    if guest is None:
        return
    native = scratch / "native_redact.mjs"
    native.write_text(JS_NATIVE)
    wall(f"{WASMSTREAM} run {guest} -o /dev/null < /dev/null")  # compiled once, then cached
    component, node = medians(
        runs,
        f"{WASMSTREAM} run {guest} -j 1 {text} -o /dev/null",
        f"node {native} < {text} > /dev/null",
    )
    table.add(name, rate(size, component), f"node {rate(size, node)}", f"{node / component:.2f}x",
              "measured")  # fmt: skip
    aot = _guest(table, "C4 ... built with --aot (weval)", lambda: build_js(JS_CODE, "text", True))
    if aot is None:
        return
    wall(f"{WASMSTREAM} run {aot} -o /dev/null < /dev/null")
    ahead, plain = medians(
        runs,
        f"{WASMSTREAM} run {aot} -j 1 {text} -o /dev/null",
        f"{WASMSTREAM} run {guest} -j 1 {text} -o /dev/null",
    )
    table.add("C4 ... built with --aot (weval)", rate(size, ahead), f"no --aot {rate(size, plain)}",
              f"{plain / ahead:.2f}x", "measured")  # fmt: skip


def c5_python_start_up(table: Table, runs: int, scratch: Path) -> None:
    """The whole run of a cached ~18 MB Python component on a tiny input, against the same
    run compiling it afresh (--no-cache, once: it takes seconds)."""
    guest = _guest(table, "C5 start-up, cached Python component", lambda: build_python(
        PYTHON_GUEST, "text"))  # fmt: skip
    if guest is None:
        return
    tiny = scratch / "tiny.txt"
    tiny.write_text("card 1234567890\n")
    env = f"WASMSTREAM_CACHE_DIR={scratch / 'c5-cache'}"
    warm_command = f"{env} {WASMSTREAM} run {guest} {tiny} > /dev/null"
    cold = wall(f"{env} {WASMSTREAM} run {guest} --no-cache {tiny} > /dev/null")
    wall(warm_command)  # fills the cache
    (warm,) = medians(runs, warm_command)
    megabytes = guest.stat().st_size / MiB
    table.add(
        f"C5 start-up, cached {megabytes:.0f} MiB Python component",
        f"{warm:.3f} s",
        f"cold {cold:.2f} s",
        f"{cold / warm:.0f}x faster",
        verdict(warm < 0.5, "< 0.5 s"),
    )


def component_rows(table: Table, scratch: Path, size: int, runs: int, only: str = "") -> None:
    """The C rows (or the one named by `only`), on text inputs made for them: the fast paths
    on `size` bytes, list<u8> and the guest languages on less (they run at a few MB/s)."""
    slow = max(MiB, size // 8)
    text = make_text(scratch, "text.log", size)
    small = make_text(scratch, "small.log", slow)
    steps = {
        "c1": lambda: c1_text_component(table, text, size, runs),
        "c2": lambda: c2_bytes_component(table, small, slow, runs),
        "c3": lambda: c3_python_guest(table, text, size, runs, scratch),
        "c4": lambda: c4_javascript_guest(table, small, slow, runs, scratch),
        "c5": lambda: c5_python_start_up(table, runs, scratch),
    }
    for key, step in steps.items():
        if not only or key == only:
            step()
