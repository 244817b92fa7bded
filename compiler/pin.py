"""`podnet allocate TOPOLOGY --write`: pin every allocated subnet into the topology.

The file is edited with ruamel.yaml's round-trip mode so that comments, key order,
quoting and blank lines stay as the user wrote them; only a `podCIDR:` line per
unpinned node is new (placed after `interface`, else after `address`, at the
node's indentation; a flow-style node `{name: x, address: y}` gets the key
inside its braces instead). Round-trip dumping is not perfect for every
layout, so the result is checked before anything is written: each pinned node
must load with its subnet, and a line diff against the original may hold
nothing but the pinned lines (new lines, or a flow-style node's line gaining the
key). When the dumper normalised something else (aligned `key:   value`
columns, say), the lines are inserted instead at the positions the round-trip
loader reports, and checked the same way. If that fails too (a flow-style node
in such a file), the file is left alone and the error says what to add by hand.
"""

from __future__ import annotations

import copy
import difflib
import io
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from compiler.diagnostics import Diagnostic, InputError
from compiler.model import Topology
from compiler.write import replace_file

KEY = "podCIDR"
AFTER = ("interface", "address")  # the inserted key follows the first of these present
Value = Union[str, List[str]]  # a node's pinned podCIDR: one subnet, or one per family
# What to pin, by the node's index in `nodes` (not by name: the round-trip loader reads
# some names the topology loader takes as strings, 0b101 say, as numbers): its name
# (for messages) and value.
Todo = Dict[int, Tuple[str, Value]]


def pin_subnets(path: str, topo: Topology) -> int:
    """Pins each allocated (not pinned) node subnet of `topo` into the file at
    `path`; returns how many were pinned. Writes nothing when there is none."""
    todo = {i: (n.name, pin_value(n)) for i, n in enumerate(topo.nodes) if not all(n.pinned)}
    if not todo:
        return 0
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    new_text = pinned_text(path, text, todo)
    replace_file(os.path.realpath(path), new_text.encode("utf-8"))
    return len(todo)


def pin_value(node) -> Value:
    """What `podCIDR` says once pinned: the subnet, or one per family (a list, in
    network.podCIDR's order) in a dual-stack cluster."""
    subnets = [str(s) for s in node.subnets]
    return subnets[0] if len(subnets) == 1 else subnets


def pinned_text(path: str, text: str, todo: Todo) -> str:
    """`text` with `podCIDR: VALUE` added to (or, where only some families were
    pinned, completed on) each node in `todo`."""
    yaml = _round_trip(text)
    data = yaml.load(text)
    nodes = data["nodes"]
    for i, node in enumerate(nodes):
        if isinstance(node, CommentedMap) and i in todo:
            value = _yaml_value(todo[i][1])
            if KEY in node:
                node[KEY] = value  # a dual-stack node with one family pinned
            else:
                _insert(node, value)
    buf = io.StringIO()
    yaml.dump(data, buf)
    new_text = buf.getvalue()
    if "\r\n" in text:
        new_text = new_text.replace("\r\n", "\n").replace("\n", "\r\n")
    if text.startswith("\ufeff"):
        new_text = "\ufeff" + new_text.lstrip("\ufeff")
    try:
        _verify(path, text, new_text, todo)
    except InputError:
        # The dumper normalised something else (aligned values, odd spacing). Block-style
        # nodes can still be pinned exactly: insert the lines where the round-trip
        # loader says the preceding key is.
        lines = _insert_lines(text, YAML(typ="rt").load(text)["nodes"], todo)
        if lines is None:
            raise
        new_text = "".join(lines)
        _verify(path, text, new_text, todo)
    return new_text


def _insert_lines(text: str, nodes: list, todo: Todo):
    """The file's lines with `podCIDR: SUBNET` after each unpinned node's `interface`
    or `address` line, at that key's column; None when a node is in flow style."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    inserts: List[Tuple[int, str]] = []
    for i, node in enumerate(nodes):
        if not isinstance(node, CommentedMap) or i not in todo:
            continue
        prev = next((k for k in AFTER if k in node), None)
        if prev is None or node.fa.flow_style():
            return None
        line, col = node.lc.key(prev)
        if line + 1 > len(lines) or KEY in node:
            return None
        inserts.append((line + 1, " " * col + f"{KEY}: {_plain(todo[i][1])}{newline}"))
    for at, new in sorted(inserts, reverse=True):
        if at == len(lines) and not lines[-1].endswith("\n"):
            lines[-1] += newline
        lines.insert(at, new)
    return lines


def _round_trip(text: str) -> YAML:
    """A round-trip YAML set up to reproduce this file's indentation and quotes."""
    _, seq_indent, seq_offset = load_yaml_guess_indent(text)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never re-wrap a long line
    yaml.indent(mapping=_mapping_indent(text), sequence=seq_indent or 2, offset=seq_offset or 0)
    yaml.explicit_start = bool(re.search(r"^---[ \t]*\r?$", text, re.M))
    return yaml


