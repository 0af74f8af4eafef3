"""WebAssembly components (issue 20): run through the same machinery as core modules, under the
wasmstream:transform contract (guest/component_abi.py), every path and every refusal through the
real CLI.

The fixtures are in fixtures/components/ (WAT implementing the canonical ABI, made components by
wasm-tools): textupper (string -> result<string, string>), bytesrev (list<u8> -> result<list<u8>,
string>, with init) and linecount (stateful: list<u8> -> list<u8>, snapshot, restore, finish).
In textupper and bytesrev a frame holding '!' returns an err, '#' traps, '~' spins forever.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from wasmstream import Transform
from wasmstream.errors import ExitStatus, ModuleError

from conftest import ROOT, assert_clean_failure, fixture, per_frame, spawn, wasmstream
from guests import (
    JS_TOOLS,
    ToolchainMissing,
    componentize_js,
    js_guest,
    python_guest,
    unavailable,
)
from test_state import lines, numbered, wait_for_progress

pytestmark = pytest.mark.wasmtime_only  # the wasmer engine refuses components (tested apart)

TEXT = fixture("components/textupper.wasm")
BYTES = fixture("components/bytesrev.wasm")
STATEFUL = fixture("components/linecount.wasm")
ENV = {"PYTHONPATH": str(ROOT)}  # cluster workers started as processes import this package


def ascii_upper(data: bytes) -> bytes:
    return bytes(b - 32 if 97 <= b <= 122 else b for b in data)


def reversed_after(prefix: bytes) -> object:
    return lambda frame: prefix + frame[::-1]


def with_total(data: bytes) -> bytes:
    return numbered(data) + b"lines: %d\n" % len(data.splitlines())


# --- running --------------------------------------------------------------------------------


def test_a_text_component_transforms_text() -> None:
    data = b"hello, world\nsecond line\n" * 100
    done = wasmstream("run", TEXT, "--frame-size", "64", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ascii_upper(data)


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("frame_size", [4, 5, 6, 7, 9, 16])
def test_fixed_frames_keep_characters_whole_for_a_text_component(
    frame_size: int, jobs: str
) -> None:
    # 2-, 3- and 4-byte characters everywhere: a fixed frame ends inside one at every size.
    data = "héllo wörld €uro 𝄞 clef\n".encode() * 20
    done = wasmstream("run", TEXT, "--frame-size", str(frame_size), "-j", jobs, input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ascii_upper(data)


def test_invalid_utf8_fails_its_frame_naming_the_offset() -> None:
    data = b"abcdefgh" + b"abc\xffefgh" + b"abcdefgh"
    failed = wasmstream("run", TEXT, "--frame-size", "8", input=data)
    assert_clean_failure(
        failed, ExitStatus.GUEST_ERROR, "frame 1 at offset 8", "invalid UTF-8 at byte 3"
    )
    assert failed.stdout == b"ABCDEFGH"  # the frame before it, written
    skipped = wasmstream("run", TEXT, "--frame-size", "8", "--on-error", "skip", input=data)
    assert skipped.returncode == ExitStatus.FRAMES_FAILED, skipped.stderr
    assert skipped.stdout == b"ABCDEFGHABCDEFGH"


def test_a_bytes_component_gets_its_config_and_runs_in_parallel(tmp_path: Path) -> None:
    data = bytes(n % 251 for n in range(200_000) if n % 251 not in (33, 35, 126))
    (tmp_path / "in").write_bytes(data)
    args = ["run", BYTES, "in", "--frame-size", "4K", "--config", "P:"]
    for jobs in ("1", "2"):
        done = wasmstream(*args, "-j", jobs, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == per_frame(reversed_after(b"P:"), data, 4096)  # type: ignore[arg-type]


def test_init_refusing_the_config_stops_the_run_before_any_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    failed = wasmstream("run", BYTES, "-o", str(out), "--config", "x" * 300, input=b"data")
    assert_clean_failure(failed, ExitStatus.GUEST_ERROR, "init", "config longer than 256 bytes")


def test_a_stateful_component_numbers_lines_across_frames_then_finishes() -> None:
    data = lines(20_000, seed=3)
    done = wasmstream("run", STATEFUL, "--frame-size", "777", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == with_total(data)


def test_errs_and_traps_skip_to_dead_letters_and_the_instance_is_replaced(
    tmp_path: Path,
) -> None:
    data = b"ab\ncd#\nef!\ngh\nij#\nkl\n"
    dead = tmp_path / "dead.jsonl"
    args = ["run", TEXT, "--framing", "lines", "--frame-size", "4", "-j", "2"]
    done = wasmstream(*args, "--on-error", "skip", "--dead-letter", str(dead), input=data)
    assert done.returncode == ExitStatus.FRAMES_FAILED, done.stderr
    # every frame after a trap ran on a fresh instance (a trapped one cannot be entered again)
    assert done.stdout == b"AB\nGH\nKL\n"
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [(letter["frame"], letter["kind"]) for letter in letters] == [
        (1, "trap"),
        (2, "guest-error"),
        (4, "trap"),
    ]
    assert letters[1]["message"] == "frame holds '!'"
    assert "unreachable" in letters[0]["message"]


@pytest.mark.parametrize(
    ("limit", "status", "needle"),
    [
        (["--timeout", "0.3"], ExitStatus.TIMEOUT, "timed out after 300ms"),
        (["--fuel", "200000"], ExitStatus.OUT_OF_FUEL, "ran out of fuel (200000)"),
    ],
)
@pytest.mark.parametrize("module", [TEXT, BYTES], ids=["text", "bytes"])
def test_fuel_and_timeout_stop_a_component(
    module: str, limit: list[str], status: int, needle: str
) -> None:
    failed = wasmstream("run", module, *limit, input=b"spin ~ forever")
    assert_clean_failure(failed, status, "frame 0 at offset 0", needle)


def test_max_output_bounds_a_components_output() -> None:
    failed = wasmstream("run", BYTES, "--config", "x" * 200, "--max-output", "100", input=b"ab")
    assert_clean_failure(failed, ExitStatus.GUEST_ERROR, "202 bytes exceeds the --max-output")


def test_sigint_stops_a_component_stuck_in_a_loop_and_keeps_the_checkpoint(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").write_bytes(b"aaa\nb~b\nccc\n")  # the second frame spins forever
    args = ["run", TEXT, "in", "--framing", "lines", "--frame-size", "4", "-o", "out"]
    process = spawn([*args, "--checkpoint-every", "1"], cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for_progress(tmp_path / "out.ckpt.json", 4, process)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitStatus.INTERRUPTED, stderr
    assert b"Traceback" not in stderr
    assert (tmp_path / "out").read_bytes() == b"AAA\n"
    saved = json.loads((tmp_path / "out.ckpt.json").read_bytes())
    assert saved["status"] == "interrupted" and saved["position"]["input_bytes"] == 4


def test_max_memory_bounds_a_components_memory(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"a" * 1_000_000)
    args = ["run", BYTES, "in", "--frame-size", "1M"]
    fits = wasmstream(*args, "--max-memory", "4M", cwd=tmp_path)
    assert fits.returncode == 0 and fits.stdout == b"a" * 1_000_000, fits.stderr
    # the input list (1 MB) fits in 1.5 MB, the output list does not: the guest's grow fails
    failed = wasmstream(*args, "--max-memory", "1500K", cwd=tmp_path)
    assert_clean_failure(failed, ExitStatus.GUEST_ERROR, "frame 0 at offset 0", "unreachable")


def test_sigkill_then_resume_keeps_a_stateful_components_state(tmp_path: Path) -> None:
    assert_resumes_through_kills(STATEFUL, tmp_path, seed=20)


def assert_resumes_through_kills(module: str, tmp_path: Path, seed: int) -> None:
    """`module` numbers lines and ends with their count: SIGKILLed at random moments, then
    resumed to the end, its output is every line numbered once and the count once."""
    data = lines(300_000, seed=seed)
    source, out = tmp_path / "in.txt", tmp_path / "out"
    source.write_bytes(data)
    args = ["run", module, str(source), "-o", str(out), "--frame-size", "1000"]
    args += ["--checkpoint-every", "3", "--resume", "-q"]
    rng = random.Random(seed)
    kills = states = 0
    for _ in range(4):
        process = spawn(args, stderr=subprocess.PIPE)
        wait_for_progress(tmp_path / "out.ckpt.json", rng.randrange(len(data)), process)
        time.sleep(rng.uniform(0, 0.02))
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
        assert b"Traceback" not in stderr
        kills += process.returncode == -signal.SIGKILL
        saved = json.loads((tmp_path / "out.ckpt.json").read_bytes())
        states += saved["position"]["input_bytes"] > 0 and saved["state"] is not None
    assert kills >= 2, f"only {kills} of 4 runs were killed before they finished"
    assert states >= 1, "the resumed runs had no saved state to restore"
    finished = wasmstream(*args)
    assert finished.returncode == 0, finished.stderr
    assert out.read_bytes() == with_total(data)  # every line numbered once, finish once


def test_shards_of_a_bytes_component_join_to_one_run(tmp_path: Path) -> None:
    data = bytes(n % 200 + 40 for n in range(50_000)).replace(b"~", b"-")
    (tmp_path / "in").write_bytes(data)
    args = ["run", BYTES, "in", "--frame-size", "1K"]
    for k in (1, 2):
        done = wasmstream(*args, "--shard", f"{k}/2", "-o", f"out{k}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    joined = b"".join((tmp_path / f"out{k}").read_bytes() for k in (1, 2))
    assert joined == per_frame(reversed_after(b""), data, 1024)  # type: ignore[arg-type]


@pytest.mark.cluster
@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs Dask")
def test_a_text_component_on_a_local_cluster_equals_one_run(tmp_path: Path) -> None:
    data = b"".join("line %d é€\n".encode() % n for n in range(6000))
    (tmp_path / "in").write_bytes(data)
    args = ["run", TEXT, "in", "--framing", "lines", "--frame-size", "4K", "-o", "out"]
    done = wasmstream(*args, "--cluster", "local:2", "--part-size", "16K", cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == ascii_upper(data)


def test_the_library_transform_runs_a_component() -> None:
    with Transform(BYTES, framing="lines", frame_size=64, config=b">") as transform:
        outputs = list(transform.stream([b"ab\ncd", b"\nef\n"]))
    assert outputs == [b">" + b"ab\ncd\nef\n"[::-1]]  # one frame: all the records fit
    with Transform(TEXT, frame_size=5) as transform:  # fixed frames, whole characters
        assert b"".join(transform.stream(["aé€b".encode()])) == "Aé€B".encode()


def test_the_compiled_component_is_cached(tmp_path: Path) -> None:
    env = {"WASMSTREAM_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(2):
        done = wasmstream("run", TEXT, input=b"abc", env=env)
        assert done.returncode == 0 and done.stdout == b"ABC", done.stderr
    entries = [path.name for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert any("component" in name for name in entries), entries


def test_wasi_p2_grants_only_env_given_and_guest_stdout_goes_to_stderr() -> None:
    wasi = fixture("components/wasiecho.wasm")  # writes each frame to its stdout; returns env
    bare = wasmstream("run", wasi, input=b"to stderr\n", env={"LEAKED": "no"})
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == b""  # no environment granted: the host's does not leak in
    assert bare.stderr == b"to stderr\n"
    granted = wasmstream("run", wasi, "--env", "GREETING=hi", "--env", "B=2", input=b"x")
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout == b"GREETING=hi\nB=2\n"
    shown = wasmstream("inspect", wasi).stdout.decode()
    assert "wasi:cli/stdout@0.2.0 (instance)" in shown and "ready to run" in shown


COMMAND = fixture("components/p2command.wasm")  # echoes its arguments, then its stdin


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_p2_command_component_runs_once_per_frame_with_its_arguments(jobs: str) -> None:
    data = b"".join(b"line %d\n" % n for n in range(50))
    args = ["--framing", "lines", "--frame-size", "64", "-j", jobs, "--arg", "-n", "--arg", "a b"]
    done = wasmstream("run", COMMAND, *args, input=data)
    assert done.returncode == 0, done.stderr
    frames = _lines_frames(data, 64)
    assert done.stdout == b"".join(b"p2command.wasm\n-n\na b\n" + frame for frame in frames)


def _lines_frames(data: bytes, size: int) -> list[bytes]:
    """Frames of whole lines, as --framing lines cuts them (no line here exceeds `size`)."""
    frames, current = [], b""
    for line in data.splitlines(keepends=True):
        if len(current) + len(line) > size:
            frames.append(current)
            current = b""
        current += line
    return [*frames, current] if current else frames


def test_a_failed_p2_command_fails_its_frame_under_the_policy(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    args = ["run", COMMAND, "--framing", "lines", "--frame-size", "5", "--on-error", "skip"]
    done = wasmstream(*args, "--dead-letter", str(dead), input=b"ok\nbad!\nfine\n")
    assert done.returncode == ExitStatus.FRAMES_FAILED, done.stderr
    assert done.stdout == b"p2command.wasm\nok\np2command.wasm\nfine\n"
    letter = json.loads(dead.read_text())
    assert (letter["frame"], letter["kind"]) == (1, "exit")
    shown = wasmstream("inspect", COMMAND)
    assert shown.returncode == 0 and b"WASI p2 command: wasi:cli/run@0.2.0 once per frame" in (
        shown.stdout
    )


PYTHON_GUEST = """
import re

