"""cosmos_rbac and cosmos_account_entra against the lab's ARM double, one module call at a time
(``ansible localhost -m ...``) as the control identity.

What the modules wrote is read back independently: with azure-mgmt-cosmosdb as the lab's automation service
principal, and from the ARM double's request counters (a refused input must not have written anything).
"""
from __future__ import annotations

import json
import uuid

import pytest

from labrunner import SUBSCRIPTION, TENANT, automation_credential, run_module

RG = "rg-lab-data"
ACCOUNT = "cosmos-lab"
ACCOUNT_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.DocumentDB/databaseAccounts/{ACCOUNT}"
READER = "00000000-0000-0000-0000-000000000001"
CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"
DANA = "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"  # a user of the lab directory (topology.yml)
PG_ADMINS = "9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f"  # a group of the lab directory


@pytest.fixture(scope="module")
def cosmos(lab):
    """azure-mgmt-cosmosdb as the automation service principal: the independent reader (and the "other tool")."""
    from azure.mgmt.cosmosdb import CosmosDBManagementClient

    return CosmosDBManagementClient(automation_credential(lab), SUBSCRIPTION,
                                    base_url=f"https://127.0.0.1:{lab.base + 2}",
                                    credential_scopes=["https://management.azure.com/.default"], polling_interval=0.05,
                                    connection_verify=str(lab.state / "tls" / "ca-bundle.pem"))


def assignments(cosmos, principal=None):
    found = list(cosmos.sql_resources.list_sql_role_assignments(RG, ACCOUNT))
    return [a for a in found if principal is None or a.principal_id == principal]


def rbac(lab, check=False, **args):
    return run_module(lab, "cosmos_rbac", check=check, **dict(dict(account_name=ACCOUNT, resource_group=RG), **args))


def writes(lab) -> int:
    return lab.arm_counters()["writes"]


def test_relative_and_full_scope_are_one_assignment(lab, cosmos):
    first = rbac(lab, principal_id=DANA, role="Data Reader", scope="/dbs/appdb")
    assert first["changed"] and not first["failed"], first
    assert first["assignment"]["scope"] == f"{ACCOUNT_ID}/dbs/appdb"
    assert first["assignment"]["role"] == "Cosmos DB Built-in Data Reader"
    before = writes(lab)
    for scope in (f"{ACCOUNT_ID}/dbs/appdb", f"{ACCOUNT_ID.lower()}/dbs/appdb/", "/dbs/appdb/"):
        again = rbac(lab, principal_id=DANA.upper(), role=READER, scope=scope)
        assert not again["changed"] and not again["failed"], (scope, again)
        assert again["assignment"]["name"] == first["assignment"]["name"]
    assert writes(lab) == before
    mine = assignments(cosmos, DANA)
    assert len(mine) == 1 and mine[0].scope == f"{ACCOUNT_ID}/dbs/appdb"
    assert mine[0].role_definition_id == f"{ACCOUNT_ID}/sqlRoleDefinitions/{READER}"
    # names are case-sensitive in Cosmos DB: /dbs/AppDB is another scope
    other = rbac(lab, check=True, principal_id=DANA, role=READER, scope="/dbs/AppDB")
    assert other["changed"] and other["assignment"]["scope"] == f"{ACCOUNT_ID}/dbs/AppDB"


def test_deterministic_name_and_check_mode_writes_nothing(lab, cosmos):
    before, listed = writes(lab), len(assignments(cosmos))
    plan = rbac(lab, check=True, principal_id=PG_ADMINS, role="Cosmos DB Built-in Data Contributor",
                scope="/dbs/appdb/colls/items")
    assert plan["changed"] and plan["operations"][0].startswith("PUT sqlRoleAssignments/"), plan
    assert writes(lab) == before and len(assignments(cosmos)) == listed
    done = rbac(lab, principal_id=PG_ADMINS, role=f"{ACCOUNT_ID}/sqlRoleDefinitions/{CONTRIBUTOR}",
                scope="/dbs/appdb/colls/items")
    assert done["changed"] and done["assignment"]["name"] == plan["assignment"]["name"], (plan, done)
    assert cosmos.sql_resources.get_sql_role_assignment(done["assignment"]["name"], RG, ACCOUNT).scope == \
        f"{ACCOUNT_ID}/dbs/appdb/colls/items"