def _mapping_indent(text: str) -> int:
    """The indentation of the first key nested under a top-level key (`network:`)."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if re.match(r"^[A-Za-z_][\w-]*:\s*(#.*)?$", line):
            for nxt in lines[i + 1:]:
                if nxt.strip() and not nxt.lstrip().startswith("#"):
                    m = re.match(r"^( +)[A-Za-z_\"']", nxt)
                    if m:
                        return len(m.group(1))
                    break
    return 2


def _insert(node: CommentedMap, value) -> None:
    keys = list(node.keys())
    prev = next((k for k in AFTER if k in node), keys[-1])
    pos = keys.index(prev) + 1
    node.insert(pos, KEY, value)
    _move_following_comments(node, prev)


def _move_following_comments(node: CommentedMap, prev: str) -> None:
    """ruamel keeps the comment lines and blank lines that follow a key on that key
    (with its end-of-line comment). The inserted key goes right after `prev`, so
    those lines must follow the new key instead: split the token after the first
    line, keep the end-of-line part on `prev`, give the rest to the new key."""
    items = node.ca.items
    slot = items.get(prev)
    if not slot or len(slot) < 3 or slot[2] is None:
        return
    token = slot[2]
    value = token.value
    cut = value.find("\n")
    if cut < 0 or cut == len(value) - 1:
        return  # only an end-of-line comment: it stays where it is
    head, tail = value[: cut + 1], value[cut + 1:]
    moved = copy.copy(token)
    moved.value = "\n" + tail
    if head.strip():
        token.value = head
    else:
        slot[2] = None
    items[KEY] = [None, None, moved, None]


def _verify(path: str, old: str, new: str, todo: Todo) -> None:
    """Refuses a result that changed anything but the pinned lines."""
    problems: List[Tuple[int, str]] = []
    check = YAML(typ="safe", pure=True).load(new)
    nodes = check.get("nodes", []) if isinstance(check, dict) else []
    for i, (name, value) in sorted(todo.items()):
        raw = nodes[i] if i < len(nodes) else None
        if not isinstance(raw, dict) or raw.get(KEY) != value:
            problems.append((1, f"node {name}: pinning failed"))
    old_lines, new_lines = old.splitlines(), new.splitlines()
    values = [value for _, value in todo.values()]
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if op in ("insert", "replace") and _only_pins(old_lines[a1:a2], new_lines[b1:b2], values):
            continue
        problems.append((a1 + 1, f"pinning would also change line {a1 + 1} ({(old_lines[a1:a2] or [''])[0].strip()!r})"))
    if problems:
        hints = "; ".join(f"{name}: {KEY}: {_plain(value)}" for name, value in sorted(todo.values()))
        raise InputError(path, [Diagnostic(line, 1, f"{msg}; the file is unchanged: add these lines by hand instead ({hints})") for line, msg in problems[:1]])


def _only_pins(old: List[str], new: List[str], values: List[Value]) -> bool:
    """Whether lines `new` are lines `old`, in order, each kept or completed with its
    pin (`_gained_pin`), with only new pin lines between them. (difflib puts a block
    node's new line and the flow-style node after it in one "replace".)"""
    reach = {0}  # how many of `new` the old lines so far can account for
    for line in old:
        after = set()
        for j in sorted(reach):
            for k in range(j, len(new)):
                if line == new[k] or _gained_pin(line, new[k], values):
                    after.add(k + 1)
                if not _gained_pin(None, new[k], values):
                    break
        if not after:
            return False
        reach = after
    return any(all(_gained_pin(None, n, values) for n in new[j:]) for j in reach)


def _gained_pin(old: Optional[str], new: str, values: List[Value]) -> bool:
    """Whether line `new` is line `old` (None: no line) plus a pinned `podCIDR`: a new
    `podCIDR: X` line, a flow-style node `{..., podCIDR: X}`, or a dual-stack node's
    `podCIDR` line completed. Compared as YAML, not as text."""
    before, after = _load_line(old) if old is not None else {}, _load_line(new)
    if not isinstance(before, dict) or not isinstance(after, dict):
        return False
    rest_before = {k: v for k, v in before.items() if k != KEY}
    rest_after = {k: v for k, v in after.items() if k != KEY}
    return rest_before == rest_after and KEY in after and after[KEY] != before.get(KEY) and after[KEY] in values


def _load_line(line: str) -> Any:
    """One line as YAML (a list item's `- ` dropped), or None when it is not valid alone."""
    text = line.strip()
    if text.startswith("- "):
        text = text[2:]
    try:
        return YAML(typ="safe", pure=True).load(text)
    except Exception:  # noqa: BLE001 - any YAML error means "not a pinned line"
        return None


def _yaml_value(value: Value) -> Any:
    """A list is written in flow style, on the key's line: `podCIDR: [A, B]`."""
    if isinstance(value, str):
        return value
    seq = CommentedSeq(value)
    seq.fa.set_flow_style()
    return seq


def _plain(value: Value) -> str:
    return value if isinstance(value, str) else "[" + ", ".join(value) + "]"
