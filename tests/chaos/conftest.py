"""tests/chaos uses the playbook-level helpers of tests/integration (labrunner.py)."""
import pathlib
import sys

INTEGRATION = str(pathlib.Path(__file__).resolve().parents[1] / "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)
