"""The front half of the pipeline: file -> validated, canonical, allocated Topology."""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional, Tuple

from compiler import checks, schema
from compiler.allocate import PoolExhausted, allocate
from compiler.diagnostics import InputError
from compiler.load import Document, load_file
from compiler.model import DEFAULTS, IPNetwork, Network, Node, Pool, Topology, node_prefix_length


def load_topology(filename: str) -> Topology:
    return build(load_file(filename))


def build(doc: Document) -> Topology:
    """Every problem of the document in one error: the YAML's own (Document.problems),
    then the schema's and the rules', except at or under a part the YAML's name (a
    duplicate key's second value is dropped, a bad scalar is None: saying so again
    would only repeat them)."""
    flagged = {p.path for p in doc.problems}
    problems = list(doc.problems)
    for p in list(schema.check(doc)) + list(checks.check(doc)):
        if not any(p.path[: len(f)] == f for f in flagged):
            problems.append(p)
    if problems:
        raise InputError(doc.filename, _dedupe(problems))
    return canonicalise(doc)


def _dedupe(problems):
    seen, out = set(), []
    for p in problems:
        if (p.line, p.col, p.message) not in seen:
            seen.add((p.line, p.col, p.message))
            out.append(p)
    return out


def _as_list(value: Any) -> List[Any]:
    return value if isinstance(value, list) else [value]


def _by_family(values: List[Any], families: List[int]) -> Tuple[Any, ...]:
    """Orders one-per-family values like the pools (checks guarantee one per family)."""
    found = {v.version: v for v in values}
    return tuple(found[f] for f in families)


def canonicalise(doc: Document) -> Topology:
    """Valid data -> model, with every default filled and every subnet allocated.
    Families keep the order of network.podCIDR (the first is the primary)."""
    net: Dict[str, Any] = {**DEFAULTS, **doc.data["network"]}
    cidrs = [ipaddress.ip_network(c) for c in _as_list(net["podCIDR"])]
    single = len(cidrs) == 1
    pools = tuple(Pool(c, node_prefix_length(c.version, doc.data["network"], single)) for c in cidrs)
    families = [p.family for p in pools]
    raw_nodes: List[Dict[str, Any]] = doc.data["nodes"]
    per_family: List[List[IPNetwork]] = []
    pinned_flags: List[List[bool]] = []
    for pool in pools:
        pinned = [_pinned(n, pool.family) for n in raw_nodes]
        try:
            per_family.append(allocate(pool, pinned))
        except PoolExhausted as e:  # checks.capacity makes this unreachable; kept as a guard
            raise InputError(doc.filename, [doc.at(("nodes", e.index), f"nodes[{e.index}]: no free /{pool.node_prefix} left in {pool.cidr}")])
        pinned_flags.append([p is not None for p in pinned])
    routers = net.get("router") if net["routing"] == "router" else None
    network = Network(
        name=net["name"],
        cni_version=net["cniVersion"],
        pools=pools,
        bridge=net["bridge"],
        mtu=net["mtu"],
        masquerade=net["masquerade"],
        routing=net["routing"],
        routers=_by_family([ipaddress.ip_address(r) for r in _as_list(routers)], families) if routers else (),
        data_dir=net["dataDir"],
        plugin=net["plugin"],
        range_start=net.get("rangeStart"),
        range_end=net.get("rangeEnd"),
    )
    nodes = tuple(
        Node(
            name=n["name"],
            addresses=_by_family([ipaddress.ip_address(a) for a in _as_list(n["address"])], families),
            interface=n.get("interface", DEFAULTS["interface"]),
            subnets=tuple(per_family[k][i] for k in range(len(pools))),
            pinned=tuple(pinned_flags[k][i] for k in range(len(pools))),
        )
        for i, n in enumerate(raw_nodes)
    )
    return Topology(source=doc.filename, network=network, nodes=nodes)


def _pinned(node: Dict[str, Any], family: int) -> Optional[IPNetwork]:
    for c in _as_list(node.get("podCIDR", [])):
        net = ipaddress.ip_network(c)
        if net.version == family:
            return net
    return None
