"""Semantic rules the schema cannot express. Each rule is a small generator of diagnostics.

Rules run on the loaded data even when the schema found problems; a rule skips
any field that is malformed (the schema already reported it), so one run reports
everything it can. Every rule holds per address family: `podCIDR`, `address`,
a node's `podCIDR` and `router` are one value or a list with one per family.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from compiler.allocate import PoolExhausted, allocate
from compiler.diagnostics import Diagnostic, dotted
from compiler.load import Document
from compiler.model import DEFAULTS, IPNetwork, Pool, node_prefix_length
from compiler.ansible import NODES_GROUP, ROUTER_HOST
from compiler.plan import BIN_HELPERS, NHID_SPAN, SHELL_NAMES, nexthop_id, subnet_index

Rule = Callable[["Facts"], Iterator[Diagnostic]]
Path = Tuple[Any, ...]
FAMILY = {4: "IPv4", 6: "IPv6"}


class Facts:
    """The parts of a document the rules look at, parsed when well-formed, else None."""

    def __init__(self, doc: Document):
        self.doc = doc
        data = doc.data if isinstance(doc.data, dict) else {}
        net = data.get("network")
        self.net: Dict[str, Any] = net if isinstance(net, dict) else {}
        nodes = data.get("nodes")
        self.nodes: List[Dict[str, Any]] = [n if isinstance(n, dict) else {} for n in nodes] if isinstance(nodes, list) else []
        # the cluster's pod ranges, at most one per family (the schema and `families` say more)
        self.pools: Dict[int, Any] = {}
        for _, net_ in self.values(("network", "podCIDR"), self.net.get("podCIDR"), _network):
            self.pools.setdefault(net_.version, net_)
        self.prefixes: Dict[int, Optional[int]] = {v: self._prefix(v) for v in (4, 6)}

    def _prefix(self, version: int) -> Optional[int]:
        raw = {k: self.net[k] for k in ("nodePrefixLength", "nodePrefixLength6") if k in self.net}
        if any(isinstance(v, bool) or not isinstance(v, int) for v in raw.values()):
            return None
        return node_prefix_length(version, raw, single_stack=len(self.pools) == 1)

    @staticmethod
    def values(path: Path, raw: Any, parse) -> List[Tuple[Path, Any]]:
        """(path, parsed) for a one-or-list field, skipping malformed entries."""
        items = [(path, raw)] if not isinstance(raw, list) else [(path + (k,), v) for k, v in enumerate(raw)]
        out = []
        for p, v in items:
            parsed = parse(v)
            if parsed is not None:
                out.append((p, parsed))
        return out

    def node_values(self, i: int, key: str, parse) -> List[Tuple[Path, Any]]:
        return self.values(("nodes", i, key), self.nodes[i].get(key), parse)

    def prefix_key(self, version: int) -> str:
        """The key that sets a family's node prefix length (see model.node_prefix_length)."""
        if version == 6 and ("nodePrefixLength6" in self.net or len(self.pools) != 1 or "nodePrefixLength" not in self.net):
            return "nodePrefixLength6"
        return "nodePrefixLength"


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


def families(f: Facts) -> Iterator[Diagnostic]:
    """One value per family in each list: network.podCIDR, router, a node's address and podCIDR."""
    fields = [(("network", "podCIDR"), f.net.get("podCIDR"), _network), (("network", "router"), f.net.get("router"), _address)]
    for i, n in enumerate(f.nodes):
        fields += [(("nodes", i, "address"), n.get("address"), _address), (("nodes", i, "podCIDR"), n.get("podCIDR"), _network)]
    for path, raw, parse in fields:
        seen: Dict[int, Path] = {}
        for p, value in f.values(path, raw, parse):
            if value.version in seen:
                yield f.doc.at(p, f"{dotted(p)}: a second {FAMILY[value.version]} value; give at most one per address family")
            seen.setdefault(value.version, p)


