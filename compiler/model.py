"""The validated topology as frozen dataclasses with `ipaddress` values.

Defaults are filled once, here (canonicalise); later stages never check for None.
Address families are carried as tuples (one Pool per family, one subnet and one
address per family on a node) so that dual-stack is an extension, not a rewrite.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Dict, Optional, Tuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULTS = {
    "name": "podnet",
    "cniVersion": "1.0.0",
    "nodePrefixLength": 24,
    "nodePrefixLength6": 64,
    "bridge": "cni0",
    "mtu": 1500,
    "masquerade": True,
    "routing": "static",
    "dataDir": "/var/lib/cni/networks",
    "plugin": "podnet",
    "interface": "eth0",
}

def node_prefix_length(version: int, network: Dict[str, Any], single_stack: bool) -> int:
    """The node subnet size of one family, as Kubernetes' controller manager does it:
    `nodePrefixLength` is IPv4's (and IPv6's in an IPv6-only cluster), `nodePrefixLength6`
    is IPv6's; the defaults are /24 and /64."""
    if version == 4:
        return network.get("nodePrefixLength", DEFAULTS["nodePrefixLength"])
    if "nodePrefixLength6" in network:
        return network["nodePrefixLength6"]
    if single_stack and "nodePrefixLength" in network:
        return network["nodePrefixLength"]
    return DEFAULTS["nodePrefixLength6"]


@lru_cache(maxsize=1 << 16)
def text(value: Any) -> str:
    """str() of an address or network, remembered: views spell each one many times."""
    return str(value)


CNI_VERSIONS = ("0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@dataclass(frozen=True)
class Pool:
    """The cluster's pod range of one address family, cut into node subnets."""

    cidr: IPNetwork
    node_prefix: int

    @property
    def family(self) -> int:
        return self.cidr.version

    @property
    def capacity(self) -> int:
        return 1 << (self.node_prefix - self.cidr.prefixlen)


@dataclass(frozen=True)
class Network:
    name: str
    cni_version: str
    pools: Tuple[Pool, ...]
    bridge: str
    mtu: int
    masquerade: bool
    routing: str  # "static" | "router"
    routers: Tuple[IPAddress, ...]  # router mode: one per family, aligned with pools; else ()
    data_dir: str
    plugin: str
    # IPAM range inside every node subnet, as offsets from its network address;
    # None: host-local's defaults (network + 1 .. broadcast - 1). See plan.ipam_ranges.
    range_start: Optional[int] = None
    range_end: Optional[int] = None

    @property
    def pool(self) -> Pool:
        """The primary (first) family's pool."""
        return self.pools[0]

    @property
    def router(self) -> Optional[IPAddress]:
        """The primary family's router (router mode), else None."""
        return self.routers[0] if self.routers else None

    @property
    def families(self) -> Tuple[int, ...]:
        return tuple(p.family for p in self.pools)


@dataclass(frozen=True)
class Node:
    name: str
    addresses: Tuple[IPAddress, ...]  # underlay, one per family, primary first
    interface: str
    subnets: Tuple[IPNetwork, ...]  # pod subnets, aligned with Network.pools
    pinned: Tuple[bool, ...]  # per subnet: written in the topology (True) or allocated

    @property
    def address(self) -> IPAddress:
        return self.addresses[0]

    @property
    def subnet(self) -> IPNetwork:
        return self.subnets[0]

    @cached_property  # frozen: computed once per node
    def gateways(self) -> Tuple[IPAddress, ...]:
        """The bridge's address per family: the first address of each subnet."""
        return tuple(s.network_address + 1 for s in self.subnets)

    @property
    def gateway(self) -> IPAddress:
        return self.gateways[0]


@dataclass(frozen=True)
class Topology:
    source: str  # the topology's file name as given on the command line
    network: Network
    nodes: Tuple[Node, ...]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)
