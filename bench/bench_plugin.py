"""Benchmark: podnet's plugin against the reference bridge + host-local, both driven
through libcni (tests/go/cnidriver), side by side and interleaved, in network
namespaces this script creates and removes. Prints medians, spreads and ratios;
asserts nothing.

Figures:
  * ADD / CHECK / DEL latency of the libcni call (plugin executions included;
    the driver's own start-up and the namespace wrapper are not counted), with
    masquerade off and on; the reference's time is bridge + host-local alone (a
    runtime would also run its loopback plugin, which podnet does itself: not
    counted, so the comparison favours the reference);
  * ADD / DEL again on a node whose store holds the leases of 100 other pods
    (--store-leases), as on a busy node: both IPAMs look up what the pair holds
    on ADD and release by owner on DEL;
  * ADD / DEL once more with 500 more mounts in the mount table (--mounts), as on
    a busy node: `ip -n`, which podnet's pod side uses, copies the mount table into
    a namespace of its own and tears it down at exit; the reference enters the
    pod's netns with setns alone;
  * 32 ADDs (then 32 DELs) in parallel: wall time of the batch, median of 5
    interleaved rounds;
  * the CPU time (user + system) of the plugin processes per ADD and DEL, as
    libcni's caller sees it (RUSAGE_CHILDREN around the call);
  * processes started per ADD (execve calls, counted with strace -f), and the CPU
    one start of each program costs here (a start that does nothing: `ip -V`,
    `dash -c :`, ...), the tax every process of a shell plugin pays;
  * the floor of podnet's design (bench/floor-plugin.sh: dash, the same two
    `ip -batch` processes and the lease under host-local's lock, nothing else),
    timed in the same rounds;
  * where podnet's ADD spends its time before its first fork: the compiled plugin
    cut short after each step (an `exit 0` inserted), each cut run many times in
    the node with libcni's stdin and environment; a step's share is the difference
    between consecutive cuts.

usage: python bench/bench_plugin.py [--rounds 150] [--store-leases 100] [--mounts 500] [--parallel 32] [--parallel-rounds 5]   (root; `make driver` first)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import Namespaces, have, node_sh  # noqa: E402
from peers import DRIVER, REFERENCE_BIN, CniNode, Pod, compile_topology, driver_available, install_podnet, install_reference, plugin_entries, topology_yaml  # noqa: E402


def stats(values: List[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q1, q3 = ms[len(ms) // 4], ms[(3 * len(ms)) // 4]
    return f"{statistics.median(ms):7.2f} ms (IQR {q1:.1f}-{q3:.1f})"


def timed(node, command: str, pod: Pod, cpu: Optional[List[float]] = None) -> float:
    """Seconds of one libcni call; appends the plugin processes' CPU seconds to `cpu`."""
    run = node.driver(command, pod)
    if run.rc != 0 or "seconds" not in run.out:
        raise SystemExit(f"{command} failed on {node.plugin['type']}: {run.describe()}")
    if cpu is not None:
        cpu.append(run.out["cpu_seconds"])
    return run.out["seconds"]


def new_pod(spaces: Namespaces, name: str) -> Pod:
    return Pod(ns=spaces.add(name))


def latency(spaces: Namespaces, nodes: Dict[str, object], rounds: int) -> Dict[str, Dict[str, List[float]]]:
    """ADD, CHECK, DEL per plugin, rotating which goes first each round; the
    same commands' CPU seconds under "ADD cpu", "CHECK cpu", "DEL cpu"."""
    times = {name: {key: [] for key in ("ADD", "CHECK", "DEL", "ADD cpu", "CHECK cpu", "DEL cpu")} for name in nodes}
    names = list(nodes)
    for r in range(rounds):
        # Each plugin goes first in as many rounds as the others: a round's first call
        # comes right after the previous round's netns removals and this round's new
        # netns, and was measured 0.2-0.3 ms slower than the calls after it. (Reversing
        # the order every other round left the middle one of three never first.)
        first = r % len(names)
        order = names[first:] + names[:first]
        pods = {name: new_pod(spaces, f"{name[:3]}{r}") for name in names}
        for command in ("ADD", "CHECK", "DEL"):
            for name in order:
                times[name][command].append(timed(nodes[name], command.lower(), pods[name], times[name][f"{command} cpu"]))
        for pod in pods.values():
            subprocess.run(["ip", "netns", "del", pod.ns], capture_output=True)
            spaces.created.remove(pod.ns)
    return times


