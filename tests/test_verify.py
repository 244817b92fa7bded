"""`podnet verify`: pure parts (pair sampling, underlay prefix, result parsing), and
whole runs in namespaces: the example, 10 nodes, router mode, a deliberately removed
route, SIGTERM cleanup, the root check.

The engine is also run once with the reference bridge + host-local standing in for
podnet's plugin (test-only, `reference_plugin`): it separates "verify is wrong" from
"the plugin is wrong" when a podnet run fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import REPO, have, is_root, podnet, write_topology

sys.path.insert(0, str(REPO))
from compiler import verify  # noqa: E402

EXAMPLE = str(REPO / "examples" / "cluster.yaml")
needs_root = pytest.mark.skipif(not (is_root() and have("ip", "iptables", "ping")), reason="needs root, iproute2, iptables, ping")


def topology(n: int, router: bool = False, masquerade: bool = True) -> str:
    net = "network:\n  podCIDR: 10.244.0.0/16\n" + ("" if masquerade else "  masquerade: false\n")
    if router:
        net += "  routing: router\n  router: 192.168.0.1\n"
    nodes = "".join(f"  - name: node{i + 1}\n    address: 192.168.0.{i + 2}\n" for i in range(n))
    return net + "nodes:\n" + nodes


def no_namespaces_left(prefix: str) -> bool:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return not [line for line in listed.splitlines() if line.startswith(prefix)]


def pair_nodes(report) -> set:
    return {(a.split("/")[0], b.split("/")[0]) for a, b in report.failing_pairs}


# ------------------------------------------------------------------ pure parts


def pods(counts):
    return [[SimpleNamespace(node=f"n{i}", index=k, address=f"10.0.{i}.{k + 2}") for k in range(c)] for i, c in enumerate(counts)]


def test_all_pairs_when_within_budget():
    groups = pods([2, 2, 2])
    pairs, total = verify.select_pairs(groups, 100)
    assert total == 30 and len(pairs) == 30 and len(set(map(lambda ab: (id(ab[0]), id(ab[1])), pairs))) == 30
    assert all(a is not b for a, b in pairs)


def test_sample_covers_every_node_pair_both_ways_and_every_pod():
    groups = pods([4] * 50)
    pairs, total = verify.select_pairs(groups, 5000)
    assert total == 200 * 199
    assert len(pairs) <= 5000 + 50 * 12  # the budget, plus pairs within nodes
    covered = {(a.node, b.node) for a, b in pairs}
    assert covered >= {(f"n{i}", f"n{j}") for i in range(50) for j in range(50) if i != j}
    sources = {(a.node, a.index) for a, _ in pairs}
    targets = {(b.node, b.index) for _, b in pairs}
    assert len(sources) == len(targets) == 200
    # a budget smaller than the node pairs still covers every node pair once
    pairs, _ = verify.select_pairs(groups, 10)
    assert {(a.node, b.node) for a, b in pairs if a.node != b.node} == {(f"n{i}", f"n{j}") for i in range(50) for j in range(50) if i != j}


def test_node_targets_cover_every_ordered_node_pair():
    groups = pods([2, 0, 3])
    nodes = [("n0", "192.168.0.2"), ("n1", "192.168.0.3"), ("n2", "192.168.0.4")]
    got = {(p.node, name) for p, (name, _) in verify.select_node_targets(groups, nodes)}
    assert got == {("n0", "n1"), ("n0", "n2"), ("n2", "n0"), ("n2", "n1")}  # n1 has no pods to ping from


@pytest.mark.parametrize(
    "addresses, expected",
    [
        (["192.168.1.2", "192.168.1.3", "192.168.1.4"], 29),
        (["192.168.1.2", "192.168.1.3"], 31),  # a /31 has no network or broadcast address
        (["10.0.0.1", "10.0.0.5", "10.0.0.2"], 29),
        (["10.0.0.0", "10.0.0.5"], 29),  # a host on the network address is fine
        (["10.0.0.4", "10.0.0.7"], 28),  # .7 is the broadcast address of the /29: widen
        (["10.0.0.7", "10.0.0.9"], 28),  # across a /29 boundary
    ],
)
def test_underlay_prefix(addresses, expected):
    import ipaddress

    got = verify.underlay_prefix(addresses)
    addrs = [ipaddress.ip_address(a) for a in addresses]

    def fits(prefix):
        net = ipaddress.ip_network((addrs[0], prefix), strict=False)
        broadcast = None if prefix >= 31 else net.broadcast_address
        return all(a in net and a != broadcast for a in addrs)

    assert fits(got) and not fits(got + 1)  # holds them all, and is the longest that does
    assert got == expected


def test_result_address_for_every_result_format():
    assert verify.result_address('{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.2/24"}]}') == "10.244.1.2"
    assert verify.result_address('{"cniVersion":"0.2.0","ip4":{"ip":"10.244.1.3/24"}}') == "10.244.1.3"
    assert verify.result_address('{"code":11,"msg":"no"}') == "" and verify.result_address("garbage") == ""
    assert verify.plugin_error('{"code":11,"msg":"pool full","details":"10.244.1.0/24"}', "") == "pool full (10.244.1.0/24)"
    assert verify.plugin_error("", "line one\nnet-setup.sh: boom\n") == "net-setup.sh: boom"


def test_refuses_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    topo = SimpleNamespace(network=SimpleNamespace(masquerade=True))
    with pytest.raises(verify.VerifyError, match=r"^needs root: .*run it as root"):
        verify.preflight(topo)


@pytest.mark.skipif(not (is_root() and have("setpriv")), reason="needs root to drop it")
def test_cli_without_root_says_so(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "compiler", "verify", EXAMPLE], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.startswith("podnet verify: needs root:") and "Traceback" not in res.stderr


def test_cli_usage():
    res = podnet("verify", EXAMPLE, "--pods-per-node", "0")
    assert res.returncode == 2 and "must be at least 1" in res.stderr


# ------------------------------------------------------------------ whole runs

# A test-only stand-in: podnet's config, handed to the reference bridge + host-local.
STAND_IN = """#!/usr/bin/env python3
import json, os, subprocess, sys
conf = json.load(sys.stdin)
conf["ipam"]["type"] = "host-local"
# (routes.sh masquerades each node's pods' traffic leaving the pod range; the reference's
# ipMasq would masquerade all that leaves its own node subnet, pod-to-pod across nodes
# too, which verify refuses)
conf["ipMasq"] = False
res = subprocess.run(["/usr/lib/cni/bridge"], input=json.dumps(conf).encode(), env=dict(os.environ, CNI_PATH="/usr/lib/cni"), stdout=subprocess.PIPE)
sys.stdout.buffer.write(res.stdout)
sys.exit(res.returncode)
"""


@pytest.fixture
def reference_plugin(monkeypatch):
    if not os.path.exists("/usr/lib/cni/bridge"):
        pytest.skip("needs containernetworking-plugins")
    install = verify.Cluster.install

    def with_stand_in(self):
        install(self)
        for m in self.nodes:
            path = m.root / "opt/cni/bin" / self.plugin_type
            path.write_text(STAND_IN.replace("/usr/bin/env python3", sys.executable, 1))
            path.chmod(0o755)

    monkeypatch.setattr(verify.Cluster, "install", with_stand_in)


def podnet_plugin_ready(tmp_path) -> bool:
    """Whether the compiled net-setup.sh speaks CNI (VERSION): until the plugin issue
    lands its CNI mode, the podnet-plugin runs below skip, naming why."""
    out = tmp_path / "probe"
    podnet("compile", EXAMPLE, "-o", str(out), check=True)
    res = subprocess.run(["/bin/sh", str(out / "nodes/node1/net-setup.sh")], env=dict(os.environ, CNI_COMMAND="VERSION"), input="{}", capture_output=True, text=True)
    return res.returncode == 0 and "supportedVersions" in res.stdout


@pytest.fixture
def podnet_plugin(tmp_path):
    if not podnet_plugin_ready(tmp_path):
        pytest.skip("the compiled net-setup.sh has no CNI mode yet (plugin issue)")


def run_verify(path, **kw):
    kw.setdefault("quiet", True)
    ok, cluster = verify.run(str(path), **kw)
    assert no_namespaces_left(cluster.prefix)
    return ok, cluster


@needs_root
@pytest.mark.netns
def test_engine_with_reference_plugin_example(reference_plugin, capsys):
    ok, cluster = run_verify(EXAMPLE, pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    assert "pod -> pod: 30/30 replied (30 of 30 pairs, all)" in out
    assert "pod -> other nodes' addresses: 6/6 replied" in out


@needs_root
@pytest.mark.netns
def test_engine_with_reference_plugin_names_the_removed_route(reference_plugin, capsys):
    ok, cluster = run_verify(EXAMPLE, pods_per_node=2, after_routes=remove_route("node2", "10.244.3.0/24"))
    out = capsys.readouterr().out
    assert not ok
    # both ways, as with podnet: the stand-in turns the reference's ipMasq off, which
    # masquerades pod traffic to other nodes' pods too and so hid the missing route one
    # way (the replies needed none); verify now fails such masquerading itself
    assert_exactly_that_route(cluster, out, {("node2", "node3"), ("node3", "node2")})


def remove_route(node: str, dst: str):
    def hook(cluster):
        m = next(m for m in cluster.nodes if m.name == node)
        subprocess.run(["ip", "-n", m.netns, "route", "del", dst], check=True)

    return hook


def assert_exactly_that_route(cluster, out, node_pairs):
    r = cluster.report
    assert pair_nodes(r) == node_pairs, r.failing_pairs
    assert r.pairs_ok == 30 - 4 * len(node_pairs)  # 2 pods x 2 pods per node pair
    route_problems = [p for p in r.problems if "routes.sh" in p]
    assert route_problems == ["node2: routes.sh check failed (exit 1)\n    missing route: 10.244.3.0/24 via 192.168.1.4 dev eth0\n    routes.sh check (node2): 1 problem(s); run `" + str(next(m for m in cluster.nodes if m.name == "node2").root / "etc/podnet/routes.sh") + " up` to repair (it removes only podnet's own extras)"]
    assert re.search(r"^node2 .* DRIFT ", out, re.M)
    assert "node2/pod0 10.244.2.2 -> node3/pod0 10.244.3.2: no reply" in out


@needs_root
@pytest.mark.netns
def test_verify_example_cli(podnet_plugin):
    res = podnet("verify", "examples/cluster.yaml", "--pods-per-node", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pod -> pod: 30/30 replied (30 of 30 pairs, all)" in res.stdout
    assert "pod -> other nodes' addresses: 6/6 replied" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1].startswith("PASS in ")
    token = re.search(r"run ([0-9a-f]{6}):", res.stderr).group(1)
    assert no_namespaces_left(f"pv-{token}-")
    for node in ("node1", "node2", "node3"):
        assert re.search(rf"^{node} +10\.244\.\d\.0/24 +2/2 +ok +ok +10/10 +10/10 +2/2 +none$", res.stdout, re.M), res.stdout


@needs_root
@pytest.mark.netns
@pytest.mark.slow
def test_verify_ten_nodes(tmp_path, podnet_plugin, capsys):
    ok, cluster = run_verify(write_topology(tmp_path, topology(10)), pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    assert cluster.report.pairs_ok == cluster.report.pairs_tested == 20 * 19
    assert cluster.report.node_pings_ok == 90


@needs_root
@pytest.mark.netns
def test_verify_router_mode(tmp_path, podnet_plugin, capsys):
    ok, cluster = run_verify(write_topology(tmp_path, topology(4, router=True)), pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    assert re.search(r"^router +192\.168\.0\.1 +- +ok ", out, re.M)
    assert cluster.report.pairs_ok == 8 * 7


@needs_root
@pytest.mark.netns
def test_router_mode_traffic_goes_through_the_router(tmp_path, podnet_plugin, capsys):
    """Removing one node's subnet from the router cuts exactly that node off."""

    def hook(cluster):
        subprocess.run(["ip", "-n", cluster.router.netns, "route", "del", "10.244.0.0/24"], check=True)

    ok, cluster = run_verify(write_topology(tmp_path, topology(3, router=True, masquerade=False)), pods_per_node=1, after_routes=hook)
    assert not ok
    # pod pairs to and from node1, and (masquerade off) node1's pods to other nodes'
    # addresses: the replies come back through the router too
    assert pair_nodes(cluster.report) == {("node1", "node2"), ("node1", "node3"), ("node2", "node1"), ("node3", "node1"), ("node1", "node node2 192.168.0.3"), ("node1", "node node3 192.168.0.4")}
    assert [p.splitlines()[:2] for p in cluster.report.problems] == [["router: routes.sh check failed (exit 1)", "    missing route: 10.244.0.0/24 via 192.168.0.2"]]