def test_an_equivalent_assignment_made_elsewhere_is_adopted_and_absent_removes_all(lab, cosmos):
    foreign = str(uuid.uuid4())  # what the portal or the CLI would name it
    cosmos.sql_resources.begin_create_update_sql_role_assignment(foreign, RG, ACCOUNT, {"properties": {
        "roleDefinitionId": f"{ACCOUNT_ID}/sqlRoleDefinitions/{CONTRIBUTOR}", "scope": ACCOUNT_ID,
        "principalId": DANA}}).result()
    adopted = rbac(lab, principal_id=DANA, role="data contributor", scope="/")
    assert not adopted["changed"] and adopted["assignment"]["name"] == foreign, adopted
    plan = rbac(lab, check=True, principal_id=DANA, role="Data Contributor", state="absent")
    assert plan["changed"] and plan["removed"] == [foreign]
    assert any(a.name == foreign for a in assignments(cosmos))
    gone = rbac(lab, principal_id=DANA, role="Data Contributor", state="absent")
    assert gone["changed"] and gone["removed"] == [foreign]
    assert not any(a.name == foreign for a in assignments(cosmos))
    assert not rbac(lab, principal_id=DANA, role="Data Contributor", state="absent")["changed"]
    # the database-scoped reader assignment of the first test is another (principal, role, scope): untouched
    assert any(a.scope.endswith("/dbs/appdb") for a in assignments(cosmos, DANA))


@pytest.mark.parametrize("args, field, words", [
    (dict(scope=f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.DocumentDB/databaseAccounts/"
                f"cosmos-other/dbs/appdb"), "scope", "is not in Cosmos DB account"),
    (dict(scope=f"{ACCOUNT_ID}-2/dbs/appdb"), "scope", "is not in Cosmos DB account"),
    (dict(scope=f"{ACCOUNT_ID}{ACCOUNT_ID}/dbs/appdb"), "scope", "only /dbs/<database>"),
    (dict(scope="/dbs/appdb/colls/items/docs/1"), "scope", "only /dbs/<database>"),
    (dict(scope="/dbs//colls/items"), "scope", "only /dbs/<database>"),
    (dict(scope="dbs/appdb"), "scope", "neither relative"),
    (dict(scope="/dbs/app?db"), "scope", "without / \\ ? #"),
    (dict(role="Data Owner"), "role", "is unknown: use Data Reader, Data Contributor"),
    (dict(role="Contributor"), "role", "is unknown"),
    (dict(role=f"{ACCOUNT_ID.replace(ACCOUNT, 'cosmos-other')}/sqlRoleDefinitions/{READER}"), "role",
     "is not a role definition of Cosmos DB account"),
    (dict(principal_id="mi-orders-api"), "principal_id", "is not a principal (object) id"),
    (dict(principal_id="00000000-0000-0000-0000-000000000000"), "principal_id", "is not a principal"),
    (dict(principal_id="5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a; DROP"), "principal_id", "is not a principal"),
])
def test_bad_input_is_refused_before_any_write(lab, args, field, words):
    before = writes(lab)
    result = rbac(lab, **dict(dict(principal_id=DANA, role="Data Reader", scope="/dbs/appdb"), **args))
    assert result["failed"] and not result.get("changed"), result
    assert field in result["msg"] and words in result["msg"], result["msg"]
    assert writes(lab) == before


def test_unknown_custom_role_and_unknown_account(lab):
    unknown = rbac(lab, principal_id=DANA, role=str(uuid.uuid4()))
    assert unknown["failed"] and "is not a role definition of account cosmos-lab" in unknown["msg"], unknown
    missing = run_module(lab, "cosmos_rbac", account_name="cosmos-nope", resource_group=RG, principal_id=DANA,
                         role="Data Reader")
    assert missing["failed"] and "Cosmos DB account cosmos-nope was not found" in missing["msg"], missing
    assert "remedy" in missing


