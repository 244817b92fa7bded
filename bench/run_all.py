"""`make bench`: runs every benchmark in bench/ and prints their figures.

Benchmarks print numbers and never decide anything: no thresholds, no exit code
from a figure. Those needing root skip with a note when not root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES = [
    ("bench_compile.py", [], False),
    ("bench_routes.py", [], True),
    ("bench_plugin.py", [], True),
]


def main() -> int:
    print(f"# podnet benchmarks on {os.cpu_count()} CPUs, {os.uname().release}")
    for script, args, needs_root in BENCHES:
        path = HERE / script
        if not path.exists():
            continue
        print(f"\n## {script}", flush=True)
        if needs_root and os.geteuid() != 0:
            print("skipped: needs root (network namespaces)")
            continue
        done = subprocess.run([sys.executable, str(path), *args])
        if done.returncode != 0:
            print(f"{script} failed with exit code {done.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
