"""The lab's Cosmos DB data plane (azurelab/cosmos.py), driven over the wire by the real azure-cosmos SDK, with role
assignments, ``disableLocalAuth`` and keys changed through the ARM double by the real azure-mgmt-cosmosdb client.

One in-process lab for the module (control plane + Cosmos DB front and its Node.js backend) on its own ports and state
folder; ``python -m azurelab up|status|down`` runs in a subprocess in ``test_labctl_serves_cosmos_and_leaves_no_backend``.
The SDK's retries of a refused account read (``AZURE_COSMOS_HEALTH_CHECK_MAX_RETRIES``, 3 x 0.5 s) are turned off to
keep refusals fast: a client knob, the lab answers the same.
Run: ``.venv/bin/python -m pytest tests/integration/lab/test_cosmos_lab.py``.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
from azure.core.credentials import AccessToken
from azure.cosmos import CosmosClient, PartitionKey
from azure.cosmos.exceptions import CosmosHttpResponseError
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.mgmt.cosmosdb import CosmosDBManagementClient

from azurelab import ca, labctl
from azurelab.config import LabPaths, Ports, topology as lab_topology
from azurelab.cosmos import Operation, classify, missing_action
from azurelab.server import Lab, LoggedHooks
from azurelab.tokens import Issuer

from conftest import REPO_ROOT, ControlPlane, free_base

pytestmark = [pytest.mark.usefixtures("no_ambient_azure_env"),
              # azure-cosmos warns at every request that it skips TLS checks for localhost; the lab CA is trusted anyway
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

RG_OPS, RG_DATA, ACCOUNT = "rg-lab-ops", "rg-lab-data", "cosmos-lab"
READER, CONTRIBUTOR = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
QUERY = "SELECT * FROM c WHERE c.category = @cat"
ELECTRONICS = {"laptop", "headphones", "monitor"}  # topology.yml's seed, category "electronics"
PREFIX = "Microsoft.DocumentDB/databaseAccounts/"


@pytest.fixture(scope="module")
def lab():
    root = pathlib.Path(tempfile.mkdtemp(prefix="lab-cosmos-test-"))
    paths, ports, topology = LabPaths(root), Ports.from_base(free_base()), lab_topology()
    ca.ensure(paths)
    labctl.ensure_secrets(paths, topology)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_COMPONENTS", "azure,cosmos")
        patch.setenv("REQUESTS_CA_BUNDLE", str(paths.ca_bundle))
        patch.setenv("AZURE_COSMOS_HEALTH_CHECK_MAX_RETRIES", "0")
        running = Lab(paths, topology, ports, hooks=LoggedHooks())
        running.start()
        try:
            yield ControlPlane(paths, ports, topology, running, hooks=None)
        finally:
            running.stop()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mgmt(lab):
    return lab.client(CosmosDBManagementClient)


def endpoint(lab) -> str:
    return f"https://localhost:{lab.ports.cosmos}/"


def account_id(lab) -> str:
    return f"/subscriptions/{lab.subscription}/resourceGroups/{RG_DATA}/providers/{PREFIX}{ACCOUNT}"


def operator_principal(lab) -> str:
    """mi-operator's object id: the managed identity of vm-control (the control node)."""
    return lab.lab.arm.get(RG_OPS, "Microsoft.ManagedIdentity/userAssignedIdentities",
                           "mi-operator")["properties"]["principalId"]


def automation_principal(lab) -> str:
    return lab.lab.directory.by_client_id(lab.automation()["client_id"])["object_id"]


def assign(lab, mgmt, principal: str, role: str, scope: str = "") -> str:
    name = str(uuid.uuid4())
    mgmt.sql_resources.begin_create_update_sql_role_assignment(name, RG_DATA, ACCOUNT, {"properties": {
        "roleDefinitionId": f"{account_id(lab)}/sqlRoleDefinitions/{role}", "scope": account_id(lab) + scope,
        "principalId": principal}}).result()
    return name


def unassign(mgmt, name: str) -> None:
    mgmt.sql_resources.begin_delete_sql_role_assignment(name, RG_DATA, ACCOUNT).result()


def items(client: CosmosClient, container: str = "items"):
    return client.get_database_client("appdb").get_container_client(container)


