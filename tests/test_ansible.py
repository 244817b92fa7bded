"""The generated Ansible, run by the real ansible-playbook.

Every node is a local connection installing into its own fake root directory
(podnet_root); the routes handler's command is swapped so that nothing here ever
touches the routes of the machine the tests run on: it logs the node's name and,
as root, runs the node's real routes.sh inside a namespace made for that node.

An ansible-playbook run costs seconds, so one module-scoped lifecycle runs the
playbook six times on one cluster (fresh --check --diff, install, a config-only
change checked then applied, a renamed network plus a new node rolled out with
serial, a no-op re-run) and records what each run left behind; the tests below
assert on those records. One node (MOVED) keeps the seed's directory layout
through host variables, so every run also proves the directory variables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest
import yaml

from helpers import Namespaces, have, is_root, podnet, sh, write_topology

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_LINT = BIN / "ansible-lint"

TOPOLOGY = """
network:
  name: {network}
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
DELTA = "  - name: delta\n    address: 192.168.77.5\n"  # a node added later
ADDRESSES = {"alpha": "192.168.77.2", "beta": "192.168.77.3", "gamma-1": "192.168.77.4", "delta": "192.168.77.5"}
SUBNETS = {"alpha": "10.244.1.0/24", "beta": "10.244.0.0/24", "gamma-1": "10.244.2.0/24", "delta": "10.244.3.0/24"}
UNDERLAY = {"beta": "ens3"}  # the topology's underlay interfaces; eth0 otherwise

# Destination directories (relative to a node's root), by the playbook's key, in its order.
DEFAULT_DIRS = {"bin": "opt/cni/bin", "conf": "etc/cni/net.d", "etc": "etc/podnet"}
SEED_DIRS = {"bin": "etc/cni/bin", "conf": "etc/cni/conf.d", "etc": "usr/local/lib/podnet"}
MOVED = "gamma-1"  # in the lifecycle, this node's directories are host variables (the seed's layout)
MOVED_VARS = {"cni_bin_dir": "/etc/cni/bin", "cni_conf_dir": "/etc/cni/conf.d", "podnet_dir": "/usr/local/lib/podnet"}

# Start-up and per-module costs cut for tests only; the playbook already skips fact gathering.
FAST_ANSIBLE = {
    "ANSIBLE_PIPELINING": "1",  # the module goes over stdin: no remote temp dir per task
    "ANSIBLE_MODULE_COMPRESSION": "ZIP_STORED",
    "ANSIBLE_FORKS": "8",  # every node of a batch at once
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
    "ANSIBLE_INVENTORY_ENABLED": "yaml",
}


def topology(tmp: Path, mtu: int = 1500, extra: str = "", network: str = "podnet") -> Path:
    return write_topology(tmp, TOPOLOGY.format(mtu=mtu, extra=extra, network=network))


