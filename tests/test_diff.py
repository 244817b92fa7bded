"""`podnet diff OLD NEW` and `podnet compile --check`'s unified diff."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from helpers import podnet, write_topology

BASE = """
network:
  podCIDR: 10.244.0.0/16
  mtu: {mtu}
  {routing}
nodes:
  - name: node1
    address: 192.168.1.2
    podCIDR: 10.244.1.0/24
  - name: node2
    address: 192.168.1.3
    podCIDR: 10.244.2.0/24
{more}"""


def topo(tmp: Path, name: str, mtu: int = 1500, routing: str = "", more: str = "") -> Path:
    return write_topology(tmp, BASE.format(mtu=mtu, routing=routing, more=more), name)


def diff(old: Path, new: Path, *args: str):
    return podnet("diff", str(old), str(new), *args)


def test_added_node_and_its_routes(tmp_path: Path):
    old = topo(tmp_path, "old.yaml")
    new = topo(tmp_path, "new.yaml", more="  - name: node3\n    address: 192.168.1.4\n")
    r = diff(old, new)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        f"podnet diff {old} -> {new}:\n"
        "  nodes added: node3 (192.168.1.4, pods 10.244.0.0/24)\n"
        "  routes added:\n"
        "    10.244.0.0/24 via 192.168.1.4 on every node but node3\n"
        "    10.244.1.0/24 via 192.168.1.2 on node3\n"
        "    10.244.2.0/24 via 192.168.1.3 on node3\n"
    )


def test_removed_node_and_network_settings(tmp_path: Path):
    old = topo(tmp_path, "old.yaml", more="  - name: node3\n    address: 192.168.1.4\n    podCIDR: 10.244.3.0/24\n")
    new = topo(tmp_path, "new.yaml", mtu=9000)
    r = diff(old, new)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        "  network: mtu 1500 -> 9000",
        "  nodes removed: node3 (192.168.1.4, pods 10.244.3.0/24)",
        "  routes removed:",
        "    10.244.1.0/24 via 192.168.1.2 on node3",
        "    10.244.2.0/24 via 192.168.1.3 on node3",
        "    10.244.3.0/24 via 192.168.1.4 on every node but node3",
    ]


def test_no_change(tmp_path: Path):
    old = topo(tmp_path, "old.yaml")
    r = diff(old, old)
    assert r.returncode == 0 and r.stdout.splitlines()[1:] == ["  no change to the network, nodes, subnets or routes"]


def test_moving_a_pinned_subnet_is_an_error_unless_allowed(tmp_path: Path):
    old = topo(tmp_path, "old.yaml")
    new = write_topology(tmp_path, (tmp_path / "old.yaml").read_text().replace("10.244.2.0/24", "10.244.7.0/24"), "new.yaml")
    r = diff(old, new)
    assert r.returncode == 1
    assert "  subnet moved: node2 10.244.2.0/24 -> 10.244.7.0/24 (pinned)" in r.stdout
    assert "    10.244.7.0/24 via 192.168.1.3 on every node but node2" in r.stdout
    assert r.stderr.splitlines() == [
        f"{new}:11:14: error: node node2: pod subnet moves from 10.244.2.0/24 to 10.244.7.0/24; its running pods keep "
        "addresses from 10.244.2.0/24 and lose their routes. Pin it back (podCIDR: 10.244.2.0/24), "
        "or pass --allow-move after draining the node"
    ]
    for flag in ("--allow-move", "--force"):
        ok = diff(old, new, flag)
        assert ok.returncode == 0 and ok.stdout == r.stdout and ok.stderr == ""


def test_a_shifted_allocation_is_caught(tmp_path: Path):
    """Unpinned nodes shift when a node is inserted before them: the silent move the command exists for."""
    old = write_topology(tmp_path, "network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: a\n    address: 192.168.1.2\n  - name: b\n    address: 192.168.1.3\n", "old.yaml")
    new = write_topology(tmp_path, "network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: z\n    address: 192.168.1.9\n  - name: a\n    address: 192.168.1.2\n  - name: b\n    address: 192.168.1.3\n", "new.yaml")
    r = diff(old, new)
    assert r.returncode == 1
    assert "  subnet moved: a 10.244.0.0/24 -> 10.244.1.0/24 (allocated, not pinned)" in r.stdout
    assert "  subnet moved: b 10.244.1.0/24 -> 10.244.2.0/24 (allocated, not pinned)" in r.stdout
    errors = r.stderr.splitlines()
    assert [e.split(": error: ")[0] for e in errors] == [f"{new}:6:5", f"{new}:8:5"]
    assert "allocated, not pinned" in errors[0] and "podnet allocate OLD --write" in errors[0]


def test_router_mode_routes_are_on_the_router(tmp_path: Path):
    routing = "routing: router\n  router: 192.168.1.1"
    old = topo(tmp_path, "old.yaml", routing=routing)
    new = topo(tmp_path, "new.yaml", routing=routing, more="  - name: node3\n    address: 192.168.1.4\n")
    r = diff(old, new)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        "  nodes added: node3 (192.168.1.4, pods 10.244.0.0/24)",
        "  routes added:",
        "    10.244.0.0/16 via 192.168.1.1 on node3",
        "    10.244.0.0/24 via 192.168.1.4 on the router",
    ]


def test_invalid_input_is_a_diagnostic(tmp_path: Path):
    old = topo(tmp_path, "old.yaml")
    bad = write_topology(tmp_path, "network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: x\n    address: nope\n", "bad.yaml")
    r = diff(old, bad)
    assert r.returncode == 1 and r.stderr.startswith(f"{bad}:5:") and "Traceback" not in r.stderr


def snapshot(out: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_compile_check_prints_a_unified_diff_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    path = topo(tmp_path, "t.yaml", more="  - name: node3\n    address: 192.168.1.4\n    podCIDR: 10.244.3.0/24\n")
    assert podnet("compile", str(path), "-o", str(out)).returncode == 0
    clean = podnet("compile", str(path), "-o", str(out), "--check")
    assert clean.returncode == 0 and clean.stdout == "" and clean.stderr == ""

    before = snapshot(out)
    topo(tmp_path, "t.yaml", mtu=9000)  # mtu changed, node3 removed
    r = podnet("compile", str(path), "-o", str(out), "--check")
    assert r.returncode == 1
    assert snapshot(out) == before  # nothing written
    conf = "nodes/node1/10-podnet.conflist"
    assert f"--- a/{conf}\n+++ b/{conf}\n" in r.stdout
    assert '\n-      "mtu": 1500,\n+      "mtu": 9000,\n' in r.stdout
    # node3's files go: their whole content shows as removed lines
    assert "--- a/nodes/node3/routes.sh\n+++ b/nodes/node3/routes.sh\n@@ -1," in r.stdout
    assert "-10.244.3.0/24 192.168.1.4 node3 1800000003\n" in r.stdout  # from routes.table
    assert f"{out}/{conf}: changed" in r.stderr.splitlines()
    assert f"{out}/nodes/node3/net-setup.sh: removed" in r.stderr.splitlines()
    assert r.stderr.splitlines()[-1].startswith("podnet compile --check: ")


def test_compile_check_shows_a_hand_edit(tmp_path: Path):
    out = tmp_path / "out"
    path = topo(tmp_path, "t.yaml")
    assert podnet("compile", str(path), "-o", str(out)).returncode == 0
    table = out / "routes.table"
    original = table.read_text()
    table.write_text(original.replace("10.244.2.0/24 192.168.1.3", "10.244.2.0/24 192.168.1.99"))
    r = podnet("compile", str(path), "-o", str(out), "--check")
    assert r.returncode == 1
    assert "-10.244.2.0/24 192.168.1.99 node2 1800000002\n+10.244.2.0/24 192.168.1.3 node2 1800000002\n" in r.stdout
    assert table.read_text() != original  # --check did not repair it


DUAL = """
network:
  podCIDR: {pods}
  routing: router
  router: [192.168.1.1, "{router6}"]
