"""Hostile environment and stdin: every CNI variable and the config carry injection
attempts, bad JSON, wrong names, missing pieces. Each must give the right error
object (one JSON line on stdout, exit 1), create nothing (no link, no lease, no
file, no rule) and run nothing (the canary file never appears)."""

from __future__ import annotations

import json
import uuid

import pytest

from helpers import have
from plugin_node import SHELLS, PluginNode

pytestmark = pytest.mark.skipif(not have("dash", "busybox", "iptables"), reason="needs dash, busybox and iptables")

CANARY = f"/tmp/podnet-canary-{uuid.uuid4().hex}"
INJECTIONS = [
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"x;touch {CANARY}",
    f"x|touch {CANARY}",
    f"x&&touch {CANARY}",
    f"x\ntouch {CANARY}",
    f"x'\"$(touch {CANARY})\"'",
]

# (case id, env overrides, expected code, text the message must contain)
ENV_CASES = [
    ("command-missing", {"CNI_COMMAND": None}, 4, "CNI_COMMAND"),
    ("command-unknown", {"CNI_COMMAND": "add"}, 4, "CNI_COMMAND"),
    ("command-injected", {"CNI_COMMAND": f"ADD;touch {CANARY}"}, 4, "CNI_COMMAND"),
    ("id-missing", {"CNI_CONTAINERID": None}, 4, "CNI_CONTAINERID"),
    ("id-empty", {"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
    ("netns-missing", {"CNI_NETNS": None}, 4, "CNI_NETNS"),
    ("ifname-missing", {"CNI_IFNAME": None}, 4, "CNI_IFNAME"),
    ("path-missing", {"CNI_PATH": None}, 4, "CNI_PATH"),
    ("several-missing", {"CNI_CONTAINERID": None, "CNI_IFNAME": None}, 4, "CNI_CONTAINERID CNI_IFNAME"),
    ("id-overlong", {"CNI_CONTAINERID": "a" * 231}, 4, "CNI_CONTAINERID"),
    ("id-dash", {"CNI_CONTAINERID": "-rf"}, 4, "CNI_CONTAINERID"),
    ("id-dot", {"CNI_CONTAINERID": ".hidden"}, 4, "CNI_CONTAINERID"),
    ("id-unicode", {"CNI_CONTAINERID": "caf\u00e9"}, 4, "CNI_CONTAINERID"),
    ("ifname-overlong", {"CNI_IFNAME": "e" * 16}, 4, "CNI_IFNAME"),
    ("ifname-dot", {"CNI_IFNAME": "."}, 4, "CNI_IFNAME"),
    ("ifname-dotdot", {"CNI_IFNAME": ".."}, 4, "CNI_IFNAME"),
    ("ifname-slash", {"CNI_IFNAME": "e/0"}, 4, "CNI_IFNAME"),
    ("ifname-colon", {"CNI_IFNAME": "e:0"}, 4, "CNI_IFNAME"),
    ("ifname-space", {"CNI_IFNAME": "e 0"}, 4, "CNI_IFNAME"),
    ("ifname-tab", {"CNI_IFNAME": "e\t0"}, 4, "CNI_IFNAME"),
    ("ifname-quote", {"CNI_IFNAME": 'e"0'}, 4, "CNI_IFNAME"),
    ("ifname-hash", {"CNI_IFNAME": "e#0"}, 4, "CNI_IFNAME"),
    ("ifname-backslash", {"CNI_IFNAME": "e\\0"}, 4, "CNI_IFNAME"),
    ("netns-absent", {"CNI_NETNS": "/run/netns/podnet-no-such-ns"}, 4, "does not exist"),
    ("netns-relative", {"CNI_NETNS": "run/netns/x"}, 4, "CNI_NETNS"),
    ("netns-space", {"CNI_NETNS": "/run/netns/a b"}, 4, "CNI_NETNS"),
    ("netns-overlong", {"CNI_NETNS": "/" + "a" * 1100}, 4, "CNI_NETNS"),
    ("args-bad-key", {"CNI_ARGS": f"IgnoreUnknown=1;$(touch {CANARY})=1"}, 4, "CNI_ARGS"),
    ("args-no-pair", {"CNI_ARGS": "justtext"}, 4, "CNI_ARGS"),
]
for i, text in enumerate(INJECTIONS):
    ENV_CASES += [
        (f"id-injection-{i}", {"CNI_CONTAINERID": text}, 4, "CNI_CONTAINERID"),
        (f"ifname-injection-{i}", {"CNI_IFNAME": text[:15]}, 4, "CNI_IFNAME"),
        (f"netns-injection-{i}", {"CNI_NETNS": "/run/netns/" + text}, 4, "CNI_NETNS"),
        (f"path-injection-{i}", {"CNI_PATH": text}, 4, "CNI_PATH") if "\n" in text else None,
    ]
ENV_CASES = [c for c in ENV_CASES if c]


def config_cases(conf):
    """(case id, stdin text, expected code, text the message must contain)."""
    deep = '{"a":' * 40 + "1" + "}" * 40
    return [
        ("empty", "", 6, "decode"),
        ("truncated", json.dumps(conf)[:-1], 6, "decode"),
        ("not-an-object", "[1, 2]", 6, "decode"),
        ("null", "null", 6, "decode"),
        ("trailing-garbage", json.dumps(conf) + " x", 6, "decode"),
        ("trailing-comma", '{"cniVersion":"1.0.0","name":"podnet",}', 6, "decode"),
        ("raw-newline-in-string", '{"name":"pod\nnet"}', 6, "decode"),
        ("control-char", '{"name":"pod\x01net"}', 6, "decode"),
        ("bad-escape", '{"name":"pod\\qnet"}', 6, "decode"),
        ("single-quotes", "{'name': 'podnet'}", 6, "decode"),
        ("too-deep", deep, 6, "decode"),
        ("too-large", json.dumps({**conf, "padding": "x" * 300_000}), 6, "decode"),
        # valid JSON, but joining 250,000 lines took the shell 30 s: refused after 4,096
        ("too-many-lines", "{" + "\n" * 250_000 + json.dumps(conf)[1:], 6, "more than 4096 lines"),
        ("version-unknown", json.dumps({**conf, "cniVersion": "9.9.9"}), 1, "9.9.9"),
        ("version-missing", json.dumps({k: v for k, v in conf.items() if k != "cniVersion"}), 1, "incompatible"),
        ("version-0.1.0", json.dumps({**conf, "cniVersion": "0.1.0"}), 1, "0.1.0"),
        ("version-number", json.dumps({**conf, "cniVersion": 1.0}), 1, "incompatible"),
        ("version-injected", json.dumps({**conf, "cniVersion": "1.0.0 0.4.0"}), 1, "incompatible"),
        ("name-wrong", json.dumps({**conf, "name": "othernet"}), 7, "othernet"),
        ("name-number", json.dumps({**conf, "name": 5}), 7, "name"),
        ("name-missing", json.dumps({k: v for k, v in conf.items() if k != "name"}), 7, "network"),
        ("name-injected", json.dumps({**conf, "name": f"podnet$(touch {CANARY})"}), 7, "network"),
        ("name-quoted", json.dumps({**conf, "name": 'podnet";touch x;"'}), 7, "network"),
        # named as the config spells it (escaped once), not escaped twice more
        ("name-escaped", json.dumps({**conf, "name": 'pod"net\\'}), 7, 'network "pod\\"net\\\\" is not'),
        ("type-wrong", json.dumps({**conf, "type": "bridge"}), 7, "type"),
        ("bridge-mismatch", json.dumps({**conf, "bridge": "cni9"}), 7, "bridge"),
        # keys as Go's decoder matches them, which a plugin in Go would read as bridge / mtu
        ("bridge-escaped-key", json.dumps({**conf, "bridge": "cni9"}).replace('"bridge"', '"bridg\\u0065"'), 7, "bridge"),
        ("bridge-other-case", json.dumps({**conf, "bridge": "cni9"}).replace('"bridge"', '"Bridge"'), 7, "bridge"),
        ("mtu-folded-key", json.dumps({**conf, "mtu": 9000}).replace('"mtu"', '"MTU"'), 7, "mtu"),
        ("version-long-s", json.dumps({**conf, "cniVersion": "9.9.9"}).replace('"cniVersion"', '"cniVer\\u017fion"'), 1, "9.9.9"),
        ("mtu-mismatch", json.dumps({**conf, "mtu": 9000}), 7, "mtu"),
        ("mtu-string", json.dumps({**conf, "mtu": "1400"}), 7, "mtu"),
        ("prevresult-string", json.dumps({**conf, "prevResult": "x"}), 7, "prevResult"),
    ]


def assert_error_object(done, code: int, text: str, version: str = None) -> dict:
    assert done.rc == 1, done
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"exactly one line, the error object, on stdout: {done}"
    error = json.loads(lines[0])
    assert set(error) == {"cniVersion", "code", "msg", "details"}, error
    assert error["code"] == code, done
    assert text in error["msg"] + " " + error["details"], error
    if version:
        assert error["cniVersion"] == version
    return error


@pytest.fixture(params=SHELLS)
def hostile_node(request, netns, tmp_path):
    node = PluginNode(netns, tmp_path, shell=request.param)
    node.pod = node.new_pod()
    node.before = node.snapshot(node.pod)
    return node


def assert_nothing_happened(node) -> None:
    import os

    assert node.snapshot(node.pod) == node.before
    assert not os.path.exists(CANARY), "an injected command ran"


def test_hostile_environment(hostile_node):
    node = hostile_node
    for case, env, code, text in ENV_CASES:
        for command in ("ADD", "CHECK", "DEL"):
            if command == "DEL" and case in ("netns-missing", "netns-absent"):
                continue  # DEL does not need the namespace (see test_plugin's DEL tests)
            full = {"CNI_COMMAND": command, **env}
            done = node.cni(command, node.pod, conf=node.with_prev({"cniVersion": "1.0.0"}) if command == "CHECK" else None, env=full)
            try:
                assert_error_object(done, code, text, "1.0.0")
                assert_nothing_happened(node)
            except AssertionError as e:
                raise AssertionError(f"case {case} ({command}): {e}") from None


def test_hostile_config(hostile_node):
    node = hostile_node
    for case, stdin, code, text in config_cases(node.conf):
        for command in ("ADD", "DEL"):
            done = node.cni(command, node.pod, stdin=stdin)
            try:
                error = assert_error_object(done, code, text)
                assert_nothing_happened(node)
            except AssertionError as e:
                raise AssertionError(f"case {case} ({command}): {e}") from None
            if code in (6, 1):
                assert error["cniVersion"] == "1.0.0", "unknown request version: the compiled one is used"


def test_args_values_are_inert(hostile_node):
    """CNI_ARGS values are never used, so an injection there is harmless: ADD works."""
    node = hostile_node
    env = {"CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME=$(touch {CANARY});K8S_POD_NAMESPACE=`touch {CANARY}`"}
    added = node.cni("ADD", node.pod, env=env)
    assert added.rc == 0, added
    assert node.cni("DEL", node.pod, env=env).rc == 0
    import os

    assert not os.path.exists(CANARY)


def test_injection_in_prev_result_is_data(hostile_node):
    """prevResult strings only ever travel as JSON text: a chained ADD passes them
    through intact, a CHECK names them, nothing runs."""
    node = hostile_node
    evil = f"$(touch {CANARY})\";`touch {CANARY}`"
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": evil}], "ips": [], "dns": {"search": [evil]}}
    added = node.cni("ADD", node.pod, conf=node.with_prev(prev))
    assert added.rc == 0, added
    assert added.json["interfaces"][0] == {"name": evil} and added.json["dns"] == {"search": [evil]}
    checked = node.cni("CHECK", node.pod, conf=node.with_prev({**added.json, "routes": [{"dst": evil}]}))
    assert checked.rc == 1 and f"touch {CANARY}" in checked.json["msg"], checked
    assert node.cni("DEL", node.pod).rc == 0
    import os

    assert not os.path.exists(CANARY)
