"""Fixtures for the lab's Azure control plane (Entra, managed identity endpoint, ARM), used by test_control_plane.py.

The session gets its own state folder and free ports (never the default ``.lab`` / 47000 lab, nor another
engineer's), and runs the control plane **in-process** (:class:`azurelab.server.Lab`) with a recorder in place of
the PostgreSQL backend, so tests can see which Entra admin changes ARM asked PostgreSQL to make without needing
PostgreSQL. ``python -m azurelab up`` itself is exercised in a subprocess by ``test_labctl_up_status_down``
(with ``LAB_COMPONENTS=azure``).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import ssl
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "lab"))

from azurelab import ca, config, labctl  # noqa: E402
from azurelab.config import LabPaths, Ports  # noqa: E402
from azurelab.server import Lab  # noqa: E402
from labrunner import free_base  # noqa: E402,F401  (re-exported for test_control_plane)

ARM_SCOPE = "https://management.azure.com/.default"


class RecordingHooks:
    """Stands in for PostgresLab: records calls; ``fail_next`` makes the next call raise (a refused change)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.fail_next: str | None = None

    def _maybe_fail(self):
        if self.fail_next:
            message, self.fail_next = self.fail_next, None
            raise RuntimeError(message)

    def create_entra_admin(self, server_name, principal_name, object_id, principal_type):
        self._maybe_fail()
        self.calls.append(("create", server_name, principal_name, object_id, principal_type))
        return True

    def drop_entra_admin(self, server_name, object_id):
        self._maybe_fail()
        self.calls.append(("drop", server_name, object_id))
        return True


@dataclasses.dataclass
class ControlPlane:
    paths: LabPaths
    ports: Ports
    topology: dict
    lab: Lab
    hooks: RecordingHooks

    @property
    def arm_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.arm}"

    @property
    def authority(self) -> str:
        return f"https://127.0.0.1:{self.ports.entra}"

    @property
    def subscription(self) -> str:
        return self.topology["subscription_id"]

    @property
    def tenant(self) -> str:
        return self.topology["tenant_id"]

    def imds_host(self, vm: str) -> str:
        return f"http://127.0.0.1:{self.ports.identity}/vms/{vm}"

    def automation(self) -> dict:
        return json.loads(self.paths.secrets.read_text())["sp-lab-automation"]

    def operator_credential(self):
        """The control node's credential: the automation service principal through the Entra double."""
        from azure.identity import ClientSecretCredential
        sp = self.automation()
        return ClientSecretCredential(self.tenant, sp["client_id"], sp["client_secret"], authority=self.authority,
                                      disable_instance_discovery=True)

    def client(self, cls, credential=None):
        """An azure-mgmt client pointed at the ARM double, polling fast (the double also sends retry-after-ms)."""
        return cls(credential or self.operator_credential(), self.subscription, base_url=self.arm_url,
                   credential_scopes=[ARM_SCOPE], polling_interval=0.05)

    def lab_api(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.arm_url}/lab/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        context = ssl.create_default_context(cafile=str(self.paths.ca_bundle))
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture(scope="session")
def control_plane():
    root = Path(tempfile.mkdtemp(prefix="lab-cp-test-"))
    paths, ports, topology = LabPaths(root), Ports.from_base(free_base()), config.topology()
    ca.ensure(paths)
    labctl.ensure_secrets(paths, topology)
    hooks = RecordingHooks()
    lab = Lab(paths, topology, ports, hooks=hooks)
    lab.start()
    try:
        with pytest.MonkeyPatch.context() as patch:  # the environment is restored when the session ends
            patch.setenv("REQUESTS_CA_BUNDLE", str(paths.ca_bundle))
            patch.delenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", raising=False)
            yield ControlPlane(paths, ports, topology, lab, hooks)
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def no_ambient_azure_env(monkeypatch):
    """Tests choose their identity explicitly: nothing from the caller's shell (env.sh) leaks in."""
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST",
                 "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
                 "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_USERNAME", "AZURE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
