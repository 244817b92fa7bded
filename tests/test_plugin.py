"""net-setup.sh as a CNI plugin: the protocol for every spec version, under dash and
busybox ash, in real network namespaces; direct mode; chained prevResult; GC and
STATUS; masquerade; DEL idempotency."""

from __future__ import annotations

import ipaddress
import os
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import have, sh
from plugin_node import BRIDGE, GATEWAY, MTU, SHELLS, SUBNET, VERSIONS, PluginNode, ping

pytestmark = pytest.mark.skipif(not have("dash", "busybox", "iptables"), reason="needs dash, busybox and iptables")

CURRENT = ("1.0.0", "1.1.0")
WITH_VERSION_FIELD = ("0.3.0", "0.3.1", "0.4.0")


def result_address(result: dict) -> str:
    if "ip4" in result:
        return result["ip4"]["ip"]
    (ip,) = result["ips"]
    return ip["address"]


def assert_result_shape(node: PluginNode, pod, result: dict, version: str) -> None:
    """The result in `version`'s format, describing what the kernel holds."""
    assert result["cniVersion"] == version
    if version == "0.2.0":
        assert set(result) == {"cniVersion", "ip4", "dns"}
        assert result["ip4"]["gateway"] == GATEWAY and result["ip4"]["routes"] == [{"dst": "0.0.0.0/0"}]
        assert result["dns"] == {}
        return
    assert list(result) == ["cniVersion", "interfaces", "ips", "routes", "dns"]
    bridge, host, inner = result["interfaces"]
    links = {l["ifname"]: l for l in node.links()}
    assert bridge == {"name": BRIDGE, "mac": links[BRIDGE]["address"]}
    assert host["name"].startswith("veth") and len(host["name"]) <= 15 and set(host) == {"name", "mac"}
    assert links[host["name"]]["address"] == host["mac"] and links[host["name"]]["master"] == BRIDGE
    pod_link = {l["ifname"]: l for l in node.links(pod.ns)}[pod.ifname]
    assert inner == {"name": pod.ifname, "mac": pod_link["address"], "sandbox": pod.path}
    (ip,) = result["ips"]
    expected_keys = ["version", "interface", "address", "gateway"] if version in WITH_VERSION_FIELD else ["interface", "address", "gateway"]
    assert list(ip) == expected_keys
    assert ip["interface"] == 2 and ip["gateway"] == GATEWAY
    if version in WITH_VERSION_FIELD:
        assert ip["version"] == "4"
    assert result["routes"] == [{"dst": "0.0.0.0/0"}] and result["dns"] == {}


