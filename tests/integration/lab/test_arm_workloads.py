"""The ARM double's workload resources for issue 5: AKS managed clusters (OIDC issuer, workload identity, the issuer's
public documents, user credentials), VM scale sets, App Service apps and Container Apps, and the managed identity
endpoint of each workload kind. Driven by the real azure-mgmt SDKs and azure-identity over the wire (fixtures in
conftest.py: the control plane in-process on free ports)."""
from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.request
import uuid

import jwt
import pytest
import yaml
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import ManagedIdentityCredential, WorkloadIdentityCredential
from azure.mgmt.appcontainers import ContainerAppsAPIClient
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.web import WebSiteManagementClient

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

RG_AKS, CLUSTER = "rg-aks", "aks-prod"
RG_APPS, VMSS, SITE, CONTAINER_APP = "rg-lab-apps", "vmss-workers", "app-storefront", "ca-notifier"
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
ARM_SCOPE = "https://management.azure.com/.default"
SUBJECT = "system:serviceaccount:webapp:webapp-sa"
TOKEN_AUDIENCE = "api://AzureADTokenExchange"


def new_identity(control_plane) -> dict:
    msi = control_plane.client(ManagedServiceIdentityClient)
    identity = msi.user_assigned_identities.create_or_update(RG_APPS, f"id-{uuid.uuid4().hex[:8]}",
                                                             {"location": "eastus2"})
    return {"id": identity.id, "principal_id": identity.principal_id, "client_id": identity.client_id}


def https_get(control_plane, url: str):
    """GET over HTTPS trusting only the lab CA, without any credential; returns (status, JSON body)."""
    context = ssl.create_default_context(cafile=str(control_plane.paths.ca_cert))
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:  # noqa: S310 - https only
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def issuer_id(control_plane) -> str:
    """The cluster's issuer uid, which ARM does not show while the issuer is off (the lab API does)."""
    state = control_plane.lab_api("GET", "state")
    cluster = next(r for r in state["resources"] if r["type"] == "Microsoft.ContainerService/managedClusters")
    return cluster["_lab"]["issuerId"]


def enable_issuer_and_workload_identity(aks):
    """What the collection does: read the cluster, turn both on in that body, PUT it back."""
    cluster = aks.managed_clusters.get(RG_AKS, CLUSTER)
    cluster.oidc_issuer_profile = {"enabled": True}
    cluster.security_profile = {"workloadIdentity": {"enabled": True}}
    return aks.managed_clusters.begin_create_or_update(RG_AKS, CLUSTER, cluster).result()


@pytest.fixture(scope="module")
def aks(control_plane):
    return control_plane.client(ContainerServiceClient)


