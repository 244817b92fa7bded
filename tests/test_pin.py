"""`podnet allocate TOPOLOGY --write`: only the pinned lines are new."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import List, Tuple

from helpers import podnet

RICH = """\
# yaml-language-server: $schema=../schemas/topology.schema.json
#
# A cluster with every layout feature a person uses.
network:
  name: 'podnet'            # single-quoted
  cniVersion: "1.0.0"
  podCIDR: 10.244.0.0/16    # the pod range

  nodePrefixLength: 24
nodes:
  # the first node is pinned already
  - name: node1
    address: 192.168.1.2
    interface: eth0
    podCIDR: 10.244.1.0/24

  # no interface: the pin follows the address
  - name: node2
    address: "192.168.1.3"   # quoted on purpose

  - {name: node3, address: 192.168.1.4, interface: eth1}
  - interface: ens3          # keys in another order
    name: node4
    address: 192.168.1.5
# a closing comment
"""


def changes(before: str, after: str) -> List[Tuple[str, int, List[str], List[str]]]:
    """(opcode, line, old lines, new lines) of every difference: an insert names the
    line of `before` it follows, a replace the first line it replaces (1-based)."""
    a, b = before.splitlines(), after.splitlines()
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return [(op, i1 if op == "insert" else i1 + 1, a[i1:i2], b[j1:j2]) for op, i1, i2, j1, j2 in ops if op != "equal"]


def pin(path: Path):
    return podnet("allocate", str(path), "--write")


def test_only_the_pinned_lines_are_new(tmp_path: Path):
    path = tmp_path / "topology.yaml"
    path.write_text(RICH)
    r = pin(path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{path}: pinned 3 node subnets\n"
    assert changes(RICH, path.read_text()) == [
        ("insert", 19, [], ["    podCIDR: 10.244.0.0/24"]),  # after node2's address line (and its comment)
        ("replace", 21, ["  - {name: node3, address: 192.168.1.4, interface: eth1}"],
         ["  - {name: node3, address: 192.168.1.4, interface: eth1, podCIDR: 10.244.2.0/24}"]),
        ("insert", 22, [], ["    podCIDR: 10.244.3.0/24"]),  # right after `interface`, before `name`
    ]


def test_pinning_does_not_move_any_subnet(tmp_path: Path):
    path = tmp_path / "topology.yaml"
    path.write_text(RICH)
    before = [line.split() for line in podnet("allocate", str(path)).stdout.splitlines()]
    assert pin(path).returncode == 0
    after = [line.split() for line in podnet("allocate", str(path)).stdout.splitlines()]
    assert [how for _, _, how in before] == ["pinned", "allocated", "allocated", "allocated"]
    assert after == [[name, subnet, "pinned"] for name, subnet, _ in before]  # same subnets, now pinned
    assert podnet("validate", str(path)).returncode == 0


def test_names_another_yaml_reader_takes_for_numbers_or_booleans_are_pinned(tmp_path: Path):
    """podnet reads node names by YAML 1.2's core schema (0b101 and `on` are strings);
    the round-trip editor reads 0b101 as a number, and `on` as a boolean under a
    %YAML 1.1 directive. Each node is pinned all the same (they are matched by their
    place in the list, not by name)."""
    for directive, name in (("", "0b101"), ("%YAML 1.1\n---\n", "on")):
        path = tmp_path / "topology.yaml"
        path.write_text(f"{directive}network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: {name}\n    address: 192.168.1.2\n"
                        "  - name: node2\n    address: 192.168.1.3\n")
        r = pin(path)
        assert r.returncode == 0 and r.stdout == f"{path}: pinned 2 node subnets\n", r
        listed = podnet("allocate", str(path)).stdout.split()
        assert listed == [name, "10.244.0.0/24", "pinned", "node2", "10.244.1.0/24", "pinned"], listed


def test_second_write_changes_nothing(tmp_path: Path):
    path = tmp_path / "topology.yaml"
    path.write_text(RICH)
    assert pin(path).returncode == 0
    stat, text = path.stat(), path.read_text()
    r = pin(path)
    assert r.returncode == 0 and "pinned 0 node subnets" in r.stdout
    assert path.read_text() == text and path.stat().st_ino == stat.st_ino and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_unindented_sequence_explicit_start_and_four_space_mappings(tmp_path: Path):
    text = "---\nnetwork:\n    podCIDR: \"10.244.0.0/16\"\nnodes:\n- address: 192.168.1.2\n  name: a\n- name: b\n  address: '192.168.1.3'\n  interface: eth0\n"
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert pin(path).returncode == 0
    assert changes(text, path.read_text()) == [
        ("insert", 5, [], ["  podCIDR: 10.244.0.0/24"]),  # after `address`, before `name`
        ("insert", 9, [], ["  podCIDR: 10.244.1.0/24"]),
    ]


def test_crlf_line_endings_are_kept(tmp_path: Path):
    text = "network:\r\n  podCIDR: 10.244.0.0/16\r\nnodes:\r\n  - name: a\r\n    address: 192.168.1.2\r\n"
    path = tmp_path / "t.yaml"
    path.write_bytes(text.encode())
    assert pin(path).returncode == 0
    assert path.read_bytes() == (text + "    podCIDR: 10.244.0.0/24\r\n").encode()


def test_aligned_values_are_kept(tmp_path: Path):
    """The dumper would normalise `key:   value`; the pin is then inserted line-wise."""
    text = "network:\n  podCIDR:  10.244.0.0/16\nnodes:\n  - name:     a\n    address:  192.168.1.2 # x\n    #\n  - name: b\n    address: 192.168.1.3\n"
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert pin(path).returncode == 0
    assert changes(text, path.read_text()) == [
        ("insert", 5, [], ["    podCIDR: 10.244.0.0/24"]),  # before the comment line
        ("insert", 8, [], ["    podCIDR: 10.244.1.0/24"]),
    ]


def test_refuses_rather_than_reformat(tmp_path: Path):
    """Aligned values and a flow-style node: neither way keeps the layout, so nothing is written."""
    text = "network:\n  podCIDR:  10.244.0.0/16\nnodes:\n  - {name: a, address: 192.168.1.2}\n"
    path = tmp_path / "t.yaml"
    path.write_text(text)
    mode = os.stat(path).st_mode
    r = pin(path)
    assert r.returncode == 1
    assert r.stderr.startswith(f"{path}:2:1: error: pinning would also change line 2")
    assert "a: podCIDR: 10.244.0.0/24" in r.stderr and "Traceback" not in r.stderr
    assert path.read_text() == text and os.stat(path).st_mode == mode


def test_a_block_node_then_a_flow_node_are_both_pinned(tmp_path: Path):
    """difflib reports the block node's new line and the flow node's completed one as
    one replace of 1 line by 2: still only pins, so the file is written."""
    text = ("network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: a\n    address: 192.168.1.2\n"
            "  - {name: b, address: 192.168.1.3}\n")
    path = tmp_path / "t.yaml"
    path.write_text(text)
    r = pin(path)
    assert r.returncode == 0, r.stderr
    assert path.read_text() == ("network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: a\n    address: 192.168.1.2\n"
                                "    podCIDR: 10.244.0.0/24\n  - {name: b, address: 192.168.1.3, podCIDR: 10.244.1.0/24}\n")


def test_invalid_topology_is_reported_and_left_alone(tmp_path: Path):
    text = "network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: a\n    address: 10.244.0.9\n"
    path = tmp_path / "t.yaml"
    path.write_text(text)
    r = pin(path)
    assert r.returncode == 1 and r.stderr.startswith(f"{path}:5:")
    assert path.read_text() == text


def test_keeps_file_mode_and_follows_symlinks(tmp_path: Path):
    real = tmp_path / "real.yaml"
    real.write_text("network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: a\n    address: 192.168.1.2\n")
    os.chmod(real, 0o600)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    assert pin(link).returncode == 0
    assert link.is_symlink() and "podCIDR: 10.244.0.0/24" in real.read_text()
    assert os.stat(real).st_mode & 0o777 == 0o600


DUAL = """\
network:
  podCIDR: [10.244.0.0/16, "fd00:10:244::/56"]
