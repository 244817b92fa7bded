"""routes.sh (node and router) and routes.table: generated text, shellcheck, and
real runs in network namespaces under dash and busybox ash.

Every route lives in a namespace created here (the `netns` fixture); the node's
underlay interface is one end of a veth pair inside that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import have, podnet, sh, write_topology

SHELLS = [pytest.param(["dash"], id="dash"), pytest.param(["busybox", "ash"], id="busybox-ash")]

STATIC = """
network:
  name: podnet
  podCIDR: 10.244.0.0/16
  masquerade: {masq}
  routing: static
nodes:
  - name: node1
    address: 192.168.1.2
    podCIDR: 10.244.1.0/24
  - name: node2
    address: 192.168.1.3
    podCIDR: 10.244.2.0/24
  - name: node3
    address: 192.168.1.4
    podCIDR: 10.244.3.0/24
"""

ROUTER = """
network:
  name: podnet
  podCIDR: 10.244.0.0/16
  routing: router
  router: 192.168.1.1
nodes:
  - name: node1
    address: 192.168.1.2
  - name: node2
    address: 192.168.1.3
  - name: node3
    address: 192.168.1.4
"""


def compile_to(tmp_path: Path, text: str, name: str = "out") -> Path:
    topo = write_topology(tmp_path, text, f"{name}.yaml")
    out = tmp_path / name
    res = podnet("compile", str(topo), "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out


def install(out: Path, machine: str, dest: Path) -> Path:
    """The shipped layout: routes.sh and routes.table in one directory."""
    dest.mkdir(parents=True, exist_ok=True)
    src = out / "router" if machine == "router" else out / "nodes" / machine
    shutil.copy2(src / "routes.sh", dest / "routes.sh")
    shutil.copy2(out / "routes.table", dest / "routes.table")
    return dest / "routes.sh"


def underlay_ns(netns, address: str, prefix: int = 24, dev: str = "eth0") -> str:
    """A namespace whose `dev` (one end of a veth pair, both ends inside) holds `address`."""
    ns = netns.add("rt-" + address.replace(".", "-"))
    sh(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", "peer0"])
    sh(["ip", "-n", ns, "link", "set", dev, "up"])
    sh(["ip", "-n", ns, "link", "set", "peer0", "up"])
    sh(["ip", "-n", ns, "addr", "add", f"{address}/{prefix}", "dev", dev])
    return ns


def run(ns: str, shell, script: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    ip, shell = shutil.which("ip"), [shutil.which(shell[0]), *shell[1:]]  # found on our PATH, not env's
    return subprocess.run([ip, "netns", "exec", ns, *shell, str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def routes(ns: str) -> list:
    return sh(["ip", "-n", ns, "-d", "route", "show", "table", "all"]).stdout.splitlines()


def nat(ns: str) -> list:
    return sh(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).stdout.splitlines()


def pod_routes(ns: str) -> set:
    out = sh(["ip", "-n", ns, "-4", "route", "show", "root", "10.244.0.0/16"]).stdout
    return {" ".join(line.split()) for line in out.splitlines()}


# podnet's nexthop ids: NH + the IPv4 subnet's index in podCIDR, NH6 + the IPv6 one's;
# router mode's fixed routes NHR + 4 or 6
NH = 1800000000
NH6 = 2100000000
NHR = 2400000000


def nexthops(ns: str) -> set:
    out = sh(["ip", "-n", ns, "nexthop", "show"]).stdout
    return {" ".join(line.split()) for line in out.splitlines()}


MASQ = "-A POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment podnet:podnet -j MASQUERADE"


def masq_rules(ns: str) -> list:
    return [r.replace('"', "") for r in nat(ns) if "podnet:podnet" in r]


# ---------------------------------------------------------------- generated text


def test_table_is_emitted_once_and_lists_every_node(tmp_path):
    out = compile_to(tmp_path, STATIC.format(masq="true"))
    rows = [line.split() for line in (out / "routes.table").read_text().splitlines() if line and not line.startswith("#")]
    # the 4th column: the nexthop id, 1800000000 + the subnet's index in podCIDR
    assert rows == [["10.244.1.0/24", "192.168.1.2", "node1", "1800000001"], ["10.244.2.0/24", "192.168.1.3", "node2", "1800000002"], ["10.244.3.0/24", "192.168.1.4", "node3", "1800000003"]]
    # no node's script carries another node's subnet or address: they read the table
    for node, others in {"node1": ("10.244.2.", "10.244.3.", "192.168.1.3"), "node2": ("10.244.1.", "10.244.3.", "192.168.1.4")}.items():
        text = (out / "nodes" / node / "routes.sh").read_text()
        assert not any(o in text for o in others), node
    assert not (out / "router").exists()


def test_router_mode_emits_router_script(tmp_path):
    out = compile_to(tmp_path, ROUTER)
    router = (out / "router" / "routes.sh").read_text()
    node = (out / "nodes" / "node2" / "routes.sh").read_text()
    assert "FIXED_ROUTES='10.244.0.0/16 192.168.1.1 2400000004'" in node  # the node's one route, its nexthop id
    assert "routes.table" in router and "iptables" not in router
    assert (out / "router" / "routes.sh").stat().st_mode & 0o777 == 0o755
    manifest = (out / "manifest.json").read_text()
    assert '"router/routes.sh"' in manifest


def test_masquerade_off_needs_no_iptables(tmp_path):
    """With masquerade off, iptables is only asked for rules an earlier compile left,
    when it is there: not a requirement, not a check."""
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    text = (out / "nodes" / "node1" / "routes.sh").read_text()
    assert "install iptables" not in text and "masq_rule()" not in text
    assert "command -v iptables >/dev/null 2>&1 || return 0" in text


@pytest.mark.skipif(not have("shellcheck"), reason="needs shellcheck")
def test_shellcheck_clean(tmp_path):
    scripts = []
    for i, text in enumerate([STATIC.format(masq="true"), STATIC.format(masq="false"), ROUTER]):
        out = compile_to(tmp_path, text, f"o{i}")
        scripts += sorted(out.glob("**/routes.sh"))
    assert len(scripts) == 3 + 3 + 4
    res = subprocess.run(["shellcheck", "-s", "sh", *map(str, scripts)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_adding_a_node_to_100_changes_a_handful_of_files(tmp_path):
    def topology(n):
        nodes = "".join(f"  - name: node{i}\n    address: 10.0.{i // 200}.{i % 200 + 2}\n" for i in range(n))
        return f"network:\n  podCIDR: 10.128.0.0/9\n  nodePrefixLength: 24\nnodes:\n{nodes}"

    for mode in ("static", "router"):
        extra = "" if mode == "static" else "  routing: router\n  router: 10.0.9.1\n"
        topo = tmp_path / f"{mode}.yaml"
        out = tmp_path / mode
        topo.write_text(topology(100).replace("network:\n", "network:\n" + extra))
        assert podnet("compile", str(topo), "-o", str(out)).returncode == 0
        before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        topo.write_text(topology(101).replace("network:\n", "network:\n" + extra))
        assert podnet("compile", str(topo), "-o", str(out)).returncode == 0
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        changed = {str(p) for p in before if before[p] != after.get(p)}
        added = {str(p) for p in after if p not in before}
        assert all(p.startswith("nodes/node100/") for p in added), added
        assert len(added) >= 3
        # the cluster-wide files only; no existing node's files
        assert not any(p.startswith("nodes/") for p in changed), changed
        assert "routes.table" in changed and "manifest.json" in changed
        assert len(changed) <= 5, changed
        assert len(before) > 300  # 100 nodes' worth of files, of which a handful changed


# ---------------------------------------------------------------- real kernel

needs_net = pytest.mark.skipif(not have("ip", "iptables", "dash", "busybox"), reason="needs iproute2, iptables, dash, busybox")


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_up_check_down_lifecycle(tmp_path, netns, shell):
    out = compile_to(tmp_path, STATIC.format(masq="true"))
    script = install(out, "node1", tmp_path / "etc-podnet")
    ns = underlay_ns(netns, "192.168.1.2")

    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        "forwarding off: /proc/sys/net/ipv4/ip_forward is 0",
        "missing route: 10.244.2.0/24 via 192.168.1.3 dev eth0",
        "missing route: 10.244.3.0/24 via 192.168.1.4 dev eth0",
        f"missing masquerade rule: iptables -t nat {MASQ}",
    ]
    assert "4 problem(s)" in res.stderr

    res = run(ns, shell, script, "up")
    assert res.returncode == 0, res.stderr
    assert "2 route(s) installed" in res.stdout
    # each route through its own nexthop object, id NH_BASE + the line's number in routes.table
    assert pod_routes(ns) == {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static", f"10.244.3.0/24 nhid {NH + 3} via 192.168.1.4 dev eth0 proto static"}
    assert nexthops(ns) == {f"id {NH + 2} via 192.168.1.3 dev eth0 scope link proto 244", f"id {NH + 3} via 192.168.1.4 dev eth0 scope link proto 244"}
    assert masq_rules(ns) == [MASQ]
    assert sh(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"

    res = run(ns, shell, script, "check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == "routes.sh check (node1): ok, 2 route(s) in place\n"

    # up twice changes nothing: same routes, same (single) masquerade rule
    state = (routes(ns), nat(ns))
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "0 route(s) installed" in res.stdout
    assert (routes(ns), nat(ns)) == state

    # down removes what up added, twice is harmless; forwarding stays on
    for _ in range(2):
        res = run(ns, shell, script, "down")
        assert res.returncode == 0, res.stderr
        assert pod_routes(ns) == set() and masq_rules(ns) == [] and nexthops(ns) == set()
    assert sh(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("nexthops", ["1", "0"], ids=["nexthop", "plain"])
def test_down_spares_other_protocols_routes(tmp_path, netns, shell, nexthops):
    """Routes to the other nodes' subnets via their addresses that podnet did not
    install (a routing daemon's, `proto bgp`; one added by hand, `proto boot`) are
    not removed by `down`, which never ran `up` here."""
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc-podnet")
    ns = underlay_ns(netns, "192.168.1.2")
    sh(["ip", "-n", ns, "route", "add", "10.244.2.0/24", "via", "192.168.1.3", "dev", "eth0", "proto", "bgp"])
    sh(["ip", "-n", ns, "route", "add", "10.244.3.0/24", "via", "192.168.1.4", "dev", "eth0"])
    before = pod_routes(ns)
    res = run(ns, shell, script, "down", env=dict(os.environ, PODNET_NEXTHOPS=nexthops))
    assert res.returncode == 0 and "0 route(s) removed" in res.stdout, res.stdout + res.stderr
    assert pod_routes(ns) == before


OLD_MASQ = "-A POSTROUTING -s 10.244.1.0/24 ! -d 10.240.0.0/12 -m comment --comment podnet:podnet -j MASQUERADE"
FOREIGN = ["-A POSTROUTING -s 10.244.1.0/24 -m comment --comment podnet:othernet -j MASQUERADE",
           "-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE"]


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("masq", ["true", "false"])
def test_masquerade_rules_of_an_earlier_compile_go(tmp_path, netns, shell, masq):
    """Rules carrying this network's comment that are not this compile's (an earlier
    podCIDR; masquerade since turned off; a duplicate) are drift for `check`, removed
    by `up`; `down` removes every one. Other networks' and others' rules stay."""
    out = compile_to(tmp_path, STATIC.format(masq=masq))
    script = install(out, "node1", tmp_path / "etc-podnet")
    ns = underlay_ns(netns, "192.168.1.2")
    for rule in [OLD_MASQ, *FOREIGN] + ([MASQ, MASQ] if masq == "true" else []):
        sh(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", *rule.split()])
    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    extra = res.stdout.split("extra masquerade rule(s) of this network (an earlier compile's, or a duplicate):\n")[1].splitlines()
    assert sorted(extra) == sorted(r[len("-A POSTROUTING "):] for r in [OLD_MASQ] + ([MASQ] if masq == "true" else []))
    res = run(ns, shell, script, "up")
    assert res.returncode == 0, res.stderr
    assert masq_rules(ns) == ([MASQ] if masq == "true" else [])
    assert [r.replace('"', "") for r in nat(ns) if r in FOREIGN or r.replace('"', "") in FOREIGN] == FOREIGN
    res = run(ns, shell, script, "check")
    assert res.returncode == 0, res.stdout + res.stderr
    sh(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", *OLD_MASQ.split()])
    assert run(ns, shell, script, "down").returncode == 0
    assert masq_rules(ns) == [] and [r.replace('"', "") for r in nat(ns)][1:] == FOREIGN


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_check_names_missing_extra_and_wrong(tmp_path, netns, shell):
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node2", tmp_path / "etc-podnet")
    ns = underlay_ns(netns, "192.168.1.3")
    assert run(ns, shell, script, "up").returncode == 0
    assert run(ns, shell, script, "check").returncode == 0

    sh(["ip", "-n", ns, "route", "del", "10.244.1.0/24"])  # missing
    sh(["ip", "-n", ns, "route", "replace", "10.244.3.0/24", "via", "192.168.1.9"])  # wrong next hop
    sh(["ip", "-n", ns, "route", "add", "10.244.7.0/24", "via", "192.168.1.7"])  # extra: a removed node
    sh(["ip", "-n", ns, "route", "add", "blackhole", "10.244.8.0/24"])  # extra, not via anything
    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        "missing route: 10.244.1.0/24 via 192.168.1.2 dev eth0",
        "wrong route: 10.244.3.0/24 via 192.168.1.4 dev eth0 (kernel has: 10.244.3.0/24 via 192.168.1.9 dev eth0)",
        "extra route: 10.244.7.0/24 via 192.168.1.7 dev eth0",
        "extra route: blackhole 10.244.8.0/24",
    ]
    assert "4 problem(s)" in res.stderr

    # up repairs the missing and the wrong route; it leaves the extra ones (named by check)
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "2 route(s) installed or fixed" in res.stdout
    res = run(ns, shell, script, "check")
    assert res.stdout.splitlines() == ["extra route: 10.244.7.0/24 via 192.168.1.7 dev eth0", "extra route: blackhole 10.244.8.0/24"]
    # down removes only what is podnet's: the extra routes stay
    assert run(ns, shell, script, "down").returncode == 0
    assert pod_routes(ns) == {"10.244.7.0/24 via 192.168.1.7 dev eth0", "blackhole 10.244.8.0/24"}


@needs_net
@pytest.mark.netns
def test_wrong_device_is_wrong(tmp_path, netns):
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    sh(["ip", "-n", ns, "addr", "add", "192.168.1.22/24", "dev", "peer0"])
    sh(["ip", "-n", ns, "route", "add", "10.244.2.0/24", "via", "192.168.1.3", "dev", "peer0"])
    res = run(ns, ["dash"], script, "check")
    assert "wrong route: 10.244.2.0/24 via 192.168.1.3 dev eth0 (kernel has: 10.244.2.0/24 via 192.168.1.3 dev peer0)" in res.stdout.splitlines()


@needs_net
@pytest.mark.netns
def test_connected_bridge_subnet_is_not_extra(tmp_path, netns):
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    sh(["ip", "-n", ns, "link", "add", "cni0", "type", "bridge"])
    sh(["ip", "-n", ns, "addr", "add", "10.244.1.1/24", "dev", "cni0"])
    sh(["ip", "-n", ns, "link", "set", "cni0", "up"])
    assert run(ns, ["dash"], script, "up").returncode == 0
    res = run(ns, ["dash"], script, "check")
    assert res.returncode == 0, res.stdout


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_router_mode_node_and_router(tmp_path, netns, shell):
    out = compile_to(tmp_path, ROUTER)
    node = install(out, "node2", tmp_path / "node2")
    router = install(out, "router", tmp_path / "router")
    node_ns = underlay_ns(netns, "192.168.1.3")
    router_ns = underlay_ns(netns, "192.168.1.1")

    assert run(node_ns, shell, node, "up").returncode == 0
    assert pod_routes(node_ns) == {f"10.244.0.0/16 nhid {NHR + 4} via 192.168.1.1 dev eth0 proto static"}
    assert run(node_ns, shell, node, "check").returncode == 0

    # the router's script has no device (DEV=''; the kernel picks it per next hop): plain routes
    res = run(router_ns, shell, router, "up")
    assert res.returncode == 0, res.stderr
    assert pod_routes(router_ns) == {f"10.244.{i}.0/24 via 192.168.1.{i + 2} dev eth0 proto static" for i in range(3)}
    assert nexthops(router_ns) == set()
    assert nat(router_ns) == ["-P POSTROUTING ACCEPT"]  # a router forwards, it does not masquerade
    res = run(router_ns, shell, router, "check")
    assert res.returncode == 0 and "3 route(s)" in res.stdout

    sh(["ip", "-n", router_ns, "route", "del", "10.244.1.0/24"])
    res = run(router_ns, shell, router, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == ["missing route: 10.244.1.0/24 via 192.168.1.3"]
    assert run(router_ns, shell, router, "down").returncode == 0
    assert pod_routes(router_ns) == set()


@needs_net
@pytest.mark.netns
def test_refuses_a_table_from_another_compile(tmp_path, netns):
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    other = compile_to(tmp_path, STATIC.format(masq="false").replace("10.244.1.0/24", "10.244.9.0/24"), "other")
    shutil.copy2(other / "routes.table", script.parent / "routes.table")
    ns = underlay_ns(netns, "192.168.1.2")
    res = run(ns, ["dash"], script, "up")
    assert res.returncode == 1
    assert 'lists node node1 with subnets "10.244.9.0/24", this script expects "10.244.1.0/24"' in res.stderr
    assert pod_routes(ns) == set()

    (script.parent / "routes.table").write_text("10.244.2.0/24 192.168.1.3 node2 1800000002\n10.244.3.0/24 192.168.1.4; reboot\n")
    res = run(ns, ["dash"], script, "check")
    assert res.returncode == 1 and "routes.table:2: not DESTINATION NEXTHOP NODE NHID" in res.stderr

    # a destination listed twice (two next hops for one subnet) is refused, before anything is done
    (script.parent / "routes.table").write_text("10.244.1.0/24 192.168.1.2 node1 1800000001\n10.244.2.0/24 192.168.1.3 node2 1800000002\n10.244.2.0/24 192.168.1.4 node3 1800000003\n")
    res = run(ns, ["dash"], script, "up")
    assert res.returncode == 1 and "routes.table:3: 10.244.2.0/24 is listed twice" in res.stderr
    assert pod_routes(ns) == set()

    # the table is found next to the script, or where PODNET_ROUTES_TABLE says
    (script.parent / "routes.table").unlink()
    res = run(ns, ["dash"], script, "check")
    assert res.returncode == 1 and "cannot read" in res.stderr
    res = run(ns, ["dash"], script, "check", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODNET_ROUTES_TABLE": str(out / "routes.table")})
    assert "missing route: 10.244.2.0/24" in res.stdout


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_table_nexthop_ids_validated(tmp_path, netns, shell):
    """routes.table's NHID column: 4 columns (the 3-column table of an older compile is
    refused), digits only, in podnet's range for the destination's family, unique."""
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    table = script.parent / "routes.table"
    ns = underlay_ns(netns, "192.168.1.2")
    own = "10.244.1.0/24 192.168.1.2 node1 1800000001\n"
    bad = {
        "10.244.2.0/24 192.168.1.3 node2\n": "routes.table:2: not DESTINATION NEXTHOP NODE NHID: 10.244.2.0/24 192.168.1.3 node2",
        "10.244.2.0/24 192.168.1.3 node2 18000x0002\n": "routes.table:2: not DESTINATION NEXTHOP NODE NHID",
        "10.244.2.0/24 192.168.1.3 node2 -1800000002\n": "routes.table:2: not DESTINATION NEXTHOP NODE NHID",
        "10.244.2.0/24 192.168.1.3 node2 01800000002\n": "routes.table:2: not DESTINATION NEXTHOP NODE NHID",
        "10.244.2.0/24 192.168.1.3 node2 18000000000000000002\n": "routes.table:2: not DESTINATION NEXTHOP NODE NHID",
        "10.244.2.0/24 192.168.1.3 node2 2\n": "routes.table:2: nexthop id 2 is outside podnet's range for IPv4 (1800000000 + 0..268435455)",
        "10.244.2.0/24 192.168.1.3 node2 2100000002\n": "routes.table:2: nexthop id 2100000002 is outside podnet's range for IPv4",
        "fd00::/64 fd00::3 node2 1800000002\n": "routes.table:2: nexthop id 1800000002 is outside podnet's range for IPv6 (2100000000 + 0..268435455)",
        "10.244.2.0/24 192.168.1.3 node2 1800000001\n": "routes.table:2: nexthop id 1800000001 is also line 1's",
        # only pod subnets: a default route in the table would replace the node's own
        "0.0.0.0/0 192.168.1.3 node2 1800000002\n": "routes.table:2: 0.0.0.0/0 is not inside the pod ranges (10.244.0.0/16)",
        "10.244.0.0/15 192.168.1.3 node2 1800000002\n": "routes.table:2: 10.244.0.0/15 is not inside the pod ranges",
        "10.245.2.0/24 192.168.1.3 node2 1800000002\n": "routes.table:2: 10.245.2.0/24 is not inside the pod ranges",
    }
    for line, message in bad.items():
        table.write_text(own + line)
        for action in ("up", "check", "down"):
            res = run(ns, shell, script, action)
            assert res.returncode == 1 and message in res.stderr, (line, action, res.stderr)
        assert pod_routes(ns) == set() and nexthops(ns) == set()
    table.write_text(own + "10.244.2.0/24 192.168.1.3 node2 1800000002\n")
    assert run(ns, shell, script, "up").returncode == 0
    assert pod_routes(ns) == {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static"}


@needs_net
@pytest.mark.netns
def test_busybox_awk(tmp_path, netns):
    """The one awk program that plans up, down and check also runs on busybox's awk
    (a node with busybox instead of mawk or gawk): same drift lines, same repairs."""
    out = compile_to(tmp_path, DUAL.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns_multi(netns, "rt-bbawk", "192.168.1.2/24", "fd00::2/64")
    bb = tmp_path / "bb"
    bb.mkdir()
    (bb / "awk").symlink_to(shutil.which("busybox"))
    env = {"PATH": f"{bb}:/usr/sbin:/usr/bin:/sbin:/bin"}
    res = run(ns, ["dash"], script, "up", env=env)
    assert res.returncode == 0 and "4 route(s) installed" in res.stdout, res.stderr
    sh(["ip", "-n", ns, "route", "del", "10.244.2.0/24"])
    sh(["ip", "-n", ns, "route", "replace", "fd00:10:244:3::/64", "via", "fd00::9"])
    sh(["ip", "-n", ns, "route", "add", "blackhole", "10.244.8.0/24"])
    res = run(ns, ["dash"], script, "check", env=env)
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        "missing route: 10.244.2.0/24 via 192.168.1.3 dev eth0",
        "wrong route: fd00:10:244:3::/64 via fd00::4 dev eth0 (kernel has: fd00:10:244:3::/64 via fd00::9 dev eth0)",
        "extra route: blackhole 10.244.8.0/24",
    ]
    res = run(ns, ["dash"], script, "up", env=env)
    assert res.returncode == 0 and "2 route(s) installed or fixed" in res.stdout
    res = run(ns, ["dash"], script, "down", env=env)
    assert res.returncode == 0 and "4 route(s) removed" in res.stdout
    assert pod_routes(ns) == {"blackhole 10.244.8.0/24"} and pod_routes6(ns) == set()


@needs_net
@pytest.mark.netns
def test_usage_and_missing_iproute2(tmp_path, netns):
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    for args in ([], ["sideways"], ["up", "extra"]):
        res = run(ns, ["dash"], script, *args)
        assert res.returncode == 2 and "usage:" in res.stderr
    # busybox's own ip applet (no -batch) is refused with a clear message
    bb = tmp_path / "bb"
    bb.mkdir()
    (bb / "ip").symlink_to(shutil.which("busybox"))
    for tool in ("awk", "sed", "dirname"):
        (bb / tool).symlink_to(shutil.which("busybox"))
    res = run(ns, ["dash"], script, "check", env={"PATH": str(bb)})
    assert res.returncode == 1
    assert "iproute2's ip not found on PATH" in res.stderr and "is not iproute2" in res.stderr


@needs_net
@pytest.mark.netns
def test_up_reports_unreachable_next_hops(tmp_path, netns):
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "172.16.0.2")  # next hops 192.168.1.x are not on eth0's network
    res = run(ns, ["dash"], script, "up")
    assert res.returncode == 1
    assert "could not install every route" in res.stderr


@pytest.mark.skipif(not have("dash", "busybox"), reason="needs dash and busybox")
@pytest.mark.parametrize("shell", SHELLS)
def test_sourced_functions(tmp_path, shell):
    """Sourced with PODNET_SOURCE_ONLY=1, the script runs nothing; its steps can be called one by one."""
    out = compile_to(tmp_path, STATIC.format(masq="true"))
    script = install(out, "node2", tmp_path / "etc")
    res = subprocess.run([*shell, "-c", f'PODNET_SOURCE_ONLY=1; . "$1"; wanted_routes', "sh", str(script)], capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODNET_ROUTES_TABLE": str(out / "routes.table")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["10.244.1.0/24 192.168.1.2", "10.244.3.0/24 192.168.1.4"]


# ---------------------------------------------------------------- IPv6 and dual-stack

DUAL = """
network:
  name: podnet
  podCIDR: [10.244.0.0/16, "fd00:10:244::/56"]
  masquerade: {masq}
  routing: static
