"""Differential test: podnet's plugin against the reference bridge + host-local.

Both run on the same compiled configuration (the reference's is podnet's with
only the plugin types swapped: same bridge, isGateway, ipMasq, mtu, subnet,
gateway, default route and lease directory), both driven by libcni, each on its
own simulated node. The reference pod also gets the loopback plugin, as every
runtime runs it beside the bridge; podnet brings `lo` up itself.

Compared, and every difference listed in the failure message:
  * what the pod sees: address, prefix, default route via the gateway, the
    subnet route, MTU, interface and loopback state;
  * the node side: bridge up with the gateway address and MTU, one port per pod
    with the pod MTU, ip_forward;
  * the ADD result, as libcni parsed it and as the plugin printed it, with only
    MAC addresses, host veth names and sandbox paths abstracted;
  * the leases both IPAMs hold (same addresses, same owners' layout);
  * after DEL: nothing left on either side. Two intended differences are not
    compared there: the reference side's `lo` goes down with the loopback
    network's DEL (podnet leaves it up), and the bridge MTU, which the kernel
    resets on the reference's bridge once its last port is gone.
Masquerade is compared by effect, not by rules: the reference builds an
iptables chain per container, podnet installs one rule per node (see
plan.masquerade_rule); a pod reaches an outside host with no route back to
pods exactly when masquerade is on, with either plugin.
"""

from __future__ import annotations

from typing import Dict

import pytest

from helpers import sh
from peers import (
    BRIDGE,
    GATEWAY,
    LIBCNI_VERSIONS,
    SUBNET,
    CniNode,
    Pod,
    compile_topology,
    differences,
    driver_available,
    install_podnet,
    install_reference,
    node_facts,
    link,
    pin_neighbour,
    pod_facts,
    reach,
    result_shape,
    topology_yaml,
)

pytestmark = pytest.mark.netns


def make_pair(netns, tmp_path, version: str, masquerade: bool = True):
    """(reference node, podnet node), both from one compiled topology."""
    ok, why = driver_available()
    if not ok:
        pytest.skip(why)
    out = compile_topology(tmp_path, topology_yaml(version, masquerade=masquerade))
    ref = install_reference(out, netns.add("refnode"), tmp_path / "reference")
    pn = install_podnet(out, netns.add("pnnode"), tmp_path / "podnet")
    return ref, pn


@pytest.fixture
def pair(netns, tmp_path, request):
    return make_pair(netns, tmp_path, request.param)


def lease_view(node: CniNode, pods) -> dict:
    """The store's leases with container IDs replaced by the pod's position."""
    names = {pod.cid: f"pod{i}" for i, pod in enumerate(pods)}
    return {ip: " ".join(names.get(w, w) for w in owner.split()) for ip, owner in node.leases().items()}


def compare(label: str, ref, pn, found: list) -> None:
    found += [f"{label}: {d}" for d in differences(ref, pn)]


@pytest.mark.parametrize("pair", LIBCNI_VERSIONS, indirect=True, ids=lambda v: f"cni{v}")
def test_podnet_matches_reference(pair, netns):
    ref, pn = pair
    ref_pods = [Pod(netns.add(f"refpod{i}", lo_up=False)) for i in range(2)]
    pn_pods = [Pod(netns.add(f"pnpod{i}", lo_up=False)) for i in range(2)]
    found: list = []

    for i, (rp, pp) in enumerate(zip(ref_pods, pn_pods)):
        r, p = ref.attach(rp), pn.attach(pp)
        assert r.rc == 0, f"reference ADD failed (harness problem): {r.describe()}"
        if p.rc != 0:
            found.append(f"pod{i} ADD: reference succeeded, podnet failed: {p.describe()}")
            continue
        compare(f"pod{i} result (libcni)", result_shape(r.result), result_shape(p.result), found)
        compare(f"pod{i} result (raw)", result_shape(r.raw[-1]), result_shape(p.raw[-1]), found)
        compare(f"pod{i} kernel", pod_facts(rp), pod_facts(pp), found)

    compare("node", node_facts(ref, BRIDGE), node_facts(pn, BRIDGE), found)
    compare("leases", lease_view(ref, ref_pods), lease_view(pn, pn_pods), found)

    for i, (rp, pp) in enumerate(zip(ref_pods, pn_pods)):
        r, p = ref.detach(rp), pn.detach(pp)
        assert r.rc == 0, f"reference DEL failed (harness problem): {r.describe()}"
        if p.rc != 0:
            found.append(f"pod{i} DEL: reference succeeded, podnet failed: {p.describe()}")
        # After DEL, `lo` is the one intended difference: the runtime's loopback
        # network (reference side) takes it down on its DEL; podnet leaves it up,
        # as other networks of the pod may still need it.
        after = [{k: v for k, v in pod_facts(p).items() if k != "loopback_up"} for p in (rp, pp)]
        compare(f"pod{i} kernel after DEL", after[0], after[1], found)
    # After DEL the bridge MTU is the kernel's business: a bridge whose MTU was
    # never set explicitly (the reference's) falls back to 1500 once its last
    # port is gone; one created with an explicit MTU keeps it.
    after = [{k: v for k, v in node_facts(n, BRIDGE).items() if k != "bridge_mtu"} for n in (ref, pn)]
    compare("node after DEL", after[0], after[1], found)
    compare("leases after DEL", lease_view(ref, ref_pods), lease_view(pn, pn_pods), found)

    assert not found, "podnet differs from the reference bridge + host-local:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("pair", ["1.0.0"], indirect=True, ids=lambda v: f"cni{v}")
