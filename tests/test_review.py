"""The review page OUT/README.md: tables, Mermaid diagram, determinism, size."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import List, Set

import pytest
from helpers import podnet, write_topology

from compiler.review import DIAGRAM_MAX_NODES

SMALL = """
network:
  podCIDR: 10.244.0.0/16
  bridge: br-pods
  {routing}
nodes:
  - name: end
    address: 192.168.5.2
    podCIDR: 10.244.9.0/24
  - name: web-1
    address: 192.168.5.3
    interface: ens4
"""

MERMAID_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
KEYWORDS = {"end", "subgraph", "graph", "flowchart", "style", "class", "classDef", "click", "linkStyle", "direction"}
SHAPE = r'(?:\[\("[^"]*"\)\]|\(\["[^"]*"\]\)|\{\{"[^"]*"\}\}|\["[^"]*"\])'
NODE_DECL = re.compile(r"^(\w+)" + SHAPE + r"$")
SUBGRAPH = re.compile(r'^subgraph (\w+)\["[^"]*"\]$')
EDGE = re.compile(r"^(\w+) (?:---|-\.-|-\. [a-z]+ \.-) (\w+)$")


def compile_page(tmp: Path, text: str, name: str = "topology.yaml") -> str:
    topo = write_topology(tmp, text, name)
    r = podnet("compile", str(topo), "-o", str(tmp / "out"))
    assert r.returncode == 0, r.stderr
    return (tmp / "out" / "README.md").read_text()


def mermaid(page: str) -> List[str]:
    m = re.search(r"^```mermaid\n(.*?)^```$", page, re.S | re.M)
    assert m, page
    return m.group(1).splitlines()


def check_mermaid(lines: List[str]) -> Set[str]:
    """A strict check of the subset of flowchart syntax podnet emits: every line is a
    header, a declaration with a quoted label, a subgraph/end, or an edge between
    declared ids; ids are plain words and never keywords. Returns the declared ids."""
    assert lines[0] == "flowchart LR"
    declared: Set[str] = set()
    depth = 0
    for raw in lines[1:]:
        line = raw.strip()
        if m := SUBGRAPH.match(line):
            depth += 1
            ids = [m.group(1)]
        elif line == "end":
            depth -= 1
            assert depth >= 0, raw
            continue
        elif m := NODE_DECL.match(line):
            ids = [m.group(1)]
        elif m := EDGE.match(line):
            assert {m.group(1), m.group(2)} <= declared, f"edge to an undeclared node: {raw}"
            continue
        else:
            raise AssertionError(f"not valid podnet Mermaid: {raw!r}")
        for i in ids:
            assert MERMAID_ID.match(i) and i not in KEYWORDS and i not in declared, raw
            declared.add(i)
    assert depth == 0
    return declared


def test_page_lists_nodes_routes_and_diagram(tmp_path: Path):
    page = compile_page(tmp_path, SMALL.format(routing="routing: static"))
    assert "| node | address | interface | pod subnet | gateway (on `br-pods`) | subnet |" in page
    assert "| end | 192.168.5.2 | eth0 | 10.244.9.0/24 | 10.244.9.1 | pinned |" in page
    assert "| web-1 | 192.168.5.3 | ens4 | 10.244.0.0/24 | 10.244.0.1 | allocated |" in page
    assert "| 10.244.9.0/24 | 192.168.5.2 | end | every node but end |" in page
    assert "| 10.244.0.0/24 | 192.168.5.3 | web-1 | every node but web-1 |" in page
    lines = mermaid(page)
    ids = check_mermaid(lines)
    assert {"n_underlay", "n_end__node", "n_web_2d_1__br"} <= ids
    assert '    n_web_2d_1__dev["ens4 192.168.5.3"]' in lines
    assert '    n_end__br["br-pods 10.244.9.1/24"]' in lines
    assert '    n_web_2d_1__pods(["pods 10.244.0.0/24"])' in lines
    assert "router" not in "\n".join(lines)


def test_router_mode_draws_the_router(tmp_path: Path):
    page = compile_page(tmp_path, SMALL.format(routing="routing: router\n  router: 192.168.5.1"))
    lines = mermaid(page)
    check_mermaid(lines)
    assert '  n_router{{"router 192.168.5.1"}}' in lines and "  n_router --- n_underlay" in lines
    assert "| 10.244.9.0/24 | 192.168.5.2 | end | the router |" in page
    assert "each node routes the pod range 10.244.0.0/16 via the router 192.168.5.1" in page


def test_dual_stack_router_mode_names_both_routers(tmp_path: Path):
    text = """
