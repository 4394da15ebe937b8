"""The ARM double's Azure SQL servers (Entra admin, Entra-only authentication), driven by the real
azure-mgmt-sql client (fixtures in conftest.py). Run: ``.venv/bin/python -m pytest tests/integration/lab/test_arm_sql.py``.
"""
from __future__ import annotations

import json
import time

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.sql import SqlManagementClient
from azure.mgmt.sql.models import AdministratorProperties, ServerAzureADAdministrator

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

RG_DATA, SQL, SQL_2 = "rg-lab-data", "sql-lab", "sql-lab-2"
DANA = "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"
PG_ADMINS = "9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f"


def test_sql_servers_are_seeded_without_entra(control_plane):
    sql = control_plane.client(SqlManagementClient)
    names = sorted(s.name for s in sql.servers.list_by_resource_group(RG_DATA))
    assert names == [SQL, SQL_2, "sql-lab-dr"]  # sql-lab-dr: sql-lab's failover partner (fg-sql-lab), in ARM only
    server = sql.servers.get(RG_DATA, SQL_2)
    assert server.properties.administrator_login == "sqladmin"
    assert server.properties.fully_qualified_domain_name == "localhost"
    assert server.properties.administrators is None
    assert sql.server_azure_ad_only_authentications.get(
        RG_DATA, SQL_2, "Default").properties.azure_ad_only_authentication is False
    with pytest.raises(ResourceNotFoundError) as absent:
        sql.server_azure_ad_administrators.get(RG_DATA, SQL_2, "ActiveDirectory")
    assert absent.value.error.code == "ResourceNotFound"


def test_sql_entra_admin_and_entra_only(control_plane):
    sql = control_plane.client(SqlManagementClient)
    admins, only = sql.server_azure_ad_administrators, sql.server_azure_ad_only_authentications
    state = control_plane.lab.arm

    with pytest.raises(HttpResponseError) as no_admin:
        only.begin_create_or_update(RG_DATA, SQL, "Default",
                                    {"properties": {"azureADOnlyAuthentication": True}}).result()
    assert no_admin.value.status_code == 400
    assert no_admin.value.error.code == "InvalidServerAADOnlyAuthNoAADAdminPropertyName"
    assert only.get(RG_DATA, SQL, "Default").properties.azure_ad_only_authentication is False

    started = time.monotonic()
    body = ServerAzureADAdministrator(properties=AdministratorProperties(
        administrator_type="ActiveDirectory", login="pg-admins", sid=PG_ADMINS, tenant_id=control_plane.tenant))
    admin = admins.begin_create_or_update(RG_DATA, SQL, "ActiveDirectory", body).result()
    assert time.monotonic() - started < 2  # retry-after-ms keeps the polling fast
    assert admin.name == "ActiveDirectory"
    assert admin.properties.login == "pg-admins" and admin.properties.sid == PG_ADMINS
    assert admin.properties.tenant_id == control_plane.tenant
    assert admin.properties.azure_ad_only_authentication is False

    read = admins.get(RG_DATA, SQL, "activedirectory")  # names are case-insensitive
    assert (read.properties.administrator_type, read.properties.login) == ("ActiveDirectory", "pg-admins")
    server_admins = sql.servers.get(RG_DATA, "SQL-LAB").properties.administrators
    assert server_admins.administrator_type == "ActiveDirectory"
    assert server_admins.principal_type == "Group"  # from the lab directory
    assert (server_admins.login, server_admins.sid) == ("pg-admins", PG_ADMINS)
    assert server_admins.tenant_id == control_plane.tenant
    assert server_admins.azure_ad_only_authentication is False
    assert sql.servers.get(RG_DATA, SQL_2).properties.administrators is None  # the other server is untouched

    # One admin per server: a second PUT replaces it (plain JSON works as well as the models).
    replaced = admins.begin_create_or_update(RG_DATA, SQL, "ActiveDirectory", {"properties": {
        "administratorType": "ActiveDirectory", "login": "dana.dba@lab.example", "sid": DANA}}).result()
    assert (replaced.properties.login, replaced.properties.sid) == ("dana.dba@lab.example", DANA)
    assert sql.servers.get(RG_DATA, SQL).properties.administrators.principal_type == "User"

    enabled = only.begin_create_or_update(RG_DATA, SQL, "Default",
                                          {"properties": {"azureADOnlyAuthentication": True}}).result()
    assert enabled.name == "Default" and enabled.properties.azure_ad_only_authentication is True
    assert admins.get(RG_DATA, SQL, "ActiveDirectory").properties.azure_ad_only_authentication is True
    assert sql.servers.get(RG_DATA, SQL).properties.administrators.azure_ad_only_authentication is True
    assert state.sql_entra_admin(SQL)["azureADOnlyAuthentication"] is True

    with pytest.raises(HttpResponseError) as refused:
        admins.begin_delete(RG_DATA, SQL, "ActiveDirectory").result()
    assert refused.value.status_code == 400
    assert refused.value.error.code == "InvalidServerAzureADAdminDeleteOperation"
    assert admins.get(RG_DATA, SQL, "ActiveDirectory").properties.sid == DANA

    only.begin_create_or_update(RG_DATA, SQL, "Default", {"properties": {"azureADOnlyAuthentication": False}}).result()
    assert only.get(RG_DATA, SQL, "Default").properties.azure_ad_only_authentication is False
    admins.begin_delete(RG_DATA, SQL, "ActiveDirectory").result()
    with pytest.raises(ResourceNotFoundError) as gone:
        admins.get(RG_DATA, SQL, "ActiveDirectory")
    assert gone.value.error.code == "ResourceNotFound"
    assert sql.servers.get(RG_DATA, SQL).properties.administrators is None
    assert state.sql_entra_admin(SQL) is None
    admins.begin_delete(RG_DATA, SQL, "ActiveDirectory").result()  # 204 when already gone

    # State is persisted after every write.
    saved = json.loads(control_plane.paths.arm_state.read_text())["resources"]
    assert not [r for r in saved.values() if r["type"] == "Microsoft.Sql/servers" and r["properties"].get(
        "administrators")]


def test_sql_writes_are_counted(control_plane):
    sql = control_plane.client(SqlManagementClient)
    before = control_plane.lab_api("GET", "counters")
    sql.server_azure_ad_only_authentications.begin_create_or_update(
        RG_DATA, SQL_2, "Default", {"properties": {"azureADOnlyAuthentication": False}}).result()
    after = control_plane.lab_api("GET", "counters")
    assert after["PUT"] == before["PUT"] + 1 and after["writes"] == before["writes"] + 1


def test_sql_unknown_server_is_not_found(control_plane):
    sql = control_plane.client(SqlManagementClient)
    with pytest.raises(ResourceNotFoundError) as missing:
        sql.servers.get(RG_DATA, "sql-nope")
    assert missing.value.error.code == "ResourceNotFound"
    assert "Microsoft.Sql/servers/sql-nope" in missing.value.error.message
    with pytest.raises(ResourceNotFoundError) as missing_admin:
        sql.server_azure_ad_administrators.get(RG_DATA, "sql-nope", "ActiveDirectory")
    assert missing_admin.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        sql.server_azure_ad_administrators.begin_create_or_update(RG_DATA, "sql-nope", "ActiveDirectory", {
            "properties": {"administratorType": "ActiveDirectory", "login": "x", "sid": DANA}}).result()
