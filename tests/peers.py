"""Real peers for the plugin tests: libcni, the reference plugins, podnet's plugin.

A `CniNode` is one simulated node: a network namespace the test created, and a
private root directory holding its plugin bin dir, its network config, libcni's
result cache and the directory mounted over /var/lib/cni (IPAM leases) while
anything runs in it. Pods are further namespaces; their paths go to plugins as
CNI_NETNS. Two ways to drive a plugin:

  * `node.driver(...)`: through tests/go/cnidriver, i.e. libcni, exactly as a
    container runtime calls it (config list handling, prevResult, result
    parsing and version conversion, result cache);
  * `node.invoke(...)`: executing the plugin directly with the spec's
    environment and stdin, for what Debian's libcni cannot do (spec 1.1.0: GC,
    STATUS).

Kernel state is read back with `ip -j` so tests compare facts, not strings.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from helpers import REPO, have, node_sh, podnet, sh, write_topology

DRIVER = REPO / "tests" / ".build" / "cnidriver"
DRIVER_SOURCE = REPO / "tests" / "go" / "cnidriver" / "main.go"
REFERENCE_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
NETNS_DIR = Path("/run/netns")  # where `ip netns add` puts namespaces

# Spec versions Debian's libcni (1.1.x) parses results of: every podnet version
# but 1.1.0. Below 0.3.0 podnet emits a single .conf, from 0.3.0 a .conflist.
LIBCNI_VERSIONS = ("0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
# CHECK exists from 0.4.0 on (libcni refuses it for older configs).
CHECK_VERSIONS = ("0.4.0", "1.0.0")

# One node, a non-default MTU and a non-default bridge name so a plugin that
# ignores the config is caught.
NODE = "node1"
SUBNET = "10.244.1.0/24"
GATEWAY = "10.244.1.1"
PREFIX = 24
MTU = 1400
BRIDGE = "pnbr0"
NETWORK = "podnet"


def topology_yaml(cni_version: str, masquerade: bool = True, name: str = NETWORK) -> str:
    return textwrap.dedent(
        f"""
        network:
          name: {name}
          cniVersion: "{cni_version}"
          podCIDR: 10.244.0.0/16
          nodePrefixLength: 24
          bridge: {BRIDGE}
          mtu: {MTU}
          masquerade: {"true" if masquerade else "false"}
          routing: static
        nodes:
          - name: {NODE}
            address: 192.168.1.2
            podCIDR: {SUBNET}
          - name: node2
            address: 192.168.1.3
            podCIDR: 10.244.2.0/24
        """
    )


def driver_available() -> Tuple[bool, str]:
    """Builds the libcni driver when missing or stale (the Makefile's rule);
    returns (usable, why not)."""
    if not have("go"):
        return False, "golang-go is not installed (tools/setup-system.sh installs it as root)"
    stale = not DRIVER.exists() or DRIVER.stat().st_mtime < DRIVER_SOURCE.stat().st_mtime
    if stale:
        built = subprocess.run(["make", "-s", "-C", str(REPO), "driver"], capture_output=True, text=True)
        if built.returncode != 0 or not DRIVER.exists():
            return False, f"cannot build the libcni driver: {built.stderr.strip()}"
    return True, ""


def compile_topology(directory: Path, text: str) -> Path:
    """Compiles `text` with podnet into directory/out and returns that dir."""
    topo = write_topology(directory, text)
    out = directory / "out"
    done = podnet("compile", str(topo), "-o", str(out))
    assert done.returncode == 0, f"podnet compile failed:\n{done.stdout}{done.stderr}"
    return out


def node_config_file(out: Path, node: str = NODE) -> Path:
    confs = sorted(p for p in (out / "nodes" / node).iterdir() if p.suffix in (".conf", ".conflist"))
    assert len(confs) == 1, f"expected one CNI config for {node}, found {confs}"
    return confs[0]


def plugin_entries(conf: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The plugin objects of a .conf (itself) or a .conflist (its `plugins`)."""
    return conf["plugins"] if "plugins" in conf else [conf]


def reference_config(podnet_conf: Dict[str, Any]) -> Dict[str, Any]:
    """The reference bridge + host-local configuration equivalent to podnet's:
    same name, version, bridge, isGateway, ipMasq, mtu, ranges, gateway, routes
    and lease directory; only the plugin types differ."""
    conf = copy.deepcopy(podnet_conf)
    for plugin in plugin_entries(conf):
        plugin["type"] = "bridge"
        plugin["ipam"]["type"] = "host-local"
    return conf


def loopback_config(cni_version: str) -> Dict[str, Any]:
    """The loopback network a runtime runs beside the reference bridge (the
    reference bridge leaves `lo` alone; podnet's plugin brings it up itself)."""
    return {"cniVersion": cni_version, "name": "cni-loopback", "type": "loopback"}


@dataclass
class Pod:
    ns: str  # namespace name (ip netns)
    cid: str = field(default_factory=lambda: "c" + uuid.uuid4().hex)
    ifname: str = "eth0"

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.ns)


