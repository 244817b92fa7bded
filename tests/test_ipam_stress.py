"""IPAM under real concurrency, beside the reference host-local, and killed at
random moments: real processes on a temp-dir store (no links are involved)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from helpers import have
from ipam_support import ipam_argv, ipam_env, render_ipam, topology_text

HOST_LOCAL = "/usr/lib/cni/host-local"
LEASE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not have("dash", "busybox", "flock"), reason="needs dash, busybox and flock")]


def leases(store: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in store.iterdir() if LEASE.match(p.name)} if store.exists() else {}


def start(shell: str, script: Path, store: Path, call: str) -> subprocess.Popen:
    return subprocess.Popen(ipam_argv(shell, call), env=ipam_env(shell, script, store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(procs: List[subprocess.Popen], timeout: float = 300) -> List[subprocess.CompletedProcess]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def lock_is_free(store: Path) -> bool:
    return subprocess.run(["flock", "-n", str(store / "lock"), "true"]).returncode == 0


@pytest.fixture
def ipam24(tmp_path):
    return render_ipam(tmp_path, topology_text("10.244.1.0/24", 24))


@pytest.mark.parametrize("shell", ["dash", "busybox", "dash-noflock"])
def test_64_parallel_adds_then_64_parallel_dels_several_rounds(shell, ipam24, tmp_path):
    store = tmp_path / "store"
    for rnd in range(3):
        ids = [f"r{rnd}c{i}" for i in range(64)]
        results = finish([start(shell, ipam24, store, f"ipam_add {cid} eth0") for cid in ids])
        assert [r.returncode for r in results] == [0] * 64, [r.stderr for r in results if r.returncode]
        addrs = [r.stdout.split("/")[0] for r in results]
        assert len(set(addrs)) == 64, "duplicate address handed out"
        assert all(r.stdout.endswith("/24 10.244.1.1\n") and r.stderr == "" for r in results)
        # the store holds exactly these leases, each naming its owner
        assert leases(store) == {a: f"{cid}\r\neth0".encode() for a, cid in zip(addrs, ids)}
        results = finish([start(shell, ipam24, store, f"ipam_del {cid} eth0") for cid in ids])
        assert [r.returncode for r in results] == [0] * 64
        assert leases(store) == {}
        assert sorted(p.name for p in store.iterdir()) == ["last_reserved_ip.0", "lock"]
    assert lock_is_free(store)


def host_local(command: str, cid: str, store_root: Path, netns: Path) -> subprocess.Popen:
    conf = {
        "cniVersion": "1.0.0",
        "name": "testnet",
        "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": str(store_root), "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]},
    }
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=str(netns), CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni")
    p = subprocess.Popen([HOST_LOCAL], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write(json.dumps(conf))
    p.stdin.close()
    p.stdin = None
    return p


@pytest.mark.parametrize("shell", ["dash", "dash-noflock"])
def test_mixed_with_reference_host_local_on_one_store(shell, ipam24, tmp_path):
    """host-local and podnet allocate concurrently from DATADIR/testnet: no
    duplicate, each file names its owner; each releases its own."""
    if not os.path.exists(HOST_LOCAL):
        pytest.skip("needs containernetworking-plugins")
    root = tmp_path / "data"
    store = root / "testnet"
    netns = tmp_path / "fake-netns"
    netns.touch()
    for rnd in range(2):
        ours = [f"p{rnd}c{i}" for i in range(40)]
        theirs = [f"h{rnd}c{i}" for i in range(40)]
        procs = []
        for a, b in zip(ours, theirs):
            procs.append(start(shell, ipam24, store, f"ipam_add {a} eth0"))
            procs.append(host_local("ADD", b, root, netns))
        results = finish(procs)
        assert [r.returncode for r in results] == [0] * 80, [r.stderr for r in results if r.returncode]
        got = {}
        for r, cid in zip(results, [x for pair in zip(ours, theirs) for x in pair]):
            addr = r.stdout.split("/")[0] if cid.startswith("p") else json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
            got[addr] = cid
        assert len(got) == 80, "duplicate address between podnet and host-local"
        assert leases(store) == {a: f"{cid}\r\neth0".encode() for a, cid in got.items()}
        procs = []
        for a, b in zip(ours, theirs):
            procs.append(start(shell, ipam24, store, f"ipam_del {a} eth0"))
            procs.append(host_local("DEL", b, root, netns))
        results = finish(procs)
        assert [r.returncode for r in results] == [0] * 80, [r.stderr for r in results if r.returncode]
        assert leases(store) == {}
    assert lock_is_free(store)


@pytest.mark.parametrize("shell", ["dash", "busybox", "dash-noflock"])
def test_sigkill_at_random_moments_never_duplicates_nor_keeps_the_lock(shell, ipam24, tmp_path):
    """Many ADDs (and DELs), each process group SIGKILLed after a random delay.
    Afterwards the lock is free, no address has two owners, each pair holds at
    most one lease, new ADDs succeed with fresh addresses, and a DEL of every
    pair leaves the store clean (no lease, no temp file, no marker)."""
    store = tmp_path / "store"
    rng = random.Random(4)  # reproducible delays
    ids = [f"k{i}" for i in range(60)]
    procs = []
    for i, cid in enumerate(ids):
        procs.append(start(shell, ipam24, store, f"ipam_add {cid} eth0"))
        if i % 3 == 2:  # also DELs racing the ADDs
            procs.append(start(shell, ipam24, store, f"ipam_del {ids[i - 1]} eth0"))
        time.sleep(rng.uniform(0, 0.004))
        victim = procs[rng.randrange(len(procs))]
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    killed = 0
    for p in procs:
        if p.poll() is None and rng.random() < 0.5:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=120)
        killed += p.returncode == -signal.SIGKILL
    assert killed > 0
    assert lock_is_free(store)
    held = leases(store)
    owners = [v for v in held.values()]
    assert all(re.fullmatch(rb"k\d+\r\neth0", v) for v in owners), owners  # never a partial lease
    assert len(owners) == len(set(owners)), "a pair holds two leases"
    # allocation still works and never hands out a held address
    fresh = finish([start(shell, ipam24, store, f"ipam_add n{i} eth0") for i in range(8)])
    assert [r.returncode for r in fresh] == [0] * 8
    new = {r.stdout.split("/")[0] for r in fresh}
    assert len(new) == 8 and not new & set(held)
    # DEL of every pair cleans up whatever the killed processes left
    finish([start(shell, ipam24, store, f"ipam_del {cid} eth0") for cid in ids + [f"n{i}" for i in range(8)]])
    assert leases(store) == {}
    assert sorted(p.name for p in store.iterdir()) in (["last_reserved_ip.0", "lock"], ["lock"])


@pytest.mark.parametrize("shell", ["dash", "busybox", "dash-noflock"])
def test_parallel_adds_of_one_pair_share_one_lease(shell, ipam24, tmp_path):
    """Racing ADDs of the same container + ifname (a runtime retrying): the lock
    makes the find-or-take atomic, so all get the same, single lease."""
    store = tmp_path / "store"
    for rnd in range(3):
        results = finish([start(shell, ipam24, store, f"ipam_add same{rnd} eth0") for _ in range(16)])
        assert [r.returncode for r in results] == [0] * 16
        assert len({r.stdout for r in results}) == 1
        assert list(leases(store).values()).count(f"same{rnd}\r\neth0".encode()) == 1


@pytest.mark.parametrize("shell", ["dash", "dash-noflock"])
def test_dual_stack_mixed_with_reference_host_local(shell, ipam24, tmp_path):
    """Two range sets (IPv4 and IPv6), podnet and host-local concurrently on one
    store: one address per family each, no duplicate, IPv6 files named alike
    (host-local's ::2 is podnet's ::2), last_reserved_ip.0 and .1 shared."""
    if not os.path.exists(HOST_LOCAL):
        pytest.skip("needs containernetworking-plugins")
    root = tmp_path / "data"
    store = root / "testnet"
    netns = tmp_path / "fake-netns"
    netns.touch()
    ranges = "10.244.1.0/24,10.244.1.1,10.244.1.254,10.244.1.1 fd00:10:244:1::/120,fd00:10:244:1::1,fd00:10:244:1::ff,fd00:10:244:1::1"
    conf = {
        "cniVersion": "1.0.0",
        "name": "testnet",
        "type": "host-local",
        "ipam": {
            "type": "host-local",
            "dataDir": str(root),
            "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}], [{"subnet": "fd00:10:244:1::/120", "gateway": "fd00:10:244:1::1"}]],
        },
    }

    def hl(command, cid):
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=str(netns), CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni")
        p = subprocess.Popen([HOST_LOCAL], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdin.write(json.dumps(conf))
        p.stdin.close()
        p.stdin = None
        return p

    procs = []
    for i in range(20):
        procs.append(start(shell, ipam24, store, f"IPAM_RANGES='{ranges}'; ipam_add p{i} eth0"))
        procs.append(hl("ADD", f"h{i}"))
    results = finish(procs)
    assert [r.returncode for r in results] == [0] * 40, [r.stderr for r in results if r.returncode]
    owners = {}
    for r, cid in zip(results, [x for i in range(20) for x in (f"p{i}", f"h{i}")]):
        addrs = [line.split("/")[0] for line in r.stdout.splitlines()] if cid.startswith("p") else [ip["address"].split("/")[0] for ip in json.loads(r.stdout)["ips"]]
        assert len(addrs) == 2 and ":" not in addrs[0] and ":" in addrs[1]
        for a in addrs:
            assert a not in owners, f"{a} handed to {owners.get(a)} and {cid}"
            owners[a] = cid
    files = {p.name: p.read_bytes() for p in store.iterdir() if p.name[0].isdigit() or p.name.startswith("fd")}
    assert files == {a: f"{cid}\r\neth0".encode() for a, cid in owners.items()}
    procs = [start(shell, ipam24, store, f"IPAM_RANGES='{ranges}'; ipam_del p{i} eth0") for i in range(20)] + [hl("DEL", f"h{i}") for i in range(20)]
    assert [r.returncode for r in finish(procs)] == [0] * 40
    assert sorted(p.name for p in store.iterdir()) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