def host_bits(f: Facts) -> Iterator[Diagnostic]:
    """A CIDR with host bits set is almost always a typo for a different network."""
    fields = f.values(("network", "podCIDR"), f.net.get("podCIDR"), lambda v: v if _network(v) else None)
    for i in range(len(f.nodes)):
        fields += f.node_values(i, "podCIDR", lambda v: v if _network(v) else None)
    for path, value in fields:
        net = _network(value)
        if ipaddress.ip_address(value.split("/")[0]) != net.network_address:
            yield f.doc.at(path, f"{dotted(path)}: {value} has host bits set; did you mean {net}?")


def node_prefix_fits(f: Facts) -> Iterator[Diagnostic]:
    for version, pool in f.pools.items():
        prefix = f.prefixes[version]
        if prefix is None:
            continue
        key = f.prefix_key(version)
        path = ("network", key) if key in f.net else ("network", "podCIDR")
        if prefix < pool.prefixlen:
            yield f.doc.at(path, f"network.{key}: /{prefix} node subnets do not fit in podCIDR {pool}")
        elif prefix > pool.max_prefixlen - 2:
            yield f.doc.at(path, f"network.{key}: /{prefix} leaves no address for pods in an {FAMILY[version]} subnet")
        elif version == 6 and prefix < 64:
            # the node's IPAM (shell arithmetic, like host-local's interface identifiers) works within one /64
            yield f.doc.at(path, f"network.{key}: /{prefix} IPv6 node subnets are wider than a /64, which the node's IPAM cannot allocate from; use 64 or longer")


def pinned_subnets(f: Facts) -> Iterator[Diagnostic]:
    """Pinned subnets: of a family the cluster has, inside its podCIDR, of the node size,
    not overlapping each other."""
    pinned: List[Tuple[Any, int, Path]] = []
    for i in range(len(f.nodes)):
        for path, sub in f.node_values(i, "podCIDR", _network):
            where = dotted(path)
            pool, prefix = f.pools.get(sub.version), f.prefixes[sub.version]
            if f.pools and pool is None:
                yield f.doc.at(path, f"{where}: {sub} is {FAMILY[sub.version]}, but network.podCIDR has no {FAMILY[sub.version]} range")
                continue
            if pool is not None and not sub.subnet_of(pool):
                yield f.doc.at(path, f"{where}: {sub} is outside network.podCIDR {pool}")
            elif prefix is not None and sub.prefixlen != prefix:
                yield f.doc.at(path, f"{where}: {sub} is a /{sub.prefixlen}, but network.{f.prefix_key(sub.version)} is {prefix}")
            pinned.append((sub, i, path))
    yield from _overlaps(f, pinned)


def _overlaps(f: Facts, pinned: List[Tuple[Any, int, Path]]) -> Iterator[Diagnostic]:
    """Each subnet that overlaps one earlier in the file, in O(n log n): sweep the
    subnets by start address, keeping the one reaching furthest so far."""
    spans = sorted((sub.version, int(sub.network_address), i, int(sub.broadcast_address), sub, path) for sub, i, path in pinned)
    reach = None  # (version, end, index, subnet, path) of the span reaching furthest
    for version, start, i, end, sub, path in spans:
        if reach is not None and reach[0] == version and start <= reach[1]:
            # report on the later of the two nodes in file order
            if i > reach[2]:
                at, later_sub, other, earlier = path, sub, reach[3], reach[2]
            else:
                at, later_sub, other, earlier = reach[4], reach[3], sub, i
            yield f.doc.at(at, f"{dotted(at)}: {later_sub} overlaps {other} of node {_name(f, earlier)} (nodes[{earlier}])")
        if reach is None or reach[0] != version or end > reach[1]:
            reach = (version, end, i, sub, path)