@dataclass
class DriverRun:
    rc: int
    out: Dict[str, Any]
    stderr: str

    @property
    def result(self) -> Any:
        return self.out.get("result")

    @property
    def raw(self) -> List[Any]:
        return self.out.get("raw", [])

    def describe(self) -> str:
        return f"rc={self.rc} out={json.dumps(self.out)} stderr={self.stderr.strip()}"


class CniNode:
    """One simulated node. `bin_dirs` are searched for plugins (CNI_PATH)."""

    def __init__(self, ns: str, root: Path, conf: Dict[str, Any], bin_dirs: List[Path], conf_name: str):
        self.ns = ns
        self.root = root
        self.conf = conf
        self.bin_dirs = bin_dirs
        self.cache = root / "cache"  # libcni's result cache, never the host's
        self.cni_dir = root / "var-lib-cni"  # mounted over /var/lib/cni in the node
        for d in (self.cache, self.cni_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.conf_path = root / "conf" / conf_name
        self.conf_path.parent.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(json.dumps(conf, indent=2))
        # A runtime's loopback network run before this one (reference peers only).
        self.loopback_conf: Optional[Path] = None

    @property
    def name(self) -> str:
        return self.conf["name"]

    @property
    def cni_version(self) -> str:
        return self.conf["cniVersion"]

    @property
    def cni_path(self) -> str:
        return ":".join(str(d) for d in self.bin_dirs)

    @property
    def plugin(self) -> Dict[str, Any]:
        return plugin_entries(self.conf)[0]

    def sh(self, script: str, env: Optional[dict] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        return node_sh(self.ns, self.cni_dir, script, env=env, input=input)

    def driver(self, command: str, pod: Optional[Pod] = None, conf_path: Optional[Path] = None, ifname: Optional[str] = None, args: str = "") -> DriverRun:
        """Runs cnidriver COMMAND on this node's config (or `conf_path`) for
        `pod`, with CNI_ARGS `args` ("K=V;K=V")."""
        env = {
            "DRV": str(DRIVER),
            "DRV_PATH": self.cni_path,
            "DRV_CACHE": str(self.cache),
            "DRV_CONF": str(conf_path or self.conf_path),
            "DRV_CMD": command,
            "DRV_NETNS": pod.path if pod else "",
            "DRV_ID": pod.cid if pod else "",
            "DRV_IF": ifname or (pod.ifname if pod else "eth0"),
            "DRV_ARGS": args,
        }
        script = 'exec "$DRV" -path "$DRV_PATH" -cache "$DRV_CACHE" -netns "$DRV_NETNS" -id "$DRV_ID" -ifname "$DRV_IF" -args "$DRV_ARGS" "$DRV_CMD" "$DRV_CONF"'
        done = self.sh(script, env=env)
        try:
            out = json.loads(done.stdout) if done.stdout.strip() else {}
        except json.JSONDecodeError:
            out = {"unparsable": done.stdout}
        return DriverRun(done.returncode, out, done.stderr)

    def attach(self, pod: Pod, args: str = "") -> DriverRun:
        """ADD as a runtime does it: the loopback network first when there is one."""
        if self.loopback_conf:
            lo = self.driver("add", pod, conf_path=self.loopback_conf, ifname="lo")
            assert lo.rc == 0, f"loopback ADD failed: {lo.describe()}"
        return self.driver("add", pod, args=args)

    def detach(self, pod: Pod, args: str = "") -> DriverRun:
        """DEL as a runtime does it: this network, then the loopback network."""
        done = self.driver("del", pod, args=args)
        if self.loopback_conf:
            lo = self.driver("del", pod, conf_path=self.loopback_conf, ifname="lo")
            assert lo.rc == 0, f"loopback DEL failed: {lo.describe()}"
        return done

    def plugin_stdin(self, **extra: Any) -> str:
        """The config one plugin receives from a runtime (spec: a list's name and
        cniVersion injected into each plugin object), plus `extra` keys."""
        conf = {**self.plugin, "name": self.name, "cniVersion": self.cni_version, **extra}
        return json.dumps(conf)

    def invoke(self, command: str, stdin: str, pod: Optional[Pod] = None, env: Optional[dict] = None) -> subprocess.CompletedProcess:
        """Executes the plugin as the spec describes, without libcni."""
        full = {"CNI_COMMAND": command, "CNI_PATH": self.cni_path, "PODNET_TEST_PLUGIN": str(self.bin_dirs[0] / self.plugin["type"])}
        if pod:
            full.update(CNI_CONTAINERID=pod.cid, CNI_NETNS=pod.path, CNI_IFNAME=pod.ifname)
        full.update(env or {})
        return self.sh('exec "$PODNET_TEST_PLUGIN"', env=full, input=stdin)

    # ---- state read back from the kernel and the store -----------------------

    def store(self) -> Path:
        return self.cni_dir / "networks" / self.name

    def leases(self) -> Dict[str, str]:
        """IP -> 'containerID ifname' for every lease file in the store (not
        podnet's lease markers, .podnet-pair.*, nor other dot files)."""
        store = self.store()
        if not store.is_dir():
            return {}
        out = {}
        for p in sorted(store.iterdir()):
            if p.name == "lock" or p.name.startswith(("last_reserved_ip", ".")):
                continue
            out[p.name] = " ".join(p.read_text().split())
        return out

    def markers(self) -> List[str]:
        """podnet's lease markers in the store (.podnet-pair.HASH.ADDRESS)."""
        store = self.store()
        return sorted(p.name for p in store.iterdir() if p.name.startswith(".podnet-pair.")) if store.is_dir() else []

    def cached_results(self) -> List[str]:
        results = self.cache / "results"
        return sorted(p.name for p in results.iterdir()) if results.is_dir() else []

    def links(self) -> List[Dict[str, Any]]:
        return ip_json(self.ns, "link", "show")

    def nat_rules(self) -> List[str]:
        done = sh(["ip", "netns", "exec", self.ns, "iptables-save", "-t", "nat"], check=False)
        return [line for line in done.stdout.splitlines() if line.startswith(("-A", ":"))]

    def ip_forward(self) -> str:
        return sh(["ip", "netns", "exec", self.ns, "cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()


def install_podnet(out: Path, ns: str, root: Path, node: str = NODE) -> CniNode:
    """Installs node `node`'s compiled artifacts as the Ansible playbook does:
    net-setup.sh into the bin dir under the config's `type`, node-side helpers
    (the IPAM fallback) beside it."""
    conf_file = node_config_file(out, node)
    conf = json.loads(conf_file.read_text())
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    node_dir = out / "nodes" / node
    shutil.copy2(node_dir / "net-setup.sh", bin_dir / plugin_entries(conf)[0]["type"])
    for helper in node_dir.glob("*.py"):
        shutil.copy2(helper, bin_dir / helper.name)
    return CniNode(ns, root, conf, [bin_dir], conf_file.name)


def install_reference(out: Path, ns: str, root: Path, node: str = NODE) -> CniNode:
    """The reference bridge + host-local on the config equivalent to podnet's."""
    conf_file = node_config_file(out, node)
    conf = reference_config(json.loads(conf_file.read_text()))
    peer = CniNode(ns, root, conf, [REFERENCE_BIN], conf_file.name)
    peer.loopback_conf = root / "conf" / "99-loopback.conf"
    peer.loopback_conf.write_text(json.dumps(loopback_config(peer.cni_version)))
    return peer


# ---- kernel facts ------------------------------------------------------------


def ip_json(ns: str, *args: str) -> List[Dict[str, Any]]:
    done = sh(["ip", "-n", ns, "-j", *args], check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    return json.loads(done.stdout)


def link(ns: str, name: str) -> Optional[Dict[str, Any]]:
    return next((l for l in ip_json(ns, "link", "show") if l.get("ifname") == name), None)


def ipv4_addresses(ns: str, name: str) -> List[Tuple[str, int]]:
    for entry in ip_json(ns, "-4", "addr", "show", "dev", name):
        return [(a["local"], a["prefixlen"]) for a in entry.get("addr_info", [])]
    return []


def ipv4_routes(ns: str) -> List[Tuple[str, str, str]]:
    """(dst, gateway or '', dev) of the main table, sorted."""
    routes = ip_json(ns, "-4", "route", "show", "table", "main")
    return sorted((r.get("dst", ""), r.get("gateway", ""), r.get("dev", "")) for r in routes)


def is_up(entry: Optional[Dict[str, Any]]) -> bool:
    return bool(entry) and "UP" in entry.get("flags", [])


def pod_facts(pod: Pod) -> Dict[str, Any]:
    """What a pod sees of its network: the facts the differential compares."""
    dev = link(pod.ns, pod.ifname)
    return {
        "interface": bool(dev),
        "interface_up": is_up(dev),
        "mtu": dev.get("mtu") if dev else None,
        "addresses": ipv4_addresses(pod.ns, pod.ifname) if dev else [],
        "routes": ipv4_routes(pod.ns),
        "loopback_up": is_up(link(pod.ns, "lo")),
    }


def node_facts(node: CniNode, bridge: str) -> Dict[str, Any]:
    """The node side of the attachment: bridge, host veths, forwarding."""
    br = link(node.ns, bridge)
    ports = [l for l in node.links() if l.get("master") == bridge]
    return {
        "bridge": bool(br),
        "bridge_up": is_up(br),
        "bridge_mtu": br.get("mtu") if br else None,
        "bridge_addresses": ipv4_addresses(node.ns, bridge) if br else [],
        "ports": len(ports),
        "port_mtus": sorted({p.get("mtu") for p in ports}),
        "ports_up": all(is_up(p) for p in ports),
        "ip_forward": node.ip_forward(),
    }


def ping(src: Pod, address: str, deadline: int = 10) -> subprocess.CompletedProcess:
    """One echo reply within `deadline` s (iputils ping resends each second
    until then), so a first packet lost to neighbour discovery, or a ping
    starved on a heavily loaded CI machine, is not a failure; no reply is."""
    return sh(["ip", "netns", "exec", src.ns, "ping", "-n", "-c", "1", "-w", str(deadline), address], check=False)


def arp_table_fulls() -> int:
    """How often the kernel's ARP table refused a new entry. The table (and its
    gc_thresh3 limit, 1024 by default) is shared by every namespace of the
    machine, so other workloads can fill it and make neighbour resolution in
    ours fail ("neighbor table overflow!" in the kernel log)."""
    lines = Path("/proc/net/stat/arp_cache").read_text().split("\n")
    column = lines[0].split().index("table_fulls")
    return sum(int(line.split()[column], 16) for line in lines[1:] if line.strip())


def reach(src: Pod, address: str, hop_ns: str, hop_dev: str, hop_addr: str = "", deadline: int = 10) -> subprocess.CompletedProcess:
    """Pings `address` from `src`; the first hop is `hop_addr` (default: the
    address itself) on `hop_dev` in `hop_ns`. When that fails while the
    machine's ARP table overflowed, resolution could not work at all: the two
    neighbour entries of the first hop are then pinned (permanent entries are
    exempt from the limit) with the interfaces' real MACs and the ping is
    repeated, so the path the plugin built is still what is tested."""
    before = arp_table_fulls()
    done = ping(src, address, deadline)
    if done.returncode == 0 or arp_table_fulls() == before:
        return done
    src_addr = ipv4_addresses(src.ns, src.ifname)[0][0]
    pin_neighbour(src.ns, src.ifname, hop_addr or address, link(hop_ns, hop_dev)["address"])
    pin_neighbour(hop_ns, hop_dev, src_addr, link(src.ns, src.ifname)["address"])
    again = ping(src, address, deadline)
    again.stdout = f"(the machine's ARP table overflowed: neighbours pinned)\n{done.stdout}{again.stdout}"
    return again


def pin_neighbour(ns: str, dev: str, address: str, mac: str) -> None:
    sh(["ip", "-n", ns, "neigh", "replace", address, "lladdr", mac, "dev", dev, "nud", "permanent"])


def diagnostics(*namespaces: str) -> str:
    """Addresses, links, neighbours and bridge forwarding state of namespaces,
    for failure messages."""
    out = []
    for ns in namespaces:
        for cmd in (["ip", "-n", ns, "-br", "addr"], ["ip", "-n", ns, "neigh"], ["bridge", "-n", ns, "link"], ["bridge", "-n", ns, "fdb", "show", "dynamic"]):
            done = sh(cmd, check=False)
            out.append(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return "\n".join(out)


# ---- results -----------------------------------------------------------------


def result_ips(result: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(address/prefix, gateway) of a result in any spec version's format."""
    if "ips" in result:
        return [(ip["address"], ip.get("gateway", "")) for ip in result.get("ips") or []]
    return [(result[k]["ip"], result[k].get("gateway", "")) for k in ("ip4", "ip6") if result.get(k)]


def result_shape(result: Any, path: str = "") -> Any:
    """The result with values that legitimately differ between plugins (MAC
    addresses, host-side veth names, sandbox paths) replaced by placeholders,
    and an empty top-level `dns` dropped (the spec makes it optional: `{}` and
    absent both say "no DNS settings")."""
    if isinstance(result, dict):
        out = {}
        for key, value in result.items():
            if key == "dns" and not path and value == {}:
                continue
            if key == "mac":
                out[key] = "<mac>"
            elif key == "sandbox":
                out[key] = "<netns path>"
            else:
                out[key] = result_shape(value, f"{path}.{key}")
        if path.startswith(".interfaces[") and "sandbox" not in result and result.get("name") != BRIDGE:
            out["name"] = "<host veth>"
        return out
    if isinstance(result, list):
        return [result_shape(v, f"{path}[{i}]") for i, v in enumerate(result)]
    return result


def differences(a: Any, b: Any, path: str = "") -> List[str]:
    """Every place where `a` (reference) and `b` (podnet) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else key
            if key not in a:
                out.append(f"{sub}: only podnet has it ({json.dumps(b[key])})")
            elif key not in b:
                out.append(f"{sub}: only the reference has it ({json.dumps(a[key])})")
            else:
                out += differences(a[key], b[key], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if a != b:
        return [f"{path}: reference {json.dumps(a)} != podnet {json.dumps(b)}"]
    return []
