"""The shell IPAM (templates/plugin/ipam.sh.j2) against a temp-dir store, under
dash and busybox ash, each on the flock path and on the Python fallback path
(PATH without flock): allocation order, the host-local file format, idempotent
ADD, exhaustion, release, GC, input validation and crash leftovers."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from helpers import have
from ipam_support import MODES, ipam_argv, ipam_env, render_ipam, run_ipam, topology_text

pytestmark = pytest.mark.skipif(not have("dash", "busybox", "flock"), reason="needs dash, busybox and flock")


MARK = ".podnet-pair."


def snapshot(store: Path) -> Dict[str, bytes]:
    """The store's files, but the lease markers (see markers)."""
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if not p.name.startswith(MARK)} if store.exists() else {}


def markers(store: Path) -> Dict[str, str]:
    """ADDRESS -> HASH of every lease marker (.podnet-pair.HASH.ADDRESS); each is empty."""
    out = {}
    for p in store.iterdir() if store.exists() else []:
        if p.name.startswith(MARK):
            assert p.read_bytes() == b"", p
            digest, _, address = p.name[len(MARK):].partition(".")
            out[address] = digest
    return out


def pair_hash(cid: str, ifname: str) -> str:
    """FNV-1a of "ID/IFNAME": the number in the pair's veth name and markers."""
    h = 2166136261
    for byte in f"{cid}/{ifname}".encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return str(h)


def leases(store: Path) -> Dict[str, bytes]:
    return {k: v for k, v in snapshot(store).items() if re.fullmatch(r"[0-9.]+", k)}


@pytest.fixture(params=MODES)
def shell(request):
    return request.param


@pytest.fixture
def ipam29(tmp_path):
    """The partial for a /29 node subnet: pod addresses .2-.6 (.1 is the gateway)."""
    return render_ipam(tmp_path, topology_text("10.244.1.0/29", 29))


def call(shell, script, store, what, **kw):
    return run_ipam(shell, script, store, what, **kw)


