"""The lab's Azure SQL side end to end, as ``python -m azurelab up`` runs it (one lab for this module, on its own
ports and state folder; see labrunner.py).

``up`` serves both SQL servers of topology.yml, seeds the "before" state (a contained SQL user per SQL application,
its password in OpenBao KV v2), and the servers follow the ARM double's Entra admin and Entra-only settings. Real
clients only: pyodbc with ODBC Driver 18, hvac, azure-mgmt-sql / -msi / -compute, azure-identity. The demo app and
the probe run in their own processes with the lab's env.sh; in this process pyodbc names the driver library
directly, because unixODBC reads ``ODBCSYSINI`` only once per process and another test module may have used it.
"""
from __future__ import annotations

import json
import stat
import struct
import subprocess
import sys
from contextlib import closing

import hvac
import pyodbc
import pytest
from azure.identity import ManagedIdentityCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.sql import SqlManagementClient

from azurelab import odbc, sqlcatalog, tds
from azurelab.config import LabPaths
from labrunner import REPO

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

DANA = "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"  # a user of the lab directory
ARM_SCOPE = "https://management.azure.com/.default"
SQL_SCOPE = "https://database.windows.net/.default"
RG_OPS, RG_APPS, RG_DATA = "rg-lab-ops", "rg-lab-apps", "rg-lab-data"
# app -> (server, database, contained user, roles), as topology.yml seeds them
SQL_APPS = {
    "inventory-api": ("sql-lab", "appdb", "inventory-api-sql", ("db_datareader", "db_datawriter")),
    "audit-reader": ("sql-lab", "appdb", "audit-reader-sql", ("db_datareader",)),
    "ledger": ("sql-lab-2", "ledgerdb", "ledger-sql", ("db_datareader", "ledger_writer")),
}
SQL_PORT_OFFSET = {"sql-lab": 7, "sql-lab-2": 8}  # LAB_PORT_BASE + offset, in topology order
ROLES = tuple(role for role, _id in sqlcatalog.FIXED_ROLES) + ("ledger_writer",)
OUTPUTS: list[str] = []  # everything the lab printed to us: checked for secrets at the end
APP_PASSWORDS: set[str] = set()  # every SQL application password seen in KV (new at every up)


@pytest.fixture(scope="module")
def paths(lab):
    return LabPaths(lab.state)


@pytest.fixture
def on_control_node(lab, monkeypatch):
    """This process as the control node: the lab CA trusted, vm-control's managed identity endpoint."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "AZURE_POD_IDENTITY_AUTHORITY_HOST"):
        monkeypatch.setenv(name, lab.env[name])


def run(lab, module: str, *args: str, **env: str) -> tuple[int, dict]:
    """``python -m <module> <args>`` with the lab's environment; returns (exit status, its JSON line)."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(lab.env, PYTHONPATH=str(REPO / "lab"), **env), timeout=60, check=False)
    OUTPUTS.extend([done.stdout, done.stderr])
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def lab_command(lab, command: str) -> subprocess.CompletedProcess:
    done = lab.lab("azurelab", command)
    OUTPUTS.extend([done.stdout, done.stderr])
    assert done.returncode == 0, done.stderr + done.stdout
    return done


def token_connect(lab, server: str, database: str, token: str) -> pyodbc.Connection:
    """The tutorial's token login (attribute 1256), the driver named by its library path."""
    raw, port = token.encode("UTF-16-LE"), lab.base + SQL_PORT_OFFSET[server]
    return pyodbc.connect(f"DRIVER={{{odbc.driver_library()}}};SERVER=tcp:localhost,{port};DATABASE={database};"
                          "Encrypt=yes;",
                          attrs_before={1256: struct.pack(f"<I{len(raw)}s", len(raw), raw)}, timeout=10)


def current_user(conn: pyodbc.Connection) -> str:
    with closing(conn):
        return conn.cursor().execute("SELECT CURRENT_USER").fetchone()[0]


def kv_secret(lab, app: str) -> dict | None:
    """The app's KV v2 secret, read with the OpenBao root token (lab side), or None."""
    client = hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text())
    try:
        secret = client.secrets.kv.v2.read_secret_version(path=f"apps/{app}/sql", mount_point="secret",
                                                          raise_on_deleted_version=True)["data"]["data"]
    except hvac.exceptions.InvalidPath:
        return None
    APP_PASSWORDS.add(secret["password"])
    return secret


def operator():
    """The control node's credential: mi-operator through vm-control's managed identity endpoint."""
    return ManagedIdentityCredential()


def arm_client(lab, cls):
    return cls(operator(), lab.env["AZURE_SUBSCRIPTION_ID"], base_url=f"https://127.0.0.1:{lab.base + 2}",
               credential_scopes=[ARM_SCOPE], polling_interval=0.05)


