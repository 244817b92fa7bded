"""Re-compiling: the local index (OUT/.podnet-index) lets a compile skip rendering
files whose inputs did not change and which nobody touched; anything else is
rendered and compared as without it. Also: identical files are rendered once."""

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from compiler import artifacts, render
from compiler.artifacts import compile_into
from compiler.plan import Artifact, node_files, plan, plan_nodes
from compiler.topology import load_topology
from compiler.write import INDEX, TreeWriter
from helpers import REPO, podnet, write_topology
from test_compile import THREE_NODES, tree

EXAMPLE = REPO / "examples/cluster.yaml"


def compile_counting(monkeypatch, topology: Path, out: Path, check: bool = False):
    """compile_into in this process; returns (changes, the paths rendered)."""
    rendered = []

    def counting(artifact):
        rendered.append(artifact.path)
        return render.render(artifact)

    monkeypatch.setattr(artifacts, "render", counting)
    changes = compile_into(str(out), load_topology(str(topology)), topology.read_bytes(), check=check)
    return changes, rendered


def settle(out: Path) -> None:
    """Dates the index a moment after the files it describes, as it is on a tree of
    any size: on a tiny one it is written in the same clock tick as the files, and
    such entries are in doubt (rendered again) so that an edit in that tick is seen."""
    time.sleep(0.05)
    os.utime(out / INDEX)


def test_recompile_renders_nothing_and_writes_nothing(monkeypatch, tmp_path):
    out = tmp_path / "o"
    changes, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert changes and rendered
    settle(out)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*") if p.is_file()}
    changes, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert changes == [] and rendered == []
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in before} == before
    # the manifest written from the index is the one a full compile writes
    fresh = tmp_path / "fresh"
    compile_counting(monkeypatch, EXAMPLE, fresh)
    assert tree(out) == tree(fresh)