def parallel(spaces: Namespaces, node, count: int, tag: str) -> Dict[str, float]:
    pods = [new_pod(spaces, f"{tag}{i}") for i in range(count)]
    out = {}
    for command in ("add", "del"):
        env = {"DRV": str(DRIVER), "DRV_PATH": node.cni_path, "DRV_CACHE": str(node.cache), "DRV_CONF": str(node.conf_path),
               "DRV_NETNS": ",".join(p.path for p in pods), "DRV_CMD": f"{command}-parallel"}
        done = node.sh('exec "$DRV" -path "$DRV_PATH" -cache "$DRV_CACHE" -netns "$DRV_NETNS" -id par "$DRV_CMD" "$DRV_CONF"', env=env)
        result = json.loads(done.stdout)
        if result["errors"]:
            raise SystemExit(f"parallel {command} on {node.plugin['type']}: {result['errors'][:3]}")
        out[command] = result["seconds"]
    for p in pods:
        subprocess.run(["ip", "netns", "del", p.ns], capture_output=True)
        spaces.created.remove(p.ns)
    return out


def forks(spaces: Namespaces, node, tag: str) -> int:
    """Processes started by one ADD through libcni (the driver's own exec not counted)."""
    pod = new_pod(spaces, f"{tag}f")
    trace = node.root / f"strace-{tag}"
    env = {"DRV": str(DRIVER), "DRV_PATH": node.cni_path, "DRV_CACHE": str(node.cache), "DRV_CONF": str(node.conf_path),
           "DRV_NETNS": pod.path, "DRV_ID": pod.cid, "TRACE": str(trace)}
    # -z: successful calls only, each on one line (without it, execve calls of processes
    # running side by side are split into "unfinished" and "resumed" lines)
    node.sh('exec strace -f -qq -z -e trace=execve -o "$TRACE" "$DRV" -path "$DRV_PATH" -cache "$DRV_CACHE" -netns "$DRV_NETNS" -id "$DRV_ID" add "$DRV_CONF"', env=env)
    execs = sum(1 for line in trace.read_text().splitlines() if "execve(" in line)
    node.driver("del", pod)
    return execs - 1


def start_cost(argv: List[str], runs: int = 300) -> float:
    """CPU seconds (user + system) one start of argv costs: the mean over `runs`
    starts, from the children's rusage. argv must do nothing (print a version)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / runs


def start_costs() -> None:
    """Prints what starting each program of an ADD costs in CPU, and an empty Go and
    glibc start for comparison."""
    ip = shutil.which("ip") or "/sbin/ip"
    programs = [
        ("dash (the plugin's shell)", ["/bin/sh", "-c", ":"]),
        ("ip", [ip, "-V"]),
        ("flock", [shutil.which("flock") or "flock", "-V"]),
        ("true (coreutils, C)", [shutil.which("true") or "/bin/true"]),
        ("bridge (reference, Go)", [str(REFERENCE_BIN / "bridge")]),
        ("host-local (reference, Go)", [str(REFERENCE_BIN / "host-local")]),
    ]
    costs = []
    for label, argv in programs:
        if not os.path.exists(argv[0]):
            continue
        costs.append(f"{label} {start_cost(argv) * 1000:.2f}")
    print("CPU per process start, ms (a start that does nothing): " + ", ".join(costs))


# Where the prologue is cut: (what the step does, the text in the generated plugin,
# whether `exit 0` goes before it (else after it)). Each cut exits before anything
# is created: the last one stops just before add_links_and_lease forks, once the
# bridge was found (the warm-up ADD created it).
PROLOGUE_CUTS = [
    ("exec and dash start (the loop's fork included)", "set -eu\n", False),
    ("parse and define the code before ADD's entry", 'if ! sourced && [ "$#" -eq 0 ] && [ "${CNI_COMMAND:-}" = ADD ]; then\n', True),
    ("read stdin, match the compiled config", "\tif config_compiled; then\n", False),
    ("find ip, check the version, validate the environment", "cmd_add() {\n", False),
    ("veth name (FNV-1a of ID/IFNAME)", "\tveth_name\n\tadd_masquerade_check\n", False),
    ("the host side's batch, up to the first fork", "\tal_out=$(\n", True),
]


def prologue(node, pod: Pod, runs: int = 200, rounds: int = 5) -> None:
    """Prints the share of each step of podnet's ADD before its first fork."""
    script = (node.bin_dirs[0] / node.plugin["type"]).read_text()
    head = re.search(r"^CONFIG_HEAD='([^']*)'$", script, re.M)
    tail = re.search(r"^CONFIG_TAIL='([^']*)'$", script, re.M)
    if not head or not tail:
        print("prologue: the plugin has no compiled config to match; not measured")
        return
    cut_dir = node.root / "cuts"
    cut_dir.mkdir()
    (cut_dir / "stdin.json").write_text(f"{head.group(1)}{node.cni_version}{tail.group(1)}")
    for i, (label, anchor, before) in enumerate(PROLOGUE_CUTS):
        if script.count(anchor) != 1:
            print(f"prologue: cannot find where to cut after {label!r}; not measured")
            return
        at = script.index(anchor) + (0 if before else len(anchor))
        (cut_dir / f"cut{i}").write_text(script[:at] + "exit 0\n" + script[at:])
    loop = ('i=0; t0=$(date +%s%N); while [ "$i" -lt "$RUNS" ]; do '
            '/bin/sh "$CUT" <"$CUTS/stdin.json" >/dev/null 2>&1 || exit 1; i=$((i + 1)); done; '
            't1=$(date +%s%N); echo $(((t1 - t0) / RUNS))')
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod.cid, "CNI_NETNS": pod.path, "CNI_IFNAME": pod.ifname,
           "CNI_PATH": node.cni_path, "CUTS": str(cut_dir), "RUNS": str(runs)}
    times: List[List[float]] = [[] for _ in PROLOGUE_CUTS]
    for _ in range(rounds):
        for i in range(len(PROLOGUE_CUTS)):
            done = node.sh(loop, env=dict(env, CUT=str(cut_dir / f"cut{i}")))
            if done.returncode != 0:
                print(f"prologue: cut {i} failed: {done.stderr.strip()}; not measured")
                return
            times[i].append(int(done.stdout) / 1e6)
    medians = [statistics.median(t) for t in times]
    code = sum(len(line) + 1 for line in script[:script.index(PROLOGUE_CUTS[1][1])].splitlines() if line.strip() and not line.lstrip().startswith("#"))
    size = script.index(PROLOGUE_CUTS[1][1])
    print(f"where podnet's ADD spends its time before its first fork (the plugin cut short after each step, "
          f"{runs} runs per cut, median of {rounds} rounds; parsed before ADD's entry: {size / 1024:.0f} KiB, {code / 1024:.0f} KiB of it code):")
    for i, (label, _, _) in enumerate(PROLOGUE_CUTS):
        share = medians[i] - (medians[i - 1] if i else 0)
        print(f"  {label:55s} {medians[i]:5.2f} ms  ({'+' if i else ''}{share:.2f})")


