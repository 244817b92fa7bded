"""The bad-input corpus: tests/cases/NAME.yaml must fail with exactly NAME.expected.

Each .expected line is `LINE:COL: error: MESSAGE` (the file name is prepended by
the test). Every case must exit 1, print no traceback, and write no file.
"""

from pathlib import Path

import pytest

from compiler.cli import main
from helpers import REPO, podnet

CASES = sorted((REPO / "tests" / "cases").glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def expected_lines(case: Path):
    rel = case.relative_to(REPO).as_posix()
    return rel, [f"{rel}:{line}" for line in case.with_suffix(".expected").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_case(case: Path, tmp_path: Path, capsys, monkeypatch):
    """In-process (fast): an exception would fail the test, so no traceback can hide."""
    monkeypatch.chdir(REPO)
    rel, expected = expected_lines(case)
    out = tmp_path / "out"
    for args in (["validate", rel], ["compile", rel, "-o", str(out)]):
        assert main(args) == 1
        captured = capsys.readouterr()
        assert captured.err.splitlines() == expected
        assert captured.out == ""
    assert not out.exists(), "a failed compile must write nothing"


@pytest.mark.parametrize("name", ["many-problems", "alias-bomb", "not-utf8", "syntax-unclosed-quote"])
def test_case_as_a_process(name: str, tmp_path: Path):
    rel, expected = expected_lines(REPO / "tests" / "cases" / f"{name}.yaml")
    r = podnet("compile", rel, "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == expected
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2():
    assert podnet("compile").returncode == 2
    assert podnet("frobnicate", "x").returncode == 2


def test_missing_file_is_an_input_error(tmp_path):
    r = podnet("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1
    assert r.stderr == f"{tmp_path}/nope.yaml:1:1: error: cannot read file: No such file or directory\n"
