"""Model -> the list of artifacts, each with every value its renderer needs.

No logic is left for templates: names, gateways, routes and file modes are
computed here. The manifest is not planned: it describes what the writer wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from compiler import ansible, review
from compiler.model import CNI_VERSIONS, IPAddress, IPNetwork, Node, Topology, text

CONF_PRIORITY = "10"


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to OUT, '/'-separated
    mode: int  # 0o644 or 0o755
    renderer: str  # "template" | "json" | "yaml"
    template: str = ""  # for "template": the Jinja2 template's name
    data: Dict[str, Any] = field(default_factory=dict)  # template context or the JSON/YAML document


def source_name(path: str) -> str:
    """The topology's name as shown in banners: as given when relative, else its
    base name (so the bytes do not depend on where a checkout lives), and reduced
    to characters that are harmless inside a shell comment."""
    name = os.path.normpath(path) if not os.path.isabs(path) else os.path.basename(path)
    return re.sub(r"[^A-Za-z0-9._/+-]", "?", name.replace(os.sep, "/"))


def conf_name(topo: Topology) -> str:
    ext = "conf" if topo.network.cni_version in ("0.1.0", "0.2.0") else "conflist"
    return f"{CONF_PRIORITY}-{topo.network.name}.{ext}"


# routes.sh's kernel nexthop ids (see templates/routes.sh.j2, NH_BASE4): a node subnet's
# id is its family's base + its index among the node subnets of the family's pod range
# (mod NHID_SPAN), so it depends on the subnet alone, never on the other lines of the
# table. The ranges are disjoint and below 2^32; router mode's fixed routes (the pod
# range via the router) take NHID_FIXED + the family (4 or 6), outside both.
NHID_BASE = {4: 1_800_000_000, 6: 2_100_000_000}
NHID_SPAN = 1 << 28
NHID_FIXED = 2_400_000_000


def subnet_index(pool: IPNetwork, subnet: IPNetwork) -> int:
    """A node subnet's index inside its pod range: (subnet - range) >> host bits."""
    return (int(subnet.network_address) - int(pool.network_address)) >> (subnet.max_prefixlen - subnet.prefixlen)


def nexthop_id(pool: IPNetwork, subnet: IPNetwork) -> int:
    """routes.sh's nexthop id for a node subnet (checks.nexthop_ids refuses collisions)."""
    return NHID_BASE[subnet.version] + subnet_index(pool, subnet) % NHID_SPAN


def _routes(topo: Topology) -> Iterator[Tuple[IPNetwork, IPAddress, str]]:
    """(destination subnet, next hop, node) for every node subnet, in file order."""
    for node in topo.nodes:
        for subnet in node.subnets:
            yield subnet, next(a for a in node.addresses if a.version == subnet.version), node.name


def route_table(topo: Topology) -> List[Tuple[str, str, str]]:
    """(destination subnet, next hop, node) for every node subnet, in file order."""
    return [(text(subnet), text(nexthop), name) for subnet, nexthop, name in _routes(topo)]


def route_table_ids(topo: Topology) -> List[Tuple[str, str, str, int]]:
    """route_table's rows with each subnet's nexthop id: the lines of routes.table."""
    pools = {p.family: p.cidr for p in topo.network.pools}
    return [(text(subnet), text(nexthop), name, nexthop_id(pools[subnet.version], subnet)) for subnet, nexthop, name in _routes(topo)]


def plan(topo: Topology) -> List[Artifact]:
    """Every artifact of `topo`, sorted by path."""
    return sorted(plan_cluster(topo) + plan_nodes(topo, topo.nodes), key=lambda a: a.path)


IPAM_HELPER = "podnet-ipam.py"  # IPAM without util-linux flock; the plugin runs it from its own directory
BIN_HELPERS = (IPAM_HELPER,)  # shipped into the CNI bin dir beside the plugin (ansible.py: nodes/<node>/*.py)
# The names of $0 that tell the plugin a shell is sourcing it (main.sh.j2's `sourced`)
SHELL_NAMES = ("sh", "dash", "ash", "bash", "busybox", "ksh", "mksh")


def node_files(topo: Topology) -> List[Tuple[str, int]]:
    """(name, mode) of the files in every node's directory, as plan_nodes makes them."""
    return [("net-setup.sh", 0o755), (conf_name(topo), 0o644), ("routes.sh", 0o755), (IPAM_HELPER, 0o755)]


