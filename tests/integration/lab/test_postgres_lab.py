"""The lab's PostgreSQL (real server + TLS front + pgaadauth shim) and OpenBao "before" state, driven with the
clients production uses: psycopg, hvac, azure-identity, and the demo app as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import hvac
import psycopg
import pytest

# Fixtures are used by name; pytest no longer loads plugins from a nested conftest, so they are imported here.
from conftest_pg import (DBA, DBA_ROLE, REPO_ROOT, entra_and_passwords_on, managed_identity,  # noqa: F401 pylint: disable=unused-import
                         openbao_stack, pg_stack)


def refused(stack, user: str, password: str, **kwargs) -> str:
    """The error text of a login that must fail."""
    with pytest.raises(psycopg.OperationalError) as caught:
        stack.connect(user, password, **kwargs).close()
    return str(caught.value)


# -- token logins ----------------------------------------------------------------------------------------------

def test_token_login_as_shim_principal(pg_stack, managed_identity):
    token = pg_stack.token(managed_identity)
    with pg_stack.connect(managed_identity["role"], token) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone()[0] == managed_identity["role"]
        assert conn.execute("SELECT count(*) FROM orders.orders").fetchone()[0] == 2


def test_a_grant_fault_takes_the_grant_away_at_login(pg_stack, managed_identity):
    """The lab's grant fault (``/lab/grant-faults``): the server revokes the role's table privileges as it signs in,
    so its query fails with PostgreSQL's own error; another role, and the role once the fault is gone, are served."""
    role = managed_identity["role"]
    pg_stack.front.grant_faults = lambda user: [{"server": "pg-lab", "role": role, "schema": "orders"}] \
        if user == role else []
    try:
        with pg_stack.connect(role, pg_stack.token(managed_identity)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table orders"):
                conn.execute("SELECT count(*) FROM orders.orders")
    finally:
        pg_stack.front.grant_faults = lambda user: []
        with pg_stack.connect(pg_stack.lab.admin_login, pg_stack.lab.admin_password()) as conn:
            conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA orders TO "{role}"')
    with pg_stack.connect(role, pg_stack.token(managed_identity)) as conn:
        assert conn.execute("SELECT count(*) FROM orders.orders").fetchone()[0] == 2


def test_the_front_counts_sessions_and_round_trips(pg_stack, managed_identity):
    """One session; three simple queries and one extended-protocol query with its Sync are four round trips (the
    login's own ReadyForQuery is not one); a refused login is no session."""
    counted = []
    pg_stack.front.count = counted.append
    try:
        with pg_stack.connect(managed_identity["role"], pg_stack.token(managed_identity)) as conn:
            for _attempt in range(3):
                conn.execute("SELECT 1", prepare=False)
            conn.execute("SELECT %s::int", (1,))
        refused(pg_stack, managed_identity["role"], "not a token")
    finally:
        pg_stack.front.count = lambda what: None
    assert counted.count("sessions") == 1
    assert counted.count("round_trips") == 4, counted


def test_token_of_another_principal_is_refused(pg_stack, managed_identity):
    other = dict(managed_identity, object_id=str(uuid.uuid4()))
    assert 'password authentication failed for user "mi-orders-api"' in refused(
        pg_stack, managed_identity["role"], pg_stack.token(other))


def test_token_for_another_audience_is_refused(pg_stack, managed_identity):
    token = pg_stack.token(managed_identity, audience="https://database.windows.net/.default")
    assert "password authentication failed" in refused(pg_stack, managed_identity["role"], token)


def test_expired_token_is_refused(pg_stack, managed_identity):
    token = pg_stack.token(managed_identity, lifetime_s=-120)  # past the issuer's 60 s leeway
    assert "The access token has expired" in refused(pg_stack, managed_identity["role"], token)


def test_token_refused_when_entra_auth_is_disabled(pg_stack, managed_identity):
    pg_stack.auth["activeDirectoryAuth"] = "Disabled"
    assert "password authentication failed" in refused(pg_stack, managed_identity["role"],
                                                       pg_stack.token(managed_identity))


def test_token_for_a_password_role_is_refused(pg_stack):
    dba_token = pg_stack.token(DBA)
    assert "password authentication failed" in refused(pg_stack, pg_stack.lab.admin_login, dba_token)


# -- password logins -------------------------------------------------------------------------------------------

def test_server_admin_password_login(pg_stack):
    with pg_stack.connect(pg_stack.lab.admin_login, pg_stack.lab.admin_password()) as conn:
        row = conn.execute("SELECT current_user, rolsuper, pg_has_role('azure_pg_admin', 'MEMBER') "
                           "FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == (pg_stack.lab.admin_login, False, True)


def test_wrong_password_is_refused(pg_stack):
    assert 'password authentication failed for user "pgadmin"' in refused(pg_stack, "pgadmin", "not-the-password")


def test_password_login_refused_when_password_auth_is_disabled(pg_stack):
    pg_stack.auth["passwordAuth"] = "Disabled"
    assert "password authentication failed" in refused(pg_stack, "pgadmin", pg_stack.lab.admin_password())


def test_entra_role_cannot_use_a_password(pg_stack, managed_identity):
    assert "password authentication failed" in refused(pg_stack, managed_identity["role"], "a-password")


def test_connection_without_tls_is_refused(pg_stack):
    message = refused(pg_stack, "pgadmin", pg_stack.lab.admin_password(), sslmode="disable")
    assert "no encryption" in message


def test_cancel_reaches_the_server(pg_stack):
    with pg_stack.connect("pgadmin", pg_stack.lab.admin_password()) as conn:
        threading.Timer(0.3, conn.cancel_safe).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 5


# -- the pgaadauth shim ----------------------------------------------------------------------------------------

def test_list_principals(pg_stack, managed_identity):
    with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
        everyone = {row[0]: row for row in conn.execute("SELECT * FROM pgaadauth_list_principals(false)")}
        admins = [row[0] for row in conn.execute("SELECT rolname FROM pgaadauth_list_principals(true)")]
        columns = [column.name for column in conn.execute("SELECT * FROM pgaadauth_list_principals(false)").description]
    assert columns == ["rolname", "principalType", "objectId", "tenantId", "isMfa", "isAdmin"]
    assert everyone[managed_identity["role"]][1:] == (
        "service", managed_identity["object_id"], pg_stack.topology["tenant_id"], False, False)
    assert everyone[DBA_ROLE][1] == "user" and everyone[DBA_ROLE][5] is True
    assert admins == [DBA_ROLE]


def test_duplicate_object_id_is_refused(pg_stack, managed_identity):
    with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
        with pytest.raises(psycopg.errors.InternalError) as caught:
            conn.execute("SELECT pgaadauth_create_principal_with_oid('mi-other', %s, 'service', false, false)",
                         (managed_identity["object_id"],))
    assert "Updating an existing principal isn't supported" in caught.value.diag.message_hint


def test_name_of_a_password_role_is_refused(pg_stack):
    with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
        with pytest.raises(psycopg.errors.DuplicateObject):
            conn.execute("SELECT pgaadauth_create_principal_with_oid('pgadmin', %s, 'service', false, false)",
                         (str(uuid.uuid4()),))


def test_only_entra_admins_may_create_principals(pg_stack, managed_identity):
    # The server admin is in azure_pg_admin but signed in with a password: not an Entra admin.
    with pg_stack.connect("pgadmin", pg_stack.lab.admin_password(), dbname="postgres") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a Microsoft Entra administrator"):
            conn.execute("SELECT pgaadauth_create_principal_with_oid('x', %s, 'service', false, false)",
                         (str(uuid.uuid4()),))
    # A plain Entra principal is not in azure_pg_admin: it may not even call the function.
    with pg_stack.connect(managed_identity["role"], pg_stack.token(managed_identity), dbname="postgres") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pgaadauth_create_principal_with_oid('x', %s, 'service', false, false)",
                         (str(uuid.uuid4()),))


def test_create_by_display_name_explains_the_lab_limit(pg_stack):
    with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="no directory"):
            conn.execute("SELECT pgaadauth_create_principal('mi-webapp', false, false)")


