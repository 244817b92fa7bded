"""The only stage that writes: rendered artifacts -> OUT, plus manifest.json.

Each file is replaced atomically (temp file in the same directory, then rename);
files whose bytes and mode are unchanged are not touched; files that podnet
wrote before (per the previous manifest) and no longer produces are removed.
Nothing else in OUT is ever removed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from compiler import __version__

MANIFEST = "manifest.json"

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


def previous_artifacts(out_dir: str) -> List[str]:
    """The files podnet wrote last time, per the old manifest (empty when there is none)."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            old = json.load(f)
        paths = list(old.get("artifacts", {}))
    except (OSError, ValueError, AttributeError):
        return []
    # never follow a manifest outside OUT
    return [p for p in paths if isinstance(p, str) and _safe_relpath(p)]


def _safe_relpath(p: str) -> bool:
    parts = p.split("/")
    return bool(p) and not p.startswith("/") and ".." not in parts and "" not in parts


class TreeWriter:
    """Streams artifacts into OUT without holding them all in memory.

    `add` compares each file with what is on disk at once and stages a temporary
    file only when it differs (or, in check mode, hands the difference to
    `on_change` and keeps nothing); `finish` adds the manifest and the removals;
    `commit` makes it so with one sync and a rename per file, manifest last.
    """

    def __init__(self, out_dir: str, check: bool = False, on_change=None):
        self.out_dir = out_dir
        self.check = check
        self.on_change = on_change or (lambda change: None)
        self.entries: Dict[str, Dict[str, object]] = {}
        self.pending: List[Change] = []  # without contents: they were staged or reported
        self._staged: List[Tuple[str, str]] = []  # (temp, target)
        self._modes: Dict[str, int] = {}

    def add(self, path: str, content: bytes, mode: int) -> None:
        self.entries[path] = {"mode": f"{mode:04o}", "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
        self._compare(path, content, mode)

    def _compare(self, path: str, content: bytes, mode: int) -> None:
        full = os.path.join(self.out_dir, path)
        try:
            with open(full, "rb") as f:
                old: Optional[bytes] = f.read()
            old_mode = os.stat(full).st_mode & 0o777
        except FileNotFoundError:
            old, old_mode = None, mode
        if old == content and old_mode == mode:
            return
        kind = "new" if old is None else "changed" if old != content else "mode"
        change = Change(path, kind, old, content, old_mode, mode)
        if self.check:
            self.on_change(change)
        elif kind == "mode":
            self._modes[path] = mode
        else:
            self._staged.append((_stage(full, content, mode), full))
        self.pending.append(Change(path, kind))

    def finish(self, topology_bytes: bytes, source: str) -> List[Change]:
        """Adds manifest.json and the removals of artifacts podnet no longer produces."""
        manifest = {
            "podnet": __version__,
            "topology": {"file": source, "sha256": hashlib.sha256(topology_bytes).hexdigest()},
            "artifacts": dict(sorted(self.entries.items())),
        }
        self._compare(MANIFEST, (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode(), 0o644)
        for path in previous_artifacts(self.out_dir):
            full = os.path.join(self.out_dir, path)
            if path not in self.entries and path != MANIFEST and os.path.isfile(full):
                if self.check:
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
            for tmp, full in self._staged:
                os.replace(tmp, full)  # abort() later skips temp names already renamed
            for path, mode in self._modes.items():
                os.chmod(os.path.join(self.out_dir, path), mode)
            for change in self.pending:
                if change.kind == "removed":
                    os.unlink(os.path.join(self.out_dir, change.path))
                    _prune_empty_dirs(self.out_dir, os.path.dirname(change.path))
        finally:
            self.abort()

    def abort(self) -> None:
        """Removes staged temporary files (after a failure part-way)."""
        for tmp, _ in self._staged:
            _unlink_quietly(tmp)
        self._staged.clear()


def replace_file(full: str, content: bytes) -> None:
    """Atomically replaces an existing file (e.g. the topology, for `allocate --write`),
    keeping its mode; synced before the rename so a crash leaves the old or the new file."""
    tmp = _stage(full, content, os.stat(full).st_mode & 0o7777)
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, full)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _stage(full: str, content: bytes, mode: int) -> str:
    directory = os.path.dirname(full)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".podnet-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


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
