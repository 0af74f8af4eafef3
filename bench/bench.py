"""`make bench`: throughput and memory of wasmstream against baselines measured in the same run.

Each figure is the median of several runs; runs of a figure and of its baseline alternate, so
a noisy neighbour hurts both alike. Prints one table; exits 0 whatever the numbers (a benchmark
reports, it does not gate).

    python bench/bench.py [--quick]   # --quick: smaller inputs, fewer runs
    python bench/bench.py --only b9|b10|b11 [--size MIB] [--runs N]   # one row (b11: and b12)
    python bench/bench.py --only c1 [--size MIB] [--runs N]   # c1-c5: bench/components.py
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PYTHON = sys.executable
WASMSTREAM = f"{shlex.quote(PYTHON)} -m wasmstream"
MiB = 1 << 20


def make_input(directory: Path, name: str, size: int) -> Path:
    path = directory / name
    with open(path, "wb") as out:
        block = os.urandom(MiB)
        for n in range(size // MiB):
            # vary blocks cheaply so nothing downstream can shortcut on repetition
            out.write(block[n % 251 :] + block[: n % 251])
    return path


class Unsupported(Exception):
    """A command failed: an option this wasmstream lacks (when measuring an older one)."""


def wall(command: str) -> float:
    start = time.perf_counter()
    if subprocess.run(["bash", "-c", command], stderr=subprocess.DEVNULL).returncode != 0:
        raise Unsupported(command)
    return time.perf_counter() - start


def peak_rss(command: list[str], stdin_path: Path) -> int:
    """Peak resident set size of `command` in bytes, from /proc/PID/status's VmHWM.

    (wait4's ru_maxrss would also count this script's memory from before the child's exec.)
    """
    peak = 0
    with open(stdin_path, "rb") as stdin:
        process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.DEVNULL)
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.01)
    if process.returncode != 0:
        raise Unsupported(" ".join(command))
    return peak


def medians(runs: int, *commands: str) -> list[float]:
    """Median wall time of each command, the commands interleaved run by run."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for n, command in enumerate(commands):
            times[n].append(wall(command))
    return [statistics.median(t) for t in times]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, name: str, measured: str, baseline: str, ratio: str, target: str) -> None:
        self.rows.append((name, measured, baseline, ratio, target))
        print(f"  {name}: {measured} vs {baseline} -> {ratio} ({target})", file=sys.stderr)

    def print(self) -> None:
        header = ("benchmark", "measured", "baseline", "ratio", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / MiB:.0f} MiB/s"


def verdict(ok: bool, target: str) -> str:
    return f"{target} {'met' if ok else 'MISSED'}"


def b1_pipe_throughput(table: Table, big: Path, size: int, runs: int) -> None:
    identity = FIXTURES / "identity.wasm"
    ws, cat = medians(
        runs,
        f"cat {big} | {WASMSTREAM} run {identity} -j 1 | cat > /dev/null",
        f"cat {big} | cat | cat > /dev/null",
    )
    ratio = cat / ws
    table.add(
        "B1 identity -j1, pipes",
        rate(size, ws),
        f"cat|cat {rate(size, cat)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.9, ">= 0.9x"),
    )


def f3_huge_pipe(table: Table, directory: Path, size: int, runs: int) -> None:
    """The pipe row at its full size; the input is made for it and removed after."""
    huge = make_input(directory, "huge.bin", size)
    try:
        identity = FIXTURES / "identity.wasm"
        ws, cat = medians(
            runs,
            f"cat {huge} | {WASMSTREAM} run {identity} -j 1 | cat > /dev/null",
            f"cat {huge} | cat | cat > /dev/null",
        )
    finally:
        huge.unlink()
    ratio = cat / ws
    table.add(
        f"F3 identity -j1, {size // MiB} MiB, pipes",
        rate(size, ws),
        f"cat|cat|cat {rate(size, cat)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.95, ">= 0.95x"),
    )


