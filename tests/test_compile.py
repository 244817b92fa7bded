"""Compiling: the artifact set, determinism, rewriting only what changed, --check, shellcheck."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, have, podnet, write_topology

EXAMPLE = "examples/cluster.yaml"

THREE_NODES = """
network:
  podCIDR: 10.244.0.0/16
nodes:
  - name: node1
    address: 192.168.1.2
    podCIDR: 10.244.1.0/24
  - name: node2
    address: 192.168.1.3
    podCIDR: 10.244.2.0/24
  - name: node3
    address: 192.168.1.4
"""


def tree(root: Path) -> dict:
    """relative path -> (bytes, mode) of every file under root but the local index
    (a cache of stat data, not an artifact)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != ".podnet-index"
    }


def compile_to(topology, out: Path, *extra: str, **kw):
    return podnet("compile", str(topology), "-o", str(out), *extra, **kw)


def test_committed_out_is_up_to_date():
    """out/ holds the compiled example; this fails when someone forgot `make run`."""
    r = podnet("compile", EXAMPLE, "-o", "out", "--check")
    assert r.returncode == 0, f"out/ is stale; run `make run` and commit:\n{r.stdout}{r.stderr}"


def test_artifact_set_and_modes(tmp_path):
    r = compile_to(EXAMPLE, tmp_path / "o")
    assert r.returncode == 0, r.stderr
    files = tree(tmp_path / "o")
    manifest = json.loads(files["manifest.json"][0])
    # every file but the manifest is listed in it, with its sha256 and mode
    assert sorted(manifest["artifacts"]) == sorted(set(files) - {"manifest.json"})
    for path, entry in manifest["artifacts"].items():
        assert entry["mode"] == f"{files[path][1]:04o}"
    for node in ("node1", "node2", "node3"):
        for name in ("net-setup.sh", "routes.sh"):
            assert files[f"nodes/{node}/{name}"][1] == 0o755
        assert files[f"nodes/{node}/10-podnet.conflist"][1] == 0o644
    assert {"README.md", "routes.table", "manifest.json"} <= set(files)


def test_conflist_is_data_of_the_node(tmp_path):
    compile_to(EXAMPLE, tmp_path, check=True)
    conf = json.loads((tmp_path / "nodes/node2/10-podnet.conflist").read_text())
    assert conf["name"] == "podnet" and conf["cniVersion"] == "1.0.0"
    (plugin,) = conf["plugins"]
    assert plugin["type"] == "podnet" and plugin["bridge"] == "cni0" and plugin["mtu"] == 1500
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1"}]]


def test_old_cni_version_gets_a_conf(tmp_path):
    topo = write_topology(tmp_path, THREE_NODES.replace("network:\n", 'network:\n  cniVersion: "0.2.0"\n'))
    compile_to(topo, tmp_path / "o", check=True)
    conf = json.loads((tmp_path / "o/nodes/node1/10-podnet.conf").read_text())
    assert conf["cniVersion"] == "0.2.0" and conf["type"] == "podnet" and "plugins" not in conf
    assert not (tmp_path / "o/nodes/node1/10-podnet.conflist").exists()


def test_deterministic_across_hash_seeds_and_directories(tmp_path):
    trees = []
    for seed in ("0", "1", "12345"):
        out = tmp_path / f"o{seed}"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-m", "compiler", "compile", EXAMPLE, "-o", str(out)], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        trees.append(tree(out))
    assert trees[0] == trees[1] == trees[2]
    # the output does not depend on where OUT is, nor on where the checkout is
    assert trees[0] == tree(REPO / "out")