@pytest.mark.parametrize("index_dated_after_edits", [False, True])
def test_touched_files_are_rendered_and_restored(monkeypatch, tmp_path, index_dated_after_edits):
    """Edits after the index was written are in doubt by their ctime alone; with the
    index dated after them (touched, or edits while a compile ran) the ctime,
    inode, size, mtime and mode recorded per file still tell."""
    out, fresh = tmp_path / "o", tmp_path / "fresh"
    compile_counting(monkeypatch, EXAMPLE, fresh)
    compile_counting(monkeypatch, EXAMPLE, out)
    settle(out)
    node = out / "nodes/node1"
    # edited in place, same size, mtime put back: only ctime tells
    script = node / "net-setup.sh"
    st = script.stat()
    data = script.read_bytes()
    script.write_bytes(data.replace(b"set -eu", b"set -xu", 1))
    os.utime(script, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert script.stat().st_size == st.st_size and script.read_bytes() != data
    (node / "routes.sh").write_bytes(b"")  # truncated
    other = node / "other"  # replaced by another file of the same size and mtime
    conf = node / "10-podnet.conflist"
    other.write_bytes(b"x" * conf.stat().st_size)
    os.utime(other, ns=(conf.stat().st_atime_ns, conf.stat().st_mtime_ns))
    os.replace(other, conf)
    (node / "podnet-ipam.py").chmod(0o644)  # mode changed (for every node: one inode, linked)
    (out / "README.md").unlink()  # gone
    if index_dated_after_edits:
        settle(out)
    # --check compares contents, whatever the index says
    r = podnet("compile", str(EXAMPLE), "-o", str(out), "--check")
    assert r.returncode == 1
    for path, kind in (("nodes/node1/net-setup.sh", "changed"), ("nodes/node1/routes.sh", "changed"),
                       ("nodes/node1/10-podnet.conflist", "changed"), ("README.md", "new"),
                       *((f"nodes/node{i}/podnet-ipam.py", "mode") for i in (1, 2, 3))):
        assert f"{out}/{path}: {kind}" in r.stderr
    assert "-set -xu" in r.stdout
    changes, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert sorted(c.path for c in changes) == ["README.md", "nodes/node1/10-podnet.conflist", "nodes/node1/net-setup.sh", "nodes/node1/podnet-ipam.py", "nodes/node1/routes.sh",
                                               "nodes/node2/podnet-ipam.py", "nodes/node3/podnet-ipam.py"]
    # the others were trusted (node2's and node3's podnet-ipam.py are node1's bytes: rendered once)
    assert set(rendered) == {c.path for c in changes} - {"nodes/node2/podnet-ipam.py", "nodes/node3/podnet-ipam.py"}
    assert tree(out) == tree(fresh)


def test_view_change_rerenders(monkeypatch, tmp_path):
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_counting(monkeypatch, topo, out)
    settle(out)
    write_topology(tmp_path, THREE_NODES.replace("podCIDR: 10.244.0.0/16\n", "podCIDR: 10.244.0.0/16\n  mtu: 9000\n"))
    changes, rendered = compile_counting(monkeypatch, topo, out)
    for node in ("node1", "node2", "node3"):
        assert f"nodes/{node}/net-setup.sh" in rendered and f"nodes/{node}/net-setup.sh" in {c.path for c in changes}
    # only one node's data changed: the other nodes' files are not even rendered
    settle(out)
    write_topology(tmp_path, THREE_NODES.replace("podCIDR: 10.244.0.0/16\n", "podCIDR: 10.244.0.0/16\n  mtu: 9000\n").replace("192.168.1.4", "192.168.1.40"))
    changes, rendered = compile_counting(monkeypatch, topo, out)
    assert not any(p.startswith(("nodes/node1/", "nodes/node2/")) for p in rendered), rendered
    assert "routes.table" in rendered
    fresh = tmp_path / "fresh"
    compile_counting(monkeypatch, topo, fresh)
    assert tree(out) == tree(fresh)


def test_template_change_rerenders(monkeypatch, tmp_path):
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    settle(out)
    real = render.template_inputs

    def changed(name):
        digest, names = real(name)
        return (digest + b"!" if name == "routes.sh.j2" else digest), names

    monkeypatch.setattr(render, "template_inputs", changed)
    _, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert sorted(rendered) == [f"nodes/node{i}/routes.sh" for i in (1, 2, 3)]


def test_files_changed_in_the_tick_the_index_was_written_are_in_doubt(monkeypatch, tmp_path):
    out = tmp_path / "o"
    _, first = compile_counting(monkeypatch, EXAMPLE, out)
    settle(out)
    oldest = min(p.stat().st_ctime_ns for p in out.rglob("*") if p.is_file() and p.name != INDEX)
    os.utime(out / INDEX, ns=(oldest, oldest))
    changes, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert changes == [] and sorted(rendered) == sorted(first)


@pytest.mark.parametrize("damage", ["delete", "garbage", "wrong-format"])
def test_missing_or_bad_index_means_a_full_compile(monkeypatch, tmp_path, damage):
    out = tmp_path / "o"
    _, first = compile_counting(monkeypatch, EXAMPLE, out)
    settle(out)
    index = out / INDEX
    if damage == "delete":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"\x00not json")
    else:
        index.write_text(json.dumps({"podnet-index": 1, "files": {"README.md": ["x", "y", 1, 2, 3, 4, 5]}}))
    (out / "nodes/node2/routes.sh").write_text("# hand-edited\n")
    changes, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert [c.path for c in changes] == ["nodes/node2/routes.sh"]
    assert sorted(rendered) == sorted(first)
    assert (out / INDEX).exists()


def test_identical_files_are_rendered_once(monkeypatch, tmp_path):
    _, rendered = compile_counting(monkeypatch, EXAMPLE, tmp_path / "o")
    ipam = [p for p in rendered if p.endswith("podnet-ipam.py")]
    assert ipam == ["nodes/node1/podnet-ipam.py"]  # same template, same data read: same bytes
    assert sum(p.endswith("net-setup.sh") for p in rendered) == 3
    files = tree(tmp_path / "o")
    assert files["nodes/node2/podnet-ipam.py"] == files["nodes/node1/podnet-ipam.py"]