def test_busy_account_and_unreplicated_principal_are_retried(lab, cosmos):
    lab.lab_api("POST", "faults", {"method": "PUT", "path": "/sqlRoleAssignments/", "status": 412, "count": 2,
                                   "message": "There is already an operation in progress which requires exclusive "
                                              "lock on this service."})
    lab.lab_api("POST", "faults", {"method": "PUT", "path": "/sqlRoleAssignments/", "status": 400, "code": "BadRequest",
                                   "message": f"The provided principal ID [{PG_ADMINS}] was not found in the AAD "
                                              f"tenant(s) [{TENANT}] which are associated with the customer's "
                                              f"subscription."})
    try:
        result = rbac(lab, principal_id=PG_ADMINS, role="Data Reader", scope="/dbs/appdb")
    finally:
        lab.lab_api("DELETE", "faults")
    assert result["changed"] and not result["failed"], result
    assert result["retries"] == 3
    assert len([a for a in assignments(cosmos, PG_ADMINS) if a.scope.endswith("/dbs/appdb")]) == 1


def test_busy_beyond_the_timeout_fails_with_a_remedy(lab):
    lab.lab_api("POST", "faults", {"method": "PUT", "path": "/sqlRoleAssignments/", "status": 409, "count": 20})
    try:
        result = rbac(lab, principal_id=DANA, role="Data Contributor", scope="/dbs/appdb/colls/items", busy_timeout=2)
    finally:
        lab.lab_api("DELETE", "faults")
    assert result["failed"] and "applied before it: nothing" in result["msg"], result
    assert "remedy" in result


def account_tags(cosmos) -> dict:
    return cosmos.database_accounts.get(RG, ACCOUNT).tags or {}


def test_account_keys_regenerated_once_then_switched_off_and_on(lab, cosmos):
    keys = cosmos.database_accounts.list_keys(RG, ACCOUNT)
    entra = dict(account_name=ACCOUNT, resource_group=RG)
    plan = run_module(lab, "cosmos_account_entra", check=True, regenerate_keys=True, **entra)
    assert plan["changed"] and len(plan["operations"]) == 5, plan
    assert cosmos.database_accounts.list_keys(RG, ACCOUNT).primary_master_key == keys.primary_master_key
    done = run_module(lab, "cosmos_account_entra", regenerate_keys=True, **entra)
    assert done["changed"] and done["keys_regenerated_at"], done
    renewed = cosmos.database_accounts.list_keys(RG, ACCOUNT)
    for field in ("primary_master_key", "secondary_master_key", "primary_readonly_master_key",
                  "secondary_readonly_master_key"):
        assert getattr(renewed, field) != getattr(keys, field), field
    assert account_tags(cosmos)["csa-inabox-keys-regenerated"] == done["keys_regenerated_at"]
    again = run_module(lab, "cosmos_account_entra", regenerate_keys=True, **entra)
    assert not again["changed"] and again["keys_regenerated_at"] == done["keys_regenerated_at"], again

    blocked = run_module(lab, "cosmos_account_entra", disable_local_auth=True,
                         applications_using_keys=["catalog-api", "search-indexer"], **entra)
    assert blocked["failed"] and "applications still using a key: catalog-api, search-indexer" in blocked["msg"]
    assert cosmos.database_accounts.get(RG, ACCOUNT).disable_local_auth is False

    off = run_module(lab, "cosmos_account_entra", disable_local_auth=True, **entra)
    assert off["changed"] and off["disable_local_auth"] is True, off
    assert cosmos.database_accounts.get(RG, ACCOUNT).disable_local_auth is True
    assert not run_module(lab, "cosmos_account_entra", disable_local_auth=True, **entra)["changed"]

    on = run_module(lab, "cosmos_account_entra", check=True, disable_local_auth=False, **entra)
    assert on["changed"] and not on["failed"], on
    assert on["operations"] == ["PATCH disableLocalAuth=false"]
    assert on["disable_local_auth"] is False and on["keys_regenerated_at"] is None
    assert cosmos.database_accounts.get(RG, ACCOUNT).disable_local_auth is True
    on = run_module(lab, "cosmos_account_entra", disable_local_auth=False, **entra)
    assert on["changed"] and on["keys_regenerated_at"] is None
    assert "csa-inabox-keys-regenerated" not in account_tags(cosmos)
    assert cosmos.database_accounts.get(RG, ACCOUNT).disable_local_auth is False


