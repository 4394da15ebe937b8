"""sql_server_entra, sql_entra_user and mi_login_check (Azure SQL) against the lab's SQL double, over TDS with the
real drivers, one module call at a time (``ansible localhost -m ...``), as the control identity or a workload.

The catalog is read independently of the modules: as the server's SQL-authentication admin, with mssql-python.
"""
from __future__ import annotations

import json
import uuid

import pytest

from labrunner import run_module

mssql_python = pytest.importorskip("mssql_python")
mssql_python.pooling(enabled=False)  # each admin query signs in anew, as the Entra-only test needs

APP_A = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"  # client ids of applications that exist only as SIDs here
APP_B = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"


def independent_sid(guid: str) -> bytes:
    """SQL Server's uniqueidentifier bytes, computed from the text: the first three groups byte-reversed."""
    groups = guid.split("-")
    return b"".join(bytes.fromhex(group)[::-1] for group in groups[:3]) + bytes.fromhex(groups[3] + groups[4])


def sql_port(lab, server: str) -> int:
    return lab.base + {"sql-lab": 7, "sql-lab-2": 8}[server]


def admin_query(lab, server: str, database: str, statement: str, params=()):
    """Run one statement as the server's SQL admin (SQL authentication); rows for a query, else None."""
    secrets = json.loads((lab.state / "secrets.json").read_text())
    password = secrets["sql_servers"][server]["administrator_password"]
    conn = mssql_python.connect(f"SERVER=tcp:localhost,{sql_port(lab, server)};DATABASE={database};UID=sqladmin;"
                                f"PWD={{{password}}};Encrypt=yes;TrustServerCertificate=yes", autocommit=True,
                                timeout=10)
    try:
        cursor = conn.cursor()
        cursor.execute(statement, params) if params else cursor.execute(statement)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else None
    finally:
        conn.close()


def principal(lab, server, database, name):
    rows = admin_query(lab, server, database,
                       "SELECT name, type, sid FROM sys.database_principals WHERE name = ?", (name,))
    return rows[0] if rows else None


def roles_of(lab, server, database, name):
    rows = admin_query(lab, server, database,
                       "SELECT r.name FROM sys.database_role_members AS m JOIN sys.database_principals AS r ON "
                       "r.principal_id = m.role_principal_id JOIN sys.database_principals AS u ON "
                       "u.principal_id = m.member_principal_id WHERE u.name = ?", (name,))
    return sorted(r[0] for r in rows)


def user_args(lab, server="sql-lab", database="appdb", **extra):
    return dict(host="localhost", port=sql_port(lab, server), database=database, **extra)


