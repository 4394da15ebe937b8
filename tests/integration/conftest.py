"""Fixtures for the playbook-level integration tests (see labrunner.py)."""
import pytest

from labrunner import running_lab


@pytest.fixture(scope="module")
def lab():
    """A fresh lab for one test module, stopped and removed at the end."""
    yield from running_lab()
