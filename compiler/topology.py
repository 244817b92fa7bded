"""The front half of the pipeline: file -> validated, canonical, allocated Topology."""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List

from compiler import checks, schema
from compiler.allocate import PoolExhausted, allocate
from compiler.diagnostics import InputError
from compiler.load import Document, load_file
from compiler.model import DEFAULTS, Network, Node, Pool, Topology


def load_topology(filename: str) -> Topology:
    return build(load_file(filename))


def build(doc: Document) -> Topology:
    problems = list(schema.check(doc))
    problems += checks.check(doc)
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


def canonicalise(doc: Document) -> Topology:
    """Valid data -> model, with every default filled and every subnet allocated."""
    net: Dict[str, Any] = {**DEFAULTS, **doc.data["network"]}
    pool = Pool(ipaddress.ip_network(net["podCIDR"]), net["nodePrefixLength"])
    raw_nodes: List[Dict[str, Any]] = doc.data["nodes"]
    pinned = [ipaddress.ip_network(n["podCIDR"]) if "podCIDR" in n else None for n in raw_nodes]
    try:
        subnets = allocate(pool, pinned)
    except PoolExhausted as e:  # checks.capacity makes this unreachable; kept as a guard
        raise InputError(doc.filename, [doc.at(("nodes", e.index), f"nodes[{e.index}]: no free /{pool.node_prefix} left in {pool.cidr}")])
    network = Network(
        name=net["name"],
        cni_version=net["cniVersion"],
        pools=(pool,),
        bridge=net["bridge"],
        mtu=net["mtu"],
        masquerade=net["masquerade"],
        routing=net["routing"],
        router=ipaddress.ip_address(net["router"]) if "router" in net else None,
        data_dir=net["dataDir"],
        plugin=net["plugin"],
        range_start=net.get("rangeStart"),
        range_end=net.get("rangeEnd"),
    )
    nodes = tuple(
        Node(
            name=n["name"],
            addresses=(ipaddress.ip_address(n["address"]),),
            interface=n.get("interface", DEFAULTS["interface"]),
            subnets=(subnet,),
            pinned=(pin is not None,),
        )
        for n, subnet, pin in zip(raw_nodes, subnets, pinned)
    )
    return Topology(source=doc.filename, network=network, nodes=nodes)