import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def process(self, frame: str) -> str:
        if "!" in frame:
            raise Err("no exclamations, please")
        return re.sub(r"\\d", "#", frame).upper()
"""


def test_a_python_guest_built_by_componentize_py_runs() -> None:
    """A real toolchain's component (18 MB, 25 WASI p2 imports, many core instances), built
    against the shipped WIT's `text` world: its output, and its err reaching a dead letter."""
    assert_guest_runs(python_guest(PYTHON_GUEST, "text"))


def assert_guest_runs(guest: Path) -> None:
    """PYTHON_GUEST's behaviour (JS_GUEST's too), through the CLI: output, err, dead letter."""
    args = ["run", str(guest), "--framing", "lines", "--frame-size", "10", "--on-error", "skip"]
    data = b"a1 b22\nno!\nc3 d4 e5\n"  # frames: a line each (no two fit in 10 bytes)
    with tempfile.TemporaryDirectory() as scratch:
        dead = Path(scratch) / "dead"
        done = wasmstream(*args, "--dead-letter", str(dead), input=data)
        assert done.returncode == ExitStatus.FRAMES_FAILED, done.stderr
        assert done.stdout == b"A# B##\nC# D# E#\n"
        letter = json.loads(dead.read_text())
    assert (letter["frame"], letter["message"]) == (1, "no exclamations, please")


