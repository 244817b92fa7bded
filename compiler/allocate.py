"""Node subnet allocation: pinned subnets never move; every other node takes the
lowest free subnet of the node size, in file order."""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence

from compiler.model import IPNetwork, Pool


class PoolExhausted(Exception):
    def __init__(self, index: int):
        self.index = index  # the first node that got no subnet
        super().__init__(index)


def allocate(pool: Pool, pinned: Sequence[Optional[IPNetwork]]) -> List[IPNetwork]:
    """One subnet per entry of `pinned`: the pinned one, or the lowest free one."""
    taken = {s for s in pinned if s is not None}
    free = _free(pool, taken)
    out: List[IPNetwork] = []
    for i, s in enumerate(pinned):
        if s is None:
            s = next(free, None)
            if s is None:
                raise PoolExhausted(i)
        out.append(s)
    return out


def _free(pool: Pool, taken: set) -> Iterator[IPNetwork]:
    # subnets() is lazy, so a huge pool with a few nodes costs only what is used
    for candidate in pool.cidr.subnets(new_prefix=pool.node_prefix):
        if candidate not in taken:
            yield candidate
