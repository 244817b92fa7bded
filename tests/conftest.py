import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import Namespaces, have, is_root, sweep_namespaces  # noqa: E402


@pytest.fixture
def netns():
    """Factory for network namespaces unique to this test; all removed afterwards."""
    if not is_root() or not have("ip"):
        pytest.skip("needs root and iproute2 to create network namespaces")
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.cleanup()


def pytest_sessionfinish(session, exitstatus):
    if is_root() and have("ip"):
        sweep_namespaces()
