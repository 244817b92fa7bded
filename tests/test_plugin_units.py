"""The plugin's pure functions, sourced (`. net-setup.sh` only defines them) and run
under dash and busybox ash: JSON escaping, the input validators, the config reader,
version ordering. No kernel state, no root needed."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import REPO, have, podnet

pytestmark = pytest.mark.skipif(not have("dash", "busybox"), reason="needs dash and busybox")

SHELLS = (["dash"], ["busybox", "ash"])


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    out = tmp_path_factory.mktemp("units") / "out"
    done = podnet("compile", str(REPO / "examples" / "cluster.yaml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out / "nodes" / "node1" / "net-setup.sh"


def source_and_run(shell, plugin, script: str, stdin: str = "", env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*shell, "-c", f'. "$1"; {script}', "sh", str(plugin)], input=stdin, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_sourcing_defines_functions_and_runs_nothing(shell, plugin):
    done = source_and_run(shell, plugin, "command -v cmd_add >/dev/null && echo defined")
    assert done.returncode == 0 and done.stdout == "defined\n" and done.stderr == ""


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
@pytest.mark.parametrize("text", ['plain', 'quote " and \\ backslash', "new\nline", "tab\tand\x01ctl", "$(x) `y` 'z'", "", "\u00e9t\u00e9"])
def test_json_escape_gives_valid_json(shell, plugin, text):
    done = source_and_run(shell, plugin, 'json_escape "$TEXT"; printf "\\"%s\\"" "$JSON_ESC"', env={"TEXT": text, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    decoded = json.loads(done.stdout)
    expected = "".join(" " if (ord(c) < 32 and c != "\n") else c for c in text)
    assert decoded == expected


VALID_IDS = ["a", "0", "abc_DEF.1-2", "c" * 64, "a" * 230]
INVALID_IDS = ["", "-a", ".a", "_a", "a b", "a/b", "a;b", "a$b", "a\nb", "caf\u00e9", "a" * 231]
VALID_IFNAMES = ["eth0", "e", "net1.100", "a-b_c", "x" * 15, "$(x)", "a;b", "a`b"]
INVALID_IFNAMES = ["", ".", "..", "x" * 16, "a/b", "a:b", "a b", "a\tb", "a\nb", 'a"b', "a'b", "a\\b", "a#b"]


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_validators(shell, plugin):
    cases = [("valid_container_id", v, True) for v in VALID_IDS] + [("valid_container_id", v, False) for v in INVALID_IDS]
    cases += [("valid_ifname", v, True) for v in VALID_IFNAMES] + [("valid_ifname", v, False) for v in INVALID_IFNAMES]
    cases += [("valid_netns_path", v, True) for v in ("/run/netns/cni-1234", "/proc/42/ns/net", "/var/run/docker/netns/a:b@c+d")]
    cases += [("valid_netns_path", v, False) for v in ("run/netns/x", "/run/netns/a b", "/x/$(y)", "/x\n", "/" + "a" * 1100, "")]
    cases += [("valid_cni_args", v, True) for v in ("", "IgnoreUnknown=1", "A=1;B=two words;C=", "K8S_POD_NAME=$(x)")]
    cases += [("valid_cni_args", v, False) for v in ("x", "=1", "A=1;;B", "$(x)=1", "A B=1")]
    for func, value, ok in cases:
        done = source_and_run(shell, plugin, f'{func} "$V" && echo yes || echo no', env={"V": value, "PATH": "/usr/bin:/bin"})
        assert done.stdout == ("yes\n" if ok else "no\n"), f"{func} {value!r}: {done.stdout}{done.stderr}"


LEASES_OK = ["10.244.1.5/24 10.244.1.1", "10.244.1.5/24 10.244.1.1\nfd00:1::5/64 fd00:1::1"]
LEASES_BAD = ["", "10.244.1.5 10.244.1.1", "10.244.1.5/24", "10.244.1.5/24 10.244.1.1 x", "10.244.1.5/24  10.244.1.1",
              "10.244.1.5/24 10.244.1.1\n*", "10.244.1.5/24 10.244.1.1\nx/1 y", "10.244.1.5/24 $(x)", " 10.244.1.5/24 10.244.1.1"]


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_leases_valid_and_their_words(shell, plugin):
    """leases_valid accepts only "ADDRESS/PREFIX GATEWAY" lines (what may go into the
    pod side's batch; an empty LEASES has no line to refuse, add_lease refuses it);
    the readers that split LEASES into words then pair them up."""
    script = 'LEASES=$L; if leases_valid; then echo ok; else echo bad; fi'
    for leases in LEASES_OK + LEASES_BAD:
        done = source_and_run(shell, plugin, script, env={"L": leases, "PATH": "/usr/bin:/bin"})
        expect = "ok" if leases in LEASES_OK or leases == "" else "bad"
        assert (done.returncode, done.stdout.strip()) == (0, expect), (leases, done)
    done = source_and_run(shell, plugin, 'LEASES=$L; gateway_for 0.0.0.0/0; printf "%s " "$GATEWAY"; gateway_for ::/0; printf "%s " "$GATEWAY"; IFNAME=eth0 POD_ROUTES="0.0.0.0/0 ::/0"; pod_batch; printf "%s" "$POD_BATCH"',
                          env={"L": LEASES_OK[1], "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("10.244.1.1 fd00:1::1 link set dev eth0 addrgenmode none\naddr add 10.244.1.5/24 dev eth0\naddr add fd00:1::5/64 dev eth0 nodad\n"
                           "link set dev eth0 up\nroute add 0.0.0.0/0 via 10.244.1.1 dev eth0\nroute add ::/0 via fd00:1::1 dev eth0\nlink set dev lo up\nlink show dev eth0")


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_version_at_least(shell, plugin):
    versions = ["0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    for i, have_v in enumerate(versions):
        for j, want in enumerate(versions):
            done = source_and_run(shell, plugin, f'REPLY_VERSION={have_v}; version_at_least {want} && echo yes || echo no')
            assert done.stdout == ("yes\n" if i >= j else "no\n"), (have_v, want)


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_config_reader_extracts_prev_result_and_attachments(shell, plugin):
    conf = {
        "cniVersion": "1.0.0", "name": "podnet", "type": "podnet", "bridge": "cni0", "mtu": 1500,
        "cni.dev/valid-attachments": [{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}],
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "br", "mac": "aa"}, {"name": "eth0", "sandbox": "/run/netns/x", "mtu": 1500}],
            "ips": [{"interface": 1, "address": "10.244.1.5/24", "gateway": "10.244.1.1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.244.1.9"}],
            "dns": {"nameservers": ["10.0.0.10"]},
        },
    }
    script = ('load_config; printf "%s|%s|%s|%s\\n" "$CFG_VERSION" "$CFG_NAME" "$CFG_TYPE" "$CFG_HAS_PREV"; '
              'printf "%s" "$PREV_IFACES"; printf "%s" "$PREV_IPS"; printf "%s" "$PREV_ROUTES"; '
              'printf "%s\\n%s\\n" "$PREV_IFACES_RAW" "$PREV_DNS_RAW"; printf "%s" "$GC_KEEP"')
    done = source_and_run(shell, plugin, script, stdin=json.dumps(conf))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1.0.0|podnet|podnet|1",
        "0 br ", "1 eth0 /run/netns/x",
        "1 10.244.1.5/24 10.244.1.1",
        "0.0.0.0/0 ", "192.0.2.0/24 10.244.1.9",
        '{"name":"br","mac":"aa"},{"name":"eth0","sandbox":"/run/netns/x","mtu":1500},',
        '{"nameservers":["10.0.0.10"]}',
        "a1 eth0", "b2 net1",
    ]


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_config_reader_reads_escapes_and_key_spellings_as_go_does(shell, plugin):
    """Strings keep only the escapes they need: \\/ and \\u of printable ASCII are their
    characters (a name spelt pod\\u006eet is podnet); a member is found whatever the
    case of its key, as Go's decoder finds a struct field (a later one wins)."""
    text = ('{"CNIVERSION":"1.0.0","n\\u0061me":"pod\\u006eet","Type":"podnet","mtu":1500,'
            '"PrevResult":{"Interfaces":[{"NAME":"eth0","sandbox":"\\/run\\/netns\\/x\\u00e9\\u0022"}]},'
            '"cni.dev\\/Valid-Attachments":[{"containerid":"a1","IFNAME":"eth0"}]}')
    script = 'load_config; printf "%s|%s|%s|%s\\n" "$CFG_VERSION" "$CFG_NAME" "$CFG_TYPE" "$CFG_HAS_PREV"; printf "%s" "$PREV_IFACES"; printf "%s" "$GC_KEEP"'
    done = source_and_run(shell, plugin, script, stdin=text)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1.0.0|podnet|podnet|1", '0 eth0 /run/netns/x\\u00e9\\u0022', "a1 eth0"]


@pytest.mark.skipif(not have("shellcheck"), reason="shellcheck is not installed (make test installs it as root)")
@pytest.mark.parametrize("version, masquerade", [("0.2.0", "false"), ("1.1.0", "true")])
def test_plugin_variants_pass_shellcheck(version, masquerade, tmp_path):
    from helpers import write_topology

    topo = write_topology(tmp_path, f"""
        network:
          name: net.a-1
          cniVersion: "{version}"
          podCIDR: 10.250.0.0/16
          bridge: br-pods
          masquerade: {masquerade}
        nodes:
          - name: n1
            address: 192.168.9.2
        """)
    done = podnet("compile", str(topo), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    plugin = tmp_path / "out" / "nodes" / "n1" / "net-setup.sh"
    checked = subprocess.run(["shellcheck", "-s", "sh", "-S", "style", str(plugin)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