def test_identical_files_are_written_once_and_linked(monkeypatch, tmp_path):
    """Every node's podnet-ipam.py is one inode with a name per node (a fresh compile
    of 5,000 nodes writes 93 MB less); an edit in place shows in every name, and a
    compile puts every name right."""
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    ipam = [out / f"nodes/node{i}/podnet-ipam.py" for i in (1, 2, 3)]
    assert len({p.stat().st_ino for p in ipam}) == 1 and ipam[0].stat().st_nlink == 3
    setup = [out / f"nodes/node{i}/net-setup.sh" for i in (1, 2, 3)]
    assert len({p.stat().st_ino for p in setup}) == 3  # other bytes: their own files
    fresh = tree(out)
    with open(ipam[1], "ab") as f:
        f.write(b"# edited in place\n")
    r = podnet("compile", str(EXAMPLE), "-o", str(out), "--check")
    assert r.returncode == 1 and all(f"nodes/node{i}/podnet-ipam.py" in r.stdout for i in (1, 2, 3))
    changes, _ = compile_counting(monkeypatch, EXAMPLE, out)
    assert sorted(c.path for c in changes) == [f"nodes/node{i}/podnet-ipam.py" for i in (1, 2, 3)]
    assert tree(out) == fresh and len({p.stat().st_ino for p in ipam}) == 1


def test_a_removed_twin_leaves_the_others_trusted(monkeypatch, tmp_path):
    """Removing a node's podnet-ipam.py changes its twins' ctime (one inode): the
    index records them after the removal, so the next compile still trusts them."""
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_counting(monkeypatch, topo, out)
    settle(out)
    two = write_topology(tmp_path, THREE_NODES.split("  - name: node3")[0])  # (the same file name: the banners stay)
    changes, _ = compile_counting(monkeypatch, two, out)
    assert "nodes/node3/podnet-ipam.py" in {c.path for c in changes} and "nodes/node1/podnet-ipam.py" not in {c.path for c in changes}
    settle(out)
    changes, rendered = compile_counting(monkeypatch, two, out)
    assert changes == [] and rendered == []


def test_a_twin_edited_while_the_compile_ran_stays_in_doubt(monkeypatch, tmp_path):
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    settle(out)
    fresh = tree(out)
    ipam = out / "nodes/node2/podnet-ipam.py"
    write_index = TreeWriter._write_index

    def edit_first(writer):
        st = ipam.stat()
        with open(ipam, "r+b") as f:  # the same size, the mtime put back: only the bytes tell
            f.write(b"#!/bin/false\n#")
        os.utime(ipam, ns=(st.st_atime_ns, st.st_mtime_ns))
        write_index(writer)

    monkeypatch.setattr(TreeWriter, "_write_index", edit_first)
    compile_counting(monkeypatch, EXAMPLE, out)
    monkeypatch.setattr(TreeWriter, "_write_index", write_index)
    settle(out)
    changes, _ = compile_counting(monkeypatch, EXAMPLE, out)
    assert sorted(c.path for c in changes) == [f"nodes/node{i}/podnet-ipam.py" for i in (1, 2, 3)]
    assert tree(out) == fresh


@pytest.mark.parametrize("swap", ["symlink", "hard link"])
def test_a_file_swapped_for_a_link_before_its_chmod_is_left_alone(monkeypatch, tmp_path, swap):
    """A mode-only change is made at commit, on the file only if it is still a
    regular file with one name: never through a symlink or a hard link put there
    while the compile ran; the next compile puts the path right."""
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    fresh = tree(out)
    target = out / "nodes/node1/routes.sh"
    target.chmod(0o644)
    victim = tmp_path / "victim"
    victim.write_bytes(target.read_bytes())
    victim.chmod(0o600)
    commit = TreeWriter.commit

    def swap_first(writer):
        target.unlink()
        (os.symlink if swap == "symlink" else os.link)(victim, target)
        commit(writer)

    monkeypatch.setattr(TreeWriter, "commit", swap_first)
    compile_counting(monkeypatch, EXAMPLE, out)
    monkeypatch.setattr(TreeWriter, "commit", commit)
    assert victim.stat().st_mode & 0o7777 == 0o600
    compile_counting(monkeypatch, EXAMPLE, out)
    assert tree(out) == fresh and not target.is_symlink() and victim.stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_an_index_that_is_no_file_is_ignored_and_replaced(monkeypatch, tmp_path, kind):
    """A FIFO at OUT/.podnet-index hung the compile; a symlink was read through."""
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    (out / INDEX).unlink()
    if kind == "fifo":
        os.mkfifo(out / INDEX)
    else:
        (tmp_path / "elsewhere").write_text("{}")
        (out / INDEX).symlink_to(tmp_path / "elsewhere")
    changes, rendered = compile_counting(monkeypatch, EXAMPLE, out)
    assert changes == [] and rendered  # no index: every file rendered and compared, none changed
    assert (out / INDEX).is_file() and not (out / INDEX).is_symlink()
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "{}"  # replaced, not written through


