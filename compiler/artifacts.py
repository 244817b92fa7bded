"""Topology -> OUT: plan, render and write, one artifact at a time (plus the manifest)."""

from __future__ import annotations

from typing import List

from compiler.model import Topology
from compiler.plan import plan, source_name
from compiler.render import render
from compiler.write import Change, TreeWriter


def compile_into(out_dir: str, topo: Topology, topology_bytes: bytes, check: bool = False, on_change=None) -> List[Change]:
    """Renders artifact by artifact straight into a TreeWriter (memory stays flat);
    writes unless `check`. Returns what changed (or would change)."""
    writer = TreeWriter(out_dir, check=check, on_change=on_change)
    try:
        for artifact in plan(topo):
            writer.add(artifact.path, render(artifact), artifact.mode)
        pending = writer.finish(topology_bytes, source_name(topo.source))
        if not check:
            writer.commit()
        return pending
    finally:
        writer.abort()
