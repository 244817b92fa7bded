"""render.plain_yaml: the inventory's fast emitter writes exactly what PyYAML writes,
or declines (None) and PyYAML writes it."""

import random

import pytest
import yaml

from compiler import ansible, render
from compiler.topology import load_topology
from helpers import REPO, write_topology


def pyyaml(document):
    return yaml.dump(document, Dumper=render._YamlDumper, sort_keys=False, default_flow_style=False, width=1000, explicit_start=True)


def agrees(document) -> bool:
    """True when plain_yaml wrote the document (and wrote PyYAML's bytes); False when it declined."""
    fast = render.plain_yaml(document)
    if fast is None:
        return False
    assert fast == pyyaml(document)
    return True


def inventory_of(names, addresses):
    return {"all": {"children": {"podnet": {"hosts": {n: {"ansible_host": a, "podnet_node": n} for n, a in zip(names, addresses)}}}}}


def test_the_examples_inventories_are_written_by_the_fast_emitter():
    for example in ("cluster.yaml", "dual-stack.yaml"):
        topo = load_topology(str(REPO / "examples" / example))
        for with_router in (False, True):
            assert agrees(ansible.inventory(topo, with_router))


@pytest.mark.parametrize("word", [
    "node1", "n-1", "a.b", "172.16.0.10", "fd00::1", "2001:db8:0:1::1", "a/b", "x" * 99,
])
def test_plain_words_are_written(word):
    assert agrees(inventory_of([word], [word]))


@pytest.mark.parametrize("word", [
    # read back as something else than a string: PyYAML quotes them
    "1", "123", "0x1f", "017", "1_000", "1.5", "1.0e+3", ".5", "1:20", "1:20:30.5", "190:20:30",
    "true", "True", "TRUE", "false", "yes", "No", "on", "off", "null", "Null", "NULL", "~",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", ".inf", ".NaN", "<<", "=",
    # indicators, spaces, empty: quoted
    "", " a", "a ", "a b", "-a", "--", "---", "...", "-", "a:", ":a", "::1", "a: b", "#a", "a #b", "a,b", "[a]", "{a}",
    "&a", "*a", "!a", "|a", ">a", "'a", '"a', "%a", "@a", "`a", "a\nb", "é", "a\tb", "?a",
])
def test_other_words_fall_back_and_pyyaml_writes_them(word):
    assert not agrees(inventory_of([word], ["10.0.0.1"]))
    assert not agrees(inventory_of(["node1"], [word]))


def test_long_keys_and_other_shapes_fall_back():
    for n in (100, 123, 200):  # PyYAML writes keys of 123+ characters as "? key"
        assert not agrees(inventory_of(["x" * n], ["10.0.0.1"]))
    for document in ({}, {"a": {}}, {"a": []}, {"a": 1}, {"a": True}, {"a": None}, {1: "a"}, ["a"], "a", {"a": ["b"]}):
        assert not agrees(document)


def test_random_words_and_documents_agree_with_pyyaml():
    rng = random.Random(7)
    alphabet = "abcxyzEeNnTtYy0123456789._:/-_ #,?[]{}&*!|>'\"%@`~=+<\t"

    def word():
        return "".join(rng.choice(alphabet if rng.random() < 0.05 else "abeEn019.:-/") for _ in range(rng.randint(0, 10)))

    written = 0
    for _ in range(6000):
        w = word()
        written += agrees({"k": w})
        agrees({w: "v"})
        agrees({"a": {w: {"b": w}}, "c": "d"})
    assert written > 2000  # the comparison covered words the fast emitter wrote

    def mapping(depth):
        return {word(): (word() if depth == 0 or rng.random() < 0.5 else mapping(depth - 1)) for _ in range(rng.randint(1, 3))}

    for _ in range(2000):
        agrees(mapping(3))


def test_a_compiled_inventory_is_pyyamls(tmp_path):
    topo_path = write_topology(tmp_path, """\
network:
  podCIDR: [10.244.0.0/16, fd00:10:244::/56]
nodes:
  - name: "123"
    address: [192.168.1.2, fd00::2]
  - name: node-b
    address: [192.168.1.3, fd00::3]
""")
    topo = load_topology(str(topo_path))
    document = ansible.inventory(topo, False)
    assert not agrees(document)  # "123" would be read back as a number
    assert render.render(ansible.artifacts(topo, [])[0]).decode().endswith(pyyaml(document))