def test_the_busy_marker_made_meanwhile_by_the_other_process_is_fine(monkeypatch, tmp_path):
    """The forked worker and the main process both mark OUT busy: one may create the
    marker between the other's look and its O_EXCL create (a CI run failed on it)."""
    from compiler import write

    out = tmp_path / "o"
    out.mkdir()
    real_open = os.open

    def other_process_first(path, flags, *args):
        if str(path).endswith(".podnet-busy") and flags & os.O_EXCL and not os.path.lexists(path):
            os.close(real_open(path, os.O_WRONLY | os.O_CREAT, 0o644))  # the worker's, just now
        return real_open(path, flags, *args)

    monkeypatch.setattr(write.os, "open", other_process_first)
    writer = TreeWriter(str(out))
    writer._mark_busy()
    assert (out / ".podnet-busy").is_file()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_busy_marker_that_is_no_file_is_replaced(monkeypatch, tmp_path, kind):
    """Never written through (a symlink) nor waited on (a FIFO: the compile hung)."""
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    (out / "README.md").write_text("edited\n")
    if kind == "symlink":
        (out / ".podnet-busy").symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(out / ".podnet-busy")
    changes, _ = compile_counting(monkeypatch, EXAMPLE, out)
    assert [c.path for c in changes] == ["README.md"]
    assert not (tmp_path / "elsewhere").exists() and not os.path.lexists(out / ".podnet-busy")


def test_a_file_with_another_name_is_replaced_not_chmod_ed(monkeypatch, tmp_path):
    """A file in OUT that also has a name elsewhere (a hard link put there) and only
    a wrong mode is replaced: a chmod would change the other name's mode too."""
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    fresh = tree(out)
    victim = tmp_path / "victim"
    victim.write_bytes((out / "nodes/node1/routes.sh").read_bytes())
    victim.chmod(0o600)
    (out / "nodes/node1/routes.sh").unlink()
    os.link(victim, out / "nodes/node1/routes.sh")
    changes, _ = compile_counting(monkeypatch, EXAMPLE, out)
    assert [(c.path, c.kind) for c in changes] == [("nodes/node1/routes.sh", "mode")]
    assert tree(out) == fresh and victim.stat().st_mode & 0o7777 == 0o600 and victim.stat().st_nlink == 1


def test_where_links_are_refused_files_are_written(monkeypatch, tmp_path):
    def refuse(*_args, **_kw):
        raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))

    compile_counting(monkeypatch, EXAMPLE, tmp_path / "linked")
    monkeypatch.setattr(os, "link", refuse)
    out = tmp_path / "o"
    compile_counting(monkeypatch, EXAMPLE, out)
    assert tree(out) == tree(tmp_path / "linked") and temp_files(out) == []
    assert len({(out / f"nodes/node{i}/podnet-ipam.py").stat().st_ino for i in (1, 2, 3)}) == 3


def test_inputs_key_follows_includes_and_the_data_read(monkeypatch, tmp_path):
    (tmp_path / "main.sh.j2").write_text('{% include "part.sh.j2" %}\n{{ a|sh }}\n')
    (tmp_path / "part.sh.j2").write_text("# {{ b|sh }}\n")
    (tmp_path / "dyn.sh.j2").write_text("{% include name %}\n")
    monkeypatch.setattr(render, "TEMPLATES_DIR", tmp_path)
    for cached in (render._env, render.template_inputs):
        cached.cache_clear()
    try:
        assert render.template_inputs("main.sh.j2")[1] == {"a", "b"}
        assert render.template_inputs("dyn.sh.j2")[1] is None  # chosen at run time: everything counts

        def key(data, template="main.sh.j2"):
            return render.inputs_key(Artifact("x", 0o755, "template", template, data), {})

        base = key({"a": "1", "b": "2", "unread": "3"})
        assert base == key({"a": "1", "b": "2", "unread": "other"})
        assert base != key({"a": "1", "b": "other", "unread": "3"})  # read by the included template
        assert key({"a": {"x": 1}, "b": "2"}) != key({"a": {"x": "1"}, "b": "2"})
        assert key({"a": object(), "b": "2"}) is None  # not serialisable: no key, always rendered
        assert key({"name": "part.sh.j2", "b": 1}, "dyn.sh.j2") != key({"name": "part.sh.j2", "b": 2}, "dyn.sh.j2")
        (tmp_path / "part.sh.j2").write_text("# {{ b|sh }} changed\n")
        render.template_inputs.cache_clear()
        assert key({"a": "1", "b": "2", "unread": "3"}) != base
    finally:
        render._env.cache_clear()
        render.template_inputs.cache_clear()


