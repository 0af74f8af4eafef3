"""`wasmstream init`: generated projects build with their own Makefile and run as generated.

Each language's project is generated and built once per session (builds take seconds); a
language whose toolchain is not here is skipped, saying what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from wasmstream.cli.scaffold import COMPONENT_LANGUAGES, LANGUAGES, find_toolchain
from wasmstream.errors import ExitStatus

from conftest import ROOT, assert_clean_failure, wasmstream

# The generated Makefiles run this Python's ziglang and this checkout's wasmstream.
MAKE_ENV = {
    "PYTHONPATH": str(ROOT),
    "PYTHON": sys.executable,
    "WASMSTREAM": f"{shlex.quote(sys.executable)} -m wasmstream",
}
SOURCES = {
    "c": "transform.c",
    "zig": "transform.zig",
    "rust": "src/lib.rs",
    "assemblyscript": "assembly/index.ts",
    "python": "app.py",
}
SDKS = {
    "c": "wasmstream.h",
    "zig": "wasmstream.zig",
    "rust": "src/wasmstream.rs",
    "assemblyscript": "assembly/wasmstream.ts",
    "python": "wit/transform.wit",  # the contract, in place of an SDK
}


def make(directory: Path, *targets: str, env: dict[str, str] | None = None) -> None:
    """Run make in a generated project, failing the test with make's own output."""
    done = subprocess.run(
        ["make", "-C", str(directory), *targets],
        capture_output=True,
        env={**os.environ, **MAKE_ENV, **(env or {})},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")


def init_project(parent: Path, lang: str, name: str = "upper") -> Path:
    directory = parent / name
    result = wasmstream("init", str(directory), "--lang", lang)
    assert result.returncode == 0, result.stderr.decode()
    return directory


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A generated project of a language, built once per session (or the test is skipped)."""
    projects: dict[str, Path] = {}

    def build(lang: str) -> Path:
        if lang not in projects:
            toolchain = find_toolchain(lang)
            if toolchain.found is None:
                pytest.skip(f"no {lang} toolchain here: needs {toolchain.install}")
            directory = init_project(tmp_path_factory.mktemp(lang), lang)
            make(directory)
            projects[lang] = directory
        return projects[lang]

    return build


@pytest.mark.parametrize("lang", LANGUAGES)
def test_generated_project_upper_cases(lang: str, built: Callable[[str], Path]) -> None:
    directory = built(lang)
    sample = (directory / "sample.txt").read_bytes()
    result = wasmstream("run", str(directory / "upper.wasm"), input=sample)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == sample.upper() == (directory / "expected.txt").read_bytes()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_generated_project_in_parallel_over_16mib(
    lang: str, built: Callable[[str], Path], random_bytes: Callable[[int, int], bytes]
) -> None:
    data = random_bytes(16 << 20, 15)
    result = wasmstream("run", str(built(lang) / "upper.wasm"), "-j", "2", input=data)
    assert result.returncode == 0, result.stderr.decode()
    # bytes.upper changes only ASCII a-z, as `tr a-z A-Z` does.
    assert result.stdout == data.upper()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_generated_make_test_passes(lang: str, built: Callable[[str], Path]) -> None:
    make(built(lang), "test")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_init_writes_source_sdk_makefile_readme_and_sample(lang: str, tmp_path: Path) -> None:
    directory = init_project(tmp_path, lang, name="my-filter")
    for relative in (SOURCES[lang], SDKS[lang], "Makefile", "README.md", ".gitignore"):
        assert (directory / relative).is_file(), relative
    assert (directory / "sample.txt").read_bytes().upper() == (
        directory / "expected.txt"
    ).read_bytes()
    makefile = (directory / "Makefile").read_text()
    assert "NAME ?= my-filter" in makefile and "@NAME@" not in makefile


def test_generated_make_test_takes_run_options(tmp_path: Path) -> None:
    """RUNFLAGS reaches the run: a filter by --config, checked against its own expected.txt."""
    if find_toolchain("c").found is None:
        pytest.skip("no C toolchain here")
    directory = init_project(tmp_path, "c", name="filter")
    shutil.copyfile(EXAMPLES / "c" / "filter_lines.c", directory / "transform.c")
    sample = b"INFO start\nERROR disk full\nINFO retry\nERROR disk still full\n"
    (directory / "sample.txt").write_bytes(sample)
    (directory / "expected.txt").write_bytes(b"ERROR disk full\nERROR disk still full\n")
    make(directory, "test", "RUNFLAGS=--framing lines --frame-size 32 --config ERROR")
    assert (
        directory / "test-output.txt"
    ).read_bytes() == b"ERROR disk full\nERROR disk still full\n"


def test_name_defaults_to_the_directory_and_can_be_given(tmp_path: Path) -> None:
    result = wasmstream("init", str(tmp_path / "a"), "--lang", "c", "--name", "redact_ids")
    assert result.returncode == 0, result.stderr.decode()
    assert "NAME ?= redact_ids" in (tmp_path / "a" / "Makefile").read_text()
    assert "cd " in result.stdout.decode() and "make test" in result.stdout.decode()


def test_missing_toolchain_stops_make_with_one_line(tmp_path: Path) -> None:
    directory = init_project(tmp_path, "c")
    make_program = shutil.which("make")
    assert make_program is not None
    done = subprocess.run(
        [make_program, "-C", str(directory)],
        capture_output=True,
        # Nothing on PATH (make runs recipes with /bin/sh), and a "python" without ziglang.
        env={**os.environ, "PATH": str(tmp_path / "empty"), "PYTHON": "/bin/false"},
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.decode().splitlines() if "***" in line]
    assert len(errors) == 1 and "pip install ziglang" in errors[0], done.stderr.decode()


def test_list_shows_each_language_and_its_toolchain() -> None:
    result = wasmstream("init", "--list")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == list(LANGUAGES)
    assert all(" found: " in line or " missing: " in line for line in lines)


def test_the_cli_offers_every_language() -> None:
    from wasmstream.cli.commands import init_command

    lang = next(param for param in init_command.params if param.name == "lang")
    assert isinstance(lang.type, click.Choice)
    assert tuple(lang.type.choices) == LANGUAGES


def test_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    result = wasmstream("init", str(tmp_path), "--lang", "c")
    assert_clean_failure(result, 2, str(tmp_path), "not empty", "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_force_writes_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    result = wasmstream("init", str(tmp_path), "--lang", "zig", "--force")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "transform.zig").is_file()


def test_unknown_language_is_refused(tmp_path: Path) -> None:
    result = wasmstream("init", str(tmp_path / "p"), "--lang", "cobol")
    assert_clean_failure(result, 2, "cobol", "--lang")
    assert not (tmp_path / "p").exists()


def test_unwritable_directory_is_an_io_error(tmp_path: Path) -> None:
    # Under a regular file: no directory can be made there, even by root (as tests may run).
    (tmp_path / "file").write_text("")
    result = wasmstream("init", str(tmp_path / "file" / "p"), "--lang", "c")
    assert_clean_failure(result, 8, "cannot write", str(tmp_path / "file" / "p"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lang", "c"], "DIR"),
        (["DIR"], "--lang"),
        (["DIR", "--lang", "c", "--name", "../x"], "project name"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], needle: str, tmp_path: Path) -> None:
    result = wasmstream("init", *args, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert_clean_failure(result, 2, needle)


# ---- The guide's worked examples (docs/examples), each built in a generated project and run ----

GUIDE = ROOT / "docs" / "writing-transforms.md"
EXAMPLES = ROOT / "docs" / "examples"
# Each example's options, and what it should make of EVENTS (a Python reference).
EXAMPLE_RUNS: dict[str, tuple[list[str], Callable[[bytes], bytes]]] = {
    "filter_lines": (
        ["--config", "ERROR"],
        lambda data: b"".join(line for line in data.splitlines(True) if b"ERROR" in line),
    ),
    "redact": (["--config", "s3cr3t"], lambda data: data.replace(b"s3cr3t", b"******")),
    "json_field": (["--config", "user"], lambda data: json_field(data, "user")),
}


def json_field(data: bytes, field: str) -> bytes:
    values = [json.loads(line).get(field) for line in data.splitlines()]
    return b"".join(
        (value if isinstance(value, str) else json.dumps(value)).encode() + b"\n"
        for value in values
        if value is not None
    )


def events(count: int) -> bytes:
    """JSON lines, some without a user, some with the secret; the last has no newline."""
    lines = []
    for n in range(count):
        record: dict[str, object] = {"ts": 1700000000 + n, "level": ("INFO", "ERROR")[n % 3 == 0]}
        if n % 5:
            record["user"] = f"user{n % 7}" if n % 2 else n
        record["msg"] = f"token s3cr3t{n} expired" if n % 4 == 0 else "user logged in"
        lines.append(json.dumps(record))
    return "\n".join(lines).encode()


def example_files() -> list[Path]:
    return sorted(path for path in EXAMPLES.rglob("*") if path.is_file())


@pytest.mark.parametrize(
    "source", example_files(), ids=lambda path: path.stem + "-" + path.parent.name
)
def test_guide_example_builds_and_runs(source: Path, tmp_path: Path) -> None:
    lang = source.parent.name
    toolchain = find_toolchain(lang)
    if toolchain.found is None:
        pytest.skip(f"no {lang} toolchain here: needs {toolchain.install}")
    directory = init_project(tmp_path, lang, name=source.stem)
    shutil.copyfile(source, directory / SOURCES[lang])
    make(directory)
    options, reference = EXAMPLE_RUNS[source.stem]
    data = events(3000)
    result = wasmstream(
        "run", str(directory / f"{source.stem}.wasm"), "--framing", "lines", "--frame-size",
        "4KiB", "-j", "2", "--init", "init", *options, input=data,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == reference(data)
    # Without --config each example fails its frames through the SDK, saying why on stderr.
    result = wasmstream("run", str(directory / f"{source.stem}.wasm"), "--init", "init", input=data)
    assert result.returncode == 4
    assert result.stderr.decode().startswith("transform: no "), result.stderr.decode()


def test_guide_shows_every_example_as_it_is() -> None:
    """Each example appears in the guide under `<!-- file: examples/... -->`, byte for byte."""
    shown = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", GUIDE.read_text(), re.S))
    assert sorted(shown) == [str(path.relative_to(GUIDE.parent)) for path in example_files()]
    for relative, text in shown.items():
        assert (GUIDE.parent / relative).read_text() == text, relative


def test_stateful_c_project_numbers_lines_across_frames_and_resumes(tmp_path: Path) -> None:
    """`init --stateful`: make test passes; its state carries across frames and a resume."""
    if find_toolchain("c").found is None:
        pytest.skip("no C toolchain here")
    directory = tmp_path / "numbered"
    result = wasmstream("init", str(directory), "--lang", "c", "--stateful")
    assert result.returncode == 0, result.stderr.decode()
    assert b"a stateful C transform" in result.stdout
    make(directory, "test")
    data = b"".join(b"line %d\n" % n for n in range(1, 301))
    expected = b"".join(b"%d: line %d\n" % (n, n) for n in range(1, 301)) + b"300 lines\n"
    out = tmp_path / "out.txt"
    args = ["run", str(directory / "numbered.wasm"), "-", "-o", str(out), "--frame-size", "7"]
    # Stopped (SIGINT) half-way, with a checkpoint after every frame; resumed on the whole input.
    process = subprocess.Popen(
        [sys.executable, "-m", "wasmstream", *args, "--checkpoint-every", "1"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(data[:1500])
    process.stdin.flush()
    checkpoint = tmp_path / "out.txt.ckpt.json"
    for _ in range(500):
        if checkpoint.exists() and json.loads(checkpoint.read_bytes())["position"]["frames"] > 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert json.loads(checkpoint.read_bytes())["state"]["kind"] == "exports"
    resumed = wasmstream(*args, "--resume", input=data)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert out.read_bytes() == expected


# A transform in each language that fails, with a reason, every frame without a digit.
FAILING = {
    "c": """#include "wasmstream.h"
int ws_transform(ws_bytes input, ws_output *out) {
    for (size_t i = 0; i < input.len; i++) {
        if (input.data[i] >= '0' && input.data[i] <= '9') {
            ws_write(out, input.data, input.len);
            return WS_OK;
        }
    }
    return ws_fail("no digit in this frame");
}
""",
    "zig": """const ws = @import("wasmstream.zig");
comptime {
    _ = ws.exports;
}
pub fn transform(input: []const u8, out: *ws.Output) !void {
    for (input) |c| {
        if (c >= '0' and c <= '9') {
            try out.reserve(input.len);
            @memcpy(out.buf[out.len .. out.len + input.len], input);
            out.len += input.len;
            return;
        }
    }
    return ws.fail("no digit in this frame");
}
""",
    "rust": """mod wasmstream;
pub fn transform(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if input.iter().any(u8::is_ascii_digit) {
        out.extend_from_slice(input);
        Ok(())
    } else {
        Err("no digit in this frame".to_string())
    }
}
""",
    "assemblyscript": """import { Bytes, Output, fail } from "./wasmstream";
export { alloc, init, process_chunk, error_message } from "./wasmstream";
export function transform(input: Bytes, out: Output): i32 {
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if (c >= 0x30 && c <= 0x39) {
      out.write(input, 0, input.length);
      return 0;
    }
  }
  return fail("no digit in this frame");
}
""",
}


# A component's own reason (its `err`) reaching the error and the dead letter is
# test_component's (the Python guest's included): its SDK is the WIT contract, not `fail`.
@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang not in COMPONENT_LANGUAGES])
def test_the_reason_a_transform_gives_reaches_the_error_and_dead_letter(
    lang: str, tmp_path: Path
) -> None:
    toolchain = find_toolchain(lang)
    if toolchain.found is None:
        pytest.skip(f"no {lang} toolchain here: needs {toolchain.install}")
    directory = init_project(tmp_path, lang, name="digits")
    (directory / SOURCES[lang]).write_text(FAILING[lang])
    make(directory)
    module, letters = str(directory / "digits.wasm"), tmp_path / "dead.jsonl"
    lines = b"a1\n" + b"bb\n" + b"c3\n"
    reason = "guest failed: no digit in this frame (error code -1)"
    skipped = wasmstream(
        "run", module, "--framing", "lines", "--frame-size", "3", "--on-error", "skip",
        "--dead-letter", str(letters), input=lines,
    )  # fmt: skip
    assert skipped.returncode == ExitStatus.FRAMES_FAILED, skipped.stderr.decode()
    assert skipped.stdout == b"a1\nc3\n"
    (letter,) = [json.loads(line) for line in letters.read_text().splitlines()]
    assert (letter["frame"], letter["message"]) == (1, reason)
    assert "transform: no digit in this frame" in skipped.stderr.decode()  # its stderr, shown
    failed = wasmstream("run", module, "--framing", "lines", "--frame-size", "3", input=lines)
    assert failed.returncode == ExitStatus.GUEST_ERROR
    assert failed.stderr.decode().splitlines() == [
        "transform: no digit in this frame",  # the guest's own stderr, then wasmstream's line
        f"wasmstream: error: frame 1 at offset 3: {reason}",
    ]


def test_stateful_without_lang_is_c(tmp_path: Path) -> None:
    result = wasmstream("init", str(tmp_path / "counted"), "--stateful")
    assert result.returncode == 0, result.stderr.decode()
    assert b"created " in result.stdout and b": a stateful C transform" in result.stdout
    assert (tmp_path / "counted" / "transform.c").is_file()
    assert "snapshot" in (tmp_path / "counted" / "transform.c").read_text()


def test_what_init_prints_reads_right_and_its_next_line_runs(tmp_path: Path) -> None:
    # no node or npm on PATH: init says what to install
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(ROOT)}
    result = wasmstream("init", "a b", "--lang", "assemblyscript", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines == [
        "created a b: an AssemblyScript transform that builds a-b.wasm",
        "to build it: Node.js with npm (nodejs.org, or apt install nodejs npm)",
        "next: cd 'a b' && make test",
    ]
    command = lines[-1].removeprefix("next: ").replace("make test", "pwd")
    done = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, check=True)
    assert done.stdout.decode().strip() == str(tmp_path / "a b")


def test_a_dangling_symlink_as_dir_is_refused_naming_its_target(tmp_path: Path) -> None:
    link, target = tmp_path / "link", tmp_path / "not-mounted" / "project"
    link.symlink_to(target)
    result = wasmstream("init", str(link), "--lang", "c")
    assert_clean_failure(result, ExitStatus.USAGE, str(link), str(target), "does not exist")
    assert not (tmp_path / "not-mounted").exists() and link.is_symlink()
    # a link to a directory is followed
    target.mkdir(parents=True)
    followed = wasmstream("init", str(link), "--lang", "c")
    assert followed.returncode == 0, followed.stderr.decode()
    assert (target / "transform.c").is_file()


@pytest.mark.parametrize("lang", ["zig", "rust", "assemblyscript"])
def test_stateful_template_is_refused_for_other_languages(lang: str, tmp_path: Path) -> None:
    result = wasmstream("init", str(tmp_path / "x"), "--lang", lang, "--stateful")
    assert result.returncode == 2  # usage error
    assert b"--stateful has a template for c only" in result.stderr
    assert not (tmp_path / "x").exists()
