"""Benchmark: `routes.sh up | check | up (no-op) | down` with thousands of routes,
inside a network namespace this script creates and removes. Prints medians; asserts nothing.

Besides the four actions it prints, interleaved with them in every round:
- the kernel floor: the very `ip -batch` lines `up` and `down` send, run alone
  (`ip netns exec NS ip -force -batch FILE`), and `ip netns exec NS true`;
- where `up`'s time goes: the script sourced (PODNET_SOURCE_ONLY=1) and run step by
  step, each prefix of cmd_up from a clean state; a step's cost is the difference of
  the medians of its prefix and the one before;
- the processes each action starts (execve under `strace -f`, when strace is there):
  a count that does not depend on the machine's load.

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

# cmd_up, step by step (the same calls in the same order); each entry runs after the ones before it
UP_STEPS = [
    ("start (netns exec, sh, source)", ":"),
    ("require_tools (ip -V)", "require_tools"),
    ("setup_forwarding", "setup_forwarding"),
    ("plan up (ip route show, awk)", "plan up"),
    ("apply_batch (ip -batch)", "apply_batch install"),
    ("masquerade (iptables -C, -A)", "masq_rule -C >/dev/null 2>&1 || masq_rule -A"),
]


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


def timed(cmd: list, env=None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stdout}{r.stderr}")
    return wall


def sourced(ns: str, script: Path, body: str) -> list:
    """`ip netns exec NS sh -c ...` running BODY with the script sourced."""
    return ["ip", "netns", "exec", ns, "sh", "-c", f'PODNET_SOURCE_ONLY=1; . "$1"; {body}', "sh", str(script)]


def processes(ns: str, script: Path, action: str, work: Path) -> int:
    """Processes `routes.sh ACTION` starts: successful execve under `strace -f -z`, the shell's own included."""
    log = work / "strace.log"
    subprocess.run(["strace", "-f", "-qq", "-z", "-e", "trace=execve", "-o", str(log), "ip", "netns", "exec", ns, "sh", str(script), action], capture_output=True)
    return sum("execve(" in line for line in log.read_text().splitlines()) - 1  # not `ip netns exec` itself


def report(title: str, results: dict) -> None:
    print(title)
    for name, walls in results.items():
        ms = [w * 1000 for w in walls]
        print(f"  {name:34s} {statistics.median(ms):7.1f} ms   ({min(ms):.1f}-{max(ms):.1f})")


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
        senv = dict(os.environ, PODNET_ROUTES_TABLE=str(node / "routes.table"))
        # the node: its underlay interface (one end of a veth pair, both ends in the namespace) on the next hops' network
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
        sh("ip", "-n", ns, "link", "set", "eth0peer", "up")
        sh("ip", "-n", ns, "addr", "add", "172.16.0.10/16", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")

        def run(action: str) -> list:
            return ["ip", "netns", "exec", ns, "sh", str(script), action]

        # the batches up and down send, for the floor
        batches = {}
        for action in ("up", "down"):
            lines = sh(*sourced(ns, script, f'require_tools; plan {action}; printf "%s\\n" "$LINES"'), env=senv).stdout
            (work / f"{action}.batch").write_text(lines)
            batches[action] = lines.count("\n")
            timed(run(action))
        steps = [s for s in UP_STEPS if "masq_rule" not in s[1] or "masq_rule()" in script.read_text()]

        results = {"up": [], "check": [], "up (no change)": [], "down": []}
        floor = {"ip netns exec NS true": [], f"ip -batch of up's {batches['up']} lines": [], f"ip -batch of down's {batches['down']} lines": []}
        step_walls = {name: [] for name, _ in steps}
        for _ in range(a.repeat):
            results["up"].append(timed(run("up")))
            results["check"].append(timed(run("check")))
            results["up (no change)"].append(timed(run("up")))
            results["down"].append(timed(run("down")))
            floor["ip netns exec NS true"].append(timed(["ip", "netns", "exec", ns, "true"]))
            floor[f"ip -batch of up's {batches['up']} lines"].append(timed(["ip", "netns", "exec", ns, "ip", "-force", "-batch", str(work / "up.batch")]))
            floor[f"ip -batch of down's {batches['down']} lines"].append(timed(["ip", "netns", "exec", ns, "ip", "-force", "-batch", str(work / "down.batch")]))
            for k, (name, _) in enumerate(steps):
                body = "; ".join(call for _, call in steps[: k + 1])
                step_walls[name].append(timed(sourced(ns, script, body), env=senv))
                timed(run("down"))

        print(f"# routes.sh with {a.routes} routes, {a.repeat} runs each (median, min-max); load {os.getloadavg()[0]:.2f}")
        report("routes.sh (wall, through ip netns exec):", results)
        report("the kernel floor (the same batches, alone):", floor)
        print("where up's time goes (median of each prefix of cmd_up; + the step's own share):")
        before = 0.0
        for name, walls in step_walls.items():
            med = statistics.median(walls) * 1000
            print(f"  {name:34s} {med:7.1f} ms   (+{med - before:.1f})")
            before = med
        if shutil.which("strace"):
            counts = {}
            for action in ("up", "check", "up", "down"):
                key = "up (no change)" if action in counts else action
                counts[key] = processes(ns, script, action, work)
            print("processes started (execve, the shell included): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