def test_lab_up_serves_both_sql_servers(lab, paths):
    status = lab_command(lab, "status").stdout
    for server, offset in SQL_PORT_OFFSET.items():
        assert f"{server:<9} up   127.0.0.1:{lab.base + offset}" in status
    env = lab.env
    assert (env["LAB_SQL_PORT_SQL_LAB"], env["LAB_SQL_PORT_SQL_LAB_2"]) == (str(lab.base + 7), str(lab.base + 8))
    assert env["ODBCSYSINI"] == str(lab.state / "odbc") and env["ODBCINSTINI"] == "odbcinst.ini"
    assert "ODBC Driver 18 for SQL Server" in (lab.state / "odbc" / "odbcinst.ini").read_text()
    assert env["SSL_CERT_FILE"] == str(paths.ca_bundle)
    assert lab_command(lab, "env").stdout == (lab.state / "env.sh").read_text()
    endpoints = json.loads((lab.state / "endpoints.json").read_text())
    assert endpoints["sql_servers"] == {"sql-lab": {"host": "localhost", "port": lab.base + 7},
                                        "sql-lab-2": {"host": "localhost", "port": lab.base + 8}}
    for server in ("sql-lab", "sql-lab-2"):
        assert paths.sql_catalog(server).exists()


@pytest.mark.parametrize("app", sorted(SQL_APPS))
def test_before_state_signs_in_with_the_password_from_vault(lab, paths, app):
    server, database, user, roles = SQL_APPS[app]
    code, result = run(lab, "azurelab.demo_app", app)
    assert (code, result) == (0, {"app": app, "mode": "vault", "ok": True, "connected_as": user,
                                  "rows": [[database]]})

    assert kv_secret(lab, app)["username"] == user
    apps = paths.apps
    assert stat.S_IMODE((apps / f"{app}.secret-id").stat().st_mode) == 0o600
    config = json.loads((apps / f"{app}.json").read_text())
    assert {k: config[k] for k in ("db_type", "db_server", "db_host", "db_port", "db_name", "vault_kv_mount",
                                   "vault_kv_path")} == {
        "db_type": "sql", "db_server": server, "db_host": "localhost", "db_port": lab.base + SQL_PORT_OFFSET[server],
        "db_name": database, "vault_kv_mount": "secret", "vault_kv_path": f"apps/{app}/sql"}

    catalog = sqlcatalog.Catalog(paths.sql_catalog(server))
    assert [u.type for u in catalog.users(database) if u.name == user] == ["S"]
    assert {role for role in ROLES if user in catalog.role_members(database, role)} == set(roles)


def test_the_app_policy_reads_only_its_own_secret(lab):
    """The AppRole of inventory-api may read its KV path and nothing else."""
    config = json.loads((lab.state / "apps" / "inventory-api.json").read_text())
    client = hvac.Client(url=config["vault_addr"])
    client.auth.approle.login(role_id=config["role_id"],
                              secret_id=(lab.state / "apps" / "inventory-api.secret-id").read_text().strip())
    client.secrets.kv.v2.read_secret_version(path="apps/inventory-api/sql", mount_point="secret",
                                             raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path="apps/ledger/sql", mount_point="secret",
                                                 raise_on_deleted_version=True)


