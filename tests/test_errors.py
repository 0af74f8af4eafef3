"""Every failure: one line on stderr, a documented exit status, and valid output before it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from wasmstream.errors import ExitStatus

from conftest import assert_clean_failure, fixture, spawn, wasmstream

INVALID, GUEST, IO, USAGE = (
    ExitStatus.INVALID_MODULE,
    ExitStatus.GUEST_ERROR,
    ExitStatus.IO_ERROR,
    ExitStatus.USAGE,
)


def test_module_missing(tmp_path: Path) -> None:
    result = wasmstream("run", str(tmp_path / "nope.wasm"), input=b"x")
    assert_clean_failure(result, INVALID, "cannot read module", "nope.wasm", "No such file")


def test_not_a_wasm_binary(tmp_path: Path) -> None:
    (tmp_path / "text.wasm").write_text("hello, I am text\n")
    result = wasmstream("run", str(tmp_path / "text.wasm"), input=b"x")
    assert_clean_failure(result, INVALID, "text.wasm: not a WebAssembly binary")


def test_invalid_wasm_reports_the_runtime_message(tmp_path: Path) -> None:
    (tmp_path / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0\x01\xff\xff")
    result = wasmstream("run", str(tmp_path / "bad.wasm"), input=b"x")
    line = assert_clean_failure(result, INVALID, "bad.wasm: invalid WebAssembly: ")
    assert len(line) > len("wasmstream: error: bad.wasm: invalid WebAssembly: ") + 5


def test_missing_exports_are_listed() -> None:
    result = wasmstream("run", fixture("noexports.wasm"), input=b"x")
    assert_clean_failure(
        result, INVALID, "missing export memory", "exports: mem (memory), hello (func () -> i32)"
    )


def test_missing_transform_named_by_user() -> None:
    result = wasmstream("run", fixture("upper.wasm"), "--function", "nope", input=b"x")
    assert_clean_failure(result, INVALID, "missing export nope (transform)", "process_chunk (func")


@pytest.mark.parametrize(
    ("option", "name", "found"),
    [
        ("--function", "float_result", "(i32, i32) -> f32"),
        ("--alloc", "alloc_wrong_signature", "(i64) -> i32"),
    ],
)
def test_unusable_signature(option: str, name: str, found: str) -> None:
    args = ["--function", "negative"] if option == "--alloc" else []
    result = wasmstream("run", fixture("broken.wasm"), option, name, *args, input=b"x")
    assert_clean_failure(result, INVALID, f"export {name}", f"has signature {found}; expected")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_trap_names_frame_offset_and_trap_and_keeps_earlier_output(jobs: str) -> None:
    frames = [b"a" * 1000, b"b" * 1000, b"c" * 500 + b"!" + b"c" * 499, b"d" * 1000]
    result = wasmstream(
        "run", fixture("trap.wasm"), "--frame-size", "1000", "-j", jobs, input=b"".join(frames)
    )
    assert_clean_failure(
        result, GUEST, "frame 2 at offset 2000: guest trapped: unreachable instruction executed"
    )
    assert result.stdout == frames[0] + frames[1]


def test_divide_by_zero_trap() -> None:
    result = wasmstream("run", fixture("broken.wasm"), "--function", "divide_by_zero", input=b"x")
    assert_clean_failure(
        result, GUEST, "frame 0 at offset 0: guest trapped: integer divide by zero"
    )


def test_negative_result_is_a_guest_error() -> None:
    result = wasmstream("run", fixture("broken.wasm"), "--function", "negative", input=b"xyz")
    assert_clean_failure(result, GUEST, "frame 0 at offset 0: guest returned error code -7")


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("too_long", "guest returned length 4097, beyond its 4096-byte buffer"),
        (
            "past_end",
            "output range 0x100000..0x100010 (16 bytes) is outside guest memory (131072 bytes)",
        ),
        ("near_4gib", "output range 0x0..0xfffffff0 (4294967280 bytes) is outside guest memory"),
    ],
)
def test_output_outside_guest_memory(function: str, message: str) -> None:
    result = wasmstream(
        "run",
        fixture("broken.wasm"),
        "--function",
        function,
        "--frame-size",
        "4096",
        input=b"x" * 5000,
    )
    assert_clean_failure(result, GUEST, f"frame 0 at offset 0: {message}")
    assert result.stdout == b""


def test_allocator_returning_pointer_outside_memory() -> None:
    result = wasmstream(
        "run",
        fixture("broken.wasm"),
        "--function",
        "negative",
        "--alloc",
        "alloc_out_of_range",
        input=b"x",
    )
    assert_clean_failure(
        result, GUEST, "input buffer from alloc_out_of_range(65536)", "outside guest memory"
    )


def test_init_reporting_an_error() -> None:
    result = wasmstream("run", fixture("xor.wasm"), "--init", "init", "--config", "", input=b"x")
    assert_clean_failure(result, GUEST, "init function init returned error code -1")


def test_input_missing_fails_before_any_output(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    out = tmp_path / "out"
    out.write_bytes(b"keep")
    result = wasmstream(
        "run",
        fixture("identity.wasm"),
        str(tmp_path / "a"),
        str(tmp_path / "missing"),
        "-o",
        str(out),
    )
    assert_clean_failure(result, IO, "cannot read input", "missing: No such file or directory")
    assert out.read_bytes() == b"keep"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def no_aws_credentials(**more: str) -> dict[str, str]:
    """What boto sees besides no AWS_* variable of the machine's (the test removes them all):
    no credentials, and nothing to ask but 127.0.0.1. (A credential variable set even to ""
    counts as set: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="" sends boto to 169.254.170.2.)"""
    return {
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata lookup (169.254.169.254)
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{unused_port()}",
        "AWS_MAX_ATTEMPTS": "1",
        **more,
    }


@pytest.mark.parametrize(
    ("url", "env", "reason"),
    [
        pytest.param("zip://in.txt::{tmp}/notzip.zip", {}, "File is not a zip file", id="zip"),
        pytest.param(
            "s3://bucket/in.txt", no_aws_credentials(), "Unable to locate credentials", id="s3"
        ),
        pytest.param(
            "s3://bucket/in.txt",
            no_aws_credentials(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y"),
            "Could not connect to the endpoint URL",
            id="s3-refused",
        ),
    ],
)
def test_an_object_store_that_fails_is_an_input_error(
    url: str, env: dict[str, str], reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24, item 12: fsspec's backends raise their own exceptions (botocore's
    NoCredentialsError, zipfile's BadZipFile), which were internal errors."""
    pytest.importorskip("s3fs", reason="the s3:// cases need s3fs (pip install s3fs)")
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)  # no profile or key of the machine's: only `env`'s
    (tmp_path / "notzip.zip").write_bytes(b"this is not a zip archive\n")
    url = url.format(tmp=tmp_path)
    out = tmp_path / "out"
    result = wasmstream("run", fixture("upper.wasm"), url, "-o", str(out), env=env)
    assert_clean_failure(result, IO, f"cannot read input {url}: {reason}")
    assert not out.exists()