def assert_attached(node: PluginNode, pod, address: str) -> None:
    iface = ipaddress.ip_interface(address)
    assert iface.network == ipaddress.ip_network(SUBNET) and str(iface.ip) != GATEWAY
    assert node.pod_addresses(pod) == [address]
    assert f"default via {GATEWAY} dev {pod.ifname} " in [r + " " if not r.endswith(" ") else r for r in node.pod_routes(pod)]
    links = {l["ifname"]: l for l in node.links(pod.ns)}
    assert links[pod.ifname]["mtu"] == MTU and "UP" in links[pod.ifname]["flags"]
    assert "UP" in links["lo"]["flags"], "loopback must be up in the pod"
    # one TX and one RX queue on each end of the pair (see add_links_and_lease)
    (host_end,) = [l for l in node.links() if l.get("ifalias") == f"podnet:{pod.cid}/{pod.ifname}"]
    assert [(e["num_tx_queues"], e["num_rx_queues"]) for e in (links[pod.ifname], host_end)] == [(1, 1), (1, 1)]
    node_links = {l["ifname"]: l for l in node.links()}
    assert node_links[BRIDGE]["linkinfo"]["info_kind"] == "bridge" and "UP" in node_links[BRIDGE]["flags"]
    bridge_addrs = sh(["ip", "-n", node.ns, "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    assert f" {GATEWAY}/24 " in bridge_addrs
    assert sh(["ip", "netns", "exec", node.ns, "cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"


def assert_clean(node: PluginNode, *pods) -> None:
    assert node.veths() == [], f"host veths left: {node.veths()}"
    assert node.leases() == {}, f"leases left: {node.leases()}"
    for pod in pods:
        assert pod.ifname not in node.link_names(pod.ns), f"{pod.ifname} left in {pod.ns}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("shell", SHELLS)
def test_add_check_del_every_version(shell, version, netns, tmp_path):
    node = PluginNode(netns, tmp_path, version=version, shell=shell)
    a, b = node.new_pod("a"), node.new_pod("b")
    results = {}
    for pod in (a, b):
        added = node.cni("ADD", pod)
        assert added.rc == 0, added
        assert added.stdout.count("\n") == 1 and added.stderr == "", added
        results[pod.cid] = added.json
        assert_result_shape(node, pod, added.json, version)
        assert_attached(node, pod, result_address(added.json))
    addr_a, addr_b = (result_address(results[p.cid]).split("/")[0] for p in (a, b))
    assert addr_a != addr_b
    assert sorted(node.leases()) == sorted([addr_a, addr_b])
    assert node.leases()[addr_a] == f"{a.cid} eth0"
    assert ping(a, addr_b) and ping(b, addr_a) and ping(a, GATEWAY)

    if version not in ("0.2.0", "0.3.0", "0.3.1"):
        for pod in (a, b):
            checked = node.cni("CHECK", pod, conf=node.with_prev(results[pod.cid]))
            assert checked.rc == 0 and checked.stdout == "", checked

    for pod in (a, b, a):  # the second DEL of `a` succeeds too
        deleted = node.cni("DEL", pod, conf=node.with_prev(results[pod.cid]))
        assert deleted.rc == 0 and deleted.stdout == "", deleted
    assert_clean(node, a, b)
    assert len(node.nat_rules()) == 1


@pytest.mark.parametrize("shell", SHELLS)
def test_version_lists_every_supported_version(shell, netns, tmp_path):
    node = PluginNode(netns, tmp_path, shell=shell)
    done = node.cni("VERSION", stdin='{"cniVersion":"1.1.0"}')
    assert done.rc == 0, done
    assert done.json == {"cniVersion": "1.1.0", "supportedVersions": list(VERSIONS)}


@pytest.mark.parametrize("shell", SHELLS)
def test_direct_mode(shell, netns, tmp_path):
    """`net-setup.sh add|check|del CONTAINER NETNS`, NETNS a name or a path."""
    node = PluginNode(netns, tmp_path, shell=shell)
    a, b = node.new_pod("a"), node.new_pod("b")
    added = node.direct("add", "web-1", a.ns)
    assert added.rc == 0, added
    assert added.stdout.splitlines()[0] == f"web-1: eth0 in {a.path} has 10.244.1.2/24 via {GATEWAY}"
    assert added.stdout.splitlines()[1].startswith("web-1: host side veth")
    assert node.direct("add", "web-2", b.path).rc == 0
    assert ping(a, "10.244.1.3")
    checked = node.direct("check", "web-1", a.ns)
    assert checked.rc == 0 and checked.stdout == f"web-1: eth0 in {a.path} is as configured\n", checked

    sh(["ip", "-n", a.ns, "route", "del", "default"])
    drift = node.direct("check", "web-1", a.ns)
    assert drift.rc == 1 and drift.stdout == ""
    assert f"route to 0.0.0.0/0 via {GATEWAY} is missing" in drift.stderr, drift

    for args in (("del", "web-1", a.ns), ("del", "web-2", b.path), ("del", "web-1")):
        done = node.direct(*args)
        assert done.rc == 0 and "removed" in done.stdout, done
    assert_clean(node)

    usage = node.direct("add", "web-3")
    assert usage.rc == 2 and "usage:" in usage.stderr and usage.stdout == ""


@pytest.mark.parametrize("shell", SHELLS)
def test_check_names_every_difference(shell, netns, tmp_path):
    node = PluginNode(netns, tmp_path, shell=shell)
    pod = node.new_pod()
    added = node.cni("ADD", pod)
    assert added.rc == 0, added
    conf = node.with_prev(added.json)
    address = result_address(added.json)

    sh(["ip", "-n", pod.ns, "addr", "del", address, "dev", "eth0"])
    sh(["ip", "-n", pod.ns, "link", "set", "eth0", "mtu", "1300"])
    drift = node.cni("CHECK", pod, conf=conf)
    assert drift.rc == 1, drift
    error = drift.json
    assert error["code"] == 101 and error["cniVersion"] == "1.0.0"
    assert f"address {address} is missing on eth0" in error["msg"]
    assert f"does not have the MTU {MTU}" in error["msg"]
    assert "route to 0.0.0.0/0" in error["msg"]  # the route went with the address

    wrong = dict(added.json, ips=[dict(added.json["ips"][0], address="10.244.1.99/24")])
    mismatch = node.cni("CHECK", pod, conf=node.with_prev(wrong))
    assert mismatch.rc == 1 and "10.244.1.99/24 is not leased" in mismatch.json["msg"], mismatch

    no_prev = node.cni("CHECK", pod)
    assert no_prev.rc == 1 and no_prev.json["code"] == 7 and "prevResult" in no_prev.json["msg"]

    # the host side: its end down or of another MTU, the bridge down or without its gateway
    sh(["ip", "-n", pod.ns, "addr", "add", address, "dev", "eth0"])
    sh(["ip", "-n", pod.ns, "link", "set", "eth0", "mtu", str(MTU)])
    sh(["ip", "-n", pod.ns, "route", "add", "default", "via", GATEWAY])
    assert node.cni("CHECK", pod, conf=conf).rc == 0
    (veth,) = node.veths()
    for cmd in (["link", "set", veth, "down"], ["link", "set", veth, "mtu", "1280"], ["link", "set", BRIDGE, "down"], ["addr", "flush", "dev", BRIDGE]):
        sh(["ip", "-n", node.ns, *cmd])
    drift = node.cni("CHECK", pod, conf=conf)
    assert drift.rc == 1, drift
    assert [p for p in drift.json["msg"].split(": ", 1)[1].split("; ") if "route" not in p] == [
        f"host interface {veth} is down", f"host interface {veth} does not have the MTU {MTU}",
        f"bridge {BRIDGE} is down", f"bridge {BRIDGE} lacks the gateway address {GATEWAY}/24"], drift
    assert node.cni("DEL", pod).rc == 0
    gone = node.cni("CHECK", pod, conf=conf)
    assert gone.rc == 1 and "interface eth0 is missing" in gone.json["msg"] and "no lease" not in gone.json["msg"]
    assert_clean(node, pod)


def test_check_needs_version_0_4_0(netns, tmp_path):
    node = PluginNode(netns, tmp_path, version="0.3.1")
    pod = node.new_pod()
    added = node.cni("ADD", pod)
    checked = node.cni("CHECK", pod, conf=node.with_prev(added.json))
    assert checked.rc == 1 and checked.json["code"] == 1 and checked.json["cniVersion"] == "0.3.1", checked
    assert node.cni("DEL", pod).rc == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_chained_add_keeps_the_previous_result(shell, netns, tmp_path):
    """ADD with prevResult (a plugin earlier in the list): its interfaces, ips, routes
    and dns come first and our ips point at our sandbox interface."""
    node = PluginNode(netns, tmp_path, shell=shell)
    pod = node.new_pod()
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "tap0", "mac": "02:00:00:00:00:01", "sandbox": pod.path, "mtu": 9000}],
        "ips": [{"interface": 0, "address": "192.0.2.5/24", "gateway": "192.0.2.1"}],
        "routes": [{"dst": "198.51.100.0/24", "gw": "192.0.2.1"}],
        "dns": {"nameservers": ["192.0.2.53"], "search": ["svc.local"]},
    }
    added = node.cni("ADD", pod, conf=node.with_prev(prev))
    assert added.rc == 0, added
    result = added.json
    assert result["interfaces"][0] == prev["interfaces"][0]
    assert [i["name"] for i in result["interfaces"][1:]] == [BRIDGE, result["interfaces"][2]["name"], "eth0"]
    assert result["ips"][0] == prev["ips"][0]
    assert result["ips"][1]["interface"] == 3 and result["ips"][1]["address"].startswith("10.244.1.")
    assert result["routes"] == prev["routes"] + [{"dst": "0.0.0.0/0"}]
    assert result["dns"] == prev["dns"]
    # CHECK finds our interface by name and sandbox, whatever comes before it
    checked = node.cni("CHECK", pod, conf=node.with_prev(result))
    assert checked.rc == 1 and "198.51.100.0/24" in checked.json["msg"], "the foreign route is missing, CHECK must say so"
    # Once the earlier plugin's routes exist, on its own interface, as it made them (a
    # host route too, which `ip route` lists without /32; one without a gateway), a
    # healthy attachment passes: routes are matched by destination and gateway, as the
    # reference plugins match them, not on podnet's interface.
    for cmd in (["link", "add", "tap0", "type", "veth", "peer", "name", "tap0peer"], ["link", "set", "tap0", "up"], ["link", "set", "tap0peer", "up"], ["addr", "add", "192.0.2.5/24", "dev", "tap0"],
                ["route", "add", "198.51.100.0/24", "via", "192.0.2.1", "dev", "tap0"], ["route", "add", "203.0.113.7/32", "via", "192.0.2.1"],
                ["route", "add", "203.0.113.64/26", "dev", "tap0"]):
        sh(["ip", "-n", pod.ns, *cmd])
    result["routes"] += [{"dst": "203.0.113.7/32", "gw": "192.0.2.1"}, {"dst": "203.0.113.64/26"}]
    checked = node.cni("CHECK", pod, conf=node.with_prev(result))
    assert checked.rc == 0, checked
    sh(["ip", "-n", pod.ns, "route", "del", "203.0.113.7/32"])
    checked = node.cni("CHECK", pod, conf=node.with_prev(result))
    assert checked.rc == 1 and checked.json["msg"].endswith("route to 203.0.113.7/32 via 192.0.2.1 is missing in " + pod.path), checked
    sh(["ip", "-n", pod.ns, "link", "del", "tap0"])
    assert node.cni("DEL", pod).rc == 0
    assert_clean(node, pod)


def test_0_2_0_result_and_conf(netns, tmp_path):
    node = PluginNode(netns, tmp_path, version="0.2.0")
    assert (node.dir / "10-podnet.conf").exists()
    pod = node.new_pod()
    added = node.cni("ADD", pod)
    assert added.rc == 0, added
    assert added.json == {"cniVersion": "0.2.0", "ip4": {"ip": "10.244.1.2/24", "gateway": GATEWAY, "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}}
    assert node.cni("DEL", pod).rc == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_del_is_best_effort_and_idempotent(shell, netns, tmp_path):
    node = PluginNode(netns, tmp_path, shell=shell)
    # a container the plugin never saw; netns missing; CNI_NETNS empty
    stranger = node.new_pod()
    assert node.cni("DEL", stranger).rc == 0
    assert node.cni("DEL", stranger, env={"CNI_NETNS": ""}).rc == 0
    assert node.cni("DEL", stranger, env={"CNI_NETNS": "/run/netns/does-not-exist"}).rc == 0

    # the netns is gone before DEL: the lease is released, the veth died with it
    gone = node.new_pod()
    assert node.cni("ADD", gone).rc == 0
    sh(["ip", "netns", "del", gone.ns])
    node.netns.created.remove(gone.ns)
    assert node.cni("DEL", gone).rc == 0
    assert node.cni("DEL", gone).rc == 0

    # DEL without CNI_NETNS while the netns lives: the host veth is found by its alias
    alive = node.new_pod()
    assert node.cni("ADD", alive).rc == 0
    done = node.cni("DEL", alive, env={"CNI_NETNS": ""})
    assert done.rc == 0 and done.stdout == "", done
    assert_clean(node, alive)

    # a host veth of the derived name that is not ours is left alone
    other = node.new_pod()
    assert node.cni("ADD", other).rc == 0
    veth = node.veths()[0]
    sh(["ip", "-n", node.ns, "link", "set", veth, "alias", "somebody-else"])
    assert node.cni("DEL", other, env={"CNI_NETNS": ""}).rc == 0
    assert node.veths() == [veth] and node.leases() == {}
    sh(["ip", "-n", node.ns, "link", "del", veth])


@pytest.mark.parametrize("masquerade", (True, False))
def test_one_masquerade_rule_whatever_happens(masquerade, netns, tmp_path):
    node = PluginNode(netns, tmp_path, masquerade=masquerade)
    pods = [node.new_pod(str(i)) for i in range(3)]
    for _ in range(3):
        for pod in pods:
            assert node.cni("ADD", pod).rc == 0
        for pod in pods:
            assert node.cni("DEL", pod, env={"CNI_NETNS": ""} if pod is pods[0] else None).rc == 0
    rules = node.nat_rules()
    if masquerade:
        assert rules == ['-A POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment "podnet:podnet" -j MASQUERADE']
    else:
        assert rules == []
    assert_clean(node, *pods)


def test_parallel_adds_and_dels(netns, tmp_path):
    """ADDs racing on a node without a bridge yet: one bridge, one rule, distinct addresses."""
    node = PluginNode(netns, tmp_path)
    pods = [node.new_pod(str(i)) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        added = list(pool.map(lambda p: node.cni("ADD", p), pods))
    assert all(a.rc == 0 for a in added), [str(a) for a in added if a.rc]
    addresses = [result_address(a.json) for a in added]
    assert len(set(addresses)) == len(pods)
    assert len(node.nat_rules()) == 1 and len(node.veths()) == len(pods)
    with ThreadPoolExecutor(12) as pool:
        deleted = list(pool.map(lambda p: node.cni("DEL", p), pods))
    assert all(d.rc == 0 for d in deleted), [str(d) for d in deleted if d.rc]
    assert_clean(node, *pods)


@pytest.mark.parametrize("shell", SHELLS)
def test_gc_and_status(shell, netns, tmp_path):
    node = PluginNode(netns, tmp_path, version="1.1.0", shell=shell)
    a, b, c = (node.new_pod(x) for x in "abc")
    for pod in (a, b, c):
        assert node.cni("ADD", pod).rc == 0
    status = node.cni("STATUS")
    assert status.rc == 0 and status.stdout == "", status

    missing = node.cni("GC")
    assert missing.rc == 1 and missing.json["code"] == 7 and len(node.leases()) == 3, missing
    # An entry the plugin cannot read keeps nothing alive, so GC refuses it (error 7)
    # rather than release what that entry may name (b's); keys spelt in another case
    # are read as Go reads them.
    for unread in ({}, {"containerID": b.cid}, {"containerID": b.cid, "ifname": 7}, {"containerID": b.cid, "ifname": "eth0", "IFNAME": ""}):
        keep = [{"containerID": a.cid, "ifname": "eth0"}, unread, {"containerID": c.cid, "ifname": "eth0"}]
        refused = node.cni("GC", conf={**node.conf, "cni.dev/valid-attachments": keep})
        assert refused.rc == 1 and refused.json["code"] == 7 and "nothing was released" in refused.json["details"], (unread, refused)
        assert len(node.leases()) == 3 and len(node.veths()) == 3
    keep = [{"containerID": a.cid, "ifname": "eth0"}, {"containerId": b.cid, "IfName": "eth0"}, {"ContainerID": c.cid, "ifname": "eth0"}]
    done = node.cni("GC", conf={**node.conf, "Cni.Dev/Valid-Attachments": keep})
    assert done.rc == 0 and len(node.leases()) == 3 and len(node.veths()) == 3, done
    keep = [{"containerID": a.cid, "ifname": "eth0"}, {"containerID": b.cid, "ifname": "eth0"}]
    done = node.cni("GC", conf={**node.conf, "cni.dev/valid-attachments": keep})
    assert done.rc == 0 and done.stdout == "", done
    assert sorted(node.leases().values()) == sorted(f"{p.cid} eth0" for p in (a, b))
    assert len(node.veths()) == 2 and "eth0" not in node.link_names(c.ns)
    done = node.cni("GC", conf={**node.conf, "cni.dev/attachments": keep[:1]})
    assert done.rc == 0 and list(node.leases().values()) == [f"{a.cid} eth0"] and len(node.veths()) == 1
    for pod in (a, b, c):
        assert node.cni("DEL", pod).rc == 0
    assert_clean(node, a, b, c)


@pytest.mark.parametrize("started_as", ["path", "bare name"])
def test_status_finds_the_fallback_where_ipam_does(netns, tmp_path, started_as):
    """Without flock, STATUS checks podnet-ipam.py where IPAM runs it from: beside the
    plugin, or ./ for a plugin started by its bare name from its directory."""
    from plugin_node import path_without

    node = PluginNode(netns, tmp_path, version="1.1.0")
    env = {"PATH": path_without(tmp_path, "flock")}
    script = 'exec $PLUGIN_SHELL "$PLUGIN"' if started_as == "path" else 'cd "${PLUGIN%/*}" && exec $PLUGIN_SHELL "${PLUGIN##*/}"'
    status = node.cni("STATUS", env=env, script=script)
    assert status.rc == 0 and status.stdout == "", status
    (node.dir / "podnet-ipam.py").rename(node.dir / "moved.py")
    status = node.cni("STATUS", env=env, script=script)
    assert status.rc == 1 and status.json["code"] == 50 and "podnet-ipam.py is not beside the plugin" in status.json["msg"], status


def test_gc_and_status_need_1_1_0(netns, tmp_path):
    node = PluginNode(netns, tmp_path, version="1.0.0")
    for command in ("GC", "STATUS"):
        done = node.cni(command, conf={**node.conf, "cni.dev/valid-attachments": []})
        assert done.rc == 1 and done.json["code"] == 1 and "1.1.0" in done.json["details"], done


def test_masquerade_rule_once_without_flock(netns, tmp_path):
    """Where util-linux flock is missing, the rule's check-and-add is serialised by
    the Python fallback's flock(2): parallel ADDs on a fresh node add it once."""
    from plugin_node import path_without

    node = PluginNode(netns, tmp_path)
    env = {"PATH": path_without(tmp_path, "flock")}
    pods = [node.new_pod(str(i)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda p: node.cni("ADD", p, env=env), pods))
    assert all(a.rc == 0 for a in added), [str(a) for a in added if a.rc]
    assert len(node.nat_rules()) == 1
    for pod in pods:
        assert node.cni("DEL", pod, env=env).rc == 0
    assert_clean(node, *pods)


@pytest.mark.parametrize("missing, named", [(("iptables",), "iptables"), (("flock", "python3"), "flock nor python3")])
def test_status_names_what_is_missing(missing, named, netns, tmp_path):
    from plugin_node import path_without

    node = PluginNode(netns, tmp_path, version="1.1.0")
    done = node.cni("STATUS", env={"PATH": path_without(tmp_path, *missing)})
    assert done.rc == 1 and done.json["code"] == 50 and named in done.json["msg"], done


def test_status_needs_the_ipam_fallback_where_flock_is_missing(netns, tmp_path):
    from plugin_node import path_without

    node = PluginNode(netns, tmp_path, version="1.1.0")
    env = {"PATH": path_without(tmp_path, "flock")}
    assert node.cni("STATUS", env=env).rc == 0
    (node.dir / "podnet-ipam.py").unlink()
    done = node.cni("STATUS", env=env)
    assert done.rc == 1 and done.json["code"] == 50 and "podnet-ipam.py" in done.json["msg"], done


@pytest.mark.parametrize("ifname", ["help", "up", "dev", "name", "-x", "a;b$(c)", "net1.100"])
def test_interface_names_that_are_ip_keywords_or_odd(ifname, netns, tmp_path):
    """Valid interface names that `ip` could read as keywords or options work:
    every batch line names interfaces after `dev` or `name`."""
    node = PluginNode(netns, tmp_path)
    pod = node.new_pod()
    pod.ifname = ifname
    added = node.cni("ADD", pod)
    assert added.rc == 0, added
    assert added.json["interfaces"][2]["name"] == ifname and ifname in node.link_names(pod.ns)
    assert node.cni("CHECK", pod, conf=node.with_prev(added.json)).rc == 0
    assert node.cni("DEL", pod).rc == 0
    assert_clean(node, pod)


NETNS_PATHS = {
    "proc": ("", "{proc}"),
    # a node where no named netns was ever made: `ip -n` needs the directory to climb from
    "proc, no /run/netns": ("mount -t tmpfs none /run && ", "{proc}"),
    # a path through /run/netns that leaves it: the file it names, not its last part
    "through /run/netns": ("", "/run/netns/../..{proc}"),
}


@pytest.mark.parametrize("variant", NETNS_PATHS)
@pytest.mark.parametrize("shell", SHELLS)
def test_netns_given_as_a_proc_path(shell, variant, netns, tmp_path):
    """CNI_NETNS outside /run/netns (as some runtimes pass it): /proc/PID/ns/net of a
    process living in the pod's namespace (one this test started and stops)."""
    import subprocess
    import time

    node = PluginNode(netns, tmp_path, shell=shell)
    pod = node.new_pod()
    # `ip netns exec` enters the namespace, then execs sleep: same PID.
    holder = subprocess.Popen(["ip", "netns", "exec", pod.ns, "sleep", "60"])
    try:
        proc_path = None
        for _ in range(100):
            candidate = f"/proc/{holder.pid}/ns/net"
            if os.path.exists(candidate) and os.stat(candidate).st_ino == os.stat(pod.path).st_ino:
                proc_path = candidate
                break
            time.sleep(0.05)
        assert proc_path, "the holder process never entered the pod's namespace"
        prefix, path = NETNS_PATHS[variant]
        env = {"CNI_NETNS": path.format(proc=proc_path)}
        script = prefix + 'exec $PLUGIN_SHELL "$PLUGIN"'
        added = node.cni("ADD", pod, env=env, script=script)
        assert added.rc == 0, added
        assert added.json["interfaces"][2]["sandbox"] == env["CNI_NETNS"]
        assert "eth0" in node.link_names(pod.ns)
        assert node.cni("CHECK", pod, conf=node.with_prev(added.json), env=env, script=script).rc == 0
        assert node.cni("DEL", pod, env=env, script=script).rc == 0
        assert node.link_names(pod.ns) == ["lo"]
        assert_clean(node, pod)
    finally:
        holder.kill()
        holder.wait()