def jobs_row(
    table: Table, name: str, module: str, path: Path, size: int, runs: int, jobs: str, target: float
) -> None:
    """`module` over `path` with the `jobs` option (empty: the default) against `-j 1`."""
    command = f"{WASMSTREAM} run {FIXTURES / module} {{}} {path} -o /dev/null"
    tried, one = medians(runs, command.format(jobs), command.format("-j 1"))
    ratio = one / tried
    table.add(
        name,
        rate(size, tried),
        f"-j1 {rate(size, one)}",
        f"{ratio:.2f}x",
        verdict(ratio >= target, f">= {target}x"),
    )


def b2_parallel_speedup(table: Table, medium: Path, size: int, runs: int) -> None:
    jobs_row(table, "B2 heavy -j2 vs -j1", "heavy.wasm", medium, size, runs, "-j 2", 1.8)


def b3_flat_memory(table: Table, big: Path, small: Path) -> None:
    """Peak memory must not grow with the input, in every shape a run can take."""
    for mode in ("auto", "1", "2"):
        command = [PYTHON, "-m", "wasmstream", "run", str(FIXTURES / "identity.wasm"), "-j", mode]
        large_rss = statistics.median(peak_rss(command, big) for _ in range(3))
        small_rss = statistics.median(peak_rss(command, small) for _ in range(3))
        ratio = large_rss / small_rss
        ok = ratio <= 1.2 and large_rss < 150 * MiB
        table.add(
            f"B3 peak RSS {big.stat().st_size // MiB} MiB vs {small.stat().st_size // MiB} MiB, "
            f"-j {mode}",
            f"{large_rss / MiB:.1f} MiB",
            f"{small_rss / MiB:.1f} MiB",
            f"{ratio:.2f}x",
            verdict(ok, "<= 1.2x, < 150 MiB"),
        )


def b4_against_plain_loop(table: Table, big: Path, size: int, runs: int) -> None:
    upper = FIXTURES / "upper.wasm"
    plain = ROOT / "bench" / "plain_loop.py"
    ws, loop = medians(
        runs,
        f"cat {big} | {WASMSTREAM} run {upper} -j 1 | cat > /dev/null",
        f"cat {big} | {shlex.quote(PYTHON)} {plain} {upper} | cat > /dev/null",
    )
    ratio = loop / ws
    table.add(
        "B4 upper -j1 vs plain wasmtime-py loop",
        rate(size, ws),
        f"loop {rate(size, loop)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 1.0, ">= 1.0x"),
    )


def b5_checkpoint_cost(table: Table, big: Path, size: int, runs: int, scratch: Path) -> None:
    """Checkpointing at the default interval (fsync of output and checkpoint every 2 s)."""
    upper = FIXTURES / "upper.wasm"
    out = scratch / "out.bin"
    with_ckpt, without = medians(
        runs,
        f"rm -f {out}.ckpt.json; {WASMSTREAM} run {upper} -j 1 {big} -o {out}",  # a fresh job
        f"{WASMSTREAM} run {upper} -j 1 {big} -o {out} --no-checkpoint",
    )
    ratio = without / with_ckpt
    table.add(
        "B5 checkpoints (default 2s) vs none, -o FILE",
        rate(size, with_ckpt),
        f"none {rate(size, without)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.95, ">= 0.95x"),
    )


def b9_stateful_checkpoint_cost(
    table: Table, big: Path, size: int, runs: int, scratch: Path
) -> None:
    """A stateful run (--state memory) with 16 MiB of live state in linear memory, checkpointing
    at the default interval (a whole-instance snapshot with each save) vs no checkpoint."""
    module = FIXTURES / "bigstate.wasm"
    out = scratch / "state.out"
    with_ckpt, without = medians(
        runs,
        f"rm -f {out}.ckpt.json*; {WASMSTREAM} run {module} --state memory {big} -o {out}",
        f"{WASMSTREAM} run {module} --state memory {big} -o {out} --no-checkpoint",
    )
    ratio = without / with_ckpt
    table.add(
        "B9 stateful, 16 MiB state, checkpoints (2s) vs none",
        rate(size, with_ckpt),
        f"none {rate(size, without)}",
        f"{ratio:.2f}x",
        verdict(ratio >= 0.95, ">= 0.95x"),
    )


