"""Benchmark: `podnet compile` of large topologies — wall time, peak RSS, output size,
and an incremental re-run with one node changed. Prints figures; asserts nothing.

usage: python bench/bench_compile.py [--nodes 5000] [--repeat 3] [--repo CHECKOUT]

Besides wall time it prints CPU time (user + system, of the compile process and
its worker), which depends less on what else the machine is doing. --repo runs
another checkout's podnet (e.g. main, for a before/after with this script).
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


CPU = []  # (user + system) seconds of every run, by run_compile


def run_compile(topology: Path, out: Path) -> tuple:
    """(wall seconds, peak RSS in MiB, stdout) of one `podnet compile` process;
    appends its CPU seconds to CPU."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compiler", "compile", str(topology), "-o", str(out)], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"compile failed: {r.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the max over all children so far: run each measurement first-largest
    return wall, max(after.ru_maxrss, before.ru_maxrss) / 1024, r.stdout.strip()


INDEX = ".podnet-index"  # podnet's local cache beside the artifacts (not one of them)


def tree_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != INDEX)


def written_bytes(out: Path) -> tuple:
    """(bytes, files) counting each inode once: identical files are hard-linked."""
    inodes = {p.stat().st_ino: p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != INDEX}
    return sum(inodes.values()), len(inodes)


def main() -> None:
    global REPO
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--repo", type=Path, default=REPO, help="the podnet checkout to run (default: this one)")
    a = p.parse_args()
    REPO = a.repo.resolve()
    work = Path(tempfile.mkdtemp(prefix="podnet-bench-"))
    try:
        print(f"# podnet compile ({REPO}), {a.nodes} nodes (pinned subnets), {a.repeat} runs each; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
        topo = work / "t.yaml"
        topo.write_text(generate(a.nodes, pinned=True))
        fresh, rss = [], 0.0
        for i in range(a.repeat):
            out = work / f"fresh{i}"
            wall, peak, _ = run_compile(topo, out)
            fresh.append(wall)
            rss = max(rss, peak)
        out = work / "fresh0"
        print(f"fresh compile:        median {statistics.median(fresh):.2f} s  (min {min(fresh):.2f}, max {max(fresh):.2f}); CPU median {statistics.median(CPU):.2f} s; peak RSS {rss:.0f} MiB")
        size = tree_bytes(out)
        index = out / INDEX
        print(f"output:               {size / 1e6:.1f} MB in {sum(1 for _ in out.rglob('*') if _.is_file() and _.name != INDEX)} files ({size / a.nodes / 1024:.1f} KiB per node)"
              + (f"; local index {index.stat().st_size / 1e6:.1f} MB" if index.exists() else ""))
        written, inodes = written_bytes(out)
        print(f"written:              {written / 1e6:.1f} MB in {inodes} inodes (identical files hard-linked)")
        # linearity: half the nodes should give about half the bytes
        half = work / "half.yaml"
        half.write_text(generate(a.nodes // 2, pinned=True))
        run_compile(half, work / "half")
        print(f"bytes ratio {a.nodes}/{a.nodes // 2} nodes: {size / tree_bytes(work / 'half'):.3f} (2.000 = linear)")
        unchanged, incremental = [], []
        cpu_unchanged, cpu_incremental = [], []
        text = topo.read_text()
        for i in range(a.repeat):
            wall, _, summary0 = run_compile(topo, out)
            unchanged.append(wall)
            cpu_unchanged.append(CPU[-1])
            # change one node's address (alternating, so every run changes something)
            topo.write_text(text.replace("address: 172.16.0.20\n", f"address: 172.31.0.{20 + (i % 2)}\n"))
            wall, _, summary = run_compile(topo, out)
            incremental.append((wall, summary))
            cpu_incremental.append(CPU[-1])
        print(f"re-run, no change:    median {statistics.median(unchanged):.2f} s (min {min(unchanged):.2f}); CPU median {statistics.median(cpu_unchanged):.2f} s; {summary0.split(': ', 1)[-1]}")
        walls = [w for w, _ in incremental]
        print(f"re-run, 1 node moved: median {statistics.median(walls):.2f} s (min {min(walls):.2f}); CPU median {statistics.median(cpu_incremental):.2f} s; {incremental[-1][1].split(': ', 1)[-1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