network:
  podCIDR: [10.244.0.0/16, "fd00:10:244::/56"]
  routing: router
  router: [192.168.5.1, "fd00:5::1"]
nodes:
  - name: a
    address: [192.168.5.2, "fd00:5::2"]
"""
    page = compile_page(tmp_path, text)
    lines = mermaid(page)
    check_mermaid(lines)
    assert '  n_router{{"router 192.168.5.1, fd00:5::1"}}' in lines
    assert "routing `router` via router 192.168.5.1, fd00:5::1," in page
    assert "the pod range 10.244.0.0/16 via the router 192.168.5.1, fd00:10:244::/56 via the router fd00:5::1 on" in page


def test_page_is_deterministic_and_independent_of_the_checkout(tmp_path: Path):
    pages = []
    for where in ("a", "b/c"):
        (tmp_path / where).mkdir(parents=True)
        pages.append(compile_page(tmp_path / where, SMALL.format(routing=""), name="t.yaml"))
    assert pages[0] == pages[1]
    assert "```mermaid" in pages[0]


def test_page_grows_linearly_and_the_diagram_is_capped(tmp_path: Path):
    def topology(n: int) -> str:
        nodes = "".join(f"  - name: n{i}\n    address: 192.168.{i // 250}.{i % 250 + 2}\n" for i in range(n))
        return f"network:\n  podCIDR: 10.0.0.0/8\nnodes:\n{nodes}"

    sizes = {}
    for n in (100, 200, 400):
        (tmp_path / str(n)).mkdir()
        page = compile_page(tmp_path / str(n), topology(n))
        sizes[n] = len(page)
        lines = mermaid(page)
        check_mermaid(lines)
        assert sum(1 for line in lines if line.strip().startswith("subgraph ")) == DIAGRAM_MAX_NODES
        assert f"  n_more[\"{n - DIAGRAM_MAX_NODES} more nodes\"]" in lines
        assert f"The diagram shows the first {DIAGRAM_MAX_NODES} of {n} nodes" in page
        assert len(re.findall(r"^\| n\d+ \|", page, re.M)) == n  # every node in the node table
        assert len(re.findall(r"^\| 10\.\S+ \| \S+ \| n\d+ \|", page, re.M)) == n  # and the route table
    # the same growth per node from 100 to 200 as from 200 to 400 nodes (within the
    # longer names' few bytes): linear, not quadratic
    per_node_low = (sizes[200] - sizes[100]) / 100
    per_node_high = (sizes[400] - sizes[200]) / 200
    assert per_node_high < per_node_low * 1.2, sizes


MERMAID_PACKAGES = ["mermaid@11.17.2", "jsdom@29.1.1"]


def mermaid_parser() -> Path:
    """tests/.build/mermaid with the real mermaid library, installed from the npm
    registry on first use; skips the caller where node/npm are missing or the
    install fails (the strict structural check above always runs)."""
    import shutil

    from helpers import REPO

    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed to run the real Mermaid parser")
    where = REPO / "tests" / ".build" / "mermaid"
    if not (where / "node_modules" / "mermaid").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        (where / "package.json").write_text('{"name": "podnet-mermaid-check", "private": true}\n')
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", *MERMAID_PACKAGES],
                           cwd=where, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"could not install the Mermaid parser from npm: {r.stderr.strip()[-300:]}")
    return where


def test_diagrams_parse_with_the_real_mermaid_parser(tmp_path: Path):
    where = mermaid_parser()
    pages = []
    for i, routing in enumerate(["", "routing: router\n  router: 192.168.5.1"]):
        (tmp_path / str(i)).mkdir()
        compile_page(tmp_path / str(i), SMALL.format(routing=routing))
        pages.append(tmp_path / str(i) / "out" / "README.md")
    broken = tmp_path / "broken.md"
    broken.write_text('```mermaid\nflowchart LR\n  a["x" --- \n```\n')  # proves the parser rejects
    # ES modules resolve packages from the script's own directory
    script = where / "mermaid_check.mjs"
    script.write_bytes((Path(__file__).parent / "mermaid_check.mjs").read_bytes())
    r = subprocess.run(["node", str(script), *map(str, pages), str(broken)], cwd=where, capture_output=True, text=True, timeout=300)
    lines = r.stdout.splitlines()
    assert lines[:2] == [f"{p} ok" for p in pages], r.stdout + r.stderr
    assert lines[2].startswith(f"{broken} FAIL") and r.returncode == 1, r.stdout + r.stderr
