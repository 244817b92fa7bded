"""Semantic rules the schema cannot express. Each rule is a small generator of diagnostics.

Rules run on the loaded data even when the schema found problems; a rule skips
any field that is malformed (the schema already reported it), so one run reports
everything it can.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from compiler.diagnostics import Diagnostic, dotted
from compiler.load import Document
from compiler.model import DEFAULTS

Rule = Callable[["Facts"], Iterator[Diagnostic]]


class Facts:
    """The parts of a document the rules look at, parsed when well-formed, else None."""

    def __init__(self, doc: Document):
        self.doc = doc
        data = doc.data if isinstance(doc.data, dict) else {}
        net = data.get("network")
        self.net: Dict[str, Any] = net if isinstance(net, dict) else {}
        nodes = data.get("nodes")
        self.nodes: List[Dict[str, Any]] = [n if isinstance(n, dict) else {} for n in nodes] if isinstance(nodes, list) else []
        self.pod_cidr = _network(self.net.get("podCIDR"))
        prefix = self.net.get("nodePrefixLength", DEFAULTS["nodePrefixLength"])
        self.node_prefix: Optional[int] = prefix if isinstance(prefix, int) and not isinstance(prefix, bool) else None

    def node_path(self, i: int, key: str) -> Tuple[Any, ...]:
        return ("nodes", i, key)


def _network(value: Any):
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def _address(value: Any):
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def host_bits(f: Facts) -> Iterator[Diagnostic]:
    """A CIDR with host bits set is almost always a typo for a different network."""
    fields = [(("network", "podCIDR"), f.net.get("podCIDR"))]
    fields += [(f.node_path(i, "podCIDR"), n.get("podCIDR")) for i, n in enumerate(f.nodes)]
    for path, value in fields:
        net = _network(value)
        if net is not None and str(net.network_address) != value.split("/")[0]:
            yield f.doc.at(path, f"{dotted(path)}: {value} has host bits set; did you mean {net}?")


def node_prefix_fits(f: Facts) -> Iterator[Diagnostic]:
    if f.pod_cidr is None or f.node_prefix is None:
        return
    if f.node_prefix < f.pod_cidr.prefixlen:
        yield f.doc.at(("network", "nodePrefixLength"), f"network.nodePrefixLength: /{f.node_prefix} node subnets do not fit in podCIDR {f.pod_cidr}")
    elif f.node_prefix > f.pod_cidr.max_prefixlen - 2:
        yield f.doc.at(("network", "nodePrefixLength"), f"network.nodePrefixLength: /{f.node_prefix} leaves no address for pods")


def pinned_subnets(f: Facts) -> Iterator[Diagnostic]:
    """Pinned subnets: inside podCIDR, of the node size, not overlapping each other."""
    pinned: List[Tuple[Any, int]] = []
    for i, n in enumerate(f.nodes):
        sub = _network(n.get("podCIDR"))
        if sub is None:
            continue
        where = f"nodes[{i}].podCIDR"
        path = f.node_path(i, "podCIDR")
        if f.pod_cidr is not None and sub.version == f.pod_cidr.version and not sub.subnet_of(f.pod_cidr):
            yield f.doc.at(path, f"{where}: {sub} is outside network.podCIDR {f.pod_cidr}")
        elif f.node_prefix is not None and sub.prefixlen != f.node_prefix:
            yield f.doc.at(path, f"{where}: {sub} is a /{sub.prefixlen}, but network.nodePrefixLength is {f.node_prefix}")
        pinned.append((sub, i))
    yield from _overlaps(f, pinned)


def _overlaps(f: Facts, pinned: List[Tuple[Any, int]]) -> Iterator[Diagnostic]:
    """Each subnet that overlaps one earlier in the file, in O(n log n): sweep the
    subnets by start address, keeping the one reaching furthest so far."""
    spans = sorted(
        (sub.version, int(sub.network_address), i, int(sub.broadcast_address), sub)
        for sub, i in pinned
    )
    reach: Optional[Tuple[int, int, int, Any]] = None  # (version, end, index, subnet)
    for version, start, i, end, sub in spans:
        if reach is not None and reach[0] == version and start <= reach[1]:
            # report on the later of the two nodes in file order
            later, earlier, other = (i, reach[2], reach[3]) if i > reach[2] else (reach[2], i, sub)
            later_sub = sub if later == i else reach[3]
            yield f.doc.at(f.node_path(later, "podCIDR"), f"nodes[{later}].podCIDR: {later_sub} overlaps {other} of node {_name(f, earlier)} (nodes[{earlier}])")
        if reach is None or reach[0] != version or end > reach[1]:
            reach = (version, end, i, sub)


def unique_names(f: Facts) -> Iterator[Diagnostic]:
    first: Dict[str, int] = {}
    for i, n in enumerate(f.nodes):
        name = n.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            yield f.doc.at(f.node_path(i, "name"), f"nodes[{i}].name: duplicate node name {name!r} (also nodes[{first[name]}])")
        else:
            first[name] = i


def unique_addresses(f: Facts) -> Iterator[Diagnostic]:
    first: Dict[Any, int] = {}
    for i, n in enumerate(f.nodes):
        addr = _address(n.get("address"))
        if addr is None:
            continue
        if addr in first:
            yield f.doc.at(f.node_path(i, "address"), f"nodes[{i}].address: {addr} is also the address of node {_name(f, first[addr])} (nodes[{first[addr]}])")
        else:
            first[addr] = i


def addresses_outside_pods(f: Facts) -> Iterator[Diagnostic]:
    if f.pod_cidr is None:
        return
    for i, n in enumerate(f.nodes):
        addr = _address(n.get("address"))
        if addr is not None and addr in f.pod_cidr:
            yield f.doc.at(f.node_path(i, "address"), f"nodes[{i}].address: {addr} is inside network.podCIDR {f.pod_cidr}; node addresses must be on the underlay")
        if addr is not None and (addr.is_unspecified or addr.is_loopback or addr.is_multicast):
            yield f.doc.at(f.node_path(i, "address"), f"nodes[{i}].address: {addr} cannot be a node's underlay address")
    router = _address(f.net.get("router"))
    if router is not None and router in f.pod_cidr:
        yield f.doc.at(("network", "router"), f"network.router: {router} is inside network.podCIDR {f.pod_cidr}")


def capacity(f: Facts) -> Iterator[Diagnostic]:
    if f.pod_cidr is None or f.node_prefix is None or f.node_prefix < f.pod_cidr.prefixlen:
        return
    room = 1 << (f.node_prefix - f.pod_cidr.prefixlen)
    if len(f.nodes) > room:
        yield f.doc.at(("nodes",), f"nodes: {len(f.nodes)} nodes, but network.podCIDR {f.pod_cidr} holds only {room} /{f.node_prefix} subnet{'s' if room != 1 else ''}")


def router_mode(f: Facts) -> Iterator[Diagnostic]:
    routing = f.net.get("routing", DEFAULTS["routing"])
    if routing == "router" and "router" not in f.net:
        yield f.doc.at(("network", "routing"), "network.router: required when network.routing is 'router'")
    if routing != "router" and "router" in f.net:
        yield f.doc.at(("network", "router"), "network.router: only used with network.routing: router; remove it or set routing: router", key=True)
    router = _address(f.net.get("router"))
    if router is not None:
        for i, n in enumerate(f.nodes):
            if _address(n.get("address")) == router:
                yield f.doc.at(f.node_path(i, "address"), f"nodes[{i}].address: {router} is the router's address")


def bridge_not_underlay(f: Facts) -> Iterator[Diagnostic]:
    bridge = f.net.get("bridge", DEFAULTS["bridge"])
    for i, n in enumerate(f.nodes):
        if n.get("interface", DEFAULTS["interface"]) == bridge:
            yield f.doc.at(f.node_path(i, "interface"), f"nodes[{i}].interface: {bridge!r} is also network.bridge; the pod bridge cannot be the underlay interface")


def ipam_range(f: Facts) -> Iterator[Diagnostic]:
    """rangeStart/rangeEnd (host offsets in every node subnet): inside the subnet
    (never the network or broadcast address), start <= end, and room for a pod
    besides the gateway (offset 1)."""
    start, end = f.net.get("rangeStart"), f.net.get("rangeEnd")
    start = start if isinstance(start, int) and not isinstance(start, bool) else None
    end = end if isinstance(end, int) and not isinstance(end, bool) else None
    if f.pod_cidr is not None and f.node_prefix is not None and f.pod_cidr.prefixlen <= f.node_prefix <= f.pod_cidr.max_prefixlen - 2:
        last = (1 << (f.pod_cidr.max_prefixlen - f.node_prefix)) - 2
        for key, value in (("rangeStart", start), ("rangeEnd", end)):
            if value is not None and value > last:
                yield f.doc.at(("network", key), f"network.{key}: offset {value} is outside a /{f.node_prefix} node subnet, whose pod addresses are offsets 1..{last}")
    if start is not None and end is not None:
        if start > end:
            yield f.doc.at(("network", "rangeEnd"), f"network.rangeEnd: {end} is before network.rangeStart {start}")
        elif start == end == 1:
            yield f.doc.at(("network", "rangeEnd"), "network.rangeEnd: the range holds only the gateway (offset 1); no address is left for pods")


def _name(f: Facts, i: int) -> str:
    name = f.nodes[i].get("name")
    return repr(name) if isinstance(name, str) else f"#{i}"


RULES: Tuple[Rule, ...] = (
    host_bits,
    node_prefix_fits,
    pinned_subnets,
    unique_names,
    unique_addresses,
    addresses_outside_pods,
    capacity,
    router_mode,
    bridge_not_underlay,
    ipam_range,
)


def check(doc: Document) -> Iterator[Diagnostic]:
    facts = Facts(doc)
    for rule in RULES:
        yield from rule(facts)
