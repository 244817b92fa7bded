"""The config reader's fast path (issue 7): the plugin recognises its own compiled
config, byte for byte as libcni passes it, and then skips CONFIG_AWK (one process
less per ADD). It must be exactly equivalent: on those bytes both paths set the
same variables, and any other text -- an extra, missing or reordered key,
whitespace, another value, prevResult, an unsupported version -- goes to awk.

The unit tests source the plugin under dash and busybox ash with a function named
`awk` that records each call, so they see which path ran. The libcni
test captures what libcni really writes to the plugin's stdin."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import have, podnet, write_topology

pytestmark = pytest.mark.skipif(not have("dash", "busybox", "awk"), reason="needs dash, busybox and awk")

SHELLS = (["dash"], ["busybox", "ash"])
VERSIONS = ("0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
AWK = subprocess.run(["sh", "-c", "command -v awk"], capture_output=True, text=True).stdout.strip()

# Everything load_config and check_version set, one per line.
DUMP = ('load_config; check_version; for v in CFG_VERSION CFG_NAME CFG_TYPE CFG_HAS_PREV REPLY_VERSION PREV_IFACES PREV_NIFACES '
        'PREV_IFACES_RAW PREV_IPS PREV_IPS_RAW PREV_ROUTES PREV_ROUTES_RAW PREV_DNS_RAW GC_KEY GC_KEEP; do eval "printf \'%s=[%s]\\n\' $v \\"\\$$v\\""; done')


def topology(version: str, dual: bool = False) -> str:
    pods = '[10.244.0.0/16, "fd00:10:244::/56"]' if dual else "10.244.0.0/16"
    address = '[192.168.1.2, "fd00:192:168:1::2"]' if dual else "192.168.1.2"
    return f"""
        network:
          name: pods.a-1
          cniVersion: "{version}"
          podCIDR: {pods}
          bridge: br-pods
          mtu: 1400
          rangeStart: 10
        nodes:
          - name: node1
            address: {address}
        """


def libcni_bytes(conf: dict, version: str) -> str:
    """What libcni writes to a plugin's stdin (no prevResult): the plugin object with
    the list's name and cniVersion injected, marshalled by Go (sorted, compact)."""
    plugin = conf["plugins"][0] if "plugins" in conf else conf
    return json.dumps({**plugin, "name": conf["name"], "cniVersion": version}, sort_keys=True, separators=(",", ":"))


@pytest.fixture(scope="module", params=[("1.0.0", False), ("0.2.0", False), ("1.1.0", True)], ids=["1.0.0", "0.2.0", "dual-1.1.0"])
def compiled(request, tmp_path_factory):
    version, dual = request.param
    tmp = tmp_path_factory.mktemp("fast")
    done = podnet("compile", str(write_topology(tmp, topology(version, dual))), "-o", str(tmp / "out"))
    assert done.returncode == 0, done.stderr
    node = tmp / "out" / "nodes" / "node1"
    (conf_file,) = [p for p in node.iterdir() if p.suffix in (".conf", ".conflist")]
    return node / "net-setup.sh", json.loads(conf_file.read_text()), tmp


def sourced_run(shell, compiled, script: str, text: str):
    """(status, stdout, awk was called): `script` run with the plugin sourced and
    `text` on stdin."""
    plugin, _, tmp = compiled
    log = tmp / "awk.log"
    log.unlink(missing_ok=True)
    # a function named awk records the call (busybox ash would run its own applet,
    # not an awk found in PATH)
    script = 'awk() { echo called >>"$AWK_LOG"; command awk "$@"; }; ' + script
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "AWK_LOG": str(log), "LC_ALL": "C"}
    done = subprocess.run([*shell, "-c", f'. "$1"; {script}', "sh", str(plugin)], input=text, capture_output=True, text=True, env=env)
    return done.returncode, done.stdout, log.exists()


