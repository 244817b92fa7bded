"""The plugin on a dual-stack node: one address per family on the pod interface,
a default route per family, IPv6 without DAD, IPv6 forwarding, results listing
both addresses (with ips[].version for 0.3.x/0.4.0, ip4 and ip6 for 0.2.0), CHECK
of IPv6 routes, DEL of everything."""

from __future__ import annotations

import pytest

from helpers import have, sh
from plugin_node import SHELLS, PluginNode, ping

pytestmark = pytest.mark.skipif(not have("dash", "busybox", "iptables"), reason="needs dash, busybox and iptables")


def topology(version: str) -> str:
    return f"""
        network:
          name: podnet
          cniVersion: "{version}"
          podCIDR: [10.244.0.0/16, "fd00:10:244::/56"]
          nodePrefixLength: 24
          nodePrefixLength6: 64
          bridge: pnbr0
          mtu: 1400
        nodes:
          - name: node1
            address: [192.168.1.2, "fd00::2"]
            podCIDR: [10.244.1.0/24, "fd00:10:244:1::/64"]
          - name: node2
            address: [192.168.1.3, "fd00::3"]
        """


@pytest.mark.parametrize("version, shell", [("1.0.0", "dash"), ("1.0.0", "busybox ash"), ("0.4.0", "dash"), ("0.2.0", "busybox ash")])
def test_dual_stack_add_check_del(version, shell, netns, tmp_path):
    node = PluginNode(netns, tmp_path, shell=shell, topo_text=topology(version))
    a, b = node.new_pod("a"), node.new_pod("b")
    results = [node.cni("ADD", p) for p in (a, b)]
    assert all(r.rc == 0 for r in results), [str(r) for r in results]
    ra, rb = (r.json for r in results)
    if version == "0.2.0":
        assert ra["ip4"]["gateway"] == "10.244.1.1" and ra["ip4"]["routes"] == [{"dst": "0.0.0.0/0"}]
        assert ra["ip6"]["gateway"] == "fd00:10:244:1::1" and ra["ip6"]["routes"] == [{"dst": "::/0"}]
        b4, b6 = rb["ip4"]["ip"], rb["ip6"]["ip"]
    else:
        v4, v6 = ra["ips"]
        assert v4["address"].startswith("10.244.1.") and v4["gateway"] == "10.244.1.1" and v4["interface"] == 2
        assert v6["address"].startswith("fd00:10:244:1::") and v6["address"].endswith("/64") and v6["gateway"] == "fd00:10:244:1::1"
        assert ("version" in v4) == (version == "0.4.0")
        if version == "0.4.0":
            assert (v4["version"], v6["version"]) == ("4", "6")
        assert ra["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        b4, b6 = (ip["address"] for ip in rb["ips"])
    assert "default via fd00:10:244:1::1 dev eth0" in sh(["ip", "-n", a.ns, "-6", "route"]).stdout
    assert " nodad" in sh(["ip", "-n", a.ns, "-6", "addr", "show", "dev", "eth0"]).stdout
    assert sh(["ip", "netns", "exec", node.ns, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip() == "1"
    for target in (b4.split("/")[0], b6.split("/")[0], "10.244.1.1", "fd00:10:244:1::1"):
        assert ping(a, target), f"{a.ns} cannot reach {target}"

    if version != "0.2.0":
        assert node.cni("CHECK", a, conf=node.with_prev(ra)).rc == 0
        sh(["ip", "-n", a.ns, "-6", "route", "del", "default"])
        drift = node.cni("CHECK", a, conf=node.with_prev(ra))
        assert drift.rc == 1 and "route to ::/0 via fd00:10:244:1::1 is missing" in drift.json["msg"], drift
    for pod in (a, b):
        assert node.cni("DEL", pod).rc == 0
    assert node.leases() == {} and node.veths() == []


@pytest.mark.parametrize("shell", SHELLS)
def test_ipv6_only_node_forwards_ipv6_only_and_del_leaves_loopback_up(shell, netns, tmp_path):
    """An IPv6-only node turns on IPv6 forwarding, not IPv4's (it stays no IPv4 router).
    DEL removes the pair and leaves the pod's loopback up: other networks of the pod
    may still need it."""
    text = """
        network:
          name: podnet
          podCIDR: "fd00:10:244::/56"
          bridge: pnbr0
        nodes:
          - name: node1
            address: "fd00::2"
        """
    node = PluginNode(netns, tmp_path, shell=shell, topo_text=text)
    pod = node.new_pod()
    added = node.cni("ADD", pod)
    assert added.rc == 0, added
    forwarding = lambda family: sh(["ip", "netns", "exec", node.ns, "cat", f"/proc/sys/net/{family}"]).stdout.strip()  # noqa: E731
    assert (forwarding("ipv4/ip_forward"), forwarding("ipv6/conf/all/forwarding")) == ("0", "1")
    assert node.cni("DEL", pod).rc == 0
    assert node.link_names(pod.ns) == ["lo"] and node.veths() == []
    assert ",UP" in sh(["ip", "-n", pod.ns, "-br", "link", "show", "dev", "lo"]).stdout.split()[3]
