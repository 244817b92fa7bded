"""The Python fallback (nodes/<node>/podnet-ipam.py): the allocator against the
in-memory store, the disk store on a temp dir, and its command line."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipam_support import render_ipam, topology_text

GW = "10.244.1.1"


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    """The rendered podnet-ipam.py, imported as a module."""
    d = tmp_path_factory.mktemp("py")
    render_ipam(d, topology_text("10.244.1.0/29", 29))
    spec = importlib.util.spec_from_file_location("podnet_ipam", d / "podnet-ipam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = d / "podnet-ipam.py"
    return module


def alloc(mod, files=None, ranges=("10.244.1.0/29,10.244.1.2,10.244.1.6,10.244.1.1",)):
    store = mod.MemoryStore(files)
    return mod.Allocator(store, [mod.Range(r) for r in ranges]), store


# --- allocator, in memory ---


def test_allocates_round_robin_skipping_the_gateway(mod):
    a, store = alloc(mod)
    assert [a.add(f"c{i}", "eth0") for i in range(3)] == [[f"10.244.1.{n}/29 {GW}"] for n in (2, 3, 4)]
    assert store.files["10.244.1.2"] == b"c0\r\neth0"
    assert store.files["last_reserved_ip.0"] == b"10.244.1.4"
    a.release("c0", "eth0")
    assert a.add("c3", "eth0") == [f"10.244.1.5/29 {GW}"]
    assert a.add("c4", "eth0") == [f"10.244.1.6/29 {GW}"]
    assert a.add("c5", "eth0") == [f"10.244.1.2/29 {GW}"]


def test_gateway_inside_the_range_is_skipped(mod):
    a, _ = alloc(mod, ranges=("10.244.1.0/29,10.244.1.1,10.244.1.3,10.244.1.2",))
    assert [a.add(f"c{i}", "eth0") for i in range(2)] == [["10.244.1.1/29 10.244.1.2"], ["10.244.1.3/29 10.244.1.2"]]
    with pytest.raises(mod.IpamError):
        a.add("c9", "eth0")


@pytest.mark.parametrize("last,expected", [(b"10.244.1.6", 2), (b"10.244.1.3", 4), (b"10.9.9.9", 2), (b"junk", 2), (b"", 2), (b"fd00::1", 2)])
def test_last_reserved_only_counts_inside_the_range(mod, last, expected):
    a, _ = alloc(mod, {"last_reserved_ip.0": last})
    assert a.add("c1", "eth0") == [f"10.244.1.{expected}/29 {GW}"]


def test_second_add_returns_the_existing_lease(mod):
    a, store = alloc(mod)
    first = a.add("c1", "eth0")
    before = dict(store.files)
    assert a.add("c1", "eth0") == first
    assert store.files == before


def test_exhaustion_raises_status_2_and_takes_nothing(mod):
    a, store = alloc(mod)
    for i in range(5):
        a.add(f"c{i}", "eth0")
    before = dict(store.files)
    with pytest.raises(mod.IpamError) as e:
        a.add("c9", "eth0")
    assert e.value.status == 2
    assert "no free address left in 10.244.1.0/29" in str(e.value)
    assert store.files == before


def test_a_failing_second_range_set_releases_the_first(mod):
    """Two range sets (dual-stack): when the second is full, the address taken in
    the first is given back; last_reserved_ip.0 keeps its advance (host-local's
    and the shell path's behaviour)."""
    ranges = ("10.244.1.0/29,10.244.1.2,10.244.1.6,10.244.1.1", "fd00:1::/126,fd00:1::2,fd00:1::2,fd00:1::1")
    a, store = alloc(mod, ranges=ranges)
    assert a.add("c1", "eth0") == [f"10.244.1.2/29 {GW}", "fd00:1::2/126 fd00:1::1"]
    assert store.files["last_reserved_ip.1"] == b"fd00:1::2"
    before = dict(store.files)
    with pytest.raises(mod.IpamError):
        a.add("c2", "eth0")
    assert store.files == dict(before, **{"last_reserved_ip.0": b"10.244.1.3"})


def test_empty_files_are_reclaimed_and_foreign_leases_skipped(mod):
    a, store = alloc(mod, {"10.244.1.2": b"other\r\neth0", "10.244.1.3": b"", "10.244.1.4": b"strange\ncontent"})
    assert a.add("c1", "eth0") == [f"10.244.1.3/29 {GW}"]
    assert a.add("c2", "eth0") == [f"10.244.1.5/29 {GW}"]


def test_release_by_pair_then_legacy(mod):
    files = {"10.244.1.2": b"c1\r\neth0", "10.244.1.3": b"c1\r\nnet1", "10.244.1.4": b"c1", "10.244.1.5": b"c2"}
    a, store = alloc(mod, files)
    a.release("c1", "eth0")
    assert sorted(store.files) == ["10.244.1.3", "10.244.1.4", "10.244.1.5"]
    a.release("c1", "eth0")  # no pair lease left: the legacy ID-only file goes
    assert sorted(store.files) == ["10.244.1.3", "10.244.1.5"]
    a.release("nobody", "eth0")
    assert sorted(store.files) == ["10.244.1.3", "10.244.1.5"]


def test_get(mod):
    a, _ = alloc(mod, {"10.244.1.5": b"c1\r\neth0", "10.9.9.9": b"c1\r\neth0"})
    assert a.get("c1", "eth0") == [f"10.244.1.5/29 {GW}"]
    assert a.get("c1", "net1") == []


def test_gc(mod):
    files = {
        "10.244.1.2": b"c1\r\neth0",
        "10.244.1.3": b"c1\r\nnet1",
        "10.244.1.4": b"c3",
        "10.244.1.5": b"c4",
        "10.244.1.6": b"",
        "fd00::2": b"c9\r\neth0",
        "10.244.1.7": b"strange\ncontent",
        "last_reserved_ip.0": b"10.244.1.2",
        "lock": b"",
    }
    a, store = alloc(mod, files)
    a.gc({("c1", "net1"), ("c3", "eth0")})
    assert sorted(store.files) == ["10.244.1.3", "10.244.1.4", "10.244.1.7", "last_reserved_ip.0", "lock"]


@pytest.mark.parametrize("content,owner", [(b"c1\r\neth0", "c1 eth0"), (b"c1\r\neth0\r\n", "c1 eth0"), (b"c1", "c1"), (b"c1\n", "c1"), (b"c1\r\n", "c1"), (b"", ""), (b"c1\neth0", None)])
def test_owner_of(mod, content, owner):
    assert mod.owner_of(content) == owner


@pytest.mark.parametrize("spec", ["10.244.1.0/29", "10.244.1.0/29,10.244.1.2,10.244.2.6,10.244.1.1", "10.244.1.0/29,10.244.1.6,10.244.1.2,10.244.1.1", "x,y,z,w"])
def test_bad_range_specs_are_errors(mod, spec):
    with pytest.raises(mod.IpamError):
        mod.Range(spec)


# --- disk store ---


def test_disk_store_creates_exclusively_with_whole_content(mod, tmp_path):
    store = mod.DiskStore(str(tmp_path))
    assert store.create("10.244.1.2", b"c1\r\neth0")
    assert not store.create("10.244.1.2", b"c2\r\neth0")
    assert (tmp_path / "10.244.1.2").read_bytes() == b"c1\r\neth0"
    assert sorted(os.listdir(tmp_path)) == ["10.244.1.2"]  # no temp file left
    store.remove("10.244.1.2")
    store.remove("10.244.1.2")
    assert store.read("10.244.1.2") is None


def test_disk_store_lock_is_flock_on_the_lock_file(mod, tmp_path):
    store = mod.DiskStore(str(tmp_path / "net"))
    with store.locked():
        fd = os.open(str(tmp_path / "net" / "lock"), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(str(tmp_path / "net" / "lock"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released afterwards
    os.close(fd)


def test_run_sweeps_temp_files_and_validates(mod, tmp_path):
    (tmp_path / ".podnet-lease.999").write_bytes(b"x\r\neth0")
    ranges = [mod.Range("10.244.1.0/29,10.244.1.2,10.244.1.6,10.244.1.1")]
    assert mod.run("add", mod.DiskStore(str(tmp_path)), ranges, ["c1", "eth0"], io.StringIO()) == [f"10.244.1.2/29 {GW}"]
    assert sorted(os.listdir(tmp_path)) == [".podnet-pair.3655569811.10.244.1.2", "10.244.1.2", "last_reserved_ip.0", "lock"]
    for args in (["-c", "eth0"], ["c1", "a/b"], ["c1"], ["c1", "x" * 16]):
        with pytest.raises(mod.IpamError):
            mod.run("add", mod.DiskStore(str(tmp_path)), ranges, args, io.StringIO())
    with pytest.raises(mod.IpamError, match="nothing released"):
        mod.run("gc", mod.DiskStore(str(tmp_path)), ranges, [], io.StringIO("c1 eth0 x\n"))
    assert (tmp_path / "10.244.1.2").exists()


# --- command line ---


def cli(mod, *args, input=""):
    return subprocess.run([sys.executable, str(mod.PATH), *args], input=input, capture_output=True, text=True)


def test_cli_exit_statuses(mod, tmp_path):
    base = ["--store", str(tmp_path / "s"), "--ranges", "10.244.1.0/30,10.244.1.2,10.244.1.2,10.244.1.1"]
    r = cli(mod, "add", "c1", "eth0", *base)
    assert (r.returncode, r.stdout, r.stderr) == (0, "10.244.1.2/30 10.244.1.1\n", "")
    r = cli(mod, "add", *base, "c2", "eth0")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "ipam: no free address left in 10.244.1.0/30; release leases with DEL or GC\n"
    assert cli(mod, "frobnicate", *base).returncode == 1  # usage errors are 1, never 2
    assert cli(mod, "add", "c1", "eth0").returncode == 1
    assert cli(mod, "get", "c1", "eth0", *base).stdout == "10.244.1.2/30 10.244.1.1\n"
    assert cli(mod, "gc", *base, input="c1 eth0\n").returncode == 0
    assert cli(mod, "get", "c1", "eth0", *base).stdout == "10.244.1.2/30 10.244.1.1\n"
    assert cli(mod, "del", "c1", "eth0", *base).returncode == 0
    assert cli(mod, "get", "c1", "eth0", *base).stdout == ""


def test_gc_with_stdin_closed_is_one_line(mod, tmp_path):
    base = ["--store", str(tmp_path / "s"), "--ranges", "10.244.1.0/30,10.244.1.2,10.244.1.2,10.244.1.1"]
    r = subprocess.run([sys.executable, str(mod.PATH), "gc", *base], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       preexec_fn=lambda: os.close(0))
    assert (r.returncode, r.stderr) == (1, "ipam: gc: no standard input to read the valid attachments from; nothing released\n")


def test_fallback_is_python_3_8_compatible_source(mod):
    """No syntax newer than 3.8 (the oldest Python the fallback supports)."""
    import ast

    ast.parse(mod.PATH.read_text(), feature_version=(3, 8))


def test_boot_time_gc_as_the_readme_shows_releases_every_lease(mod, tmp_path):
    """README: `podnet-ipam.py gc --store DIR --ranges '' </dev/null` at boot."""
    store = tmp_path / "podnet"
    store.mkdir()
    for name, content in {"10.244.1.2": b"a\r\neth0", "10.244.1.3": b"b", "10.244.1.4": b"", ".podnet-lease.1": b"x"}.items():
        (store / name).write_bytes(content)
    (store / "last_reserved_ip.0").write_bytes(b"10.244.1.4")
    r = subprocess.run([sys.executable, str(mod.PATH), "gc", "--store", str(store), "--ranges", ""], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert sorted(os.listdir(store)) == ["last_reserved_ip.0", "lock"]


CONTENTS = [b"c1\r\neth0", b"c1\r\neth0\r\n", b"c1\r\neth0\n", b"c1", b"c1\n", b"c1\r\n", b"", b"c1\neth0", b"c1\r\neth0\r\nextra", b"c1\t\neth0", b"\r\n", b"\n", b"c1\r\neth\xff"]


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_shell_and_fallback_read_lease_files_alike(mod, tmp_path, shell):
    from ipam_support import shell_cmd

    script = mod.PATH.parent / "ipam.sh"
    for i, content in enumerate(CONTENTS):
        f = tmp_path / f"lease{i}"
        f.write_bytes(content)
        r = subprocess.run([*shell_cmd(shell), "-c", f'. "{script}"; if ipam_read_owner "{f}"; then printf "%s" "$IPAM_OWNER"; else printf "<none>"; fi'], capture_output=True)
        expected = mod.owner_of(content)
        assert os.fsdecode(r.stdout) == ("<none>" if expected is None else expected), content
