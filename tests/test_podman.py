"""A real container runtime on the podnet network: podman + runc, CNI backend.

Two containers run on the compiled podnet network of one simulated node and
reach each other. The recipe is proven on the reference bridge + host-local
with the same configuration. Nothing of podman's touches the host:
  * podman runs in the node's network namespace (`nsenter --net`), so the
    bridge and veths land there, and in a private mount namespace held open by
    a process the test starts, in which /var/lib/cni (leases, libcni's result
    cache) is a temp dir and /var/lib/containers (image blob-info cache),
    /run/runc, /dev/shm (podman's lock) and /run/netns (podman's netns mounts)
    are fresh tmpfs mounts;
  * storage (vfs) root, runroot, tmp dirs, events log: temp dirs;
  * cgroups: under a parent named after the test's namespace, removed after;
  * the image is imported from a tar holding a static busybox (no registry).
Containers are removed (and the holder process killed, by PID) pass or fail.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import have, is_root
from peers import BRIDGE, GATEWAY, NETNS_DIR, arp_table_fulls, SUBNET, compile_topology, install_podnet, install_reference, link, topology_yaml

pytestmark = [pytest.mark.netns, pytest.mark.slow]

IMAGE = "localhost/podnet-test-busybox:latest"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "ping", "ip", "cat", "true")
STATIC_BUSYBOX_DOC = Path("/usr/share/doc/busybox-static")


def podman_missing() -> str:
    if not is_root():
        return "needs root (network namespaces, podman as root)"
    if not have("podman", "runc", "nsenter", "unshare"):
        return "podman or runc not installed (tools/setup-system.sh installs them as root with apt-get)"
    if not STATIC_BUSYBOX_DOC.exists():
        return "busybox-static not installed (tools/setup-system.sh installs it)"
    return ""


def busybox_rootfs_tar(path: Path) -> None:
    """A rootfs holding only a static busybox and the applets the test uses."""
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_podman_config(root: Path, bin_dir: Path, conf_dir: Path) -> dict:
    """containers.conf and storage.conf pointing everything into `root`;
    returns the environment that makes podman use them."""
    for d in ("storage", "runroot", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "containers.conf").write_text(
        f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{conf_dir}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/tmp"
image_copy_tmp_dir = "{root}/tmp"
"""
    )
    (root / "storage.conf").write_text(
        f"""[storage]
driver = "vfs"
graphroot = "{root}/storage"
runroot = "{root}/runroot"
"""
    )
    return {
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
        "TMPDIR": str(root / "tmp"),
    }


