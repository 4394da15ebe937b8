"""The ARM double's Cosmos DB accounts (local authentication, keys, data-plane role definitions and assignments),
driven by the real azure-mgmt-cosmosdb client (fixtures in conftest.py).
Run: ``.venv/bin/python -m pytest tests/integration/lab/test_arm_cosmos.py``.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.cosmosdb import CosmosDBManagementClient

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

RG_DATA, ACCOUNT = "rg-lab-data", "cosmos-lab"
DANA = "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"
READER, CONTRIBUTOR = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
PREFIX = "Microsoft.DocumentDB/databaseAccounts/"


@pytest.fixture
def cosmos(control_plane):
    return control_plane.client(CosmosDBManagementClient)


def account_id(control_plane, name: str = ACCOUNT) -> str:
    return (f"/subscriptions/{control_plane.subscription}/resourceGroups/{RG_DATA}/providers/"
            f"Microsoft.DocumentDB/databaseAccounts/{name}")


def assignment(role: str, scope: str, principal: str) -> dict:
    return {"properties": {"roleDefinitionId": role, "scope": scope, "principalId": principal}}


def test_account_is_seeded_with_keys_on(control_plane, cosmos):
    account = cosmos.database_accounts.get(RG_DATA, ACCOUNT)
    assert account.id == account_id(control_plane)
    assert account.kind == "GlobalDocumentDB"
    assert account.properties.provisioning_state == "Succeeded"
    assert account.properties.disable_local_auth is False
    assert account.properties.document_endpoint == f"https://localhost:{control_plane.ports.cosmos}/"
    seen = control_plane.lab.arm.cosmos_account(ACCOUNT)
    assert seen["endpoint"] == account.properties.document_endpoint
    assert seen["databases"] == {"appdb": ["items"]}
    assert [a.name for a in cosmos.database_accounts.list_by_resource_group(RG_DATA)] == [ACCOUNT]


def test_disable_local_auth_round_trip(control_plane, cosmos):
    state = control_plane.lab.arm
    started = time.monotonic()
    updated = cosmos.database_accounts.begin_update(
        RG_DATA, ACCOUNT, {"properties": {"disableLocalAuth": True}}).result()
    assert time.monotonic() - started < 2  # retry-after-ms keeps the polling fast
    assert updated.properties.disable_local_auth is True
    assert updated.properties.provisioning_state == "Succeeded"  # the SDK's final GET, after "Updating"
    assert cosmos.database_accounts.get(RG_DATA, ACCOUNT).properties.disable_local_auth is True
    assert state.cosmos_account(ACCOUNT)["disableLocalAuth"] is True
    saved = json.loads(control_plane.paths.arm_state.read_text())["resources"]
    assert saved[account_id(control_plane).lower()]["properties"]["disableLocalAuth"] is True

    cosmos.database_accounts.begin_update(RG_DATA, ACCOUNT, {"properties": {"disableLocalAuth": False}}).result()
    assert state.cosmos_account(ACCOUNT)["disableLocalAuth"] is False

    with pytest.raises(HttpResponseError) as not_emulated:
        cosmos.database_accounts.begin_update(RG_DATA, ACCOUNT, {"properties": {"publicNetworkAccess": "Disabled"}})
    assert not_emulated.value.status_code == 400 and not_emulated.value.error.code == "LabNotEmulated"


def test_list_keys_and_regenerate_key(control_plane, cosmos):
    keys = cosmos.database_accounts.list_keys(RG_DATA, ACCOUNT)
    assert len({keys.primary_master_key, keys.secondary_master_key, keys.primary_readonly_master_key,
                keys.secondary_readonly_master_key}) == 4
    assert len(keys.primary_master_key) == 88
    secrets_file = control_plane.paths.secrets
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(secrets_file.read_text())["cosmos_accounts"][ACCOUNT]["primaryMasterKey"] == \
        keys.primary_master_key
    assert keys.primary_master_key not in control_plane.paths.arm_state.read_text()

    assert cosmos.database_accounts.begin_regenerate_key(RG_DATA, ACCOUNT, {"keyKind": "primary"}).result() is None
    renewed = cosmos.database_accounts.list_keys(RG_DATA, ACCOUNT)
    assert renewed.primary_master_key != keys.primary_master_key
    assert renewed.secondary_master_key == keys.secondary_master_key
    assert control_plane.lab.arm.cosmos_account(ACCOUNT)["keys"]["primaryMasterKey"] == renewed.primary_master_key
    assert json.loads(secrets_file.read_text())["cosmos_accounts"][ACCOUNT]["primaryMasterKey"] == \
        renewed.primary_master_key
    assert "sp-lab-automation" in json.loads(secrets_file.read_text())  # the other entries are kept

    with pytest.raises(HttpResponseError) as bad_kind:
        cosmos.database_accounts.begin_regenerate_key(RG_DATA, ACCOUNT, {"keyKind": "tertiary"}).result()
    assert bad_kind.value.status_code == 400 and bad_kind.value.error.code == "BadRequest"


def test_built_in_role_definitions(control_plane, cosmos):
    definitions = {d.name: d for d in cosmos.sql_resources.list_sql_role_definitions(RG_DATA, ACCOUNT)}
    assert sorted(definitions) == [READER, CONTRIBUTOR]
    reader = cosmos.sql_resources.get_sql_role_definition(READER, RG_DATA, ACCOUNT)
    assert reader.id == f"{account_id(control_plane)}/sqlRoleDefinitions/{READER}"
    assert reader.properties.role_name == "Cosmos DB Built-in Data Reader"
    assert reader.properties.type == "BuiltInRole"
    assert reader.properties.assignable_scopes == [account_id(control_plane)]
    assert reader.properties.permissions[0].data_actions == [PREFIX + a for a in (
        "readMetadata", "sqlDatabases/containers/executeQuery", "sqlDatabases/containers/readChangeFeed",
        "sqlDatabases/containers/items/read")]
    contributor = definitions[CONTRIBUTOR]
    assert contributor.properties.role_name == "Cosmos DB Built-in Data Contributor"
    assert contributor.properties.permissions[0].data_actions == [PREFIX + a for a in (
        "readMetadata", "sqlDatabases/containers/*", "sqlDatabases/containers/items/*")]
    with pytest.raises(ResourceNotFoundError):
        cosmos.sql_resources.get_sql_role_definition(str(uuid.uuid4()), RG_DATA, ACCOUNT)


def test_role_assignment_create_get_list_delete(control_plane, cosmos):
    sql, state, account = cosmos.sql_resources, control_plane.lab.arm, account_id(control_plane)
    role, scope = f"{account}/sqlRoleDefinitions/{CONTRIBUTOR}", f"{account}/dbs/appdb"
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    before = control_plane.lab_api("GET", "counters")

    started = time.monotonic()
    created = sql.begin_create_update_sql_role_assignment(first, RG_DATA, ACCOUNT,
                                                          assignment(role, scope, DANA)).result()
    assert time.monotonic() - started < 2
    assert created.name == first and created.id == f"{account}/sqlRoleAssignments/{first}"
    assert (created.properties.role_definition_id, created.properties.scope, created.properties.principal_id) == (
        role, scope, DANA)
    assert control_plane.lab_api("GET", "counters")["writes"] >= before["writes"] + 1

    # Cosmos allows the same (principal, role, scope) again under another id.
    sql.begin_create_update_sql_role_assignment(second, RG_DATA, ACCOUNT, assignment(role, scope, DANA)).result()
    assert sql.get_sql_role_assignment(second, RG_DATA, ACCOUNT).properties.principal_id == DANA
    assert {a.name for a in sql.list_sql_role_assignments(RG_DATA, ACCOUNT)} >= {first, second}
    seen = state.cosmos_account(ACCOUNT)["assignments"]
    assert seen.count({"principalId": DANA, "roleDefinitionId": role, "scope": scope}) == 2

    sql.begin_delete_sql_role_assignment(first, RG_DATA, ACCOUNT).result()
    sql.begin_delete_sql_role_assignment(second, RG_DATA, ACCOUNT).result()
    sql.begin_delete_sql_role_assignment(second, RG_DATA, ACCOUNT).result()  # 204 when already gone
    with pytest.raises(ResourceNotFoundError) as gone:
        sql.get_sql_role_assignment(first, RG_DATA, ACCOUNT)
    assert gone.value.error.code == "NotFound"
    assert not {first, second} & {a.name for a in sql.list_sql_role_assignments(RG_DATA, ACCOUNT)}
    assert not state.cosmos_account(ACCOUNT)["assignments"]


@pytest.mark.parametrize("scope_of", [
    lambda account: "/dbs/appdb",  # relative, as the CLI takes it: ARM needs the full id
    lambda account: account.replace("cosmos-lab", "cosmos-other"),  # another account
    lambda account: f"{account}/colls/items",  # a container without its database
])
def test_bad_scope_is_rejected(control_plane, cosmos, scope_of):
    account = account_id(control_plane)
    with pytest.raises(HttpResponseError) as refused:
        cosmos.sql_resources.begin_create_update_sql_role_assignment(
            str(uuid.uuid4()), RG_DATA, ACCOUNT,
            assignment(f"{account}/sqlRoleDefinitions/{READER}", scope_of(account), DANA)).result()
    assert refused.value.status_code == 400 and refused.value.error.code == "BadRequest"
    assert "The provided scope [" in refused.value.error.message and "ActivityId:" in refused.value.error.message


def test_relative_role_definition_is_rejected(control_plane, cosmos):
    with pytest.raises(HttpResponseError) as refused:
        cosmos.sql_resources.begin_create_update_sql_role_assignment(
            str(uuid.uuid4()), RG_DATA, ACCOUNT, assignment(READER, account_id(control_plane), DANA)).result()
    assert refused.value.status_code == 400 and "role definition ID" in refused.value.error.message


def test_unknown_principal_is_rejected(control_plane, cosmos):
    account, stranger = account_id(control_plane), str(uuid.uuid4())
    with pytest.raises(HttpResponseError) as refused:
        cosmos.sql_resources.begin_create_update_sql_role_assignment(
            str(uuid.uuid4()), RG_DATA, ACCOUNT,
            assignment(f"{account}/sqlRoleDefinitions/{READER}", account, stranger)).result()
    assert refused.value.status_code == 400 and refused.value.error.code == "BadRequest"
    assert f"principal ID [{stranger}] was not found in the AAD tenant" in refused.value.error.message


def test_injected_412_surfaces(control_plane, cosmos):
    account = account_id(control_plane)
    control_plane.lab_api("POST", "faults", {
        "method": "PUT", "path": "/sqlRoleAssignments/", "status": 412,
        "message": "There is already an operation in progress which requires exclusive lock on this service."})
    try:
        with pytest.raises(HttpResponseError) as busy:
            cosmos.sql_resources.begin_create_update_sql_role_assignment(
                str(uuid.uuid4()), RG_DATA, ACCOUNT,
                assignment(f"{account}/sqlRoleDefinitions/{READER}", account, DANA)).result()
    finally:
        control_plane.lab_api("DELETE", "faults")
    assert busy.value.status_code == 412 and busy.value.error.code == "PreconditionFailed"
    assert "exclusive lock" in busy.value.error.message
    assert not control_plane.lab.arm.cosmos_account(ACCOUNT)["assignments"]


def test_unknown_account_is_not_found(cosmos):
    with pytest.raises(ResourceNotFoundError) as missing:
        cosmos.database_accounts.get(RG_DATA, "cosmos-nope")
    assert missing.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        cosmos.sql_resources.get_sql_role_assignment(str(uuid.uuid4()), RG_DATA, "cosmos-nope")