def test_aks_issuer_and_workload_identity(control_plane, aks):
    before = aks.managed_clusters.get(RG_AKS, CLUSTER)
    assert before.oidc_issuer_profile.enabled is False and before.oidc_issuer_profile.issuer_url is None
    assert not (before.security_profile.workload_identity or {})
    assert before.aad_profile.managed and before.aad_profile.enable_azure_rbac
    assert before.aad_profile.tenant_id == control_plane.tenant and before.fqdn == "localhost"
    assert before.kubernetes_version == "1.31.2" and before.identity_profile["kubeletidentity"].client_id
    uid = issuer_id(control_plane)
    off_url = f"https://localhost:{control_plane.ports.arm}/oidc/{control_plane.tenant}/{uid}/"
    assert https_get(control_plane, off_url + ".well-known/openid-configuration")[0] == 404  # issuer off

    before.security_profile = {"workloadIdentity": {"enabled": True}}
    with pytest.raises(HttpResponseError) as no_issuer:
        aks.managed_clusters.begin_create_or_update(RG_AKS, CLUSTER, before).result()
    assert no_issuer.value.status_code == 400 and no_issuer.value.error.code == "OIDCIssuerRequiredForWorkloadIdentity"
    assert not (aks.managed_clusters.get(RG_AKS, CLUSTER).security_profile.workload_identity or {})
    assert control_plane.lab_api("GET", f"aks/{CLUSTER}")["apiServerRestarts"] == 0

    after = enable_issuer_and_workload_identity(aks)
    assert after.oidc_issuer_profile.enabled and after.security_profile.workload_identity.enabled
    assert after.oidc_issuer_profile.issuer_url == off_url  # trailing slash, like AKS's
    assert re.fullmatch(r"https://localhost:\d+/oidc/[0-9a-f-]{36}/[0-9a-f-]{36}/", after.oidc_issuer_profile.issuer_url)
    assert after.provisioning_state == "Succeeded"  # the SDK's final GET, after polling the operation
    assert control_plane.lab.arm.aks_cluster(CLUSTER)["properties"]["oidcIssuerProfile"]["issuerURL"] == off_url
    restarts = control_plane.lab_api("GET", f"aks/{CLUSTER}")
    assert restarts["apiServerRestarts"] == 1 and restarts["lastRestart"]["reason"] == "OIDC issuer enabled"

    again = aks.managed_clusters.begin_create_or_update(RG_AKS, CLUSTER, aks.managed_clusters.get(RG_AKS, CLUSTER))
    assert again.result().oidc_issuer_profile.issuer_url == off_url  # same body: nothing changes, no restart
    assert control_plane.lab_api("GET", f"aks/{CLUSTER}")["apiServerRestarts"] == 1

    disable = aks.managed_clusters.get(RG_AKS, CLUSTER)
    disable.oidc_issuer_profile = {"enabled": False}
    with pytest.raises(HttpResponseError) as refused:
        aks.managed_clusters.begin_create_or_update(RG_AKS, CLUSTER, disable).result()
    assert refused.value.error.code == "OIDCIssuerFeatureCannotBeDisabled"
    assert refused.value.error.message == "OIDC issuer feature cannot be disabled."
    assert aks.managed_clusters.get(RG_AKS, CLUSTER).oidc_issuer_profile.enabled is True

    disable_wi = aks.managed_clusters.get(RG_AKS, CLUSTER)
    disable_wi.security_profile = {"workloadIdentity": {"enabled": False}}  # allowed, issuer stays on
    assert aks.managed_clusters.begin_create_or_update(RG_AKS, CLUSTER, disable_wi).result() \
        .security_profile.workload_identity.enabled is False
    enable_issuer_and_workload_identity(aks)


def test_aks_issuer_documents_are_public_and_trusted_by_entra(control_plane, aks, tmp_path):
    url = enable_issuer_and_workload_identity(aks).oidc_issuer_profile.issuer_url
    status, discovery = https_get(control_plane, url + ".well-known/openid-configuration")
    assert status == 200 and discovery["issuer"] == url and discovery["jwks_uri"] == url + "openid/v1/jwks"
    status, jwks = https_get(control_plane, discovery["jwks_uri"])
    assert status == 200 and [k["kty"] for k in jwks["keys"]] == ["RSA"]
    signer = control_plane.lab.arm.cluster_issuer(CLUSTER)
    assertion = signer.service_account_token(url, "webapp", "webapp-sa")
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(assertion)["kid"]]
    assert jwt.decode(assertion, key.key, algorithms=["RS256"], audience=TOKEN_AUDIENCE, issuer=url)["sub"] == SUBJECT
    assert https_get(control_plane, url.replace(url.split("/")[-2], str(uuid.uuid4())) + "openid/v1/jwks")[0] == 404

    # Entra fetches the same documents to check a pod's token against a federated credential naming this issuer.
    msi = control_plane.client(ManagedServiceIdentityClient)
    identity = msi.user_assigned_identities.create_or_update(RG_APPS, "mi-aks-webapp", {"location": "eastus2"})
    msi.federated_identity_credentials.create_or_update(RG_APPS, "mi-aks-webapp", "webapp-sa", {"properties": {
        "issuer": url, "subject": SUBJECT, "audiences": [TOKEN_AUDIENCE]}})
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(assertion)
    credential = WorkloadIdentityCredential(tenant_id=control_plane.tenant, client_id=identity.client_id,
                                            token_file_path=str(token_file), authority=control_plane.authority,
                                            disable_instance_discovery=True)
    token = credential.get_token(ARM_SCOPE)
    assert jwt.decode(token.token, options={"verify_signature": False})["oid"] == identity.principal_id