def unique_names(f: Facts) -> Iterator[Diagnostic]:
    first: Dict[str, int] = {}
    for i, n in enumerate(f.nodes):
        name = n.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            yield f.doc.at(("nodes", i, "name"), f"nodes[{i}].name: duplicate node name {name!r} (also nodes[{first[name]}])")
        else:
            first[name] = i


def unique_addresses(f: Facts) -> Iterator[Diagnostic]:
    first: Dict[Any, int] = {}
    for i in range(len(f.nodes)):
        for path, addr in f.node_values(i, "address", _address):
            if addr in first and first[addr] != i:
                yield f.doc.at(path, f"{dotted(path)}: {addr} is also the address of node {_name(f, first[addr])} (nodes[{first[addr]}])")
            first.setdefault(addr, i)


def node_address_families(f: Facts) -> Iterator[Diagnostic]:
    """Each node has an underlay address in every family the pods have (routes to its
    pod subnet of that family go via it), and none in another."""
    if not f.pools:
        return
    for i, n in enumerate(f.nodes):
        addresses = f.node_values(i, "address", _address)
        if not addresses or len(addresses) != (len(n["address"]) if isinstance(n.get("address"), list) else 1):
            continue  # missing or malformed: the schema said so
        have = {a.version for _, a in addresses}
        wrong = [(path, a) for path, a in addresses if a.version not in f.pools]
        for path, addr in wrong:
            yield f.doc.at(path, f"{dotted(path)}: {addr} is {FAMILY[addr.version]}, but network.podCIDR has no {FAMILY[addr.version]} range")
        for version, pool in sorted(f.pools.items()):
            if version not in have and not wrong:
                yield f.doc.at(("nodes", i, "address"), f"nodes[{i}].address: no {FAMILY[version]} address; pods have the {FAMILY[version]} range {pool}, routed via each node's {FAMILY[version]} address")


def addresses_outside_pods(f: Facts) -> Iterator[Diagnostic]:
    for i in range(len(f.nodes)):
        for path, addr in f.node_values(i, "address", _address):
            pool = f.pools.get(addr.version)
            if pool is not None and addr in pool:
                yield f.doc.at(path, f"{dotted(path)}: {addr} is inside network.podCIDR {pool}; node addresses must be on the underlay")
            if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
                yield f.doc.at(path, f"{dotted(path)}: {addr} cannot be a node's underlay address")
    for path, router in f.values(("network", "router"), f.net.get("router"), _address):
        pool = f.pools.get(router.version)
        if pool is not None and router in pool:
            yield f.doc.at(path, f"{dotted(path)}: {router} is inside network.podCIDR {pool}")
        if router.is_unspecified or router.is_loopback or router.is_multicast:
            yield f.doc.at(path, f"{dotted(path)}: {router} cannot be the router's underlay address")
        if f.pools and pool is None:
            yield f.doc.at(path, f"{dotted(path)}: {router} is {FAMILY[router.version]}, but network.podCIDR has no {FAMILY[router.version]} range")


def capacity(f: Facts) -> Iterator[Diagnostic]:
    for version, pool in sorted(f.pools.items()):
        prefix = f.prefixes[version]
        if prefix is None or prefix < pool.prefixlen:
            continue
        room = 1 << (prefix - pool.prefixlen)
        if len(f.nodes) > room:
            yield f.doc.at(("nodes",), f"nodes: {len(f.nodes)} nodes, but network.podCIDR {pool} holds only {room} /{prefix} subnet{'s' if room != 1 else ''}")


