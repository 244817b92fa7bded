"""Benchmark: `podnet compile` of large topologies — wall time, peak RSS, output size,
and an incremental re-run with one node changed. Prints figures; asserts nothing.

usage: python bench/bench_compile.py [--nodes 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from gen_topology import generate  # noqa: E402


def run_compile(topology: Path, out: Path) -> tuple:
    """(wall seconds, peak RSS in MiB, stdout) of one `podnet compile` process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compiler", "compile", str(topology), "-o", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"compile failed: {r.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss of children is the max over all children so far: run each measurement first-largest
    return wall, max(after.ru_maxrss, before.ru_maxrss) / 1024, r.stdout.strip()


def tree_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="podnet-bench-"))
    try:
        print(f"# podnet compile, {a.nodes} nodes (pinned subnets), {a.repeat} runs each; {os.cpu_count()} CPUs")
        topo = work / "t.yaml"
        topo.write_text(generate(a.nodes, pinned=True))
        fresh, rss = [], 0.0
        for i in range(a.repeat):
            out = work / f"fresh{i}"
            wall, peak, _ = run_compile(topo, out)
            fresh.append(wall)
            rss = max(rss, peak)
        out = work / "fresh0"
        print(f"fresh compile:        median {statistics.median(fresh):.2f} s  (min {min(fresh):.2f}, max {max(fresh):.2f}); peak RSS {rss:.0f} MiB")
        size = tree_bytes(out)
        print(f"output:               {size / 1e6:.1f} MB in {sum(1 for _ in out.rglob('*') if _.is_file())} files ({size / a.nodes / 1024:.1f} KiB per node)")
        # linearity: half the nodes should give about half the bytes
        half = work / "half.yaml"
        half.write_text(generate(a.nodes // 2, pinned=True))
        run_compile(half, work / "half")
        print(f"bytes ratio {a.nodes}/{a.nodes // 2} nodes: {size / tree_bytes(work / 'half'):.3f} (2.000 = linear)")
        unchanged, incremental = [], []
        text = topo.read_text()
        for i in range(a.repeat):
            wall, _, _ = run_compile(topo, out)
            unchanged.append(wall)
            # change one node's address (alternating, so every run changes something)
            topo.write_text(text.replace("address: 172.16.0.20\n", f"address: 172.31.0.{20 + (i % 2)}\n"))
            wall, _, summary = run_compile(topo, out)
            incremental.append((wall, summary))
        print(f"re-run, no change:    median {statistics.median(unchanged):.2f} s")
        walls = [w for w, _ in incremental]
        print(f"re-run, 1 node moved: median {statistics.median(walls):.2f} s; {incremental[-1][1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