def fill_store(node, count: int) -> None:
    """The leases of `count` other pods (64-hex IDs, as runtimes make them) in the
    node's store, at the top of its subnet: the rounds' round-robin allocation
    reaches them after ≈ 150 ADDs and steps over them all in one ADD, as on a busy node."""
    subnet = ipaddress.ip_network(plugin_entries(node.conf)[0]["ipam"]["ranges"][0][0]["subnet"])
    store = node.cni_dir / "networks" / node.name
    for k in range(count):
        address = subnet.broadcast_address - 1 - k
        (store / str(address)).write_bytes(f"{k:064x}\r\neth0".encode())


# Run by with_mounts in each call's mount namespace: COUNT tmpfs mounts on TOP/0..COUNT-1.
MOUNT_PY = """import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
top, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    if libc.mount(b"podnet-bench", os.path.join(top, str(i)).encode(), b"tmpfs", 0, b"size=4k") != 0:
        raise SystemExit("mount: " + os.strerror(ctypes.get_errno()))
"""


def with_mounts(node, top: Path, count: int) -> None:
    """Makes every call on `node` run with `count` more mounts in its mount table,
    as on a busy node (each pod adds its netns, shm, rootfs and volume mounts). They
    are made in the call's own mount namespace (node_sh's, private), and go with it."""
    for i in range(count):
        (top / str(i)).mkdir(parents=True, exist_ok=True)
    plain = node.sh

    def sh(script: str, env: Optional[dict] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        env = dict(env or {}, BENCH_MOUNT_PY=MOUNT_PY, BENCH_MOUNT_TOP=str(top), BENCH_MOUNTS=str(count))
        return plain('python3 -c "$BENCH_MOUNT_PY" "$BENCH_MOUNT_TOP" "$BENCH_MOUNTS" && ' + script, env=env, input=input)

    node.sh = sh
    seen = int(node.sh("wc -l </proc/self/mountinfo").stdout.strip() or 0)
    if seen < count:
        raise SystemExit(f"bench_plugin: expected at least {count} mounts in the node's calls, saw {seen}")


def busy_figure(label: str, times: Dict[str, Dict[str, List[float]]]) -> None:
    """Prints ADD and DEL of podnet against the reference, with both CPU times."""
    for command in ("ADD", "DEL"):
        pn, rf = statistics.median(times["podnet"][command]), statistics.median(times["reference"][command])
        cpu = ", ".join(f"{name} {statistics.median(values[f'{command} cpu']) * 1000:.1f} ms" for name, values in times.items())
        print(f"{label} {command:5s} podnet {stats(times['podnet'][command])}  "
              f"reference {stats(times['reference'][command])}  ratio {pn / rf:.3f}  (CPU: {cpu})")


def install_floor(podnet, root: Path) -> CniNode:
    """bench/floor-plugin.sh as plugin type "podnet-floor" in podnet's node (its
    bridge, made by podnet's warm-up ADD, is the one the floor plugin uses)."""
    conf = json.loads(json.dumps(podnet.conf))
    entries = conf["plugins"] if "plugins" in conf else [conf]
    entries[0]["type"] = "podnet-floor"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    script = (HERE / "floor-plugin.sh").read_text().replace("\nBRIDGE=cni0\n", f"\nBRIDGE={entries[0]['bridge']}\n", 1)
    (bin_dir / "podnet-floor").write_text(script)
    os.chmod(bin_dir / "podnet-floor", 0o755)
    return CniNode(podnet.ns, root, conf, [bin_dir], podnet.conf_path.name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--store-leases", type=int, default=100)
    p.add_argument("--mounts", type=int, default=500)
    p.add_argument("--parallel", type=int, default=32)
    p.add_argument("--parallel-rounds", type=int, default=5)
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_plugin: needs root (network namespaces)")
    ok, why = driver_available()
    if not ok:
        raise SystemExit(f"bench_plugin: {why}")
    work = Path(tempfile.mkdtemp(prefix="podnet-bench-"))
    spaces = Namespaces()
    try:
        print(f"# podnet vs reference bridge + host-local through libcni; {a.rounds} rounds, interleaved")
        ratios = {}
        for masq in (False, True):
            (work / f"m{int(masq)}").mkdir()
            out = compile_topology(work / f"m{int(masq)}", topology_yaml("1.0.0", masquerade=masq))
            nodes = {
                "podnet": install_podnet(out, spaces.add(f"pn{int(masq)}"), work / f"pn{int(masq)}"),
                "reference": install_reference(out, spaces.add(f"rf{int(masq)}"), work / f"rf{int(masq)}"),
            }
            if not masq:
                nodes["floor"] = install_floor(nodes["podnet"], work / "floor")
            for name, node in nodes.items():  # warm up: the first ADD creates the bridge (and the rule)
                pod = new_pod(spaces, f"w{name[:3]}{int(masq)}")
                timed(node, "add", pod)
            times = latency(spaces, nodes, a.rounds)
            label = "masquerade on " if masq else "masquerade off"
            for command in ("ADD", "CHECK", "DEL"):
                pn, rf = statistics.median(times["podnet"][command]), statistics.median(times["reference"][command])
                ratios[(masq, command)] = pn / rf
                print(f"{label} {command:5s} podnet {stats(times['podnet'][command])}  reference {stats(times['reference'][command])}  ratio {pn / rf:.3f}")
            for command in ("ADD", "DEL"):
                cpu = ", ".join(f"{name} {statistics.median(times[name][f'{command} cpu']) * 1000:.1f} ms" for name in nodes)
                print(f"{label} {command:5s} CPU of the plugin processes (median): {cpu}")
            if "floor" in times:
                for command in ("ADD", "DEL"):
                    fl, rf = statistics.median(times["floor"][command]), statistics.median(times["reference"][command])
                    print(f"floor of the design {command:5s} {stats(times['floor'][command])}  (dash + the same two ip -batch + the locked lease, nothing else)  ratio to reference {fl / rf:.3f}")
                prologue(nodes["podnet"], new_pod(spaces, "cut"))
                busy = {name: node for name, node in nodes.items() if name != "floor"}
                for node in busy.values():
                    fill_store(node, a.store_leases)
                busy_figure(f"store of {a.store_leases} other pods' leases", latency(spaces, busy, a.rounds))
                for name, node in busy.items():
                    with_mounts(node, work / f"mnt-{name}", a.mounts)
                busy_figure(f"the same and {a.mounts} more mounts", latency(spaces, busy, a.rounds))
            if masq:
                for name, node in nodes.items():
                    print(f"processes started per ADD ({name}): {forks(spaces, node, name[:3])}")
                start_costs()
                par = {name: {"add": [], "del": []} for name in nodes}
                for r in range(a.parallel_rounds):  # interleaved, the first one alternating
                    for name in (list(nodes) if r % 2 == 0 else list(nodes)[::-1]):
                        for command, seconds in parallel(spaces, nodes[name], a.parallel, f"{name[:2]}p{r}").items():
                            par[name][command].append(seconds)
                for command in ("add", "del"):
                    pn, rf = statistics.median(par["podnet"][command]), statistics.median(par["reference"][command])
                    print(f"{a.parallel} {command.upper()}s in parallel ({a.parallel_rounds} rounds): podnet {stats(par['podnet'][command])}, "
                          f"reference {stats(par['reference'][command])}, ratio {pn / rf:.3f}")
    finally:
        spaces.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