def load(shell, compiled, text: str, awk_only: bool = False):
    """(variables, awk was called) after load_config reads `text` on stdin;
    `awk_only` disables the fast path (the reference to compare with)."""
    rc, out, awk_called = sourced_run(shell, compiled, ("CONFIG_HEAD=''; " if awk_only else "") + DUMP, text)
    return (rc, out), awk_called


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_libcni_bytes_skip_awk_and_set_what_awk_sets(shell, compiled):
    conf = compiled[1]
    for version in VERSIONS:
        text = libcni_bytes(conf, version)
        fast, awk_called = load(shell, compiled, text)
        assert not awk_called, f"{version}: the compiled config went to awk"
        slow, awk_called = load(shell, compiled, text, awk_only=True)
        assert awk_called
        assert fast == slow and fast[0] == 0, (version, fast, slow)
        assert f"CFG_VERSION=[{version}]" in fast[1] and f"REPLY_VERSION=[{version}]" in fast[1]
        # a last newline is no difference: both readers see the same text
        assert load(shell, compiled, text + "\n") == (fast, False)


def deviations(conf: dict) -> dict:
    plugin = conf["plugins"][0] if "plugins" in conf else conf
    base = {**plugin, "name": conf["name"], "cniVersion": "1.0.0"}
    text = libcni_bytes(conf, "1.0.0")

    def dumps(obj):
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    return {
        "extra key": dumps({**base, "foo": 1}),
        "missing key": dumps({k: v for k, v in base.items() if k != "ipMasq"}),
        "reordered keys": json.dumps({"name": base["name"], **{k: v for k, v in base.items() if k != "name"}}, separators=(",", ":")),
        "spaces": json.dumps(base, sort_keys=True),
        "pretty": json.dumps(base, sort_keys=True, indent=2),
        "leading space": " " + text,
        "other mtu": dumps({**base, "mtu": 1500}),
        "other bridge": dumps({**base, "bridge": "cni0"}),
        "other name": dumps({**base, "name": "other"}),
        "other type": dumps({**base, "type": "bridge"}),
        "mtu as string": dumps({**base, "mtu": "1400"}),
        "prevResult": dumps({**base, "prevResult": {"cniVersion": "1.0.0", "interfaces": [], "ips": [], "dns": {}}}),
        "runtimeConfig": dumps({**base, "runtimeConfig": {"portMappings": []}}),
        "args": dumps({**base, "args": {"cni": {}}}),
        "valid-attachments": dumps({**base, "cni.dev/valid-attachments": []}),
        "unsupported version": dumps({**base, "cniVersion": "9.9.9"}),
        "version with quote": dumps({**base, "cniVersion": '1.0.0","x":"y'}),
        "empty version": dumps({**base, "cniVersion": ""}),
        "version as number": text.replace('"cniVersion":"1.0.0"', '"cniVersion":1.0'),
        "two objects": text + text,
        "trailing garbage": text + "x",
        "truncated": text[:-1],
        "escaped character": text.replace('"name":"', '"name":"\\u0070', 1),
        "not JSON": "x" + text[1:],
        "empty": "",
    }


def assert_all_go_to_awk(shell, compiled, cases: dict, loader=load) -> None:
    """Each text goes to awk, and the fast path changes nothing of what it sets."""
    for what, text in cases.items():
        seen, awk_called = loader(shell, compiled, text)
        assert awk_called, f"{what}: skipped awk"
        assert seen == loader(shell, compiled, text, awk_only=True)[0], what


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_any_deviation_goes_to_awk(shell, compiled):
    assert_all_go_to_awk(shell, compiled, deviations(compiled[1]))


