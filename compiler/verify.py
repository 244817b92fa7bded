"""`podnet verify`: the compiled artifacts, exactly as shipped, make a working cluster.

The whole cluster is built on this machine in network namespaces, all named with a
random per-run prefix (parallel runs never collide) and all removed at the end, also
on Ctrl-C or SIGTERM:

  underlay   one namespace with a bridge: the nodes' L2 network
  router     (routing: router) one namespace on the underlay holding network.router
  nodes      one namespace per node, its underlay interface (named as in the topology)
             a veth into the underlay bridge, holding the node's address
  pods       N namespaces per node, attached by the node's plugin

Each node's artifacts are installed as Ansible ships them, into a per-node root
(ROOT/opt/cni/bin/<type>, ROOT/etc/cni/net.d/, ROOT/etc/podnet/routes.sh + routes.table),
and each node gets a private /var/lib/cni (and dataDir): every command run "on the
node" is `ip netns exec NODE`, which gives it a private mount namespace in which the
node's directory is bind-mounted over /var/lib/cni.

Then, as a container runtime would: ADD every pod through the plugin in CNI mode (the
conflist's plugin object with cniVersion and name added, as libcni builds it), run
`routes.sh up` on every node (and the router), `routes.sh check` everywhere, CHECK
every pod, ping every pod pair (sampled above --max-pairs, but every ordered node pair
is always covered) and from pods to other nodes' addresses, DEL every pod, and look
for leaks: veths on the nodes, leases in the stores, interfaces left in the pods,
piled-up masquerade rules.

The underlay is one flat L2 network: per address family, its prefix is the smallest
one holding every node address (and the router), so next hops are on-link as routes.sh
expects. A dual-stack cluster gets both families everywhere: every machine holds one
underlay address per family (IPv6 without DAD, so it is usable at once), and every pod
pair and pod -> node ping runs once per family, so IPv4 and IPv6 are both proven.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from compiler.artifacts import compile_into
from compiler.load import load_file
from compiler.model import Topology
from compiler.plan import conf_name, masquerades
from compiler.topology import build

IFNAME = "eth0"  # the pods' interface, as runtimes name it
UNDERLAY_BRIDGE = "br0"
ROUTER_IF = "eth0"
DEFAULT_MAX_PAIRS = 5000
PARALLEL = max(4, 2 * (os.cpu_count() or 1))
LEASE_HOUSEKEEPING = ("lock", "last_reserved_ip")  # files in a store that are not leases

# Runs in a pod: pings every argument once (one retry, for a first packet lost while a
# neighbour entry resolves), all in parallel; prints "ok ADDR" or "fail ADDR" per target.
# $PING is a command and its fixed words ("/usr/bin/ping" or "busybox ping"): split on purpose.
PING_SCRIPT = """
for t; do
	{ if $PING -n -q -c1 -W1 "$t" >/dev/null 2>&1 || $PING -n -q -c1 -W2 "$t" >/dev/null 2>&1; then echo "ok $t"; else echo "fail $t"; fi; } &
done
wait
"""

# Runs on a node (inside `ip netns exec NODE`): the node's private state directories
# over the real ones, then the plugin once per pod, as a runtime calls it. Arguments:
# COMMAND PLUGIN CNI_PATH WORKDIR then ID NETNS pairs; per pod, WORKDIR/ID.COMMAND.in
# is the config on stdin, and .out .err .rc receive what the plugin said.
RUNTIME_SCRIPT = """
set -u
IFS='
'
for pair in $PODNET_VERIFY_MOUNTS; do
	mount --bind "${pair%%=*}" "${pair#*=}" || { echo "cannot bind-mount ${pair%%=*} over ${pair#*=}" >&2; exit 97; }
done
command=$1 plugin=$2 cni_path=$3 work=$4
shift 4
while [ "$#" -ge 2 ]; do
	id=$1 netns=$2
	shift 2
	CNI_COMMAND=$command CNI_CONTAINERID=$id CNI_NETNS=$netns CNI_IFNAME=eth0 CNI_PATH=$cni_path \\
		"$plugin" <"$work/$id.$command.in" >"$work/$id.$command.out" 2>"$work/$id.$command.err"
	echo "$?" >"$work/$id.$command.rc"
done
"""


class VerifyError(Exception):
    """verify cannot run here (not root, a tool missing); the message says what to do."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop, clean up, exit."""


# ---------------------------------------------------------------------------- model


@dataclass
class Pod:
    node: str
    index: int
    netns: str
    container_id: str
    address: str = ""  # the primary family's address
    addresses: List[str] = field(default_factory=list)  # one per family, as the ADD result lists them
    result: Optional[dict] = None  # the plugin's ADD result (prevResult for CHECK and DEL)
    added: bool = False

    @property
    def name(self) -> str:
        return f"{self.node}/pod{self.index}"


