"""Artifacts -> bytes. Pure: reads templates, touches no output file.

Shell templates run in an environment where every `{{ }}` must be either an int
or the output of the `sh` filter (a single-quoted shell word); anything else is
a bug in the template and fails the compile, so no unquoted value can reach a shell.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2
import yaml

from compiler import TEMPLATES_DIR
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


def render(artifact: Artifact) -> bytes:
    if artifact.renderer == "json":
        return (json.dumps(artifact.data, sort_keys=True, indent=2) + "\n").encode()
    if artifact.renderer == "yaml":
        # with a template, data is {"source": ..., "document": ...} and the template is
        # a '#' comment banner put above the document
        document = artifact.data["document"] if artifact.template else artifact.data
        text = yaml.dump(document, Dumper=_YamlDumper, sort_keys=False, default_flow_style=False, width=1000, explicit_start=True)
        if artifact.template:
            text = _env(True).get_template(artifact.template).render(source=artifact.data["source"]) + text
        return text.encode()
    shell = artifact.template.endswith(SHELL_SUFFIXES)
    text = _env(shell).get_template(artifact.template).render(**artifact.data)
    return text.encode()
