"""Dual-stack through real peers: podnet's plugin driven by libcni (as a runtime
drives it) with two range sets, one per family, and diffed against the reference
bridge + host-local on the same compiled configuration.

As in test_libcni.py, every libcni assertion also runs against the reference
(`impl`), so a check the reference fails is a broken check, not a podnet bug.
Masquerade is off here: podnet masquerades IPv4 only (plan.masquerades), the
reference's ipMasq would also NAT IPv6 through ip6tables; that difference is
intended and documented, and IPv4 masquerade is compared in test_differential.py.
"""

from __future__ import annotations

import ipaddress
import textwrap
from typing import Any, Dict, List, Tuple

import pytest

from peers import (
    BRIDGE,
    CHECK_VERSIONS,
    MTU,
    CniNode,
    Pod,
    compile_topology,
    differences,
    diagnostics,
    driver_available,
    install_podnet,
    install_reference,
    ip_json,
    is_up,
    link,
    node_facts,
    ping,
    result_ips,
    result_shape,
)

pytestmark = pytest.mark.netns

IMPLS = ("reference", "podnet")
SUBNETS = (ipaddress.ip_network("10.244.1.0/24"), ipaddress.ip_network("fd00:10:244:1::/64"))
GATEWAYS = ("10.244.1.1", "fd00:10:244:1::1")


def topology(version: str) -> str:
    return textwrap.dedent(
        f"""
        network:
          name: podnet
          cniVersion: "{version}"
          podCIDR: [10.244.0.0/16, "fd00:10:244::/56"]
          nodePrefixLength6: 64
          bridge: {BRIDGE}
          mtu: {MTU}
          masquerade: false
        nodes:
          - name: node1
            address: [192.168.1.2, "fd00::2"]
            podCIDR: [{SUBNETS[0]}, "{SUBNETS[1]}"]
          - name: node2
            address: [192.168.1.3, "fd00::3"]
        """
    )


@pytest.fixture
def driver():
    ok, why = driver_available()
    if not ok:
        pytest.skip(why)


def make_node(impl: str, version: str, netns, tmp_path) -> CniNode:
    out = compile_topology(tmp_path / impl, topology(version)) if (tmp_path / impl).mkdir() is None else None
    install = install_reference if impl == "reference" else install_podnet
    return install(out, netns.add(f"{impl[:3]}node"), tmp_path / impl / "root")


def addresses(ns: str, dev: str) -> List[Tuple[str, int]]:
    """Global addresses of dev, both families (link-local ones are the kernel's)."""
    out = []
    for entry in ip_json(ns, "addr", "show", "dev", dev):
        out += [(a["local"], a["prefixlen"]) for a in entry.get("addr_info", []) if a.get("scope") == "global"]
    return sorted(out)


def routes(ns: str) -> List[Tuple[str, str, str]]:
    """(dst, gateway or '', dev) of the main table in both families, without the
    link-local and multicast routes every IPv6 interface gets."""
    out = []
    for family in ("-4", "-6"):
        for r in ip_json(ns, family, "route", "show", "table", "main"):
            if not r.get("dst", "").startswith(("fe80:", "ff00:")):
                out.append((r.get("dst", ""), r.get("gateway", ""), r.get("dev", "")))
    return sorted(out)


def pod_facts(pod: Pod) -> Dict[str, Any]:
    dev = link(pod.ns, pod.ifname)
    return {
        "interface_up": is_up(dev),
        "mtu": dev.get("mtu") if dev else None,
        "addresses": addresses(pod.ns, pod.ifname) if dev else [],
        "routes": routes(pod.ns),
        "tentative": [a["local"] for e in ip_json(pod.ns, "-6", "addr", "show", "dev", pod.ifname) for a in e.get("addr_info", []) if a.get("tentative")] if dev else [],
    }


def dual_node_facts(node: CniNode) -> Dict[str, Any]:
    facts = node_facts(node, BRIDGE)
    facts["bridge_addresses"] = addresses(node.ns, BRIDGE) if link(node.ns, BRIDGE) else []
    facts["ipv6_forwarding"] = node.sh("cat /proc/sys/net/ipv6/conf/all/forwarding").stdout.strip()
    return facts


def assert_dual_attached(pod: Pod, result: dict) -> Tuple[str, str]:
    """One address per family in the result, in podCIDR's order, and in the kernel."""
    ips = result_ips(result)
    assert len(ips) == 2, f"one address per family expected: {result}"
    got = []
    for (address, gateway), subnet, gw in zip(ips, SUBNETS, GATEWAYS):
        iface = ipaddress.ip_interface(address)
        assert iface.network == subnet and gateway == gw, (address, gateway)
        got.append(str(iface.ip))
    facts = pod_facts(pod)
    assert facts["interface_up"] and facts["mtu"] == MTU, facts
    assert facts["addresses"] == sorted([(got[0], 24), (got[1], 64)]), facts
    assert {("default", GATEWAYS[0], pod.ifname), ("default", GATEWAYS[1], pod.ifname)} <= set(facts["routes"]), facts
    # usable at once: no tentative address, and the link-local one is the kernel's usual
    # modified EUI-64 of the MAC
    assert facts["tentative"] == [], facts
    link_local = [a["local"] for e in ip_json(pod.ns, "-6", "addr", "show", "dev", pod.ifname) for a in e["addr_info"] if a.get("scope") == "link"]
    assert link_local == [eui64(link(pod.ns, pod.ifname)["address"])], link_local
    return got[0], got[1]