def plan_nodes(topo: Topology, nodes: Sequence[Node]) -> List[Artifact]:
    """The files of `nodes`' directories (node_files), in `nodes`' order. A compile
    of many nodes builds half of them in a forked worker (artifacts.compile_into)."""
    common = {"source": source_name(topo.source), "network": _network_view(topo)}
    files = node_files(topo)
    out: List[Artifact] = []
    for node in nodes:
        config = cni_config(topo, node)
        view = {**common, "node": _node_view(topo, node, config)}
        made = {  # (renderer, template, data) of each of node_files
            "net-setup.sh": ("template", "net-setup.sh.j2", view),
            conf_name(topo): ("json", "", config),
            "routes.sh": ("template", "routes.sh.j2", {**common, "routes": node_routes_view(topo, node)}),
            IPAM_HELPER: ("template", "plugin/podnet-ipam.py.j2", view),
        }
        out += [Artifact(f"nodes/{node.name}/{name}", mode, *made[name]) for name, mode in files]
    return out


def plan_cluster(topo: Topology) -> List[Artifact]:
    """The cluster-wide files: routes.table, README.md, router/routes.sh (routing:
    router) and the Ansible files, which ship every node's files (known by name
    and mode, node_files, without building them)."""
    src = source_name(topo.source)
    common = {"source": src, "network": _network_view(topo)}
    out: List[Artifact] = [
        Artifact("routes.table", 0o644, "template", "routes.table.j2", {**common, "routes": route_table_ids(topo)}),
        Artifact("README.md", 0o644, "template", "README.md.j2", {**common, **review.view(topo, route_table(topo))}),
    ]
    if topo.network.routing == "router":
        out.append(Artifact("router/routes.sh", 0o755, "template", "routes.sh.j2", {**common, "routes": router_routes_view(topo)}))
    shipped = [Artifact(f"nodes/{node.name}/{name}", mode, "") for node in topo.nodes for name, mode in node_files(topo)]
    out += ansible.artifacts(topo, out + shipped)  # derives the files it ships from these: keep it last
    return out


def _network_view(topo: Topology) -> Dict[str, Any]:
    net = topo.network
    return {
        "name": net.name,
        "cni_version": net.cni_version,
        "pod_cidrs": [str(p.cidr) for p in net.pools],
        "bridge": net.bridge,
        "mtu": net.mtu,
        "masquerade": masquerades(topo),
        "routing": net.routing,
        "router": ", ".join(map(str, net.routers)),  # router mode: one per family
        "data_dir": net.data_dir,
        # IPAM lease store, like host-local: DATADIR/NETWORK
        "ipam_store": ipam_store(topo),
        "plugin": net.plugin,
        "conf_name": conf_name(topo),
        # The spec versions the plugin speaks (VERSION), oldest first.
        "cni_versions": list(CNI_VERSIONS),
    }


def _node_view(topo: Topology, node: Node, config: Dict[str, Any]) -> Dict[str, Any]:
    """`config` is cni_config(topo, node)."""
    return {
        "name": node.name,
        "address": text(node.address),
        "addresses": [text(a) for a in node.addresses],
        "interface": node.interface,
        "subnet": text(node.subnet),
        "subnets": [text(s) for s in node.subnets],
        "prefix": node.subnet.prefixlen,
        "gateway": text(node.gateway),
        "gateways": [text(g) for g in node.gateways],
        "pinned": node.pinned[0],
        # The node's one masquerade rule (iptables -t nat ... POSTROUTING): pod traffic
        # leaving the cluster's pod range. The plugin and routes.sh install exactly this
        # spelling idempotently (`-C || -A`), so it never piles up and never leaks.
        "masq_rule": masquerade_rule(topo, node),
        # The plugin's view: the bridge's addresses (gateway/prefix per family), the
        # routes every pod gets (via its family's gateway), the lock the plugin takes
        # around the masquerade rule (the IPAM store's, so no new file appears).
        "bridge_addresses": [f"{text(g)}/{s.prefixlen}" for g, s in zip(node.gateways, node.subnets)],
        "pod_routes": pod_routes(node),
        "bridge_mac": bridge_mac(topo, node),
        "store_lock": f"{ipam_store(topo)}/lock",
        # IPAM range sets, one per family: "SUBNET,FIRST,LAST,GATEWAY"; the plugin
        # carries the IPv6 range code only on nodes with an IPv6 subnet (less to parse)
        "ipam_ipv6": any(s.version == 6 for s in node.subnets),
        "ipam_ranges": [",".join((text(s), text(lo), text(hi), text(g))) for s, (lo, hi), g in zip(node.subnets, ipam_ranges(topo, node), node.gateways)],
        # The config as libcni passes it on stdin, split around the cniVersion's value:
        # the plugin recognises these bytes without running its JSON reader.
        "libcni_config": libcni_config(topo, node, config),
        "libcni_del_config": libcni_del_config(topo, node, config),
    }


