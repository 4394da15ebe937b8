"""Each module against the lab, one call at a time (ad-hoc, as `ansible localhost -m ...`): life cycles,
idempotence, and hostile input, which must get an error naming the field and change nothing."""
from __future__ import annotations

import psycopg
import pytest

from labrunner import run_module

HOSTILE_ROLES = ['app"; DROP ROLE pgadmin; --', "app with spaces", "ünïcødé-приложение", "app]'x"]

call = run_module


def pg_admin(lab, **extra) -> dict:
    return dict(host="localhost", port=lab.base + 4, admin_user="mi-operator", **extra)


def catalog(lab, sql: str, params=(), dbname="postgres"):
    """Run one statement as the lab's own superuser; its rows, or None for a statement without rows."""
    with psycopg.connect(host=str(lab.state / "pg" / "run"), dbname=dbname, user="postgres") as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


@pytest.fixture(scope="module")
def entra_lab(lab):
    """The lab with Entra on pg-lab and the control identity as its Entra administrator."""
    operator = call(lab, "azure_mi", name="mi-operator", resource_group="rg-lab-ops")["identity"]
    result = call(lab, "pg_server_entra", name="pg-lab", resource_group="rg-lab-data", active_directory_auth=True,
                  administrators=[{"object_id": operator["principal_id"], "principal_name": "mi-operator",
                                   "principal_type": "ServicePrincipal"}])
    assert result["changed"] and not result.get("failed"), result
    return lab


def test_identity_life_cycle_is_idempotent(lab):
    planned = call(lab, "azure_mi", check=True, name="mi-cycle", resource_group="rg-lab-apps", location="eastus2")
    assert planned["changed"] and planned["identity"]["client_id"] == "(known after apply)"
    assert planned["identity"]["id"].endswith("/userAssignedIdentities/mi-cycle")
    writes = lab.arm_counters()["writes"]
    created = call(lab, "azure_mi", name="mi-cycle", resource_group="rg-lab-apps", location="eastus2", tags={"a": 1})
    assert created["changed"] and created["identity"]["tags"] == {"a": "1"}
    assert created["identity"]["id"].lower() == planned["identity"]["id"].lower()
    again = call(lab, "azure_mi", name="mi-cycle", resource_group="rg-lab-apps", location="eastus2", tags={"a": 1})
    assert not again["changed"] and lab.arm_counters()["writes"] == writes + 1
    retagged = call(lab, "azure_mi", name="mi-cycle", resource_group="rg-lab-apps", tags={"b": "2"}, purge_tags=False)
    assert retagged["changed"] and retagged["identity"]["tags"] == {"a": "1", "b": "2"}
    assert call(lab, "azure_mi", name="mi-cycle", resource_group="rg-lab-apps", state="absent")["changed"]
    assert not call(lab, "azure_mi", name="mi-cycle", resource_group="rg-lab-apps", state="absent")["changed"]


def test_attaching_identities_keeps_the_others(lab):
    ids = [call(lab, "azure_mi", name=n, resource_group="rg-lab-apps", location="eastus2")["identity"]["id"]
           for n in ("mi-keep-a", "mi-keep-b")]
    assert call(lab, "azure_mi_assignment", name="vm-reports", resource_group="rg-lab-apps", identity_ids=ids[:1])["changed"]
    both = call(lab, "azure_mi_assignment", name="vm-reports", resource_group="rg-lab-apps", identity_ids=ids[1:])
    assert both["changed"] and len(both["user_assigned_identities"]) == 2
    assert not call(lab, "azure_mi_assignment", name="vm-reports", resource_group="rg-lab-apps",
                    identity_ids=[i.upper() for i in ids])["changed"]  # ARM ids compare case-insensitively
    left = call(lab, "azure_mi_assignment", name="vm-reports", resource_group="rg-lab-apps", identity_ids=ids[:1],
                state="absent")
    assert left["removed"] == ids[:1] and [i.lower() for i in left["user_assigned_identities"]] == [ids[1].lower()]


@pytest.mark.parametrize("name", ['mi"bad;name', "mï-unicode", "x" * 200, "ab", "-leading-dash"])
def test_identity_names_azure_refuses_are_refused_before_any_call(lab, name):
    writes = lab.arm_counters()["writes"]
    result = call(lab, "azure_mi", name=name, resource_group="rg-lab-apps", location="eastus2")
    assert result["failed"] and "name" in result["msg"] and "not a valid identity name" in result["msg"]
    assert lab.arm_counters()["writes"] == writes