def eui64(mac: str) -> str:
    octets = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([octets[0] ^ 2]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("impl", IMPLS)
def test_dual_stack_through_libcni(impl, version, netns, tmp_path, driver):
    node = make_node(impl, version, netns, tmp_path)
    a, b = (Pod(netns.add(f"pod{i}", lo_up=False)) for i in range(2))
    added = {}
    for pod in (a, b):
        done = node.attach(pod)
        assert done.rc == 0, done.describe()
        added[pod.cid] = assert_dual_attached(pod, done.result)
        if version != "0.3.0":
            versions = [ip.get("version") for ip in done.raw[-1]["ips"]]
            assert versions == (["4", "6"] if version in ("0.3.1", "0.4.0") else [None, None]), done.raw[-1]
    (a4, a6), (b4, b6) = added[a.cid], added[b.cid]
    # host-local's store: one lease per family, IPv6 in its RFC 5952 spelling
    assert node.leases() == {a4: f"{a.cid} eth0", a6: f"{a.cid} eth0", b4: f"{b.cid} eth0", b6: f"{b.cid} eth0"}
    assert sorted(p.name for p in node.store().iterdir() if p.name.startswith("last_reserved_ip")) == ["last_reserved_ip.0", "last_reserved_ip.1"]

    if version in CHECK_VERSIONS:
        for pod in (a, b):
            checked = node.driver("check", pod)
            assert checked.rc == 0, checked.describe()

    for src, dst in ((a, b4), (a, b6), (b, a6), (a, GATEWAYS[1]), (b, GATEWAYS[0])):
        pinged = ping(src, dst)
        assert pinged.returncode == 0, f"{src.ns} cannot reach {dst}: {pinged.stdout}{pinged.stderr}\n{diagnostics(node.ns, a.ns, b.ns)}"

    for pod in (a, b, a):  # a second DEL succeeds too
        deleted = node.detach(pod)
        assert deleted.rc == 0, deleted.describe()
    assert node.leases() == {} and node.cached_results() == []
    assert [l["ifname"] for l in node.links() if l["ifname"] not in ("lo", BRIDGE)] == []
    for pod in (a, b):
        assert link(pod.ns, pod.ifname) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_dual_stack_check_names_a_missing_ipv6_route(impl, netns, tmp_path, driver):
    """CHECK covers the IPv6 side too: without the pod's IPv6 default route it fails."""
    node = make_node(impl, "1.0.0", netns, tmp_path)
    pod = Pod(netns.add("pod", lo_up=False))
    assert node.attach(pod).rc == 0
    assert node.driver("check", pod).rc == 0
    node.sh(f"ip netns exec {pod.ns} ip -6 route del default")
    checked = node.driver("check", pod)
    assert checked.rc != 0, checked.describe()
    assert node.detach(pod).rc == 0


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_dual_stack_matches_reference(version, netns, tmp_path, driver):
    """podnet and the reference on one compiled dual-stack configuration: results,
    what pods and the node see (both families), and the leases, compared."""
    ref, pn = make_node("reference", version, netns, tmp_path), make_node("podnet", version, netns, tmp_path)
    ref_pods = [Pod(netns.add(f"refpod{i}", lo_up=False)) for i in range(2)]
    pn_pods = [Pod(netns.add(f"pnpod{i}", lo_up=False)) for i in range(2)]
    found: List[str] = []

    def compare(label, a, b):
        found.extend(f"{label}: {d}" for d in differences(a, b))

    for i, (rp, pp) in enumerate(zip(ref_pods, pn_pods)):
        r, p = ref.attach(rp), pn.attach(pp)
        assert r.rc == 0, f"reference ADD failed (harness problem): {r.describe()}"
        assert p.rc == 0, f"podnet ADD failed: {p.describe()}"
        compare(f"pod{i} result (libcni)", result_shape(r.result), result_shape(p.result))
        compare(f"pod{i} result (raw)", result_shape(r.raw[-1]), result_shape(p.raw[-1]))
        compare(f"pod{i} kernel", pod_facts(rp), pod_facts(pp))
    compare("node", dual_node_facts(ref), dual_node_facts(pn))
    names = lambda node, pods: {ip: " ".join({p.cid: f"pod{i}" for i, p in enumerate(pods)}.get(w, w) for w in owner.split()) for ip, owner in node.leases().items()}  # noqa: E731
    compare("leases", names(ref, ref_pods), names(pn, pn_pods))
    last = lambda node: {p.name: p.read_text() for p in node.store().iterdir() if p.name.startswith("last_reserved_ip")}  # noqa: E731
    compare("last_reserved_ip", last(ref), last(pn))

    for i, (rp, pp) in enumerate(zip(ref_pods, pn_pods)):
        assert ref.detach(rp).rc == 0
        assert pn.detach(pp).rc == 0
    compare("leases after DEL", names(ref, ref_pods), names(pn, pn_pods))
    assert not found, "podnet differs from the reference bridge + host-local (dual-stack):\n  " + "\n  ".join(found)
