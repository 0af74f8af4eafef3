"""The "ordered turns" parallel design, measured against the pool wasmstream has (#12).

`python bench/turns.py [--size MiB] [--runs N]` prints, for a few guests, the wall time of:

- `wasmstream run -j 1` and `-j 2` (the pool: a reader thread, workers, a writer thread, and a
  copy of each output out of guest memory);
- this prototype with 1 and 2 threads: each thread owns an instance and takes two turns per
  frame, in input order: a read turn (it reads the next frame straight into its own guest
  memory) and a write turn (it writes its output straight from guest memory). No reader or
  writer thread, no copies. Turns are passed with a lock (reads) and a condition (writes).

The prototype has none of the run's other duties (checkpoints, failures, overload), so it is a
lower bound on what the design would cost: if it does not beat the pool here, it would not in
the product either.
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from wasmstream.engines import load_module
from wasmstream.guest.abi import AbiOptions

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FRAME = 64 * 1024
MiB = 1 << 20


def ordered_turns(module: str, path: str, threads: int) -> None:
    """Transform `path` to /dev/null with `threads` instances taking turns."""
    loaded = load_module(module, AbiOptions())
    instances = [loaded.compiled.instantiate(loaded.abi, FRAME, b"") for _ in range(threads)]
    source = os.open(path, os.O_RDONLY)
    sink = os.open(os.devnull, os.O_WRONLY)
    read_turn = threading.Lock()
    write_turn = threading.Condition()
    state = {"read": 0, "written": 0}

    def work(instance: object) -> None:
        while True:
            with read_turn:
                buffer = instance.input_buffer()  # type: ignore[attr-defined]
                length = os.readv(source, [buffer])
                if not length:
                    return
                mine = state["read"]
                state["read"] += 1

            def write(output: memoryview, mine: int = mine) -> int:
                with write_turn:
                    while state["written"] != mine:
                        write_turn.wait()
                written = os.write(sink, output)
                with write_turn:
                    state["written"] += 1
                    write_turn.notify_all()
                return written

            instance.transform_buffer(length, write)  # type: ignore[attr-defined]

    workers = [threading.Thread(target=work, args=(i,)) for i in instances]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for instance in instances:
        instance.close()
    loaded.engine.close()


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--turns":  # a child: one prototype run
        ordered_turns(argv[1], argv[2], int(argv[3]))
        return 0
    size = int(argv[argv.index("--size") + 1]) * MiB if "--size" in argv else 256 * MiB
    runs = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else 5
    data = Path("/tmp/wasmstream-turns.bin")
    with open("/dev/urandom", "rb") as random, open(data, "wb") as out:
        for _ in range(size // MiB):
            out.write(random.read(MiB))
    wasmstream = [sys.executable, "-m", "wasmstream", "run"]
    print(f"{size // MiB} MiB, 64 KiB frames, medians of {runs} (seconds)")
    print(f"{'guest':<14}{'pool -j1':>10}{'pool -j2':>10}{'turns 1':>10}{'turns 2':>10}")
    for guest in ("identity.wasm", "upper.wasm", "hexdump.wasm", "heavy.wasm"):
        module = str(FIXTURES / guest)
        source = str(data) if guest != "heavy.wasm" else str(_head(data, size // 8))
        commands = [
            [*wasmstream, module, "-j", "1", source, "-o", os.devnull],
            [*wasmstream, module, "-j", "2", source, "-o", os.devnull],
            [sys.executable, __file__, "--turns", module, source, "1"],
            [sys.executable, __file__, "--turns", module, source, "2"],
        ]
        times: list[list[float]] = [[] for _ in commands]
        for _ in range(runs):
            for n, command in enumerate(commands):
                times[n].append(wall(command))
        cells = "".join(f"{statistics.median(t):>10.3f}" for t in times)
        print(f"{guest:<14}{cells}", flush=True)
    print("(heavy on an eighth of the input; commands:", shlex.join(commands[3][:2]), "…)")
    return 0


def _head(data: Path, size: int) -> Path:
    part = data.with_suffix(".head")
    with open(data, "rb") as whole, open(part, "wb") as out:
        out.write(whole.read(size))
    return part


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