nodes:
  - name: node1
    address: [192.168.1.2, "fd00:1::2"]
    podCIDR: [10.244.1.0/24, "fd00:10:244:1::/64"]
  - name: node2
    address: [192.168.1.3, "fd00:1::3"]
"""


def dual(tmp: Path, name: str, pods: str = '[10.244.0.0/16, "fd00:10:244::/56"]', router6: str = "fd00:1::1", edit=lambda t: t) -> Path:
    return write_topology(tmp, edit(DUAL.format(pods=pods, router6=router6)), name)


def test_dual_stack_families_listed_the_other_way_round_move_nothing(tmp_path: Path):
    old = dual(tmp_path, "old.yaml")
    new = dual(tmp_path, "new.yaml", pods='["fd00:10:244::/56", 10.244.0.0/16]')
    r = diff(old, new)
    assert r.returncode == 0, r.stderr
    assert "moved" not in r.stdout and "address changed" not in r.stdout and "routes" not in r.stdout, r.stdout


def test_dual_stack_router_mode_knows_each_familys_router(tmp_path: Path):
    old = dual(tmp_path, "old.yaml")
    new = dual(tmp_path, "new.yaml", router6="fd00:1::99")
    r = diff(old, new)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        "  network: routers 192.168.1.1, fd00:1::1 -> 192.168.1.1, fd00:1::99",
        "  routes added:",
        "    fd00:10:244::/56 via fd00:1::99 on every node",
        "  routes removed:",
        "    fd00:10:244::/56 via fd00:1::1 on every node",
    ]


def test_a_moved_dual_stack_subnet_is_pinned_back_as_a_list(tmp_path: Path):
    old = dual(tmp_path, "old.yaml")
    r = diff(old, dual(tmp_path, "new.yaml", edit=lambda t: t.replace("10.244.1.0/24", "10.244.7.0/24")))
    assert r.returncode == 1
    assert "Pin it back (podCIDR: [10.244.1.0/24, fd00:10:244:1::/64])" in r.stderr, r.stderr