def test_entra_admin_and_entra_only_through_arm(lab, on_control_node):
    sql = arm_client(lab, SqlManagementClient)
    mi_operator = arm_client(lab, ManagedServiceIdentityClient).user_assigned_identities.get(RG_OPS, "mi-operator")

    code, probe = run(lab, "azurelab.probe", "password-login", "sql-lab")
    assert (code, probe) == (0, {"server": "sql-lab", "password_login": "accepted", "detail": ""})
    with pytest.raises(pyodbc.InterfaceError) as no_admin:
        token_connect(lab, "sql-lab", "appdb", operator().get_token(SQL_SCOPE).token)
    assert "(18456)" in str(no_admin.value)

    # The Entra admin's sid is its client id (an application / managed identity): its token signs in as dbo.
    sql.server_azure_ad_administrators.begin_create_or_update(RG_DATA, "sql-lab", "ActiveDirectory", {"properties": {
        "administratorType": "ActiveDirectory", "login": "mi-operator", "sid": mi_operator.client_id,
        "tenantId": mi_operator.tenant_id}}).result()
    token = operator().get_token(SQL_SCOPE).token
    assert current_user(token_connect(lab, "sql-lab", "appdb", token)) == "dbo"
    assert current_user(token_connect(lab, "sql-lab", "master", token)) == "dbo"
    with pytest.raises(pyodbc.InterfaceError):  # the other server has no Entra admin
        token_connect(lab, "sql-lab-2", "ledgerdb", token)

    sql.server_azure_ad_only_authentications.begin_create_or_update(
        RG_DATA, "sql-lab", "Default", {"properties": {"azureADOnlyAuthentication": True}}).result()
    try:
        code, probe = run(lab, "azurelab.probe", "password-login", "sql-lab")
        assert code == 0 and probe["password_login"] == "refused"
        assert "Login failed for user 'sqladmin'." in probe["detail"] and "(18456)" in probe["detail"]
        assert "only authentication is enabled" in probe["detail"]
        for app in ("inventory-api", "audit-reader"):
            code, result = run(lab, "azurelab.demo_app", app)
            assert code == 1 and not result["ok"] and "(18456)" in result["error"], result
            assert "only authentication is enabled" in result["error"]
        assert current_user(token_connect(lab, "sql-lab", "appdb", token)) == "dbo"
        # Entra-only is per server: sql-lab-2 still takes passwords.
        assert run(lab, "azurelab.demo_app", "ledger")[1]["ok"]
        assert run(lab, "azurelab.probe", "password-login", "sql-lab-2")[1]["password_login"] == "accepted"
    finally:
        sql.server_azure_ad_only_authentications.begin_create_or_update(
            RG_DATA, "sql-lab", "Default", {"properties": {"azureADOnlyAuthentication": False}}).result()
    assert run(lab, "azurelab.probe", "password-login", "sql-lab")[1]["password_login"] == "accepted"
    assert run(lab, "azurelab.demo_app", "inventory-api")[1]["ok"]


def test_a_managed_identity_admin_creates_users_by_sid_not_by_name(lab, on_control_node):
    """No lab server has Directory Readers: the control identity (an MI) cannot resolve a name, as in Azure."""
    with closing(token_connect(lab, "sql-lab", "appdb", operator().get_token(SQL_SCOPE).token)) as conn:
        cursor = conn.cursor()
        with pytest.raises(pyodbc.Error) as refused:
            cursor.execute("CREATE USER [dana.dba@lab.example] FROM EXTERNAL PROVIDER")
        assert "(33134)" in str(refused.value) and "Directory Readers" in str(refused.value)
        cursor.execute(f"CREATE USER [dana.dba@lab.example] WITH SID = 0x{tds.sid_of(DANA).hex()}, TYPE = E")
        cursor.execute("ALTER ROLE db_datareader ADD MEMBER [dana.dba@lab.example]")
        conn.commit()
        assert cursor.execute("SELECT type FROM sys.database_principals WHERE name = ?",
                              "dana.dba@lab.example").fetchone()[0] == "E"