def test_config_compiled_needs_the_whole_text(compiled):
    """config_compiled alone: head + version + tail, nothing more or less."""
    plugin, conf, _ = compiled
    text = libcni_bytes(conf, "1.0.0")
    script = '. "$1"; CFG_TEXT=$2; if config_compiled; then echo "fast $CFG_VERSION $CFG_NAME $CFG_TYPE"; else echo awk; fi'
    for candidate, expected in [(text, f"fast 1.0.0 {conf['name']} podnet"), (text[:-1], "awk"), (text + " ", "awk"),
                                (text.replace("1.0.0", "1.0.0 1.1.0"), "awk"), (text.replace("1.0.0", "1.0"), "awk")]:
        done = subprocess.run(["dash", "-c", script, "sh", str(plugin), candidate], capture_output=True, text=True)
        assert done.stdout.strip() == expected, (candidate, done.stdout, done.stderr)


def test_unplain_values_disable_the_fast_path(monkeypatch):
    """A string Go's encoding/json would write differently from json.dumps (HTML
    characters, non-ASCII, control characters) leaves CONFIG_HEAD empty."""
    from compiler import plan

    for value in ("a<b", "a&b", "caf\u00e9", "a\tb"):
        monkeypatch.setattr(plan, "cni_config", lambda topo, node, v=value: {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "podnet", "x": v}]})
        fake_topo = type("T", (), {"network": type("N", (), {"name": "n"})()})()
        assert plan.libcni_config(fake_topo, None) == ("", "")
    monkeypatch.setattr(plan, "cni_config", lambda topo, node: {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "podnet", "x": "a-b"}]})
    fake_topo = type("T", (), {"network": type("N", (), {"name": "n"})()})()
    assert plan.libcni_config(fake_topo, None) == ('{"cniVersion":"', '","name":"n","type":"podnet","x":"a-b"}')


def test_the_fast_path_is_taken_exactly_when_every_string_is_plain(monkeypatch):
    """libcni_config checks the JSON text at once; the same as checking every key and
    string value for printable ASCII without <>& (what Go writes as json.dumps does)."""
    import random

    from compiler import plan

    def strings(value):
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in (k, *strings(v))]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0, 0x80)] + ["\u00e9", "\u2028", "\U0001f600"]
    fake_topo = type("T", (), {"network": type("N", (), {"name": "n"})()})()
    for i in range(4000):
        word = "".join(rng.choice(alphabet) if rng.random() < 0.1 else rng.choice("ab-\\\"") for _ in range(rng.randint(0, 6)))
        config = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "podnet", "x": [word, 1, True], word: {"y": word}}]}
        plain = all(re.fullmatch(r"[\x20-\x7e]*", s) and not set("<>&") & set(s) for s in strings(config["plugins"][0]))
        assert (plan.libcni_config(fake_topo, None, config) != ("", "")) == plain, repr(word)


# ---- what libcni really writes ---------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("version", ("0.2.0", "0.3.1", "0.4.0", "1.0.0"))
def test_libcni_add_runs_no_awk_and_its_bytes_are_the_compiled_ones(version, netns, tmp_path):
    """Through libcni: ADD's stdin is exactly the compiled bytes and starts no awk;
    nor does DEL, whose config carries the cached result from 0.4.0 on."""
    from peers import Pod, compile_topology, driver_available, install_podnet, topology_yaml

    ok, why = driver_available()
    if not ok:
        pytest.skip(why)
    out = compile_topology(tmp_path, topology_yaml(version))
    node = install_podnet(out, netns.add("node"), tmp_path / "podnet")
    real = node.bin_dirs[0] / "podnet.real"
    os.rename(node.bin_dirs[0] / "podnet", real)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "awk").write_text(f'#!/bin/sh\necho "$CNI_COMMAND" >>{tmp_path}/awk.log\nexec {AWK} "$@"\n')
    (fake / "awk").chmod(0o755)
    wrapper = node.bin_dirs[0] / "podnet"
    wrapper.write_text(f'#!/bin/sh\ncat >{tmp_path}/stdin.$CNI_COMMAND\nPATH={fake}:$PATH exec {real} <{tmp_path}/stdin.$CNI_COMMAND\n')
    wrapper.chmod(0o755)
    pod = Pod(netns.add("pod"))
    added = node.driver("add", pod)
    assert added.rc == 0, added.describe()
    conf = json.loads((out / "nodes" / "node1" / node.conf_path.name).read_text())
    assert (tmp_path / "stdin.ADD").read_text() == libcni_bytes(conf, version)
    assert not (tmp_path / "awk.log").exists(), "ADD through libcni ran awk"
    assert node.driver("del", pod).rc == 0
    # libcni passes the cached result to DEL from 0.4.0 on
    assert ("prevResult" in (tmp_path / "stdin.DEL").read_text()) == (version in ("0.4.0", "1.0.0"))
    assert not (tmp_path / "awk.log").exists(), "DEL through libcni ran awk"
    assert node.leases() == {}