def bridge_mac(topo: Topology, node: Node) -> str:
    """The bridge's MAC address, fixed when the plugin creates it: left to the kernel,
    a bridge takes its lowest port's MAC and changes it as pods come and go, which
    makes pods lose packets to stale neighbour entries. Locally administered,
    unicast, and derived from the network and node names, so compiles are stable."""
    digest = hashlib.sha256(f"{topo.network.name}/{node.name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def pod_routes(node: Node) -> List[str]:
    """The destinations every pod routes via its gateway: the default route per family."""
    return ["0.0.0.0/0" if s.version == 4 else "::/0" for s in node.subnets]


def masquerades(topo: Topology) -> bool:
    """Masquerade is IPv4's: pods' IPv4 traffic leaving the pod range is SNATed
    (iptables). IPv6 pod addresses are routed as they are (no ip6tables, no NAT66),
    so an IPv6-only cluster masquerades nothing whatever `masquerade` says."""
    return topo.network.masquerade and any(p.family == 4 for p in topo.network.pools)


def masquerade_rule(topo: Topology, node: Node) -> List[str]:
    """The node's IPv4 masquerade rule ([] when it masquerades nothing)."""
    if not masquerades(topo):
        return []
    subnet = next(s for s in node.subnets if s.version == 4)
    pod_cidr = next(p.cidr for p in topo.network.pools if p.family == 4)
    return ["-s", text(subnet), "!", "-d", text(pod_cidr), "-m", "comment", "--comment", f"podnet:{topo.network.name}", "-j", "MASQUERADE"]


# Routing (routes.sh). A node's routes.sh depends only on the node itself and the
# network, never on the other nodes: the cluster's table is routes.table, emitted
# once, so adding a node rewrites routes.table, not every node's script.
#
# static: a node routes every other node's subnet (routes.table, all lines but its
#   own) via that node's address, on its underlay interface.
# router: a node holds one route per family, the cluster's whole pod range via the
#   router, on its underlay interface. Its own subnet stays on the bridge (more
#   specific, connected), so "other subnets" go to the router and nothing else does:
#   the node's default route and the rest of its table are left alone. The router
#   routes every node subnet (routes.table, all lines) via the node's address.


def forwarding_paths(families) -> List[str]:
    """The sysctl files that turn on forwarding for these address families."""
    paths = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}
    return [paths[f] for f in sorted(set(families))]


def node_routes_view(topo: Topology, node: Node) -> Dict[str, Any]:
    net = topo.network
    router_mode = net.routing == "router"
    return {
        "role": "node",
        "name": node.name,
        "routing": net.routing,
        "use_table": not router_mode,
        "table_node": node.name,
        # router mode: one route per family, the family's pod range via its router
        "fixed": [(str(p.cidr), str(r), str(NHID_FIXED + p.family)) for p, r in zip(net.pools, net.routers)] if router_mode else [],
        "dev": node.interface,
        "bridge": net.bridge,
        "pod_cidrs": " ".join(str(p.cidr) for p in net.pools),
        "own_subnets": " ".join(text(s) for s in node.subnets),
        "forwarding": forwarding_paths(s.version for s in node.subnets),
        "masquerade": masquerades(topo),
        "masq_rule": masquerade_rule(topo, node),
        # the masquerade rules of this network an earlier compile may have left (IPv4's)
        "masq_cleanup": any(s.version == 4 for s in node.subnets),
        "network": net.name,
    }


def router_routes_view(topo: Topology) -> Dict[str, Any]:
    net = topo.network
    return {
        "role": "router",
        "name": "router",
        "routing": net.routing,
        "use_table": True,
        "table_node": "",
        "fixed": [],
        "dev": "",
        "bridge": "",
        "pod_cidrs": " ".join(str(p.cidr) for p in net.pools),
        "own_subnets": "",
        "forwarding": forwarding_paths(p.family for p in net.pools),
        "masquerade": False,
        "masq_rule": [],
        "masq_cleanup": False,  # a router never masquerades
        "network": net.name,
    }


def ipam_store(topo: Topology) -> str:
    """The lease directory: host-local's DATADIR/NETWORK."""
    return topo.network.data_dir.rstrip("/") + "/" + topo.network.name


def ipam_ranges(topo: Topology, node: Node) -> List[Tuple[IPAddress, IPAddress]]:
    """(first, last) pod address per node subnet: network + rangeStart .. network +
    rangeEnd, by default host-local's network + 1 .. the address before broadcast
    (IPv4) or the subnet's last address (IPv6).
    checks.ipam_range guarantees both lie inside the subnet, first <= last."""
    net = topo.network
    out = []
    for subnet in node.subnets:
        start = net.range_start if net.range_start is not None else 1
        # host-local's default end: IPv4 stops before the broadcast address, IPv6 has none
        end = net.range_end if net.range_end is not None else subnet.num_addresses - (2 if subnet.version == 4 else 1)
        out.append((subnet.network_address + start, subnet.network_address + end))
    return out


