"""Shared helpers: fixture paths, the real CLI as a subprocess, and Python references."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from wasmstream.stream.framing import Framing

# A test runner started in the background by a shell (`make test` runs the wasmer half so, and
# nohup does the same) ignores SIGINT, and an ignored signal stays ignored across exec: every
# wasmstream the tests start would be deaf to the Ctrl-C they send it. A handler is reset to the
# default in a child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
ENGINE = os.environ.get("WASMSTREAM_ENGINE", "wasmtime")  # `make test-wasmer` sets wasmer
FIXTURES = ROOT / "fixtures"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def wasmstream(
    *args: str,
    input: bytes = b"",
    timeout: float = 60,
    env: dict[str, str] | None = None,
    **kwargs: object,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI in a child process; stdout and stderr are captured as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "wasmstream", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """The real CLI in a child process, for tests that talk to it while it runs."""
    return subprocess.Popen([sys.executable, "-m", "wasmstream", *args], **kwargs)


def recorded_parts(checkpoint: Path) -> list[dict[str, Any]]:
    """The parts a run in parts' checkpoint records now ([] while there is none to read)."""
    try:
        return list(json.loads(checkpoint.read_text())["position"]["parts"])
    except (OSError, ValueError, KeyError):
        return []


def kill_once_recorded(client: subprocess.Popen[bytes], checkpoint: Path, parts: int) -> None:
    """SIGKILL the run once its checkpoint records `parts` parts (a run killed mid-way)."""
    deadline = time.monotonic() + 30
    while len(recorded_parts(checkpoint)) < parts:
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.02)
    client.send_signal(signal.SIGKILL)
    client.wait()


def per_frame(transform: Callable[[bytes], bytes], data: bytes, frame_size: int) -> bytes:
    """What a frame-by-frame transform makes of `data`."""
    return b"".join(transform(data[i : i + frame_size]) for i in range(0, len(data), frame_size))


def _heavy_table() -> bytes:
    table = bytearray()
    for byte in range(256):
        x = byte
        for _ in range(64):
            x = ((x * 33 + 91) ^ (x >> 3)) & 255
        table.append(x)
    return bytes(table)


HEAVY_TABLE = _heavy_table()

# The Python equivalents of the fixtures, frame by frame.
REFERENCES: dict[str, Callable[[bytes], bytes]] = {
    "identity.wasm": lambda frame: frame,
    "upper.wasm": bytes.upper,
    "hexdump.wasm": lambda frame: frame.hex().encode(),
    "heavy.wasm": lambda frame: frame.translate(HEAVY_TABLE),
    "varying.wasm": lambda frame: bytes((b + 1) & 255 for b in frame),
    "c/redact.wasm": lambda frame: frame.translate(bytes.maketrans(b"0123456789", b"#" * 10)),
}


def assert_clean_failure(
    result: subprocess.CompletedProcess[bytes], status: int, *needles: str
) -> str:
    """The run failed with `status` and one line on stderr containing every needle."""
    stderr = result.stderr.decode()
    assert result.returncode == status, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("wasmstream: error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr
    return lines[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lacks = pytest.mark.skip(reason=f"needs a wasmtime feature the {ENGINE} engine lacks")
    other = pytest.mark.skip(reason="checks the wasmer engine: run under WASMSTREAM_ENGINE=wasmer")
    for item in items:
        if ENGINE != "wasmtime" and "wasmtime_only" in item.keywords:
            item.add_marker(lacks)
        if ENGINE != "wasmer" and "wasmer_only" in item.keywords:
            item.add_marker(other)


@pytest.fixture(autouse=True, scope="session")
def private_module_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled modules go to a cache of the test session's own, not the user's."""
    os.environ["WASMSTREAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def random_bytes() -> Callable[[int, int], bytes]:
    def make(size: int, seed: int = 0) -> bytes:
        import random

        return random.Random(seed).randbytes(size)

    return make


def chunks(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """`data` cut into pieces of the given sizes, cycling through them."""
    pieces, start, n = [], 0, 0
    while start < len(data):
        size = sizes[n % len(sizes)]
        pieces.append(data[start : start + size])
        start += size
        n += 1
    return pieces


class PeakRSS:
    """Peak resident memory of a child process, from /proc/PID/status's VmHWM.

    Not from wait4's ru_maxrss: that also counts the memory of the forked parent (pytest, which
    may be large) before the child exec'd. VmHWM belongs to the exec'd program alone; it only
    grows, so the last value read before the process exits is its peak.
    """

    def __init__(self, pid: int) -> None:
        import threading

        self.peak = 0
        self._pid = pid
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import time

        while True:
            try:
                with open(f"/proc/{self._pid}/status") as status:
                    hwm = [line for line in status if line.startswith("VmHWM:")]
            except (FileNotFoundError, ProcessLookupError):
                return
            if not hwm:  # a zombie: the process has exited
                return
            self.peak = max(self.peak, int(hwm[0].split()[1]) * 1024)
            time.sleep(0.02)

    def result(self) -> int:
        self._thread.join(timeout=5)
        return self.peak


def records(framing: Framing, sizes: list[int]) -> bytes:
    """An input of records of the given sizes, in the framing's format."""
    out = bytearray()
    for n, size in enumerate(sizes):
        body = bytes((97 + (n + i) % 26) for i in range(size))
        if framing is Framing.LENGTH_PREFIXED:
            out += size.to_bytes(4, "big") + body
        elif framing is Framing.DELIMITER:
            out += body + b"\x1e"
        else:
            out += body + b"\n"
    return bytes(out)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only): a disk that fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], timeout=30, check=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1, for the session: the environment that reaches it (set it
    for wasmstream and its workers; in this process too, for s3fs)."""
    pytest.importorskip("s3fs")
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto's server is not installed (pip install 'moto[server]')")
    port = free_port()
    server = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.skip("moto's S3 server did not start")
            time.sleep(0.05)
        yield {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
            "FSSPEC_S3_ENDPOINT_URL": endpoint,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
