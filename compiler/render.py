"""Artifacts -> bytes. Pure: reads templates, touches no output file.

Shell templates run in an environment where every `{{ }}` must be either an int
or the output of the `sh` filter (a single-quoted shell word); anything else is
a bug in the template and fails the compile, so no unquoted value can reach a shell.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Tuple

import jinja2
import jinja2.meta
import yaml

from compiler import TEMPLATES_DIR, __version__
from compiler.plan import Artifact

SHELL_SUFFIXES = (".sh.j2", ".py.j2")


class ShellWord(str):
    """A string already quoted for POSIX sh."""


def sh_quote(value: Any) -> ShellWord:
    """Always single-quote, so a reviewer sees every value as a literal."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"sh: refusing to quote {type(value).__name__} {value!r}")
    text = str(value)
    if "\n" in text or "\0" in text:
        raise ValueError(f"sh: refusing a value with a newline or NUL: {text!r}")
    return ShellWord("'" + text.replace("'", "'\\''") + "'")


def _shell_finalize(value: Any) -> Any:
    if isinstance(value, ShellWord) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"unquoted value {value!r} in a shell template; pass it through |sh")


def _comment(value: Any) -> ShellWord:
    """For banners: a value inside a '#' comment, reduced to harmless characters."""
    text = "".join(c if c.isalnum() or c in "._/+-: " else "?" for c in str(value))
    return ShellWord(text)


@lru_cache(maxsize=None)
def _env(shell: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        # templates do not change during a compile: no stat(2) of every template
        # (and of each it includes) on every render
        auto_reload=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_shell_finalize if shell else None,
    )
    env.filters["sh"] = sh_quote
    env.filters["comment"] = _comment
    return env


class _YamlDumper(yaml.SafeDumper):
    """SafeDumper that indents block sequences under their key, as yamllint and
    ansible-lint expect (PyYAML's default puts `- ` at the key's column)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


# The inventory (thousands of hosts) through PyYAML's pure-Python emitter costs
# ~0.4 s. plain_yaml writes what yaml.dump (the arguments above) writes for the
# one shape it holds: nested non-empty mappings of str to str where every string
# is a plain scalar. A string is taken as plain only when it is made of
# characters that are never YAML indicators in the middle of a word, starts with
# a letter or digit, does not end with ':', and PyYAML's resolver reads it back
# as a string (not 1, 1.5, true, null, 1:20, a date, ...). Anything else returns
# None and goes through yaml.dump; tests/test_plain_yaml.py compares both over many
# documents.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*\Z")
_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"


class _NotPlain(Exception):
    pass


def _plain(word: Any, key: bool = False) -> str:
    if (
        type(word) is not str
        or not _PLAIN_WORD.match(word)
        or word.endswith(":")
        or (key and len(word) >= 100)  # PyYAML writes keys of 123+ characters as "? key"
        or _RESOLVER.resolve(yaml.ScalarNode, word, (True, False)) != _STR_TAG
    ):
        raise _NotPlain
    return word


def plain_yaml(document: Any) -> Optional[str]:
    """yaml.dump(document, Dumper=_YamlDumper, sort_keys=False,
    default_flow_style=False, width=1000, explicit_start=True), byte for byte, for
    nested non-empty dicts of plain strings; None for any other document."""
    lines = ["---"]

    def mapping(value: Any, indent: str) -> None:
        if type(value) is not dict or not value:
            raise _NotPlain
        for k, v in value.items():
            if type(v) is str:
                lines.append(f"{indent}{_plain(k, key=True)}: {_plain(v)}")
            else:
                lines.append(f"{indent}{_plain(k, key=True)}:")
                mapping(v, indent + "  ")

    try:
        mapping(document, "")
    except _NotPlain:
        return None
    lines.append("")
    return "\n".join(lines)


def render(artifact: Artifact) -> bytes:
    if artifact.renderer == "json":
        return (json.dumps(artifact.data, sort_keys=True, indent=2) + "\n").encode()
    if artifact.renderer == "yaml":
        # with a template, data is {"source": ..., "document": ...} and the template is
        # a '#' comment banner put above the document
        document = artifact.data["document"] if artifact.template else artifact.data
        text = plain_yaml(document)
        if text is None:
            text = yaml.dump(document, Dumper=_YamlDumper, sort_keys=False, default_flow_style=False, width=1000, explicit_start=True)
        if artifact.template:
            text = _env(True).get_template(artifact.template).render(source=artifact.data["source"]) + text
        return text.encode()
    shell = artifact.template.endswith(SHELL_SUFFIXES)
    text = _env(shell).get_template(artifact.template).render(**artifact.data)
    return text.encode()


# Fingerprints of what an artifact is rendered from. Two artifacts with the same
# key render to the same bytes; a file on disk rendered from the same key need not
# be rendered again (write.TreeWriter.unchanged).


@lru_cache(maxsize=1)
def code_digest() -> bytes:
    """podnet's own code and the versions of what renders: any change to them changes every key."""
    h = hashlib.sha256(f"{__version__}\0{jinja2.__version__}\0{yaml.__version__}\0{sys.version_info[:2]}\0".encode())
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.digest()


@lru_cache(maxsize=None)
def template_inputs(name: str) -> Tuple[bytes, Optional[FrozenSet[str]]]:
    """The digest of a template's source and of every template it includes, imports
    or extends, transitively; and the top-level names they read (None when a
    template is chosen at run time: then every template counts and every name)."""
    env = _env(False)
    h = hashlib.sha256()
    names: set = set()
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        source = env.loader.get_source(env, current)[0]
        h.update(current.encode() + b"\0" + source.encode() + b"\0")
        ast = env.parse(source)
        names |= jinja2.meta.find_undeclared_variables(ast)
        for ref in jinja2.meta.find_referenced_templates(ast):
            if ref is None:
                return _all_templates_digest(), None
            todo.append(ref)
    return h.digest(), frozenset(names)


def _all_templates_digest() -> bytes:
    h = hashlib.sha256()
    for path in sorted(p for p in Path(TEMPLATES_DIR).rglob("*") if p.is_file()):
        h.update(path.relative_to(TEMPLATES_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.digest()


def inputs_key(artifact: Artifact, memo: Dict[int, Tuple[Any, bytes]]) -> Optional[str]:
    """A digest of everything `render(artifact)` depends on: podnet's code, the
    renderer, the template sources and the part of the data the templates read.
    None when the data cannot be serialised canonically (then it is always rendered).
    `memo` caches the serialisation of shared values (by identity) for one compile."""
    h = hashlib.sha256(code_digest())
    h.update(f"\0{artifact.renderer}\0{artifact.template}\0".encode())
    names: Optional[FrozenSet[str]] = None
    if artifact.template:
        digest, names = template_inputs(artifact.template)
        h.update(digest)
    data = artifact.data
    if artifact.renderer != "template":
        names = None  # the json and yaml renderers read all of it
    try:
        if isinstance(data, dict):
            for key in sorted(data) if names is None else sorted(names.intersection(data)):
                h.update(b"\0" + _CANONICAL.encode(key).encode() + b"\0" + _canonical(data[key], memo))
        else:
            h.update(_canonical(data, memo))
    except (TypeError, ValueError):
        return None
    return h.hexdigest()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def _canonical(value: Any, memo: Dict[int, Tuple[Any, bytes]]) -> bytes:
    hit = memo.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    text = _CANONICAL.encode(value).encode()
    if isinstance(value, (dict, list, tuple)):
        memo[id(value)] = (value, text)  # keeps `value` alive, so its id is not reused
    return text
