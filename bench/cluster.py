"""The cluster rows of `make bench`: a heavy module through `--cluster local:2` against `-j 2`
(B10), what one part costs beyond its work (for the throughput of larger clusters, on paper),
and on a real scheduler with two workers, the client's own CPU time (B11) and the throughput
(B12) with `--output-parts` against `-o` through the client.

    python bench/cluster.py [SIZE_MIB] [RUNS]   # these rows alone (default 256 MiB, 3 runs)
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    FIXTURES,
    PYTHON,
    WASMSTREAM,
    MiB,
    Table,
    Unsupported,
    make_input,
    medians,
    rate,
    verdict,
)


def cluster_row(table: Table, directory: Path, size: int, runs: int) -> None:
    """B10: the cost of the cluster path on one machine (heavy guest, 2 workers vs -j 2)."""
    path = make_input(directory, "cluster.bin", size)
    heavy = FIXTURES / "heavy.wasm"
    part = max(MiB, size // 16)  # 16 parts: enough to keep both workers busy to the end
    jobs, cluster = medians(
        runs,
        f"{WASMSTREAM} run {heavy} -j 2 {path} -o /dev/null",
        f"{WASMSTREAM} run {heavy} --cluster local:2 --part-size {part} {path} -o /dev/null",
    )
    ratio = jobs / cluster
    table.add(
        f"B10 heavy --cluster local:2 vs -j 2, {size // MiB} MiB",
        rate(size, cluster),
        f"-j 2 {rate(size, jobs)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.8, ">= 0.8x"),
    )


def part_overhead(directory: Path, size: int, runs: int) -> tuple[float, float]:
    """(seconds each part costs beyond its bytes, MiB/s through the client): the identity
    module on a local cluster of 2, over one input in 256 KiB parts and in 64 MiB parts, and
    over half of it in 64 MiB parts (the difference is the client's rate past start-up)."""
    whole = make_input(directory, "parts.bin", size)
    half = make_input(directory, "half.bin", size // 2)
    identity = FIXTURES / "identity.wasm"
    small, large = 256 * 1024, 64 * MiB

    def command(path: Path, part: int) -> str:
        return (
            f"{WASMSTREAM} run {identity} --cluster local:2 {path} -o /dev/null --part-size {part}"
        )

    many, few, few_half = medians(
        runs, command(whole, small), command(whole, large), command(half, large)
    )
    extra_parts = size // small - -(-size // large)
    return (many - few) / extra_parts, (size - size // 2) / MiB / max(few - few_half, 1e-3)


SCHEDULER = ("--no-dashboard", "--scheduler-file")
WORKER = ("--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1")


@contextmanager
def scheduler(directory: Path, workers: int) -> Iterator[Path]:
    """A Dask scheduler and `workers` workers (one thread each) as processes on 127.0.0.1, as
    on a real cluster: the client's CPU time is then its own. Yields the scheduler file."""
    dask = str(Path(PYTHON).parent / "dask")
    file = directory / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", *SCHEDULER, str(file)],
            **quiet,  # type: ignore[arg-type]
        )
    ]
    try:
        for _ in range(workers):
            processes.append(
                subprocess.Popen(
                    [dask, "worker", "--scheduler-file", str(file), *WORKER],
                    **quiet,  # type: ignore[arg-type]
                )
            )
        wait = (
            "from distributed import Client; "
            f"c = Client(scheduler_file={str(file)!r}, timeout='30s'); "
            f"c.wait_for_workers({workers}, timeout=60); c.close()"
        )
        subprocess.run([PYTHON, "-c", wait], check=True, timeout=120, **quiet)  # type: ignore[arg-type]
        yield file
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def client_run(command: str, fresh: Path | None = None) -> tuple[float, float]:
    """(wall seconds, the client's own CPU seconds) of one run; `fresh`: removed first."""
    if fresh is not None:
        shutil.rmtree(fresh, ignore_errors=True)
    start = time.perf_counter()
    process = subprocess.Popen(shlex.split(command), stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise Unsupported(command)
    return elapsed, usage.ru_utime + usage.ru_stime


def parts_rows(table: Table, directory: Path, size: int, runs: int) -> None:
    """B11 and B12: the identity module (its output is as large as its input: moving it is
    the client's whole cost) over 16 parts on a scheduler with two workers, written through
    the client (`-o`) and as a folder of parts the workers write (`--output-parts`)."""
    path = make_input(directory, "parts-input.bin", size)
    identity = FIXTURES / "identity.wasm"
    folder, out = directory / "parts-out", directory / "client-out"
    with scheduler(directory, 2) as file:
        common = (
            f"{WASMSTREAM} run {identity} {path} --cluster-file {file} --part-size {size // 16}"
        )
        through, parts = [], []
        for _ in range(runs):  # interleaved, as `medians` does
            through.append(client_run(f"{common} -o {out}"))
            parts.append(client_run(f"{common} --output-parts {folder}", fresh=folder))
    wall_o, cpu_o = (statistics.median(x) for x in zip(*through, strict=True))
    wall_p, cpu_p = (statistics.median(x) for x in zip(*parts, strict=True))
    cpu_ratio = cpu_p / cpu_o
    table.add(
        f"B11 client CPU, --output-parts vs -o through the client, {size // MiB} MiB, 2 workers",
        f"{cpu_p:.2f} s",
        f"-o {cpu_o:.2f} s",
        f"{cpu_ratio:.2f}x",
        verdict(cpu_ratio <= 0.5, "<= 0.5x"),
    )
    table.add(
        f"B12 throughput, --output-parts vs -o through the client, {size // MiB} MiB, 2 workers",
        rate(size, wall_p),
        f"-o {rate(size, wall_o)}",
        f"{wall_o / wall_p:.2f}x",
        "info",
    )


def main(argv: list[str]) -> int:
    size = int(argv[0]) * MiB if argv else 256 * MiB
    runs = int(argv[1]) if len(argv) > 1 else 3
    table = Table()
    with tempfile.TemporaryDirectory(prefix="wasmstream-bench-") as scratch:
        cluster_row(table, Path(scratch), size, runs)
        parts_rows(table, Path(scratch), size, runs)
        overhead, client = part_overhead(Path(scratch), size, runs)
    table.print()
    print(f"per-part overhead {overhead * 1000:.1f} ms")
    print(f"identity through the client, past start-up: {client:.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
