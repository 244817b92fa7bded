"""The only stage that writes: rendered artifacts -> OUT, plus manifest.json.

Each file is replaced atomically (temp file in the same directory, then rename);
files whose bytes and mode are unchanged are not touched; files that podnet
wrote before (per the previous manifest) and no longer produces are removed.
Nothing else in OUT is ever removed.

OUT/.podnet-index is a local cache, like git's index: for every file podnet wrote
or verified, the fingerprint of the inputs it was rendered from (see
render.inputs_key), its sha256, and what stat(2) said right after (inode, size,
mode, mtime and ctime in ns). A later compile trusts a file without rendering it
only when its fingerprint is the same and stat still says exactly that; ctime
cannot be set back by hand, so any edit, replacement or chmod puts the file in
doubt, and a file in doubt is rendered and compared as without the index. The
index is not an artifact (not in the manifest, never deterministic); deleting it
only costs one full compile. `--check` never reads it: it compares contents.

Files a compile stages with the same bytes and mode (every node's podnet-ipam.py)
are written once and hard-linked: one inode per process, not one per node. A file
with more than one name is never changed in place (chmod would change its other
names too, perhaps one outside OUT): it is replaced, as a changed file is.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import os
import random
import re
import stat as statmod
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from compiler import __version__

MANIFEST = "manifest.json"
INDEX = ".podnet-index"
# OUT/.podnet-busy exists from a compile's first temporary file until its commit is done:
# a compile that finds it (the last one was killed, or failed part-way, perhaps in its
# forked worker) first removes every temporary file that one may have left in OUT.
BUSY = ".podnet-busy"
_TEMP = re.compile(r"\.podnet-[0-9a-f]{12}")
_MODE_BITS = 0o7777  # setuid, setgid and sticky too: a fresh compile has none of them
# opening a file in OUT: never through a symlink put there, never waiting on a FIFO
_OWN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_INDEX_FORMAT = 1


@dataclass
class Change:
    path: str
    kind: str  # "new" | "changed" | "mode" | "removed"
    old: Optional[bytes] = None
    new: Optional[bytes] = None
    old_mode: Optional[int] = None
    new_mode: Optional[int] = None

    def diff(self) -> str:
        old = (self.old or b"").decode("utf-8", "replace").splitlines(keepends=True)
        new = (self.new or b"").decode("utf-8", "replace").splitlines(keepends=True)
        lines = difflib.unified_diff(old, new, f"a/{self.path}", f"b/{self.path}")
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        if text:
            return text
        if self.old_mode is not None and self.new_mode is not None:
            return f"mode of {self.path}: {self.old_mode:04o} -> {self.new_mode:04o}\n"
        return f"mode of {self.path} differs\n"


def manifest_text(manifest: Dict[str, object]) -> str:
    """json.dumps(manifest, sort_keys=True, indent=2) + newline, byte for byte, with
    the artifact entries ({"mode", "sha256", "size"}, the bulk) formatted directly:
    json's indenting encoder is pure Python, 0.15 s for 20,000 entries."""
    artifacts: Dict[str, Dict[str, object]] = manifest["artifacts"]  # type: ignore[assignment]
    text = json.dumps({**manifest, "artifacts": {}}, sort_keys=True, indent=2)
    if not artifacts:
        return text + "\n"
    enc = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii)
    if any(set(e) != {"mode", "sha256", "size"} or not isinstance(e["mode"], str) or not isinstance(e["sha256"], str) or type(e["size"]) is not int for e in artifacts.values()):
        return json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    entries = ",\n".join(
        f'    {enc(path)}: {{\n      "mode": {enc(e["mode"])},\n      "sha256": {enc(e["sha256"])},\n      "size": {e["size"]}\n    }}'
        for path, e in sorted(artifacts.items())
    )
    return text.replace('"artifacts": {}', '"artifacts": {\n' + entries + "\n  }", 1) + "\n"


