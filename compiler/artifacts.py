"""Topology -> every output file's bytes and mode (plan + render + manifest), in memory."""

from __future__ import annotations

from compiler.model import Topology
from compiler.plan import plan, source_name
from compiler.render import render
from compiler.write import Files, with_manifest


def build_files(topo: Topology, topology_bytes: bytes) -> Files:
    files: Files = {a.path: (render(a), a.mode) for a in plan(topo)}
    return with_manifest(files, topology_bytes, source_name(topo.source))
