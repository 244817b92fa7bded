"""Unit tests of single stages: loader positions and limits, schema/model agreement,
allocation, the quoting filter."""

import ipaddress
import json
import re

import pytest

from compiler import load, schema
from compiler.allocate import PoolExhausted, allocate
from compiler.diagnostics import InputError
from compiler.model import DEFAULTS, Pool
from compiler.render import ShellWord, _shell_finalize, sh_quote
from helpers import REPO


def test_loader_records_positions_of_keys_and_values():
    doc = load.load_bytes(b"network:\n  podCIDR: 10.244.0.0/16\nnodes:\n  - name: a\n    address: 1.2.3.4\n", "t.yaml")
    assert doc.positions[("network", "podCIDR")] == (2, 12)
    assert doc.key_positions[("network", "podCIDR")] == (2, 3)
    assert doc.positions[("nodes", 0, "address")] == (5, 14)
    assert doc.at(("nodes", 0, "missing"), "m").line == 4  # falls back to the nearest ancestor


def test_loader_uses_yaml_1_2_scalars():
    doc = load.load_bytes(b"a: yes\nb: on\nc: 010\nd: 0x10\ne: ~\nf: 1_000\ng: 0o17\nh: !!str 12\ni: '7'\nj: 1.5\nk: True\nl: 12:30\n", "t.yaml")
    assert doc.data == {"a": "yes", "b": "on", "c": 10, "d": 16, "e": None, "f": "1_000", "g": 15, "h": "12", "i": "7", "j": 1.5, "k": True, "l": "12:30"}


def test_loader_refuses_huge_files_before_parsing():
    with pytest.raises(InputError) as e:
        load.load_bytes(b"#" * (load.MAX_BYTES + 1), "big.yaml")
    assert "larger than 16 MiB" in str(e.value)


def test_loader_refuses_deep_nesting_without_recursion_error():
    with pytest.raises(InputError) as e:
        load.load_bytes(b"a: " + b"[" * 20000 + b"]" * 20000, "deep.yaml")
    assert "nesting" in str(e.value)


def test_schema_defaults_agree_with_the_model():
    defs = schema.schema()["$defs"]
    for key, prop in defs["network"]["properties"].items():
        if "default" in prop:
            assert DEFAULTS[key] == prop["default"], key
    assert defs["node"]["properties"]["interface"]["default"] == DEFAULTS["interface"]
    # the bridge's default lives in its $ref'd definition's sibling
    assert defs["network"]["properties"]["bridge"]["default"] == DEFAULTS["bridge"]


def test_allocate_keeps_pinned_and_fills_lowest_free():
    pool = Pool(ipaddress.ip_network("10.0.0.0/22"), 24)
    n = ipaddress.ip_network
    got = allocate(pool, [None, n("10.0.0.0/24"), None, None])
    assert got == [n("10.0.1.0/24"), n("10.0.0.0/24"), n("10.0.2.0/24"), n("10.0.3.0/24")]
    with pytest.raises(PoolExhausted) as e:
        allocate(pool, [None] * 5)
    assert e.value.index == 4


def test_allocate_is_lazy_on_huge_pools():
    pool = Pool(ipaddress.ip_network("10.0.0.0/8"), 30)  # 4 million subnets
    assert allocate(pool, [None]) == [ipaddress.ip_network("10.0.0.0/30")]


@pytest.mark.parametrize("value,quoted", [
    ("cni0", "'cni0'"),
    ("a'b", "'a'\\''b'"),
    ("$(reboot)", "'$(reboot)'"),
    ("`id`;x", "'`id`;x'"),
    (1500, "'1500'"),
])
def test_sh_quote_always_single_quotes(value, quoted):
    assert sh_quote(value) == quoted


@pytest.mark.parametrize("bad", ["a\nb", "a\0b", None, True, 1.5, ["x"]])
def test_sh_quote_refuses_what_cannot_be_a_shell_word(bad):
    with pytest.raises((TypeError, ValueError)):
        sh_quote(bad)