def test_first_add_takes_the_address_after_the_gateway_in_host_local_format(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    r = call(shell, ipam29, store, "ipam_add c1 eth0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "10.244.1.2/29 10.244.1.1\n", "")
    assert snapshot(store) == {"10.244.1.2": b"c1\r\neth0", "last_reserved_ip.0": b"10.244.1.2", "lock": b""}
    assert markers(store) == {"10.244.1.2": pair_hash("c1", "eth0")} == {"10.244.1.2": "3655569811"}


def test_add_is_round_robin_after_last_reserved(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    got = [call(shell, ipam29, store, f"ipam_add c{i} eth0").stdout for i in range(3)]
    assert got == [f"10.244.1.{n}/29 10.244.1.1\n" for n in (2, 3, 4)]
    assert call(shell, ipam29, store, "ipam_del c0 eth0").returncode == 0
    # .2 is free again, but round robin continues after the last reserved (.4)
    assert call(shell, ipam29, store, "ipam_add c3 eth0").stdout == "10.244.1.5/29 10.244.1.1\n"
    assert call(shell, ipam29, store, "ipam_add c4 eth0").stdout == "10.244.1.6/29 10.244.1.1\n"
    # wraps to the range's start
    assert call(shell, ipam29, store, "ipam_add c5 eth0").stdout == "10.244.1.2/29 10.244.1.1\n"


@pytest.mark.parametrize("last,expected", [("10.244.1.6", 2), ("10.244.1.3", 4), ("10.9.9.9", 2), ("garbage", 2), ("", 2), ("10.244.1.1", 2)])
def test_last_reserved_ip_is_honoured_only_inside_the_range(shell, ipam29, tmp_path, last, expected):
    store = tmp_path / "store"
    store.mkdir()
    (store / "last_reserved_ip.0").write_text(last)
    assert call(shell, ipam29, store, "ipam_add c1 eth0").stdout == f"10.244.1.{expected}/29 10.244.1.1\n"


@pytest.mark.parametrize("last", ["10.244.1.3", "10.9.9.9", "", "10.244.1.3\n", "10.244.1.3\r\n", "10.244.100.100", "garbage that is longer than an address"])
def test_last_reserved_ip_holds_exactly_the_new_address(shell, ipam29, tmp_path, last):
    """The shell rewrites last_reserved_ip in place when the new address is at least
    as long as the file (ext4 writes a truncated file out to disk), else truncates
    it: either way the file holds the address and nothing else, as host-local
    writes it."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "last_reserved_ip.0").write_text(last)
    r = call(shell, ipam29, store, "ipam_add c1 eth0")
    assert r.returncode == 0, r
    address = r.stdout.split("/")[0]
    assert (store / "last_reserved_ip.0").read_bytes() == address.encode()


def test_second_add_of_the_same_pair_returns_its_lease(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    first = call(shell, ipam29, store, "ipam_add c1 eth0").stdout
    before = snapshot(store), markers(store)
    again = call(shell, ipam29, store, "ipam_add c1 eth0")
    assert (again.returncode, again.stdout) == (0, first)
    assert (snapshot(store), markers(store)) == before
    # another interface of the same container is another attachment
    assert call(shell, ipam29, store, "ipam_add c1 net1").stdout == "10.244.1.3/29 10.244.1.1\n"


def test_markers_follow_the_leases(shell, ipam29, tmp_path):
    """Each lease podnet takes gets an empty marker naming the pair's hash; DEL and
    GC remove the markers of what they release."""
    store = tmp_path / "store"
    for cid in ("c1", "c2", "c3"):
        assert call(shell, ipam29, store, f"ipam_add {cid} eth0").returncode == 0
    assert markers(store) == {"10.244.1.2": pair_hash("c1", "eth0"), "10.244.1.3": pair_hash("c2", "eth0"), "10.244.1.4": pair_hash("c3", "eth0")}
    assert call(shell, ipam29, store, "ipam_del c1 eth0").returncode == 0
    assert markers(store) == {"10.244.1.3": pair_hash("c2", "eth0"), "10.244.1.4": pair_hash("c3", "eth0")}
    assert call(shell, ipam29, store, "ipam_gc", input="c3 eth0\n").returncode == 0
    assert sorted(leases(store)) == ["10.244.1.4"]
    assert markers(store) == {"10.244.1.4": pair_hash("c3", "eth0")}
    assert call(shell, ipam29, store, "ipam_gc", input="").returncode == 0
    assert (leases(store), markers(store)) == ({}, {})


def test_add_finds_the_pairs_lease_by_its_marker_only(shell, ipam29, tmp_path):
    """A lease of the pair without a marker (as host-local writes it) is not
    looked for: ADD takes a new address. DEL reads every lease and releases both."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "10.244.1.2").write_bytes(b"c1\r\neth0")
    assert call(shell, ipam29, store, "ipam_get c1 eth0").stdout == "10.244.1.2/29 10.244.1.1\n"  # no marker: read them all
    assert call(shell, ipam29, store, "ipam_add c1 eth0").stdout == "10.244.1.3/29 10.244.1.1\n"
    assert markers(store) == {"10.244.1.3": pair_hash("c1", "eth0")}
    assert call(shell, ipam29, store, "ipam_add c1 eth0").stdout == "10.244.1.3/29 10.244.1.1\n"
    assert call(shell, ipam29, store, "ipam_get c1 eth0").stdout == "10.244.1.3/29 10.244.1.1\n"  # the marked one
    assert call(shell, ipam29, store, "ipam_del c1 eth0").returncode == 0
    assert (leases(store), markers(store)) == ({}, {})


def test_markers_naming_no_lease_of_the_pair_are_ignored(shell, ipam29, tmp_path):
    """A marker whose lease is gone (its writer killed before creating it) or now
    names another pair (another pair of the same hash, or a lease released by
    host-local and taken again) is not the pair's lease. DEL removes the pair's
    markers whose lease is gone and keeps the others."""
    store = tmp_path / "store"
    store.mkdir()
    h = pair_hash("c1", "eth0")
    (store / "10.244.1.2").write_bytes(b"c2\r\neth0")
    for address in ("10.244.1.2", "10.244.1.5"):
        (store / f"{MARK}{h}.{address}").write_bytes(b"")
    (store / f"{MARK}{h}.not-an-address").write_bytes(b"")
    assert call(shell, ipam29, store, "ipam_add c1 eth0").stdout == "10.244.1.3/29 10.244.1.1\n"
    assert call(shell, ipam29, store, "ipam_get c1 eth0").stdout == "10.244.1.3/29 10.244.1.1\n"
    assert call(shell, ipam29, store, "ipam_del c1 eth0").returncode == 0
    assert leases(store) == {"10.244.1.2": b"c2\r\neth0"}
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(MARK)) == [f"{MARK}{h}.10.244.1.2", f"{MARK}{h}.not-an-address"]
    # once c2's lease goes, no marker may name its address, whosever it is
    assert call(shell, ipam29, store, "ipam_del c2 eth0").returncode == 0
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(MARK)) == [f"{MARK}{h}.not-an-address"]


def test_a_marker_a_killed_add_left_goes_with_the_lease_of_its_address(shell, ipam29, tmp_path):
    """An ADD killed between its marker and its lease leaves the marker; another
    pair then takes that address. Releasing that lease (DEL, or GC) removes both
    pairs' markers of it."""
    store = tmp_path / "store"
    store.mkdir()
    (store / f"{MARK}{pair_hash('c1', 'eth0')}.10.244.1.2").write_bytes(b"")
    assert call(shell, ipam29, store, "ipam_add c2 eth0").stdout == "10.244.1.2/29 10.244.1.1\n"
    assert call(shell, ipam29, store, "ipam_add c3 eth0").stdout == "10.244.1.3/29 10.244.1.1\n"
    names = lambda: sorted(p.name for p in store.iterdir() if p.name.startswith(MARK))  # noqa: E731
    assert names() == sorted(f"{MARK}{pair_hash(c, 'eth0')}.10.244.1.{n}" for c, n in (("c1", 2), ("c2", 2), ("c3", 3)))
    assert call(shell, ipam29, store, "ipam_del c2 eth0").returncode == 0
    assert markers(store) == {"10.244.1.3": pair_hash("c3", "eth0")}
    (store / f"{MARK}{pair_hash('c1', 'eth0')}.10.244.1.3").write_bytes(b"")
    assert call(shell, ipam29, store, "ipam_gc", input="").returncode == 0
    assert (leases(store), markers(store)) == ({}, {})


def test_a_retried_add_takes_the_address_its_killed_attempt_marked(shell, ipam29, tmp_path):
    """An ADD killed between its marker and its lease, retried for the same pair
    without a DEL: the marker exists already, which is as good as a new one (it once
    ended dash and busybox ash: a failed redirection of `:`, a special built-in)."""
    store = tmp_path / "store"
    store.mkdir()
    (store / f"{MARK}{pair_hash('c1', 'eth0')}.10.244.1.2").write_bytes(b"")
    r = call(shell, ipam29, store, "ipam_add c1 eth0 && echo survived")
    assert (r.returncode, r.stdout) == (0, "10.244.1.2/29 10.244.1.1\nsurvived\n"), r.stderr
    assert leases(store) == {"10.244.1.2": b"c1\r\neth0"}
    assert markers(store) == {"10.244.1.2": pair_hash("c1", "eth0")}


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_give_back_removes_the_lease_and_its_marker(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    assert call(shell, ipam29, store, "ipam_add c0 eth0").returncode == 0
    r = call(shell, ipam29, store, "ipam_add c1 eth0 >/dev/null && ipam_give_back c1 eth0")
    assert r.returncode == 0, r.stderr
    assert sorted(leases(store)) == ["10.244.1.2"]
    assert markers(store) == {"10.244.1.2": pair_hash("c0", "eth0")}


def test_full_pool_returns_2_and_takes_nothing(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    for i in range(5):
        assert call(shell, ipam29, store, f"ipam_add c{i} eth0").returncode == 0
    assert sorted(leases(store)) == [f"10.244.1.{n}" for n in range(2, 7)]
    before = snapshot(store), markers(store)
    r = call(shell, ipam29, store, "ipam_add c9 eth0")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "no free address left in 10.244.1.0/29" in r.stderr
    assert (snapshot(store), markers(store)) == before
    # the pairs that hold a lease still get it
    assert call(shell, ipam29, store, "ipam_add c4 eth0").returncode == 0


def test_addresses_leased_by_others_are_skipped(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "10.244.1.2").write_bytes(b"other\r\neth0")
    (store / "10.244.1.3").write_bytes(b"legacy-owner")
    assert call(shell, ipam29, store, "ipam_add c1 eth0").stdout == "10.244.1.4/29 10.244.1.1\n"


def test_empty_lease_file_left_by_a_crashed_writer_is_reclaimed(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "10.244.1.2").write_bytes(b"")
    assert call(shell, ipam29, store, "ipam_add c1 eth0").stdout == "10.244.1.2/29 10.244.1.1\n"
    assert (store / "10.244.1.2").read_bytes() == b"c1\r\neth0"


def test_range_start_and_end_are_honoured(shell, tmp_path):
    script = render_ipam(tmp_path, topology_text(extra="  rangeStart: 10\n  rangeEnd: 12\n"))
    store = tmp_path / "store"
    got = [call(shell, script, store, f"ipam_add c{i} eth0") for i in range(4)]
    assert [g.stdout for g in got[:3]] == [f"10.244.1.{n}/24 10.244.1.1\n" for n in (10, 11, 12)]
    assert got[3].returncode == 2


def test_get_prints_the_lease_or_nothing(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    assert call(shell, ipam29, store, "ipam_get c1 eth0").stdout == ""
    call(shell, ipam29, store, "ipam_add c1 eth0")
    call(shell, ipam29, store, "ipam_add c2 eth0")
    r = call(shell, ipam29, store, "ipam_get c2 eth0")
    assert (r.returncode, r.stdout) == (0, "10.244.1.3/29 10.244.1.1\n")
    assert call(shell, ipam29, store, "ipam_get c2 eth1").stdout == ""


def test_del_releases_only_the_pair(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    for what in ("ipam_add c1 eth0", "ipam_add c1 net1", "ipam_add c2 eth0"):
        call(shell, ipam29, store, what)
    r = call(shell, ipam29, store, "ipam_del c1 eth0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert leases(store) == {"10.244.1.3": b"c1\r\nnet1", "10.244.1.4": b"c2\r\neth0"}
    # tolerant: again, and for a pair that never had a lease
    assert call(shell, ipam29, store, "ipam_del c1 eth0").returncode == 0
    assert call(shell, ipam29, store, "ipam_del nobody eth0").returncode == 0
    assert len(leases(store)) == 2


def test_del_releases_legacy_id_only_files_when_the_pair_has_none(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "10.244.1.2").write_bytes(b"c1")
    (store / "10.244.1.3").write_bytes(b"c1\r\n")
    (store / "10.244.1.4").write_bytes(b"c10")
    assert call(shell, ipam29, store, "ipam_del c1 eth0").returncode == 0
    assert leases(store) == {"10.244.1.4": b"c10"}


def test_del_keeps_legacy_files_when_the_pair_has_a_lease(shell, ipam29, tmp_path):
    """Like host-local: the ID-only files are a fallback for pairs without a lease."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "10.244.1.2").write_bytes(b"c1")
    (store / "10.244.1.5").write_bytes(b"c1\r\neth0")
    call(shell, ipam29, store, "ipam_del c1 eth0")
    assert leases(store) == {"10.244.1.2": b"c1"}


def test_del_removes_empty_lease_files_of_killed_writers(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    call(shell, ipam29, store, "ipam_add c2 eth0")
    (store / "10.244.1.5").write_bytes(b"")
    assert call(shell, ipam29, store, "ipam_del c1 eth0").returncode == 0
    assert leases(store) == {"10.244.1.2": b"c2\r\neth0"}


def test_lease_files_are_created_with_o_excl_in_one_write(ipam29, tmp_path):
    """The exact system calls that create a lease: an exclusive create, then
    the whole content in a single write(2)."""
    if not have("strace"):
        pytest.skip("needs strace")
    store = tmp_path / "store"
    store.mkdir()
    trace = tmp_path / "trace"
    prog = f'. "{ipam29}"; IPAM_STORE="{store}"; ipam_add c1 eth0'
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,write", "-o", str(trace), "dash", "-c", prog], capture_output=True, text=True)
    assert r.returncode == 0
    lines = trace.read_text().splitlines()
    opened = [i for i, line in enumerate(lines) if '/store/10.244.1.2"' in line]
    assert len(opened) == 1 and "O_WRONLY|O_CREAT|O_EXCL" in lines[opened[0]], lines
    # the shell moves the descriptor to 1 for printf: take the writes up to the next open
    after = lines[opened[0] + 1:]
    end = next((i for i, line in enumerate(after) if "openat(" in line), len(after))
    writes = [line for line in after[:end] if " write(" in line]
    assert len(writes) == 1 and re.search(r'write\(1, "c1\\r\\neth0", 8\)\s+= 8$', writes[0]), writes


def test_del_removes_temp_files_of_killed_writers(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / ".podnet-lease.4242").write_bytes(b"c1\r\neth0")
    call(shell, ipam29, store, "ipam_del c1 eth0")
    assert not (store / ".podnet-lease.4242").exists()


def test_gc_releases_every_lease_not_listed(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    for what in ("ipam_add c1 eth0", "ipam_add c1 net1", "ipam_add c2 eth0"):
        call(shell, ipam29, store, what)
    (store / "10.244.1.5").write_bytes(b"c3")  # legacy, ID listed: kept
    (store / "10.244.1.6").write_bytes(b"")  # crashed writer: garbage
    (store / ".podnet-lease.77").write_bytes(b"x\r\neth0")
    r = call(shell, ipam29, store, "ipam_gc", input="c1 net1\nc3 eth0\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert leases(store) == {"10.244.1.3": b"c1\r\nnet1", "10.244.1.5": b"c3"}
    assert sorted(snapshot(store)) == ["10.244.1.3", "10.244.1.5", "last_reserved_ip.0", "lock"]


def test_gc_leaves_a_directory_named_like_an_address(shell, ipam29, tmp_path):
    """Not a lease (nor anything host-local wrote): GC keeps it and releases the rest,
    as the Python fallback does, instead of failing on it."""
    store = tmp_path / "store"
    call(shell, ipam29, store, "ipam_add c1 eth0")
    (store / "10.244.1.5").mkdir()
    r = call(shell, ipam29, store, "ipam_gc", input="")
    assert (r.returncode, r.stderr) == (0, "")
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(MARK)) == ["10.244.1.5", "last_reserved_ip.0", "lock"]


@pytest.mark.parametrize("entry", ["line break", "fifo", "socket"])
def test_what_names_nobody_is_kept_and_never_waited_on(shell, ipam29, tmp_path, entry):
    """A file named like an address holding only a line break, a FIFO or a socket:
    no lease, no free address. ADD steps over it, DEL and GC keep it, on every path;
    nothing waits on the FIFO (the fallback used to, holding the store's lock)."""
    import socket

    store = tmp_path / "store"
    store.mkdir()
    odd = store / "10.244.1.2"
    if entry == "line break":
        odd.write_bytes(b"\n")
    elif entry == "fifo":
        os.mkfifo(odd)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(odd))
        sock.close()
    r = call(shell, ipam29, store, "ipam_add c1 eth0", timeout=20)
    assert (r.returncode, r.stdout, r.stderr) == (0, "10.244.1.3/29 10.244.1.1\n", "")
    assert call(shell, ipam29, store, "ipam_del c9 eth0", timeout=20).returncode == 0
    r = call(shell, ipam29, store, "ipam_gc", input="", timeout=20)
    assert (r.returncode, r.stderr) == (0, "")
    assert sorted(p.name for p in store.iterdir() if re.fullmatch(r"[0-9.]+", p.name)) == ["10.244.1.2"]  # (c1's released)


def test_add_get_del_with_stdin_closed(shell, ipam29, tmp_path):
    """Only GC reads standard input: the fallback used to fail every operation,
    with a traceback, when it was closed."""
    store = tmp_path / "store"
    r = call(shell, ipam29, store, "ipam_add c1 eth0 <&-")
    assert (r.returncode, r.stdout, r.stderr) == (0, "10.244.1.2/29 10.244.1.1\n", "")
    assert call(shell, ipam29, store, "ipam_get c1 eth0 <&-").stdout == r.stdout
    assert call(shell, ipam29, store, "ipam_del c1 eth0 <&-").returncode == 0 and leases(store) == {}


def test_gc_with_an_empty_list_releases_everything(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    call(shell, ipam29, store, "ipam_add c1 eth0")
    assert call(shell, ipam29, store, "ipam_gc", input="").returncode == 0
    assert leases(store) == {}


@pytest.mark.parametrize("line", ["c1", "c1 eth0 extra", "-bad eth0", "c1 a/b", "c1 eth0\r"])
def test_gc_refuses_a_malformed_list_and_releases_nothing(shell, ipam29, tmp_path, line):
    store = tmp_path / "store"
    call(shell, ipam29, store, "ipam_add c1 eth0")
    call(shell, ipam29, store, "ipam_add c2 eth0")
    before = snapshot(store)
    r = call(shell, ipam29, store, "ipam_gc", input=f"c2 eth0\n{line}\n")
    assert r.returncode == 1
    assert "nothing released" in r.stderr
    assert snapshot(store) == before


@pytest.mark.parametrize("args", ["'' eth0", "-x eth0", "'a b' eth0", "'c1;x' eth0", "c1 ''", "c1 a/b", "c1 a:b", "c1 .", "c1 ..", "c1 'a b'", "c1 abcdefghijklmnop", "c1", "c1 eth0 x"])
def test_invalid_arguments_are_refused_before_touching_the_store(shell, ipam29, tmp_path, args):
    store = tmp_path / "store"
    for fn in ("ipam_add", "ipam_get", "ipam_del"):
        r = call(shell, ipam29, store, f"{fn} {args}")
        assert r.returncode == 1, (fn, args)
        assert r.stdout == ""
        assert r.stderr.startswith("ipam: ")
    assert not store.exists()


def test_lock_is_the_store_lock_file_and_held_while_allocating(shell, ipam29, tmp_path):
    """While another process holds flock(2) on STORE/lock, ADD waits (on both
    paths: flock(1) and the Python fallback); it finishes once the holder lets go."""
    store = tmp_path / "store"
    store.mkdir()
    holder = subprocess.Popen(["flock", str(store / "lock"), "sh", "-c", "read x"], stdin=subprocess.PIPE, text=True)
    adder = None
    try:
        for _ in range(1000):  # wait until the holder has the lock
            if subprocess.run(["flock", "-n", str(store / "lock"), "true"]).returncode != 0:
                break
        adder = subprocess.Popen(ipam_argv(shell, "ipam_add c1 eth0"), env=ipam_env(shell, ipam29, store), stdout=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            adder.wait(timeout=1)
        assert leases(store) == {}
        holder.communicate("go\n", timeout=10)
        assert adder.communicate(timeout=30)[0] == "10.244.1.2/29 10.244.1.1\n"
    finally:
        for p in (holder, adder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_noflock_path_runs_the_fallback_and_says_what_to_install_without_it(ipam29, tmp_path):
    store = tmp_path / "store"
    (tmp_path / "podnet-ipam.py").rename(tmp_path / "moved.py")
    r = run_ipam("dash-noflock", ipam29, store, "ipam_add c1 eth0")
    assert r.returncode == 1
    assert "install util-linux" in r.stderr
    assert not store.exists()


ADDR = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)$")


@pytest.mark.parametrize("shell", ["dash", "busybox"])
@pytest.mark.parametrize("text", ["0.0.0.0", "255.255.255.255", "10.244.1.2", "1.2.3.4", "192.168.255.0"])
def test_ip_int_round_trip(shell, ipam29, tmp_path, text):
    r = call(shell, ipam29, tmp_path, f'ipam_ip2int {text} && echo "$IPAM_INT" && ipam_int2ip "$IPAM_INT" && echo "$IPAM_IP"')
    a, b, c, d = map(int, text.split("."))
    assert r.stdout.split() == [str(a << 24 | b << 16 | c << 8 | d), text]


@pytest.mark.parametrize("shell", ["dash", "busybox"])
@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "1..2.3", ".1.2.3", "1.2.3.", "256.1.1.1", "01.2.3.4", "1.2.3.-4", "a.b.c.d", "1.2.3.4/24", "1.2.3.1000"])
def test_ip2int_refuses_what_is_not_a_dotted_quad(shell, ipam29, tmp_path, text):
    assert call(shell, ipam29, tmp_path, f"ipam_ip2int '{text}'").returncode == 1


def test_a_16_subnet_allocates_without_a_process_per_candidate(ipam29, tmp_path):
    """A /16 node subnet with 1,000 addresses taken after last_reserved_ip: the
    next ADD starts one process, flock -- never python, nothing per candidate, and
    no grep: it finds what the pair holds by its marker, not by reading the leases."""
    if not have("strace"):
        pytest.skip("needs strace")
    script = render_ipam(tmp_path, topology_text("10.244.0.0/16", 16, pod_cidr="10.244.0.0/16"))
    store = tmp_path / "store"
    store.mkdir()
    for i in range(2, 1002):
        (store / f"10.244.{i >> 8}.{i & 255}").write_bytes(f"x{i}\r\neth0".encode())
    (store / "last_reserved_ip.0").write_text("10.244.0.1")
    trace = tmp_path / "trace"
    prog = f'. "{script}"; IPAM_STORE="{store}"; ipam_add c1 eth0'
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "dash", "-c", prog], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "10.244.3.234/16 10.244.0.1\n")  # 1002 = 3*256 + 234
    execs = [re.search(r'execve\("([^"]+)"', line).group(1) for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    assert [os.path.basename(e) for e in execs[1:]] == ["flock"], execs
    # CHECK's lookup too, while the markers cover every range set
    prog = f'. "{script}"; IPAM_STORE="{store}"; ipam_get c1 eth0'
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "dash", "-c", prog], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "10.244.3.234/16 10.244.0.1\n")
    execs = [re.search(r'execve\("([^"]+)"', line).group(1) for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    assert [os.path.basename(e) for e in execs[1:]] == ["flock"], execs


@pytest.mark.parametrize("leased", [0, 32])
def test_a_small_store_adds_with_flock_as_the_only_process(tmp_path, leased):
    if not have("strace"):
        pytest.skip("needs strace")
    script = render_ipam(tmp_path, topology_text())
    store = tmp_path / "store"
    store.mkdir()
    for i in range(2, 2 + leased):
        (store / f"10.244.1.{i}").write_bytes(f"x{i}\r\neth0".encode())
    trace = tmp_path / "trace"
    prog = f'. "{script}"; IPAM_STORE="{store}"; ipam_add c1 eth0'
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "dash", "-c", prog], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, f"10.244.1.{2 + leased}/24 10.244.1.1\n")
    execs = [re.search(r'execve\("([^"]+)"', line).group(1) for line in trace.read_text().splitlines() if "execve(" in line and "= 0" in line]
    assert [os.path.basename(e) for e in execs[1:]] == ["flock"], execs


@pytest.mark.parametrize("shell", ["dash-grep", "busybox-grep"])
def test_grep_search_matches_whole_ids_only(shell, ipam29, tmp_path):
    """The search escapes '.', and matches whole lines: a.b is not aXb, nor a.bc."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "10.244.1.2").write_bytes(b"aXb\r\neth0")
    (store / "10.244.1.3").write_bytes(b"a.bc\r\neth0")
    (store / "10.244.1.4").write_bytes(b"xa.b\r\neth0")
    assert call(shell, ipam29, store, "ipam_get a.b eth0").stdout == ""
    assert call(shell, ipam29, store, "ipam_add a.b eth0").stdout == "10.244.1.5/29 10.244.1.1\n"
    assert call(shell, ipam29, store, "ipam_get a.b eth0").stdout == "10.244.1.5/29 10.244.1.1\n"
    call(shell, ipam29, store, "ipam_del a.b eth0")
    assert sorted(leases(store)) == ["10.244.1.2", "10.244.1.3", "10.244.1.4"]


def test_rendered_partial_is_shellcheck_clean(tmp_path):
    if not have("shellcheck"):
        pytest.skip("needs shellcheck")
    for i, extra in enumerate(["", "  rangeStart: 5\n  rangeEnd: 100\n"]):
        d = tmp_path / str(i)
        d.mkdir()
        script = render_ipam(d, topology_text(extra=extra))
        r = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def test_an_unusable_lock_is_a_plain_failure_never_exhaustion(shell, ipam29, tmp_path):
    """A shell's redirection error has status 2, which must not read as "pool
    exhausted": the caller would return the wrong CNI error."""
    store = tmp_path / "store"
    (store / "lock").mkdir(parents=True)
    r = call(shell, ipam29, store, "ipam_add c1 eth0")
    assert (r.returncode, r.stdout) == (1, "")
    assert "lock" in r.stderr
    assert [p.name for p in store.iterdir()] == ["lock"]


@pytest.mark.parametrize("shell", ["dash", "busybox"])
@pytest.mark.parametrize("ranges", ["fd00:1::/48,fd00:1::2,fd00:1::ff,fd00:1::1", "fd00:1::/64,fd00:2::2,fd00:1::ff,fd00:1::1", "fd00:1::/64,fd00:1::2,fd00:1::ff", "fd00:1:::/64,fd00:1::2,fd00:1::ff,fd00:1::1", "10.244.1.0/33,10.244.1.2,10.244.1.6,10.244.1.1", "10.244.1.0/29,10.244.1.2,10.244.1.6", "garbage"])
def test_a_range_set_the_shell_cannot_handle_is_a_named_error(shell, ipam29, tmp_path, ranges):
    store = tmp_path / "store"
    r = call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_add c1 eth0")
    assert (r.returncode, r.stdout) == (1, "")
    assert f"range set '{ranges}'" in r.stderr
    assert leases(store) == {}


# --- IPv6 range sets (dual-stack): addresses named as host-local names them ---

V6_126 = "fd00:1::/126,fd00:1::1,fd00:1::3,fd00:1::1"
V6_64 = "fd00:10:244:1::/64,fd00:10:244:1::1,fd00:10:244:1:ffff:ffff:ffff:ffff,fd00:10:244:1::1"


def v6_samples():
    import random

    rng = random.Random(6)
    out = ["::", "::1", "1::", "fd00:1::2", "2001:db8:0:0:1:0:0:1", "0:0:1:0:0:0:0:1", "1:0:0:2:0:0:0:3", "FD00:0001::0010", "fd00::1:ffff:ffff:ffff:ffff", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "0:1:0:1:0:1:0:1"]
    for _ in range(40):
        out.append(":".join(rng.choice(["0", "0", "0", "ffff", "a", "1234", "10"]) for _ in range(8)))
    return out


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_ipv6_text_is_parsed_and_formatted_like_go_and_python(shell, ipam29, tmp_path):
    import ipaddress

    samples = v6_samples()
    prog = "; ".join(f"ipam_ip6parse '{a}' && ipam_ip6fmt \"$IPAM_P\" \"$IPAM_H\" \"$IPAM_L\" && echo \"$IPAM_IP\"" for a in samples)
    r = call(shell, ipam29, tmp_path, prog)
    assert r.stdout.split() == [str(ipaddress.IPv6Address(a)) for a in samples]


@pytest.mark.parametrize("shell", ["dash", "busybox"])
@pytest.mark.parametrize("text", ["", ":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::", "g::1", "::ffff:1.2.3.4", ":1::", "1:2:3:4:5:6:7:8::"])
def test_ip6parse_refuses_what_is_not_an_ipv6_address(shell, ipam29, tmp_path, text):
    assert call(shell, ipam29, tmp_path, f"ipam_ip6parse '{text}'").returncode == 1


def test_ipv6_range_round_robin_and_exhaustion(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    got = [call(shell, ipam29, store, f"IPAM_RANGES='{V6_126}'; ipam_add c{i} eth0") for i in range(3)]
    assert [g.stdout for g in got[:2]] == ["fd00:1::2/126 fd00:1::1\n", "fd00:1::3/126 fd00:1::1\n"]
    assert got[2].returncode == 2 and "no free address left in fd00:1::/126" in got[2].stderr
    assert leases6(store) == {"fd00:1::2": b"c0\r\neth0", "fd00:1::3": b"c1\r\neth0"}
    assert (store / "last_reserved_ip.0").read_bytes() == b"fd00:1::3"
    assert call(shell, ipam29, store, f"IPAM_RANGES='{V6_126}'; ipam_get c1 eth0").stdout == "fd00:1::3/126 fd00:1::1\n"
    assert call(shell, ipam29, store, f"IPAM_RANGES='{V6_126}'; ipam_add c1 eth0").stdout == "fd00:1::3/126 fd00:1::1\n"
    call(shell, ipam29, store, f"IPAM_RANGES='{V6_126}'; ipam_del c0 eth0")
    assert call(shell, ipam29, store, f"IPAM_RANGES='{V6_126}'; ipam_add c3 eth0").stdout == "fd00:1::2/126 fd00:1::1\n"


@pytest.mark.parametrize("last,expected", [("fd00:10:244:1::ffff:ffff", "fd00:10:244:1:0:1::"), ("fd00:10:244:1:ffff:ffff:ffff:ffff", "fd00:10:244:1::2"), ("fd00:99::5", "fd00:10:244:1::2"), ("junk", "fd00:10:244:1::2")])
def test_ipv6_last_reserved_carries_and_wraps(shell, ipam29, tmp_path, last, expected):
    store = tmp_path / "store"
    store.mkdir()
    (store / "last_reserved_ip.0").write_text(last)
    r = call(shell, ipam29, store, f"IPAM_RANGES='{V6_64}'; ipam_add c1 eth0")
    assert (r.returncode, r.stdout) == (0, f"{expected}/64 fd00:10:244:1::1\n")


def test_dual_stack_takes_and_releases_one_address_per_family(shell, ipam29, tmp_path):
    store = tmp_path / "store"
    ranges = "10.244.1.0/29,10.244.1.1,10.244.1.6,10.244.1.1 " + V6_64
    r = call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_add c1 eth0")
    assert (r.returncode, r.stdout) == (0, "10.244.1.2/29 10.244.1.1\nfd00:10:244:1::2/64 fd00:10:244:1::1\n")
    assert (store / "last_reserved_ip.1").read_bytes() == b"fd00:10:244:1::2"
    assert call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_get c1 eth0").stdout == r.stdout
    assert call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_add c1 eth0").stdout == r.stdout
    # the IPv6 family full: the IPv4 address this ADD took is given back
    ranges = "10.244.1.0/29,10.244.1.1,10.244.1.6,10.244.1.1 " + V6_126
    assert call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_add x1 eth0").returncode == 0
    assert call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_add x2 eth0").returncode == 0
    before = snapshot(store)
    full = call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_add c9 eth0")
    assert full.returncode == 2
    assert "no free address left in fd00:1::/126" in full.stderr
    # last_reserved_ip.0 keeps the advance, as host-local's does, on every path
    assert snapshot(store) == dict(before, **{"last_reserved_ip.0": b"10.244.1.5"})
    call(shell, ipam29, store, f"IPAM_RANGES='{ranges}'; ipam_del c1 eth0")
    assert not any(v == b"c1\r\neth0" for v in snapshot(store).values())


def leases6(store: Path) -> Dict[str, bytes]:
    return {k: v for k, v in snapshot(store).items() if ":" in k}


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_a_full_store_fails_the_add_and_leaves_nothing(shell, ipam29, tmp_path):
    """A lease that cannot be written (its file system full: created, not written) is a
    failure (1), not an exhausted pool (2), and leaves no empty lease (which host-local
    too would take for a taken address) and no marker; no other address is tried. (A
    read-only store fails earlier, at its lock.)"""
    store = tmp_path / "store"
    store.mkdir()
    script = (f'mount -t tmpfs -o size=16k none "{store}" && : >"{store}/lock" && printf 10.244.1.6 >"{store}/last_reserved_ip.0" && '
              f'{{ dd if=/dev/zero of="{store}/fill" bs=4k count=64 2>/dev/null; : ; }} && {{ "$@"; rc=$?; ls -A "{store}" >&2; exit $rc; }}')
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *ipam_argv(shell, "ipam_add c1 eth0")], capture_output=True, text=True,
                       env=ipam_env(shell, ipam29, store), timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "cannot write the lease" in r.stderr and "no free address" not in r.stderr, r.stderr
    assert sorted(r.stderr.splitlines()[-3:]) == ["fill", "last_reserved_ip.0", "lock"], r.stderr


def test_an_unwritable_last_reserved_ip_only_warns(shell, ipam29, tmp_path):
    """last_reserved_ip.0 that cannot be written (here a directory): the lease stands
    and the ADD succeeds with a warning, on every path (the Python fallback failed the
    ADD and kept the lease)."""
    store = tmp_path / "store"
    (store / "last_reserved_ip.0").mkdir(parents=True)
    r = call(shell, ipam29, store, "ipam_add c1 eth0")
    assert (r.returncode, r.stdout) == (0, "10.244.1.2/29 10.244.1.1\n"), r.stderr
    assert "warning: cannot record 10.244.1.2" in r.stderr
    assert sorted(p.name for p in store.iterdir() if re.fullmatch(r"[0-9.]+", p.name)) == ["10.244.1.2"]
    assert (store / "10.244.1.2").read_bytes() == b"c1\r\neth0"


@pytest.mark.parametrize("name", [b"eth\xff", b"eth\xc2\xa0"])
def test_an_interface_name_not_utf8_is_leased_as_its_bytes(shell, ipam29, tmp_path, name):
    """The kernel takes any bytes in a name but '/', ':' and white space, and so do
    the reference's plugins: the lease holds the name's bytes, on the flock path and
    in the Python fallback alike (its check is on bytes, whatever the locale: a
    no-break space is no white space to the shell either), and GET, GC and DEL find
    it by them."""
    store = tmp_path / "store"
    ifname = {"IFN": os.fsdecode(name)}
    r = call(shell, ipam29, store, 'ipam_add c1 "$IFN"', env=ifname)
    assert (r.returncode, r.stderr) == (0, "")
    assert (store / "10.244.1.2").read_bytes() == b"c1\r\n" + name
    assert call(shell, ipam29, store, 'ipam_get c1 "$IFN"', env=ifname).stdout == r.stdout
    gc = call(shell, ipam29, store, 'printf "c1 %s\\n" "$IFN" | ipam_gc', env=ifname)
    assert gc.returncode == 0 and (store / "10.244.1.2").exists(), gc.stderr
    r = call(shell, ipam29, store, 'ipam_del c1 "$IFN"', env=ifname)
    assert r.returncode == 0 and not (store / "10.244.1.2").exists(), r.stderr