def test_index_is_neither_an_artifact_nor_checked(tmp_path):
    out = tmp_path / "o"
    assert podnet("compile", str(EXAMPLE), "-o", str(out)).returncode == 0
    assert INDEX not in json.loads((out / "manifest.json").read_text())["artifacts"]
    (out / INDEX).write_text("anything")
    r = podnet("compile", str(EXAMPLE), "-o", str(out), "--check")
    assert r.returncode == 0, r.stderr
    assert (out / INDEX).read_text() == "anything"  # --check writes nothing, not even the index


# ---------------------------------------------------------------- the forked worker


def temp_files(out: Path):
    return sorted(str(p.relative_to(out)) for p in out.rglob(".podnet-*") if p.name != INDEX)


def test_parallel_compile_writes_what_a_serial_one_does(monkeypatch, tmp_path):
    topo = write_topology(tmp_path, THREE_NODES)
    monkeypatch.setattr(artifacts, "PARALLEL_MIN", 10**9)
    compile_counting(monkeypatch, topo, tmp_path / "serial")
    monkeypatch.setattr(artifacts, "PARALLEL_MIN", 0)  # always
    mine, theirs = artifacts._split(load_topology(str(topo)).nodes)
    assert [n.name for n in theirs] == ["node2", "node3"]  # the later half, whole directories
    assert [n.name for n in mine] == ["node1"]
    out = tmp_path / "parallel"
    changes, rendered = compile_counting(monkeypatch, topo, out)
    assert not any(p.startswith(("nodes/node2/", "nodes/node3/")) for p in rendered)  # the worker's (in its process)
    assert any(p.startswith("nodes/node1/") for p in rendered)
    assert len(changes) == len(tree(out)) == len(tree(tmp_path / "serial"))
    assert tree(out) == tree(tmp_path / "serial") and temp_files(out) == []
    # the worker's files are in the index: a serial re-compile renders nothing
    settle(out)
    monkeypatch.setattr(artifacts, "PARALLEL_MIN", 10**9)
    changes, rendered = compile_counting(monkeypatch, topo, out)
    assert changes == [] and rendered == []


def test_the_shipped_node_files_are_the_planned_ones(tmp_path):
    """The Ansible files ship node_files without building them: the same names and
    modes as plan_nodes makes, in every directory; plan is both halves."""
    topo = load_topology(str(write_topology(tmp_path, THREE_NODES)))
    for node in topo.nodes:
        assert [(a.path, a.mode) for a in plan_nodes(topo, [node])] == [(f"nodes/{node.name}/{n}", m) for n, m in node_files(topo)]
    assert sorted(a.path for a in plan(topo)) == sorted(a.path for a in artifacts.plan_cluster(topo) + plan_nodes(topo, topo.nodes))


# files the MTU changes: net-setup.sh reads the network, routes.sh does not (the index
# would spare it), README.md shows it
@pytest.mark.parametrize("failing", ["nodes/node3/net-setup.sh", "README.md"])  # the worker's, this process's
def test_a_failure_on_either_side_leaves_nothing_half_written(monkeypatch, tmp_path, failing):
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_counting(monkeypatch, topo, out)
    before = tree(out)
    settle(out)  # else every file is in doubt and rendered, whether the change touches it or not
    write_topology(tmp_path, THREE_NODES.replace("podCIDR: 10.244.0.0/16\n", "podCIDR: 10.244.0.0/16\n  mtu: 9000\n"))
    monkeypatch.setattr(artifacts, "PARALLEL_MIN", 0)  # always

    def broken(artifact):
        if artifact.path == failing:
            raise RuntimeError("template exploded")
        return render.render(artifact)

    monkeypatch.setattr(artifacts, "render", broken)
    expected = artifacts.WorkerFailed if failing.startswith("nodes/node3/") else RuntimeError
    with pytest.raises(expected, match="template exploded"):
        compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    assert tree(out) == before  # nothing renamed, the old manifest stays
    assert temp_files(out) == []  # every staged file of both processes removed