def tutorial_query(lab, credential) -> set[str]:
    """The tutorial's Part 3 "after" code: a token credential, no key."""
    client = CosmosClient(endpoint(lab), credential=credential)
    container = client.get_database_client("appdb").get_container_client("items")
    found = container.query_items(QUERY, parameters=[{"name": "@cat", "value": "electronics"}],
                                  enable_cross_partition_query=True)
    return {item["name"] for item in found}


def refused(call) -> CosmosHttpResponseError:
    with pytest.raises(CosmosHttpResponseError) as error:
        call()
    return error.value


def said(error: CosmosHttpResponseError, code: str) -> str:
    """The service's message (its ActivityId line last), checking its code: the SDK shows ``(<code>) <message>``."""
    prefix = f"({code}) "
    assert error.message.startswith(prefix), error.message
    return error.message[len(prefix):]


class StaticToken:
    """A token credential handing out one given token (to send tokens the lab's Entra would never issue)."""

    def __init__(self, token: str):
        self.token = token

    def get_token(self, *_scopes, **_kwargs) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def on_control_node(lab, monkeypatch):
    """This process as vm-control: its managed identity (mi-operator) through the IMDS-style endpoint."""
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", lab.imds_host("vm-control"))


def test_tutorial_query_needs_a_data_plane_role(lab, mgmt, on_control_node):
    credential, principal = ManagedIdentityCredential(), operator_principal(lab)
    error = refused(lambda: tutorial_query(lab, credential))
    assert (error.status_code, error.sub_status) == (403, 5301)
    assert said(error, "Forbidden").startswith(
        f"Request blocked by Auth {ACCOUNT} : Request is blocked because principal [{principal}] does not have "
        f"required RBAC permissions to perform action [{PREFIX}readMetadata] on resource [/]. "
        "Learn more: https://aka.ms/cosmos-native-rbac.\r\nActivityId: ")
    assert error.headers["x-ms-substatus"] == "5301" and error.headers["x-ms-activity-id"]

    reader = assign(lab, mgmt, principal, READER, "/dbs/appdb")  # effective at the next request, as in Cosmos DB
    try:
        assert tutorial_query(lab, credential) == ELECTRONICS
        client = CosmosClient(endpoint(lab), credential=credential)
        assert items(client).read_item("4", partition_key="books")["name"] == "cookbook"
        assert len(list(items(client).read_all_items())) >= 5
        assert items(client).read()["partitionKey"]["paths"] == ["/category"]
        denied = refused(lambda: items(client).create_item({"id": "x1", "category": "toys", "name": "ball"}))
        assert (denied.status_code, denied.sub_status) == (403, 5301)
        assert (f"does not have required RBAC permissions to perform action [{PREFIX}sqlDatabases/containers/items/"
                "create] on resource [dbs/appdb/colls/items]") in denied.message
        # Databases and containers are ARM's: no data-plane role can create them.
        management = refused(lambda: client.create_database("newdb"))
        assert (management.status_code, management.sub_status) == (403, 5300)
        assert ("The given request [POST /dbs] cannot be authorized by AAD token in data plane. Learn more: "
                "https://aka.ms/cosmos-native-rbac.") in said(management, "Forbidden")
    finally:
        unassign(mgmt, reader)
    # The assignment is gone: the same client is refused at its next request.
    again = refused(lambda: list(items(client).query_items(QUERY, parameters=[{"name": "@cat", "value": "books"}],
                                                           enable_cross_partition_query=True)))
    assert (again.status_code, again.sub_status) == (403, 5301)
    assert f"action [{PREFIX}sqlDatabases/containers/executeQuery] on resource [dbs/appdb/colls/items]" in again.message


