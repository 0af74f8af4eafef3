"""`make demo`: the main job on a bundled example.

Generates a web-server log (deterministic, ~20 MB), then streams it through the C example
fixtures/c/redact.wasm — every digit becomes '#' — with a pool of instances, and shows the
before and after. Everything runs through the real `wasmstream` command in a shell pipeline.
"""

from __future__ import annotations

import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASMSTREAM = Path(sys.executable).with_name("wasmstream")
PATHS = ["/", "/login", "/api/orders", "/api/users/me", "/static/app.js", "/checkout"]


def make_log(path: Path, lines: int) -> None:
    rng = random.Random(2026)
    with open(path, "w") as log:
        for n in range(lines):
            ip = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
            log.write(
                f"{ip} - user{rng.randrange(10_000)} "
                f"[26/Nov/2026:06:{n // 60 % 60:02d}:{n % 60:02d}] "
                f'"GET {rng.choice(PATHS)}?card={rng.randrange(10**15, 10**16)} HTTP/1.1" '
                f"{rng.choice([200, 200, 200, 302, 404, 500])} {rng.randrange(100, 50_000)}\n"
            )


def shell(command: str) -> str:
    print(f"$ {command}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    if result.stderr:
        print(result.stderr, end="", file=sys.stderr)
    if result.returncode != 0:
        raise SystemExit(f"demo failed: exit {result.returncode}")
    print(result.stdout, end="")
    return result.stdout


def main() -> None:
    module = ROOT / "fixtures" / "c" / "redact.wasm"
    ws = shlex.quote(str(WASMSTREAM))
    with tempfile.TemporaryDirectory(prefix="wasmstream-demo-") as scratch:
        log, redacted = Path(scratch) / "access.log", Path(scratch) / "redacted.log"
        make_log(log, 200_000)
        print(
            f"A {log.stat().st_size / 2**20:.1f} MiB access log, "
            "with client IPs and card numbers:\n"
        )
        shell(f"head -n 3 {log}")
        print("\nStreamed through a WebAssembly transform written in C (fixtures/c/redact.c):\n")
        start = time.perf_counter()
        shell(f"cat {log} | {ws} run {module} | head -n 3")
        shell(f"{ws} run {module} {log} -o {redacted}")
        elapsed = time.perf_counter() - start
        shell(f"cmp <(tr 0-9 '#' < {log}) {redacted} && echo 'identical to: tr 0-9 \"#\"'")
        print(f"\nDone in {elapsed:.2f} s. See {ws} run --help for the options.")
        print(f"Write your own transform: {ws} init mine --lang c && make -C mine test")


if __name__ == "__main__":
    main()
