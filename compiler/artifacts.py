"""Topology -> OUT: plan, render and write, one artifact at a time (plus the manifest).

A large compile uses both cores: a forked worker plans, renders, hashes and stages
the second half of the node directories while this process does the rest; each
syncs what it staged once its half is done (beside the other's rendering), the
worker hands back what it staged, and this process alone commits (a last sync,
renames, manifest last). If either side fails, every temporary file of both is
removed and nothing is renamed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import traceback
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

from compiler.model import Node, Topology
from compiler.plan import Artifact, node_files, plan, plan_cluster, plan_nodes, source_name
from compiler.render import inputs_key, render
from compiler.write import Change, TreeWriter

# Rendered bytes by inputs key, most recently used last: a file every node gets
# alike (the same template, the same data read) is rendered and hashed once.
# Small, so per-node files pass through without holding memory.
_CACHE_SIZE = 32

# From this many node files on, a second process pays for its start (a fork and
# handing back a few MB), also when the index spares their rendering: the worker
# builds its half of the node views too; below it, one process is faster.
PARALLEL_MIN = 2000


def compile_into(out_dir: str, topo: Topology, topology_bytes: bytes, check: bool = False, on_change=None) -> List[Change]:
    """Renders artifact by artifact straight into a TreeWriter (memory stays flat);
    writes unless `check`. Returns what changed (or would change). An artifact
    the writer's index vouches for (same inputs, file untouched) is not rendered."""
    writer = TreeWriter(out_dir, check=check, on_change=on_change)
    worker: Optional[_Worker] = None
    failed = False  # an error, not an interruption: every temporary file is then removed
    try:
        if not check and _parallel(len(node_files(topo)) * len(topo.nodes)):
            mine, theirs = _split(topo.nodes)
            worker = _Worker(writer, lambda: _by_path(plan_nodes(topo, theirs)))
            planned = _by_path(plan_cluster(topo) + plan_nodes(topo, mine))
        else:
            planned = plan(topo)
        _emit(writer, planned)
        if worker:
            writer.flush()
            writer.merge(worker.result())
        pending = writer.finish(topology_bytes, source_name(topo.source))
        if not check:
            writer.commit()
        return pending
    except Exception:
        failed = True
        raise
    finally:
        if worker:
            worker.reap()
        writer.abort()
        # (after ^C, a signal or a worker that died, a temporary file may be left:
        # OUT/.podnet-busy stays, and the next compile sweeps OUT first)
        if failed and (worker is None or worker.known):
            writer.not_busy()


def _parallel(count: int) -> bool:
    """Fork only where it pays and is safe: many artifacts, more than one usable CPU,
    and no other thread (a fork copies locks another thread may hold)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return count >= PARALLEL_MIN and hasattr(os, "fork") and cpus > 1 and threading.active_count() == 1


def _split(nodes: Sequence[Node]) -> Tuple[List[Node], List[Node]]:
    """(this process's, the worker's): the worker takes the later half of the nodes
    by name (whole directories), this process the rest and the cluster-wide files
    (the slower ones)."""
    names = sorted(n.name for n in nodes)
    theirs = set(names[len(names) // 2:])
    return [n for n in nodes if n.name not in theirs], [n for n in nodes if n.name in theirs]


def _by_path(artifacts: List[Artifact]) -> List[Artifact]:
    return sorted(artifacts, key=lambda a: a.path)


def _emit(writer: TreeWriter, artifacts: Sequence[Artifact]) -> None:
    memo: dict = {}
    cache: "OrderedDict[str, Tuple[bytes, str]]" = OrderedDict()
    for artifact in artifacts:
        key = inputs_key(artifact, memo)
        if writer.unchanged(artifact.path, artifact.mode, key):
            continue
        hit = cache.get(key) if key else None
        if hit is None:
            content = render(artifact)
            hit = (content, hashlib.sha256(content).hexdigest())
            if key:
                cache[key] = hit
                if len(cache) > _CACHE_SIZE:
                    cache.popitem(last=False)
        elif key:
            cache.move_to_end(key)
        writer.add(artifact.path, hit[0], artifact.mode, sha256=hit[1], inputs=key)


class WorkerFailed(RuntimeError):
    """The forked worker failed; its message holds the worker's traceback."""


class _Worker:
    """A forked process that plans its artifacts (`make`) and emits them into its copy
    of `writer` (staging, not renaming) and sends back what that writer recorded
    (TreeWriter.delta)."""

    def __init__(self, writer: TreeWriter, make: Callable[[], List[Artifact]]):
        self._result: Optional[tuple] = None
        self._merged = False
        self.known = False  # whether the worker said how it ended (it then removed its temporary files, or handed them over)
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the worker: never returns
            os.close(read)
            status = 1
            try:
                try:
                    _emit(writer, make())
                    writer.flush()
                    payload: tuple = ("ok", writer.delta())
                except OSError as e:  # the output directory's fault: said as such (cli)
                    writer.abort()
                    payload = ("oserror", (e.errno, e.strerror, e.filename))
                except BaseException:
                    writer.abort()
                    payload = ("error", traceback.format_exc())
                with os.fdopen(write, "wb") as f:
                    pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
                status = 0 if payload[0] == "ok" else 1
            finally:
                os._exit(status)
        os.close(write)
        self._read = read

    def _wait(self) -> tuple:
        if self._result is None:
            self._result = ("error", "the worker's result could not be read\n")
            data = b""
            try:
                with os.fdopen(self._read, "rb") as f:
                    data = f.read()
            finally:
                _, status = os.waitpid(self.pid, 0)  # also when interrupted: no zombie
            try:
                self._result = pickle.loads(data)
                self.known = True
            except Exception:
                self._result = ("error", f"the worker died (wait status {status}) without a result\n")
        return self._result

    def result(self):
        """The worker's TreeWriter.delta(); raises WorkerFailed if it failed."""
        status, payload = self._wait()
        if status == "oserror":
            raise OSError(*payload)
        if status != "ok":
            raise WorkerFailed(f"compile worker failed:\n{payload}")
        self._merged = True
        return payload

    def reap(self) -> None:
        """Waits for the worker; removes what it staged unless that was merged (then
        the writer owns it)."""
        status, payload = self._wait()
        if status == "ok" and not self._merged:
            TreeWriter.discard(payload)