class Sandbox:
    """A private mount namespace kept alive by a process we start (see the
    module docstring); commands run in it and in the node's network namespace."""

    def __init__(self, node_ns: str, cni_dir: Path, env: dict):
        self.node_net = str(NETNS_DIR / node_ns)
        self.cgroup_parent = f"{node_ns}-podman"  # unique to this test
        self.env = dict(os.environ, **env)
        cni_dir.mkdir(parents=True, exist_ok=True)
        (Path(env["CONTAINERS_REGISTRIES_CONF"])).write_text("")
        # Podman's and runc's host-wide state, made private: leases and libcni's
        # cache, the image blob-info cache, runc's state, podman's SHM locks and
        # its netns mounts.
        holder = (
            'mount --bind "$1" /var/lib/cni'
            " && for d in /var/lib/containers /run/runc /dev/shm /run/netns; do"
            ' mkdir -p "$d" && mount -t tmpfs -o mode=0700 podnet-test "$d" || exit 1; done'
            " && echo ready && exec sleep 3600"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", holder, "holder", str(cni_dir)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.holder.stdout.readline().strip() == "ready", "cannot set up the private mount namespace"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--net={self.node_net}", *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run("podman", *args, timeout=timeout)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def remove_cgroups(parent: str) -> None:
    """Removes the (empty) cgroups podman created under our unique parent, in
    every hierarchy, children first."""
    for top in [Path("/sys/fs/cgroup") / parent, *Path("/sys/fs/cgroup").glob(f"*/{parent}")]:
        if top.is_dir():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                d.rmdir()
            top.rmdir()


@pytest.fixture(params=["reference", "podnet"])
def podman_node(netns, tmp_path, request):
    """(node, sandbox, tmp dir) with podman configured for the podnet network
    served by the reference bridge + host-local (proving the recipe) or podnet."""
    why = podman_missing()
    if why:
        pytest.skip(why)
    out = compile_topology(tmp_path, topology_yaml("1.0.0"))
    node_ns = netns.add("node")
    install = install_reference if request.param == "reference" else install_podnet
    node = install(out, node_ns, tmp_path / request.param)
    env = write_podman_config(tmp_path / "podman", node.bin_dirs[0], node.conf_path.parent)
    box = Sandbox(node_ns, node.cni_dir, env)
    try:
        yield node, box, tmp_path
    finally:
        box.podman("rm", "--force", "--all", "--time", "0")
        box.podman("image", "rm", "--all", "--force")
        box.close()
        remove_cgroups(box.cgroup_parent)


def podman_ok(box: Sandbox, *args: str) -> str:
    done = box.podman(*args)
    assert done.returncode == 0, f"podman {' '.join(args)} failed: {done.stdout}{done.stderr}"
    return done.stdout.strip()


def container_reach(box: Sandbox, src: tuple, dst: tuple, container: str) -> subprocess.CompletedProcess:
    """Pings dst from the container; src and dst are (netns path or "" for the
    node, address, MAC). As peers.reach: when the machine's shared ARP table
    overflowed meanwhile, the two neighbour entries are pinned and it retries."""
    # busybox ping exits 0 when any of the 4 echo requests (1 s apart) is
    # answered: a first one lost to neighbour resolution is no failure.
    ping = ("exec", container, "ping", "-c", "4", "-W", "5", dst[1])
    before = arp_table_fulls()
    done = box.podman(*ping)
    if done.returncode == 0 or arp_table_fulls() == before:
        return done
    for (netns, _, _), (_, address, mac) in ((src, dst), (dst, src)):
        enter = ("nsenter", f"--net={netns}") if netns else ()
        box.run(*enter, "ip", "neigh", "replace", address, "lladdr", mac, "dev", "eth0" if netns else BRIDGE, "nud", "permanent")
    return box.podman(*ping)


def test_two_podman_containers_reach_each_other(podman_node):
    node, box, tmp_path = podman_node
    tar = tmp_path / "rootfs.tar"
    busybox_rootfs_tar(tar)
    podman_ok(box, "import", str(tar), IMAGE)
    networks = podman_ok(box, "network", "ls", "--format", "{{.Name}} {{.Driver}}")
    assert f"{node.name} {node.plugin['type']}" in networks.splitlines(), f"podman does not see the podnet network: {networks}"

    run = ("run", "--detach", "--network", node.name, "--cap-add", "NET_RAW", "--cgroup-parent", f"/{box.cgroup_parent}")
    server = podman_ok(box, *run, "--name", "pn-a", IMAGE, "sleep", "600")
    client = podman_ok(box, *run, "--name", "pn-b", IMAGE, "sleep", "600")
    addresses, attachments = {}, {}
    for name in ("pn-a", "pn-b"):
        info = json.loads(podman_ok(box, "inspect", name))[0]
        net = info["NetworkSettings"]["Networks"][node.name]
        addresses[name] = net["IPAddress"]
        attachments[name] = (info["NetworkSettings"]["SandboxKey"], net["IPAddress"], net["MacAddress"])
    attachments["gateway"] = ("", GATEWAY, link(node.ns, BRIDGE)["address"])
    assert len(set(addresses.values())) == 2, addresses
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(SUBNET) for a in addresses.values()), addresses
    assert sorted(node.leases()) == sorted(addresses.values()), node.leases()
    assert link(node.ns, BRIDGE) is not None, "the bridge must be in the node's namespace"

    for src, dst in (("pn-b", "pn-a"), ("pn-a", "pn-b"), ("pn-a", "gateway")):
        pinged = container_reach(box, attachments[src], attachments[dst], src)
        assert pinged.returncode == 0, f"{src} cannot reach {dst}: {pinged.stdout}{pinged.stderr}"

    podman_ok(box, "rm", "--force", "--time", "0", server, client)
    assert node.leases() == {}, f"podman rm left leases: {node.leases()}"
    assert [l["ifname"] for l in node.links() if l.get("master") == BRIDGE] == []
