"""Benchmark: `routes.sh up | check | up (no-op) | down` with thousands of routes,
inside a network namespace this script creates and removes. Prints medians; asserts nothing.

usage: python bench/bench_routes.py [--routes 5000] [--repeat 5]   (root)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from gen_topology import generate  # noqa: E402


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


def timed(ns: str, script: Path, action: str) -> float:
    t = time.perf_counter()
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", str(script), action], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"routes.sh {action} failed: {r.stdout}{r.stderr}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--routes", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_routes: needs root (it creates a network namespace)")
    work = Path(tempfile.mkdtemp(prefix="podnet-bench-"))
    ns = f"pnbench-{uuid.uuid4().hex[:8]}"
    try:
        topo = work / "t.yaml"
        topo.write_text(generate(a.routes + 1, pinned=True))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        sh(sys.executable, "-m", "compiler", "compile", str(topo), "-o", str(work / "out"), env=env)
        node = work / "out" / "nodes" / "node00000"
        shutil.copy(work / "out" / "routes.table", node / "routes.table")
        script = node / "routes.sh"
        # the node: its underlay interface (one end of a veth pair, both ends in the namespace) on the next hops' network
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
        sh("ip", "-n", ns, "link", "set", "eth0peer", "up")
        sh("ip", "-n", ns, "addr", "add", "172.16.0.10/16", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        results = {"up": [], "check": [], "up (no change)": [], "down": []}
        for _ in range(a.repeat):
            results["up"].append(timed(ns, script, "up"))
            results["check"].append(timed(ns, script, "check"))
            results["up (no change)"].append(timed(ns, script, "up"))
            results["down"].append(timed(ns, script, "down"))
        count = a.routes
        print(f"# routes.sh with {count} routes, {a.repeat} runs each (median, min-max)")
        for name, walls in results.items():
            ms = [w * 1000 for w in walls]
            print(f"{name:16s} {statistics.median(ms):7.1f} ms   ({min(ms):.1f}-{max(ms):.1f})")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