def test_differential_catches_a_difference(pair, netns):
    """The comparison is not vacuous: a pod whose MTU changed is reported."""
    ref, _ = pair
    pod = Pod(netns.add("refpod", lo_up=False))
    assert ref.attach(pod).rc == 0
    before = pod_facts(pod)
    sh(["ip", "-n", pod.ns, "link", "set", pod.ifname, "mtu", "1280"])
    found: list = []
    compare("kernel", before, pod_facts(pod), found)
    assert found == ["kernel: mtu: reference 1400 != podnet 1280"]
    assert ref.detach(pod).rc == 0


NODE_UNDERLAY = "192.168.1.2"
OUTSIDE = "192.168.1.100"


def add_underlay(netns, node: CniNode, tag: str) -> str:
    """An outside host on the node's underlay (192.168.1.0/24, the node being
    192.168.1.2) with no route back to the pod range: a pod's packets reach it
    and come back only when the node masquerades them. It counts the echo
    requests it receives per source (iptables rules without a target). Returns
    its namespace."""
    outside = netns.add(f"{tag}out")
    sh(["ip", "-n", node.ns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1", "netns", outside])
    sh(["ip", "-n", node.ns, "addr", "add", f"{NODE_UNDERLAY}/24", "dev", "uplink0"])
    sh(["ip", "-n", outside, "addr", "add", f"{OUTSIDE}/24", "dev", "uplink1"])
    for ns, dev in ((node.ns, "uplink0"), (outside, "uplink1")):
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
    # The underlay is scaffolding: its neighbours are pinned, so a machine-wide
    # ARP table overflow (see peers.arp_table_fulls) cannot break it.
    pin_neighbour(node.ns, "uplink0", OUTSIDE, link(outside, "uplink1")["address"])
    pin_neighbour(outside, "uplink1", NODE_UNDERLAY, link(node.ns, "uplink0")["address"])
    for source in (NODE_UNDERLAY, SUBNET):
        sh(["ip", "netns", "exec", outside, "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-s", source])
    return outside


def echo_sources(outside: str) -> Dict[str, int]:
    """Echo requests the outside host received, per counting rule's source."""
    saved = sh(["ip", "netns", "exec", outside, "iptables-save", "-c", "-t", "filter"]).stdout
    counts = {}
    for line in saved.splitlines():  # [PACKETS:BYTES] -A INPUT -s SOURCE ...
        if line.startswith("[") and " -A INPUT " in line:
            words = line.split()
            source = words[words.index("-s") + 1]
            counts[source.removesuffix("/32")] = int(words[0].strip("[]").split(":")[0])
    return counts


@pytest.mark.parametrize("masquerade", [True, False], ids=["masquerade", "no-masquerade"])
def test_masquerade_behaves_like_reference(masquerade, netns, tmp_path):
    """Different rules, same effect: with `masquerade` a pod's traffic to a host
    outside podCIDR arrives from the node's address and is answered (that host
    has no route back to pods); without it, it arrives from the pod's address
    and is not answered."""
    ref, pn = make_pair(netns, tmp_path, "1.0.0", masquerade=masquerade)
    seen = {}
    for tag, node in (("ref", ref), ("pn", pn)):
        pod = Pod(netns.add(f"{tag}pod", lo_up=False))
        added = node.attach(pod)
        assert added.rc == 0, f"{tag} ADD failed: {added.describe()}"
        outside = add_underlay(netns, node, tag)
        # Without masquerade no reply can come: a short deadline suffices.
        answered = reach(pod, OUTSIDE, node.ns, BRIDGE, GATEWAY, deadline=10 if masquerade else 2).returncode == 0
        sources = echo_sources(outside)
        seen[tag] = {"answered": answered, "from node": sources[NODE_UNDERLAY] > 0, "from pod": sources[SUBNET] > 0}
        assert node.detach(pod).rc == 0
    expected = {"answered": masquerade, "from node": masquerade, "from pod": not masquerade}
    assert seen["ref"] == expected, f"the reference does not behave as expected: harness problem: {seen}"
    assert seen["pn"] == expected, f"podnet: {seen['pn']}, the reference: {seen['ref']}"


def container_nat(node: CniNode, pods) -> list:
    """NAT rules and chains naming one of the pods' container IDs."""
    return [r for r in node.nat_rules() for pod in pods if pod.cid in r]


def test_masquerade_state_never_piles_up_or_leaks(netns, tmp_path):
    """Where podnet does better than the reference: three pods give the
    reference three per-container NAT chains and podnet its one per-node rule;
    a DEL that comes after the runtime removed the netns leaks the reference's
    chain (its bug, not asserted here), while podnet has nothing per container
    to leak."""
    ref, pn = make_pair(netns, tmp_path, "1.0.0")
    pods = {tag: [Pod(netns.add(f"{tag}pod{i}", lo_up=False)) for i in range(3)] for tag in ("ref", "pn")}
    for tag, node in (("ref", ref), ("pn", pn)):
        for pod in pods[tag]:
            assert node.attach(pod).rc == 0
    jumps = [r for r in container_nat(ref, pods["ref"]) if r.startswith("-A POSTROUTING")]
    assert len(jumps) == 3, f"the harness does not see the reference's per-container chains: {jumps}"
    assert container_nat(pn, pods["pn"]) == []
    masq = [r for r in pn.nat_rules() if r.startswith("-A")]
    assert masq == [f'-A POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment "podnet:{pn.name}" -j MASQUERADE'], masq

    for tag, node in (("ref", ref), ("pn", pn)):
        gone = pods[tag][0]
        sh(["ip", "netns", "del", gone.ns])
        netns.created.remove(gone.ns)
        for pod in pods[tag]:
            assert node.detach(pod).rc == 0
        assert node.leases() == {}
    assert container_nat(pn, pods["pn"]) == [], "podnet left per-container NAT state"
    assert [r for r in pn.nat_rules() if r.startswith("-A")] == masq, "podnet's one per-node rule stays, once"


def test_failing_adds_behave_like_reference(netns, tmp_path):
    """ADDs that must fail, on both plugins: the same (container, ifname) again
    (the interface exists) fails and leaves the live attachment intact: lease,
    kernel state and CHECK; an ADD into a netns that does not exist fails and
    takes nothing."""
    ref, pn = make_pair(netns, tmp_path, "1.0.0")
    found: list = []
    outcome = {}
    for tag, node in (("reference", ref), ("podnet", pn)):
        pod = Pod(netns.add(f"{tag[:3]}pod", lo_up=False))
        assert node.attach(pod).rc == 0
        leases, facts = node.leases(), pod_facts(pod)
        again = node.driver("add", pod)
        missing = node.driver("add", Pod(f"{netns.prefix}missing-{tag}"))
        outcome[tag] = {
            "again fails": again.rc != 0,
            "lease kept": node.leases() == leases,
            "pod unchanged": pod_facts(pod) == facts,
            "check passes": node.driver("check", pod).rc == 0,
            "missing netns fails": missing.rc != 0,
            "nothing taken": node.leases() == leases,
        }
        assert node.detach(pod).rc == 0
        assert node.leases() == {}
    assert all(outcome["reference"].values()), f"the reference does not behave as expected: harness problem: {outcome}"
    compare("failing ADDs", outcome["reference"], outcome["podnet"], found)
    assert not found, "\n".join(found)