nodes:
  - name: node1
    address: [192.168.1.2, "fd00::2"]
    podCIDR: [10.244.1.0/24, "fd00:10:244:1::/64"]
  - name: node2
    address: [192.168.1.3, "fd00::3"]
    podCIDR: [10.244.2.0/24, "fd00:10:244:2::/64"]
  - name: node3
    address: [192.168.1.4, "fd00::4"]
    podCIDR: [10.244.3.0/24, "fd00:10:244:3::/64"]
"""

V6ONLY = """
network:
  name: podnet
  podCIDR: "fd00:10:244::/56"
  routing: {routing}
{router}
nodes:
  - name: node1
    address: "fd00::2"
  - name: node2
    address: "fd00::3"
  - name: node3
    address: "fd00::4"
"""

DUAL_ROUTER = """
network:
  name: podnet
  podCIDR: [10.244.0.0/16, "fd00:10:244::/56"]
  routing: router
  router: [192.168.1.1, "fd00::1"]
nodes:
  - name: node1
    address: [192.168.1.2, "fd00::2"]
  - name: node2
    address: [192.168.1.3, "fd00::3"]
  - name: node3
    address: [192.168.1.4, "fd00::4"]
"""

FWD4, FWD6 = "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"


def underlay_ns_multi(netns, name: str, *cidrs: str) -> str:
    """A namespace whose eth0 (a veth end, both ends inside) holds every CIDR; IPv6
    addresses without DAD, so next hops are usable at once."""
    ns = netns.add(name)
    sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
    sh(["ip", "-n", ns, "link", "set", "peer0", "up"])
    for cidr in cidrs:
        sh(["ip", "-n", ns, "addr", "add", cidr, "dev", "eth0", *(["nodad"] if ":" in cidr else [])])
    return ns


def pod_routes6(ns: str, root: str = "fd00:10:244::/56") -> set:
    """IPv6 routes inside `root`, without the metric and preference the kernel adds."""
    out = sh(["ip", "-n", ns, "-6", "route", "show", "root", root]).stdout
    return {" ".join(line.split()).split(" metric ")[0] for line in out.splitlines()}


def sysctl(ns: str, path: str) -> str:
    return sh(["ip", "netns", "exec", ns, "cat", path]).stdout.strip()


def test_dual_stack_table_and_scripts(tmp_path):
    out = compile_to(tmp_path, DUAL.format(masq="true"))
    rows = [line.split() for line in (out / "routes.table").read_text().splitlines() if line and not line.startswith("#")]
    assert rows == [
        ["10.244.1.0/24", "192.168.1.2", "node1", "1800000001"], ["fd00:10:244:1::/64", "fd00::2", "node1", "2100000001"],
        ["10.244.2.0/24", "192.168.1.3", "node2", "1800000002"], ["fd00:10:244:2::/64", "fd00::3", "node2", "2100000002"],
        ["10.244.3.0/24", "192.168.1.4", "node3", "1800000003"], ["fd00:10:244:3::/64", "fd00::4", "node3", "2100000003"],
    ]
    text = (out / "nodes" / "node1" / "routes.sh").read_text()
    assert "POD_CIDRS='10.244.0.0/16 fd00:10:244::/56'" in text
    assert "OWN_SUBNETS='10.244.1.0/24 fd00:10:244:1::/64'" in text
    assert f"FORWARDING_FILES='{FWD4} {FWD6}'" in text
    # masquerade is IPv4's: the one rule names the IPv4 subnet and range, never IPv6
    assert "'-s' '10.244.1.0/24' '!' '-d' '10.244.0.0/16'" in text and "ip6tables" not in text
    # IPv6-only: nothing to masquerade, so no iptables at all (masquerade defaults to true)
    out6 = compile_to(tmp_path, V6ONLY.format(routing="static", router=""), "v6")
    text6 = (out6 / "nodes" / "node1" / "routes.sh").read_text()
    assert "iptables" not in text6 and f"FORWARDING_FILES='{FWD6}'" in text6
    assert "MASQUERADE=0" in (out6 / "nodes" / "node1" / "net-setup.sh").read_text()
    conf = json.loads(next((out6 / "nodes" / "node1").glob("*.conflist")).read_text())
    assert conf["plugins"][0]["ipMasq"] is False


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_dual_stack_up_check_down(tmp_path, netns, shell):
    out = compile_to(tmp_path, DUAL.format(masq="true"))
    script = install(out, "node1", tmp_path / "etc-podnet")
    ns = underlay_ns_multi(netns, "rt-dual", "192.168.1.2/24", "fd00::2/64")

    # IPv6 lines are checked against the IPv6 pod range, in the compiler's spelling
    table = script.parent / "routes.table"
    good = table.read_text()
    for line, message in {"fd00:10:245:2::/64 fd00::3 node9 2100000009\n": "fd00:10:245:2::/64 is not inside the pod ranges",
                          "fd00:10:244::/48 fd00::3 node9 2100000009\n": "fd00:10:244::/48 is not inside the pod ranges",
                          "::/0 fd00::3 node9 2100000009\n": "::/0 is not inside the pod ranges",
                          "FD00:10:244:9::/64 fd00::3 node9 2100000009\n": "addresses are spelt in lower case"}.items():
        table.write_text(good + line)
        res = run(ns, shell, script, "check")
        assert res.returncode == 1 and message in res.stderr, (line, res.stderr)
    table.write_text(good + "fd00:10:244:ff::/64 fd00::3 node9 2100000255\n10.244.255.0/24 192.168.1.3 node9 1800000255\n")
    res = run(ns, shell, script, "check")
    assert "missing route: fd00:10:244:ff::/64 via fd00::3 dev eth0" in res.stdout, res.stdout + res.stderr
    table.write_text(good)

    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        f"forwarding off: {FWD4} is 0",
        f"forwarding off: {FWD6} is 0",
        "missing route: 10.244.2.0/24 via 192.168.1.3 dev eth0",
        "missing route: fd00:10:244:2::/64 via fd00::3 dev eth0",
        "missing route: 10.244.3.0/24 via 192.168.1.4 dev eth0",
        "missing route: fd00:10:244:3::/64 via fd00::4 dev eth0",
        f"missing masquerade rule: iptables -t nat {MASQ}",
    ]

    res = run(ns, shell, script, "up")
    assert res.returncode == 0, res.stderr
    assert "4 route(s) installed" in res.stdout
    # ids: the family's base + the subnet's index in its pod range (10.244.2.0/24 is 2, fd00:10:244:2::/64 too)
    assert pod_routes(ns) == {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static", f"10.244.3.0/24 nhid {NH + 3} via 192.168.1.4 dev eth0 proto static"}
    assert pod_routes6(ns) == {f"fd00:10:244:2::/64 nhid {NH6 + 2} via fd00::3 dev eth0 proto static", f"fd00:10:244:3::/64 nhid {NH6 + 3} via fd00::4 dev eth0 proto static"}
    assert (sysctl(ns, FWD4), sysctl(ns, FWD6)) == ("1", "1")
    assert masq_rules(ns) == [MASQ]
    res = run(ns, shell, script, "check")
    assert res.returncode == 0 and res.stdout == "routes.sh check (node1): ok, 4 route(s) in place\n", res.stdout + res.stderr

    # up twice changes nothing
    state = (routes(ns), nat(ns))
    assert "0 route(s) installed" in run(ns, shell, script, "up").stdout
    assert (routes(ns), nat(ns)) == state

    # IPv6 drift is named like IPv4 drift; the node's own IPv6 subnet on the bridge is not extra
    sh(["ip", "-n", ns, "route", "del", "fd00:10:244:2::/64"])
    sh(["ip", "-n", ns, "route", "replace", "fd00:10:244:3::/64", "via", "fd00::9"])
    sh(["ip", "-n", ns, "route", "add", "fd00:10:244:7::/64", "via", "fd00::7"])
    sh(["ip", "-n", ns, "link", "add", "cni0", "type", "bridge"])
    sh(["ip", "-n", ns, "addr", "add", "fd00:10:244:1::1/64", "dev", "cni0", "nodad"])
    sh(["ip", "-n", ns, "link", "set", "cni0", "up"])
    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        "missing route: fd00:10:244:2::/64 via fd00::3 dev eth0",
        "wrong route: fd00:10:244:3::/64 via fd00::4 dev eth0 (kernel has: fd00:10:244:3::/64 via fd00::9 dev eth0)",
        "extra route: fd00:10:244:7::/64 via fd00::7 dev eth0",
    ]
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "2 route(s) installed or fixed" in res.stdout

    # down removes both families' routes and the rule; the extra route and forwarding stay
    for _ in range(2):
        res = run(ns, shell, script, "down")
        assert res.returncode == 0, res.stderr
    assert pod_routes(ns) == set() and masq_rules(ns) == [] and nexthops(ns) == set()
    assert pod_routes6(ns) == {"fd00:10:244:7::/64 via fd00::7 dev eth0", "fd00:10:244:1::/64 dev cni0 proto kernel"}
    assert (sysctl(ns, FWD4), sysctl(ns, FWD6)) == ("1", "1")


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_ipv6_only_static(tmp_path, netns, shell):
    out = compile_to(tmp_path, V6ONLY.format(routing="static", router=""))
    script = install(out, "node2", tmp_path / "etc")
    ns = underlay_ns_multi(netns, "rt-v6", "fd00::3/64")
    res = run(ns, shell, script, "up")
    assert res.returncode == 0, res.stderr
    assert pod_routes6(ns) == {f"fd00:10:244::/64 nhid {NH6} via fd00::2 dev eth0 proto static", f"fd00:10:244:2::/64 nhid {NH6 + 2} via fd00::4 dev eth0 proto static"}
    assert sysctl(ns, FWD6) == "1" and sysctl(ns, FWD4) == "0"  # only the pods' family
    assert nat(ns) == ["-P POSTROUTING ACCEPT"]
    res = run(ns, shell, script, "check")
    assert res.returncode == 0 and "2 route(s) in place" in res.stdout, res.stdout + res.stderr
    assert run(ns, shell, script, "down").returncode == 0
    assert pod_routes6(ns) == set()


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_dual_stack_router_mode(tmp_path, netns, shell):
    out = compile_to(tmp_path, DUAL_ROUTER)
    node = install(out, "node2", tmp_path / "node2")
    router = install(out, "router", tmp_path / "router")
    node_ns = underlay_ns_multi(netns, "rt-node2", "192.168.1.3/24", "fd00::3/64")
    router_ns = underlay_ns_multi(netns, "rt-router", "192.168.1.1/24", "fd00::1/64")

    res = run(node_ns, shell, node, "up")
    assert res.returncode == 0, res.stderr
    assert pod_routes(node_ns) == {f"10.244.0.0/16 nhid {NHR + 4} via 192.168.1.1 dev eth0 proto static"}
    assert pod_routes6(node_ns) == {f"fd00:10:244::/56 nhid {NHR + 6} via fd00::1 dev eth0 proto static"}
    assert run(node_ns, shell, node, "check").returncode == 0

    res = run(router_ns, shell, router, "up")
    assert res.returncode == 0, res.stderr
    assert pod_routes(router_ns) == {f"10.244.{i}.0/24 via 192.168.1.{i + 2} dev eth0 proto static" for i in range(3)}
    assert pod_routes6(router_ns) == {f"fd00:10:244:{i or ''}::/64 via fd00::{i + 2} dev eth0 proto static".replace(":::", "::") for i in range(3)}
    assert (sysctl(router_ns, FWD4), sysctl(router_ns, FWD6)) == ("1", "1")
    res = run(router_ns, shell, router, "check")
    assert res.returncode == 0 and "6 route(s)" in res.stdout
    sh(["ip", "-n", router_ns, "route", "del", "fd00:10:244:1::/64"])
    res = run(router_ns, shell, router, "check")
    assert res.returncode == 1 and res.stdout.splitlines() == ["missing route: fd00:10:244:1::/64 via fd00::3"]
    assert run(router_ns, shell, router, "down").returncode == 0
    assert pod_routes(router_ns) == set() and pod_routes6(router_ns) == set()


# ---------------------------------------------------------------- nexthop objects


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_nexthop_drift_named_and_repaired(tmp_path, netns, shell):
    """A route whose nexthop has the wrong gateway or device is wrong; up repairs the
    nexthop alone; a podnet nexthop no intended route uses is named as extra by check
    and deleted by up."""
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    sh(["ip", "-n", ns, "addr", "add", "192.168.1.22/24", "dev", "peer0"])
    assert run(ns, shell, script, "up").returncode == 0
    sh(["ip", "-n", ns, "nexthop", "replace", "id", str(NH + 2), "via", "192.168.1.9", "dev", "eth0", "proto", "244"])
    sh(["ip", "-n", ns, "nexthop", "replace", "id", str(NH + 3), "via", "192.168.1.4", "dev", "peer0", "proto", "244"])
    sh(["ip", "-n", ns, "nexthop", "add", "id", str(NH + 7), "via", "192.168.1.7", "dev", "eth0", "proto", "244"])
    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        f"wrong route: 10.244.2.0/24 via 192.168.1.3 dev eth0 (kernel has: 10.244.2.0/24 nhid {NH + 2} via 192.168.1.9 dev eth0)",
        f"wrong route: 10.244.3.0/24 via 192.168.1.4 dev eth0 (kernel has: 10.244.3.0/24 nhid {NH + 3} via 192.168.1.4 dev peer0)",
        f"extra nexthop: id {NH + 7} via 192.168.1.7 dev eth0 proto 244",
    ]
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "2 route(s) installed or fixed" in res.stdout, res.stderr
    assert pod_routes(ns) == {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static", f"10.244.3.0/24 nhid {NH + 3} via 192.168.1.4 dev eth0 proto static"}
    assert nexthops(ns) == {f"id {NH + 2} via 192.168.1.3 dev eth0 scope link proto 244", f"id {NH + 3} via 192.168.1.4 dev eth0 scope link proto 244"}
    assert run(ns, shell, script, "check").returncode == 0
    # down removes the intended routes and their nexthops; an extra one is left for a person
    sh(["ip", "-n", ns, "nexthop", "add", "id", str(NH + 7), "via", "192.168.1.7", "dev", "eth0", "proto", "244"])
    assert run(ns, shell, script, "down").returncode == 0
    assert pod_routes(ns) == set() and nexthops(ns) == {f"id {NH + 7} via 192.168.1.7 dev eth0 scope link proto 244"}


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_foreign_nexthop_with_podnet_id_refused(tmp_path, netns, shell):
    """A nexthop that holds one of podnet's ids but is not podnet's (another protocol):
    up refuses before it changes anything, naming the id; check names it; down leaves it."""
    out = compile_to(tmp_path, STATIC.format(masq="true"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    sh(["ip", "-n", ns, "nexthop", "add", "id", str(NH + 3), "via", "192.168.1.9", "dev", "eth0", "proto", "zebra"])
    res = run(ns, shell, script, "up")
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"routes.sh: refusing to replace nexthop {NH + 3} (id {NH + 3} via 192.168.1.9 dev eth0 proto 11): it is not podnet's (proto 244) "
        "and podnet needs its id for 10.244.3.0/24; give it another id, or set PODNET_NEXTHOPS=0 for plain routes"
    ]
    # nothing acted: no route, no nexthop, forwarding and masquerade untouched
    assert pod_routes(ns) == set() and masq_rules(ns) == [] and sysctl(ns, FWD4) == "0"
    assert nexthops(ns) == {f"id {NH + 3} via 192.168.1.9 dev eth0 scope link proto zebra"}
    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert f"foreign nexthop: id {NH + 3} via 192.168.1.9 dev eth0 proto 11 is not podnet's (proto 244); podnet needs id {NH + 3} for 10.244.3.0/24" in res.stdout.splitlines()
    assert run(ns, shell, script, "down").returncode == 0
    assert nexthops(ns) == {f"id {NH + 3} via 192.168.1.9 dev eth0 scope link proto zebra"}
    # the way out the message names: plain routes, which leave nexthop objects alone
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODNET_NEXTHOPS": "0"}
    assert run(ns, shell, script, "up", env=env).returncode == 0
    assert pod_routes(ns) == {"10.244.2.0/24 via 192.168.1.3 dev eth0 proto static", "10.244.3.0/24 via 192.168.1.4 dev eth0 proto static"}
    assert run(ns, shell, script, "check", env=env).returncode == 0


@needs_net
@pytest.mark.netns
def test_down_leaves_foreign_nexthops_and_routes(tmp_path, netns):
    """Other software's nexthops (other ids, or podnet's range with another protocol)
    and the routes using them survive up, down and are not podnet's extras."""
    out = compile_to(tmp_path, DUAL.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns_multi(netns, "rt-foreign", "192.168.1.2/24", "fd00::2/64")
    sh(["ip", "-n", ns, "nexthop", "add", "id", "7", "via", "192.168.1.7", "dev", "eth0", "proto", "zebra"])
    sh(["ip", "-n", ns, "nexthop", "add", "id", str(NH + 99), "via", "fd00::9", "dev", "eth0"])  # podnet's range, not its protocol
    sh(["ip", "-n", ns, "route", "add", "10.244.7.0/24", "nhid", "7"])  # inside podCIDR: an extra route
    sh(["ip", "-n", ns, "route", "add", "192.0.2.0/24", "nhid", "7"])
    sh(["ip", "-n", ns, "route", "add", "2001:db8::/64", "nhid", str(NH + 99)])
    foreign = (nexthops(ns), [r for r in routes(ns) if "nhid 7 " in r or f"nhid {NH + 99} " in r])
    assert run(ns, ["dash"], script, "up").returncode == 0
    res = run(ns, ["dash"], script, "check")
    assert res.returncode == 1 and res.stdout.splitlines() == ["extra route: 10.244.7.0/24 nhid 7 via 192.168.1.7 dev eth0"]
    for _ in range(2):
        assert run(ns, ["dash"], script, "down").returncode == 0
    assert (nexthops(ns), [r for r in routes(ns) if "nhid 7 " in r or f"nhid {NH + 99} " in r]) == foreign
    assert pod_routes6(ns) == set()


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_upgrade_from_plain_routes(tmp_path, netns, shell):
    """A node holding the plain routes of routes.sh before nexthops: check calls them
    wrong, up converges on the nexthop form, check is clean after it."""
    out = compile_to(tmp_path, DUAL.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns_multi(netns, "rt-upgrade", "192.168.1.2/24", "fd00::2/64")
    for dst, via in (("10.244.2.0/24", "192.168.1.3"), ("10.244.3.0/24", "192.168.1.4"), ("fd00:10:244:2::/64", "fd00::3"), ("fd00:10:244:3::/64", "fd00::4")):
        sh(["ip", "-n", ns, "route", "replace", dst, "via", via, "dev", "eth0", "proto", "static"])
    sysctls = [f"echo 1 > {FWD4}", f"echo 1 > {FWD6}"]
    sh(["ip", "netns", "exec", ns, "sh", "-c", "; ".join(sysctls)])
    res = run(ns, shell, script, "check")
    assert res.returncode == 1
    assert res.stdout.splitlines() == [
        f"wrong route: 10.244.2.0/24 via 192.168.1.3 dev eth0 (kernel has: 10.244.2.0/24 via 192.168.1.3 dev eth0, not nexthop {NH + 2})",
        f"wrong route: fd00:10:244:2::/64 via fd00::3 dev eth0 (kernel has: fd00:10:244:2::/64 via fd00::3 dev eth0, not nexthop {NH6 + 2})",
        f"wrong route: 10.244.3.0/24 via 192.168.1.4 dev eth0 (kernel has: 10.244.3.0/24 via 192.168.1.4 dev eth0, not nexthop {NH + 3})",
        f"wrong route: fd00:10:244:3::/64 via fd00::4 dev eth0 (kernel has: fd00:10:244:3::/64 via fd00::4 dev eth0, not nexthop {NH6 + 3})",
    ]
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "4 route(s) installed or fixed" in res.stdout, res.stderr
    assert pod_routes(ns) == {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static", f"10.244.3.0/24 nhid {NH + 3} via 192.168.1.4 dev eth0 proto static"}
    assert pod_routes6(ns) == {f"fd00:10:244:2::/64 nhid {NH6 + 2} via fd00::3 dev eth0 proto static", f"fd00:10:244:3::/64 nhid {NH6 + 3} via fd00::4 dev eth0 proto static"}
    res = run(ns, shell, script, "check")
    assert res.returncode == 0 and res.stdout == "routes.sh check (node1): ok, 4 route(s) in place\n", res.stdout + res.stderr
    # down also removes the old form, should a node still hold it
    sh(["ip", "-n", ns, "route", "replace", "10.244.2.0/24", "via", "192.168.1.3", "dev", "eth0", "proto", "static"])
    res = run(ns, shell, script, "down")
    assert res.returncode == 0 and "4 route(s) removed" in res.stdout, res.stderr
    assert pod_routes(ns) == set() and pod_routes6(ns) == set() and nexthops(ns) == set()


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_no_nexthop_support_falls_back_to_plain_routes(tmp_path, netns, shell):
    """An iproute2 or kernel without nexthop objects (simulated: an `ip` on PATH that
    fails every nexthop command as iproute2 before 5.3 does): routes.sh says so on stderr
    and installs, checks and removes plain routes. PODNET_NEXTHOPS=0 does the same silently."""
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    old = tmp_path / "old-ip"
    old.mkdir()
    (old / "ip").write_text(
        "#!/bin/sh\n"
        "# iproute2 without nexthop objects: any nexthop command fails, the rest is the real ip\n"
        'case " $* " in *" nexthop "*) echo \'Object "nexthop" is unknown, try "ip help".\' >&2; exit 255 ;; esac\n'
        'case " $* " in *" -batch "*) input=$(cat); case "$input" in *nexthop*) echo \'Object "nexthop" is unknown, try "ip help".\' >&2; exit 1 ;; esac\n'
        f'  printf "%s\\n" "$input" | exec {shutil.which("ip")} "$@" ;; esac\n'
        f'exec {shutil.which("ip")} "$@"\n'
    )
    (old / "ip").chmod(0o755)
    warning = 'routes.sh (node1): no nexthop objects here (ip nexthop show: Object "nexthop" is unknown, try "ip help".); installing plain routes'
    plain = {"10.244.2.0/24 via 192.168.1.3 dev eth0 proto static", "10.244.3.0/24 via 192.168.1.4 dev eth0 proto static"}
    for env, says in (({"PATH": f"{old}:/usr/sbin:/usr/bin:/sbin:/bin"}, [warning]), ({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODNET_NEXTHOPS": "0"}, [])):
        res = run(ns, shell, script, "up", env=env)
        assert res.returncode == 0 and "2 route(s) installed" in res.stdout, res.stderr
        assert res.stderr.splitlines() == says
        assert pod_routes(ns) == plain and nexthops(ns) == set()
        res = run(ns, shell, script, "check", env=env)
        assert res.returncode == 0 and res.stdout == "routes.sh check (node1): ok, 2 route(s) in place\n", res.stdout + res.stderr
        sh(["ip", "-n", ns, "route", "replace", "10.244.3.0/24", "via", "192.168.1.9"])
        res = run(ns, shell, script, "check", env=env)
        assert res.stdout.splitlines() == ["wrong route: 10.244.3.0/24 via 192.168.1.4 dev eth0 (kernel has: 10.244.3.0/24 via 192.168.1.9 dev eth0)"]
        assert "1 route(s) installed or fixed" in run(ns, shell, script, "up", env=env).stdout
        res = run(ns, shell, script, "down", env=env)
        assert res.returncode == 0 and "2 route(s) removed" in res.stdout
        assert pod_routes(ns) == set()


@needs_net
@pytest.mark.netns
def test_nexthop_compat_mode_off(tmp_path, netns):
    """With net.ipv4.nexthop_compat_mode=0 the kernel lists a route by its nexthop id
    only: check still reads next hop and device from the nexthop objects."""
    out = compile_to(tmp_path, STATIC.format(masq="false"))
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    if subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"], capture_output=True).returncode != 0:
        pytest.skip("no net.ipv4.nexthop_compat_mode on this kernel")
    assert run(ns, ["dash"], script, "up").returncode == 0
    assert pod_routes(ns) == {f"10.244.2.0/24 nhid {NH + 2} proto static", f"10.244.3.0/24 nhid {NH + 3} proto static"}
    assert run(ns, ["dash"], script, "check").returncode == 0
    sh(["ip", "-n", ns, "nexthop", "replace", "id", str(NH + 2), "via", "192.168.1.9", "dev", "eth0", "proto", "244"])
    res = run(ns, ["dash"], script, "check")
    assert res.stdout.splitlines() == [f"wrong route: 10.244.2.0/24 via 192.168.1.3 dev eth0 (kernel has: 10.244.2.0/24 nhid {NH + 2} via 192.168.1.9 dev eth0)"]
    assert "1 route(s) installed or fixed" in run(ns, ["dash"], script, "up").stdout
    assert run(ns, ["dash"], script, "down").returncode == 0
    assert pod_routes(ns) == set() and nexthops(ns) == set()


# ---------------------------------------------------------------- stable nexthop ids

FOUR = """
network:
  name: podnet
  podCIDR: 10.244.0.0/16
  masquerade: false
nodes:
""" + "".join(f"""  - name: node{i}
    address: 192.168.1.{i + 1}
    podCIDR: 10.244.{i}.0/24
""" for i in (1, 2, 3, 4))


def table_ids(out: Path) -> dict:
    rows = [line.split() for line in (out / "routes.table").read_text().splitlines() if line and not line.startswith("#")]
    return {row[0]: row[3] for row in rows}


def test_ids_do_not_depend_on_other_nodes(tmp_path):
    """A node's id is its subnet's: removing a node from the middle, inserting one, or
    appending one without a pinned subnet changes no other line's id."""
    ids = table_ids(compile_to(tmp_path, FOUR, "four"))
    assert ids == {f"10.244.{i}.0/24": str(NH + i) for i in (1, 2, 3, 4)}
    removed = table_ids(compile_to(tmp_path, FOUR.replace("  - name: node2\n    address: 192.168.1.3\n    podCIDR: 10.244.2.0/24\n", ""), "removed"))
    assert removed == {d: n for d, n in ids.items() if d != "10.244.2.0/24"}
    inserted = FOUR.replace("  - name: node2\n", "  - name: node9\n    address: 192.168.1.10\n    podCIDR: 10.244.200.0/24\n  - name: node2\n")
    assert table_ids(compile_to(tmp_path, inserted, "inserted")) == {**ids, "10.244.200.0/24": str(NH + 200)}
    appended = FOUR + "  - name: node5\n    address: 192.168.1.6\n"  # allocated: the lowest free, 10.244.0.0/24
    assert table_ids(compile_to(tmp_path, appended, "appended")) == {**ids, "10.244.0.0/24": str(NH)}
    # IPv6 ids: their own base, the /64's index in the /56
    dual = table_ids(compile_to(tmp_path, DUAL.format(masq="false"), "dual"))
    assert dual["fd00:10:244:3::/64"] == str(NH6 + 3) and dual["10.244.3.0/24"] == str(NH + 3)


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_removed_middle_node(tmp_path, netns, shell):
    """node2 leaves the middle of the table: up on node1 deletes its route and then its
    nexthop (the stale route before any nexthop is replaced), keeps every other id as it
    was, and check is clean; adding it back changes no existing id either."""
    four = compile_to(tmp_path, FOUR, "four")
    script = install(four, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    assert run(ns, shell, script, "up").returncode == 0
    kept = {f"10.244.{i}.0/24 nhid {NH + i} via 192.168.1.{i + 1} dev eth0 proto static" for i in (3, 4)}
    kept_nh = {f"id {NH + i} via 192.168.1.{i + 1} dev eth0 scope link proto 244" for i in (3, 4)}
    assert pod_routes(ns) == kept | {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static"}

    three = compile_to(tmp_path, FOUR.replace("  - name: node2\n    address: 192.168.1.3\n    podCIDR: 10.244.2.0/24\n", ""), "three")
    shutil.copy2(three / "routes.table", script.parent / "routes.table")
    res = run(ns, shell, script, "check")  # before up: the removed node's route and nexthop are extras
    assert res.returncode == 1 and res.stdout.splitlines() == [
        f"extra route: 10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0",
        f"extra nexthop: id {NH + 2} via 192.168.1.3 dev eth0 proto 244",
    ]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODNET_SOURCE_ONLY": "1", "PODNET_ROUTES_TABLE": str(script.parent / "routes.table")}
    plan = subprocess.run([shutil.which("ip"), "netns", "exec", ns, shutil.which(shell[0]), *shell[1:], "-c", '. "$1"; require_tools; plan up; printf "%s\\n" "$COUNT" "$LINES"', "sh", str(script)],
                          capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert plan == ["0 1", f"route del 10.244.2.0/24 nhid {NH + 2}", f"nexthop del id {NH + 2}"]
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "0 route(s) installed or fixed, 1 stale route(s) of podnet's removed" in res.stdout, res.stderr
    assert pod_routes(ns) == kept and nexthops(ns) == kept_nh
    res = run(ns, shell, script, "check")
    assert res.returncode == 0 and res.stdout.splitlines() == ["routes.sh check (node1): ok, 2 route(s) in place"]
    assert "0 route(s) installed or fixed\n" in run(ns, shell, script, "up").stdout  # nothing left to do

    # node2 back (and a new node between): only their routes are added, no id moves
    shutil.copy2(compile_to(tmp_path, FOUR.replace("  - name: node3\n", "  - name: node9\n    address: 192.168.1.10\n    podCIDR: 10.244.9.0/24\n  - name: node3\n"), "five") / "routes.table", script.parent / "routes.table")
    res = run(ns, shell, script, "up")
    assert res.returncode == 0 and "2 route(s) installed or fixed" in res.stdout, res.stderr
    assert pod_routes(ns) == kept | {f"10.244.2.0/24 nhid {NH + 2} via 192.168.1.3 dev eth0 proto static", f"10.244.9.0/24 nhid {NH + 9} via 192.168.1.10 dev eth0 proto static"}
    assert run(ns, shell, script, "check").returncode == 0


@needs_net
@pytest.mark.netns
@pytest.mark.parametrize("shell", SHELLS)
def test_routes_on_reused_ids_never_follow_a_repointed_id(tmp_path, netns, shell):
    """The state routes.sh of line-numbered ids leaves behind: an intended route on
    another intended route's id, a removed node's route on an id podnet now gives to
    another subnet, a podnet nexthop nothing intended uses. up deletes the stale route
    and sets the misplaced one plain before any nexthop is repointed, then converges."""
    out = compile_to(tmp_path, FOUR)
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    for nhid, via in ((NH + 2, "192.168.1.4"), (NH + 3, "192.168.1.5"), (NH + 50, "192.168.1.3")):
        sh(["ip", "-n", ns, "nexthop", "add", "id", str(nhid), "via", via, "dev", "eth0", "proto", "244"])
    sh(["ip", "-n", ns, "route", "add", "10.244.3.0/24", "nhid", str(NH + 2), "proto", "static"])  # node3 on id 2
    sh(["ip", "-n", ns, "route", "add", "10.244.7.0/24", "nhid", str(NH + 3), "proto", "static"])  # a removed node's
    sh(["ip", "-n", ns, "route", "add", "10.244.2.0/24", "nhid", str(NH + 50), "proto", "static"])  # node2 on an old id
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODNET_SOURCE_ONLY": "1", "PODNET_ROUTES_TABLE": str(script.parent / "routes.table")}
    plan = subprocess.run([shutil.which("ip"), "netns", "exec", ns, shutil.which(shell[0]), *shell[1:], "-c", '. "$1"; require_tools; plan up; printf "%s\\n" "$COUNT" "$LINES"', "sh", str(script)],
                          capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert plan == [
        "3 1",
        f"route del 10.244.7.0/24 nhid {NH + 3}",
        "route replace 10.244.3.0/24 via 192.168.1.4 dev eth0 proto 4",
        f"nexthop replace id {NH + 2} via 192.168.1.3 dev eth0 proto 244",
        f"nexthop replace id {NH + 3} via 192.168.1.4 dev eth0 proto 244",
        f"nexthop replace id {NH + 4} via 192.168.1.5 dev eth0 proto 244",
        f"route replace 10.244.2.0/24 nhid {NH + 2} proto 4",
        f"route replace 10.244.3.0/24 nhid {NH + 3} proto 4",
        f"route replace 10.244.4.0/24 nhid {NH + 4} proto 4",
        f"nexthop del id {NH + 50}",
    ]
    res = run(ns, shell, script, "up")
    assert res.returncode == 0, res.stderr
    assert pod_routes(ns) == {f"10.244.{i}.0/24 nhid {NH + i} via 192.168.1.{i + 1} dev eth0 proto static" for i in (2, 3, 4)}
    assert nexthops(ns) == {f"id {NH + i} via 192.168.1.{i + 1} dev eth0 scope link proto 244" for i in (2, 3, 4)}
    assert run(ns, shell, script, "check").returncode == 0


@needs_net
@pytest.mark.netns
@pytest.mark.skipif(not have("unshare", "mount"), reason="needs unshare and mount")
def test_protocol_named_in_rt_protos(tmp_path, netns):
    """A name for 244 in rt_protos (here a private copy bind-mounted in a mount
    namespace of its own, the machine's /etc untouched) does not hide podnet's
    nexthops: routes.sh reads the kernel with `ip -N`."""
    out = compile_to(tmp_path, FOUR)
    script = install(out, "node1", tmp_path / "etc")
    ns = underlay_ns(netns, "192.168.1.2")
    protos = tmp_path / "rt_protos"
    protos.write_text(Path("/etc/iproute2/rt_protos").read_text() + "244\tpodnet\n")
    sh(["ip", "-n", ns, "nexthop", "add", "id", str(NH + 50), "via", "192.168.1.9", "dev", "eth0", "proto", "244"])

    def named(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /etc/iproute2/rt_protos && shift && exec "$@"', "sh", str(protos), *cmd],
                              capture_output=True, text=True, timeout=60)

    assert "proto podnet" in named("ip", "-n", ns, "nexthop", "show").stdout  # the name is in effect
    for action in ("up", "check"):
        res = named("ip", "netns", "exec", ns, "dash", str(script), action)
        assert res.returncode == 0, (action, res.stdout, res.stderr)
    assert nexthops(ns) == {f"id {NH + i} via 192.168.1.{i + 1} dev eth0 scope link proto 244" for i in (2, 3, 4)}
    sh(["ip", "-n", ns, "nexthop", "add", "id", str(NH + 50), "via", "192.168.1.9", "dev", "eth0", "proto", "244"])
    res = named("ip", "netns", "exec", ns, "dash", str(script), "check")
    assert res.returncode == 1 and res.stdout.splitlines() == [f"extra nexthop: id {NH + 50} via 192.168.1.9 dev eth0 proto 244"]
    res = named("ip", "netns", "exec", ns, "dash", str(script), "down")
    assert res.returncode == 0 and pod_routes(ns) == set()
    assert nexthops(ns) == {f"id {NH + 50} via 192.168.1.9 dev eth0 scope link proto 244"}