def nexthop_ids(f: Facts) -> Iterator[Diagnostic]:
    """routes.sh's nexthop id of a node subnet is its family's base + the subnet's index
    in the pod range mod NHID_SPAN (plan.nexthop_id): two subnets whose indexes agree
    there would share an id. Only a range of more than NHID_SPAN node subnets with a
    subnet pinned at an index beyond it can do that, against another pinned subnet or
    the one the allocator (run here as the compile runs it) gives a node without one.
    Said at the pinned subnet's podCIDR (the later node's when both are pinned)."""
    for version, pool in sorted(f.pools.items()):
        prefix = f.prefixes[version]
        if prefix is None or not pool.prefixlen <= prefix <= pool.max_prefixlen - 2:
            continue  # node_prefix_fits says so
        if prefix - pool.prefixlen <= NHID_SPAN.bit_length() - 1:
            continue
        paths: List[Optional[Path]] = []  # the podCIDR of each node that pins a usable subnet
        pinned: List[Optional[IPNetwork]] = []
        for i in range(len(f.nodes)):
            subs = [(p, s) for p, s in f.node_values(i, "podCIDR", _network) if s.version == version]
            usable = bool(subs) and subs[0][1].subnet_of(pool) and subs[0][1].prefixlen == prefix
            paths.append(subs[0][0] if usable else None)
            pinned.append(subs[0][1] if usable else None)
        try:
            subnets = allocate(Pool(pool, prefix), pinned)
        except PoolExhausted:  # capacity says so
            continue
        first: Dict[int, int] = {}  # nexthop id -> the first node with it
        for i, sub in enumerate(subnets):
            j = first.setdefault(nexthop_id(pool, sub), i)
            if j == i or subnets[j] == sub:  # one subnet pinned twice: pinned_subnets says so
                continue
            at, other = (i, j) if paths[i] is not None else (j, i)
            path, mine, theirs = paths[at], subnets[at], subnets[other]
            whose = f"of node {_name(f, other)}" if paths[other] is not None else f"allocated to node {_name(f, other)}"
            joint = "" if paths[other] is not None else ","
            yield f.doc.at(path, f"{dotted(path)}: {mine} would share routes.sh's nexthop id {nexthop_id(pool, sub)} with {theirs}{joint} {whose} (nodes[{other}]): "
                           f"their indexes {subnet_index(pool, mine)} and {subnet_index(pool, theirs)} in network.podCIDR {pool} are equal mod {NHID_SPAN}; pin another subnet")


def router_mode(f: Facts) -> Iterator[Diagnostic]:
    routing = f.net.get("routing", DEFAULTS["routing"])
    if routing == "router" and "router" not in f.net:
        yield f.doc.at(("network", "routing"), "network.router: required when network.routing is 'router'")
    if routing != "router" and "router" in f.net:
        yield f.doc.at(("network", "router"), "network.router: only used with network.routing: router; remove it or set routing: router", key=True)
    routers = f.values(("network", "router"), f.net.get("router"), _address)
    if routing == "router" and routers:
        have = {r.version for _, r in routers}
        for version, pool in sorted(f.pools.items()):
            if version not in have:
                yield f.doc.at(("network", "router"), f"network.router: no {FAMILY[version]} router address; pods have the {FAMILY[version]} range {pool}")
    by_address = {r: p for p, r in routers}
    for i in range(len(f.nodes)):
        for path, addr in f.node_values(i, "address", _address):
            if addr in by_address:
                yield f.doc.at(path, f"{dotted(path)}: {addr} is the router's address")


def bridge_not_underlay(f: Facts) -> Iterator[Diagnostic]:
    bridge = f.net.get("bridge", DEFAULTS["bridge"])
    for i, n in enumerate(f.nodes):
        if n.get("interface", DEFAULTS["interface"]) == bridge:
            yield f.doc.at(("nodes", i, "interface"), f"nodes[{i}].interface: {bridge!r} is also network.bridge; the pod bridge cannot be the underlay interface")


