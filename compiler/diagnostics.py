"""Errors are data: a Diagnostic names a place in the topology and what is wrong there.

Only the CLI formats them for people; every other stage yields them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple, Union

# A JSON path into the topology document: ("nodes", 2, "address").
JsonPath = Tuple[Union[str, int], ...]


@dataclass(frozen=True, order=True)
class Diagnostic:
    line: int  # 1-based
    col: int  # 1-based
    message: str
    path: JsonPath = ()

    def format(self, filename: str) -> str:
        return f"{filename}:{self.line}:{self.col}: error: {self.message}"


class InputError(Exception):
    """The topology is invalid; carries every diagnostic of the run."""

    def __init__(self, filename: str, diagnostics: Iterable[Diagnostic]):
        self.filename = filename
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format(filename) for d in self.diagnostics))


def dotted(path: JsonPath) -> str:
    """("nodes", 2, "address") -> "nodes[2].address", the spelling used in messages."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "top level"