def test_shell_templates_refuse_unquoted_strings():
    assert _shell_finalize(ShellWord("'x'")) == "'x'"
    assert _shell_finalize(24) == 24
    with pytest.raises(TypeError):
        _shell_finalize("cni0")
    with pytest.raises(TypeError):
        _shell_finalize(True)


def test_overlap_sweep_reports_each_later_node_once():
    from compiler import checks

    doc = load.load_bytes(b"""network:
  podCIDR: 10.0.0.0/16
  nodePrefixLength: 24
nodes:
  - {name: a, address: 1.1.1.1, podCIDR: 10.0.2.0/24}
  - {name: b, address: 1.1.1.2, podCIDR: 10.0.0.0/23}
  - {name: c, address: 1.1.1.3, podCIDR: 10.0.1.0/24}
  - {name: d, address: 1.1.1.4, podCIDR: 10.0.2.0/24}
  - {name: e, address: 1.1.1.5, podCIDR: 10.0.3.0/24}
""", "t.yaml")
    msgs = sorted(d.message for d in checks.check(doc) if "overlaps" in d.message)
    assert msgs == [
        "nodes[2].podCIDR: 10.0.1.0/24 overlaps 10.0.0.0/23 of node 'b' (nodes[1])",
        "nodes[3].podCIDR: 10.0.2.0/24 overlaps 10.0.2.0/24 of node 'a' (nodes[0])",
    ]


def _dual_stack_model(text: bytes):
    """Schema + every rule (none may fire), then the model."""
    from compiler import checks
    from compiler.topology import canonicalise

    doc = load.load_bytes(text, "t.yaml")
    problems = list(schema.check(doc)) + list(checks.check(doc))
    assert problems == []
    return canonicalise(doc)


def test_dual_stack_model_orders_families_like_pod_cidr():
    topo = _dual_stack_model(b"""network:
  podCIDR: ["fd00:10:244::/56", 10.244.0.0/16]
  nodePrefixLength6: 72
nodes:
  - name: a
    address: [192.168.1.2, "fd00::2"]
  - name: b
    address: ["fd00::3", 192.168.1.3]
    podCIDR: [10.244.0.0/24]
""")
    n = ipaddress.ip_network
    assert [(str(p.cidr), p.node_prefix) for p in topo.network.pools] == [("fd00:10:244::/56", 72), ("10.244.0.0/16", 24)]
    a, b = topo.nodes
    assert [str(x) for x in a.addresses] == ["fd00::2", "192.168.1.2"]
    assert [str(x) for x in b.addresses] == ["fd00::3", "192.168.1.3"]
    # IPv4: b pinned 10.244.0.0/24, so a takes the next; IPv6: both allocated in file order
    assert a.subnets == (n("fd00:10:244::/72"), n("10.244.1.0/24"))
    assert b.subnets == (n("fd00:10:244:0:100::/72"), n("10.244.0.0/24"))
    assert b.pinned == (False, True)
    assert [str(g) for g in a.gateways] == ["fd00:10:244::1", "10.244.1.1"]


def test_ipv6_only_cluster_uses_node_prefix_length_for_ipv6():
    topo = _dual_stack_model(b"""network:
  podCIDR: "fd00:10:244::/56"
  nodePrefixLength: 80
nodes:
  - {name: a, address: "fd00::2"}
""")
    assert topo.network.pools[0].node_prefix == 80
    assert str(topo.nodes[0].subnet) == "fd00:10:244::/80"


@pytest.mark.parametrize("value", ["cni0\n", "node1\n", "podnet\n"])
def test_schema_patterns_use_ecma_end_anchor(value):
    """Python's `$` matches before a final newline; JSON Schema's (ECMA-262) does not."""
    doc = load.load_bytes(f'network:\n  podCIDR: 10.244.0.0/16\n  bridge: "{value.encode("unicode_escape").decode()}"\nnodes:\n  - name: a\n    address: 1.2.3.4\n'.encode(), "t.yaml")
    assert [d.message for d in schema.check(doc)] == [f'network.bridge: invalid value {json.dumps(value)}: expected an interface name (1-15 of A-Z a-z 0-9 . _ -)']