# The same transform in JavaScript: a thrown value becomes the result's err.
JS_GUEST = """
export function process(frame) {
  if (frame.includes("!")) throw "no exclamations, please";
  return frame.replace(/\\d/g, "#").toUpperCase();
}
"""

# A stateful JavaScript guest: numbers lines across frames (what linecount.wat does), keeps
# its line count and whether a line has begun in snapshots, and ends with the count.
JS_NUMBERER = """
let started = 0;
let atStart = true;

export function init(config) {}

export function process(frame) {
  const parts = frame.split("\\n");
  let out = "";
  for (let i = 0; i < parts.length; i++) {
    const last = i === parts.length - 1;
    if (last && parts[i] === "") break;
    if (atStart) out += `${++started}: `;
    out += parts[i];
    if (!last) out += "\\n";
    atStart = !last;
  }
  return out;
}

export function finish() {
  return `lines: ${started}\\n`;
}

export function snapshot() {
  return new TextEncoder().encode(`${started} ${atStart ? 1 : 0}`);
}

export function restore(state) {
  const [count, flag] = new TextDecoder().decode(state).split(" ");
  if (flag === undefined) throw "not a snapshot of this guest";
  started = Number(count);
  atStart = flag === "1";
}
"""


def test_a_javascript_guest_built_by_componentize_js_runs() -> None:
    """componentize-js's component (12 MB, SpiderMonkey inside), built against the shipped
    WIT's `text` world with wasi:http left out: its output, and a thrown err's dead letter."""
    assert_guest_runs(js_guest(JS_GUEST, "text"))