def test_aks_user_credentials_are_a_kubelogin_kubeconfig(control_plane, aks):
    result = aks.managed_clusters.list_cluster_user_credentials(RG_AKS, CLUSTER)
    assert [k.name for k in result.kubeconfigs] == ["clusterUser"]
    value = result.kubeconfigs[0].value
    kubeconfig = yaml.safe_load(value if isinstance(value, (bytes, bytearray)) else base64.b64decode(value))
    cluster = kubeconfig["clusters"][0]["cluster"]
    assert cluster["server"] == f"https://localhost:{control_plane.ports.kube}"
    assert base64.b64decode(cluster["certificate-authority-data"]) == control_plane.paths.ca_cert.read_bytes()
    user = kubeconfig["users"][0]["user"]
    assert set(user) == {"exec"}  # no token, password or client certificate: nothing secret
    args = user["exec"]["args"]
    assert user["exec"]["command"] == "kubelogin" and args[0] == "get-token"
    assert args[args.index("--server-id") + 1] == AKS_SERVER_ID
    assert args[args.index("--tenant-id") + 1] == control_plane.tenant
    assert kubeconfig["current-context"] == CLUSTER
    with pytest.raises(HttpResponseError) as azure_format:
        aks.managed_clusters.list_cluster_user_credentials(RG_AKS, CLUSTER, format="azure")
    assert azure_format.value.status_code == 400


def test_aks_patch_changes_tags_only_and_unknown_changes_are_refused(control_plane, aks):
    tagged = aks.managed_clusters.begin_update_tags(RG_AKS, CLUSTER, {"tags": {"team": "web"}}).result()
    assert tagged.tags == {"team": "web"} and aks.managed_clusters.get(RG_AKS, CLUSTER).tags == {"team": "web"}
    upgrade = aks.managed_clusters.get(RG_AKS, CLUSTER)
    upgrade.kubernetes_version = "1.32.0"
    with pytest.raises(HttpResponseError) as refused:
        aks.managed_clusters.begin_create_or_update(RG_AKS, CLUSTER, upgrade).result()
    assert refused.value.error.code == "LabNotEmulated"
    assert aks.managed_clusters.get(RG_AKS, CLUSTER).kubernetes_version == "1.31.2"
    with pytest.raises(HttpResponseError) as create:
        aks.managed_clusters.begin_create_or_update(RG_AKS, "aks-new", {"location": "eastus2"}).result()
    assert create.value.error.code == "LabNotEmulated"


def test_vmss_identity_patch_merges_like_a_vm(control_plane):
    compute = control_plane.client(ComputeManagementClient)
    first, second = new_identity(control_plane), new_identity(control_plane)
    patch = compute.virtual_machine_scale_sets.begin_update
    patch(RG_APPS, VMSS, {"identity": {"type": "UserAssigned", "userAssignedIdentities": {first["id"]: {}}}}).result()
    merged = patch(RG_APPS, VMSS, {"identity": {"type": "UserAssigned",
                                                "userAssignedIdentities": {second["id"]: {}}}}).result()
    assert {k.lower() for k in merged.identity.user_assigned_identities} == {first["id"].lower(), second["id"].lower()}
    removed = patch(RG_APPS, VMSS, {"identity": {"type": "UserAssigned",
                                                 "userAssignedIdentities": {first["id"]: None}}}).result()
    assert [k.lower() for k in removed.identity.user_assigned_identities] == [second["id"].lower()]
    attached = control_plane.lab.arm.workload_user_assigned_identities("vmss", VMSS)
    assert [v["clientId"] for v in attached.values()] == [second["client_id"]]
    patch(RG_APPS, VMSS, {"identity": {"type": "None"}}).result()
    assert compute.virtual_machine_scale_sets.get(RG_APPS, VMSS).identity is None
    assert control_plane.lab.arm.workload_user_assigned_identities("vmss", VMSS) == {}


