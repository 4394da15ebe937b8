"""The lab's Azure control plane, driven by the real clients: azure-identity, azure-mgmt-msi, azure-mgmt-compute and
azure-mgmt-postgresqlflexibleservers (fixtures in conftest.py; no PostgreSQL needed, Entra admin changes go to a
recorder). Run: ``.venv/bin/python -m pytest tests/integration/lab/test_control_plane.py``.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import (ClientSecretCredential, CredentialUnavailableError, DefaultAzureCredential,
                            ManagedIdentityCredential)
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.postgresqlflexibleservers import PostgreSQLManagementClient

from azurelab.arm import ArmState
from azurelab.config import LabPaths
from azurelab.directory import Directory

from conftest import ARM_SCOPE, REPO_ROOT, RecordingHooks, free_base

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

RG_APPS, RG_DATA, PG = "rg-lab-apps", "rg-lab-data", "pg-lab"
DANA = "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"


def with_status(pipeline_response, deserialized, _headers):
    return pipeline_response.http_response.status_code, deserialized


def new_identity(control_plane, name: str | None = None) -> dict:
    msi = control_plane.client(ManagedServiceIdentityClient)
    identity = msi.user_assigned_identities.create_or_update(
        RG_APPS, name or f"id-{uuid.uuid4().hex[:8]}", {"location": "eastus2"})
    return {"id": identity.id, "name": identity.name, "principal_id": identity.principal_id,
            "client_id": identity.client_id}


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_identity_create_reput_get_list_delete(control_plane):
    msi = control_plane.client(ManagedServiceIdentityClient)
    ops = msi.user_assigned_identities
    name = f"id-{uuid.uuid4().hex[:8]}"
    status, created = ops.create_or_update(RG_APPS, name, {"location": "eastus2", "tags": {"app": "a"}},
                                           cls=with_status)
    assert status == 201
    assert created.tenant_id == control_plane.tenant and created.client_id and created.principal_id
    status, again = ops.create_or_update(RG_APPS, name, {"location": "eastus2", "tags": {"app": "b"}},
                                         cls=with_status)
    assert status == 200
    assert (again.principal_id, again.client_id, again.tags) == (created.principal_id, created.client_id, {"app": "b"})
    assert ops.get(RG_APPS, name.upper()).id == created.id  # names compare case-insensitively, as in ARM
    directory = control_plane.lab.directory
    assert directory.by_object_id(created.principal_id)["client_id"] == created.client_id

    extra = [new_identity(control_plane)["name"] for _page in range(5)]  # more than one page (PAGE_SIZE = 5)
    listed = {i.name for i in ops.list_by_resource_group(RG_APPS)}
    assert {name, *extra} <= listed

    ops.delete(RG_APPS, name)
    with pytest.raises(ResourceNotFoundError) as missing:
        ops.get(RG_APPS, name)
    assert missing.value.error.code == "ResourceNotFound"
    assert directory.by_object_id(created.principal_id) is None
    ops.delete(RG_APPS, name)  # deleting what is gone answers 204, which the SDK accepts
    with pytest.raises(ResourceNotFoundError) as no_group:
        ops.create_or_update("rg-missing", name, {"location": "eastus2"})
    assert no_group.value.error.code == "ResourceGroupNotFound"


def test_vm_identity_patch_merges(control_plane):
    compute = control_plane.client(ComputeManagementClient)
    first, second = new_identity(control_plane), new_identity(control_plane)

    def patch(assigned: dict, kind: str = "UserAssigned"):
        body = {"identity": {"type": kind, "userAssignedIdentities": assigned}}
        return compute.virtual_machines.begin_update(RG_APPS, "vm-billing", body).result()

    def attached() -> set[str]:
        vm = compute.virtual_machines.get(RG_APPS, "vm-billing")
        return {key.lower() for key in ((vm.identity and vm.identity.user_assigned_identities) or {})}

    vm = patch({first["id"]: {}})
    assert vm.identity.user_assigned_identities[first["id"]].client_id == first["client_id"]
    patch({second["id"]: {}})
    assert attached() == {first["id"].lower(), second["id"].lower()}  # unlisted keys are kept
    patch({first["id"]: None})
    assert attached() == {second["id"].lower()}  # null removes only that one
    with pytest.raises(HttpResponseError) as unknown:
        patch({first["id"].replace(first["name"], "id-does-not-exist"): {}})
    assert unknown.value.error.code == "FailedIdentityOperation"
    patch({}, kind="None")
    assert attached() == set()


def test_imds_serves_only_attached_identities(control_plane, monkeypatch):
    compute = control_plane.client(ComputeManagementClient)
    mine, other = new_identity(control_plane), new_identity(control_plane)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", control_plane.imds_host("vm-reports"))

    with pytest.raises(CredentialUnavailableError) as refused:
        ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE)
    assert "Identity not found" in str(refused.value)

    compute.virtual_machines.begin_update(RG_APPS, "vm-reports", {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {mine["id"]: {}}}}).result()
    token = ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE).token
    issued = control_plane.lab.issuer.verify(token, "https://management.azure.com/")
    assert issued["oid"] == mine["principal_id"]
    assert (issued["appid"], issued["xms_mirid"]) == (mine["client_id"], mine["id"])
    # DefaultAzureCredential finds the same endpoint; AZURE_CLIENT_ID selects the identity.
    monkeypatch.setenv("AZURE_CLIENT_ID", mine["client_id"])
    token = DefaultAzureCredential(exclude_cli_credential=True, exclude_developer_cli_credential=True,
                                   exclude_powershell_credential=True).get_token(ARM_SCOPE).token
    assert claims(token)["oid"] == mine["principal_id"]
    with pytest.raises(CredentialUnavailableError):
        ManagedIdentityCredential(client_id=other["client_id"]).get_token(ARM_SCOPE)

    compute.virtual_machines.begin_update(RG_APPS, "vm-reports", {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {other["id"]: {}}}}).result()
    with pytest.raises(CredentialUnavailableError) as ambiguous:
        ManagedIdentityCredential().get_token(ARM_SCOPE)
    assert "Multiple user assigned identities exist" in str(ambiguous.value)
    by_resource_id = ManagedIdentityCredential(identity_config={"resource_id": other["id"]}).get_token(ARM_SCOPE)
    assert claims(by_resource_id.token)["oid"] == other["principal_id"]

    request = urllib.request.Request(f"{control_plane.imds_host('vm-reports')}/metadata/identity/oauth2/token"
                                     f"?api-version=2018-02-01&resource=https://management.azure.com/")
    with pytest.raises(urllib.error.HTTPError) as no_header:
        urllib.request.urlopen(request, timeout=5)
    assert no_header.value.code == 400
    assert json.loads(no_header.value.read())["error_description"] == "Required metadata header not specified"


def test_app_service_style_endpoint_needs_the_workload_secret(control_plane, monkeypatch):
    compute = control_plane.client(ComputeManagementClient)
    mine = new_identity(control_plane)
    compute.virtual_machines.begin_update(RG_APPS, "vm-billing", {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {mine["id"]: {}}}}).result()
    endpoint = control_plane.imds_host("vm-billing") + "/msi/token"
    secret = json.loads(control_plane.paths.secrets.read_text())["identity_headers"]["vm-billing"]
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", secret)
    token = ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE)
    assert claims(token.token)["oid"] == mine["principal_id"] and token.expires_on > time.time()

    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    with pytest.raises(Exception) as refused:
        ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE)
    assert "401" in str(refused.value) or "Unauthorized" in str(refused.value)
    other_vm = json.loads(control_plane.paths.secrets.read_text())["identity_headers"]["vm-orders"]
    monkeypatch.setenv("IDENTITY_HEADER", other_vm)  # another workload's secret is not this one's
    with pytest.raises(Exception):
        ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE)


def test_deleted_identity_dangles_on_the_vm_and_gets_no_token(control_plane, monkeypatch):
    compute = control_plane.client(ComputeManagementClient)
    msi = control_plane.client(ManagedServiceIdentityClient)
    gone = new_identity(control_plane)
    compute.virtual_machines.begin_update(RG_APPS, "vm-orders", {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {gone["id"]: {}}}}).result()
    msi.user_assigned_identities.delete(RG_APPS, gone["name"])
    vm = compute.virtual_machines.get(RG_APPS, "vm-orders")
    assert gone["id"].lower() in {k.lower() for k in vm.identity.user_assigned_identities}
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", control_plane.imds_host("vm-orders"))
    with pytest.raises(CredentialUnavailableError):
        ManagedIdentityCredential(client_id=gone["client_id"]).get_token(ARM_SCOPE)
    compute.virtual_machines.begin_update(RG_APPS, "vm-orders", {"identity": {"type": "None"}}).result()


def test_postgres_auth_config_and_admins(control_plane):
    pg = control_plane.client(PostgreSQLManagementClient)
    state, hooks = control_plane.lab.arm, control_plane.hooks

    with pytest.raises(HttpResponseError) as no_entra:
        pg.servers.begin_update(RG_DATA, PG, {"properties": {"authConfig": {"passwordAuth": "Disabled"}}}).result()
    assert no_entra.value.error.code == "InvalidAuthConfig"

    started = time.monotonic()
    server = pg.servers.begin_update(RG_DATA, PG, {"properties": {"authConfig": {
        "activeDirectoryAuth": "Enabled", "tenantId": control_plane.tenant}}}).result()
    assert time.monotonic() - started < 2  # the double's retry-after-ms keeps polling fast
    assert server.properties.auth_config.active_directory_auth == "Enabled"
    assert server.properties.auth_config.password_auth == "Enabled"
    assert state.postgres_auth_config(PG)["activeDirectoryAuth"] == "Enabled"

    with pytest.raises(HttpResponseError) as no_admin:
        pg.servers.begin_update(RG_DATA, PG, {"properties": {"authConfig": {"passwordAuth": "Disabled"}}}).result()
    assert no_admin.value.error.code == "InvalidAuthConfig"
    assert state.postgres_auth_config(PG)["passwordAuth"] == "Enabled"

    admins = pg.administrators_microsoft_entra
    body = {"properties": {"principalType": "User", "principalName": "dana.dba@lab.example",
                           "tenantId": control_plane.tenant}}
    admin = admins.begin_create_or_update(RG_DATA, PG, DANA, body).result()
    assert admin.name == "dana.dba@lab.example" and admin.properties.object_id == DANA
    assert hooks.calls[-1] == ("create", PG, "dana.dba@lab.example", DANA, "User")
    assert admins.get(RG_DATA, PG, DANA).properties.principal_type == "User"
    assert [a.properties.object_id for a in admins.list_by_server(RG_DATA, PG)] == [DANA]

    hooks.fail_next = "Updating an existing principal isn't supported"
    with pytest.raises(HttpResponseError) as refused:
        admins.begin_create_or_update(RG_DATA, PG, str(uuid.uuid4()), body).result()
    assert "Updating an existing principal" in str(refused.value)
    assert len(list(admins.list_by_server(RG_DATA, PG))) == 1

    disabled = pg.servers.begin_update(RG_DATA, PG, {"properties": {"authConfig": {"passwordAuth": "Disabled"}}})
    assert disabled.result().properties.auth_config.password_auth == "Disabled"
    assert state.postgres_auth_config(PG)["passwordAuth"] == "Disabled"
    pg.servers.begin_update(RG_DATA, PG, {"properties": {"authConfig": {"passwordAuth": "Enabled"}}}).result()

    admins.begin_delete(RG_DATA, PG, DANA).result()
    assert hooks.calls[-1] == ("drop", PG, DANA)
    with pytest.raises(ResourceNotFoundError):
        admins.get(RG_DATA, PG, DANA)
    admins.begin_delete(RG_DATA, PG, DANA).result()  # 204 when already gone
    assert hooks.calls[-1] == ("drop", PG, DANA)  # ... and PostgreSQL is not asked twice


class StaticToken:
    def __init__(self, token: str):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, int(time.time()) + 600)


def test_arm_refuses_bad_tokens(control_plane):
    issuer = control_plane.lab.issuer
    dana = control_plane.lab.directory.by_object_id(DANA)
    wrong_audience, _expires_on = issuer.issue(dana, "https://ossrdbms-aad.database.windows.net")
    for token in ("not-a-token", wrong_audience):
        msi = control_plane.client(ManagedServiceIdentityClient, credential=StaticToken(token))
        with pytest.raises(ClientAuthenticationError) as refused:
            msi.user_assigned_identities.get(RG_APPS, "anything")
        assert refused.value.error.code == "InvalidAuthenticationToken"
    right, _expires_on = issuer.issue(dana, ARM_SCOPE)
    msi = control_plane.client(ManagedServiceIdentityClient, credential=StaticToken(right))
    assert list(msi.user_assigned_identities.list_by_resource_group("rg-lab-ops"))[0].name == "mi-operator"


def test_entra_client_secret(control_plane):
    sp = control_plane.automation()
    token = control_plane.operator_credential().get_token(ARM_SCOPE).token
    assert control_plane.lab.issuer.verify(token, ARM_SCOPE)["appid"] == sp["client_id"]
    wrong = ClientSecretCredential(control_plane.tenant, sp["client_id"], "not-the-secret",
                                   authority=control_plane.authority, disable_instance_discovery=True)
    with pytest.raises(ClientAuthenticationError) as refused:
        wrong.get_token(ARM_SCOPE)
    assert "AADSTS7000215" in str(refused.value)


def test_throttling_is_retried_and_counted(control_plane):
    name = f"id-{uuid.uuid4().hex[:8]}"
    control_plane.lab_api("POST", "counters/reset")
    fault = control_plane.lab_api("POST", "faults", {"method": "PUT", "path": f"userAssignedIdentities/{name}$",
                                                     "status": 429, "count": 1, "retry_after": 1})
    assert fault["code"] == "SubscriptionRequestsThrottled"
    started = time.monotonic()
    new_identity(control_plane, name)
    assert time.monotonic() - started >= 1  # the SDK waited for Retry-After, then retried
    counters = control_plane.lab_api("GET", "counters")
    assert (counters["PUT"], counters["writes"], counters["faulted"]) == (2, 2, 1)
    assert control_plane.lab_api("GET", "faults")["value"] == []

    control_plane.lab_api("POST", "faults", {"method": "PATCH", "path": "flexibleServers/pg-lab$", "status": 503,
                                             "count": 1, "retry_after": 0})
    pg = control_plane.client(PostgreSQLManagementClient)
    pg.servers.begin_update(RG_DATA, PG, {"tags": {"owner": "lab"}}).result()
    assert control_plane.lab_api("GET", "counters")["PATCH"] == 2


def test_a_reset_fault_answers_nothing_and_the_sdk_retries(control_plane):
    """``"reset": true`` drops the connection without an HTTP answer (a raw client sees the connection end, not a
    status line); azure-core retries a GET after it, and ``served`` records the request and its retry."""
    import http.client
    import ssl

    identity = new_identity(control_plane)
    control_plane.lab_api("DELETE", "faults")
    path = f"userAssignedIdentities/{identity['name']}$"
    fault = control_plane.lab_api("POST", "faults", {"method": "GET", "path": path, "reset": True, "count": 1})
    assert (fault["reset"], fault["status"], fault["code"]) == (True, None, "ConnectionReset")
    token = control_plane.operator_credential().get_token(ARM_SCOPE).token
    raw = http.client.HTTPSConnection("127.0.0.1", control_plane.ports.arm, timeout=5,
                                      context=ssl.create_default_context(cafile=str(control_plane.paths.ca_bundle)))
    raw.request("GET", identity["id"] + "?api-version=2023-01-31", headers={"Authorization": f"Bearer {token}"})
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        raw.getresponse()
    raw.close()
    served = control_plane.lab_api("GET", "faults")
    assert served["value"] == [] and [(s["method"], s["reset"], s["retried"]) for s in served["served"]] == [
        ("GET", True, False)]

    control_plane.lab_api("POST", "faults", {"method": "GET", "path": path, "reset": True, "count": 2})
    msi = control_plane.client(ManagedServiceIdentityClient)
    assert msi.user_assigned_identities.get(RG_APPS, identity["name"]).principal_id == identity["principal_id"]
    served = control_plane.lab_api("GET", "faults")
    assert served["value"] == [] and [s["retried"] for s in served["served"]] == [True, True, True]
    assert control_plane.lab_api("DELETE", "faults") == {"value": [], "served": []}
    with pytest.raises(urllib.error.HTTPError) as bad:
        control_plane.lab_api("POST", "faults", {"path": path, "reset": True, "count": 0})
    assert bad.value.code == 400


def test_grant_faults_are_set_listed_and_cleared_through_the_lab_api(control_plane):
    fault = control_plane.lab_api("POST", "grant-faults", {"server": PG, "role": "mi-orders-api", "schema": "orders"})
    wanted = {"server": PG, "role": "mi-orders-api", "schema": "orders"}
    assert {k: fault[k] for k in wanted} == wanted
    assert control_plane.lab_api("GET", "grant-faults")["value"] == [fault]
    assert control_plane.lab.arm.grant_faults(PG, "mi-orders-api") == [fault]
    assert control_plane.lab.arm.grant_faults(PG, "mi-reports") == []
    with pytest.raises(urllib.error.HTTPError) as bad:
        control_plane.lab_api("POST", "grant-faults", {"role": "mi-orders-api"})
    assert bad.value.code == 400
    assert control_plane.lab_api("DELETE", "grant-faults") == {"value": []}
    assert control_plane.lab.arm.grant_faults() == []


def test_reads_do_not_move_write_counters(control_plane):
    msi = control_plane.client(ManagedServiceIdentityClient)
    compute = control_plane.client(ComputeManagementClient)
    control_plane.lab_api("POST", "counters/reset")
    msi.user_assigned_identities.get("rg-lab-ops", "mi-operator")
    compute.virtual_machines.get("rg-lab-ops", "vm-control")
    list(msi.user_assigned_identities.list_by_resource_group("rg-lab-ops"))
    counters = control_plane.lab_api("GET", "counters")
    assert counters["GET"] == 3 and counters["writes"] == 0 and counters["total"] == 3


def test_state_survives_a_restart(control_plane):
    kept = new_identity(control_plane)
    reloaded = ArmState(control_plane.paths, control_plane.topology, Directory(control_plane.topology),
                        RecordingHooks())
    assert reloaded.get(RG_APPS, "Microsoft.ManagedIdentity/userAssignedIdentities", kept["name"])["id"] == kept["id"]
    assert reloaded.directory.by_client_id(kept["client_id"])["object_id"] == kept["principal_id"]
    dump = control_plane.lab_api("GET", "state")
    assert "client_secret" not in json.dumps(dump)


def test_a_kept_state_gains_what_a_newer_topology_adds(control_plane, tmp_path):
    """A lab made from an older topology.yml (without vm-ledger) starts with it, and keeps what it had."""
    paths = LabPaths(tmp_path)
    old = json.loads(control_plane.paths.arm_state.read_text())
    dropped = [key for key in old["resources"] if key.endswith("/virtualmachines/vm-ledger")]
    assert dropped, "the topology has a vm-ledger"
    kept = new_identity(control_plane)
    old = json.loads(control_plane.paths.arm_state.read_text())
    for key in dropped:
        del old["resources"][key]
    paths.arm_state.parent.mkdir(parents=True, exist_ok=True)
    paths.arm_state.write_text(json.dumps(old))
    state = ArmState(paths, control_plane.topology, Directory(control_plane.topology), RecordingHooks())
    assert state.get("rg-lab-apps", "Microsoft.Compute/virtualMachines", "vm-ledger")["name"] == "vm-ledger"
    assert state.get(RG_APPS, "Microsoft.ManagedIdentity/userAssignedIdentities", kept["name"])["id"] == kept["id"]
    assert "vm-ledger" in paths.arm_state.read_text()


def test_labctl_up_status_down(tmp_path):
    env = dict(os.environ, LAB_STATE_DIR=str(tmp_path / "lab"), LAB_PORT_BASE=str(free_base()),
               LAB_COMPONENTS="azure", PYTHONPATH=str(REPO_ROOT / "lab"))

    def labctl(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "azurelab", command], env=env, capture_output=True, text=True,
                              timeout=30, check=False)

    assert labctl("up").returncode == 0
    try:
        assert "already running" in labctl("up").stdout
        status = labctl("status")
        assert status.returncode == 0 and "arm       up" in status.stdout
        assert "AZURE_POD_IDENTITY_AUTHORITY_HOST" in labctl("env").stdout
        assert oct((tmp_path / "lab" / "secrets.json").stat().st_mode & 0o777) == "0o600"
        endpoints = json.loads((tmp_path / "lab" / "endpoints.json").read_text())
        assert endpoints["resource_manager"].startswith("https://127.0.0.1:")
    finally:
        labctl("down")
    assert labctl("status").returncode != 0


def test_cloud_metadata_and_own_url_audience(control_plane, monkeypatch):
    """azure.azcollection's custom cloud: ``GET {arm}/metadata/endpoints`` needs no token and names the ARM URL, and a
    token for ``{arm}/.default`` (what its clients ask for) is accepted like one for management.azure.com."""
    context = ssl.create_default_context(cafile=str(control_plane.paths.ca_bundle))
    url = f"{control_plane.arm_url}/metadata/endpoints?api-version=2022-09-01"
    with urllib.request.urlopen(url, context=context, timeout=5) as answer:
        metadata = json.loads(answer.read())
    assert metadata["resourceManager"] == f"{control_plane.arm_url}/"
    assert metadata["authentication"]["loginEndpoint"] == f"{control_plane.authority}/"
    assert f"{control_plane.arm_url}/" in metadata["authentication"]["audiences"]
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", control_plane.imds_host("vm-control"))
    credential = ManagedIdentityCredential()
    client = ComputeManagementClient(credential, control_plane.subscription, base_url=control_plane.arm_url,
                                     credential_scopes=[f"{control_plane.arm_url}/.default"])
    assert client.virtual_machines.get("rg-lab-ops", "vm-control").name == "vm-control"


def arm_request(control_plane, method: str, path: str, body: dict | None = None,
                token: bool = True) -> tuple[int, dict]:
    """One raw ARM request (as azure-cli sends it): status and JSON body."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + control_plane.operator_credential().get_token(ARM_SCOPE).token
    request = urllib.request.Request(f"{control_plane.arm_url}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    context = ssl.create_default_context(cafile=str(control_plane.paths.ca_bundle))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def test_what_azure_cli_reads_and_writes(control_plane):
    """The requests of azure-cli (benchmarks/baseline_az.py) beyond the SDKs': the cloud metadata `az cloud register`
    reads without a token, the capabilities `postgres flexible-server update` validates against, the unset
    `apiProperties` of `cosmosdb update` and the site PUT of `webapp identity assign`."""
    status, metadata = arm_request(control_plane, "GET", "/metadata/endpoints?api-version=2022-09-01", token=False)
    assert status == 200 and metadata["resourceManager"] == f"{control_plane.arm_url}/"
    assert metadata["authentication"]["loginEndpoint"] == f"{control_plane.authority}/"
    assert "https://management.azure.com/" in metadata["authentication"]["audiences"]
    assert metadata["ossrdbmsResourceId"] == "https://ossrdbms-aad.database.windows.net"

    pg = control_plane.client(PostgreSQLManagementClient)
    [capability] = pg.capabilities_by_server.list(RG_DATA, PG)
    assert [e.name for e in capability.supported_server_editions] == ["GeneralPurpose"]
    assert {f.name: f.status for f in capability.supported_features}["OfferRestricted"] == "Disabled"
    assert [v.name for v in capability.supported_server_versions] == ["15"]

    sub = f"/subscriptions/{control_plane.subscription}/resourceGroups"
    cosmos = f"{sub}/{RG_DATA}/providers/Microsoft.DocumentDB/databaseAccounts/cosmos-lab?api-version=2025-10-15"
    status, account = arm_request(control_plane, "PATCH", cosmos, {"properties": {
        "disableLocalAuth": False, "apiProperties": {"serverVersion": None}, "backupPolicy": None}})
    assert status == 200 and account["properties"]["disableLocalAuth"] is False
    status, refused = arm_request(control_plane, "PATCH", cosmos, {"properties": {
        "apiProperties": {"serverVersion": "4.2"}}})
    assert status == 400 and refused["error"]["code"] == "LabNotEmulated"

    site = f"{sub}/{RG_APPS}/providers/Microsoft.Web/sites/app-storefront?api-version=2024-11-01"
    status, before = arm_request(control_plane, "GET", site)
    assert status == 200
    status, after = arm_request(control_plane, "PUT", site, dict(before, tags={"put-by": "azure-cli"}))
    assert status == 200 and after["tags"] == {"put-by": "azure-cli"}
    assert after.get("identity") == before.get("identity")
    arm_request(control_plane, "PUT", site, before)