def test_drop_role_removes_the_principal(pg_stack):
    object_id = str(uuid.uuid4())
    principal = {"object_id": object_id, "client_id": str(uuid.uuid4()), "type": "ManagedIdentity"}
    with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
        create = "SELECT pgaadauth_create_principal_with_oid('mi-temp', %s, 'service', false, false)"
        assert conn.execute(create, (object_id,)).fetchone()[0] == 'Created role for "mi-temp"'
        conn.execute('DROP ROLE "mi-temp"')
        assert not pg_stack.lab.is_entra_role("mi-temp")
        conn.execute(create, (object_id,))  # the object id is free again
    with pg_stack.connect("mi-temp", pg_stack.token(principal), dbname="postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "mi-temp"


def test_arm_entra_admin_lifecycle(pg_stack):
    lab, object_id = pg_stack.lab, str(uuid.uuid4())
    assert lab.create_entra_admin(lab.name, "mi-operator", object_id, "ServicePrincipal") is True
    assert lab.create_entra_admin(lab.name, "mi-operator", object_id, "ServicePrincipal") is False
    assert lab.principal_for_role("mi-operator") == {
        "object_id": object_id, "type": "service", "tenant_id": pg_stack.topology["tenant_id"],
        "is_admin": True, "is_mfa": False}
    with pg_stack.lab.connect() as conn:
        attributes = conn.execute("SELECT rolcreaterole, rolcreatedb, rolsuper, pg_has_role(oid, 'azure_pg_admin', "
                                  "'MEMBER') FROM pg_roles WHERE rolname = 'mi-operator'").fetchone()
    assert attributes == (True, True, False, True)
    with pytest.raises(Exception, match="Updating an existing principal"):
        lab.create_entra_admin(lab.name, "mi-operator-renamed", object_id, "ServicePrincipal")
    assert lab.drop_entra_admin(lab.name, object_id) is True
    assert lab.drop_entra_admin(lab.name, object_id) is False
    assert lab.principal_for_role("mi-operator") is None


# -- OpenBao: the "before" state --------------------------------------------------------------------------------

def test_seed_is_idempotent(openbao_stack):
    openbao_stack.seed()
    assert openbao_stack.seed() == []
    assert oct(openbao_stack.token_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("app", ["orders-api", "reports", "billing-worker"])
def test_vault_credentials_connect_through_the_front(pg_stack, openbao_stack, app):
    openbao_stack.seed()
    config = json.loads((pg_stack.paths.apps / f"{app}.json").read_text())
    assert oct((pg_stack.paths.apps / f"{app}.secret-id").stat().st_mode & 0o777) == "0o600"
    client = hvac.Client(url=config["vault_addr"])
    client.auth.approle.login(role_id=config["role_id"], secret_id=open(config["secret_id_file"]).read(),
                              mount_point=config["vault_approle_mount"])
    creds = client.secrets.database.generate_credentials(name=config["vault_role"],
                                                         mount_point=config["vault_database_mount"])["data"]
    with pg_stack.connect(creds["username"], creds["password"], dbname=config["db_name"]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == creds["username"]
        assert conn.execute(config["query"]).fetchone()[0] is not None


def run_demo_app(stack, app: str, **env) -> tuple[int, dict]:
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                   "PYTHONPATH": str(REPO_ROOT / "lab"), "LAB_STATE_DIR": str(stack.paths.root), **env}
    done = subprocess.run([sys.executable, "-m", "azurelab.demo_app", app], env=environment, capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_demo_app_in_vault_mode(pg_stack, openbao_stack):
    openbao_stack.seed()
    code, result = run_demo_app(pg_stack, "orders-api")
    assert code == 0, result
    assert result["mode"] == "vault" and result["rows"] == [[2]]
    assert result["connected_as"].startswith("v-approle-orders")  # Vault's name template: v-<auth>-<role>-...
    with pg_stack.lab.connect() as conn:
        valid_until = conn.execute("SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s",
                                   (result["connected_as"],)).fetchone()
    assert valid_until is not None and valid_until[0] is not None  # a Vault-issued, expiring user


class _Imds(BaseHTTPRequestHandler):
    """The smallest IMDS: what azure-identity asks a VM's managed identity endpoint (see shared NOTES.md)."""

    issue = None  # set by the test: resource -> (token, expires_on)

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)
        if self.headers.get("Metadata") != "true" or "resource" not in query:
            self.send_response(400)
            self.end_headers()
            return
        token, expires_on = type(self).issue(query["resource"][0])
        body = json.dumps({"access_token": token, "expires_in": str(expires_on - int(time.time())),
                           "expires_on": str(expires_on), "resource": query["resource"][0],
                           "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_demo_app_in_identity_mode(pg_stack, managed_identity):
    _Imds.issue = staticmethod(lambda resource: pg_stack.issuer.issue(managed_identity, resource))
    imds = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    threading.Thread(target=imds.serve_forever, daemon=True).start()
    config = {"app": "identity-probe", "vm": "vm-orders", "mode": "identity",
              "managed_identity_client_id": managed_identity["client_id"], "db_user": managed_identity["role"],
              "db_host": "127.0.0.1", "db_port": pg_stack.front.port, "db_name": "appdb",
              "db_sslmode": "verify-full", "db_sslrootcert": str(pg_stack.paths.ca_cert),
              "query": "SELECT count(*) FROM orders.orders"}
    pg_stack.paths.apps.mkdir(parents=True, exist_ok=True)
    (pg_stack.paths.apps / "identity-probe.json").write_text(json.dumps(config))
    try:
        code, result = run_demo_app(pg_stack, "identity-probe",
                                    AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{imds.server_port}")
    finally:
        imds.shutdown()
        imds.server_close()
    assert code == 0, result
    assert result == {"app": "identity-probe", "mode": "identity", "ok": True,
                      "connected_as": managed_identity["role"], "rows": [[2]]}


def test_demo_app_reports_failure_without_secrets(pg_stack, openbao_stack):
    openbao_stack.seed()
    config_file = pg_stack.paths.apps / "reports.json"
    config = json.loads(config_file.read_text())
    secret_id = open(config["secret_id_file"]).read()
    pg_stack.auth["passwordAuth"] = "Disabled"  # the cutover happened, but the app still uses Vault
    code, result = run_demo_app(pg_stack, "reports")
    assert code == 1 and result["ok"] is False and "password authentication failed" in result["error"]
    assert secret_id not in json.dumps(result)
