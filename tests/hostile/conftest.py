"""The hostile-input corpus runs on one lab, started by tests/integration/labrunner.py (tests/conftest.py already puts
the collection and lab/ on the path; this puts tests/integration there for labrunner)."""
import pathlib
import sys

import pytest

INTEGRATION = pathlib.Path(__file__).resolve().parents[1] / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

from labrunner import running_lab  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def lab():
    """A fresh lab for the corpus, stopped and removed at the end."""
    yield from running_lab()