def test_site_identity_patch_replaces_the_whole_map(control_plane):
    web = control_plane.client(WebSiteManagementClient)
    first, second = new_identity(control_plane), new_identity(control_plane)
    web.web_apps.update(RG_APPS, SITE, {"identity": {"type": "UserAssigned",
                                                     "userAssignedIdentities": {first["id"]: {}}}})
    replaced = web.web_apps.update(RG_APPS, SITE, {"identity": {"type": "UserAssigned",
                                                                "userAssignedIdentities": {second["id"]: {}}}})
    assert [k.lower() for k in replaced.identity.user_assigned_identities] == [second["id"].lower()]  # first is gone
    both = web.web_apps.update(RG_APPS, SITE, {"identity": {"type": "UserAssigned", "userAssignedIdentities": {
        first["id"]: {}, second["id"]: {}}}})
    assert len(both.identity.user_assigned_identities) == 2
    assert web.web_apps.get(RG_APPS, SITE).identity.user_assigned_identities[second["id"]].client_id == \
        second["client_id"]
    tags_only = web.web_apps.update(RG_APPS, SITE, {"tags": {"app": "storefront"}})  # no identity: kept
    assert len(tags_only.identity.user_assigned_identities) == 2 and tags_only.tags == {"app": "storefront"}
    web.web_apps.update(RG_APPS, SITE, {"identity": {"type": "None"}})
    assert control_plane.lab.arm.workload_user_assigned_identities("sites", SITE) == {}
    with pytest.raises(HttpResponseError) as missing:
        web.web_apps.update(RG_APPS, SITE, {"identity": {"type": "UserAssigned", "userAssignedIdentities": {
            first["id"] + "-gone": {}}}})
    assert missing.value.status_code == 400 and missing.value.error.code == "FailedIdentityOperation"


def test_site_app_settings_put_replaces_the_set(control_plane):
    web = control_plane.client(WebSiteManagementClient)
    assert web.web_apps.list_application_settings(RG_APPS, SITE).properties == {"PGUSER": "mi-storefront"}  # seeded
    web.web_apps.update_application_settings(RG_APPS, SITE, {"properties": {"AZURE_CLIENT_ID": "a", "MODE": "vault"}})
    web.web_apps.update_application_settings(RG_APPS, SITE, {"properties": {"MODE": "identity"}})
    assert web.web_apps.list_application_settings(RG_APPS, SITE).properties == {"MODE": "identity"}
    assert control_plane.lab.arm.site_app_settings(SITE) == {"MODE": "identity"}
    web.web_apps.update_application_settings(RG_APPS, SITE, {"properties": {}})
    assert control_plane.lab.arm.site_app_settings(SITE) == {}


def test_container_app_patch_is_long_running_and_replaces_identities(control_plane):
    apps = control_plane.client(ContainerAppsAPIClient)
    first, second = new_identity(control_plane), new_identity(control_plane)
    current = apps.container_apps.get(RG_APPS, CONTAINER_APP)
    revision = current.latest_revision_name
    container = dict(current.template.containers[0])
    container["env"] = [{"name": "AZURE_CLIENT_ID", "value": first["client_id"]},
                        {"name": "DB_PASSWORD", "secretRef": "db-password"}]
    poller = apps.container_apps.begin_update(RG_APPS, CONTAINER_APP, {
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {first["id"]: {}}},
        "properties": {"template": {"containers": [container]}}})
    updated = poller.result()
    assert updated.identity.user_assigned_identities[first["id"]].principal_id == first["principal_id"]
    assert updated.latest_revision_name != revision  # a template change makes a revision
    assert control_plane.lab.arm.container_app_env(CONTAINER_APP) == {"AZURE_CLIENT_ID": first["client_id"]}
    replaced = apps.container_apps.begin_update(RG_APPS, CONTAINER_APP, {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {second["id"]: {}}}}).result()
    assert [k.lower() for k in replaced.identity.user_assigned_identities] == [second["id"].lower()]
    assert replaced.latest_revision_name == updated.latest_revision_name  # identity only: same revision
    with pytest.raises(HttpResponseError) as no_image:
        apps.container_apps.begin_update(RG_APPS, CONTAINER_APP, {"properties": {"template": {
            "containers": [{"name": CONTAINER_APP, "env": []}]}}}).result()
    assert no_image.value.status_code == 400
    assert control_plane.lab.arm.container_app_env(CONTAINER_APP) == {"AZURE_CLIENT_ID": first["client_id"]}
    apps.container_apps.begin_update(RG_APPS, CONTAINER_APP, {"identity": {"type": "None"}}).result()