def test_a_compile_killed_while_removing_leaves_nothing_for_good(monkeypatch, tmp_path):
    """The old manifest is replaced only after the removals: a compile killed among
    them leaves the old manifest, which still names what it had not removed yet, and
    the next compile removes it (it used to stay for good)."""
    from compiler import write

    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    write_topology(tmp_path, THREE_NODES.split("  - name: node3")[0])
    real_unlink = write._unlink_quietly

    def killed(path):
        if "/nodes/node3/" in path:
            raise KeyboardInterrupt()
        real_unlink(path)

    monkeypatch.setattr(write, "_unlink_quietly", killed)
    with pytest.raises(KeyboardInterrupt):
        compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    monkeypatch.setattr(write, "_unlink_quietly", real_unlink)
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    fresh = tmp_path / "fresh"
    compile_into(str(fresh), load_topology(str(topo)), topo.read_bytes())
    assert tree(out) == tree(fresh)


def test_temporary_files_a_killed_compile_left_are_swept(tmp_path):
    """A compile killed mid-way (SIGKILL, or its worker dying) leaves temporary files
    and OUT/.podnet-busy; the next compile removes them all, anywhere in OUT."""
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    assert not (out / ".podnet-busy").exists()
    for leftover in ("nodes/node1/.podnet-0123456789ab", ".podnet-abcdefabcdef"):
        (out / leftover).write_bytes(b"half")
    (out / ".podnet-busy").write_bytes(b"")
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    assert temp_files(out) == [] and not (out / ".podnet-busy").exists()
    assert (out / ".podnet-index").exists()


def test_links_fifos_and_odd_modes_in_out_are_replaced_never_followed(tmp_path):
    """OUT is podnet's tree: a symlink put in place of an artifact is replaced by the
    file (its target untouched), a FIFO too (no read waits on it), a setuid bit is
    dropped; a symlinked directory is refused, never written through, and a manifest
    naming a path through one removes nothing there."""
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    fresh = tree(out)
    victim = tmp_path / "victim"
    victim.write_bytes((out / "nodes/node1/routes.sh").read_bytes())
    victim.chmod(0o600)
    (out / "nodes/node1/routes.sh").unlink()
    (out / "nodes/node1/routes.sh").symlink_to(victim)
    (out / "routes.table").unlink()
    os.mkfifo(out / "routes.table")
    (out / "nodes/node2/net-setup.sh").chmod(0o4755)
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    assert tree(out) == fresh and not (out / "nodes/node1/routes.sh").is_symlink()
    assert victim.stat().st_mode & 0o7777 == 0o600
    assert (out / "nodes/node2/net-setup.sh").stat().st_mode & 0o7777 == 0o755

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "passwd").write_text("keep me\n")
    (out / "lnk").symlink_to(elsewhere)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"]["lnk/passwd"] = {"mode": "0644", "sha256": "0" * 64, "size": 1}
    (out / "manifest.json").write_text(json.dumps(manifest))
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    assert (elsewhere / "passwd").read_text() == "keep me\n"

    shutil.rmtree(out / "nodes/node3")
    (out / "nodes/node3").symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory"):
        compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    assert sorted(p.name for p in elsewhere.iterdir()) == ["passwd"]


@pytest.mark.parametrize("artifacts", ["null", "5", '"b"', "[]"])
def test_a_manifest_not_podnets_names_nothing(tmp_path, artifacts):
    """A hand-edited manifest whose artifacts are not a mapping: no traceback, and
    nothing it may seem to name is removed (a string used to be read letter by letter)."""
    topo = write_topology(tmp_path, THREE_NODES)
    out = tmp_path / "o"
    compile_into(str(out), load_topology(str(topo)), topo.read_bytes())
    (out / "b").write_text("foreign\n")
    (out / "manifest.json").write_text('{"artifacts": %s}' % artifacts)
    r = podnet("compile", str(topo), "-o", str(out))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (out / "b").read_text() == "foreign\n"