def ipam_range(f: Facts) -> Iterator[Diagnostic]:
    """rangeStart/rangeEnd (host offsets in every node subnet): inside the subnet
    (never the network or broadcast address), start <= end, and room for a pod
    besides the gateway (offset 1)."""
    start, end = f.net.get("rangeStart"), f.net.get("rangeEnd")
    start = start if isinstance(start, int) and not isinstance(start, bool) else None
    end = end if isinstance(end, int) and not isinstance(end, bool) else None
    for version, pool in sorted(f.pools.items()):
        prefix = f.prefixes[version]
        if prefix is None or not pool.prefixlen <= prefix <= pool.max_prefixlen - 2:
            continue
        # (IPv4's last address is the broadcast; IPv6 has none, and host-local's default
        # range, like podnet's, ends at the subnet's last address)
        last = (1 << (pool.max_prefixlen - prefix)) - (2 if version == 4 else 1)
        for key, value in (("rangeStart", start), ("rangeEnd", end)):
            if value is not None and value > last:
                yield f.doc.at(("network", key), f"network.{key}: offset {value} is outside a /{prefix} node subnet, whose pod addresses are offsets 1..{last}")
    # rangeStart's default is offset 1; a malformed one (the schema says so) is skipped,
    # and so is a rangeEnd below 1
    first = 1 if "rangeStart" not in f.net else start
    if first is not None and end is not None and end >= 1:
        if first > end:
            yield f.doc.at(("network", "rangeEnd"), f"network.rangeEnd: {end} is before network.rangeStart {first}")
        elif first == end == 1:
            yield f.doc.at(("network", "rangeEnd"), "network.rangeEnd: the range holds only the gateway (offset 1); no address is left for pods")


def data_dir_plain(f: Facts) -> Iterator[Diagnostic]:
    """dataDir without `.` or `..` parts: host-local (Go) cleans such a path by its text,
    the kernel follows symlinks first, so after a symlinked directory the two would use
    different stores, and hand out the same address twice."""
    data_dir = f.net.get("dataDir")
    if isinstance(data_dir, str) and any(part in (".", "..") for part in data_dir.split("/")):
        yield f.doc.at(("network", "dataDir"), f"network.dataDir: {data_dir!r} has . or .. parts; give the directory's plain path")


def shipped_names(f: Facts) -> Iterator[Diagnostic]:
    """Names the artifacts give meaning to elsewhere: a node's name is a host in the
    Ansible inventory, beside its fixed group and (router mode) router host; the
    plugin's name is its file in the CNI bin dir, beside the helpers shipped there, and
    the plugin tells whether a shell sources it (tests) by that name."""
    reserved = {NODES_GROUP: "the Ansible inventory's group of the nodes", "all": "Ansible's group of every host", "ungrouped": "Ansible's group of hosts in no group"}
    if f.net.get("routing", DEFAULTS["routing"]) == "router":
        reserved[ROUTER_HOST] = "the router's host in the Ansible inventory"
    for i, n in enumerate(f.nodes):
        name = n.get("name")
        if isinstance(name, str) and name in reserved:
            yield f.doc.at(("nodes", i, "name"), f"nodes[{i}].name: {name!r} is taken by {reserved[name]}; choose another name")
    plugin = f.net.get("plugin")
    if plugin in BIN_HELPERS:
        yield f.doc.at(("network", "plugin"), f"network.plugin: {plugin!r} is the name of the helper shipped beside the plugin; choose another name")
    elif plugin in SHELL_NAMES:
        yield f.doc.at(("network", "plugin"), f"network.plugin: {plugin!r} is the name of a shell, which the plugin takes as being sourced; choose another name")


def _name(f: Facts, i: int) -> str:
    name = f.nodes[i].get("name")
    return repr(name) if isinstance(name, str) else f"#{i}"


RULES: Tuple[Rule, ...] = (
    families,
    host_bits,
    node_prefix_fits,
    pinned_subnets,
    unique_names,
    unique_addresses,
    node_address_families,
    addresses_outside_pods,
    capacity,
    nexthop_ids,
    router_mode,
    bridge_not_underlay,
    ipam_range,
    data_dir_plain,
    shipped_names,
)


def check(doc: Document) -> Iterator[Diagnostic]:
    facts = Facts(doc)
    for rule in RULES:
        yield from rule(facts)
