"""A simulated node for the plugin tests: podnet's compiled plugin run as the CNI
spec describes (environment + config on stdin), under a chosen shell, inside a
network namespace the test created, with a private /var/lib/cni.

Everything the plugin could create is read back from the kernel and the store, so
tests assert facts: links in the node and in each pod, addresses, routes, leases,
NAT rules, files.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from helpers import node_sh, podnet, sh, write_topology

SHELLS = ("dash", "busybox ash")
VERSIONS = ("0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
NETNS_DIR = "/run/netns"
SUBNET = "10.244.1.0/24"
GATEWAY = "10.244.1.1"
BRIDGE = "pnbr0"
MTU = 1400


def topology(version: str = "1.0.0", masquerade: bool = True, node_prefix: int = 24, subnet: str = SUBNET) -> str:
    return textwrap.dedent(
        f"""
        network:
          name: podnet
          cniVersion: "{version}"
          podCIDR: 10.244.0.0/16
          nodePrefixLength: {node_prefix}
          bridge: {BRIDGE}
          mtu: {MTU}
          masquerade: {"true" if masquerade else "false"}
        nodes:
          - name: node1
            address: 192.168.1.2
            podCIDR: {subnet}
          - name: node2
            address: 192.168.1.3
        """
    )


@dataclass
class Pod:
    ns: str
    cid: str = field(default_factory=lambda: "c" + uuid.uuid4().hex)
    ifname: str = "eth0"

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.ns}"


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"rc={self.rc}\nstdout={self.stdout}\nstderr={self.stderr}"


class PluginNode:
    """One node: its namespace, compiled plugin and config, private /var/lib/cni."""

    def __init__(self, netns, tmp_path: Path, version: str = "1.0.0", shell: str = "dash", masquerade: bool = True,
                 topo_text: Optional[str] = None, compiler=podnet, **topo: Any):
        self.netns = netns
        self.tmp = tmp_path
        self.shell = shell
        topo_file = write_topology(tmp_path, topo_text or topology(version, masquerade, **topo))
        out = tmp_path / "out"
        done = compiler("compile", str(topo_file), "-o", str(out))
        assert done.returncode == 0, done.stderr
        self.dir = out / "nodes" / "node1"
        self.plugin = self.dir / "net-setup.sh"
        (conf_file,) = [p for p in self.dir.iterdir() if p.suffix in (".conf", ".conflist")]
        conf = json.loads(conf_file.read_text())
        plugin = conf["plugins"][0] if "plugins" in conf else conf
        # What a runtime passes one plugin: the list's name and cniVersion injected.
        self.conf: Dict[str, Any] = {**plugin, "name": conf["name"], "cniVersion": conf["cniVersion"]}
        self.version = version
        self.ns = netns.add("node")
        self.cni_dir = tmp_path / "var-lib-cni"
        self.cni_dir.mkdir()

    # ---- running the plugin ------------------------------------------------------

    def new_pod(self, suffix: str = "") -> Pod:
        name = self.netns.add(f"pod{suffix or uuid.uuid4().hex[:6]}")
        return Pod(name)

    def run(self, script: str, env: Optional[Dict[str, Optional[str]]] = None, stdin: Optional[str] = None) -> Run:
        """Runs `script` in the node (PLUGIN and SHELL set); env values of None are unset."""
        env = dict(env or {})
        unset = [k for k, v in env.items() if v is None]
        full = {k: v for k, v in env.items() if v is not None}
        full.update(PLUGIN=str(self.plugin), PLUGIN_SHELL=self.shell)
        prefix = f"unset {' '.join(unset)}; " if unset else ""
        done = node_sh(self.ns, self.cni_dir, prefix + script, env=full, input=stdin)
        return Run(done.returncode, done.stdout, done.stderr)

    def cni(self, command: str, pod: Optional[Pod] = None, conf: Optional[Dict[str, Any]] = None, stdin: Optional[str] = None,
            env: Optional[Dict[str, Optional[str]]] = None, script: str = 'exec $PLUGIN_SHELL "$PLUGIN"') -> Run:
        """The plugin as a runtime calls it: CNI_* environment, config on stdin."""
        full: Dict[str, Optional[str]] = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": None}
        if pod:
            full.update(CNI_CONTAINERID=pod.cid, CNI_NETNS=pod.path, CNI_IFNAME=pod.ifname)
        else:
            full.update(CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None)
        full.update(env or {})
        if stdin is None:
            stdin = json.dumps(self.conf if conf is None else conf)
        return self.run(script, env=full, stdin=stdin)

    def with_prev(self, result: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
        return {**self.conf, "prevResult": result, **extra}

    def direct(self, *args: str) -> Run:
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
        return self.run(f'exec $PLUGIN_SHELL "$PLUGIN" {quoted}')

    # ---- state read back -------------------------------------------------------------

    def links(self, ns: Optional[str] = None) -> List[Dict[str, Any]]:
        done = sh(["ip", "-n", ns or self.ns, "-j", "-d", "link", "show"], check=False)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []

    def link_names(self, ns: Optional[str] = None) -> List[str]:
        return sorted(l["ifname"] for l in self.links(ns))

    def veths(self) -> List[str]:
        return sorted(l["ifname"] for l in self.links() if l.get("linkinfo", {}).get("info_kind") == "veth")

    def store(self) -> Path:
        return self.cni_dir / "networks" / "podnet"

    def leases(self) -> Dict[str, str]:
        if not self.store().is_dir():
            return {}
        return {p.name: " ".join(p.read_text().split()) for p in sorted(self.store().iterdir())
                if p.name != "lock" and not p.name.startswith(("last_reserved_ip", "."))}

    def files(self) -> List[str]:
        return sorted(str(p.relative_to(self.cni_dir)) for p in self.cni_dir.rglob("*"))

    def nat_rules(self) -> List[str]:
        done = sh(["ip", "netns", "exec", self.ns, "iptables", "-w", "-t", "nat", "-S", "POSTROUTING"], check=False)
        return [l for l in done.stdout.splitlines() if l.startswith("-A")]

    def pod_addresses(self, pod: Pod) -> List[str]:
        done = sh(["ip", "-n", pod.ns, "-j", "-4", "addr", "show", "dev", pod.ifname], check=False)
        if done.returncode != 0 or not done.stdout.strip():
            return []
        return [f"{a['local']}/{a['prefixlen']}" for e in json.loads(done.stdout) for a in e.get("addr_info", [])]

    def pod_routes(self, pod: Pod) -> List[str]:
        return sh(["ip", "-n", pod.ns, "route", "show"], check=False).stdout.splitlines()

    def snapshot(self, *pods: Pod) -> Dict[str, Any]:
        """Everything an ADD could have created: links (node and pods), leases,
        files under /var/lib/cni, NAT rules."""
        return {
            "node links": self.link_names(),
            "pod links": {p.ns: self.link_names(p.ns) for p in pods},
            "pod addresses": {p.ns: sh(["ip", "-n", p.ns, "-o", "addr"], check=False).stdout.count(" inet ") for p in pods},
            "pod routes": {p.ns: sorted(self.pod_routes(p)) for p in pods},
            "files": self.files(),
            "nat": self.nat_rules(),
        }


def ping(pod: Pod, address: str) -> bool:
    """One echo reply within 10 s (ping keeps asking once a second: on this shared,
    loaded CI machine a pod's first ARP exchange is occasionally lost)."""
    return sh(["ip", "netns", "exec", pod.ns, "ping", "-n", "-q", "-c", "1", "-w", "10", address], check=False).returncode == 0



def path_without(tmp: Path, *names: str) -> str:
    """A PATH with everything of the current PATH but `names`: a directory of
    symlinks (the node's /usr/bin/python3, not a pyenv shim, when python3 stays)."""
    import os

    bindir = tmp / f"path-without-{'-'.join(names)}"
    bindir.mkdir()
    if "python3" not in names and os.path.exists("/usr/bin/python3"):
        (bindir / "python3").symlink_to("/usr/bin/python3")
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name not in names and not (bindir / name).exists() and os.access(target, os.X_OK):
                (bindir / name).symlink_to(target)
    return str(bindir)