@dataclass
class Machine:
    """A node or the router: its namespace, its install root, its underlay link."""

    name: str
    netns: str
    root: Path
    address: str
    interface: str
    underlay_port: str
    subnet: str = ""
    addresses: List[str] = field(default_factory=list)  # underlay addresses, one per family (primary first)
    subnets: List[str] = field(default_factory=list)  # pod subnets, one per family
    mac: str = ""  # of the underlay interface: fixed, so every neighbour entry can be static
    pods: List[Pod] = field(default_factory=list)
    conf: dict = field(default_factory=dict)  # the node's CNI network configuration (conflist or conf)


@dataclass
class Report:
    problems: List[str] = field(default_factory=list)  # everything that failed, in order
    failing_pairs: List[Tuple[str, str]] = field(default_factory=list)  # (from, to), as "node/podK ADDRESS"
    per_node: Dict[str, Dict[str, str]] = field(default_factory=dict)  # node -> column -> text
    counts: Dict[Tuple[str, str], List[int]] = field(default_factory=dict)  # (node, column) -> [ok, tried]
    pairs_tested: int = 0
    pairs_total: int = 0
    pairs_ok: int = 0
    node_pings: int = 0
    node_pings_ok: int = 0
    families: Tuple[int, ...] = (4,)  # the pods' address families: every pair is pinged once per family

    def note(self, node: str, key: str, value: str) -> None:
        self.per_node.setdefault(node, {})[key] = value

    def count(self, node: str, key: str, good: bool) -> None:
        c = self.counts.setdefault((node, key), [0, 0])
        c[0] += good
        c[1] += 1
        self.note(node, key, f"{c[0]}/{c[1]}")

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failing_pairs


# ---------------------------------------------------------------------------- processes