def test_an_unreachable_npm_registry_skips_the_guests_or_fails_them_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the JavaScript toolchain (here: npm offline, with an empty cache) a guest test
    is skipped saying why, and under CI, which must run it, fails."""
    if shutil.which("npm") is None:
        pytest.skip("no npm here to make unreachable")
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(JS_TOOLS / name, tmp_path / name)
    monkeypatch.setenv("npm_config_offline", "true")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "empty-cache"))
    with pytest.raises(ToolchainMissing, match=r"npm ci in .* failed") as missing:
        componentize_js(tmp_path)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="registry unreachable"):
        unavailable(str(missing.value))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BaseException) as under_ci:  # a skip here would pass unseen in CI
        unavailable(str(missing.value))
    assert under_ci.type is pytest.fail.Exception, under_ci.value
    assert "CI must build this guest" in str(under_ci.value)


def test_sigkill_then_resume_keeps_a_stateful_javascript_guests_state(tmp_path: Path) -> None:
    """A JavaScript guest's snapshot and restore, through SIGKILLs and --resume: every line is
    numbered once and its finish comes once, as if it had never stopped."""
    guest = str(js_guest(JS_NUMBERER, "stateful-text"))
    warm = wasmstream("run", guest, "--frame-size", "3", input=b"ab\ncd")  # compiles, cached
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == b"1: ab\n2: cdlines: 2\n"
    assert_resumes_through_kills(guest, tmp_path, seed=21)


# --- inspect --------------------------------------------------------------------------------


def test_inspect_shows_wit_types_and_what_wasmstream_will_do() -> None:
    shown = wasmstream("inspect", STATEFUL)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "a component" in text
    assert "restore: func(state: list<u8>) -> result<_, string>" in text
    assert "stateful: its own snapshot and restore exports" in text
    assert "finish (called once after the last frame)" in text
    report = json.loads(wasmstream("inspect", TEXT, "--json").stdout)
    assert report["kind"] == "component"
    assert report["exports"][0]["type"] == "func(frame: string) -> result<string, string>"
    assert "whole UTF-8 characters" in report["abi"]["transform"]


def test_inspect_says_why_a_component_cannot_run() -> None:
    shown = wasmstream("inspect", fixture("components/badsig.wasm"))
    assert shown.returncode == ExitStatus.INVALID_MODULE
    assert b"cannot run: export process (transform) has type func(count: u32) -> u32" in (
        shown.stdout
    )


# --- refusals, before any data is read ------------------------------------------------------


def test_a_process_of_another_type_is_refused_naming_found_and_accepted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    failed = wasmstream("run", fixture("components/badsig.wasm"), "-o", str(out), input=b"x")
    assert_clean_failure(
        failed,
        ExitStatus.INVALID_MODULE,
        "has type func(count: u32) -> u32",
        "expected func(frame: list<u8>) -> list<u8> or",
        "func(frame: string) -> result<string, string>",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("unknownimport", "imports fixtures:unknownimport/sink (instance), which wasmstream"),
        ("unheardwasi", "cannot link: component imports instance `wasi:unheard/thing@0.1.0`"),
    ],
)
def test_imports_wasmstream_cannot_satisfy_are_refused(
    name: str, needle: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    module = fixture(f"components/{name}.wasm")
    failed = wasmstream("run", module, "-o", str(out), input=b"x")
    assert_clean_failure(failed, ExitStatus.INVALID_MODULE, needle)
    assert not out.exists()


def test_wasi_command_on_a_component_without_run_is_refused() -> None:
    failed = wasmstream("run", TEXT, "--wasi-command", input=b"x")
    assert_clean_failure(failed, ExitStatus.INVALID_MODULE, "exports no wasi:cli/run@0.2.x")


@pytest.mark.parametrize(
    ("module", "options", "needle"),
    [
        (STATEFUL, ["-j", "2"], "keeps state across frames"),
        (STATEFUL, ["--on-error", "skip"], "--on-error skip is refused"),
        (TEXT, ["--state", "memory"], "cannot be captured whole"),
        (TEXT, ["--alloc", "malloc"], "--alloc: "),
        (COMMAND, ["--finish", "done"], "runs as a WASI command"),
        (TEXT, ["in", "--shard", "1/2"], "text component"),
    ],
)
def test_options_that_cannot_apply_to_a_component_are_refused(
    module: str, options: list[str], needle: str, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n")
    failed = wasmstream("run", module, *options, "-o", "out", input=b"abc\n", cwd=tmp_path)
    assert_clean_failure(failed, ExitStatus.USAGE, needle)
    assert not (tmp_path / "out").exists()


def test_config_for_a_component_without_init_is_refused_as_for_a_core_module() -> None:
    """--config goes to the `init` export, a component's as a core module's: one that has none
    is refused as any module missing an export is."""
    failed = wasmstream("run", TEXT, "--config", "x", input=b"abc")
    assert_clean_failure(failed, ExitStatus.INVALID_MODULE, "missing export init")
    with pytest.raises(ModuleError, match="missing export init"):
        Transform(TEXT, config=b"x")


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_the_wasmer_engine_refuses_a_component_in_one_line(command: str) -> None:
    failed = wasmstream(command, "--engine", "wasmer", TEXT, input=b"x")
    assert_clean_failure(
        failed, ExitStatus.USAGE, "running a WebAssembly component is not supported by the wasmer"
    )