def previous_artifacts(out_dir: str) -> List[str]:
    """The files podnet wrote last time, per the old manifest (empty when there is none)."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    artifacts = old.get("artifacts") if isinstance(old, dict) else None
    if not isinstance(artifacts, dict):  # not a manifest podnet wrote: it names nothing
        return []
    # never follow a manifest outside OUT
    return [p for p in artifacts if isinstance(p, str) and _safe_relpath(p)]


def _safe_relpath(p: str) -> bool:
    parts = p.split("/")
    return bool(p) and not p.startswith("/") and ".." not in parts and "" not in parts


# An index entry: [inputs, sha256, size, mode, inode, mtime_ns, ctime_ns]
IndexEntry = list


class TreeWriter:
    """Streams artifacts into OUT without holding them all in memory.

    `add` compares each file with what is on disk at once and stages a temporary
    file only when it differs (or, in check mode, hands the difference to
    `on_change` and keeps nothing); `unchanged` lets the caller skip rendering a
    file the index vouches for; `finish` adds the manifest and the removals;
    `commit` makes it so with one sync and a rename per file, manifest last, then
    records the index.
    """

    def __init__(self, out_dir: str, check: bool = False, on_change=None):
        self.out_dir = out_dir
        self.check = check
        self.on_change = on_change or (lambda change: None)
        self.entries: Dict[str, Dict[str, object]] = {}
        self.pending: List[Change] = []  # without contents: they were staged or reported
        self._staged: List[Tuple[str, str]] = []  # (temp, target)
        self._renamed = 0  # how many of _staged commit() has renamed
        self._modes: Dict[str, int] = {}
        self._twins: Dict[Tuple[str, int], str] = {}  # (sha256, mode) -> a temporary file this writer staged with them
        self._dirs: Set[str] = set()  # directories known to exist
        self._real: Set[str] = set()  # directories under OUT known to be no symlink
        self._busy = False  # whether this process made OUT/BUSY (not_busy removes it whoever did)
        self._old_index, self._index_time = ({}, 0) if check else _read_index(out_dir)
        if not check and os.path.lexists(os.path.join(out_dir, BUSY)):
            _sweep_temps(out_dir)
        self.index: Dict[str, IndexEntry] = {}  # this run's, written by commit()
        self._unstatted: List[str] = []  # index paths whose stat is taken after commit
        # index paths found unchanged whose file has other names: removing or replacing
        # another name in commit changes the ctime, so _retake_twins checks them again
        self._twin_paths: List[str] = []

    def unchanged(self, path: str, mode: int, inputs: Optional[str]) -> bool:
        """True when the file at `path` is, per the index and stat, exactly what
        rendering these inputs gave last time: it is then recorded without rendering."""
        old = self._old_index.get(path)
        if self.check or inputs is None or old is None or old[0] != inputs:
            return False
        try:
            st = os.lstat(os.path.join(self.out_dir, path))
        except OSError:
            return False
        if old[2:] != [st.st_size, st.st_mode & _MODE_BITS, st.st_ino, st.st_mtime_ns, st.st_ctime_ns] or old[3] != mode or not statmod.S_ISREG(st.st_mode):
            return False
        if st.st_ctime_ns >= self._index_time:  # changed in the tick the index was written: doubt it
            return False
        self.entries[path] = {"mode": f"{mode:04o}", "sha256": old[1], "size": old[2]}
        self.index[path] = list(old)
        if st.st_nlink > 1:
            self._twin_paths.append(path)
        return True

    def add(self, path: str, content: bytes, mode: int, sha256: Optional[str] = None, inputs: Optional[str] = None) -> None:
        sha256 = sha256 or hashlib.sha256(content).hexdigest()
        self.entries[path] = {"mode": f"{mode:04o}", "sha256": sha256, "size": len(content)}
        st = self._compare(path, content, mode, sha256)
        if inputs is not None and not self.check:
            self.index[path] = [inputs, sha256, len(content), mode, 0, 0, 0]
            if st is None:
                self._unstatted.append(path)
            else:
                self.index[path][4:] = [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
                if st.st_nlink > 1:
                    self._twin_paths.append(path)

    def _compare(self, path: str, content: bytes, mode: int, sha256: Optional[str] = None) -> Optional[os.stat_result]:
        """Stages or reports the file if it differs; returns its stat when it does not.
        With `sha256`, a file staged before with the same bytes and mode is linked."""
        full = os.path.join(self.out_dir, path)
        self._real_dir(os.path.dirname(path))
        old, st = _read(full, None if self.check else len(content))
        old_mode = mode if st is None else st.st_mode & _MODE_BITS
        same = st is not None and statmod.S_ISREG(st.st_mode) and st.st_size == len(content) and old == content
        if same and old_mode == mode:
            return st
        kind = "new" if st is None else "mode" if same else "changed"
        if self.check:
            self.on_change(Change(path, kind, old, content, old_mode, mode))
        elif kind == "mode" and st is not None and st.st_nlink == 1:
            self._modes[path] = mode
        else:
            self._staged.append((self._stage(full, content, mode, sha256), full))
        self.pending.append(Change(path, kind))
        return None

    def delta(self) -> tuple:
        """What this writer recorded, for another writer's `merge` (a forked worker's
        copy hands back its share; it never commits)."""
        return (self.entries, self.index, self.pending, self._staged, self._modes, self._unstatted, self._twin_paths)

    def merge(self, delta: tuple) -> None:
        entries, index, pending, staged, modes, unstatted, twin_paths = delta
        self.entries.update(entries)
        self.index.update(index)
        self.pending += pending
        self._staged += staged
        self._modes.update(modes)
        self._unstatted += unstatted
        self._twin_paths += twin_paths

    @staticmethod
    def discard(delta: tuple) -> None:
        """Removes the temporary files of a delta that will not be merged."""
        for tmp, _ in delta[3]:
            _unlink_quietly(tmp)

    def _stage(self, full: str, content: bytes, mode: int, sha256: Optional[str]) -> str:
        directory = os.path.dirname(full)
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)
        self._mark_busy()
        twin = self._twins.get((sha256, mode)) if sha256 else None
        tmp = _link_in(directory, twin) if twin else None
        if tmp is None:
            tmp = _stage_in(directory, content, mode)
            if sha256:
                self._twins[(sha256, mode)] = tmp
        return tmp

    def flush(self) -> None:
        """Writes what is staged so far to disk (sync(2), which flushes every file
        system): the forked worker and this process each do it once their half is
        staged, while the other still renders, and commit's sync then finds little
        left to write."""
        if self._staged and not self.check:
            os.sync()

    def _mark_busy(self) -> None:
        if not self._busy:
            self._busy = True
            busy = os.path.join(self.out_dir, BUSY)
            # (O_CREAT without O_EXCL: the compile's other process may make it too)
            if not _touch_own(busy):
                _unlink_quietly(busy)  # a symlink or FIFO put there: replaced
                if not _touch_own(busy):
                    raise OSError(errno.EEXIST, "not a regular file, put there while podnet replaced it", busy)

    def _real_dir(self, rel_dir: str) -> None:
        """Refuses (OSError) a directory under OUT that is, or lies under, a symlink or
        anything but a directory: podnet writes, reads and removes only in the tree
        it made, never through a link to elsewhere."""
        probe = rel_dir
        while probe and probe not in self._real:
            try:
                st = os.lstat(os.path.join(self.out_dir, probe))
            except FileNotFoundError:
                probe = os.path.dirname(probe)
                continue
            if not statmod.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "not a directory (a symlink?); podnet writes only into directories it made", os.path.join(self.out_dir, probe))
            self._real.add(probe)
            probe = os.path.dirname(probe)

    def finish(self, topology_bytes: bytes, source: str) -> List[Change]:
        """Adds manifest.json and the removals of artifacts podnet no longer produces."""
        manifest = {
            "podnet": __version__,
            "topology": {"file": source, "sha256": hashlib.sha256(topology_bytes).hexdigest()},
            "artifacts": dict(sorted(self.entries.items())),
        }
        self._compare(MANIFEST, manifest_text(manifest).encode(), 0o644)
        for path in previous_artifacts(self.out_dir):
            full = os.path.join(self.out_dir, path)
            if path in self.entries or path == MANIFEST or not os.path.isfile(full):
                continue
            try:
                self._real_dir(os.path.dirname(path))
            except OSError:
                continue  # under a symlink: not podnet's to remove
            if self.check:
                # (a symlink put there is shown, and later removed, as itself: never read through)
                if statmod.S_ISLNK(os.lstat(full).st_mode):
                    self.on_change(Change(path, "removed", f"(a symlink to {os.readlink(full)})\n".encode(), None))
                else:
                    with open(full, "rb") as f:
                        self.on_change(Change(path, "removed", f.read(), None))
            self.pending.append(Change(path, "removed"))
        self.pending.sort(key=lambda c: c.path)
        return self.pending

    def commit(self) -> None:
        if self.check:
            raise RuntimeError("a check-mode TreeWriter never writes")
        try:
            if self._staged:
                os.sync()  # one sync for all files, not an fsync per file
            manifest = os.path.join(self.out_dir, MANIFEST)
            self._staged.sort(key=lambda s: s[1] == manifest)
            last = len(self._staged) - (1 if self._staged and self._staged[-1][1] == manifest else 0)
            for tmp, full in self._staged[:last]:
                os.replace(tmp, full)
                self._renamed += 1  # abort() skips the temp names already renamed
            for path, mode in self._modes.items():
                _chmod_own(os.path.join(self.out_dir, path), mode)
            # the removals before the manifest: until it is in place, the old one still
            # names what a killed run had not removed yet, and the next run removes it
            for change in self.pending:
                if change.kind == "removed":
                    _unlink_quietly(os.path.join(self.out_dir, change.path))
                    _prune_empty_dirs(self.out_dir, os.path.dirname(change.path))
            for tmp, full in self._staged[last:]:
                os.replace(tmp, full)
                self._renamed += 1
        finally:
            self.abort()
        self._write_index()
        self.not_busy()

    def _write_index(self) -> None:
        for path in self._unstatted:
            try:
                st = os.stat(os.path.join(self.out_dir, path))
            except OSError:
                del self.index[path]
                continue
            self.index[path][4:] = [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
        self._retake_twins()
        if self.index == self._old_index:
            return  # (entries in doubt because of the index's time stay so: they cost a render)
        text = json.dumps({"podnet-index": _INDEX_FORMAT, "files": self.index}, separators=(",", ":"), sort_keys=True)
        self._mark_busy()
        tmp = _stage_in(self.out_dir, text.encode(), 0o644)
        try:
            os.replace(tmp, os.path.join(self.out_dir, INDEX))  # a cache: no sync
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _retake_twins(self) -> None:
        """Index entries of files found unchanged that have other names: their ctime is
        taken again after commit, once their bytes (read after that stat, hashed once
        per inode) still match the entry; an edit that kept size and mtime, made at
        any time in this compile, is then seen now or by the next compile's ctime."""
        digests: Dict[int, Tuple[int, Optional[str]]] = {}  # inode -> (its ctime before the read, sha256)
        for path in self._twin_paths:
            entry, full = self.index[path], os.path.join(self.out_dir, path)
            try:
                st = os.lstat(full)
            except OSError:
                del self.index[path]
                continue
            if statmod.S_ISREG(st.st_mode) and st.st_ino not in digests:
                try:
                    content, opened = _read(full, st.st_size)  # (its stat is taken on the open file, before the read)
                except OSError:  # (replaced meanwhile by a directory: in doubt)
                    content, opened = None, None
                same = content is not None and opened is not None and opened.st_ino == st.st_ino
                digests[st.st_ino] = (opened.st_ctime_ns, hashlib.sha256(content).hexdigest()) if same else (0, None)
            if [st.st_size, st.st_ino, st.st_mtime_ns] == [entry[2], entry[4], entry[5]] and digests.get(st.st_ino) == (st.st_ctime_ns, entry[1]):
                entry[6] = st.st_ctime_ns
            else:
                del self.index[path]

    def not_busy(self) -> None:
        """Removes OUT/BUSY once no temporary file of this compile (whichever of its
        processes made the marker) or of an earlier one (swept at the start) is left."""
        if not self.check:
            try:
                os.unlink(os.path.join(self.out_dir, BUSY))
            except OSError:  # none there (nor, when OUT is no directory, anywhere): not the error to report
                pass
            self._busy = False

    def abort(self) -> None:
        """Removes staged temporary files (after a failure part-way)."""
        for tmp, _ in self._staged[self._renamed:]:
            _unlink_quietly(tmp)
        self._staged.clear()
        self._renamed = 0


