"""podnet's plugin driven by libcni, the library container runtimes use.

Every assertion runs against the reference bridge + host-local too (`impl`
parameter), so the harness itself is proven on a known-good peer: a check that
the reference fails is a broken check, not a podnet bug.

Spec 1.1.0 (GC, STATUS) is beyond Debian's libcni: those tests execute the
plugin exactly as the spec describes (environment + config on stdin).
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from helpers import sh
from peers import (
    BRIDGE,
    CHECK_VERSIONS,
    GATEWAY,
    LIBCNI_VERSIONS,
    MTU,
    PREFIX,
    REFERENCE_BIN,
    SUBNET,
    CniNode,
    Pod,
    compile_topology,
    diagnostics,
    driver_available,
    install_podnet,
    install_reference,
    link,
    pod_facts,
    reach,
    result_ips,
    topology_yaml,
)

pytestmark = pytest.mark.netns

IMPLS = ("reference", "podnet")


@pytest.fixture
def driver():
    ok, why = driver_available()
    if not ok:
        pytest.skip(why)


def make_node(impl: str, version: str, netns, tmp_path, masquerade: bool = True) -> CniNode:
    out = compile_topology(tmp_path, topology_yaml(version, masquerade=masquerade))
    ns = netns.add("node")
    install = install_reference if impl == "reference" else install_podnet
    return install(out, ns, tmp_path / impl)


def new_pods(netns, count: int):
    return [Pod(netns.add(f"pod{i}", lo_up=False)) for i in range(count)]


def assert_attached(node: CniNode, pod: Pod, result: dict, version: str) -> str:
    """The ADD result describes what the kernel now holds; returns the address."""
    assert result["cniVersion"] == version
    ips = result_ips(result)
    assert len(ips) == 1, f"one IPv4 address expected: {result}"
    address, gateway = ips[0]
    iface = ipaddress.ip_interface(address)
    assert iface in ipaddress.ip_network(SUBNET) and iface.network.prefixlen == PREFIX and gateway == GATEWAY
    assert str(iface.ip) not in (GATEWAY, str(iface.network.network_address), str(iface.network.broadcast_address))

    facts = pod_facts(pod)
    assert facts["interface_up"] and facts["mtu"] == MTU, facts
    assert facts["addresses"] == [(str(iface.ip), PREFIX)], facts
    assert ("default", GATEWAY, pod.ifname) in facts["routes"], facts
    assert facts["loopback_up"], "loopback must be up in the pod after ADD"
    if version != "0.2.0":
        assert_interfaces(node, pod, result)
    return str(iface.ip)


def assert_interfaces(node: CniNode, pod: Pod, result: dict) -> None:
    """interfaces: the bridge, the host veth and the sandbox interface, with
    their real MACs; ips[].interface points at the sandbox one."""
    ifaces = result["interfaces"]
    sandbox = [i for i, x in enumerate(ifaces) if x.get("sandbox")]
    assert len(sandbox) == 1, ifaces
    inner = ifaces[sandbox[0]]
    assert inner["name"] == pod.ifname and inner["sandbox"] == pod.path
    assert inner["mac"] == link(pod.ns, pod.ifname)["address"]
    assert all(ip["interface"] == sandbox[0] for ip in result["ips"]), result["ips"]
    host = {x["name"]: x for x in ifaces if not x.get("sandbox")}
    assert BRIDGE in host, ifaces
    assert host[BRIDGE]["mac"] == link(node.ns, BRIDGE)["address"]
    veths = [n for n in host if n != BRIDGE]
    assert len(veths) == 1, ifaces
    veth = link(node.ns, veths[0])
    assert veth and veth.get("master") == BRIDGE and veth["address"] == host[veths[0]]["mac"], veth
    assert len(veths[0]) <= 15


def fnv1a(text: str) -> str:
    """The 32-bit FNV-1a hash of text's bytes, in decimal (podnet's veth names and lease markers)."""
    h = 2166136261
    for byte in text.encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return str(h)


def assert_detached(node: CniNode, pods) -> None:
    """Nothing of the pods is left: no interface, veth, lease, cache entry or
    per-container NAT state."""
    for pod in pods:
        assert link(pod.ns, pod.ifname) is None, f"{pod.ifname} still in {pod.ns}"
    extra = [l["ifname"] for l in node.links() if l["ifname"] not in ("lo", BRIDGE)]
    assert extra == [], f"host interfaces left behind: {extra}"
    assert node.leases() == {}, f"leases left behind: {node.leases()}"
    assert node.markers() == [], f"lease markers left behind: {node.markers()}"
    assert node.cached_results() == [], node.cached_results()
    leaked = [r for r in node.nat_rules() for pod in pods if pod.cid in r]
    assert leaked == [], f"per-container NAT state left behind: {leaked}"


@pytest.mark.parametrize("version", LIBCNI_VERSIONS)
@pytest.mark.parametrize("impl", IMPLS)
def test_add_check_del_through_libcni(impl, version, netns, tmp_path, driver):
    node = make_node(impl, version, netns, tmp_path)
    validated = node.driver("validate")
    assert validated.rc == 0, f"libcni refuses the config or the plugin's VERSION: {validated.describe()}"
    info = node.driver("version")
    assert info.rc == 0 and version in info.result["supportedVersions"], info.describe()

    a, b = new_pods(netns, 2)
    addresses = []
    for pod in (a, b):
        added = node.attach(pod)
        assert added.rc == 0, added.describe()
        assert added.raw and added.raw[-1]["cniVersion"] == version, added.raw
        addresses.append(assert_attached(node, pod, added.result, version))
    assert addresses[0] != addresses[1]
    assert node.leases() == {addresses[0]: f"{a.cid} eth0", addresses[1]: f"{b.cid} eth0"}
    if impl == "podnet":  # one marker per lease, its HASH the number in the pair's veth name
        marks = dict(reversed(m[len(".podnet-pair."):].split(".", 1)) for m in node.markers())
        assert marks == {addresses[0]: fnv1a(f"{a.cid}/eth0"), addresses[1]: fnv1a(f"{b.cid}/eth0")}, node.markers()
        assert all(link(node.ns, f"veth{h}") for h in marks.values()), marks

    if version in CHECK_VERSIONS:
        for pod in (a, b):
            checked = node.driver("check", pod)
            assert checked.rc == 0, checked.describe()

    for src, dst, dst_ns, dst_dev in ((a, addresses[1], b.ns, b.ifname), (b, addresses[0], a.ns, a.ifname), (a, GATEWAY, node.ns, BRIDGE)):
        pinged = reach(src, dst, dst_ns, dst_dev)
        assert pinged.returncode == 0, f"{src.ns} cannot reach {dst}: {pinged.stdout}{pinged.stderr}\n{diagnostics(node.ns, a.ns, b.ns)}"

    for pod in (a, b, a):  # the second DEL of `a` must succeed too
        deleted = node.detach(pod)
        assert deleted.rc == 0, deleted.describe()
    assert_detached(node, (a, b))


@pytest.mark.parametrize("impl", IMPLS)
def test_check_names_what_drifted(impl, netns, tmp_path, driver):
    """CHECK is a real check: removing the pod's default route or address makes
    it fail through libcni."""
    node = make_node(impl, "1.0.0", netns, tmp_path)
    (pod,) = new_pods(netns, 1)
    added = node.attach(pod)
    assert added.rc == 0, added.describe()
    assert node.driver("check", pod).rc == 0

    netns_ip = ["ip", "-n", pod.ns]
    sh([*netns_ip, "route", "del", "default"])
    drift = node.driver("check", pod)
    assert drift.rc != 0, f"CHECK passed without the default route: {drift.describe()}"
    assert "route" in drift.out["error"].lower(), f"CHECK must name the missing route: {drift.out}"

    sh([*netns_ip, "route", "add", "default", "via", GATEWAY, "dev", pod.ifname])
    assert node.driver("check", pod).rc == 0
    address = added.result["ips"][0]["address"]
    sh([*netns_ip, "addr", "del", address, "dev", pod.ifname])
    drift = node.driver("check", pod)
    assert drift.rc != 0, f"CHECK passed without the pod's address: {drift.describe()}"
    assert address.split("/")[0] in drift.out["error"], f"CHECK must name the missing address: {drift.out}"

    # Restored (the reference's DEL finds its per-container NAT chain by the
    # interface's address, so it would leak it if the address stayed gone).
    sh([*netns_ip, "addr", "add", address, "dev", pod.ifname])
    sh([*netns_ip, "route", "add", "default", "via", GATEWAY, "dev", pod.ifname])
    assert node.driver("check", pod).rc == 0
    assert node.detach(pod).rc == 0
    assert_detached(node, [pod])


@pytest.mark.parametrize("impl", IMPLS)
def test_del_after_netns_is_gone(impl, netns, tmp_path, driver):
    """The runtime removed the sandbox before DEL (a common crash path): DEL
    still succeeds and releases the lease; the veth died with the namespace."""
    node = make_node(impl, "1.0.0", netns, tmp_path, masquerade=False)
    (pod,) = new_pods(netns, 1)
    assert node.attach(pod).rc == 0
    sh(["ip", "netns", "del", pod.ns])
    netns.created.remove(pod.ns)
    deleted = node.detach(pod)
    assert deleted.rc == 0, deleted.describe()
    assert node.leases() == {} and node.markers() == []
    assert node.cached_results() == []
    # The kernel destroys a deleted namespace (and the veth end in it, taking
    # the host end along) asynchronously; on a loaded machine that takes a
    # while. Waiting for it is no timing assertion: it only must happen.
    left = lambda: [l["ifname"] for l in node.links() if l["ifname"] not in ("lo", BRIDGE)]  # noqa: E731
    deadline = time.monotonic() + 60
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []


# ---- spec 1.1.0: beyond Debian's libcni, invoked as the spec describes ----------


@pytest.fixture
def node110(netns, tmp_path):
    return make_node("podnet", "1.1.0", netns, tmp_path)


def invoke_ok(node: CniNode, command: str, stdin: str, pod: Pod = None) -> str:
    done = node.invoke(command, stdin, pod)
    assert done.returncode == 0, f"{command}: rc={done.returncode} out={done.stdout} err={done.stderr}"
    return done.stdout


def test_spec_1_1_0_version_and_status(node110):
    versions = json.loads(invoke_ok(node110, "VERSION", json.dumps({"cniVersion": "1.1.0"})))
    assert versions["cniVersion"] == "1.1.0"
    assert set(versions["supportedVersions"]) >= {"0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
    assert invoke_ok(node110, "STATUS", node110.plugin_stdin()) == "", "STATUS prints nothing on success"


def test_spec_1_1_0_add_check_gc_del(node110, netns):
    node = node110
    a, b, c = new_pods(netns, 3)
    results = {}
    for pod in (a, b, c):
        results[pod.cid] = json.loads(invoke_ok(node, "ADD", node.plugin_stdin(), pod))
        assert_attached(node, pod, results[pod.cid], "1.1.0")
    assert invoke_ok(node, "CHECK", node.plugin_stdin(prevResult=results[a.cid]), a) == ""

    # GC (spec 1.1.0): every lease not in cni.dev/valid-attachments is released.
    keep = [{"containerID": a.cid, "ifname": a.ifname}, {"containerID": b.cid, "ifname": b.ifname}]
    assert invoke_ok(node, "GC", node.plugin_stdin(**{"cni.dev/valid-attachments": keep})) == ""
    assert sorted(node.leases().values()) == sorted([f"{a.cid} eth0", f"{b.cid} eth0"])
    # ... also under the spelling of the spec's first draft, which libcni sends too.
    keep = keep[:1]
    assert invoke_ok(node, "GC", node.plugin_stdin(**{"cni.dev/attachments": keep})) == ""
    assert list(node.leases().values()) == [f"{a.cid} eth0"]

    for pod in (a, b, c):
        invoke_ok(node, "DEL", node.plugin_stdin(prevResult=results[pod.cid]), pod)
    assert node.leases() == {} and node.markers() == []
    assert [l["ifname"] for l in node.links() if l["ifname"] not in ("lo", BRIDGE)] == []
    for pod in (a, b, c):
        assert link(pod.ns, pod.ifname) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_kubelet_style_cni_args(impl, netns, tmp_path, driver):
    """CNI_ARGS as the kubelet (through CRI runtimes) sends them: accepted and
    ignored on ADD, CHECK and DEL."""
    node = make_node(impl, "1.0.0", netns, tmp_path)
    (pod,) = new_pods(netns, 1)
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={pod.cid};K8S_POD_UID=0b8c7a4e-3f0e-4a4e-9f7e-5b1d2c3e4f50"
    added = node.attach(pod, args=args)
    assert added.rc == 0, added.describe()
    assert_attached(node, pod, added.result, "1.0.0")
    checked = node.driver("check", pod, args=args)
    assert checked.rc == 0, checked.describe()
    deleted = node.detach(pod, args=args)
    assert deleted.rc == 0, deleted.describe()
    assert_detached(node, [pod])


@pytest.mark.parametrize("impl", IMPLS)
def test_chained_with_the_reference_tuning_plugin(impl, netns, tmp_path, driver):
    """A real chain as runtimes run it: the plugin, then Debian's `tuning`
    plugin, which requires and parses the plugin's result (prevResult), sets a
    sysctl on the pod interface and passes the result on, so what the runtime
    finally gets is the plugin's result as another plugin read it. CHECK and
    DEL (reverse order, cached result as prevResult) go through both."""
    node = make_node(impl, "1.0.0", netns, tmp_path)
    if REFERENCE_BIN not in node.bin_dirs:
        node.bin_dirs.append(REFERENCE_BIN)
    chain = dict(node.conf, plugins=[*node.conf["plugins"], {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}])
    conf = node.conf_path.parent / "20-chain.conflist"
    conf.write_text(json.dumps(chain))
    (pod,) = new_pods(netns, 1)
    sysctl = ["ip", "netns", "exec", pod.ns, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]

    if node.loopback_conf:
        assert node.driver("add", pod, conf_path=node.loopback_conf, ifname="lo").rc == 0
    added = node.driver("add", pod, conf_path=conf)
    assert added.rc == 0, added.describe()
    assert len(added.raw) == 2, "both plugins of the chain ran"
    assert_attached(node, pod, added.result, "1.0.0")
    assert sh(sysctl).stdout.strip() == "1", "the tuning step of the chain did not take effect"
    checked = node.driver("check", pod, conf_path=conf)
    assert checked.rc == 0, checked.describe()
    deleted = node.driver("del", pod, conf_path=conf)
    assert deleted.rc == 0, deleted.describe()
    if node.loopback_conf:
        assert node.driver("del", pod, conf_path=node.loopback_conf, ifname="lo").rc == 0
    assert_detached(node, [pod])