@needs_root
@pytest.mark.netns
def test_verify_names_the_removed_route(podnet_plugin, capsys):
    ok, cluster = run_verify(EXAMPLE, pods_per_node=2, after_routes=remove_route("node2", "10.244.3.0/24"))
    out = capsys.readouterr().out
    assert not ok
    # both ways: node3's pods reach node2's unmasqueraded, and the replies have no route
    assert_exactly_that_route(cluster, out, {("node2", "node3"), ("node3", "node2")})
    assert out.rstrip().splitlines()[-1].startswith("FAIL in ")


@needs_root
@pytest.mark.netns
def test_a_data_dir_holding_the_temp_dir(tmp_path, podnet_plugin, capsys):
    """dataDir: /tmp is every node's own (bind-mounted) /tmp: the run's work directory
    goes elsewhere, so the nodes still reach it."""
    text = topology(2).replace("network:\n", "network:\n  dataDir: /tmp\n", 1)
    ok, cluster = run_verify(write_topology(tmp_path, text), pods_per_node=1)
    out = capsys.readouterr().out
    assert ok, out
    assert not str(cluster.workdir).startswith("/tmp/")


@needs_root
@pytest.mark.netns
def test_masqueraded_pod_to_pod_traffic_fails(podnet_plugin, capsys):
    """Replies prove nothing when pod-to-pod traffic is masqueraded on the way (a wrong
    masquerade rule; it also hides a missing route back): while pods ping pods, each
    node counts the packets for its pods that come from outside the pod range, and
    verify fails naming the nodes that received such packets."""

    def hook(cluster):
        node = cluster.nodes[0]
        subnet = str(cluster.topo.node(node.name).subnet)
        subprocess.run(["ip", "netns", "exec", node.netns, "iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "-s", subnet, "-j", "MASQUERADE"], check=True)

    ok, cluster = run_verify(EXAMPLE, pods_per_node=1, after_routes=hook)
    out = capsys.readouterr().out
    assert not ok, out
    assert cluster.report.pairs_ok == cluster.report.pairs_tested, "the pings themselves all got replies"
    others = {m.name for m in cluster.nodes[1:]}
    flagged = {p.split(":")[0] for p in cluster.report.problems if "came from outside the pod range while pods pinged pods" in p}
    assert flagged == others, cluster.report.problems


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_removes_everything(tmp_path, signum):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "compiler", "verify", EXAMPLE], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "adding" in line:  # the namespaces exist now
                break
        token = re.search(r"run ([0-9a-f]{6}):", "".join(lines)).group(1)
        workdir = re.search(r"work dir (\S+)", "".join(lines)).group(1)
        assert not no_namespaces_left(f"pv-{token}-")
        proc.send_signal(signum)  # SIGINT: what Ctrl-C sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "podnet verify: interrupted" in err
    assert no_namespaces_left(f"pv-{token}-")
    assert not os.path.exists(workdir)


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("version", ["0.2.0", "0.4.0"])
def test_verify_older_cni_versions(tmp_path, podnet_plugin, capsys, version):
    """0.2.0: a .conf and `ip4` results, no CHECK; 0.4.0: a conflist with CHECK and prevResult."""
    text = (REPO / "examples/cluster.yaml").read_text().replace('cniVersion: "1.0.0"', f'cniVersion: "{version}"')
    ok, cluster = run_verify(write_topology(tmp_path, text), pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    assert f"CNI {version}" in out and cluster.report.pairs_ok == 30
    assert re.search(r"^node1 .* 2/2 +ok +" + ("-" if version == "0.2.0" else "ok") + " ", out, re.M), out


@needs_root
@pytest.mark.netns
def test_leaks_are_found(podnet_plugin, capsys):
    """A lease and a veth the plugin does not know about are reported as leaks."""

    def plant(cluster):
        m = cluster.nodes[0]
        store = cluster.lease_dir(m)
        store.mkdir(parents=True, exist_ok=True)
        (store / "10.244.1.200").write_text("someone-else\r\neth0")
        subprocess.run(["ip", "-n", m.netns, "link", "add", "vleak0", "type", "veth", "peer", "name", "vleak1"], check=True)

    ok, cluster = run_verify(EXAMPLE, pods_per_node=1, after_routes=plant)
    assert not ok
    assert cluster.report.failing_pairs == []
    assert sorted(cluster.report.problems) == [
        "node1: leaked lease 10.244.1.200 left in /var/lib/cni/networks/podnet",
        "node1: leaked veth vleak0 left on the node",
        "node1: leaked veth vleak1 left on the node",
    ]


@needs_root
@pytest.mark.netns
def test_keep_leaves_the_cluster_and_says_how_to_remove_it(podnet_plugin, capsys):
    ok, cluster = verify.run(EXAMPLE, pods_per_node=1, keep=True, quiet=True)
    try:
        assert ok
        pod = cluster.nodes[0].pods[0]
        assert subprocess.run(["ip", "-n", pod.netns, "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True).stdout.split()[3] == pod.address + "/24"
    finally:
        subprocess.run(["sh", str(cluster.workdir / "cleanup.sh")], check=True)
    assert no_namespaces_left(cluster.prefix) and not cluster.workdir.exists()


@needs_root
@pytest.mark.netns
@pytest.mark.slow
def test_verify_fifty_nodes_four_pods(tmp_path, podnet_plugin, capsys):
    """The scale the issue asks for; the time is printed (-s), never asserted."""
    ok, cluster = run_verify(write_topology(tmp_path, topology(50)), pods_per_node=4)
    out = capsys.readouterr().out
    assert ok, out
    r = cluster.report
    assert r.pairs_total == 200 * 199 and r.pairs_ok == r.pairs_tested < r.pairs_total
    assert r.node_pings_ok == r.node_pings == 50 * 49
    nodes = {f"node{i + 1}" for i in range(50)}
    assert all(r.per_node[n]["pods"] == "4/4" and r.per_node[n]["leaks"] == "none" for n in nodes)
    with capsys.disabled():
        print(f"\n50 nodes x 4 pods: {out.strip().splitlines()[-1]}")


# ------------------------------------------------------------------ IPv6 and dual-stack


def topology_dual(n: int, router: bool = False, families=(4, 6), version: str = "1.0.0") -> str:
    """n nodes; pod ranges, addresses (and the router) in each of `families`, in that order."""
    pod = {4: "10.244.0.0/16", 6: '"fd00:10:244::/56"'}
    underlay = {4: "192.168.0.{}", 6: '"fd00::{:x}"'}

    def one_or_list(values):
        return values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"

    net = f'network:\n  cniVersion: "{version}"\n  podCIDR: {one_or_list([pod[f] for f in families])}\n'
    if router:
        net += f"  routing: router\n  router: {one_or_list([underlay[f].format(1) for f in families])}\n"
    nodes = "".join(f"  - name: node{i + 1}\n    address: {one_or_list([underlay[f].format(i + 2) for f in families])}\n" for i in range(n))
    return net + "nodes:\n" + nodes


def test_result_addresses_lists_every_family():
    assert verify.result_addresses('{"ips":[{"address":"10.244.1.2/24"},{"address":"fd00:10:244:1::2/64"}]}') == ["10.244.1.2", "fd00:10:244:1::2"]
    assert verify.result_addresses('{"ip4":{"ip":"10.244.1.3/24"},"ip6":{"ip":"fd00:10:244:1::3/64"}}') == ["10.244.1.3", "fd00:10:244:1::3"]
    assert verify.result_addresses('{"ip6":{"ip":"fd00:10:244:1::3/64"}}') == ["fd00:10:244:1::3"]
    assert verify.result_addresses("[]") == [] and verify.result_addresses("garbage") == []


def assert_both_families(cluster, n_pods: int, n_nodes: int) -> None:
    r = cluster.report
    assert r.families == (4, 6)
    assert r.pairs_ok == r.pairs_tested == 2 * n_pods * (n_pods - 1)
    assert r.node_pings_ok == r.node_pings == 2 * n_nodes * (n_nodes - 1)
    for m in cluster.nodes:
        for p in m.pods:
            v4, v6 = p.addresses
            assert v4.startswith("10.244.") and v6.startswith("fd00:10:244:"), p.addresses


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("version", ["1.0.0", "0.4.0", "0.2.0"])
def test_verify_dual_stack(tmp_path, podnet_plugin, capsys, version):
    """Every pod reaches every pod, and every other node, over IPv4 and over IPv6."""
    ok, cluster = run_verify(write_topology(tmp_path, topology_dual(3, version=version)), pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    assert_both_families(cluster, 6, 3)
    assert "pod -> pod: 60/60 replied (30 of 30 pairs x 2 families (IPv4, IPv6), all)" in out
    assert "pod -> other nodes' addresses: 12/12 replied x 2 families (IPv4, IPv6)" in out
    assert re.search(r"^node1 +10\.244\.0\.0/24 fd00:10:244::/64 +2/2 +ok ", out, re.M), out


@needs_root
@pytest.mark.netns
def test_verify_dual_stack_router_mode(tmp_path, podnet_plugin, capsys):
    ok, cluster = run_verify(write_topology(tmp_path, topology_dual(3, router=True)), pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    assert_both_families(cluster, 6, 3)
    assert re.search(r"^router +192\.168\.0\.1 fd00::1 +- +ok ", out, re.M), out


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("router", [False, True], ids=["static", "router"])
def test_verify_ipv6_only(tmp_path, podnet_plugin, capsys, router):
    ok, cluster = run_verify(write_topology(tmp_path, topology_dual(3, router=router, families=(6,))), pods_per_node=2)
    out = capsys.readouterr().out
    assert ok, out
    r = cluster.report
    assert r.families == (6,) and r.pairs_ok == r.pairs_tested == 30 and r.node_pings_ok == 6
    assert "masquerade off" in out  # nothing to masquerade: no iptables needed
    assert "pod -> pod: 30/30 replied (30 of 30 pairs over IPv6, all)" in out
    assert all(":" in p.address for p in cluster.all_pods())


@needs_root
@pytest.mark.netns
def test_verify_dual_stack_names_the_removed_ipv6_route(tmp_path, podnet_plugin, capsys):
    """Only IPv6 breaks: the IPv6 pings between exactly those nodes fail, IPv4 passes.
    Both ways, and node3's pods -> node2's address too: IPv6 is not masqueraded, so
    every reply to node3's pods needs the removed route."""
    ok, cluster = run_verify(write_topology(tmp_path, topology_dual(3)), pods_per_node=2, after_routes=remove_route("node2", "fd00:10:244:2::/64"))
    out = capsys.readouterr().out
    assert not ok
    r = cluster.report
    assert pair_nodes(r) == {("node2", "node3"), ("node3", "node2"), ("node3", "node node2 fd00::3")}, r.failing_pairs
    assert all(":" in a and ":" in b for a, b in r.failing_pairs)
    assert r.pairs_ok == 60 - 8 and r.node_pings_ok == 12 - 1
    assert "missing route: fd00:10:244:2::/64 via fd00::4 dev eth0" in "\n".join(r.problems)
    assert "node2/pod0 fd00:10:244:1::2 -> node3/pod0 fd00:10:244:2::2: no reply" in out


@needs_root
@pytest.mark.netns
def test_verify_dual_stack_example_cli(podnet_plugin):
    res = podnet("verify", "examples/dual-stack.yaml", "--pods-per-node", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pod -> pod: 60/60 replied (30 of 30 pairs x 2 families (IPv4, IPv6), all)" in res.stdout
    assert "pod -> other nodes' addresses: 12/12 replied x 2 families (IPv4, IPv6)" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1].startswith("PASS in ")