def _read_index(out_dir: str) -> Tuple[Dict[str, IndexEntry], int]:
    """The previous run's index and when it was written (empty when missing or malformed)."""
    try:
        fd = os.open(os.path.join(out_dir, INDEX), os.O_RDONLY | _OWN)  # (anything but a file is no index)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                return {}, 0
            written = st.st_mtime_ns
            index = json.loads(f.read())
        files = index["files"] if index.get("podnet-index") == _INDEX_FORMAT else {}
        ok = all(
            isinstance(e, list) and len(e) == 7 and isinstance(e[0], str) and isinstance(e[1], str) and len(e[1]) == 64
            and all(type(n) is int for n in e[2:])
            for e in files.values()
        )
        return (files, written) if ok else ({}, 0)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}, 0


def _read(full: str, size: Optional[int]) -> Tuple[Optional[bytes], Optional[os.stat_result]]:
    """(contents, stat) of an existing file, (None, None) when there is none; with
    `size`, a file of another size is not read (it differs anyway): (None, stat)."""
    try:
        fd = os.open(full, os.O_RDONLY | _OWN)  # (a symlink or FIFO differs: it is replaced by the file)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        return None, os.lstat(full)
    try:
        st = os.fstat(fd)
        if statmod.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), full)
        if not statmod.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return None, st
        chunks = []
        while True:
            chunk = os.read(fd, max(st.st_size + 1, 65536))
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def replace_file(full: str, content: bytes) -> None:
    """Atomically replaces an existing file (e.g. the topology, for `allocate --write`),
    keeping its mode; synced before the rename so a crash leaves the old or the new file."""
    tmp = _stage_in(os.path.dirname(full), content, os.stat(full).st_mode & 0o7777)
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, full)
    except BaseException:
        _unlink_quietly(tmp)
        raise