def test_contributor_writes_items_reader_does_not(lab, mgmt):
    credential, principal = lab.operator_credential(), automation_principal(lab)
    reader = assign(lab, mgmt, principal, READER)
    try:
        client = CosmosClient(endpoint(lab), credential=credential)
        assert refused(lambda: items(client).upsert_item({"id": "c1", "category": "toys"})).status_code == 403
        contributor = assign(lab, mgmt, principal, CONTRIBUTOR, "/dbs/appdb")
        try:
            container = items(client)
            container.create_item({"id": "c1", "category": "toys", "name": "ball"})
            container.upsert_item({"id": "c1", "category": "toys", "name": "red ball"})
            container.replace_item("c1", {"id": "c1", "category": "toys", "name": "blue ball"})
            container.patch_item("c1", "toys", [{"op": "replace", "path": "/name", "value": "green ball"}])
            assert container.read_item("c1", partition_key="toys")["name"] == "green ball"
            assert [c["name"] for c in container.query_items_change_feed(start_time="Beginning")]
            container.delete_item("c1", partition_key="toys")
            # Contributor's "sqlDatabases/containers/*" is still no way to create a container.
            denied = refused(lambda: client.get_database_client("appdb").create_container(
                "more", PartitionKey("/id")))
            assert (denied.status_code, denied.sub_status) == (403, 5300)
        finally:
            unassign(mgmt, contributor)
    finally:
        unassign(mgmt, reader)


def test_container_scope_covers_that_container_only(lab, mgmt):
    keys = mgmt.database_accounts.list_keys(RG_DATA, ACCOUNT)
    keyed = CosmosClient(endpoint(lab), credential=keys.primary_master_key)
    # A master key may create a container (in the data plane only: the lab does not mirror it into ARM).
    keyed.get_database_client("appdb").create_container_if_not_exists("other", PartitionKey("/category"))
    items(keyed, "other").upsert_item({"id": "o1", "category": "electronics", "name": "radio"})
    principal = automation_principal(lab)
    scoped = assign(lab, mgmt, principal, READER, "/dbs/appdb/colls/items")
    try:
        client = CosmosClient(endpoint(lab), credential=lab.operator_credential())  # GET / needs any scope only
        assert {i["name"] for i in items(client).query_items(
            QUERY, parameters=[{"name": "@cat", "value": "electronics"}], enable_cross_partition_query=True)} \
            >= ELECTRONICS
        other = refused(lambda: list(items(client, "other").query_items(
            QUERY, parameters=[{"name": "@cat", "value": "electronics"}], enable_cross_partition_query=True)))
        assert (other.status_code, other.sub_status) == (403, 5301)
        assert "on resource [dbs/appdb/colls/other]" in other.message
        database = refused(lambda: client.get_database_client("appdb").read())
        assert "action [Microsoft.DocumentDB/databaseAccounts/readMetadata] on resource [dbs/appdb]" in \
            database.message
    finally:
        unassign(mgmt, scoped)


def test_master_key_follows_disable_local_auth(lab, mgmt):
    key = mgmt.database_accounts.list_keys(RG_DATA, ACCOUNT).primary_master_key
    client = CosmosClient(endpoint(lab), credential=key)
    assert tutorial_query(lab, key) == ELECTRONICS
    account = client.get_database_account()
    assert [loc["databaseAccountEndpoint"] for loc in account.WritableLocations] == [endpoint(lab)]
    assert client.client_connection.last_response_headers["content-location"].startswith(endpoint(lab))

    mgmt.database_accounts.begin_update(RG_DATA, ACCOUNT, {"properties": {"disableLocalAuth": True}}).result()
    try:
        # Cosmos DB answers 401 Unauthorized here (not 403).
        error = refused(lambda: list(items(client).read_all_items()))
        assert (error.status_code, said(error, "Unauthorized").split("\r\n")[0]) == (
            401, "Local Authorization is disabled. Use an AAD token to authorize all requests.")
        assert refused(lambda: CosmosClient(endpoint(lab), credential=key)).status_code == 401
    finally:
        mgmt.database_accounts.begin_update(RG_DATA, ACCOUNT, {"properties": {"disableLocalAuth": False}}).result()
    assert len(list(items(client).read_all_items())) >= 5


