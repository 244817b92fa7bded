"""The bad-input corpus: tests/cases/NAME.yaml must fail with exactly NAME.expected.

Each .expected line is `LINE:COL: error: MESSAGE` (the file name is prepended by
the test). Every case must exit 1, print no traceback, and write no file.
"""

from pathlib import Path

import pytest

from helpers import REPO, podnet

CASES = sorted((REPO / "tests" / "cases").glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_case(case: Path, tmp_path: Path):
    rel = case.relative_to(REPO).as_posix()
    expected = [f"{rel}:{line}" for line in case.with_suffix(".expected").read_text().splitlines()]
    out = tmp_path / "out"
    for args in (["validate", rel], ["compile", rel, "-o", str(out)]):
        r = podnet(*args)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.splitlines() == expected
        assert r.stdout == ""
    assert not out.exists(), "a failed compile must write nothing"
