"""Structural validation against schemas/topology.schema.json.

Every error is reported, not just the first; formats are enforced (jsonschema
only checks `format` with a FormatChecker, and has no CIDR format, so ours are added).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from functools import lru_cache
from typing import Any, Dict, Iterator

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from compiler import SCHEMA_PATH
from compiler.diagnostics import Diagnostic, dotted
from compiler.load import Document

FORMATS = FormatChecker(formats=())


# Our formats, each a parser that raises ValueError on a bad value. Networks parse
# with strict=False: host bits set are a semantic error with a better message (checks.py).
_PARSERS = {
    "ip-address": ipaddress.ip_address,
    "ip-network": lambda v: ipaddress.ip_network(v, strict=False),
}


def _format_check(parse):
    def check(value: object) -> bool:
        if isinstance(value, str):  # other types are the `type` keyword's business
            parse(value)
        return True

    return check


for _name, _parse in _PARSERS.items():
    FORMATS.checks(_name, raises=ValueError)(_format_check(_parse))


@lru_cache(maxsize=1)
def schema() -> Dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _is_integer(checker, instance) -> bool:
    # YAML's 24.0 is a float; a prefix length or MTU must be written as an integer
    return isinstance(instance, int) and not isinstance(instance, bool)


@lru_cache(maxsize=None)
def _ecma_regex(pattern: str) -> "re.Pattern[str]":
    # ECMA-262 (JSON Schema's regex dialect): `$` matches only at the very end.
    # Python's `$` also matches before a final newline, which would let "cni0\n" pass.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator, pattern: str, instance: Any, schema: Dict[str, Any]):
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    """The validator, on the schema with its local references inlined."""
    Draft202012Validator.check_schema(schema())
    types = Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
    cls = validators.extend(Draft202012Validator, validators={"pattern": _pattern}, type_checker=types)
    return cls(inlined(schema()), format_checker=FORMATS)


# Keywords that only annotate: a "$ref" beside nothing else but these is replaced by
# its target. Resolving a reference through jsonschema's registry costs more than
# checking a node's whole entry (most of the schema's time on a 5,000-node file).
_ANNOTATIONS = {"description", "default", "title", "examples", "$comment"}


def inlined(node: Any, root: Any = None, depth: int = 0) -> Any:
    """`node` with every local "$ref" replaced by (a copy of) its target, so that
    validating follows no reference; errors keep their instance paths, keywords,
    values and subschemas (a reference with other keywords beside it becomes an
    allOf of the target and those keywords). Refuses a cycle."""
    root = node if root is None else root
    if depth > 64:
        raise ValueError("schema: $ref cycle")
    if isinstance(node, list):
        return [inlined(v, root, depth) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k in _ANNOTATIONS or k == "$defs" else inlined(v, root, depth)) for k, v in node.items() if k != "$ref"}
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return {**out, "$ref": ref} if ref is not None else out
    target = inlined(_pointer(root, ref), root, depth + 1)
    if set(out) <= _ANNOTATIONS:
        return target
    return {**out, "allOf": [*out.get("allOf", []), target]}


def _pointer(root: Any, ref: str) -> Any:
    node = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# When one value breaks several keywords, say only the most telling one.
_PRIORITY = {"type": 0, "enum": 1, "format": 2, "maxLength": 3, "minLength": 3, "minimum": 3, "maximum": 3, "pattern": 4}


def _local_ref(ref: str) -> Dict[str, Any]:
    """Resolves a '#/$defs/NAME' reference inside our own schema."""
    node: Any = schema()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _branch(error: ValidationError) -> list:
    """For a value that matched no branch of an anyOf (one value or a list of them):
    the errors of the branch of the value's own kind, or the anyOf error itself."""
    kind = "array" if isinstance(error.instance, list) else "string" if isinstance(error.instance, str) else None
    by_branch: Dict[int, list] = {}
    for sub in error.context or ():
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    for index, branch in enumerate(error.validator_value):
        target = _local_ref(branch["$ref"]) if "$ref" in branch else branch
        if target.get("type") == kind and index in by_branch:
            return by_branch[index]
    return [error]