@pytest.fixture(scope="module")
def sql(lab):
    """The control identity as Entra admin of both servers; an application identity attached to vm-billing."""
    operator = run_module(lab, "azure_mi", name="mi-operator", resource_group="rg-lab-ops")["identity"]
    for server in ("sql-lab", "sql-lab-2"):
        result = run_module(lab, "sql_server_entra", name=server, resource_group="rg-lab-data",
                            administrator={"login": "mi-operator", "sid": operator["client_id"]})
        assert not result["failed"], result
    app = run_module(lab, "azure_mi", name="mi-sqlapp", resource_group="rg-lab-apps", location="eastus2")["identity"]
    attached = run_module(lab, "azure_mi_assignment", name="vm-billing", resource_group="rg-lab-apps",
                          identity_ids=[app["id"]])
    assert not attached["failed"], attached
    admin_query(lab, "sql-lab", "appdb", "CREATE USER [victim] WITHOUT LOGIN")  # what hostile queries aim at
    return {"operator": operator, "app": app,
            "workload_env": {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{lab.base + 3}/vms/vm-billing"}}


def login_check(lab, sql, server="sql-lab", database="appdb", **extra):
    return run_module(lab, "mi_login_check", env=sql["workload_env"], database_type="sql", auth_source="managed_identity",
                      client_id=sql["app"]["client_id"], **user_args(lab, server, database, **extra))


def test_user_from_client_id_sid_plan_create_idempotent_and_login(lab, sql):
    client_id = sql["app"]["client_id"]
    args = user_args(lab, name="mi-sqlapp", principal_client_id=client_id, roles=["db_datareader"])
    planned = run_module(lab, "sql_entra_user", check=True, **args)
    assert planned["changed"] and not planned["failed"], planned
    literal = "0x" + independent_sid(client_id).hex().upper()
    assert planned["queries"] == [f"CREATE USER [mi-sqlapp] WITH SID = {literal}, TYPE = E",
                                  "ALTER ROLE [db_datareader] ADD MEMBER [mi-sqlapp]"]
    assert planned["user"]["roles"] == ["db_datareader"] and planned["created"]
    assert principal(lab, "sql-lab", "appdb", "mi-sqlapp") is None  # check mode wrote nothing

    created = run_module(lab, "sql_entra_user", **args)
    assert created["changed"] and created["created"] and not created["failed"], created
    assert created["user"]["sid"] == literal and created["user"]["sid_source"] == "client_id"
    assert created["user"]["sid_guid"] == client_id.lower() and created["user"]["roles"] == ["db_datareader"]
    assert principal(lab, "sql-lab", "appdb", "mi-sqlapp") == ("mi-sqlapp", "E", independent_sid(client_id))

    again = run_module(lab, "sql_entra_user", **args)
    assert not again["changed"] and again["queries"] == [], again

    for driver in ("pyodbc", "mssql-python"):
        login = login_check(lab, sql, expected_user="mi-sqlapp", driver=driver)
        assert not login["failed"], login
        assert login["connected_as"] == "mi-sqlapp" and login["driver"] == driver


def test_user_built_from_the_object_id_never_logs_in(lab, sql):
    """The classic mistake: the managed identity's principal (object) id as the SID. The user exists; logins fail."""
    wrong = run_module(lab, "sql_entra_user", **user_args(lab, "sql-lab-2", "ledgerdb", name="mi-sqlapp",
                                                          principal_type="user",
                                                          object_id=sql["app"]["principal_id"]))
    assert wrong["changed"] and not wrong["failed"], wrong
    login = login_check(lab, sql, "sql-lab-2", "ledgerdb", expected_user="mi-sqlapp")
    assert login["failed"] and "Login failed for user '<token-identified principal>'" in login["msg"], login
    fixed = run_module(lab, "sql_entra_user", **user_args(lab, "sql-lab-2", "ledgerdb", name="mi-sqlapp",
                                                          principal_client_id=sql["app"]["client_id"], replace=True))
    assert fixed["replaced"] and fixed["user"]["sid_guid"] == sql["app"]["client_id"].lower(), fixed
    assert not login_check(lab, sql, "sql-lab-2", "ledgerdb", expected_user="mi-sqlapp")["failed"]


def test_same_name_with_another_sid_is_reported_and_replaced_only_when_told(lab, sql):
    first = run_module(lab, "sql_entra_user", **user_args(lab, name="mi-recreated", principal_type="application",
                                                          principal_client_id=APP_A, roles=["db_datareader"]))
    assert first["changed"] and not first["failed"], first
    other = user_args(lab, name="mi-recreated", principal_type="application", principal_client_id=APP_B, roles=["db_datareader"])
    refused = run_module(lab, "sql_entra_user", **other)
    assert refused["failed"] and "another principal" in refused["msg"] and "replace=true" in refused["msg"]
    assert refused["conflict"]["existing"]["sid_guid"] == APP_A
    assert principal(lab, "sql-lab", "appdb", "mi-recreated")[2] == independent_sid(APP_A)  # untouched

    replaced = run_module(lab, "sql_entra_user", replace=True, **other)
    assert replaced["changed"] and replaced["replaced"], replaced
    assert replaced["queries"][0] == "DROP USER [mi-recreated]"
    assert principal(lab, "sql-lab", "appdb", "mi-recreated")[2] == independent_sid(APP_B)
    assert roles_of(lab, "sql-lab", "appdb", "mi-recreated") == ["db_datareader"]


def test_sql_authenticated_user_of_the_same_name(lab, sql):
    admin_query(lab, "sql-lab", "appdb", "CREATE USER [legacy-app] WITH PASSWORD = 'Legacy-Pa55word!'")
    args = user_args(lab, name="legacy-app", principal_type="application", principal_client_id=APP_A.replace("3f", "4f", 1))
    refused = run_module(lab, "sql_entra_user", **args)
    assert refused["failed"] and "SQL_USER" in refused["msg"], refused
    assert principal(lab, "sql-lab", "appdb", "legacy-app")[1] == "S"
    replaced = run_module(lab, "sql_entra_user", replace=True, **args)
    assert replaced["replaced"] and principal(lab, "sql-lab", "appdb", "legacy-app")[1] == "E", replaced


def test_role_membership_drift_both_ways(lab, sql):
    args = user_args(lab, name="mi-drift", principal_type="application", principal_client_id=str(uuid.uuid4()),
                     roles=["db_datareader", "db_datawriter"], role_membership="exact")
    assert run_module(lab, "sql_entra_user", **args)["changed"]
    admin_query(lab, "sql-lab", "appdb", "ALTER ROLE [db_datawriter] DROP MEMBER [mi-drift]")
    admin_query(lab, "sql-lab", "appdb", "ALTER ROLE [db_ddladmin] ADD MEMBER [mi-drift]")
    additive = run_module(lab, "sql_entra_user", **{**args, "role_membership": "additive"})
    assert additive["queries"] == ["ALTER ROLE [db_datawriter] ADD MEMBER [mi-drift]"], additive
    assert roles_of(lab, "sql-lab", "appdb", "mi-drift") == ["db_datareader", "db_datawriter", "db_ddladmin"]
    exact = run_module(lab, "sql_entra_user", **args)
    assert exact["queries"] == ["ALTER ROLE [db_ddladmin] DROP MEMBER [mi-drift]"], exact
    assert roles_of(lab, "sql-lab", "appdb", "mi-drift") == ["db_datareader", "db_datawriter"]
    assert not run_module(lab, "sql_entra_user", **args)["changed"]


@pytest.mark.parametrize("name", ["a]b", "o'neil; DROP USER [dbo]; --", "ünïcødé-приложение 🚀"])
def test_hostile_names_are_quoted(lab, sql, name):
    args = user_args(lab, name=name, principal_type="application", principal_client_id=str(uuid.uuid4()),
                     roles=["db_datareader"])
    created = run_module(lab, "sql_entra_user", **args)
    assert created["changed"] and not created["failed"], created
    assert created["user"]["name"] == name
    assert principal(lab, "sql-lab", "appdb", name)[0] == name
    assert roles_of(lab, "sql-lab", "appdb", name) == ["db_datareader"]
    assert principal(lab, "sql-lab", "appdb", "dbo") is not None
    assert not run_module(lab, "sql_entra_user", **args)["changed"]


def test_custom_role_with_a_bracket_in_its_name(lab, sql):
    admin_query(lab, "sql-lab", "appdb", "CREATE ROLE [odd]]role]")
    args = user_args(lab, name="mi-odd", principal_type="application", principal_client_id=str(uuid.uuid4()), roles=["odd]role"])
    created = run_module(lab, "sql_entra_user", **args)
    assert "ALTER ROLE [odd]]role] ADD MEMBER [mi-odd]" in created["queries"], created
    assert roles_of(lab, "sql-lab", "appdb", "mi-odd") == ["odd]role"]


def test_unknown_role_changes_nothing(lab, sql):
    result = run_module(lab, "sql_entra_user", **user_args(lab, name="mi-norole", principal_type="application",
                                                           principal_client_id=str(uuid.uuid4()),
                                                           roles=["db_datareader", "no_such_role"]))
    assert result["failed"] and "no_such_role" in result["msg"], result
    assert principal(lab, "sql-lab", "appdb", "mi-norole") is None


@pytest.mark.parametrize("args, words", [
    (dict(principal_client_id="not-a-guid"), "principal_client_id"),
    (dict(), "principal_client_id is required"),
    (dict(principal_client_id=APP_A, name="x" * 129), "1 to 128"),
    (dict(principal_type="group", principal_client_id=APP_A, object_id=APP_B), "object_id"),
])
def test_bad_input_is_refused_before_connecting(lab, sql, args, words):
    base = user_args(lab, name="mi-bad", roles=[])
    result = run_module(lab, "sql_entra_user", **{**base, **args})
    assert result["failed"] and words in result["msg"], result


def test_login_check_refuses_a_query_that_writes(lab, sql):
    result = login_check(lab, sql, expected_user="mi-sqlapp", query="SELECT 1; DROP USER [mi-sqlapp]")
    assert result["failed"] and "single statement" in result["msg"], result
    assert principal(lab, "sql-lab", "appdb", "mi-sqlapp") is not None


@pytest.mark.parametrize("query", ["SELECT 1DROP USER [victim] SELECT 1COMMIT",
                                   "SELECT 1 /* /* */ ' */ DROP USER [victim] COMMIT --' */",
                                   "SELECT * INTO victim_copy FROM sys.database_principals"])
def test_login_check_refuses_hidden_statements_before_connecting(lab, sql, query):
    result = login_check(lab, sql, expected_user="mi-sqlapp", query=query)
    assert result["failed"] and result["msg"].startswith("query is refused"), result
    assert "connected_as" not in result
    assert principal(lab, "sql-lab", "appdb", "victim") is not None


def test_login_check_query_error_is_not_a_login_error(lab, sql):
    result = login_check(lab, sql, expected_user="mi-sqlapp", query="SELECT nope FROM sys.database_principals")
    assert result["failed"] and "but the query failed (the login itself works)" in result["msg"], result
    assert result["connected_as"] == "mi-sqlapp"


def test_login_check_runs_a_read_query(lab, sql):
    result = login_check(lab, sql, expected_user="MI-SQLAPP",  # names compare as the server does
                         query="SELECT count(*) AS n FROM sys.database_principals WHERE name = 'mi-sqlapp';")
    assert not result["failed"] and result["row"] == [1], result


@pytest.mark.parametrize("host", ["localhost,1;TrustServerCertificate=yes", "localhost;Foo=", "local host"])
def test_host_cannot_rewrite_the_connection_string(lab, sql, host):
    for module, args in (("sql_entra_user", dict(name="mi-x", principal_client_id=APP_A)),
                         ("mi_login_check", dict(database_type="sql", expected_user="x"))):
        result = run_module(lab, module, **dict(user_args(lab, **args), host=host))
        assert result["failed"] and "must be a host name" in result["msg"], result


def test_nil_guid_built_in_names_and_public(lab, sql):
    nil = run_module(lab, "sql_entra_user", **user_args(lab, name="mi-nil",
                                                        principal_client_id="00000000-0000-0000-0000-000000000000"))
    assert nil["failed"] and "nil GUID" in nil["msg"], nil
    for name in ("dbo", "Guest", "public", "db_owner"):
        result = run_module(lab, "sql_entra_user", state="absent", **user_args(lab, name=name))
        assert result["failed"] and "every database has" in result["msg"], result
    public = user_args(lab, name="mi-sqlapp", principal_client_id=sql["app"]["client_id"], roles=["public"])
    result = run_module(lab, "sql_entra_user", **public)
    assert not result["failed"] and not result["changed"], result


def test_absent_drops_a_sql_user_only_when_told(lab, sql):
    admin_query(lab, "sql-lab", "appdb", "CREATE USER [pw-user] WITH PASSWORD = 'Pw-User-Pa55word!'")
    refused = run_module(lab, "sql_entra_user", state="absent", **user_args(lab, name="pw-user"))
    assert refused["failed"] and "replace=true to drop it anyway" in refused["msg"], refused
    assert principal(lab, "sql-lab", "appdb", "pw-user") is not None
    dropped = run_module(lab, "sql_entra_user", state="absent", replace=True, **user_args(lab, name="pw-user"))
    assert dropped["changed"] and principal(lab, "sql-lab", "appdb", "pw-user") is None, dropped


def test_check_mode_for_a_planned_identity_reports_an_existing_user_of_that_name(lab, sql):
    result = run_module(lab, "sql_entra_user", check=True, **user_args(lab, name="mi-sqlapp",
                                                                       principal_client_id="(known after apply)"))
    assert result["failed"] and "cannot be its principal" in result["msg"], result


def test_foreign_entra_admin_is_not_replaced(lab, sql):
    writes = lab.arm_counters()["writes"]
    result = run_module(lab, "sql_server_entra", name="sql-lab", resource_group="rg-lab-data",
                        administrator={"login": "someone-else", "sid": APP_B})
    assert result["failed"] and "mi-operator" in result["msg"], result
    assert lab.arm_counters()["writes"] == writes


def test_entra_only_refuses_sql_logins(lab, sql):
    on = run_module(lab, "sql_server_entra", name="sql-lab", resource_group="rg-lab-data",
                    azure_ad_only_authentication=True)
    assert on["changed"] and not on["failed"], on
    try:
        with pytest.raises(mssql_python.Error, match="Login failed for user 'sqladmin'"):
            admin_query(lab, "sql-lab", "appdb", "SELECT CURRENT_USER")
        assert not login_check(lab, sql, expected_user="mi-sqlapp")["failed"]  # Entra logins still work
    finally:
        off = run_module(lab, "sql_server_entra", name="sql-lab", resource_group="rg-lab-data",
                         azure_ad_only_authentication=False)
        assert not off["failed"], off
    assert admin_query(lab, "sql-lab", "appdb", "SELECT CURRENT_USER") == [("dbo",)]


def test_vault_kv_secret_soft_deletes_and_restores_without_reading_the_password(lab, sql):
    import hvac

    client = hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())
    path = "apps/audit-reader/sql"
    vault_args = dict(url=lab.env["VAULT_ADDR"], token_file=str(lab.state / "openbao" / "token"), mount="secret",
                      path=path)
    vault_args["state"] = "absent"
    planned = run_module(lab, "vault_kv_secret", check=True, **vault_args)
    assert planned["changed"] and planned["versions"] == [1], planned
    assert client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    retired = run_module(lab, "vault_kv_secret", **vault_args)
    assert retired["changed"] and retired["operations"] == [f"DELETE secret/{path} versions [1]"], retired
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    assert not run_module(lab, "vault_kv_secret", **vault_args)["changed"]
    restored = run_module(lab, "vault_kv_secret", **{**vault_args, "state": "present"})
    assert restored["changed"] and restored["versions"] == [1], restored
    data = client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    assert data["data"]["data"]["username"] == "audit-reader-sql"
    typo = run_module(lab, "vault_kv_secret", **{**vault_args, "path": "apps/audit-raeder/sql"})
    assert typo["failed"] and "check mount and path" in typo["msg"], typo
    gone = run_module(lab, "vault_kv_secret", **{**vault_args, "path": "apps/nobody/sql", "missing_ok": True})
    assert not gone["failed"] and not gone["changed"] and gone["exists"] is False
    assert run_module(lab, "vault_kv_secret", **{**vault_args, "path": "../sys/x"})["failed"]


def test_vault_kv_secret_sees_a_scheduled_deletion_as_still_readable(lab, sql):
    """With the mount's delete_version_after, every version carries a future deletion_time: it is still readable."""
    import hvac

    client = hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())
    path = "apps/scheduled/sql"
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"username": "u", "password": "Sched-Pa55!"},
                                                 mount_point="secret")
    client.secrets.kv.v2.update_metadata(path=path, delete_version_after="768h", mount_point="secret")
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"username": "u", "password": "Sched-Pa55-2!"},
                                                 mount_point="secret")
    args = dict(url=lab.env["VAULT_ADDR"], token_file=str(lab.state / "openbao" / "token"), mount="secret",
                path=path, state="absent")
    retired = run_module(lab, "vault_kv_secret", **args)
    assert retired["changed"] and retired["versions"] == [1, 2], retired
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    restored = run_module(lab, "vault_kv_secret", **{**args, "state": "present"})
    assert restored["versions"] == [2], restored  # the current version only