_NAMES = random.Random()  # temporary names; O_EXCL makes a collision harmless


def _new_temp(directory: str, make: Callable[[str], object]) -> Tuple[str, object]:
    """(path, what make(path) returned) for a temporary name in `directory` that did
    not exist yet; make raises FileExistsError for a taken one (O_EXCL, link(2))."""
    while True:
        tmp = os.path.join(directory or ".", f".podnet-{_NAMES.getrandbits(48):012x}")
        try:
            return tmp, make(tmp)
        except FileExistsError:
            continue


def _stage_in(directory: str, content: bytes, mode: int) -> str:
    """Writes `content` to a new temporary file in `directory` (which exists); returns its path."""
    tmp, fd = _new_temp(directory, lambda path: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _chmod_own(full: str, mode: int) -> None:
    """chmod of a file found with that one difference, if it is still a regular file
    with no other name (not a symlink, nor a hard link put there since): else it is
    left alone, and its mode, in doubt in the index, is put right by the next compile."""
    try:
        fd = os.open(full, os.O_RDONLY | _OWN)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if statmod.S_ISREG(st.st_mode) and st.st_nlink == 1:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _link_in(directory: str, twin: str) -> Optional[str]:
    """A new temporary name in `directory` for the file `twin` (a hard link); None
    when linking fails (no hard links on this file system, too many, or any other
    error): the file is then written, and a real error shows there."""
    try:
        return _new_temp(directory, lambda path: os.link(twin, path))[0]
    except OSError:
        return None


def _touch_own(full: str) -> bool:
    """Makes `full` exist as a regular file (kept if it is one); False when something
    else is there (a symlink, a FIFO), which is left untouched."""
    try:
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | _OWN, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO nobody reads
            return False
        raise
    try:
        return statmod.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def _sweep_temps(out_dir: str) -> None:
    """Removes the temporary files a killed or failed compile left anywhere in OUT."""
    for root, dirs, files in os.walk(out_dir):  # (os.walk does not follow symlinks)
        for name in files:
            if _TEMP.fullmatch(name):
                _unlink_quietly(os.path.join(root, name))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prune_empty_dirs(out_dir: str, rel_dir: str) -> None:
    while rel_dir:
        try:
            os.rmdir(os.path.join(out_dir, rel_dir))
        except OSError:  # not empty (or gone): stop
            return
        rel_dir = os.path.dirname(rel_dir)
