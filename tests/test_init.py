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

from wasmstream.scaffold import LANGUAGES, find_toolchain

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
    from wasmstream.cli import init_command

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
    assert b"a stateful c transform" in result.stdout
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


@pytest.mark.parametrize("lang", ["zig", "rust", "assemblyscript"])
def test_stateful_template_is_refused_for_other_languages(lang: str, tmp_path: Path) -> None:
    result = wasmstream("init", str(tmp_path / "x"), "--lang", lang, "--stateful")
    assert result.returncode == 2  # usage error
    assert b"--stateful has a template for c only" in result.stderr
    assert not (tmp_path / "x").exists()