def test_account_writes_are_retried_while_the_account_is_busy(lab, cosmos):
    """Cosmos DB's 412 "another operation in progress" on the account's PATCH and regenerateKey is waited out."""
    entra = dict(account_name=ACCOUNT, resource_group=RG)
    busy = "There is already an operation in progress which requires exclusive lock on this service."
    lab.lab_api("DELETE", "faults")
    for method, path in (("POST", "/regenerateKey$"), ("PATCH", "/databaseAccounts/cosmos-lab$")):
        lab.lab_api("POST", "faults", {"method": method, "path": path, "status": 412, "count": 2,
                                       "code": "PreconditionFailed", "message": busy})
    try:
        done = run_module(lab, "cosmos_account_entra", regenerate_keys=True, **entra)
        faults = lab.lab_api("GET", "faults")
    finally:
        lab.lab_api("DELETE", "faults")
    assert done["changed"] and not done["failed"], done
    assert faults["value"] == [] and len(faults["served"]) == 4 and all(s["retried"] for s in faults["served"])
    assert account_tags(cosmos)["csa-inabox-keys-regenerated"] == done["keys_regenerated_at"]


def test_keys_stay_on_while_nobody_has_a_data_role(lab, cosmos):
    for found in assignments(cosmos):
        cosmos.sql_resources.begin_delete_sql_role_assignment(found.name, RG, ACCOUNT).result()
    refused = run_module(lab, "cosmos_account_entra", account_name=ACCOUNT, resource_group=RG, disable_local_auth=True)
    assert refused["failed"] and "no data-plane role assignment" in refused["msg"], refused
    assert cosmos.database_accounts.get(RG, ACCOUNT).disable_local_auth is False


def test_vault_kv_cosmos_key_writes_the_current_key_without_showing_it(lab):
    import hvac

    vault = hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())
    vault.secrets.kv.v2.create_or_update_secret(path="apps/rollback-test/cosmos", mount_point="secret",
                                                secret={"key": "a key that was regenerated", "endpoint": "kept"})
    args = dict(account_name=ACCOUNT, resource_group=RG, url=lab.env["VAULT_ADDR"],
                token_file=str(lab.state / "openbao" / "token"), path="apps/rollback-test/cosmos")
    plan = run_module(lab, "vault_kv_cosmos_key", check=True, **args)
    assert plan["changed"] and plan["version"] is None, plan
    assert plan["secret"] == "secret/apps/rollback-test/cosmos#key"
    current = vault.secrets.kv.v2.read_secret_version(path="apps/rollback-test/cosmos", mount_point="secret")
    assert current["data"]["metadata"]["version"] == 1
    done = run_module(lab, "vault_kv_cosmos_key", **args)
    assert done["changed"] and done["version"] == 2, done
    lab.assert_no_secret_in(json.dumps(done) + json.dumps(plan))
    written = vault.secrets.kv.v2.read_secret_version(path="apps/rollback-test/cosmos", mount_point="secret")["data"]
    primary = json.loads((lab.state / "secrets.json").read_text())["cosmos_accounts"][ACCOUNT]["primaryMasterKey"]
    assert written["data"] == {"key": primary, "endpoint": "kept"}
    again = run_module(lab, "vault_kv_cosmos_key", **args)
    assert not again["changed"] and again["version"] == 2
    readonly = run_module(lab, "vault_kv_cosmos_key", key_kind="secondaryReadonly", field="readonly_key", **args)
    assert readonly["changed"] and readonly["secret"].endswith("#readonly_key")
    for hostile in ({"path": "../etc"}, {"path": "   "}, {"path": "a//b"}, {"mount": "secret/../sys"}):
        bad = run_module(lab, "vault_kv_cosmos_key", **{**args, **hostile})
        assert bad["failed"] and "must be a path of non-empty segments" in bad["msg"], (hostile, bad)
    cubbyhole = run_module(lab, "vault_kv_cosmos_key", **{**args, "mount": "cubbyhole"})
    assert cubbyhole["failed"] and "mount cubbyhole is not a KV version 2 secrets engine" in cubbyhole["msg"]
    two_tokens = lab.state / "two-tokens"
    two_tokens.write_text("hvs.FIRSTTOKENVALUE\nhvs.SECONDTOKENVALUE\n")
    leaked = run_module(lab, "vault_kv_cosmos_key", **{**args, "token_file": str(two_tokens)})
    assert leaked["failed"] and "does not hold one Vault token" in leaked["msg"], leaked
    assert "TOKENVALUE" not in json.dumps(leaked)


