"""`podnet diff OLD NEW`: the effect of a topology change, in words.

It reports network settings that changed, nodes added and removed, node addresses
that changed, pod subnets that moved, and the routes added and removed, saying on
which hosts. Moving a live node's subnet strands its running pods (they keep
addresses of the old subnet), so each move is an error (a diagnostic at the node
in NEW) unless the caller allows it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict
from typing import Dict, List, Sequence, Set, Tuple

from compiler.diagnostics import Diagnostic
from compiler.load import Document
from compiler.model import Network, Topology
from compiler.plan import route_table

LIST_MAX = 8  # host names listed per route change before "and N more"
ROUTER = "the router"

Route = Tuple[str, str]  # (destination, next hop)


@dataclasses.dataclass
class Report:
    lines: List[str]  # the summary, one sentence per line
    moves: List[Diagnostic]  # one per moved subnet, positioned in NEW


def compare(old: Topology, new: Topology, new_doc: Document) -> Report:
    lines = _network_changes(old.network, new.network)
    old_nodes = {n.name: n for n in old.nodes}
    new_nodes = {n.name: n for n in new.nodes}
    added = [n for n in new.nodes if n.name not in old_nodes]
    removed = [n for n in old.nodes if n.name not in new_nodes]
    if added:
        lines.append("nodes added: " + ", ".join(f"{n.name} ({_addrs(n)}, pods {_subnets(n)})" for n in added))
    if removed:
        lines.append("nodes removed: " + ", ".join(f"{n.name} ({_addrs(n)}, pods {_subnets(n)})" for n in removed))
    moves: List[Diagnostic] = []
    for index, n in enumerate(new.nodes):
        before = old_nodes.get(n.name)
        if before is None:
            continue
        # by family: a cluster whose podCIDR lists its families the other way round
        # has the same addresses and subnets
        if _by_family(before.addresses) != _by_family(n.addresses):
            lines.append(f"address changed: {n.name} {_addrs(before)} -> {_addrs(n)}")
        if before.interface != n.interface:
            lines.append(f"interface changed: {n.name} {before.interface} -> {n.interface}")
        if _by_family(before.subnets) != _by_family(n.subnets):
            how = "pinned" if all(n.pinned) else "allocated, not pinned"
            lines.append(f"subnet moved: {n.name} {_subnets(before)} -> {_subnets(n)} ({how})")
            moves.append(_move_error(new_doc, index, before, n))
    lines += _route_changes(old, new)
    if not lines:
        lines.append("no change to the network, nodes, subnets or routes")
    return Report(lines, moves)


def _by_family(values) -> Dict[int, object]:
    return {v.version: v for v in values}


def _addrs(node) -> str:
    return ", ".join(map(str, node.addresses))


def _subnets(node) -> str:
    return ", ".join(map(str, node.subnets))


def _network_changes(old: Network, new: Network) -> List[str]:
    changed = []
    for f in dataclasses.fields(Network):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            changed.append(f"{f.name} {_show(a)} -> {_show(b)}")
    return ["network: " + "; ".join(changed)] if changed else []


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):  # pools
        return ", ".join(f"{p.cidr} (/{p.node_prefix} per node)" if hasattr(p, "cidr") else str(p) for p in value)
    return "none" if value is None else str(value)


def _move_error(doc: Document, index: int, before, after) -> Diagnostic:
    old, new = _subnets(before), _subnets(after)
    value = old if len(before.subnets) == 1 else f"[{old}]"  # as YAML reads it back
    if all(after.pinned):
        where, hint = ("nodes", index, "podCIDR"), f"pin it back (podCIDR: {value})"
    else:
        where = ("nodes", index)
        hint = (f"it is allocated, not pinned, so a node added or removed before it shifted it: pin it "
                f"(podCIDR: {value}; `podnet allocate OLD --write` pins every subnet before an edit)")
    return doc.at(where, f"node {after.name}: pod subnet moves from {old} to {new}; its running pods keep "
                         f"addresses from {old} and lose their routes. {hint[0].upper() + hint[1:]}, "
                         f"or pass --allow-move after draining the node")


def routes_by_host(topo: Topology) -> Dict[str, Set[Route]]:
    """The routes each host installs: a node its routes.sh routes, the router its table."""
    table = route_table(topo)
    net = topo.network
    hosts: Dict[str, Set[Route]] = {}
    if net.routing == "router":
        # each family's pod range via that family's router (net.routers follows net.pools)
        for n in topo.nodes:
            hosts[n.name] = {(str(p.cidr), str(r)) for p, r in zip(net.pools, net.routers)}
        hosts[ROUTER] = {(dst, nexthop) for dst, nexthop, _ in table}
        return hosts
    for n in topo.nodes:
        hosts[n.name] = {(dst, nexthop) for dst, nexthop, owner in table if owner != n.name}
    return hosts


def _route_changes(old: Topology, new: Topology) -> List[str]:
    before, after = routes_by_host(old), routes_by_host(new)
    added: Dict[Route, List[str]] = defaultdict(list)
    removed: Dict[Route, List[str]] = defaultdict(list)
    for host in list(after) + [h for h in before if h not in after]:
        for r in sorted(after.get(host, set()) - before.get(host, set())):
            added[r].append(host)
        for r in sorted(before.get(host, set()) - after.get(host, set())):
            removed[r].append(host)
    lines = []
    for title, changes, topo in (("routes added", added, new), ("routes removed", removed, old)):
        if changes:
            lines.append(f"{title}:")
            lines += [f"  {dst} via {via} on {_hosts(hosts, topo, via)}" for (dst, via), hosts in sorted(changes.items(), key=_route_key)]
    return lines


def _route_key(item) -> tuple:
    (dst, via), _ = item
    net = ipaddress.ip_network(dst)
    return (net.version, net.network_address, net.prefixlen, via)


def _hosts(hosts: Sequence[str], topo: Topology, via: str) -> str:
    """The hosts, in words: "every node", "every node but X", or a (shortened) list."""
    names = [n.name for n in topo.nodes]
    owner = next((n.name for n in topo.nodes if via in map(str, n.addresses)), None)
    if set(hosts) == set(names):
        return "every node"
    if owner and set(hosts) == set(names) - {owner}:
        return f"every node but {owner}"
    shown = list(hosts)[:LIST_MAX]
    more = len(hosts) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