class Runner:
    """Starts every child process, each in its own process group, and remembers the
    live ones so an interrupt can end exactly them (by process group id)."""

    def __init__(self) -> None:
        self._live: Dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self.aborted = False

    def run(self, argv: Sequence[str], input: Optional[str] = None, env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
        if self.aborted:
            raise Interrupted()
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        with self._lock:
            self._live[proc.pid] = proc
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            out, err = proc.communicate()
            err += f"\n(killed after {timeout:.0f}s)"
        finally:
            with self._lock:
                self._live.pop(proc.pid, None)
        if self.aborted:
            raise Interrupted()
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def abort(self) -> None:
        self.aborted = True
        with self._lock:
            live = list(self._live.values())
        for proc in live:
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we created for this child
        except (ProcessLookupError, PermissionError):
            pass


class Progress:
    """Progress lines on stderr, at most one per second within a phase."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        if not self.quiet:
            with self._lock:
                print(f"podnet verify [{time.monotonic() - self.start:6.1f}s] {text}", file=self.stream, flush=True)

    def tick(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last >= 1.0:
            self._last = now
            self.say(f"{what}: {done}/{total}")


# ---------------------------------------------------------------------------- the run


class Cluster:
    """One verify run: names, directories, and every step from build to teardown."""

    def __init__(self, topo: Topology, pods_per_node: int, max_pairs: int, keep: bool, progress: Progress, workdir: Path) -> None:
        self.topo = topo
        self.pods_per_node = pods_per_node
        self.max_pairs = max_pairs
        self.keep = keep
        self.progress = progress
        self.runner = Runner()
        self.report = Report()
        self.token = secrets.token_hex(3)
        self.prefix = f"pv-{self.token}-"
        self.workdir = workdir
        self.out = workdir / "out"
        self.created_ns: List[str] = []
        self.underlay_ns = self.prefix + "underlay"
        underlay = [a for n in topo.nodes for a in n.addresses] + list(topo.network.routers)
        # the underlay's prefix per family (every node has one address per pod family)
        self.prefixlens = {v: underlay_prefix([a for a in underlay if a.version == v]) for v in sorted({a.version for a in underlay})}
        self.prefixlen = self.prefixlens[topo.nodes[0].address.version]
        self.report.families = tuple(p.family for p in topo.network.pools)
        self.nodes: List[Machine] = [
            Machine(n.name, f"{self.prefix}{n.name}", workdir / "nodes" / n.name, str(n.address), n.interface, f"u{i}", str(n.subnet), [str(a) for a in n.addresses], [str(s) for s in n.subnets])
            for i, n in enumerate(topo.nodes)
        ]
        self.router: Optional[Machine] = None
        if topo.network.routing == "router":
            routers = [str(r) for r in topo.network.routers]
            self.router = Machine("router", self.prefix + "router", workdir / "router", routers[0], ROUTER_IF, "ur", addresses=routers)
        for m in self.nodes:
            m.pods = [Pod(m.name, k, f"{m.netns}-pod{k}", f"verify-{self.token}-{m.name}-{k}") for k in range(pods_per_node)]
        self.ping = shutil.which("ping") or ""
        self.plugin_type = ""
        self.conf: dict = {}

    # -- helpers

    def on_node(self, m: Machine, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """Runs argv inside the node's namespace."""
        return self.runner.run(["ip", "netns", "exec", m.netns, *argv], **kw)

    def parallel(self, what: str, items: Sequence, fn: Callable) -> List:
        """fn(item) for every item on a thread pool, in order of items; progress per item."""
        results: List = [None] * len(items)
        if not items:
            return results
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(items))) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for done, fut in enumerate(as_completed(futures), 1):
                    results[futures[fut]] = fut.result()
                    self.progress.tick(what, done, len(items))
            except BaseException:
                self.runner.abort()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return results

    def all_pods(self) -> List[Pod]:
        return [p for m in self.nodes for p in m.pods]

    # -- 1. compile and install

    def compile(self, doc_text: bytes) -> None:
        compile_into(str(self.out), self.topo, doc_text)
        for m in self.nodes:
            m.conf = json.loads((self.out / "nodes" / m.name / conf_name(self.topo)).read_text())
        self.conf = self.nodes[0].conf  # cniVersion, name and type are the same on every node
        self.plugin_type = self.conf.get("plugins", [self.conf])[0]["type"]

    def install(self) -> None:
        """Each node's files where Ansible puts them, in the node's root."""
        conf = conf_name(self.topo)
        for m in self.nodes:
            src = self.out / "nodes" / m.name
            bin_dir, conf_dir, podnet_dir = m.root / "opt/cni/bin", m.root / "etc/cni/net.d", m.root / "etc/podnet"
            for d in (bin_dir, conf_dir, podnet_dir, m.root / "state/cni", m.root / "state/data", m.root / "work"):
                d.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.name == "net-setup.sh":
                    shutil.copy2(f, bin_dir / self.plugin_type)
                elif f.name == conf:
                    shutil.copy2(f, conf_dir / f.name)
                elif f.name == "routes.sh":
                    shutil.copy2(f, podnet_dir / f.name)
                else:  # node-side helpers (e.g. the IPAM fallback) sit beside the plugin
                    shutil.copy2(f, bin_dir / f.name)
            shutil.copy2(self.out / "routes.table", podnet_dir / "routes.table")
        if self.router:
            (self.router.root / "etc/podnet").mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.out / "router/routes.sh", self.router.root / "etc/podnet/routes.sh")
            shutil.copy2(self.out / "routes.table", self.router.root / "etc/podnet/routes.table")

    def mounts(self, m: Machine) -> str:
        """PODNET_VERIFY_MOUNTS for a node: its private /var/lib/cni (and dataDir when
        that lies elsewhere) over the real paths."""
        pairs = [f"{m.root / 'state/cni'}=/var/lib/cni"]
        data_dir = self.topo.network.data_dir.rstrip("/")
        if data_dir != "/var/lib/cni" and not data_dir.startswith("/var/lib/cni/"):
            pairs.append(f"{m.root / 'state/data'}={data_dir}")
        return "\n".join(pairs)

    def lease_dir(self, m: Machine) -> Path:
        data_dir = self.topo.network.data_dir.rstrip("/")
        if data_dir == "/var/lib/cni" or data_dir.startswith("/var/lib/cni/"):
            base = m.root / "state/cni" / os.path.relpath(data_dir, "/var/lib/cni")
        else:
            base = m.root / "state/data"
        return base / self.topo.network.name

    def make_mount_points(self) -> None:
        """The host paths bind-mounted over (inside private mount namespaces only) must
        exist. One made here stays, empty: removing it could pull it from under a
        parallel run that is still mounting over it."""
        targets = {pair.split("=", 1)[1] for m in self.nodes for pair in self.mounts(m).split("\n")}
        for target in sorted(targets):
            os.makedirs(target, exist_ok=True)

    # -- 2. the namespaces and the underlay

    def netns_batch(self, verb: str, names: Sequence[str]) -> subprocess.CompletedProcess:
        return self.runner.run(["ip", "-force", "-batch", "-"], input="".join(f"netns {verb} {n}\n" for n in names))

    def build_underlay(self) -> None:
        machines = self.nodes + ([self.router] if self.router else [])
        names = [self.underlay_ns] + [m.netns for m in machines]
        self.created_ns += names
        res = self.netns_batch("add", names)
        if res.returncode != 0:
            raise VerifyError(f"could not create namespaces: {res.stderr.strip()}")
        lines = [f"link add {UNDERLAY_BRIDGE} type bridge", f"link set {UNDERLAY_BRIDGE} up", "link set lo up"]
        for i, m in enumerate(machines):
            m.mac = "02:70:76:%02x:%02x:%02x" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
            lines += [f"link add {m.underlay_port} type veth peer name {m.interface} address {m.mac} netns {m.netns}", f"link set {m.underlay_port} master {UNDERLAY_BRIDGE}", f"link set {m.underlay_port} up"]
        self._batch(self.underlay_ns, lines, "underlay")
        # Static neighbour entries on the underlay: the kernel's ARP table is shared by
        # all namespaces and holds about 1024 learned entries (gc_thresh3), which a flat
        # L2 of 50 nodes (2,450 pairs) would overflow and then drop packets; permanent
        # entries do not count against that limit. Pods and bridges still use ARP.
        # IPv6 neighbours likewise (NDP would work, but the entries keep both families alike).
        for m in machines:
            neigh = [f"neigh replace {a} lladdr {o.mac} dev {m.interface} nud permanent" for o in machines if o is not m for a in o.addresses]
            addrs = [self._addr_line(m, a) for a in m.addresses]
            self._batch(m.netns, ["link set lo up", *addrs, f"link set {m.interface} up", *neigh], m.name)

    def _addr_line(self, m: Machine, address: str) -> str:
        """`ip -batch` line giving m's underlay interface this address; IPv6 without DAD
        (a tentative address is not a usable next hop or source for a second or more)."""
        version = ipaddress.ip_address(address).version
        return f"addr add {address}/{self.prefixlens[version]} dev {m.interface}" + (" nodad" if version == 6 else "")

    def _batch(self, netns: str, lines: List[str], what: str) -> None:
        res = self.runner.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n")
        if res.returncode != 0:
            raise VerifyError(f"could not build the {what} namespace: {res.stderr.strip()}")

    # -- 3. pods through the plugin

    @staticmethod
    def plugin_conf(m: Machine, prev: Optional[dict]) -> dict:
        """The plugin's network configuration, as libcni builds it from the node's conflist."""
        if "plugins" in m.conf:
            conf = {**m.conf["plugins"][0], "cniVersion": m.conf["cniVersion"], "name": m.conf["name"]}
        else:
            conf = dict(m.conf)
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def cni(self, m: Machine, command: str, pods: List[Pod]) -> Dict[str, Tuple[int, str, str]]:
        """Runs the plugin for every pod of the list on node m; (rc, stdout, stderr) per container."""
        work = m.root / "work"
        args: List[str] = []
        for p in pods:
            prev = p.result if command in ("CHECK", "DEL") and self.version_at_least("0.4.0") else None
            (work / f"{p.container_id}.{command}.in").write_text(json.dumps(self.plugin_conf(m, prev)))
            args += [p.container_id, f"/run/netns/{p.netns}"]
        env = dict(os.environ, PODNET_VERIFY_MOUNTS=self.mounts(m))
        res = self.on_node(m, ["/bin/sh", "-c", RUNTIME_SCRIPT, "runtime", command, str(m.root / "opt/cni/bin" / self.plugin_type), str(m.root / "opt/cni/bin"), str(work), *args], env=env)
        out = {}
        for p in pods:
            base = f"{p.container_id}.{command}"
            try:
                rc = int((work / f"{base}.rc").read_text().strip() or "-1")
                stdout = (work / f"{base}.out").read_text()
                stderr = (work / f"{base}.err").read_text()
            except (OSError, ValueError):
                rc, stdout, stderr = -1, "", res.stderr.strip() or "the plugin did not run"
            out[p.container_id] = (rc, stdout, stderr)
        return out

    def version_at_least(self, v: str) -> bool:
        return tuple(map(int, self.conf["cniVersion"].split("."))) >= tuple(map(int, v.split(".")))

    def add_pods(self) -> None:
        self.created_ns += [p.netns for p in self.all_pods()]
        res = self.netns_batch("add", [p.netns for p in self.all_pods()])
        if res.returncode != 0:
            raise VerifyError(f"could not create pod namespaces: {res.stderr.strip()}")
        self.parallel("pods added (nodes done)", self.nodes, self._add_node_pods)

    def _add_node_pods(self, m: Machine) -> None:
        results = self.cni(m, "ADD", m.pods)
        for p in m.pods:
            rc, out, err = results[p.container_id]
            addresses = result_addresses(out) if rc == 0 else []
            if rc == 0 and len(addresses) == len(self.report.families):
                p.added, p.address, p.addresses, p.result = True, addresses[0], addresses, json.loads(out)
            elif rc == 0:
                self.report.problems.append(f"{p.name}: ADD returned {len(addresses)} address(es), expected one per family ({len(self.report.families)})")
            else:
                self.report.problems.append(f"{p.name}: ADD failed (exit {rc}): {plugin_error(out, err)}")
        self.report.note(m.name, "pods", f"{sum(p.added for p in m.pods)}/{len(m.pods)}")

    def check_pods(self) -> None:
        if not self.version_at_least("0.4.0"):
            return
        self.parallel("pods checked (nodes done)", self.nodes, self._check_node_pods)

    def _check_node_pods(self, m: Machine) -> None:
        pods = [p for p in m.pods if p.added]
        results = self.cni(m, "CHECK", pods) if pods else {}
        bad = 0
        for p in pods:
            rc, out, err = results[p.container_id]
            if rc != 0:
                bad += 1
                self.report.problems.append(f"{p.name}: CHECK failed (exit {rc}): {plugin_error(out, err)}")
        self.report.note(m.name, "check", "ok" if not bad else f"{bad} failed")

    def del_pods(self) -> None:
        self.parallel("pods deleted (nodes done)", self.nodes, self._del_node_pods)

    def _del_node_pods(self, m: Machine) -> None:
        results = self.cni(m, "DEL", m.pods)  # every pod, also those whose ADD failed
        for p in m.pods:
            rc, out, err = results[p.container_id]
            if rc != 0:
                self.report.problems.append(f"{p.name}: DEL failed (exit {rc}): {plugin_error(out, err)}")

    # -- 4. routes

    def routes(self, action: str) -> None:
        machines = ([self.router] if self.router else []) + self.nodes
        results = self.parallel(f"routes.sh {action} (machines done)", machines, lambda m: (m, self.on_node(m, ["/bin/sh", str(m.root / "etc/podnet/routes.sh"), action])))
        for m, res in results:
            if res.returncode == 0:
                self.report.note(m.name, "routes", "ok")
                continue
            self.report.note(m.name, "routes", "DRIFT" if action == "check" else "FAILED")
            lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
            self.report.problems.append(f"{m.name}: routes.sh {action} failed (exit {res.returncode})" + "".join(f"\n    {line}" for line in lines))

    # -- 5. reachability

    def reachability(self) -> None:
        """Every selected pod pair, and every pod -> other node target, once per family
        (pods and nodes list their addresses in the same family order)."""
        pods_by_node = [[p for p in m.pods if p.added] for m in self.nodes]
        pairs, total = select_pairs(pods_by_node, self.max_pairs)
        node_targets = select_node_targets(pods_by_node, [(m.name, m.address) for m in self.nodes])
        families = len(self.report.families)
        self.report.pairs_total, self.report.pairs_tested = total * families, len(pairs) * families
        self.report.node_pings = len(node_targets) * families
        node_addresses = {m.name: m.addresses for m in self.nodes}
        # per source pod: (address, destination node, destination label, is a node address, source address)
        targets: Dict[str, List[Tuple[str, str, str, bool, str]]] = {}
        by_ns = {p.netns: p for p in self.all_pods()}
        for src, dst in pairs:
            for src_address, address in zip(src.addresses, dst.addresses):
                targets.setdefault(src.netns, []).append((address, dst.node, dst.name, False, src_address))
        for src, (node_name, _) in node_targets:
            for src_address, address in zip(src.addresses, node_addresses[node_name]):
                targets.setdefault(src.netns, []).append((address, node_name, f"node {node_name}", True, src_address))
        per_family = f" x {families} families" if families > 1 else ""
        self.progress.say(f"pinging: {len(pairs)} of {total} pod pairs and {len(node_targets)} pod -> other node addresses{per_family}, from {len(targets)} pods")
        # Pod to pod first, each node counting the echo requests for its pods from
        # outside the pod range: a reply proves nothing about addresses when the traffic
        # was masqueraded on the way (which also hides a missing route back). Pod to node
        # addresses then, which masquerade may rightly rewrite.
        pools4 = [str(p.cidr) for p in self.topo.network.pools if p.family == 4]
        count = bool(pools4) and bool(shutil.which("iptables"))
        if count:
            self.parallel("nodes' counters set", self.nodes, lambda m: self._foreign_packets(m, pools4, add=True))
        to_pods = {ns: [t for t in ts if not t[3]] for ns, ts in targets.items()}
        results = self.parallel("pods done pinging pods", sorted(to_pods), lambda ns: (ns, to_pods[ns], self._ping(ns, to_pods[ns])))
        if count:
            for m, packets in zip(self.nodes, self.parallel("nodes' counters read", self.nodes, lambda m: self._foreign_packets(m, pools4))):
                if packets:
                    self.report.problems.append(f"{m.name}: {packets} packet(s) for its pods came from outside the pod range while pods pinged pods: pod-to-pod traffic was masqueraded on the way")
        to_nodes = {ns: [t for t in ts if t[3]] for ns, ts in targets.items() if any(t[3] for t in ts)}
        results += self.parallel("pods done pinging nodes", sorted(to_nodes), lambda ns: (ns, to_nodes[ns], self._ping(ns, to_nodes[ns])))
        r = self.report
        for ns, pinged, replies in results:
            src = by_ns[ns]
            for address, dst_node, dst_label, is_node, src_address in pinged:
                good = replies.get(address) == "ok"
                if is_node:
                    r.node_pings_ok += good
                    r.count(src.node, "to_nodes", good)
                else:
                    r.pairs_ok += good
                    r.count(src.node, "out", good)
                    r.count(dst_node, "in", good)
                if not good:
                    r.failing_pairs.append((f"{src.name} {src_address}", f"{dst_label} {address}"))

    def _foreign_packets(self, m: Machine, pools: List[str], add: bool = False) -> int:
        """Counts, in node m's FORWARD chain, IPv4 echo requests to its pods from outside
        the pod range (a counting rule per range, no target): while pods ping pods there
        are none, unless a node on the way masqueraded them (an ICMP error from a router
        on the way is no echo request). With `add`, puts the rules in."""
        rules = [["!", "-s", pool, "-d", pool, "-p", "icmp", "-m", "icmp", "--icmp-type", "echo-request", "-m", "comment", "--comment", "podnet-verify"] for pool in pools]
        if add:
            for rule in rules:
                self.runner.run(["ip", "netns", "exec", m.netns, "iptables", "-w", "-I", "FORWARD", "1", *rule])
            return 0
        res = self.runner.run(["ip", "netns", "exec", m.netns, "iptables", "-w", "-S", "FORWARD", "-v"])
        packets = 0
        for line in res.stdout.splitlines():
            words = line.split()
            if "podnet-verify" in line and "-c" in words:
                packets += int(words[words.index("-c") + 1])
        return packets

    def _ping(self, netns: str, targets: List[Tuple[str, str, str, bool, str]]) -> Dict[str, str]:
        """Pings every target address once from the pod; {address: "ok" | "fail"}."""
        ping = self.ping or f"{shutil.which('busybox') or 'busybox'} ping"
        addresses = sorted({t[0] for t in targets})
        res = self.runner.run(["ip", "netns", "exec", netns, "/bin/sh", "-c", PING_SCRIPT, "ping", *addresses], env=dict(os.environ, PING=ping))
        replies = {}
        for line in res.stdout.splitlines():
            word, _, address = line.partition(" ")
            replies[address] = word
        return replies

    # -- 6. leaks

    def leaks(self) -> None:
        self.parallel("nodes checked for leaks", self.nodes, self._node_leaks)

    def _node_leaks(self, m: Machine) -> None:
        found: List[str] = []
        links = self.runner.run(["ip", "-n", m.netns, "-o", "link", "show", "type", "veth"]).stdout
        veths = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line]
        found += [f"veth {v} left on the node" for v in veths if v != m.interface]
        store = self.lease_dir(m)
        if store.is_dir():
            found += [f"lease {f.name} left in {self.topo.network.data_dir}/{self.topo.network.name}" for f in sorted(store.iterdir()) if not f.name.startswith(LEASE_HOUSEKEEPING)]
        for p in m.pods:
            pod_links = self.runner.run(["ip", "-n", p.netns, "-o", "link", "show"]).stdout
            names = [line.split(":")[1].strip().split("@")[0] for line in pod_links.splitlines() if ":" in line]
            found += [f"interface {n} left in {p.name}" for n in names if n != "lo"]
        if masquerades(self.topo):  # IPv4's only: see plan.masquerades
            subnet = next(s for s in m.subnets if ":" not in s)
            rules = self.on_node(m, ["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).stdout
            masq = [r for r in rules.splitlines() if "MASQUERADE" in r and subnet in r]
            if len(masq) > 1:
                found.append(f"{len(masq)} masquerade rules for {subnet} (one expected)")
        self.report.note(m.name, "leaks", "none" if not found else f"{len(found)}")
        self.report.problems += [f"{m.name}: leaked {what}" for what in found]

    # -- 7. teardown

    def teardown(self) -> None:
        """Removes every namespace of this run (also any the batch half-made) and the
        work directory."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        ours = [line.split()[0] for line in listed.splitlines() if line.startswith(self.prefix)]
        names = sorted(set(ours))
        if names:
            subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names), capture_output=True, text=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def write_cleanup_script(self) -> Path:
        path = self.workdir / "cleanup.sh"
        names = " ".join(sorted(set(self.created_ns)))
        path.write_text(f"#!/bin/sh\n# Removes what `podnet verify --keep` left (run {self.token}).\nfor ns in {names}; do ip netns del \"$ns\" 2>/dev/null; done\nrm -rf '{self.workdir}'\n")
        path.chmod(0o755)
        return path


# ---------------------------------------------------------------------------- pure parts


def underlay_prefix(addresses: Sequence) -> int:
    """The longest prefix whose network holds every address, none of them being the
    network's broadcast address (/31 and /32 have none). A host on the network's own
    address is fine for Linux."""
    addrs = [ipaddress.ip_address(a) for a in addresses]
    bits = addrs[0].max_prefixlen
    for prefix in range(bits, -1, -1):
        net = ipaddress.ip_network((addrs[0], prefix), strict=False)
        broadcast = None if prefix >= bits - 1 or net.version == 6 else net.broadcast_address
        if all(a in net and a != broadcast for a in addrs):
            return prefix
    return 0


def select_pairs(pods_by_node: List[List], max_pairs: int) -> Tuple[List[Tuple], int]:
    """(pairs to ping, number of all pairs). All ordered pod pairs when at most
    max_pairs; else every pair within a node, and for every ordered node pair (A, B)
    as many pairs as the budget allows, at least one, the pods rotating so that every
    pod is a source and a target."""
    pods = [p for group in pods_by_node for p in group]
    total = len(pods) * (len(pods) - 1)
    if total <= max_pairs:
        return [(a, b) for a in pods for b in pods if a is not b], total
    n = len(pods_by_node)
    pairs = [(a, b) for group in pods_by_node for a in group for b in group if a is not b]
    node_pairs = [(i, j) for i in range(n) for j in range(n) if i != j and pods_by_node[i] and pods_by_node[j]]
    per = max(1, (max_pairs - len(pairs)) // max(1, len(node_pairs)))
    for i, j in node_pairs:
        src, dst = pods_by_node[i], pods_by_node[j]
        combos = [(a, b) for a in src for b in dst]
        start = (j % len(src)) * len(dst) + i % len(dst)  # rotates which pods take part
        pairs += [combos[(start + t) % len(combos)] for t in range(min(per, len(combos)))]
    return pairs, total


def select_node_targets(pods_by_node: List[List], nodes: List[Tuple[str, str]]) -> List[Tuple]:
    """For every ordered node pair (A, B): one pod of A (rotating) pings B's address.
    Returns (pod, (B's name, B's address)) pairs."""
    out = []
    for i, group in enumerate(pods_by_node):
        if not group:
            continue
        for j, (name, address) in enumerate(nodes):
            if j != i:
                out.append((group[j % len(group)], (name, address)))
    return out


def result_address(stdout: str) -> str:
    """The pod's (first) address from an ADD result: 0.3.0+ `ips`, 0.2.0 `ip4`/`ip6`."""
    addresses = result_addresses(stdout)
    return addresses[0] if addresses else ""


def result_addresses(stdout: str) -> List[str]:
    """Every address of an ADD result, in its order: 0.3.0+ `ips`, 0.2.0 `ip4` then `ip6`."""
    try:
        result = json.loads(stdout)
        if result.get("ips"):
            return [ip["address"].split("/")[0] for ip in result["ips"]]
        return [result[k]["ip"].split("/")[0] for k in ("ip4", "ip6") if k in result]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        pass
    return []


def plugin_error(stdout: str, stderr: str) -> str:
    try:
        err = json.loads(stdout)
        text = f"{err.get('msg', '')}" + (f" ({err['details']})" if err.get("details") else "")
        if text:
            return text
    except (ValueError, AttributeError):
        pass
    return (stderr.strip() or stdout.strip() or "no output").splitlines()[-1]


# ---------------------------------------------------------------------------- entry


def preflight(topo: Topology) -> None:
    if os.geteuid() != 0:
        raise VerifyError("needs root: it creates network namespaces, links and routes (all inside namespaces it removes afterwards); run it as root, e.g. `sudo podnet verify TOPOLOGY`")
    needed = ["ip", "mount"] + (["iptables"] if masquerades(topo) else [])
    missing = [c for c in needed if not shutil.which(c)]
    if not shutil.which("ping") and not shutil.which("busybox"):
        missing.append("ping")
    if missing:
        raise VerifyError(f"missing {', '.join(missing)} on PATH; install iproute2, util-linux, iputils-ping{', iptables' if masquerades(topo) else ''}")
    res = subprocess.run(["ip", "-V"], capture_output=True, text=True)
    if "iproute2" not in res.stdout + res.stderr:
        raise VerifyError("`ip` on PATH is not iproute2's; install iproute2")


def run(topology: str, pods_per_node: int = 2, keep: bool = False, max_pairs: int = DEFAULT_MAX_PAIRS, quiet: bool = False, out=None, after_routes: Optional[Callable[[Cluster], None]] = None) -> Tuple[bool, Cluster]:
    """The whole verify run; prints the report on `out` (stdout). Returns (passed, cluster).
    `after_routes` is a test hook, called once routes are up (e.g. to break a route)."""
    out = out or sys.stdout
    doc = load_file(topology)
    topo = build(doc)
    preflight(topo)
    progress = Progress(quiet=quiet)
    workdir = Path(tempfile.mkdtemp(prefix="podnet-verify-", dir=_work_base(topo.network.data_dir)))
    cluster = Cluster(topo, pods_per_node, max_pairs, keep, progress, workdir)
    # SIGTERM and SIGHUP (a dropped SSH session) end the run as ^C does: torn down
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    interrupted = False
    try:
        progress.say(f"run {cluster.token}: {len(topo.nodes)} nodes x {pods_per_node} pods, routing {topo.network.routing}, work dir {workdir}")
        cluster.compile(doc.text.encode())
        cluster.install()
        cluster.make_mount_points()
        progress.say(f"building the underlay ({cluster.underlay_ns}, /{cluster.prefixlen}) and {len(cluster.nodes)} node namespaces" + (" and the router" if cluster.router else ""))
        cluster.build_underlay()
        progress.say(f"adding {len(cluster.all_pods())} pods through the plugin ({cluster.plugin_type}, CNI {cluster.conf['cniVersion']})")
        cluster.add_pods()
        cluster.routes("up")
        if after_routes:
            after_routes(cluster)
        cluster.routes("check")
        cluster.check_pods()
        cluster.reachability()
        if not keep:
            cluster.del_pods()
            cluster.leaks()
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        cluster.runner.abort()
        raise KeyboardInterrupt()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
        try:
            if keep and not interrupted:
                script = cluster.write_cleanup_script()
                # said even with --quiet: it is the only way to learn how to remove them
                print(f"podnet verify: kept {len(set(cluster.created_ns))} namespaces named {cluster.prefix}* and the files in {workdir}; remove them with: sh {script}", file=sys.stderr)
            else:
                progress.say("removing every namespace of this run")
                cluster.teardown()
        finally:
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
    print_report(cluster, out)
    return cluster.report.ok, cluster


def _work_base(data_dir: str) -> Optional[str]:
    """Where the run's work directory goes: the system's temp directory, unless that is
    inside the topology's dataDir, which each node sees its own (bind-mounted) copy of."""
    data = os.path.realpath(data_dir)

    def hidden(path: str) -> bool:
        return os.path.commonpath([path, data]) == data

    tmp = os.path.realpath(tempfile.gettempdir())
    if not hidden(tmp):
        return None
    bases = (os.path.realpath(b) for b in ("/var/tmp", "/run", "/dev/shm"))
    return next((b for b in bases if os.path.isdir(b) and os.access(b, os.W_OK) and not hidden(b)), None)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()


def print_report(c: Cluster, out) -> None:
    r = c.report
    topo = c.topo
    print(f"podnet verify {topo.source}: {len(topo.nodes)} nodes x {c.pods_per_node} pods, routing {topo.network.routing}, masquerade {'on' if masquerades(topo) else 'off'}, CNI {c.conf.get('cniVersion', '?')}", file=out)
    print("", file=out)
    header = ("node", "subnet", "pods", "routes", "CHECK", "pod->pod out", "pod->pod in", "pod->nodes", "leaks")
    rows = [header]
    for m in ([c.router] if c.router else []) + c.nodes:
        s = r.per_node.get(m.name, {})
        rows.append((m.name, " ".join(m.subnets) or " ".join(m.addresses), s.get("pods", "-"), s.get("routes", "-"), s.get("check", "-"), s.get("out", "-"), s.get("in", "-"), s.get("to_nodes", "-"), s.get("leaks", "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    print("", file=out)
    sampled = "all" if r.pairs_tested == r.pairs_total else "sampled, every node pair both ways"
    n = len(r.families)
    families = f" x {n} families ({', '.join(f'IPv{v}' for v in r.families)})" if n > 1 else f" over IPv{r.families[0]}" if r.families != (4,) else ""
    print(f"pod -> pod: {r.pairs_ok}/{r.pairs_tested} replied ({r.pairs_tested // n} of {r.pairs_total // n} pairs{families}, {sampled})", file=out)
    print(f"pod -> other nodes' addresses: {r.node_pings_ok}/{r.node_pings} replied{families}", file=out)
    if r.failing_pairs:
        print(f"failing pairs ({len(r.failing_pairs)}):", file=out)
        for src, dst in r.failing_pairs:
            print(f"  {src} -> {dst}: no reply", file=out)
    if r.problems:
        print(f"problems ({len(r.problems)}):", file=out)
        for p in r.problems:
            print(f"  {p}", file=out)
    elapsed = time.monotonic() - c.progress.start
    print(f"{'PASS' if r.ok else 'FAIL'} in {elapsed:.1f}s", file=out)
