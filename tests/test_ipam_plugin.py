"""IPAM through the whole compiled plugin (CNI mode), on a simulated node: a
network namespace of its own with a private /var/lib/cni, one namespace per pod.
64 parallel ADDs then DELs (several rounds, with and without flock), SIGKILL at
random moments, and /29 exhaustion as a CNI error object."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

import pytest

from helpers import have, podnet, sh, write_topology
from ipam_support import noflock_path

pytestmark = [pytest.mark.slow]

NETWORK = "ipamnet"
LEASE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def topology(node_prefix: int, subnet: str, version: str = "1.0.0") -> str:
    return f"""
network:
  name: {NETWORK}
  cniVersion: "{version}"
  podCIDR: 10.244.0.0/16
  nodePrefixLength: {node_prefix}
  bridge: ipambr0
  masquerade: false
nodes:
  - name: node1
    address: 192.168.1.2
    podCIDR: {subnet}
"""


class Node:
    """The compiled node1 in namespace `ns`; /var/lib/cni is `cni_dir` there."""

    def __init__(self, netns, tmp_path: Path, node_prefix: int = 24, subnet: str = "10.244.1.0/24", shell: str = "dash", flock: bool = True, version: str = "1.0.0"):
        out = tmp_path / "out"
        r = podnet("compile", str(write_topology(tmp_path, topology(node_prefix, subnet, version))), "-o", str(out))
        assert r.returncode == 0, r.stderr
        self.dir = out / "nodes" / "node1"
        conflist = json.loads(next(self.dir.glob("*.conflist")).read_text())
        self.conf = json.dumps({"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]})
        self.netns = netns
        self.ns = netns.add("node")
        self.cni_dir = tmp_path / "cni"
        self.cni_dir.mkdir()
        self.store = self.cni_dir / "networks" / NETWORK
        self.shell = ["busybox", "sh"] if shell == "busybox" else [shell]
        self.path = os.environ["PATH"] if flock else noflock_path()

    def start(self, command: str, cid: str, netns_path: str = "") -> subprocess.Popen:
        """The plugin as a runtime runs it, in its own process group."""
        env = dict(
            os.environ,
            PATH=self.path,
            CNI_COMMAND=command,
            CNI_CONTAINERID=cid,
            CNI_NETNS=netns_path,
            CNI_IFNAME="eth0",
            CNI_PATH=str(self.dir),
            PODNET_TEST_CNI_DIR=str(self.cni_dir),
            PODNET_TEST_PLUGIN=str(self.dir / "net-setup.sh"),
        )
        inner = " ".join(self.shell) + ' "$PODNET_TEST_PLUGIN"'
        wrapper = f'mount --bind "$PODNET_TEST_CNI_DIR" /var/lib/cni && exec {inner}'
        return subprocess.Popen(["ip", "netns", "exec", self.ns, "/bin/sh", "-c", wrapper], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run_all(self, procs: List[subprocess.Popen]) -> List[subprocess.CompletedProcess]:
        out = []
        for p in procs:
            stdout, stderr = p.communicate(self.conf, timeout=300)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        return out

    def leases(self) -> Dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.store.iterdir() if LEASE.match(p.name)} if self.store.exists() else {}

    def veths(self) -> List[str]:
        out = sh(["ip", "-n", self.ns, "-o", "link", "show", "type", "veth"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def pod_address(self, pod_ns: str) -> str:
        return sh(["ip", "-n", pod_ns, "-o", "-4", "addr", "show", "dev", "eth0"]).stdout


def plugin_ready() -> bool:
    """The compiled plugin speaks CNI (the plugin issue has landed)."""
    template = (Path(__file__).resolve().parent.parent / "templates" / "net-setup.sh.j2").read_text()
    return "plugin/ipam.sh.j2" in template


needs = pytest.mark.skipif(not (have("ip", "dash", "busybox") and plugin_ready()), reason="needs iproute2, dash, busybox and the CNI-mode plugin")


def added_address(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["ips"][0]["address"]


@needs
@pytest.mark.parametrize("shell,flock", [("dash", True), ("busybox", True), ("dash", False)], ids=["dash", "busybox", "dash-noflock"])
def test_64_parallel_adds_then_dels_through_the_plugin(netns, tmp_path, shell, flock):
    node = Node(netns, tmp_path, shell=shell, flock=flock)
    pods = [netns.add(f"p{i}") for i in range(64)]
    for rnd in range(2):
        cids = [f"r{rnd}pod{i}" for i in range(64)]
        results = node.run_all([node.start("ADD", cid, f"/run/netns/{ns}") for cid, ns in zip(cids, pods)])
        addrs = [added_address(r) for r in results]
        assert len(set(addrs)) == 64, "duplicate address"
        for ns, addr in zip(pods, addrs):
            assert f" {addr} " in node.pod_address(ns)
        assert node.leases() == {a.split("/")[0]: f"{cid}\r\neth0".encode() for a, cid in zip(addrs, cids)}
        assert len(node.veths()) == 64
        results = node.run_all([node.start("DEL", cid, f"/run/netns/{ns}") for cid, ns in zip(cids, pods)])
        assert [r.returncode for r in results] == [0] * 64, [r.stdout + r.stderr for r in results if r.returncode]
        assert node.leases() == {}
        assert node.veths() == []


@needs
@pytest.mark.parametrize("shell,flock", [("dash", True), ("dash", False)], ids=["dash", "dash-noflock"])
def test_exhausted_pool_is_an_error_object_and_changes_nothing(netns, tmp_path, shell, flock):
    node = Node(netns, tmp_path, node_prefix=29, subnet="10.244.1.0/29", shell=shell, flock=flock)
    pods = [netns.add(f"p{i}") for i in range(6)]
    results = node.run_all([node.start("ADD", f"pod{i}", f"/run/netns/{pods[i]}") for i in range(5)])
    assert sorted(added_address(r) for r in results) == [f"10.244.1.{n}/29" for n in range(2, 7)]
    before = {p.name: p.read_bytes() for p in node.store.iterdir()}
    veths = node.veths()
    [full] = node.run_all([node.start("ADD", "pod5", f"/run/netns/{pods[5]}")])
    assert full.returncode != 0
    err = json.loads(full.stdout)
    assert isinstance(err["code"], int) and err["code"] > 0
    assert "no free address" in err["msg"] + err.get("details", "")
    assert {p.name: p.read_bytes() for p in node.store.iterdir()} == before
    assert node.veths() == veths
    assert sh(["ip", "-n", pods[5], "-o", "link", "show", "eth0"], check=False).returncode != 0


@needs
@pytest.mark.parametrize("shell,flock", [("dash", True), ("dash", False)], ids=["dash", "dash-noflock"])
def test_sigkill_at_random_moments_then_del_cleans_the_node(netns, tmp_path, shell, flock):
    """Many ADDs through the plugin, process groups SIGKILLed at random moments.
    No address has two owners, the lock is free, and a DEL of every container
    leaves no lease and no veth."""
    node = Node(netns, tmp_path, shell=shell, flock=flock)
    pods = [netns.add(f"p{i}") for i in range(24)]
    rng = random.Random(7)
    killed: List[int] = []

    def kill(p: subprocess.Popen) -> None:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            killed.append(p.pid)

    # each chosen ADD is killed at its own moment, 0-40 ms after it started (an ADD
    # alone takes 6 ms; wherever it is then, in the wrapper or at any step of ADD)
    procs, timers = [], []
    for i, ns in enumerate(pods):
        procs.append(node.start("ADD", f"pod{i}", f"/run/netns/{ns}"))
        procs[-1].stdin.write(node.conf)
        procs[-1].stdin.close()
        if rng.random() < 0.6:
            timers.append(threading.Timer(rng.uniform(0, 0.04), kill, (procs[-1],)))
            timers[-1].start()
    for t in timers:
        t.join()
    for p in procs:
        p.stdin = None
        p.communicate(timeout=300)
    held = node.leases()
    assert len(set(held.values())) == len(held), "a container holds two leases"
    assert all(re.fullmatch(rb"pod\d+\r\neth0", v) for v in held.values())
    assert subprocess.run(["flock", "-n", str(node.store / "lock"), "true"]).returncode == 0 if node.store.exists() else True
    results = node.run_all([node.start("DEL", f"pod{i}", f"/run/netns/{ns}") for i, ns in enumerate(pods)])
    assert [r.returncode for r in results] == [0] * len(pods), [r.stdout + r.stderr for r in results if r.returncode]
    assert node.leases() == {}
    assert node.veths() == []
    assert killed, "no ADD was killed while it ran"


@needs
@pytest.mark.parametrize("shell,flock", [("dash", True), ("busybox", True), ("dash", False)], ids=["dash", "busybox", "dash-noflock"])
@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_cni_gc_releases_every_lease_not_in_the_valid_attachments(netns, tmp_path, shell, flock, key):
    """CNI 1.1 GC through the plugin: leases (and veths) of pods the runtime no
    longer knows are released -- also leftovers such as a lease whose ADD was
    never followed by a DEL -- and the listed ones stay."""
    node = Node(netns, tmp_path, shell=shell, flock=flock, version="1.1.0")
    pods = [netns.add(f"p{i}") for i in range(6)]
    results = node.run_all([node.start("ADD", f"pod{i}", f"/run/netns/{ns}") for i, ns in enumerate(pods)])
    addrs = [added_address(r) for r in results]
    node.store.joinpath("10.244.1.200").write_bytes(b"ghost\r\neth0")  # a sandbox lost without DEL
    keep = [{"containerID": f"pod{i}", "ifname": "eth0"} for i in (0, 2, 4)]
    gc_conf = dict(json.loads(node.conf), **{key: keep})
    proc = node.start("GC", "")
    stdout, stderr = proc.communicate(json.dumps(gc_conf), timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert node.leases() == {addrs[i].split("/")[0]: f"pod{i}\r\neth0".encode() for i in (0, 2, 4)}
    assert len(node.veths()) == 3


@needs
@pytest.mark.parametrize("flock", [True, False], ids=["flock", "noflock"])
def test_plugin_and_reference_host_local_allocate_concurrently_on_one_node(netns, tmp_path, flock):
    """The compiled plugin (CNI ADD/DEL) and /usr/lib/cni/host-local, both run on
    the node with the same /var/lib/cni, allocating at the same time from
    /var/lib/cni/networks/NETWORK: no duplicate, each releases its own."""
    if not os.path.exists("/usr/lib/cni/host-local"):
        pytest.skip("needs containernetworking-plugins")
    node = Node(netns, tmp_path, flock=flock)
    conf = json.loads(node.conf)
    hl_conf = json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"], "type": "host-local", "ipam": dict(conf["ipam"], type="host-local")})
    pods = [netns.add(f"p{i}") for i in range(24)]

    def host_local(command: str, cid: str, ns: str) -> subprocess.Popen:
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=f"/run/netns/{ns}", CNI_IFNAME="eth1", CNI_PATH="/usr/lib/cni", PODNET_TEST_CNI_DIR=str(node.cni_dir))
        wrapper = 'mount --bind "$PODNET_TEST_CNI_DIR" /var/lib/cni && exec /usr/lib/cni/host-local'
        p = subprocess.Popen(["ip", "netns", "exec", node.ns, "/bin/sh", "-c", wrapper], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdin.write(hl_conf)
        p.stdin.close()
        p.stdin = None
        return p

    ours = [node.start("ADD", f"pod{i}", f"/run/netns/{ns}") for i, ns in enumerate(pods)]
    theirs = [host_local("ADD", f"hl{i}", ns) for i, ns in enumerate(pods)]
    addrs = [added_address(r) for r in node.run_all(ours)]
    hl = []
    for p in theirs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
        hl.append(json.loads(out)["ips"][0]["address"])
    assert len(set(addrs + hl)) == 48, "duplicate address between the plugin and host-local"
    expected = {a.split("/")[0]: f"pod{i}\r\neth0".encode() for i, a in enumerate(addrs)}
    expected.update({a.split("/")[0]: f"hl{i}\r\neth1".encode() for i, a in enumerate(hl)})
    assert node.leases() == expected
    dels = [host_local("DEL", f"hl{i}", ns) for i, ns in enumerate(pods)]
    results = node.run_all([node.start("DEL", f"pod{i}", f"/run/netns/{ns}") for i, ns in enumerate(pods)])
    assert [r.returncode for r in results] == [0] * 24
    for p in dels:
        p.communicate(timeout=120)
        assert p.returncode == 0
    assert node.leases() == {}
    assert node.veths() == []


@needs
def test_plugin_add_with_flock_never_starts_python(netns, tmp_path):
    if not have("strace"):
        pytest.skip("needs strace")
    node = Node(netns, tmp_path)
    node.shell = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(tmp_path / "trace"), "dash"]
    pod = netns.add("p0")
    for command in ("ADD", "DEL"):
        [r] = node.run_all([node.start(command, "pod0", f"/run/netns/{pod}")])
        assert r.returncode == 0, r.stdout + r.stderr
        execs = re.findall(r'execve\("([^"]+)"', (tmp_path / "trace").read_text())
        assert "flock" in {os.path.basename(e) for e in execs}, execs
        assert not [e for e in execs if "python" in os.path.basename(e)], (command, execs)