def test_demo_app_identity_mode_is_the_tutorial_code(lab, paths, on_control_node):
    """After the switch (what roles/switch does to the config), the app signs in as its managed identity."""
    identity = arm_client(lab, ManagedServiceIdentityClient).user_assigned_identities.create_or_update(
        RG_APPS, "mi-audit-reader", {"location": "eastus2"})
    arm_client(lab, ComputeManagementClient).virtual_machines.begin_update(RG_APPS, "vm-audit", {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {identity.id: {}}}}).result()
    with closing(token_connect(lab, "sql-lab", "appdb", operator().get_token(SQL_SCOPE).token)) as conn:
        conn.cursor().execute(
            f"CREATE USER [mi-audit-reader] WITH SID = 0x{tds.sid_of(identity.client_id).hex()}, TYPE = E; "
            "ALTER ROLE db_datareader ADD MEMBER [mi-audit-reader]")
        conn.commit()

    config_file = paths.apps / "audit-reader.json"
    vault_config = json.loads(config_file.read_text())
    switched = {k: v for k, v in vault_config.items() if k not in ("role_id", "secret_id_file")}
    switched.update(mode="identity", managed_identity_client_id=identity.client_id, db_user="mi-audit-reader")
    config_file.write_text(json.dumps(switched))
    vm_audit = f"http://127.0.0.1:{lab.base + 3}/vms/vm-audit"
    code, result = run(lab, "azurelab.demo_app", "audit-reader", AZURE_POD_IDENTITY_AUTHORITY_HOST=vm_audit)
    assert (code, result) == (0, {"app": "audit-reader", "mode": "identity", "ok": True,
                                  "connected_as": "mi-audit-reader", "rows": [["appdb"]]})
    # Another VM's endpoint has no such identity: the app cannot sign in from there.
    code, result = run(lab, "azurelab.demo_app", "audit-reader",
                       AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{lab.base + 3}/vms/vm-ledger")
    assert code == 1 and not result["ok"]
    config_file.write_text(json.dumps(vault_config))


def test_catalog_survives_down_and_up(lab, paths, on_control_node):
    """Users persist in <state>/sql/<server>.sqlite; the seed resets the SQL users' passwords and KV follows."""
    before = {app: kv_secret(lab, app)["password"] for app in SQL_APPS}
    users_before = {s: [(u.name, u.type) for u in sqlcatalog.Catalog(paths.sql_catalog(s)).users(d)]
                    for s, d in (("sql-lab", "appdb"), ("sql-lab-2", "ledgerdb"))}
    assert {("mi-audit-reader", "E"), ("dana.dba@lab.example", "E")} <= set(users_before["sql-lab"])

    lab_command(lab, "down")
    lab_command(lab, "up")

    for server, database in (("sql-lab", "appdb"), ("sql-lab-2", "ledgerdb")):
        catalog = sqlcatalog.Catalog(paths.sql_catalog(server))
        assert [(u.name, u.type) for u in catalog.users(database)] == users_before[server]
    assert "mi-audit-reader" in sqlcatalog.Catalog(paths.sql_catalog("sql-lab")).role_members("appdb",
                                                                                              "db_datareader")
    for app, (_server, _database, user, _roles) in SQL_APPS.items():
        after = kv_secret(lab, app)
        assert after["username"] == user and after["password"] != before[app]  # a fresh password at every up
        code, result = run(lab, "azurelab.demo_app", app)
        assert code == 0 and result["connected_as"] == user
    # ARM state persists too: mi-operator is still sql-lab's Entra admin.
    token = operator().get_token(SQL_SCOPE).token
    assert current_user(token_connect(lab, "sql-lab", "appdb", token)) == "dbo"


def test_seed_never_brings_back_or_overrides(lab, paths):
    """A user the migration dropped after switching its app stays dropped, and its stored secret id stays deleted;
    an Entra user of the same name as a seeded SQL user is left alone. Neither gets a password in KV."""
    appdb = sqlcatalog.Catalog(paths.sql_catalog("sql-lab"))
    config_file = paths.apps / "inventory-api.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(config, mode="identity")))  # what the switch does, and then
    (paths.apps / "inventory-api.secret-id").unlink()
    appdb.drop_user("appdb", "inventory-api-sql")  # what decommissioning does
    ledgerdb = sqlcatalog.Catalog(paths.sql_catalog("sql-lab-2"))
    ledgerdb.drop_user("ledgerdb", "ledger-sql")
    entra_sid = tds.sid_of("4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
    ledgerdb.add_user("ledgerdb", "ledger-sql", entra_sid, "E")

    lab_command(lab, "down")
    lab_command(lab, "up")

    assert "inventory-api-sql" not in [u.name for u in appdb.users("appdb")]
    assert kv_secret(lab, "inventory-api") is None
    assert json.loads(config_file.read_text())["mode"] == "identity"
    assert not (paths.apps / "inventory-api.secret-id").exists()
    assert [(u.name, u.type, u.sid) for u in ledgerdb.users("ledgerdb") if u.name == "ledger-sql"] == [
        ("ledger-sql", "E", entra_sid)]
    assert kv_secret(lab, "ledger") is None
    assert run(lab, "azurelab.demo_app", "audit-reader")[1]["ok"]  # the others are seeded as before


def test_no_secret_in_logs_outputs_or_catalogs(lab):
    """Lab secrets (the SQL admins' passwords among them), every SQL app password the lab issued (three `up`s so far)
    and tokens stay out of every log (kept across down / up), every output above and the catalogs (which keep
    password hashes)."""
    kv_secret(lab, "audit-reader")
    assert len(APP_PASSWORDS) >= 7
    admin_passwords = [v["administrator_password"]
                       for v in json.loads((lab.state / "secrets.json").read_text())["sql_servers"].values()]
    assert stat.S_IMODE((lab.state / "secrets.json").stat().st_mode) == 0o600
    texts = OUTPUTS + [path.read_text(errors="replace") for path in (lab.state / "logs").iterdir()]
    texts += [path.read_bytes().decode("latin-1") for path in (lab.state / "sql").iterdir()]
    assert len(texts) > 20
    for text in texts:
        lab.assert_no_secret_in(text)
        for password in [*APP_PASSWORDS, *admin_passwords]:
            assert password not in text, "a SQL password leaked"


def test_reset_wipes_the_catalogs(lab, paths):
    lab_command(lab, "reset")
    assert "mi-audit-reader" not in [u.name for u in sqlcatalog.Catalog(paths.sql_catalog("sql-lab")).users("appdb")]
    for app, (_server, _database, user, _roles) in SQL_APPS.items():
        code, result = run(lab, "azurelab.demo_app", app)
        assert (code, result["mode"], result.get("connected_as")) == (0, "vault", user)