@pytest.mark.parametrize("args, field", [
    ({"identity_ids": ["not-a-resource-id"]}, "identity_ids"),
    ({"identity_ids": ["/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"]},
     "identity_ids"),
])
def test_assignment_refuses_what_is_not_an_identity_id(lab, args, field):
    result = call(lab, "azure_mi_assignment", name="vm-orders", resource_group="rg-lab-apps", **args)
    assert result["failed"] and field in result["msg"]


def test_a_vm_that_does_not_exist(lab):
    result = call(lab, "azure_mi_assignment", name="vm-nope", resource_group="rg-lab-apps", identity_ids=[])
    assert result["failed"] and "vm-nope" in result["msg"] and result["remedy"]


def test_a_server_that_does_not_exist_is_reported_and_nothing_is_written(lab):
    writes = lab.arm_counters()["writes"]
    result = call(lab, "pg_server_entra", name="pg-nope", resource_group="rg-lab-data", active_directory_auth=True)
    assert result["failed"] and "pg-nope was not found" in result["msg"]
    assert lab.arm_counters()["writes"] == writes


@pytest.mark.parametrize("args, field", [
    ({"administrators": [{"object_id": "not-a-guid", "principal_name": "x"}]}, "administrators[0].object_id"),
    ({"administrators": [{"object_id": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", "principal_name": "x" * 64}]},
     "administrators[0].principal_name"),
    ({"password_auth": False}, "password_auth=false needs"),
])
def test_server_settings_that_would_break_are_refused_before_any_write(lab, args, field):
    writes = lab.arm_counters()["writes"]
    result = call(lab, "pg_server_entra", name="pg-lab", resource_group="rg-lab-data", **args)
    assert result["failed"] and field in result["msg"], result
    assert lab.arm_counters()["writes"] == writes


@pytest.mark.parametrize("role", HOSTILE_ROLES)
def test_hostile_role_names_are_quoted_exactly(entra_lab, role):
    oid = "0f0e0d0c-%04x-4b0a-8a09-080706050403" % (HOSTILE_ROLES.index(role) + 1)
    grants = [{"object_type": "database", "privileges": ["CONNECT"]},
              {"object_type": "table", "schema": "public", "objects": ["products"], "privileges": ["SELECT"]}]
    args = pg_admin(entra_lab, role=role, object_id=oid, database="appdb", admin_member_of=["pgadmin"], grants=grants)
    created = call(entra_lab, "pg_entra_principal", **args)
    assert created["changed"] and not created.get("failed"), created
    assert catalog(entra_lab, "SELECT rolname FROM pg_roles WHERE rolname = %s", (role,)) == [(role,)]
    assert catalog(entra_lab, "SELECT count(*) FROM pg_roles WHERE rolname = 'pgadmin'") == [(1,)]
    assert catalog(entra_lab, "SELECT has_table_privilege(%s, 'public.products', 'SELECT')", (role,), "appdb") == [(True,)]
    assert not call(entra_lab, "pg_entra_principal", **args)["changed"]
    removed = call(entra_lab, "pg_entra_principal", **dict(args, state="absent"))
    assert removed["changed"] and not removed["failed"], removed
    assert catalog(entra_lab, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)) == []


@pytest.mark.parametrize("extra, field", [
    ({"object_id": "not-a-guid"}, "object_id"),
    ({"object_id": "c95dd33b-98b8-4970-af3d-63fe5d14f064'; --"}, "object_id"),
    ({"grants": [{"object_type": "database", "privileges": ["CONNECT"]},
                 {"object_type": "schema", "schema": "nope", "privileges": ["USAGE"]}]}, "grants[1].schema"),
    ({"grants": [{"object_type": "table", "schema": "orders", "objects": ["missing"], "privileges": ["SELECT"]}]},
     "grants[0].objects"),
    ({"grants": [{"object_type": "table", "schema": "orders", "privileges": ["SELEKT"]}]}, "grants[0].privileges"),
    ({"grants": [{"object_type": "table", "privileges": ["SELECT"]}]}, "grants[0].schema is required"),
    ({"role": "r" * 64}, "role"),
])
def test_bad_principal_input_names_the_field_and_creates_nothing(entra_lab, extra, field):
    args = pg_admin(entra_lab, role="mi-half-done", object_id="1a2b3c4d-0000-4000-8000-000000000001",
                    database="appdb", admin_member_of=["pgadmin"],
                    grants=[{"object_type": "table", "schema": "orders", "privileges": ["SELECT"]}])
    args.update(extra)
    result = call(entra_lab, "pg_entra_principal", **args)
    assert result["failed"] and field in result["msg"], result
    assert catalog(entra_lab, "SELECT rolname FROM pg_roles WHERE rolname IN ('mi-half-done', %s)", (args["role"],)) == []


def test_missing_owner_membership_is_named_before_any_write(entra_lab):
    catalog(entra_lab, 'REVOKE pgadmin FROM "mi-operator"')
    args = pg_admin(entra_lab, role="mi-no-owner", object_id="5a2b3c4d-0000-4000-8000-000000000005", database="appdb",
                    grants=[{"object_type": "table", "schema": "orders", "privileges": ["SELECT"]}])
    result = call(entra_lab, "pg_entra_principal", **args)
    assert result["failed"] and "not a member of pgadmin" in result["msg"] and "admin_member_of" in result["msg"]
    assert catalog(entra_lab, "SELECT 1 FROM pg_roles WHERE rolname = 'mi-no-owner'") == []


def test_same_name_other_object_id_is_drift_not_a_silent_rebind(entra_lab):
    args = pg_admin(entra_lab, role="mi-recreated", object_id="2a2b3c4d-0000-4000-8000-000000000002", database="appdb")
    assert call(entra_lab, "pg_entra_principal", **args)["changed"]
    recreated = dict(args)
    recreated["object_id"] = "3a2b3c4d-0000-4000-8000-000000000003"
    result = call(entra_lab, "pg_entra_principal", **recreated)
    assert result["failed"] and "is bound to object id 2a2b3c4d" in result["msg"]


def test_a_password_role_of_the_same_name_is_left_alone(entra_lab):
    result = call(entra_lab, "pg_entra_principal", **pg_admin(entra_lab, role="pgadmin", database="appdb",
                                                              object_id="4a2b3c4d-0000-4000-8000-000000000004"))
    assert result["failed"] and "not a Microsoft Entra principal" in result["msg"]


def test_vault_module_reads_its_token_only_from_env_or_file(lab):
    env_token = lab.env.get("VAULT_TOKEN")
    assert env_token is None  # the lab never exports it
    result = call(lab, "vault_db_role", url=lab.env["VAULT_ADDR"], name="orders-api", backup_dir=str(lab.state / "b"),
                  token_file=str(lab.state / "no-such-token"))
    assert result["failed"] and "VAULT_TOKEN" in result["msg"] and "no-such-token" in result["msg"]
    result = call(lab, "vault_db_role", url=lab.env["VAULT_ADDR"], name="../sys", backup_dir=str(lab.state / "b"),
                  token_file=str(lab.state / "openbao" / "token"))
    assert result["failed"] and "name" in result["msg"]
    planned = call(lab, "vault_db_role", check=True, url=lab.env["VAULT_ADDR"], name="orders-api",
                   backup_dir=str(lab.state / "b"), token_file=str(lab.state / "openbao" / "token"))
    assert planned["changed"] and planned["backup_files"] == [] and not (lab.state / "b").exists()


def test_login_check_query_cannot_write(entra_lab):
    base = dict(host="localhost", port=entra_lab.base + 4, database="appdb", user="mi-operator",
                auth_source="managed_identity")
    ok = call(entra_lab, "mi_login_check", **base, query="SELECT 40 + 2")
    assert not ok["failed"] and ok["connected_as"] == "mi-operator" and ok["row"] == [42]
    for query in ("SELECT 1; COMMIT; DROP TABLE public.products", "CREATE TABLE public.sneaky (x int)"):
        result = call(entra_lab, "mi_login_check", **base, query=query)
        assert result["failed"], query
    assert catalog(entra_lab, "SELECT count(*) FROM pg_class WHERE relname IN ('products', 'sneaky')",
                   dbname="appdb") == [(1,)]


def test_grants_made_by_another_grantor_are_reported_not_fought(entra_lab):
    args = pg_admin(entra_lab, role="mi-foreign-grant", object_id="6a2b3c4d-0000-4000-8000-000000000006",
                    database="appdb", admin_member_of=["pgadmin"],
                    grants=[{"object_type": "table", "schema": "orders", "privileges": ["SELECT"]}])
    assert call(entra_lab, "pg_entra_principal", **args)["changed"]
    for statement in ("CREATE ROLE helper_grantor", "GRANT USAGE ON SCHEMA billing TO helper_grantor",
                      "GRANT SELECT ON billing.invoices TO helper_grantor WITH GRANT OPTION",
                      "SET ROLE helper_grantor; GRANT SELECT ON billing.invoices TO \"mi-foreign-grant\"",
                      "SET ROLE pgadmin; GRANT helper_grantor TO \"mi-foreign-grant\""):
        with psycopg.connect(host=str(entra_lab.state / "pg" / "run"), dbname="appdb", user="postgres",
                             autocommit=True) as conn:
            for part in statement.split("; "):
                conn.execute(part)
    again = call(entra_lab, "pg_entra_principal", **args)
    assert not again["changed"], again.get("queries")
    assert again["unmanaged"] == ["table billing.invoices SELECT granted by another role than the owner",
                                  "member of role helper_grantor"]


def test_removing_a_principal_that_owns_objects_changes_nothing(entra_lab):
    args = pg_admin(entra_lab, role="mi-owner", object_id="7a2b3c4d-0000-4000-8000-000000000007", database="appdb",
                    admin_member_of=["pgadmin"],
                    grants=[{"object_type": "table", "schema": "orders", "privileges": ["SELECT"]}])
    assert call(entra_lab, "pg_entra_principal", **args)["changed"]
    catalog(entra_lab, 'CREATE TABLE public.owned_by_app (x int); ALTER TABLE public.owned_by_app OWNER TO "mi-owner"',
            dbname="appdb")
    result = call(entra_lab, "pg_entra_principal", **dict(args, state="absent"))
    assert result["failed"] and "owns database objects" in result["msg"]
    assert catalog(entra_lab, "SELECT has_table_privilege('mi-owner', 'orders.orders', 'SELECT')", dbname="appdb") \
        == [(True,)]


def test_default_privileges_on_a_missing_schema_create_nothing(entra_lab):
    args = pg_admin(entra_lab, role="mi-bad-default", object_id="8a2b3c4d-0000-4000-8000-000000000008",
                    database="appdb", admin_member_of=["pgadmin"],
                    default_privileges=[{"for_role": "pgadmin", "schema": "nope", "object_type": "table",
                                         "privileges": ["SELECT"]}])
    result = call(entra_lab, "pg_entra_principal", **args)
    assert result["failed"] and "default_privileges[0].schema" in result["msg"]
    assert catalog(entra_lab, "SELECT 1 FROM pg_roles WHERE rolname = 'mi-bad-default'") == []


def test_admin_member_of_grants_only_the_owners_it_needs(entra_lab):
    args = pg_admin(entra_lab, role="mi-escalate", object_id="9a2b3c4d-0000-4000-8000-000000000009", database="appdb",
                    admin_member_of=["pgadmin", "pg_execute_server_program"],
                    grants=[{"object_type": "table", "schema": "orders", "privileges": ["SELECT"]}])
    result = call(entra_lab, "pg_entra_principal", **args)
    assert not result["failed"], result
    assert not any("pg_execute_server_program" in q for q in result["queries"])
    assert catalog(entra_lab, "SELECT pg_has_role('mi-operator', 'pg_execute_server_program', 'MEMBER')") == [(False,)]


def test_parallel_principals_on_the_same_tables_all_converge(entra_lab):
    import concurrent.futures

    def one(index):
        return call(entra_lab, "pg_entra_principal", **pg_admin(
            entra_lab, role="mi-par-%d" % index, object_id="ab2b3c4d-0000-4000-8000-00000000000%d" % index,
            database="appdb", admin_member_of=["pgadmin"],
            grants=[{"object_type": "table", "schema": "orders", "privileges": ["SELECT", "INSERT"]},
                    {"object_type": "sequence", "schema": "orders", "privileges": ["USAGE"]}]))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert all(r["changed"] and not r["failed"] for r in results), [r.get("msg") for r in results]
    assert catalog(entra_lab, "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee LIKE 'mi-par-%%'"
                   " AND table_name = 'orders'", dbname="appdb") == [(8,)]


def test_vault_mount_cannot_leave_the_backup_dir(lab):
    result = call(lab, "vault_db_role", url=lab.env["VAULT_ADDR"], mount="../v1/database", name="reports",
                  backup_dir=str(lab.state / "bk" / "a"), token_file=str(lab.state / "openbao" / "token"))
    assert result["failed"] and "mount" in result["msg"] and not (lab.state / "bk").exists()


def test_purging_every_entra_administrator_is_refused(entra_lab):
    writes = entra_lab.arm_counters()["writes"]
    result = call(entra_lab, "pg_server_entra", name="pg-lab", resource_group="rg-lab-data", administrators=[],
                  purge_administrators=True)
    assert result["failed"] and "would remove every Entra administrator" in result["msg"]
    assert entra_lab.arm_counters()["writes"] == writes


@pytest.mark.parametrize("tags", [{"owner": None}, {"owner": {"nested": 1}}, {"owner": ["a"]}])
def test_tag_values_must_be_strings(lab, tags):
    result = call(lab, "azure_mi", name="mi-tags", resource_group="rg-lab-apps", location="eastus2", tags=tags)
    assert result["failed"] and "tags.owner" in result["msg"]


SQL_ADMINS = {"login": "sql-admins", "sid": "9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f"}


def test_sql_entra_admin_and_entra_only_life_cycle(lab):
    server = dict(name="sql-lab", resource_group="rg-lab-data")
    writes = lab.arm_counters()["writes"]
    refused = call(lab, "sql_server_entra", **server, azure_ad_only_authentication=True)
    assert refused["failed"] and "needs an Entra administrator" in refused["msg"]
    planned = call(lab, "sql_server_entra", check=True, **server, administrator=SQL_ADMINS,
                   azure_ad_only_authentication=True)
    assert planned["changed"] and len(planned["operations"]) == 2 and lab.arm_counters()["writes"] == writes
    applied = call(lab, "sql_server_entra", **server, administrator=SQL_ADMINS, azure_ad_only_authentication=True)
    assert applied["changed"] and applied["azure_ad_only_authentication"] is True, applied
    assert applied["administrator"]["sid"] == SQL_ADMINS["sid"]
    writes = lab.arm_counters()["writes"]
    again = call(lab, "sql_server_entra", **server, administrator=dict(SQL_ADMINS, sid=SQL_ADMINS["sid"].upper()),
                 azure_ad_only_authentication=True)
    assert not again["changed"] and lab.arm_counters()["writes"] == writes
    assert again["administrator"]["principal_type"] == "Group"  # as Azure reads it from the directory
    assert call(lab, "sql_server_entra", **server, azure_ad_only_authentication=False)["changed"]


def test_a_foreign_sql_admin_is_never_replaced_silently(lab):
    server = dict(name="sql-lab-2", resource_group="rg-lab-data")
    dana = {"login": "dana.dba@lab.example", "sid": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"}
    assert call(lab, "sql_server_entra", **server, administrator=dana)["changed"]
    writes = lab.arm_counters()["writes"]
    kept = call(lab, "sql_server_entra", **server, administrator=SQL_ADMINS)
    assert kept["failed"] and "already has Entra administrator dana.dba@lab.example" in kept["msg"]
    assert lab.arm_counters()["writes"] == writes
    replaced = call(lab, "sql_server_entra", **server, administrator=SQL_ADMINS, replace_administrator=True)
    assert replaced["changed"] and replaced["administrator"]["login"] == "sql-admins"


@pytest.mark.parametrize("args, field", [
    ({"name": "sql-nope"}, "sql-nope was not found"),
    ({"administrator": {"login": "x", "sid": "not-a-guid"}}, "administrator.sid"),
])
def test_bad_sql_server_input(lab, args, field):
    result = call(lab, "sql_server_entra", **dict({"name": "sql-lab", "resource_group": "rg-lab-data"}, **args))
    assert result["failed"] and field in result["msg"]


def test_a_failing_write_names_what_was_applied_before_it(lab):
    lab.lab_api("POST", "faults", {"method": "PUT", "path": "azureADOnlyAuthentications", "status": 400, "count": 1,
                                   "code": "LabInjectedFault", "message": "injected"})
    dana = {"login": "dana.dba@lab.example", "sid": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"}
    result = call(lab, "sql_server_entra", name="sql-lab-2", resource_group="rg-lab-data", administrator=dana,
                  replace_administrator=True, azure_ad_only_authentication=True)
    assert result["failed"]
    assert "PUT azureADOnlyAuthentications/Default azureADOnlyAuthentication=true on server sql-lab-2 failed" \
        in result["msg"]
    assert "applied before it: PUT administrators/ActiveDirectory (dana.dba@lab.example)" in result["msg"]