def test_keys_regenerated_and_read_only(lab, mgmt):
    before = mgmt.database_accounts.list_keys(RG_DATA, ACCOUNT)
    old = CosmosClient(endpoint(lab), credential=before.primary_master_key)
    mgmt.database_accounts.begin_regenerate_key(RG_DATA, ACCOUNT, {"keyKind": "primary"}).result()
    after = mgmt.database_accounts.list_keys(RG_DATA, ACCOUNT)
    error = refused(lambda: list(items(old).read_all_items()))
    assert error.status_code == 401
    assert said(error, "Unauthorized").startswith(
        "The input authorization token can't serve the request. The wrong key is being used or the expected payload "
        "is not built as per the protocol.")
    assert "Server used the following payload to sign: 'get\ncolls\ndbs/appdb/colls/items\n" in error.message
    assert before.primary_master_key not in error.message
    assert tutorial_query(lab, after.primary_master_key) == ELECTRONICS
    assert tutorial_query(lab, after.secondary_master_key) == ELECTRONICS  # untouched by the primary's renewal

    read_only = CosmosClient(endpoint(lab), credential=after.primary_readonly_master_key)
    assert tutorial_query(lab, after.primary_readonly_master_key) == ELECTRONICS
    assert refused(lambda: items(read_only).create_item({"id": "ro", "category": "x"})).status_code == 401


def test_tokens_the_account_does_not_accept(lab, tmp_path):
    principal = lab.lab.directory.by_client_id(lab.automation()["client_id"])
    issuer = lab.lab.issuer

    def refusal(token: str) -> CosmosHttpResponseError:
        return refused(lambda: CosmosClient(endpoint(lab), credential=StaticToken(token)))

    wrong_audience = refusal(issuer.issue(principal, "https://management.azure.com/")[0])
    assert (wrong_audience.status_code, said(wrong_audience, "Unauthorized").split("\r\n")[0]) == (
        401, f"Request blocked by Auth {ACCOUNT} : Provided AAD token is intended for [https://management.azure.com]. "
             "This database account accepts tokens intended for [https://localhost, https://cosmos.azure.com].")
    expired = refusal(issuer.issue(principal, "https://localhost", lifetime_s=-600)[0])
    assert expired.status_code == 401 and "Provided AAD token has been expired since [" in expired.message
    foreign_paths = LabPaths(tmp_path)
    ca.ensure(foreign_paths)  # another signing key, same issuer URL: a token forged outside the lab's Entra
    forged = Issuer(foreign_paths, lab.tenant, lab.authority).issue(principal, "https://localhost")[0]
    assert refusal(forged).status_code == 401
    missing = refused(lambda: CosmosClient(endpoint(lab), credential=StaticToken("not a token")))
    assert missing.status_code == 401


@pytest.mark.parametrize("audience", ["https://localhost", "https://cosmos.azure.com"])
def test_both_token_paths_issue_both_audiences(lab, mgmt, monkeypatch, audience):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", lab.imds_host("vm-control"))
    # azure-cosmos asks for https://localhost/.default unless told otherwise.
    monkeypatch.setenv("AZURE_COSMOS_AAD_SCOPE_OVERRIDE", f"{audience}/.default")
    secret = lab.automation()
    credentials = {operator_principal(lab): ManagedIdentityCredential(),
                   automation_principal(lab): ClientSecretCredential(lab.tenant, secret["client_id"],
                                                                     secret["client_secret"], authority=lab.authority,
                                                                     disable_instance_discovery=True)}
    granted = [assign(lab, mgmt, principal, READER) for principal in credentials]
    try:
        for credential in credentials.values():
            assert lab.lab.issuer.verify(credential.get_token(f"{audience}/.default").token, audience)
            assert tutorial_query(lab, credential) == ELECTRONICS
    finally:
        for name in granted:
            unassign(mgmt, name)


@pytest.mark.parametrize("method, path, headers, expected", [
    ("GET", "/", {}, Operation("", "", "/", ("readMetadata",), True, True)),
    ("GET", "/dbs/appdb/colls/items/pkranges", {}, Operation(
        "pkranges", "dbs/appdb/colls/items", "dbs/appdb/colls/items", ("readMetadata",), True)),
    ("POST", "/dbs/appdb/colls/items/docs/", {"x-ms-cosmos-is-query-plan-request": "True"}, Operation(
        "docs", "dbs/appdb/colls/items", "dbs/appdb/colls/items", ("sqlDatabases/containers/executeQuery",), True)),
    ("GET", "/dbs/appdb/colls/items/docs/", {"A-IM": "Incremental feed"}, Operation(
        "docs", "dbs/appdb/colls/items", "dbs/appdb/colls/items", ("sqlDatabases/containers/readChangeFeed",), True)),
    ("DELETE", "/dbs/appdb/colls/items/docs/a%20b/", {}, Operation(
        "docs", "dbs/appdb/colls/items/docs/a b", "dbs/appdb/colls/items", ("sqlDatabases/containers/items/delete",),
        False)),
    ("PUT", "/dbs/appdb/colls/items", {}, Operation("colls", "dbs/appdb/colls/items", "dbs/appdb/colls/items", (),
                                                    False)),
    ("GET", "/offers", {}, Operation("offers", "", "/", (), True)),
])
def test_requests_map_to_signature_and_data_actions(method, path, headers, expected):
    assert classify(method, path, headers, b"") == expected


