"""The cluster row of `make bench`: a heavy module through `--cluster local:2` against `-j 2`,
and what one part costs beyond its work (for the throughput of larger clusters, on paper).

    python bench/cluster.py [SIZE_MIB] [RUNS]   # this row alone (default 256 MiB, 3 runs)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import FIXTURES, WASMSTREAM, MiB, Table, make_input, medians, rate, verdict


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


def main(argv: list[str]) -> int:
    size = int(argv[0]) * MiB if argv else 256 * MiB
    runs = int(argv[1]) if len(argv) > 1 else 3
    table = Table()
    with tempfile.TemporaryDirectory(prefix="wasmstream-bench-") as scratch:
        cluster_row(table, Path(scratch), size, runs)
        overhead, client = part_overhead(Path(scratch), size, runs)
    table.print()
    print(f"per-part overhead {overhead * 1000:.1f} ms")
    print(f"identity through the client, past start-up: {client:.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