nodes:
  - name: a
    address: [192.168.1.2, "fd00:1::2"]
    podCIDR: 10.244.5.0/24  # IPv4 pinned, IPv6 allocated
  - name: b
    address: [192.168.1.3, "fd00:1::3"]

  - {name: c, address: [192.168.1.4, "fd00:1::4"]}
"""


def test_dual_stack_nodes_get_one_subnet_per_family():
    """In-process: a dual-stack node pins a list, in flow style on one line; a node with
    one family pinned has its podCIDR line completed."""
    from compiler.pin import pinned_text

    todo = {
        0: ("a", ["10.244.5.0/24", "fd00:10:244::/64"]),
        1: ("b", ["10.244.0.0/24", "fd00:10:244:1::/64"]),
        2: ("c", ["10.244.1.0/24", "fd00:10:244:2::/64"]),
    }
    new = pinned_text("t.yaml", DUAL, todo)
    assert changes(DUAL, new) == [
        ("replace", 6, ["    podCIDR: 10.244.5.0/24  # IPv4 pinned, IPv6 allocated"],
         ["    podCIDR: [10.244.5.0/24, fd00:10:244::/64] # IPv4 pinned, IPv6 allocated"]),
        ("insert", 8, [], ["    podCIDR: [10.244.0.0/24, fd00:10:244:1::/64]"]),
        ("replace", 10, ["  - {name: c, address: [192.168.1.4, \"fd00:1::4\"]}"],
         ["  - {name: c, address: [192.168.1.4, \"fd00:1::4\"], podCIDR: [10.244.1.0/24, fd00:10:244:2::/64]}"]),
    ]


def test_pin_value_is_a_list_only_with_several_families():
    import ipaddress

    from compiler.model import Node
    from compiler.pin import pin_value

    one = Node("a", (ipaddress.ip_address("192.168.1.2"),), "eth0", (ipaddress.ip_network("10.244.1.0/24"),), (False,))
    two = Node("b", (ipaddress.ip_address("192.168.1.3"), ipaddress.ip_address("fd00::3")), "eth0",
               (ipaddress.ip_network("10.244.2.0/24"), ipaddress.ip_network("fd00:1::/64")), (True, False))
    assert pin_value(one) == "10.244.1.0/24"
    assert pin_value(two) == ["10.244.2.0/24", "fd00:1::/64"]
