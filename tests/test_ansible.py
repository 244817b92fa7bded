"""The generated Ansible, run by the real ansible-playbook.

Every node is a local connection installing into its own fake root directory
(podnet_root); the routes handler's command is swapped so that nothing here ever
touches the routes of the machine the tests run on (the netns test runs the real
routes.sh inside namespaces it created).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from helpers import have, podnet, sh, write_topology

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_LINT = BIN / "ansible-lint"

TOPOLOGY = """
network:
  name: podnet
  podCIDR: 10.244.0.0/16
  plugin: podnet-bridge
  mtu: {mtu}
nodes:
  - name: alpha
    address: 192.168.77.2
    podCIDR: 10.244.1.0/24
  - name: beta
    address: 192.168.77.3
    interface: ens3
  - name: gamma-1
    address: 192.168.77.4
{extra}"""

NODES = ["alpha", "beta", "gamma-1"]


def topology(tmp: Path, mtu: int = 1500, extra: str = "") -> Path:
    return write_topology(tmp, TOPOLOGY.format(mtu=mtu, extra=extra))


class Cluster:
    """A compiled OUT, one fake root per node, and a way to run the playbook on them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.out = tmp / "out"
        self.roots = tmp / "roots"
        self.handler_log = tmp / "handler.log"
        self.home = tmp / "ansible-home"

    def compile(self, text: str = "", **kw) -> None:
        path = write_topology(self.tmp, text) if text else topology(self.tmp, **kw)
        r = podnet("compile", str(path), "-o", str(self.out))
        assert r.returncode == 0, r.stderr

    def groups(self) -> Dict[str, List[str]]:
        inv = yaml.safe_load((self.out / "ansible/inventory.yml").read_text())
        return {group: list(v["hosts"]) for group, v in inv["all"]["children"].items()}

    def nodes(self) -> List[str]:
        return self.groups()["podnet"]

    def override(self, extra_vars: Dict[str, object]) -> Path:
        """Every inventory host (nodes, and the router if any) local, in its own fake root."""
        children = {
            group: {"hosts": {h: {"podnet_root": str(self.roots / h), "ansible_connection": "local", "ansible_python_interpreter": sys.executable} for h in hosts}}
            for group, hosts in self.groups().items()
        }
        path = self.tmp / "override.yml"
        path.write_text(yaml.safe_dump({"all": {"children": children}}))
        (self.tmp / "extra.json").write_text(json.dumps(extra_vars))
        return path

    def play(self, *args: str, routes_up: str = "", extra: Dict[str, object] = None) -> subprocess.CompletedProcess:
        """Runs the playbook; by default the routes handler appends NODE to handler.log."""
        extra_vars = {"podnet_become": False, **(extra or {})}
        extra_vars["podnet_routes_up_command"] = routes_up or f"sh -c 'echo {{{{ inventory_hostname }}}} >> {self.handler_log}'"
        override = self.override(extra_vars)
        env = dict(os.environ, ANSIBLE_HOME=str(self.home), ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                   ANSIBLE_LOCAL_TEMP=str(self.home / "tmp"), ANSIBLE_STDOUT_CALLBACK="default")
        cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(self.out / "ansible/inventory.yml"), "-i", str(override),
               "-e", f"@{self.tmp / 'extra.json'}", str(self.out / "ansible/playbook.yml"), *args]
        return subprocess.run(cmd, cwd=self.tmp, env=env, capture_output=True, text=True, timeout=300)

    def handled(self) -> List[str]:
        return sorted(self.handler_log.read_text().split()) if self.handler_log.exists() else []

    def installed(self, node: str) -> Dict[str, tuple]:
        """relative path -> (mode, bytes) of every file under the node's fake root."""
        root = self.roots / node
        return {
            str(p.relative_to(root)): (p.stat().st_mode & 0o777, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()
        }

    def expected(self, node: str, network: str = "podnet") -> Dict[str, tuple]:
        """What a node's root must hold, exactly: its own files, and the list of them."""
        src = self.out / "nodes" / node

        def f(p: Path) -> tuple:
            return (p.stat().st_mode & 0o777, p.read_bytes())

        files = {
            "opt/cni/bin/podnet-bridge": f(src / "net-setup.sh"),
            f"etc/cni/net.d/10-{network}.conflist": f(src / f"10-{network}.conflist"),
            "etc/podnet/routes.sh": f(src / "routes.sh"),
            "etc/podnet/routes.table": f(self.out / "routes.table"),
            **{f"opt/cni/bin/{p.name}": f(p) for p in src.glob("*.py")},
        }
        files["etc/podnet/installed.json"] = (0o644, self.installed_list(node, files))
        return files

    def installed_list(self, node: str, files) -> bytes:
        """The record the playbook keeps, in its order (by directory variable, then name)."""
        order = {"opt/cni/bin": 0, "etc/cni/net.d": 1, "etc/podnet": 2}
        paths = sorted(files, key=lambda p: (order[p.rsplit("/", 1)[0]], p))
        return json.dumps([f"{self.roots / node}/{p}" for p in paths]).encode()


def recap(result: subprocess.CompletedProcess) -> Dict[str, Dict[str, int]]:
    """host -> {ok, changed, failed, ...} from the PLAY RECAP."""
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", result.stdout, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    assert out, result.stdout + result.stderr
    return out


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    assert ANSIBLE_PLAYBOOK.exists(), "ansible-core is a test dependency: pip install -e '.[test]'"
    c = Cluster(tmp_path)
    c.compile()
    return c


def test_inventory_lists_every_node_at_its_address(cluster: Cluster):
    inv = yaml.safe_load((cluster.out / "ansible/inventory.yml").read_text())
    assert inv == {"all": {"children": {"podnet": {"hosts": {
        "alpha": {"ansible_host": "192.168.77.2", "podnet_node": "alpha"},
        "beta": {"ansible_host": "192.168.77.3", "podnet_node": "beta"},
        "gamma-1": {"ansible_host": "192.168.77.4", "podnet_node": "gamma-1"},
    }}}}}


def test_playbook_passes_syntax_check(cluster: Cluster):
    r = cluster.play("--syntax-check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_playbook_is_ansible_lint_clean(cluster: Cluster):
    if not ANSIBLE_LINT.exists():
        pytest.skip("ansible-lint is not installed in this venv")
    env = dict(os.environ, HOME=str(cluster.tmp), ANSIBLE_HOME=str(cluster.home), NO_COLOR="1", PATH=f"{BIN}:{os.environ['PATH']}")
    r = subprocess.run([str(ANSIBLE_LINT), "--offline", "--profile", "production", "ansible/playbook.yml", "ansible/inventory.yml"],
                       cwd=cluster.out, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_check_diff_and_rerun(cluster: Cluster):
    """One node lifecycle (ansible runs cost seconds each, so the steps share a test):
    --check --diff on fresh roots, a real install, a no-op re-run, a config-only
    change, then a route change."""
    fresh = cluster.play("--check", "--diff")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert not cluster.roots.exists()  # check mode wrote nothing
    assert "+++ after: " in fresh.stdout and "+10.244.1.0/24 192.168.77.2 alpha" in fresh.stdout
    assert cluster.handled() == []

    first = cluster.play()
    assert first.returncode == 0, first.stdout + first.stderr
    for node in NODES:
        assert cluster.installed(node) == cluster.expected(node), node
    # node files differ per node (own subnet), so a mix-up would show above
    assert cluster.installed("alpha") != cluster.installed("beta")
    assert cluster.handled() == sorted(NODES)  # routes applied once per node
    assert all(r["changed"] > 0 and r["failed"] == 0 for r in recap(first).values())

    second = cluster.play()
    assert second.returncode == 0, second.stdout + second.stderr
    assert {n: (r["changed"], r["failed"]) for n, r in recap(second).items()} == {n: (0, 0) for n in NODES}
    assert cluster.handled() == sorted(NODES)  # the handler did not run again

    # a config-only change: --check --diff shows it and writes nothing ...
    before = {n: cluster.installed(n) for n in NODES}
    cluster.compile(mtu=9000)
    check = cluster.play("--check", "--diff")
    assert check.returncode == 0, check.stdout + check.stderr
    assert '-      "mtu": 1500,' in check.stdout and '+      "mtu": 9000,' in check.stdout
    assert {n: cluster.installed(n) for n in NODES} == before
    # ... the real run changes one file per node and leaves the routes alone
    third = cluster.play()
    assert third.returncode == 0, third.stdout + third.stderr
    assert {n: r["changed"] for n, r in recap(third).items()} == {n: 1 for n in NODES}
    assert b'"mtu": 9000' in cluster.installed("beta")["etc/cni/net.d/10-podnet.conflist"][1]
    assert cluster.handled() == sorted(NODES)

    # a new node changes the route table: every node applies its routes again
    cluster.compile(mtu=9000, extra="  - name: delta\n    address: 192.168.77.5\n")
    fourth = cluster.play()
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert cluster.handled() == sorted(NODES * 2 + ["delta"])
    for node in NODES + ["delta"]:
        assert cluster.installed(node) == cluster.expected(node), node
    assert b"10.244.3.0/24 192.168.77.5 delta" in cluster.installed("alpha")["etc/podnet/routes.table"][1]


def test_files_of_an_earlier_run_are_removed(cluster: Cluster):
    """A renamed network renames the config: the old one must go, or the runtime may read it."""
    assert cluster.play().returncode == 0
    assert "etc/cni/net.d/10-podnet.conflist" in cluster.installed("alpha")
    (cluster.roots / "alpha/etc/cni/net.d/other.conflist").write_text("{}")  # not ours: stays
    cluster.compile(TOPOLOGY.format(mtu=1500, extra="").replace("name: podnet", "name: blue"))
    r = cluster.play()
    assert r.returncode == 0, r.stdout + r.stderr
    for node in NODES:
        files = cluster.installed(node)
        files.pop("etc/cni/net.d/other.conflist", None)
        assert files == cluster.expected(node, network="blue"), node
    assert (cluster.roots / "alpha/etc/cni/net.d/other.conflist").exists()
    again = cluster.play()
    assert {n: v["changed"] for n, v in recap(again).items()} == {n: 0 for n in NODES}


def test_serial_batches_and_directory_variables(cluster: Cluster):
    """Rolling updates one host at a time; the seed's /etc/cni/bin is one setting away."""
    r = cluster.play(extra={"podnet_serial": 1, "cni_bin_dir": "/etc/cni/bin", "cni_conf_dir": "/etc/cni/conf.d", "podnet_dir": "/usr/local/lib/podnet"})
    assert r.returncode == 0, r.stdout + r.stderr
    # one PLAY header per batch of one host, each batch running its own handler
    assert r.stdout.count("PLAY [Install pod network podnet on its nodes]") == 3
    assert r.stdout.count("RUNNING HANDLER [Apply the pod routes]") == 3
    assert sorted(cluster.installed("alpha")) == sorted(
        ["etc/cni/bin/podnet-bridge", "etc/cni/conf.d/10-podnet.conflist", "usr/local/lib/podnet/routes.sh", "usr/local/lib/podnet/routes.table",
         "usr/local/lib/podnet/installed.json"]
        + [f"etc/cni/bin/{p.name}" for p in (cluster.out / "nodes/alpha").glob("*.py")]
    )


def test_router_mode_ships_the_router_table_to_the_router(cluster: Cluster):
    cluster.compile(TOPOLOGY.format(mtu=1500, extra="").replace("  mtu: 1500\n", "  routing: router\n  router: 192.168.77.1\n"))
    inv = yaml.safe_load((cluster.out / "ansible/inventory.yml").read_text())
    assert inv["all"]["children"]["podnet_router"] == {"hosts": {"router": {"ansible_host": "192.168.77.1"}}}
    r = cluster.play()
    assert r.returncode == 0, r.stdout + r.stderr
    router = cluster.installed("router")
    assert router == {
        "etc/podnet/routes.sh": (0o755, (cluster.out / "router/routes.sh").read_bytes()),
        "etc/podnet/routes.table": (0o644, (cluster.out / "routes.table").read_bytes()),
        "etc/podnet/installed.json": (0o644, json.dumps([f"{cluster.roots}/router/etc/podnet/{f}" for f in ("routes.sh", "routes.table")]).encode()),
    }
    for node in NODES:
        assert cluster.installed(node) == cluster.expected(node), node
    assert cluster.handled() == sorted(NODES + ["router"])


@pytest.mark.slow
def test_routes_handler_applies_routes_inside_a_node_namespace(cluster: Cluster, netns):
    """The real routes.sh up, run by the handler inside one namespace per node."""
    if not have("ip"):
        pytest.skip("needs iproute2")
    spaces = {}
    for i, node in enumerate(NODES):
        ns = spaces[node] = netns.add(f"an{i}")
        dev = "ens3" if node == "beta" else "eth0"  # the topology's underlay interfaces
        sh(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", "under1"])
        sh(["ip", "-n", ns, "addr", "add", f"192.168.77.{2 + i}/24", "dev", dev])
        sh(["ip", "-n", ns, "link", "set", "under1", "up"])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
    # podnet_node -> namespace, looked up by the handler's command
    cmd = "ip netns exec {{ (" + json.dumps(dict(spaces)) + ")[podnet_node] }} {{ _podnet_etc_dir }}/routes.sh up"
    r = cluster.play(routes_up=cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    subnets = {"alpha": "10.244.1.0/24", "beta": "10.244.0.0/24", "gamma-1": "10.244.2.0/24"}
    addresses = {"alpha": "192.168.77.2", "beta": "192.168.77.3", "gamma-1": "192.168.77.4"}
    for node, ns in spaces.items():
        routes = sh(["ip", "-n", ns, "-4", "route", "show"]).stdout
        want = {f"{subnets[o]} via {addresses[o]}" for o in NODES if o != node}
        got = {" ".join(line.split()[:3]) for line in routes.splitlines() if line.startswith("10.244.")}
        assert got == want, (node, routes)



def test_file_list_follows_the_plan(tmp_path: Path):
    """A node-side file added to the plan ships without touching the playbook code:
    helpers (*.py) beside the plugin, anything else beside routes.sh."""
    from compiler import ansible
    from compiler.plan import Artifact, plan
    from compiler.topology import load_topology

    topo = load_topology(str(topology(tmp_path)))
    planned = [a for a in plan(topo) if not a.path.startswith("ansible/")]
    extra = [Artifact(f"nodes/{n}/{f}", mode, "template") for n in NODES for f, mode in (("helper.py", 0o755), ("notes.txt", 0o600))]
    book = next(a for a in ansible.artifacts(topo, planned + extra) if a.path == ansible.PLAYBOOK).data["document"]
    copies = [item for task in book[0]["tasks"] if "ansible.builtin.copy" in task and "loop" in task for item in task["loop"]]
    by_dest = {item["dest"]: item for item in copies}
    assert by_dest["{{ _podnet_bin_dir }}/helper.py"] == {
        "src": "{{ playbook_dir }}/../nodes/{{ podnet_node }}/helper.py", "dest": "{{ _podnet_bin_dir }}/helper.py", "mode": "0755"}
    assert by_dest["{{ _podnet_etc_dir }}/notes.txt"]["mode"] == "0600"
    assert by_dest["{{ _podnet_bin_dir }}/podnet-bridge"]["src"].endswith("/net-setup.sh")
    assert "{{ _podnet_etc_dir }}/notes.txt" in book[0]["vars"]["_podnet_installed"]
