"""The review page's view (OUT/README.md): node table, route table, Mermaid diagram.

Every cell and diagram line is computed here; templates/README.md.j2 only lays
them out. The page grows linearly with the cluster: one table row per node, one
per route-table line (not per installed route), and a diagram with a few lines
per node, capped at DIAGRAM_MAX_NODES nodes (Mermaid, as GitHub and GitLab
render it, refuses very large diagrams; the tables always list everything).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

from compiler.model import Node, Topology, text

DIAGRAM_MAX_NODES = 50


def view(topo: Topology, routes: Sequence[Tuple[str, str, str]]) -> Dict[str, Any]:
    """routes: the cluster's route table as plan.route_table gives it."""
    net = topo.network
    return {
        "nodes": [_node_row(n) for n in topo.nodes],
        "routes": [[md(dst), md(via), md(name), md(_installed_on(topo, name))] for dst, via, name in routes],
        "routes_intro": _routes_intro(topo),
        "diagram": diagram(topo),
        "diagram_note": (
            f"The diagram shows the first {DIAGRAM_MAX_NODES} of {len(topo.nodes)} nodes; the tables list every node."
            if len(topo.nodes) > DIAGRAM_MAX_NODES else ""
        ),
        "bridge": md(net.bridge),
    }


def md(value: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks."""
    return re.sub(r"\s+", " ", str(value)).replace("\\", "\\\\").replace("|", "\\|")


def _node_row(node: Node) -> List[str]:
    return [
        md(node.name),
        md(", ".join(map(text, node.addresses))),
        md(node.interface),
        md(", ".join(map(text, node.subnets))),
        md(", ".join(map(text, node.gateways))),
        "pinned" if all(node.pinned) else "allocated",
    ]


def _installed_on(topo: Topology, owner: str) -> str:
    if topo.network.routing == "router":
        return "the router"
    if len(topo.nodes) == 1:
        return "(no other node)"
    return f"every node but {owner}"


def _routes_intro(topo: Topology) -> str:
    net = topo.network
    if net.routing == "router":
        ranges = ", ".join(f"{p.cidr} via the router {r}" for p, r in zip(net.pools, net.routers))
        return (f"Routing `router`: each node routes the pod range {ranges} on its "
                f"underlay interface (its own subnet stays on `{md(net.bridge)}`); the router installs every line "
                f"of this table (`router/routes.sh` with `routes.table`).")
    return ("Routing `static`: each node's `routes.sh` installs every line of this table (`routes.table`) "
            "but its own, via the node's underlay interface.")


def mermaid_id(*parts: str) -> str:
    """A Mermaid node id: letters, digits and '_' only, never a keyword (`end`),
    and injective (any other character becomes _HEX_)."""
    return "n_" + "__".join(re.sub(r"[^A-Za-z0-9]", lambda m: f"_{ord(m.group()):x}_", p) for p in parts)


def mermaid_label(text: str) -> str:
    """A quoted Mermaid label; quotes and angle brackets as entity codes."""
    return '"' + str(text).replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;") + '"'


def diagram(topo: Topology) -> List[str]:
    """The Mermaid flowchart's lines: per node its underlay interface, the bridge with
    its gateway, and its pod subnet; the underlay joining the nodes (and the router)."""
    net = topo.network
    underlay = mermaid_id("underlay")
    lines = ["flowchart LR", f"  {underlay}[({mermaid_label('underlay network')})]"]
    if net.routing == "router" and net.router is not None:
        router = mermaid_id("router")
        lines += [
            f"  {router}{{{{{mermaid_label('router ' + ', '.join(map(str, net.routers)))}}}}}",
            f"  {router} --- {underlay}",
        ]
    shown = topo.nodes[:DIAGRAM_MAX_NODES]
    for node in shown:
        n, dev, br, pods = (mermaid_id(node.name, part) for part in ("node", "dev", "br", "pods"))
        subnets = ", ".join(map(str, node.subnets))
        bridge = ", ".join(f"{g}/{s.prefixlen}" for g, s in zip(node.gateways, node.subnets))
        lines += [
            f"  subgraph {n}[{mermaid_label(node.name)}]",
            f"    {dev}[{mermaid_label(f'{node.interface} ' + ', '.join(map(str, node.addresses)))}]",
            f"    {br}[{mermaid_label(f'{net.bridge} {bridge}')}]",
            f"    {pods}([{mermaid_label(f'pods {subnets}')}])",
            f"    {pods} --- {br}",
            f"    {br} -. routed .- {dev}",
            "  end",
            f"  {dev} --- {underlay}",
        ]
    if len(topo.nodes) > len(shown):
        more = mermaid_id("more")
        lines += [f"  {more}[{mermaid_label(f'{len(topo.nodes) - len(shown)} more nodes')}]", f"  {more} -.- {underlay}"]
    return lines