def check(doc: Document) -> Iterator[Diagnostic]:
    best: Dict[tuple, ValidationError] = {}
    rest = []
    errors = []
    for error in validator().iter_errors(doc.data):
        errors += _branch(error) if error.validator == "anyOf" else [error]
    for error in errors:
        if error.validator in _PRIORITY:
            key = tuple(error.absolute_path)
            if key not in best or _PRIORITY[error.validator] < _PRIORITY[best[key].validator]:
                best[key] = error
        else:
            rest.append(error)
    for error in rest + list(best.values()):
        yield from _diagnose(doc, error)


def _diagnose(doc: Document, error: ValidationError) -> Iterator[Diagnostic]:
    path = tuple(error.absolute_path)
    where = dotted(path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(known)):
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if not hint:
                hint = [k for k in known if k.lower() == key.lower()]
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; allowed keys: {', '.join(known)}"
            prefix = f"{where}: unknown key" if path else "unknown top-level key"
            yield doc.at(path + (key,), f"{prefix} {key!r}{suffix}", key=True)
        return
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        yield doc.at(path, f"{where}: missing required key {missing!r}" if path else f"missing required top-level key {missing!r}")
        return
    yield doc.at(path, f"{where}: {_message(error)}")


def _message(error: ValidationError) -> str:
    kind, value, inst = error.validator, error.validator_value, error.instance
    shown = _show(inst)
    if kind == "type":
        got = "null" if inst is None else f"{_json_type(inst)} {shown}"
        hint = "; quote it" if value == "string" and isinstance(inst, (int, float)) else ""
        return f"expected {_a(value)}, got {got}{hint}"
    if kind == "enum":
        return f"{shown} is not one of {', '.join(_show(v) for v in value)}"
    if kind == "pattern":
        what = error.schema.get("description") or f"must match {value}"
        return f"invalid value {shown}: {_pattern_hint(error)}" if _pattern_hint(error) else f"invalid value {shown}: {what}"
    if kind == "format":
        return f"{shown} is not a valid {_FORMAT_NAMES.get(value, value)}"
    if kind == "minimum":
        return f"{shown} is below the minimum {value}"
    if kind == "maximum":
        return f"{shown} is above the maximum {value}"
    if kind == "maxLength":
        return f"{shown} is longer than {value} characters"
    if kind == "minLength":
        return "must not be empty" if value == 1 else f"{shown} is shorter than {value} characters"
    if kind == "minItems":
        return f"needs at least {value} item{'s' if value != 1 else ''}"
    if kind == "maxItems":
        return f"has more than {value} items" + ("; give one per address family" if value == 2 else "")
    if kind == "anyOf":
        what = error.schema.get("description", "another value").rstrip(".")
        got = "null" if inst is None else f"{_json_type(inst)} {shown}"
        return f"expected {what[0].lower()}{what[1:]}, got {got}"
    return error.message


_FORMAT_NAMES = {
    "ip-address": "IP address (like 192.168.1.2 or fd00::2)",
    "ip-network": "CIDR (like 10.244.0.0/16 or fd00:10:244::/56)",
}


def _pattern_hint(error: ValidationError) -> str:
    ref_names = {
        "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$": "a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)",
        "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$": "an interface name (1-15 of A-Z a-z 0-9 . _ -)",
        "^[a-z0-9][a-z0-9._-]{0,62}$": "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63",
        "^[0-9A-Fa-f:.]+$": "an IP address (like 192.168.1.2 or fd00::2)",
        "^[0-9A-Fa-f:.]+/[0-9]{1,3}$": "a CIDR (like 10.244.0.0/16 or fd00:10:244::/56)",
        "^/[A-Za-z0-9._/-]*$": "an absolute path of A-Z a-z 0-9 . _ / -",
    }
    hint = ref_names.get(error.validator_value)
    return f"expected {hint}" if hint else ""


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "mapping"


def _a(types: Any) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer", "boolean": "a boolean (true/false)", "number": "a number", "null": "null"}
    if isinstance(types, list):
        return " or ".join(names.get(t, t) for t in types)
    return names.get(types, types)