def b6_warm_start(table: Table, scratch: Path, runs: int) -> None:
    """A ~6 MB module on a tiny input: compiled once, then loaded from the cache."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bigmodule import big_module

    module = scratch / "big.wasm"
    module.write_bytes(big_module())
    tiny = scratch / "tiny.txt"
    tiny.write_bytes(b"hello\n")
    cache = scratch / "cache"
    env = f"WASMSTREAM_CACHE_DIR={cache}"
    cold_command = f"{env} {WASMSTREAM} run {module} --no-cache -j 1 {tiny} > /dev/null"
    warm_command = f"{env} {WASMSTREAM} run {module} -j 1 {tiny} > /dev/null"
    wall(warm_command)  # fills the cache
    warm, cold = medians(runs, warm_command, cold_command)
    size = module.stat().st_size / MiB
    table.add(
        f"B6 warm start, {size:.1f} MiB module, tiny input",
        f"{warm:.3f} s",
        f"cold {cold:.3f} s",
        f"{cold / warm:.1f}x faster",
        verdict(warm <= 0.2, "<= 0.2 s"),
    )


MINIMAL = """
import sys, wasmtime
e = wasmtime.Engine(); s = wasmtime.Store(e)
i = wasmtime.Instance(s, wasmtime.Module.from_file(e, sys.argv[1]), [])
x = i.exports(s); m = x["memory"]; p = x["alloc"](s, 65536)
d = sys.stdin.buffer.read(65536); m.write(s, d, p); n = x["process_chunk"](s, p, len(d))
sys.stdout.buffer.write(m.read(s, p, p + n))
"""


def b7_tiny_input(table: Table, scratch: Path, runs: int) -> None:
    """The whole start-up on a tiny input, against the least a Python user could write."""
    script = scratch / "minimal.py"
    script.write_text(MINIMAL)
    upper = FIXTURES / "upper.wasm"
    tiny = scratch / "tiny.txt"
    tiny.write_bytes(b"hello\n")
    ws, minimal = medians(
        runs,
        f"{WASMSTREAM} run {upper} < {tiny} > /dev/null",
        f"{shlex.quote(PYTHON)} {script} {upper} < {tiny} > /dev/null",
    )
    ratio = ws / minimal
    table.add(
        "B7 tiny input, small module, wall time",
        f"{ws:.3f} s",
        f"minimal script {minimal:.3f} s",
        f"{ratio:.2f}x",
        verdict(ratio <= 1.3, "<= 1.3x"),
    )


def wasmer_side_by_side(
    table: Table, path: Path, long_input: Path, heavy_input: Path, runs: int
) -> None:
    """Both engines on the same files (wasmer runs under Python 3.10, from .venv-wasmer).

    On the short input (16 MiB) start-up weighs most: a wasmer worker is a second Python
    process. On the long one (256 MiB) the per-frame path does: the target applies there."""
    wasmer_python = ROOT / ".venv-wasmer" / "bin" / "python"
    if not wasmer_python.exists():
        print("  (wasmer: no .venv-wasmer with Python 3.10; skipped)", file=sys.stderr)
        table.add("   wasmer engine", "skipped", "no Python 3.10 venv", "-", "info")
        return
    engines = {
        "wasmtime": WASMSTREAM,
        "wasmer": f"{shlex.quote(str(wasmer_python))} -m wasmstream",
    }
    for module, source, judged in (
        ("identity.wasm", path, False),
        ("upper.wasm", path, False),
        ("identity.wasm", long_input, True),
        ("upper.wasm", long_input, True),
        ("heavy.wasm", heavy_input, False),
    ):
        size = source.stat().st_size
        for jobs in ("1", "2"):
            commands = [
                f"{command} run {FIXTURES / module} --engine {name} -j {jobs} {source} -o /dev/null"
                for name, command in engines.items()
            ]
            wasmtime_time, wasmer_time = medians(runs, *commands)
            ratio = wasmtime_time / wasmer_time
            table.add(
                f"   {module} -j{jobs} {size // MiB} MiB: wasmer vs wasmtime",
                rate(size, wasmer_time),
                f"wasmtime {rate(size, wasmtime_time)}",
                f"{ratio:.2f}x",
                verdict(ratio >= 0.9, ">= 0.9x") if judged else "info",
            )
    heavy = FIXTURES / "heavy.wasm"
    one, two = medians(
        runs,
        f"{engines['wasmer']} run {heavy} --engine wasmer -j 1 {heavy_input} -o /dev/null",
        f"{engines['wasmer']} run {heavy} --engine wasmer -j 2 {heavy_input} -o /dev/null",
    )
    size = heavy_input.stat().st_size
    table.add(
        "B8 wasmer heavy -j2 vs -j1",
        rate(size, two),
        f"-j1 {rate(size, one)}",
        f"{one / two:.2f}x",
        verdict(one / two >= 1.6, ">= 1.6x"),
    )


def f1_default_jobs_cheap_guest(table: Table, path: Path, size: int, runs: int) -> None:
    """A cheap guest with the default --jobs (auto) against one instance: it must never lose."""
    name = f"F1 identity {size // MiB} MiB, default -j vs -j1"
    jobs_row(table, name, "identity.wasm", path, size, runs, "", 0.95)


def f2_default_jobs_heavy_guest(table: Table, path: Path, size: int, runs: int) -> None:
    """A heavy guest with the default --jobs (auto) against one instance."""
    target = 1.8 if (os.cpu_count() or 1) >= 2 else 0.95
    name = f"F2 heavy {size // MiB} MiB, default -j vs -j1"
    jobs_row(table, name, "heavy.wasm", path, size, runs, "", target)


def f4_host_cost_per_frame(table: Table, path: Path, size: int, runs: int) -> None:
    """The host's own cost of one frame: a no-op guest over the same input in 4 KiB and in
    64 KiB frames, -j 1; the difference in time over the difference in frames."""
    identity = FIXTURES / "identity.wasm"
    small, large = medians(
        runs,
        f"{WASMSTREAM} run {identity} -j 1 --frame-size 4K {path} -o /dev/null",
        f"{WASMSTREAM} run {identity} -j 1 --frame-size 64K {path} -o /dev/null",
    )
    frames = size // 4096 - size // 65536
    per_frame = (small - large) / frames * 1e6
    table.add(
        f"F4 host cost per frame, no-op guest, {size // MiB} MiB",
        f"{per_frame:.1f} µs",
        f"4K {small:.2f} s, 64K {large:.2f} s",
        f"{per_frame / 1.5:.1f}x a raw call",
        verdict(per_frame <= 5, "<= 5 µs"),
    )


def extra_throughput(table: Table, path: Path, size: int, runs: int) -> None:
    """For the record: each fixture at -j1 and -j2, file to /dev/null."""
    for module in ("identity.wasm", "upper.wasm", "hexdump.wasm"):
        one, two = medians(
            runs,
            f"{WASMSTREAM} run {FIXTURES / module} -j 1 {path} -o /dev/null",
            f"{WASMSTREAM} run {FIXTURES / module} -j 2 {path} -o /dev/null",
        )
        table.add(
            f"   {module} file->null -j2 vs -j1",
            rate(size, two),
            f"-j1 {rate(size, one)}",
            f"{one / two:.2f}x",
            "info",
        )


def _cluster_row(table: Table, directory: Path, size: int, runs: int) -> None:
    """B10 (bench/cluster.py), when Dask is installed."""
    if not _has_dask():
        table.add("B10 --cluster local:2 vs -j 2", "skipped: no Dask", "", "", ">= 0.8x")
        return
    from cluster import cluster_row

    cluster_row(table, directory, size, runs)


def _parts_rows(table: Table, directory: Path, size: int, runs: int) -> None:
    """B11 and B12 (bench/cluster.py), when Dask is installed."""
    if not _has_dask():
        table.add("B11/B12 --output-parts vs -o", "skipped: no Dask", "", "", "<= 0.5x")
        return
    from cluster import parts_rows

    parts_rows(table, directory, size, runs)


def _has_dask() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


ONE_ROWS = ("b9", "b10", "b11", "b12")


def only_one(argv: list[str]) -> int:
    """One row alone: b9, b10, b11 (with b12) on an input of --size MiB (default 256), or a C
    row (default 8)."""
    row = argv[argv.index("--only") + 1].lower()
    if row not in ONE_ROWS and row not in COMPONENT_ROWS:
        print(f"--only: one of {', '.join(ONE_ROWS + COMPONENT_ROWS)}", file=sys.stderr)
        return 2
    default = 256 if row in ONE_ROWS else 8
    size = int(argv[argv.index("--size") + 1] if "--size" in argv else default) * MiB
    runs = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else 3
    table = Table()
    with tempfile.TemporaryDirectory(prefix="wasmstream-bench-") as scratch:
        directory = Path(scratch)
        if row == "b9":
            data = make_input(directory, "data.bin", size)
            b9_stateful_checkpoint_cost(table, data, size, runs, directory)
        elif row == "b10":
            _cluster_row(table, directory, size, runs)
        elif row in ("b11", "b12"):
            _parts_rows(table, directory, size, runs)
        else:
            _component_rows(table, directory, size, runs, row)
    table.print()
    return 0


COMPONENT_ROWS = ("c1", "c2", "c3", "c4", "c5")


def _component_rows(table: Table, directory: Path, size: int, runs: int, only: str = "") -> None:
    """C1-C5 (bench/components.py): components and the guest languages."""
    from components import component_rows

    component_rows(table, directory, size, runs, only)


def main(argv: list[str]) -> int:
    # bench/cluster.py imports this file as `bench`: one module, so one `Unsupported` class
    sys.modules.setdefault("bench", sys.modules[__name__])
    # Measure wasmstream as an installed copy runs, its bytecode cached. Under a caller's
    # PYTHONDONTWRITEBYTECODE every start compiles the package's sources again: 26 ms of B7's
    # 0.105 s here, where the minimal script compiles only itself.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if "--only" in argv:
        return only_one(argv)
    quick = "--quick" in argv
    big_size, medium_size, small_size = (
        (64 * MiB, 8 * MiB, 16 * MiB) if quick else (512 * MiB, 32 * MiB, 16 * MiB)
    )
    cheap_size, heavy_size, huge_size = (
        (64 * MiB, 8 * MiB, 256 * MiB) if quick else (256 * MiB, 64 * MiB, 2048 * MiB)
    )
    runs = 3 if quick else 5
    table = Table()
    with tempfile.TemporaryDirectory(prefix="wasmstream-bench-") as scratch:
        directory = Path(scratch)
        print("making inputs…", file=sys.stderr)
        big = make_input(directory, "big.bin", big_size)
        small = make_input(directory, "small.bin", small_size)
        medium = make_input(directory, "medium.bin", medium_size)
        cheap = make_input(directory, "cheap.bin", cheap_size)
        heavy = make_input(directory, "heavy.bin", heavy_size)
        steps: list[Callable[[], None]] = [
            lambda: f1_default_jobs_cheap_guest(table, cheap, cheap_size, runs),
            lambda: f2_default_jobs_heavy_guest(table, heavy, heavy_size, runs),
            lambda: f3_huge_pipe(table, directory, huge_size, runs),
            lambda: f4_host_cost_per_frame(table, heavy, heavy_size, runs),
            lambda: b1_pipe_throughput(table, big, big_size, runs),
            lambda: b2_parallel_speedup(table, medium, medium_size, runs),
            lambda: b3_flat_memory(table, big, small),
            lambda: b4_against_plain_loop(table, big, big_size, runs),
            lambda: b5_checkpoint_cost(table, big, big_size, runs, directory),
            lambda: b6_warm_start(table, directory, runs),
            lambda: b9_stateful_checkpoint_cost(table, big, big_size, runs, directory),
            lambda: b7_tiny_input(table, directory, runs),
            lambda: wasmer_side_by_side(table, small, cheap, medium, runs),
            lambda: extra_throughput(table, small, small_size, runs),
            lambda: _cluster_row(table, directory, 32 * MiB if quick else 256 * MiB, runs),
            lambda: _parts_rows(table, directory, 32 * MiB if quick else 256 * MiB, runs),
            lambda: _component_rows(table, directory, 8 * MiB if quick else 64 * MiB, runs),
        ]
        for step in steps:
            try:
                step()
            except Unsupported as failed:
                table.add(f"(a step failed: {str(failed)[:60]}…)", "n/a", "n/a", "n/a", "n/a")
    print()
    print(f"wasmstream benchmarks (medians of {runs} runs; {os.cpu_count()} CPUs)")
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