@pytest.mark.netns
@pytest.mark.parametrize("masquerade", (False, True), ids=["plain", "masquerade"])
@pytest.mark.parametrize("shell", ("dash", "busybox ash"))
def test_add_of_the_compiled_config_starts_only_its_processes(shell, masquerade, netns, tmp_path):
    """What an ADD of libcni's bytes starts on a node that has its bridge, lease store
    and masquerade rule (after its first ADD), counted with strace: the two `ip` (host
    side, pod side), `flock` for the lease and, with masquerade on, `iptables -C`; no
    awk, cat, grep, rm or python. Guards the design's process count against a helper
    creeping in; the result is still complete."""
    if not have("strace"):
        pytest.skip("needs strace")
    from plugin_node import PluginNode

    node = PluginNode(netns, tmp_path, masquerade=masquerade, shell=shell)
    stdin = libcni_bytes(node.conf, node.conf["cniVersion"])
    first, pod = node.new_pod(), node.new_pod()
    assert node.cni("ADD", first, stdin=stdin).rc == 0  # creates the bridge, the store, the rule
    trace = tmp_path / "trace"
    added = node.cni("ADD", pod, stdin=stdin, script=f'exec strace -f -qq -z -e trace=execve -o {trace} $PLUGIN_SHELL "$PLUGIN"')
    assert added.rc == 0, added
    execs = [os.path.basename(e) for e in re.findall(r'execve\("([^"]+)"', trace.read_text())]
    assert sorted(execs[1:]) == sorted(["ip", "ip", "flock"] + (["iptables"] if masquerade else [])), execs  # [0]: the shell
    result = added.json
    assert [i["name"] for i in result["interfaces"]][::2] == [node.conf["bridge"], pod.ifname] and len(result["ips"]) == 1, result
    assert all(re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", i["mac"]) for i in result["interfaces"]), result
    for p in (pod, first):
        assert node.cni("DEL", p).rc == 0


# ---- DEL: the compiled config with the cached result (libcni, 0.4.0 on) ----------------

PREV_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "br-pods", "mac": "02:00:00:00:00:01"}, {"name": "veth123", "mac": "02:00:00:00:00:02"},
                   {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/p"}],
    "ips": [{"interface": 2, "address": "10.244.1.10/24", "gateway": "10.244.1.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["a.svc"], "options": ["ndots:5"]},
    "flags": [True, False, None, -1.5e3, 0],
    "empty": [{}, [], ""],
}

# What DEL uses of load_config and check_version (it never reads the previous result).
DEL_DUMP = ('COMMAND=DEL; load_config; check_version; for v in CFG_VERSION CFG_NAME CFG_TYPE CFG_HAS_PREV REPLY_VERSION; '
            'do eval "printf \'%s=[%s]\\n\' $v \\"\\$$v\\""; done')


def del_bytes(conf: dict, version: str, prev=PREV_RESULT) -> str:
    """libcni's DEL stdin: the plugin object with name, cniVersion and prevResult
    injected (Go: keys sorted, compact; the result itself in its struct's order)."""
    plugin = conf["plugins"][0] if "plugins" in conf else conf
    text = json.dumps({**plugin, "name": conf["name"], "cniVersion": version, "prevResult": "@PREV@"}, sort_keys=True, separators=(",", ":"))
    return text.replace('"@PREV@"', prev if isinstance(prev, str) else json.dumps(prev, separators=(",", ":")))


def load_del(shell, compiled, text: str, awk_only: bool = False):
    """load for DEL; `awk_only` disables DEL's fast path."""
    rc, out, awk_called = sourced_run(shell, compiled, ("CONFIG_PREV_MID=''; " if awk_only else "") + DEL_DUMP, text)
    return (rc, out), awk_called


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_del_with_the_cached_result_skips_awk_and_sets_what_awk_sets(shell, compiled):
    conf = compiled[1]
    for version in ("0.4.0", "1.0.0", "1.1.0"):
        for prev in (PREV_RESULT, {}, {"cniVersion": version, "interfaces": [], "ips": []}):
            text = del_bytes(conf, version, prev)
            fast, awk_called = load_del(shell, compiled, text)
            assert not awk_called, f"{version} {prev}: DEL's config went to awk"
            slow, awk_called = load_del(shell, compiled, text, awk_only=True)
            assert awk_called
            assert fast == slow and fast[0] == 0, (version, fast, slow)
            assert f"CFG_VERSION=[{version}]" in fast[1] and "CFG_HAS_PREV=[1]" in fast[1]


def del_deviations(conf: dict) -> dict:
    prev = json.dumps(PREV_RESULT, separators=(",", ":"))
    text = del_bytes(conf, "1.0.0")
    return {
        # keys smuggled behind the result: the object must end where the config's tail begins
        "key after the result": del_bytes(conf, "1.0.0", '{"a":1},"type":"other","b":{"c":2}'),
        "name after the result": del_bytes(conf, "1.0.0", '{"a":1},"name":"other","b":{}'),
        "escaped quote": del_bytes(conf, "1.0.0", '{"a":"x\\"},\\"y"}'),
        "brackets crossed": del_bytes(conf, "1.0.0", '{"a":[1}]}'),
        "bracket closing a brace": del_bytes(conf, "1.0.0", '{"a":{"b":1]}'),
        "unclosed": del_bytes(conf, "1.0.0", '{"a":{"b":1}'),
        "closed twice": del_bytes(conf, "1.0.0", '{"a":1}}'),
        "object, then array": del_bytes(conf, "1.0.0", '{"a":1}[2]'),
        "two empty objects": del_bytes(conf, "1.0.0", "{}{}"),
        "an array": del_bytes(conf, "1.0.0", "[1,2]"),
        "a string": del_bytes(conf, "1.0.0", '"x"'),
        "null": del_bytes(conf, "1.0.0", "null"),
        "word outside strings": del_bytes(conf, "1.0.0", '{"a":nope}'),
        "spaces": del_bytes(conf, "1.0.0", json.dumps(PREV_RESULT)),
        "newline in it": del_bytes(conf, "1.0.0", prev.replace(",", ",\n", 1)),
        "non-ASCII in a string": del_bytes(conf, "1.0.0", '{"a":"\u00e9"}'),
        "odd quotes": del_bytes(conf, "1.0.0", '{"a":"b}'),
        "other name": text.replace('"name":"pods.a-1"', '"name":"other"'),
        "other type": text.replace('"type":"podnet"', '"type":"bridge"'),
        "unsupported version": del_bytes(conf, "9.9.9"),
        "result first": '{"prevResult":' + prev + "," + libcni_bytes(conf, "1.0.0")[1:],
        "trailing garbage": text + "x",
        "two configs": text + text,
    }


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_any_other_del_config_goes_to_awk(shell, compiled):
    assert_all_go_to_awk(shell, compiled, del_deviations(compiled[1]), load_del)


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_only_del_skips_awk_with_a_previous_result(shell, compiled):
    """ADD (chained) and CHECK use the previous result: awk reads it."""
    for command in ("ADD", "CHECK"):
        seen = sourced_run(shell, compiled, f'COMMAND={command}; load_config; echo "$PREV_NIFACES"', del_bytes(compiled[1], "1.0.0"))
        assert seen == (0, "3\n", True), command