@pytest.fixture(scope="module")
def workload(lab):
    """mi-cosmos-check, attached to vm-catalog, with Data Reader on the items container only."""
    identity = run_module(lab, "azure_mi", name="mi-cosmos-check", resource_group="rg-lab-apps",
                          location="eastus2")["identity"]
    attached = run_module(lab, "azure_mi_assignment", name="vm-catalog", resource_group="rg-lab-apps",
                          identity_ids=[identity["id"]])
    assert not attached["failed"], attached
    env = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{lab.base + 3}/vms/vm-catalog"}
    return identity, env


def login_check(lab, workload, **args):
    identity, env = workload
    return run_module(lab, "mi_login_check", env=env, **{
        "database_type": "cosmos", "host": f"https://localhost:{lab.base + 9}/", "database": "appdb",
        "container": "items", "auth_source": "managed_identity", "client_id": identity["client_id"], **args})


def test_login_check_is_refused_without_a_data_role_then_reads_and_queries(lab, workload):
    identity = workload[0]
    refused = login_check(lab, workload)
    assert refused["failed"] and "Cosmos DB refused" in refused["msg"] and "5301" in refused["msg"], refused
    assert refused["token_object_id"] == identity["principal_id"]
    assert "cosmos_rbac" in refused["remedy"]
    granted = rbac(lab, principal_id=identity["principal_id"], role="Data Reader", scope="/dbs/appdb/colls/items")
    assert granted["changed"] and not granted["failed"], granted
    passed = login_check(lab, workload, query="SELECT c.id, c.name FROM c WHERE c.category = @cat",
                         parameters=[{"name": "@cat", "value": "electronics"}],
                         expected_user=identity["principal_id"].upper())
    assert not passed["failed"] and not passed["changed"], passed
    assert passed["connected_as"] == identity["principal_id"] and passed["item_count"] == 3
    assert passed["scope"] == "https://localhost/.default" and len(passed["row"]) == 2
    forced = login_check(lab, workload, cosmos_scope="https://cosmos.azure.com/.default")
    assert not forced["failed"] and forced["scope"] == "https://cosmos.azure.com/.default", forced
    other = login_check(lab, workload, expected_user=DANA)
    assert other["failed"] and f"expected {DANA}" in other["msg"]
    outside = login_check(lab, workload, container="nope")  # outside its scope: refused before any existence check
    assert outside["failed"] and "(status 403, substatus 5301)" in outside["msg"], outside


@pytest.mark.parametrize("args, words", [
    (dict(host="http://localhost:1/"), "is not a Cosmos DB account endpoint"),
    (dict(host="https://localhost:99999/"), "is not a Cosmos DB account endpoint"),
    (dict(host="https://localhost/dbs/appdb"), "is not a Cosmos DB account endpoint"),
    (dict(host="cosmos-prod.documents.azure.us", cloud_environment="AzureCloud", cloud_endpoints=None),
     "is a Cosmos DB endpoint of AzureUSGovernment, but cloud_environment is AzureCloud"),
    (dict(query="SELECT * FROM c WHERE c.category = @cat", parameters=[{"name": "cat", "value": "x"}]),
     "parameters[0].name must be a string starting with @"),
    (dict(parameters=[{"name": "@cat", "value": "x"}]), "parameters are given but no query uses them"),
    (dict(database="appdb/colls/items"), "database 'appdb/colls/items' is not a Cosmos DB id"),
    (dict(container=".."), "container '..' is not a Cosmos DB id"),
    (dict(host="https://user:S3cretPw@localhost/"), "the user and password it held are not shown"),
    (dict(host="localhost:0"), "is not a Cosmos DB account endpoint"),
    (dict(connect_timeout=-5), "connect_timeout must be between 1 and 300 seconds"),
    (dict(container=" "), "container is required for database_type=cosmos"),
])
def test_login_check_refuses_bad_input_before_asking_for_a_token(lab, workload, args, words):
    result = login_check(lab, workload, **args)
    assert result["failed"] and words in result["msg"], result
    assert "token_object_id" not in result and "S3cretPw" not in result["msg"]
