"""Topology -> OUT: plan, render and write, one artifact at a time (plus the manifest)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import List, Tuple

from compiler.model import Topology
from compiler.plan import plan, source_name
from compiler.render import inputs_key, render
from compiler.write import Change, TreeWriter

# Rendered bytes by inputs key, most recently used last: a file every node gets
# alike (the same template, the same data read) is rendered and hashed once.
# Small, so per-node files pass through without holding memory.
_CACHE_SIZE = 32


def compile_into(out_dir: str, topo: Topology, topology_bytes: bytes, check: bool = False, on_change=None) -> List[Change]:
    """Renders artifact by artifact straight into a TreeWriter (memory stays flat);
    writes unless `check`. Returns what changed (or would change). An artifact
    the writer's index vouches for (same inputs, file untouched) is not rendered."""
    writer = TreeWriter(out_dir, check=check, on_change=on_change)
    memo: dict = {}
    cache: "OrderedDict[str, Tuple[bytes, str]]" = OrderedDict()
    try:
        for artifact in plan(topo):
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
        pending = writer.finish(topology_bytes, source_name(topo.source))
        if not check:
            writer.commit()
        return pending
    finally:
        writer.abort()