def test_schema_with_references_inlined_validates_alike():
    """schema.validator() runs on the schema with its "$ref"s inlined (faster); it has
    none left and gives the errors of the schema as written, on good and bad input."""
    from jsonschema import Draft202012Validator

    raw = schema.schema()
    inlined = schema.inlined(raw)
    assert "$ref" not in json.dumps(inlined["properties"])
    plain = Draft202012Validator(raw)
    fast = Draft202012Validator(inlined)
    good = {"network": {"podCIDR": "10.244.0.0/16", "bridge": "cni0"}, "nodes": [{"name": "a", "address": ["192.168.1.2", "fd00::2"]}]}
    bad = {"network": {"podCIDR": 5, "bridge": "x" * 20, "router": []}, "nodes": [{"name": "A_", "address": {"x": 1}, "podCIDR": ["1", "2", "3"]}, 7]}
    for doc in (good, bad):
        def key(e):
            return (tuple(e.absolute_path), e.validator, json.dumps(schema.inlined(e.validator_value, raw), sort_keys=True), e.message)

        def flat(errors):
            out = []
            for e in errors:
                out.append(key(e))
                out += [key(c) for c in e.context or ()]
            return sorted(out, key=repr)

        assert flat(fast.iter_errors(doc)) == flat(plain.iter_errors(doc))
    assert list(fast.iter_errors(bad))
    # a reference beside a keyword that validates keeps both (as an allOf)
    s = {"$defs": {"n": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/n", "minimum": 3, "description": "d"}}}
    assert schema.inlined(s)["properties"]["x"] == {"minimum": 3, "description": "d", "allOf": [{"type": "integer"}]}


def test_manifest_text_is_json_dumps_indented():
    from compiler.write import manifest_text

    m = {"podnet": "0.1.0", "topology": {"file": 'a "artifacts": {} \u00e9', "sha256": "0" * 64},
         "artifacts": {f"nodes/n\u00f6de{i}\"\\/{j}": {"mode": "0755", "sha256": f"{i:064x}", "size": i * j} for i in range(30) for j in range(3)}}
    assert manifest_text(m) == json.dumps(m, sort_keys=True, indent=2) + "\n"
    for artifacts in ({}, {"x": {"mode": "0644", "sha256": "1" * 64, "size": 1, "extra": True}}):
        m["artifacts"] = artifacts
        assert manifest_text(m) == json.dumps(m, sort_keys=True, indent=2) + "\n"


def test_shell_names_are_the_plugins_own():
    """The plugin names checks refuse (plan.SHELL_NAMES) are the ones its `sourced` takes
    for a shell sourcing it: a plugin so named would do nothing and exit 0."""
    from compiler.plan import SHELL_NAMES

    text = (REPO / "templates" / "plugin" / "main.sh.j2").read_text()
    pattern = re.search(r"^\tcase \$\{0##\*/\} in\n\t(.*)\) return 0 ;;$", text, re.M)
    assert pattern, "sourced() changed shape"
    assert tuple(pattern.group(1).split(" | ")) == SHELL_NAMES


def test_an_ipv6_range_may_end_at_the_subnets_last_address():
    """IPv6 has no broadcast address: rangeEnd may name a node subnet's last address
    (host-local's default end, and podnet's), one past IPv4's limit."""
    from compiler.plan import ipam_ranges
    from compiler.topology import build

    text = b'network:\n  podCIDR: "fd00:10:244::/56"\n  nodePrefixLength6: 126\n  rangeEnd: 3\nnodes:\n  - name: node1\n    address: "fd01::2"\n'
    topo = build(load.load_bytes(text, "t.yaml"))
    assert [tuple(map(str, r)) for r in ipam_ranges(topo, topo.nodes[0])] == [("fd00:10:244::1", "fd00:10:244::3")]
    with pytest.raises(InputError) as e:
        build(load.load_bytes(text.replace(b"rangeEnd: 3", b"rangeEnd: 4"), "t.yaml"))
    assert "offsets 1..3" in str(e.value)
