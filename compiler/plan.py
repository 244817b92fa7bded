"""Model -> the list of artifacts, each with every value its renderer needs.

No logic is left for templates: names, gateways, routes and file modes are
computed here. The manifest is not planned: it describes what the writer wrote.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from compiler import ansible
from compiler.model import Node, Topology

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


def route_table(topo: Topology) -> List[Tuple[str, str, str]]:
    """(destination subnet, next hop, node) for every node subnet, in file order."""
    rows = []
    for node in topo.nodes:
        for subnet in node.subnets:
            nexthop = next(a for a in node.addresses if a.version == subnet.version)
            rows.append((str(subnet), str(nexthop), node.name))
    return rows


def plan(topo: Topology) -> List[Artifact]:
    src = source_name(topo.source)
    common = {"source": src, "network": _network_view(topo)}
    out: List[Artifact] = [
        Artifact("routes.table", 0o644, "template", "routes.table.j2", {**common, "routes": route_table(topo)}),
        Artifact("README.md", 0o644, "template", "README.md.j2", {**common, "nodes": [_node_view(topo, n) for n in topo.nodes], "routes": route_table(topo)}),
    ]
    for node in topo.nodes:
        view = {**common, "node": _node_view(topo, node)}
        base = f"nodes/{node.name}"
        out += [
            Artifact(f"{base}/net-setup.sh", 0o755, "template", "net-setup.sh.j2", view),
            Artifact(f"{base}/{conf_name(topo)}", 0o644, "json", data=cni_config(topo, node)),
            Artifact(f"{base}/routes.sh", 0o755, "template", "routes.sh.j2", view),
        ]
    out += ansible.artifacts(topo, out)  # derives the files it ships from `out`: keep it last
    return sorted(out, key=lambda a: a.path)


def _network_view(topo: Topology) -> Dict[str, Any]:
    net = topo.network
    return {
        "name": net.name,
        "cni_version": net.cni_version,
        "pod_cidrs": [str(p.cidr) for p in net.pools],
        "bridge": net.bridge,
        "mtu": net.mtu,
        "masquerade": net.masquerade,
        "routing": net.routing,
        "router": str(net.router) if net.router else "",
        "data_dir": net.data_dir,
        "plugin": net.plugin,
        "conf_name": conf_name(topo),
    }


def _node_view(topo: Topology, node: Node) -> Dict[str, Any]:
    return {
        "name": node.name,
        "address": str(node.address),
        "addresses": [str(a) for a in node.addresses],
        "interface": node.interface,
        "subnet": str(node.subnet),
        "subnets": [str(s) for s in node.subnets],
        "prefix": node.subnet.prefixlen,
        "gateway": str(node.gateway),
        "gateways": [str(g) for g in node.gateways],
        "pinned": node.pinned[0],
        # The node's one masquerade rule (iptables -t nat ... POSTROUTING): pod traffic
        # leaving the cluster's pod range. The plugin and routes.sh install exactly this
        # spelling idempotently (`-C || -A`), so it never piles up and never leaks.
        "masq_rule": masquerade_rule(topo, node),
    }


def masquerade_rule(topo: Topology, node: Node) -> List[str]:
    pod_cidr = next(p.cidr for p in topo.network.pools if p.family == node.subnet.version)
    return ["-s", str(node.subnet), "!", "-d", str(pod_cidr), "-m", "comment", "--comment", f"podnet:{topo.network.name}", "-j", "MASQUERADE"]


def cni_config(topo: Topology, node: Node) -> Dict[str, Any]:
    """The network configuration the runtime passes to the plugin on stdin."""
    net = topo.network
    plugin = {
        "type": net.plugin,
        "bridge": net.bridge,
        "isGateway": True,
        "ipMasq": net.masquerade,
        "mtu": net.mtu,
        "ipam": {
            "dataDir": net.data_dir,
            "ranges": [[{"subnet": str(s), "gateway": str(g)}] for s, g in zip(node.subnets, node.gateways)],
            "routes": [{"dst": "0.0.0.0/0" if s.version == 4 else "::/0"} for s in node.subnets],
        },
    }
    if net.cni_version in ("0.1.0", "0.2.0"):
        return {"cniVersion": net.cni_version, "name": net.name, **plugin}
    return {"cniVersion": net.cni_version, "name": net.name, "plugins": [plugin]}
