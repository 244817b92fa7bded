"""The IPAM inputs the compiler derives: range sets in the plugin, the CNI
config's ipam section, and that the reference host-local, given that section,
allocates exactly where podnet does."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from compiler.load import load_file
from compiler.plan import cni_config, plan
from compiler.topology import build
from helpers import have, write_topology
from ipam_support import render_ipam, run_ipam, topology_text


def compiled(tmp_path, extra=""):
    topo = build(load_file(str(write_topology(tmp_path, topology_text(extra=extra)))))
    return topo, {a.path: a for a in plan(topo)}


def test_default_range_is_network_plus_one_to_before_broadcast(tmp_path):
    topo, arts = compiled(tmp_path)
    assert arts["nodes/node1/net-setup.sh"].data["node"]["ipam_ranges"] == ["10.244.1.0/24,10.244.1.1,10.244.1.254,10.244.1.1"]
    assert arts["nodes/node1/net-setup.sh"].data["network"]["ipam_store"] == "/var/lib/cni/networks/testnet"
    assert cni_config(topo, topo.nodes[0])["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]
    assert "nodes/node1/podnet-ipam.py" in arts and arts["nodes/node1/podnet-ipam.py"].mode == 0o755


def test_range_offsets_become_host_local_addresses(tmp_path):
    topo, arts = compiled(tmp_path, "  rangeStart: 10\n  rangeEnd: 20\n  dataDir: /run/cni/networks/\n")
    assert arts["nodes/node1/net-setup.sh"].data["node"]["ipam_ranges"] == ["10.244.1.0/24,10.244.1.10,10.244.1.20,10.244.1.1"]
    assert arts["nodes/node1/net-setup.sh"].data["network"]["ipam_store"] == "/run/cni/networks/testnet"
    ipam = cni_config(topo, topo.nodes[0])["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.20"}]]


@pytest.mark.skipif(not (os.path.exists("/usr/lib/cni/host-local") and have("dash", "flock")), reason="needs host-local, dash and flock")
def test_host_local_with_the_compiled_ipam_section_agrees_with_podnet(tmp_path):
    """Alternating ADDs, host-local fed the compiled config's ipam section (dataDir
    pointed at a temp dir): one round-robin sequence, no gap, no duplicate."""
    topo, _ = compiled(tmp_path, "  rangeStart: 10\n  rangeEnd: 14\n")
    script = render_ipam(tmp_path, topology_text(extra="  rangeStart: 10\n  rangeEnd: 14\n"))
    conf = cni_config(topo, topo.nodes[0])
    ipam = dict(conf["plugins"][0]["ipam"], type="host-local", dataDir=str(tmp_path / "data"))
    netconf = json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"], "type": "host-local", "ipam": ipam})
    store = tmp_path / "data" / "testnet"
    (tmp_path / "ns").touch()
    got = []
    for i in range(5):
        if i % 2:
            env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID=f"h{i}", CNI_NETNS=str(tmp_path / "ns"), CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni")
            r = subprocess.run(["/usr/lib/cni/host-local"], input=netconf, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            got.append(json.loads(r.stdout)["ips"][0]["address"])
        else:
            r = run_ipam("dash", script, store, f"ipam_add p{i} eth0")
            assert r.returncode == 0, r.stderr
            got.append(r.stdout.split()[0])
    assert got == [f"10.244.1.{n}/24" for n in range(10, 15)]
    assert run_ipam("dash", script, store, "ipam_add p9 eth0").returncode == 2


def test_ipv6_default_range_ends_at_the_subnets_last_address(tmp_path):
    """host-local's default: IPv4 stops before broadcast, IPv6 has no broadcast."""
    import dataclasses
    import ipaddress

    from compiler.plan import ipam_ranges

    topo, _ = compiled(tmp_path)
    node = dataclasses.replace(topo.nodes[0], subnets=(ipaddress.ip_network("10.244.1.0/24"), ipaddress.ip_network("fd00:10:244:1::/64")))
    assert [(str(a), str(b)) for a, b in ipam_ranges(topo, node)] == [("10.244.1.1", "10.244.1.254"), ("fd00:10:244:1::1", "fd00:10:244:1:ffff:ffff:ffff:ffff")]