class Cluster:
    """A compiled OUT, one fake root per node, and a way to run the playbook on them."""

    def __init__(self, tmp: Path, host_vars: Optional[Dict[str, Dict[str, str]]] = None):
        self.tmp = tmp
        self.out = tmp / "out"
        self.roots = tmp / "roots"
        self.handler_log = tmp / "handler.log"
        self.home = tmp / "ansible-home"
        self.host_vars = host_vars or {}

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
        def host(h: str) -> Dict[str, str]:
            return {"podnet_root": str(self.roots / h), "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                    **self.host_vars.get(h, {})}

        children = {group: {"hosts": {h: host(h) for h in hosts}} for group, hosts in self.groups().items()}
        path = self.tmp / "override.yml"
        path.write_text(yaml.safe_dump({"all": {"children": children}}))
        (self.tmp / "extra.json").write_text(json.dumps(extra_vars))
        return path

    def play(self, *args: str, routes_up: str = "", extra: Dict[str, object] = None) -> subprocess.CompletedProcess:
        """Runs the playbook; by default the routes handler appends NODE to handler.log."""
        extra_vars = {"podnet_become": False, **(extra or {})}
        extra_vars["podnet_routes_up_command"] = routes_up or f"sh -c 'echo {{{{ inventory_hostname }}}} >> {self.handler_log}'"
        override = self.override(extra_vars)
        env = dict(os.environ, ANSIBLE_HOME=str(self.home), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(self.home / "tmp"),
                   ANSIBLE_STDOUT_CALLBACK="default", **FAST_ANSIBLE)
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

    def dirs(self, node: str) -> Dict[str, str]:
        return SEED_DIRS if self.host_vars.get(node) == MOVED_VARS else DEFAULT_DIRS

    def expected(self, node: str, network: str = "podnet") -> Dict[str, tuple]:
        """What a node's root must hold, exactly: its own files, and the list of them."""
        src = self.out / "nodes" / node
        dirs = self.dirs(node)

        def f(p: Path) -> tuple:
            return (p.stat().st_mode & 0o777, p.read_bytes())

        by_key = {
            ("bin", "podnet-bridge"): f(src / "net-setup.sh"),
            ("conf", f"10-{network}.conflist"): f(src / f"10-{network}.conflist"),
            ("etc", "routes.sh"): f(src / "routes.sh"),
            ("etc", "routes.table"): f(self.out / "routes.table"),
            **{("bin", p.name): f(p) for p in src.glob("*.py")},
        }
        # the record the playbook keeps, in its order (by directory key, then name)
        record = json.dumps([f"{self.roots / node}/{dirs[k]}/{name}" for k, name in sorted(by_key)]).encode()
        by_key[("etc", "installed.json")] = (0o644, record)
        by_key[("etc", "routes.applied")] = (0o644, applied(by_key[("etc", "routes.sh")][1], by_key[("etc", "routes.table")][1]))
        return {f"{dirs[k]}/{name}": v for (k, name), v in by_key.items()}


def applied(*contents: bytes) -> bytes:
    """The record of the routes last applied: the SHA-1s of routes.sh and the table."""
    return " ".join(hashlib.sha1(c).hexdigest() for c in contents).encode()


def recap(result: subprocess.CompletedProcess) -> Dict[str, Dict[str, int]]:
    """host -> {ok, changed, failed, ...} from the PLAY RECAP."""
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", result.stdout, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    assert out, result.stdout + result.stderr
    return out


def ok(result: subprocess.CompletedProcess) -> str:
    """The run's stdout, once it is known to have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    assert ANSIBLE_PLAYBOOK.exists(), "ansible-core is a test dependency: pip install -e '.[test]'"
    c = Cluster(tmp_path)
    c.compile()
    return c


class Step(NamedTuple):
    """What one playbook run of the lifecycle left behind."""
    result: subprocess.CompletedProcess
    roots_exist: bool
    files: Dict[str, Dict[str, tuple]]  # node -> installed()
    expected: Dict[str, Dict[str, tuple]]  # node -> expected(), for the OUT of that run
    handled: List[str]  # the handler log so far
    routes: Optional[Dict[str, set]]  # node -> "SUBNET via HOP" in its namespace (as root only)


def node_namespaces(spaces: Namespaces, nodes: List[str]) -> Dict[str, str]:
    """One namespace per node, its underlay interface up at the node's address."""
    made = {}
    for i, node in enumerate(nodes):
        ns = made[node] = spaces.add(f"an{i}")
        dev = UNDERLAY.get(node, "eth0")
        sh(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", "under1"])
        sh(["ip", "-n", ns, "addr", "add", f"{ADDRESSES[node]}/24", "dev", dev])
        sh(["ip", "-n", ns, "link", "set", "under1", "up"])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
    return made


def pod_routes(ns: str) -> set:
    """"SUBNET via HOP" per pod route (routes.sh's nexthop id, `nhid N`, left out)."""
    routes = sh(["ip", "-n", ns, "-4", "route", "show"]).stdout
    return {" ".join([f for f in line.split() if f != "nhid" and not f.isdigit()][:3]) for line in routes.splitlines() if line.startswith("10.244.")}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory) -> Dict[str, Step]:
    """Runs the playbook through a cluster's life, once for the whole module."""
    assert ANSIBLE_PLAYBOOK.exists(), "ansible-core is a test dependency: pip install -e '.[test]'"
    c = Cluster(tmp_path_factory.mktemp("lifecycle"), host_vars={MOVED: MOVED_VARS})
    spaces = Namespaces() if is_root() and have("ip") else None
    steps: Dict[str, Step] = {}
    try:
        routes_up = ""
        if spaces:  # the handler logs, then runs the real routes.sh inside the node's namespace
            names = node_namespaces(spaces, NODES + ["delta"])
            routes_up = (f"sh -c 'echo {{{{ inventory_hostname }}}} >> {c.handler_log} && exec ip netns exec "
                         f"{{{{ ({json.dumps(names)})[podnet_node] }}}} {{{{ _podnet_etc_dir }}}}/routes.sh up'")

        def step(name: str, *args: str, network: str = "podnet", **kw) -> None:
            r = c.play(*args, routes_up=routes_up, **kw)
            nodes = c.nodes()
            steps[name] = Step(r, c.roots.exists(), {n: c.installed(n) for n in nodes}, {n: c.expected(n, network) for n in nodes},
                               c.handled(), {n: pod_routes(names[n]) for n in nodes} if spaces else None)

        c.compile()
        step("fresh check", "--check", "--diff")
        step("install")
        c.compile(mtu=9000)
        step("config check", "--check", "--diff")
        step("config")
        (c.roots / "alpha" / DEFAULT_DIRS["conf"] / "other.conflist").write_text("{}")  # not ours: must stay
        c.compile(mtu=9000, network="blue", extra=DELTA)  # renames the config; a new route on every node
        step("rename and add", network="blue", extra={"podnet_serial": 2})
        step("rerun", network="blue")
        yield steps
    finally:
        if spaces:
            spaces.cleanup()


def test_check_diff_on_fresh_nodes_writes_nothing(lifecycle: Dict[str, Step]):
    fresh = lifecycle["fresh check"]
    out = ok(fresh.result)
    assert not fresh.roots_exist  # check mode wrote nothing, not even a directory
    assert "+++ after: " in out and "+10.244.1.0/24 192.168.77.2 alpha" in out
    assert fresh.handled == []


def test_install_gives_each_node_exactly_its_own_files(lifecycle: Dict[str, Step]):
    first = lifecycle["install"]
    ok(first.result)
    assert sorted(first.files) == NODES
    for node in NODES:
        assert first.files[node] == first.expected[node], node
    # node files differ per node (own subnet), so a mix-up would show above
    assert first.files["alpha"] != first.files["beta"]
    assert first.handled == sorted(NODES)  # routes applied once per node
    assert all(r["changed"] > 0 and r["failed"] == 0 for r in recap(first.result).values())


def test_directory_variables_move_every_file(lifecycle: Dict[str, Step]):
    """The seed's /etc/cni/bin is one setting away (here host variables of MOVED)."""
    files = lifecycle["install"].files
    assert sorted(files[MOVED]) == sorted(
        ["etc/cni/bin/podnet-bridge", "etc/cni/conf.d/10-podnet.conflist", "usr/local/lib/podnet/routes.sh",
         "usr/local/lib/podnet/routes.table", "usr/local/lib/podnet/installed.json", "usr/local/lib/podnet/routes.applied"]
        + [f"etc/cni/bin/{Path(p).name}" for p in files["alpha"] if p.endswith(".py")]
    )
    assert "opt/cni/bin/podnet-bridge" in files["alpha"]  # the others keep the defaults


def test_config_only_change_is_checked_then_applied_without_routes(lifecycle: Dict[str, Step]):
    installed, check, third = lifecycle["install"], lifecycle["config check"], lifecycle["config"]
    out = ok(check.result)
    assert '-      "mtu": 1500,' in out and '+      "mtu": 9000,' in out
    assert check.files == installed.files  # --check wrote nothing
    ok(third.result)
    # one file per node, and nothing else: every other task is idempotent
    assert {n: r["changed"] for n, r in recap(third.result).items()} == {n: 1 for n in NODES}
    assert b'"mtu": 9000' in third.files["beta"]["etc/cni/net.d/10-podnet.conflist"][1]
    for node in NODES:
        assert third.files[node] == third.expected[node], node
    assert third.handled == sorted(NODES)  # routes.table did not change: no handler


def test_rolling_update_of_a_renamed_network_and_a_new_node(lifecycle: Dict[str, Step]):
    """serial 2 over four nodes is two batches, each running its own handler; the new
    route table reaches every node; the renamed network's old config is removed (the
    runtime would still read it), a file that is not ours stays."""
    step = lifecycle["rename and add"]
    out = ok(step.result)
    assert out.count("PLAY [Install pod network blue on its nodes]") == 2
    assert out.count("RUNNING HANDLER [Apply the pod routes]") == 2
    assert all(r["failed"] == 0 for r in recap(step.result).values())
    assert step.handled == sorted(NODES * 2 + ["delta"])
    for node in NODES + ["delta"]:
        files = dict(step.files[node])
        if node == "alpha":
            assert files.pop("etc/cni/net.d/other.conflist") == (0o644, b"{}")
        assert files == step.expected[node], node
    assert b"10.244.3.0/24 192.168.77.5 delta" in step.files["alpha"]["etc/podnet/routes.table"][1]


def test_rerun_changes_nothing(lifecycle: Dict[str, Step]):
    before, again = lifecycle["rename and add"], lifecycle["rerun"]
    ok(again.result)
    assert {n: (r["changed"], r["failed"]) for n, r in recap(again.result).items()} == {n: (0, 0) for n in NODES + ["delta"]}
    assert again.handled == before.handled  # the handler did not run again
    assert again.files == before.files


@pytest.mark.slow
def test_routes_handler_applies_routes_inside_a_node_namespace(lifecycle: Dict[str, Step]):
    """The real routes.sh up, run by the handler inside one namespace per node: after the
    install every node routes to the others; after delta joins, to delta as well."""
    if lifecycle["install"].routes is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    for name, nodes in (("install", NODES), ("rename and add", NODES + ["delta"])):
        ok(lifecycle[name].result)
        routes = lifecycle[name].routes
        assert sorted(routes) == sorted(nodes)
        for node in nodes:
            assert routes[node] == {f"{SUBNETS[o]} via {ADDRESSES[o]}" for o in nodes if o != node}, (name, node)


def test_inventory_lists_every_node_at_its_address(cluster: Cluster):
    inv = yaml.safe_load((cluster.out / "ansible/inventory.yml").read_text())
    assert inv == {"all": {"children": {"podnet": {"hosts": {
        "alpha": {"ansible_host": "192.168.77.2", "podnet_node": "alpha"},
        "beta": {"ansible_host": "192.168.77.3", "podnet_node": "beta"},
        "gamma-1": {"ansible_host": "192.168.77.4", "podnet_node": "gamma-1"},
    }}}}}


def test_routes_left_unapplied_are_applied_by_the_next_run(cluster: Cluster):
    """A run whose routes handler fails (or that ends before its handlers) installs the
    files without applying them; the next run finds nothing changed, yet applies them,
    as the record of the routes applied (routes.applied) is not what is installed."""
    cluster.compile()
    failed = cluster.play(routes_up="false")
    assert failed.returncode != 0 and "RUNNING HANDLER [Apply the pod routes]" in failed.stdout, failed.stdout
    assert cluster.handled() == []
    for node in NODES:
        assert "etc/podnet/routes.applied" not in cluster.installed(node)
    again = ok(cluster.play())
    assert cluster.handled() == sorted(NODES)
    for node in NODES:
        assert cluster.installed(node) == cluster.expected(node), node
    third = cluster.play()
    ok(third)
    assert cluster.handled() == sorted(NODES)  # applied once: nothing to do now
    assert {n: r["changed"] for n, r in recap(third).items()} == {n: 0 for n in NODES}


def test_playbook_passes_syntax_check(cluster: Cluster):
    ok(cluster.play("--syntax-check"))


def test_playbook_is_ansible_lint_clean(cluster: Cluster):
    if not ANSIBLE_LINT.exists():
        pytest.skip("ansible-lint is not installed in this venv")
    env = dict(os.environ, HOME=str(cluster.tmp), ANSIBLE_HOME=str(cluster.home), NO_COLOR="1", PATH=f"{BIN}:{os.environ['PATH']}")
    r = subprocess.run([str(ANSIBLE_LINT), "--offline", "--profile", "production", "ansible/playbook.yml", "ansible/inventory.yml"],
                       cwd=cluster.out, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_router_mode_ships_the_router_table_to_the_router(cluster: Cluster):
    cluster.compile(TOPOLOGY.format(mtu=1500, extra="", network="podnet").replace("  mtu: 1500\n", "  routing: router\n  router: 192.168.77.1\n"))
    inv = yaml.safe_load((cluster.out / "ansible/inventory.yml").read_text())
    assert inv["all"]["children"]["podnet_router"] == {"hosts": {"router": {"ansible_host": "192.168.77.1"}}}
    ok(cluster.play())
    router = cluster.installed("router")
    assert router == {
        "etc/podnet/routes.sh": (0o755, (cluster.out / "router/routes.sh").read_bytes()),
        "etc/podnet/routes.table": (0o644, (cluster.out / "routes.table").read_bytes()),
        "etc/podnet/installed.json": (0o644, json.dumps([f"{cluster.roots}/router/etc/podnet/{f}" for f in ("routes.sh", "routes.table")]).encode()),
        "etc/podnet/routes.applied": (0o644, applied((cluster.out / "router/routes.sh").read_bytes(), (cluster.out / "routes.table").read_bytes())),
    }
    for node in NODES:
        assert cluster.installed(node) == cluster.expected(node), node
    assert cluster.handled() == sorted(NODES + ["router"])


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