def test_scopes_compare_the_account_case_insensitively_and_names_exactly():
    account = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DocumentDB/databaseAccounts/acct"
    query = classify("POST", "/dbs/appdb/colls/items/docs", {"x-ms-documentdb-isquery": "true"}, b"")

    def missing(scope: str, operation: Operation = query) -> str | None:
        state = {"id": account, "assignments": [{"principalId": "P", "scope": scope,
                                                 "roleDefinitionId": f"{account}/sqlRoleDefinitions/{READER}"}]}
        return missing_action(state, "p", operation)

    assert missing(account.upper()) is None
    assert missing(account.lower() + "/DBS/appdb/Colls/items") is None
    assert missing(account + "/dbs/AppDb") == "sqlDatabases/containers/executeQuery"
    assert missing(account + "x") == "sqlDatabases/containers/executeQuery"  # another account's id
    assert missing(account + "/dbs/other", classify("GET", "/", {}, b"")) is None  # the account read: any scope


def backend_pids(server_pid: int) -> list[int]:
    children = pathlib.Path(f"/proc/{server_pid}/task/{server_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True  # exited; its parent (gone too) leaves the reaping to init
        time.sleep(0.05)
    return False


def test_lab_stop_stops_the_backend(tmp_path):
    paths, ports, topology = LabPaths(tmp_path), Ports.from_base(free_base()), lab_topology()
    ca.ensure(paths)
    labctl.ensure_secrets(paths, topology)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_COMPONENTS", "azure,cosmos")
        running = Lab(paths, topology, ports, hooks=LoggedHooks())
    running.start()
    try:
        pid = running.cosmos.backend.process.pid
        assert pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"server.js"
    finally:
        running.stop()
    assert gone(pid)
    assert not labctl.port_open(ports.cosmos)


def test_labctl_serves_cosmos_and_leaves_no_backend(tmp_path):
    base = free_base()
    env = dict(os.environ, LAB_STATE_DIR=str(tmp_path / "lab"), LAB_PORT_BASE=str(base), LAB_COMPONENTS="azure,cosmos",
               PYTHONPATH=str(REPO_ROOT / "lab"))

    def labctl_run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "azurelab", command], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    cosmos_port = Ports.from_base(base, len(lab_topology()["sql_servers"])).cosmos
    assert labctl_run("up").returncode == 0
    try:
        status = labctl_run("status")
        assert status.returncode == 0 and f"cosmos    up   127.0.0.1:{cosmos_port}" in status.stdout
        exports = (tmp_path / "lab" / "env.sh").read_text()
        assert f"export LAB_COSMOS_ENDPOINT_COSMOS_LAB=https://localhost:{cosmos_port}/\n" in exports
        endpoints = json.loads((tmp_path / "lab" / "endpoints.json").read_text())
        assert endpoints["cosmos"] == {ACCOUNT: f"https://localhost:{cosmos_port}/"}
        server = labctl.server_pid(LabPaths(tmp_path / "lab"))
        backends = backend_pids(server)
        assert len(backends) == 1
    finally:
        labctl_run("down")
    assert gone(backends[0]) and not labctl.port_open(cosmos_port)

    # A server killed outright (no chance to stop its child) still leaves no backend: it exits when its stdin closes.
    assert labctl_run("up").returncode == 0
    try:
        server = labctl.server_pid(LabPaths(tmp_path / "lab"))
        backends = backend_pids(server)
        os.kill(server, signal.SIGKILL)
        assert gone(backends[0])
    finally:
        labctl_run("down")