@pytest.mark.parametrize("kind, name, attach", [
    ("sites", SITE, lambda cp, body: cp.client(WebSiteManagementClient).web_apps.update(RG_APPS, SITE, body)),
    ("containerapps", CONTAINER_APP, lambda cp, body: cp.client(ContainerAppsAPIClient).container_apps.begin_update(
        RG_APPS, CONTAINER_APP, body).result()),
])
def test_app_service_style_endpoint_per_workload(control_plane, monkeypatch, kind, name, attach):
    first, second = new_identity(control_plane), new_identity(control_plane)
    secrets = json.loads(control_plane.paths.secrets.read_text())["identity_headers"]
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{control_plane.ports.identity}/{kind}/{name}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", secrets[f"{kind}/{name}"])
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token(ARM_SCOPE)  # nothing attached yet
    attach(control_plane, {"identity": {"type": "UserAssigned", "userAssignedIdentities": {first["id"]: {}}}})
    token = ManagedIdentityCredential().get_token(ARM_SCOPE)  # the only one: no selector needed
    assert jwt.decode(token.token, options={"verify_signature": False})["oid"] == first["principal_id"]

    attach(control_plane, {"identity": {"type": "UserAssigned", "userAssignedIdentities": {
        first["id"]: {}, second["id"]: {}}}})
    with pytest.raises(ClientAuthenticationError) as no_default:
        ManagedIdentityCredential().get_token(ARM_SCOPE)
    assert "No default identity" in str(no_default.value)
    token = ManagedIdentityCredential(client_id=second["client_id"]).get_token(ARM_SCOPE)
    assert jwt.decode(token.token, options={"verify_signature": False})["oid"] == second["principal_id"]

    monkeypatch.setenv("IDENTITY_HEADER", secrets["vm-orders"])  # another workload's secret
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=second["client_id"]).get_token(ARM_SCOPE)
    monkeypatch.setenv("IDENTITY_HEADER", secrets[f"{kind}/{name}"])
    attach(control_plane, {"identity": {"type": "UserAssigned", "userAssignedIdentities": {first["id"]: {}}}})
    with pytest.raises(ClientAuthenticationError):  # detached: no token for it any more
        ManagedIdentityCredential(client_id=second["client_id"]).get_token(ARM_SCOPE)
    attach(control_plane, {"identity": {"type": "None"}})
    imds = urllib.request.Request(f"http://127.0.0.1:{control_plane.ports.identity}/{kind}/{name}/metadata/identity/"
                                  f"oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
                                  headers={"Metadata": "true"})
    with pytest.raises(urllib.error.HTTPError) as no_imds:  # App Service and Container Apps have no IMDS
        urllib.request.urlopen(imds, timeout=5)
    assert no_imds.value.code == 404


def test_imds_endpoint_of_a_scale_set(control_plane, monkeypatch):
    compute = control_plane.client(ComputeManagementClient)
    mine = new_identity(control_plane)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{control_plane.ports.identity}/vmss/{VMSS}")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE)
    compute.virtual_machine_scale_sets.begin_update(RG_APPS, VMSS, {"identity": {
        "type": "UserAssigned", "userAssignedIdentities": {mine["id"]: {}}}}).result()
    token = ManagedIdentityCredential(client_id=mine["client_id"]).get_token(ARM_SCOPE)
    assert jwt.decode(token.token, options={"verify_signature": False})["oid"] == mine["principal_id"]
    compute.virtual_machine_scale_sets.begin_update(RG_APPS, VMSS, {"identity": {"type": "None"}}).result()


def test_identity_headers_keep_the_vms_keys_and_add_the_other_workloads(control_plane, tmp_path):
    from azurelab import labctl  # pylint: disable=import-outside-toplevel
    from azurelab.config import LabPaths  # pylint: disable=import-outside-toplevel
    paths = LabPaths(tmp_path)
    old = json.loads(control_plane.paths.secrets.read_text())
    old["identity_headers"] = {vm["name"]: f"kept-{vm['name']}" for vm in control_plane.topology["virtual_machines"]}
    tmp_path.joinpath("secrets.json").write_text(json.dumps(old))  # a lab made before scale sets and apps existed
    labctl.ensure_secrets(paths, control_plane.topology)
    headers = json.loads(paths.secrets.read_text())["identity_headers"]
    assert all(headers[vm] == f"kept-{vm}" for vm in old["identity_headers"])
    added = {key for key in headers if key not in old["identity_headers"]}
    assert added == {f"vmss/{VMSS}", f"sites/{SITE}", f"containerapps/{CONTAINER_APP}"}
    assert len({headers[key] for key in added}) == 3 and (paths.secrets.stat().st_mode & 0o777) == 0o600