def test_second_compile_rewrites_nothing(tmp_path):
    out = tmp_path / "o"
    compile_to(EXAMPLE, out, check=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    inodes = {p: p.stat().st_ino for p in before}
    r = compile_to(EXAMPLE, out, check=True)
    assert ", 0 file(s) written or removed" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert {p: p.stat().st_ino for p in before} == inodes


def test_change_touches_only_affected_files(tmp_path):
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_to(topo, out, check=True)
    before = tree(out)
    write_topology(tmp_path, THREE_NODES.replace("192.168.1.4", "192.168.1.40"))
    compile_to(topo, out, check=True)
    after = tree(out)
    changed = sorted(p for p in after if after[p] != before.get(p))
    # node3's address is only its route's next hop and a line of the review page
    assert "routes.table" in changed and "manifest.json" in changed
    assert not any(p.startswith(("nodes/node1/", "nodes/node2/")) for p in changed), changed


def test_removed_node_files_are_removed_but_foreign_files_kept(tmp_path):
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_to(topo, out, check=True)
    (out / "nodes/node3/notes.txt").write_text("mine, not podnet's")
    (out / "keep.txt").write_text("mine too")
    write_topology(tmp_path, THREE_NODES.split("  - name: node3")[0])
    compile_to(topo, out, check=True)
    files = tree(out)
    assert not any(p.startswith("nodes/node3/") and p != "nodes/node3/notes.txt" for p in files)
    assert "nodes/node3/notes.txt" in files and "keep.txt" in files
    assert "nodes/node3" not in json.loads(files["manifest.json"][0])["artifacts"]
    # without foreign files the node's directory itself goes too
    (out / "nodes/node3/notes.txt").unlink()
    write_topology(tmp_path, THREE_NODES.split("  - name: node2")[0])
    compile_to(topo, out, check=True)
    assert not (out / "nodes/node2").exists()


def test_check_names_each_differing_file_and_writes_nothing(tmp_path):
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_to(topo, out, check=True)
    (out / "nodes/node1/routes.sh").write_text("tampered\n")
    (out / "routes.table").unlink()
    before = tree(out)
    r = compile_to(topo, out, "--check")
    assert r.returncode == 1
    assert f"{out}/nodes/node1/routes.sh: changed" in r.stderr
    assert f"{out}/routes.table: new" in r.stderr
    assert "-tampered" in r.stdout  # a unified diff for CI logs
    assert tree(out) == before
    # and an empty OUT: every file is new
    r = compile_to(topo, tmp_path / "empty", "--check")
    assert r.returncode == 1 and not (tmp_path / "empty").exists()


def test_manifest_lists_topology_digest_and_version(tmp_path):
    import hashlib

    from compiler import __version__

    compile_to(EXAMPLE, tmp_path, check=True)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["podnet"] == __version__
    assert m["topology"] == {"file": EXAMPLE, "sha256": hashlib.sha256((REPO / EXAMPLE).read_bytes()).hexdigest()}
    # volatile facts live only in the manifest
    for path in m["artifacts"]:
        text = (tmp_path / path).read_text()
        assert __version__ not in text and m["topology"]["sha256"] not in text


def test_allocation_fills_lowest_free_subnets_in_file_order(tmp_path):
    topo = write_topology(tmp_path, """
        network:
          podCIDR: 10.244.0.0/22
        nodes:
          - name: a
            address: 192.168.1.2
          - name: b
            address: 192.168.1.3
            podCIDR: 10.244.0.0/24
          - name: c
            address: 192.168.1.4
          - name: d
            address: 192.168.1.5
            podCIDR: 10.244.2.0/24
        """)
    r = podnet("allocate", str(topo))
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows == [
        ["a", "10.244.1.0/24", "allocated"],
        ["b", "10.244.0.0/24", "pinned"],
        ["c", "10.244.3.0/24", "allocated"],
        ["d", "10.244.2.0/24", "pinned"],
    ]


@pytest.mark.skipif(not have("shellcheck"), reason="shellcheck is not installed (make test installs it as root)")
def test_generated_shell_passes_shellcheck(tmp_path):
    compile_to(EXAMPLE, tmp_path, check=True)
    scripts = [str(p) for p in sorted(tmp_path.rglob("*.sh"))]
    assert scripts
    r = subprocess.run(["shellcheck", "-s", "sh", "-S", "style", *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_banner_says_generated_and_how_to_regenerate(tmp_path):
    compile_to(EXAMPLE, tmp_path, check=True)
    for p in tmp_path.rglob("*.sh"):
        head = p.read_text().splitlines()[:4]
        assert head[0] == "#!/bin/sh"
        assert any(f"Generated by podnet from {EXAMPLE}" in line for line in head)
        assert any(f"podnet compile {EXAMPLE}" in line for line in head)


def test_hostile_file_name_cannot_reach_a_shell(tmp_path):
    weird = tmp_path / "x\n$(reboot)`id`;.yaml"
    shutil.copy(REPO / EXAMPLE, weird)
    r = podnet("compile", weird.name, "-o", "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "o/nodes/node1/net-setup.sh").read_text()
    banner = text.splitlines()[1]
    assert "$(" not in banner and "`" not in banner and banner.startswith("# Generated")


def test_check_reports_a_mode_change_with_both_modes(tmp_path):
    out = tmp_path / "o"
    compile_to(EXAMPLE, out, check=True)
    (out / "nodes/node1/routes.sh").chmod(0o644)
    r = compile_to(EXAMPLE, out, "--check")
    assert r.returncode == 1
    assert "mode of nodes/node1/routes.sh: 0644 -> 0755" in r.stdout
    assert f"{out}/nodes/node1/routes.sh: mode" in r.stderr
    compile_to(EXAMPLE, out, check=True)
    assert (out / "nodes/node1/routes.sh").stat().st_mode & 0o777 == 0o755


def test_dual_stack_example_compiles(tmp_path):
    """examples/dual-stack.yaml: the same artifact set as an IPv4 cluster, one range set
    and one default route per family, both families in routes.table, clean shell."""
    compile_to("examples/dual-stack.yaml", tmp_path, check=True)
    ipv4 = tmp_path / "ipv4"
    compile_to(EXAMPLE, ipv4, check=True)
    assert sorted(p for p in tree(tmp_path) if not p.startswith("ipv4/")) == sorted(tree(ipv4))
    conf = json.loads((tmp_path / "nodes/node3/10-podnet.conflist").read_text())
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"gateway": "10.244.0.1", "subnet": "10.244.0.0/24"}], [{"gateway": "fd00:10:244::1", "subnet": "fd00:10:244::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    rows = [line.split() for line in (tmp_path / "routes.table").read_text().splitlines() if line and not line.startswith("#")]
    assert rows[4:] == [["10.244.0.0/24", "192.168.1.4", "node3", "1800000000"], ["fd00:10:244::/64", "fd00:192:168:1::4", "node3", "2100000000"]]
    assert len(rows) == 6
    script = (tmp_path / "nodes/node1/net-setup.sh").read_text()
    assert "BRIDGE_ADDRS='10.244.1.1/24 fd00:10:244:1::1/64'" in script
    scripts = [str(p) for p in sorted(tmp_path.glob("nodes/*/*.sh"))]
    r = subprocess.run(["shellcheck", "-s", "sh", "-S", "style", *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("nodes", [3, 600], ids=["one process", "with the forked worker"])
def test_an_unwritable_output_is_one_line_not_a_traceback(tmp_path, nodes):
    """-o naming a regular file (or nothing): one `podnet compile: cannot write` line
    naming the path, exit 1, also when the forked worker (600 nodes) meets it."""
    sys.path.insert(0, str(REPO / "bench"))
    from gen_topology import generate

    topo = tmp_path / "t.yaml"
    topo.write_text(THREE_NODES if nodes == 3 else generate(nodes, pinned=True))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for out, why in ((str(blocker), "Not a directory"), (str(blocker / "out"), "Not a directory"), ("", "No such file or directory")):
        r = podnet("compile", str(topo), "-o", out)
        assert r.returncode == 1, r
        (line,) = r.stderr.splitlines()
        # the file that could not be written, not the busy marker's clean-up after it
        assert line == f"podnet compile: cannot write {out!r}: {why}" + (f" ({out}/README.md)" if out else ""), line
    assert blocker.read_text() == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "t.yaml"]


def readme_block(after: str, fence: str) -> str:
    """The first fenced block of README.md after the line holding `after`."""
    text = (REPO / "README.md").read_text()
    rest = text[text.index(after):]
    start = rest.index(fence + "\n") + len(fence) + 1
    return rest[start:rest.index("```\n", start)]


def test_the_readmes_topology_example_is_valid(tmp_path):
    topo = tmp_path / "readme.yaml"
    topo.write_text(readme_block("## The topology file", "```yaml"))
    r = podnet("validate", str(topo))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


def test_the_readmes_many_problems_output_is_what_validate_prints():
    shown = readme_block("$ podnet validate tests/cases/many-problems.yaml", "")
    r = podnet("validate", "tests/cases/many-problems.yaml", cwd=REPO)
    assert r.returncode == 1 and r.stdout + r.stderr == shown
