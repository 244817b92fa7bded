"""The plugin's in-shell pieces that replaced processes for speed (issue 7), checked
against an independent Python implementation under dash and busybox ash. Sourced;
no kernel state, no root needed."""

from __future__ import annotations

import subprocess

import pytest

from helpers import REPO, have, podnet

pytestmark = pytest.mark.skipif(not have("dash", "busybox"), reason="needs dash and busybox")

SHELLS = (["dash"], ["busybox", "ash"])


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf") / "out"
    done = podnet("compile", str(REPO / "examples" / "cluster.yaml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out / "nodes" / "node1" / "net-setup.sh"


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


NAMES = [
    ("0123456789abcdef" * 4, "eth0"),
    ("a", "e"),
    ("c" * 230, "x" * 15),
    ("Z_.-9", "$(x)`y`;!~{}[]*?|<>&%^=+,@"),
    ("abc", "caf\u00e9\u00ff"),  # bytes outside printable ASCII (IFNAME may hold them)
    ("abc", "eth1"),  # differs from the next only in the last byte
    ("abc", "eth2"),
    ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "Eth9"),  # every letter and digit
]


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_veth_name_is_fnv1a_of_id_and_ifname(shell, plugin):
    script = '. "$1"; shift; while [ "$#" -gt 1 ]; do CID=$1 IFNAME=$2; veth_name; printf "%s %s\\n" "$VETH" "$ALIAS"; shift 2; done'
    args = [part for pair in NAMES for part in pair]
    done = subprocess.run([*shell, "-c", script, "sh", str(plugin), *args], capture_output=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == len(NAMES)
    for (cid, ifname), line in zip(NAMES, lines):
        veth, alias = line.split(" ", 1)
        assert veth == f"veth{fnv1a(f'{cid}/{ifname}'.encode())}"
        assert len(veth.encode()) <= 15 and alias == f"podnet:{cid}/{ifname}"
    assert len(set(lines)) == len(lines)