def _cni_range(topo: Topology, subnet: IPNetwork, gateway: IPAddress, first: IPAddress, last: IPAddress) -> Dict[str, str]:
    rng = {"subnet": text(subnet), "gateway": text(gateway)}
    if topo.network.range_start is not None:
        rng["rangeStart"] = str(first)
    if topo.network.range_end is not None:
        rng["rangeEnd"] = str(last)
    return rng


# JSON text (json.dumps, ensure_ascii) whose strings Go's encoding/json writes
# exactly alike: every string printable ASCII but the characters Go escapes for
# HTML (<>&). Any other character json.dumps writes as an escape other than \" or
# \\ (\n, \u00e9, ...), or as itself outside this class (DEL): the text then fails.
_GO_SAME = re.compile(r'(?:[\x20-\x25\x27-\x3b\x3d\x3f-\x5b\x5d-\x7e]|\\[\\"])*\Z')
_VERSION_MARK = "@CNI-VERSION@"


def libcni_config(topo: Topology, node: Node, config: Optional[Dict[str, Any]] = None) -> Tuple[str, str]:
    """(head, tail): the bytes libcni writes to the plugin's stdin for this node's
    config are head + CNI_VERSION + tail. libcni (buildOneConfig/InjectConf)
    re-marshals each plugin's object with Go's encoding/json, "name" and
    "cniVersion" injected: keys sorted, compact. Without prevResult,
    runtimeConfig or args that is the plugin object below. ("", "") when a string
    holds a character Go would spell differently (the plugin then always reads
    the config with its JSON reader). `config`: cni_config(topo, node), when known."""
    conf = cni_config(topo, node) if config is None else config
    plugin = conf["plugins"][0] if "plugins" in conf else dict(conf)
    plugin = {**plugin, "name": topo.network.name, "cniVersion": _VERSION_MARK}
    encoded = json.dumps(plugin, sort_keys=True, separators=(",", ":"))
    mark = json.dumps(_VERSION_MARK)
    if not _GO_SAME.match(encoded) or encoded.count(mark) != 1:
        return ("", "")
    head, tail = encoded.split(mark)
    return (head + '"', '"' + tail)


_PREV_MARK = "@PREV-RESULT@"


def libcni_del_config(topo: Topology, node: Node, config: Optional[Dict[str, Any]] = None) -> Tuple[str, str]:
    """(mid, tail): with a previous result, which libcni passes to DEL from cniVersion
    0.4.0 on, the plugin's stdin is head + CNI_VERSION + mid + PREV_RESULT + tail
    (head as in libcni_config; "prevResult" is one more key of the sorted object).
    ("", "") when libcni_config has none."""
    conf = cni_config(topo, node) if config is None else config
    head, _ = libcni_config(topo, node, conf)
    if not head:
        return ("", "")
    plugin = conf["plugins"][0] if "plugins" in conf else dict(conf)
    plugin = {**plugin, "name": topo.network.name, "cniVersion": _VERSION_MARK, "prevResult": _PREV_MARK}
    encoded = json.dumps(plugin, sort_keys=True, separators=(",", ":"))
    version, prev = json.dumps(_VERSION_MARK), json.dumps(_PREV_MARK)
    before, rest = encoded.split(version)
    mid, tail = rest.split(prev)
    assert before + '"' == head and encoded.count(prev) == 1
    return ('"' + mid, tail)


def cni_config(topo: Topology, node: Node) -> Dict[str, Any]:
    """The network configuration the runtime passes to the plugin on stdin."""
    net = topo.network
    plugin = {
        "type": net.plugin,
        "bridge": net.bridge,
        "isGateway": True,
        "ipMasq": masquerades(topo),
        "mtu": net.mtu,
        "ipam": {
            "dataDir": net.data_dir,
            "ranges": [[_cni_range(topo, s, g, lo, hi)] for s, g, (lo, hi) in zip(node.subnets, node.gateways, ipam_ranges(topo, node))],
            "routes": [{"dst": dst} for dst in pod_routes(node)],
        },
    }
    if net.cni_version in ("0.1.0", "0.2.0"):
        return {"cniVersion": net.cni_version, "name": net.name, **plugin}
    return {"cniVersion": net.cni_version, "name": net.name, "plugins": [plugin]}