def test_a_url_fsspec_cannot_parse_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("fsspec", reason="URL inputs need fsspec")
    result = wasmstream("run", fixture("upper.wasm"), "nosuchprotocol://x/y")
    assert_clean_failure(result, USAGE, "input nosuchprotocol://x/y: Protocol not known")


def test_input_is_a_directory(tmp_path: Path) -> None:
    result = wasmstream("run", fixture("identity.wasm"), str(tmp_path))
    assert_clean_failure(result, IO, "Is a directory")


def test_output_not_writable(tmp_path: Path) -> None:
    result = wasmstream(
        "run", fixture("identity.wasm"), "-o", str(tmp_path / "no" / "dir"), input=b"x"
    )
    assert_clean_failure(result, IO, "cannot write output", "No such file or directory")


def test_invalid_module_does_not_touch_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    result = wasmstream("run", fixture("noexports.wasm"), "-o", str(out), input=b"x")
    assert result.returncode == INVALID
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--frame-size", "12Q"], "not a size"),
        (["--frame-size", "0"], "at least 1 byte"),
        (["-j", "0"], "--jobs"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_usage_errors(args: list[str], needle: str) -> None:
    result = wasmstream("run", fixture("identity.wasm"), *args, input=b"")
    assert_clean_failure(result, USAGE, needle)


def test_unknown_import_is_refused(tmp_path: Path) -> None:
    import wasmtime

    module = tmp_path / "env.wasm"
    module.write_bytes(
        wasmtime.wat2wasm('(module (import "env" "abort" (func)) (memory (export "memory") 1))')
    )
    result = wasmstream("run", str(module), input=b"x")
    assert_clean_failure(result, INVALID, "imports env.abort (func)", "only wasi_snapshot_preview1")


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGINT, ExitStatus.INTERRUPTED), (signal.SIGTERM, ExitStatus.TERMINATED)],
)
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_signals_stop_cleanly(sig: signal.Signals, status: int, jobs: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = spawn(
        [
            "run",
            fixture("upper.wasm"),
            "-j",
            jobs,
            "-o",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    data = b"abc" * 100_000  # four full 64 KiB frames and part of a fifth; stdin stays open
    process.stdin.write(data)
    process.stdin.flush()
    deadline = time.monotonic() + 30
    while not out.exists() or out.stat().st_size < 4 * 65536:  # the full frames are done
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == status, stderr
    assert b"Traceback" not in stderr and b"panicked" not in stderr, stderr
    written = out.read_bytes()
    assert len(written) >= 4 * 65536
    assert written == data.upper()[: len(written)]


def test_wasmer_engine_unavailable_says_why() -> None:
    import importlib.util

    if importlib.util.find_spec("wasmer") is not None:
        pytest.skip("wasmer is importable here")
    result = wasmstream("run", fixture("upper.wasm"), "--engine", "wasmer", input=b"x")
    assert_clean_failure(
        result, USAGE, "the wasmer engine is not available on Python", "wasmstream[wasmer]"
    )
