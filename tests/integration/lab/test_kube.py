"""The lab's Kubernetes API double (azurelab.kube) with the ``kubernetes`` client over HTTPS: Entra bearer auth,
discovery, CRUD with resourceVersion conflicts, the three patch types, dryRun, selectors, and Jobs run as local
processes with the workload identity webhook's injection (a WorkloadIdentityCredential inside the Job gets an Entra
token for a managed identity through a federated credential on the cluster issuer)."""
from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import jwt
import pytest
from azure.mgmt.msi import ManagedServiceIdentityClient
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from azurelab import aks, ca, kube
from azurelab.directory import automation_principal
from azurelab.web import LabHTTPServer
from labrunner import free_base

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

NS = "app-namespace"
AKS_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"
RG = "rg-aks"


class ClusterOidc:
    """The cluster's OIDC issuer documents over HTTPS (what the ARM double serves once the issuer is on)."""

    def __init__(self, paths, signer: aks.ClusterIssuer):
        port = free_base(1) + 1
        self.url = f"https://localhost:{port}/oidc/test-tenant/test-cluster/"
        documents = {"/oidc/test-tenant/test-cluster/.well-known/openid-configuration": signer.discovery(self.url),
                     "/oidc/test-tenant/test-cluster/openid/v1/jwks": signer.jwks()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the base class's name
                body = json.dumps(documents.get(self.path)).encode()
                self.send_response(404 if self.path not in documents else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = LabHTTPServer(port, Handler, None, ca.server_context(paths))
        self.server.start("cluster-oidc")


class Cluster:
    """A KubeCluster on its own port, with a switchable workload identity add-on and a test issuer."""

    def __init__(self, control_plane):
        self.control_plane = control_plane
        self.workload_identity = True
        topology = control_plane.topology
        self.oidc = ClusterOidc(control_plane.paths, aks.ClusterIssuer(control_plane.paths,
                                                                       topology["aks_clusters"][0]["name"]))
        self.app = kube.KubeCluster(control_plane.paths, topology, topology["aks_clusters"][0],
                                    control_plane.lab.issuer, control_plane.authority, lambda: self.oidc.url,
                                    lambda: self.workload_identity)
        self.port = free_base(1) + 1
        self.server = LabHTTPServer(self.port, kube.KubeHandler, self.app, ca.server_context(control_plane.paths))
        self.server.start("kube-test")

    def api(self, token: str | None = None) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        configuration.host = f"https://localhost:{self.port}"
        configuration.ssl_ca_cert = str(self.control_plane.paths.ca_cert)
        if token is None:
            token = self.control_plane.operator_credential().get_token(AKS_SCOPE).token
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return k8s.ApiClient(configuration)

    def stop(self):
        self.app.shutdown()
        for server in (self.server, self.oidc.server):
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def cluster(control_plane):
    running = Cluster(control_plane)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(cluster):
    return cluster.api()


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


def wait_job(batch: k8s.BatchV1Api, name: str, timeout_s: float = 30.0) -> k8s.V1Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job(name, NS)
        if any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or []):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {name} did not finish")


def job_pod(core: k8s.CoreV1Api, job: str) -> k8s.V1Pod:
    pods = core.list_namespaced_pod(NS, label_selector=f"job-name={job}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def python_job(name: str, script: str, labels: dict | None = None, account: str = "webapp-sa", **spec) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {**spec, "template": {
        "metadata": {"labels": labels or {}},
        "spec": {"serviceAccountName": account, "restartPolicy": "Never", "containers": [
            {"name": "check", "image": "mcr.microsoft.com/azure-cli", "command": ["python", "-c", script]}]}}}}


def test_discovery_and_version(api):
    assert k8s.VersionApi(api).get_code().git_version == "v1.31.2"
    groups = {g.name: g.preferred_version.group_version for g in k8s.ApisApi(api).get_api_versions().groups}
    assert groups == {"apps": "apps/v1", "batch": "batch/v1"}
    core = {r.name: r for r in k8s.CoreV1Api(api).get_api_resources().resources}
    assert {"namespaces", "serviceaccounts", "pods", "pods/log"} <= set(core) and core["pods"].namespaced
    assert not core["namespaces"].namespaced
    assert {r.name for r in k8s.AppsV1Api(api).get_api_resources().resources} >= {"deployments"}
    assert {r.name for r in k8s.BatchV1Api(api).get_api_resources().resources} >= {"jobs"}
    dynamic = DynamicClient(api)  # kubernetes.core's client: discovers everything first
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    assert deployments.get(name="webapp", namespace=NS).spec.replicas == 3


def test_auth_refused_without_a_valid_entra_token_for_the_aks_server_app(cluster, control_plane):
    arm_token = control_plane.operator_credential().get_token("https://management.azure.com/.default").token
    expired, _exp = control_plane.lab.issuer.issue(automation_principal(control_plane.tenant),
                                                   control_plane.topology["audiences"]["aks"], lifetime_s=-600)
    for token in ("", arm_token, expired, "not-a-jwt"):
        with pytest.raises(ApiException) as refused:
            k8s.CoreV1Api(cluster.api(token)).list_namespace()
        assert refused.value.status == 401
        assert status_of(refused.value)["reason"] == "Unauthorized" and status_of(refused.value)["kind"] == "Status"
    assert k8s.VersionApi(cluster.api("")).get_code().major == "1"  # public, like system:public-info-viewer


def test_seeded_objects_and_crud_errors(api):
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system", NS} <= names
    assert {sa.metadata.name for sa in core.list_namespaced_service_account(NS).items} == {"default", "webapp-sa"}
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_service_account("nope", NS)
    assert missing.value.status == 404 and status_of(missing.value)["message"] == 'serviceaccounts "nope" not found'
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_service_account(NS, {"metadata": {"name": "webapp-sa"}})
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"
    bad = {"metadata": {"name": "bad"}, "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
        "metadata": {"labels": {"app": "y"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    with pytest.raises(ApiException) as invalid:
        apps.create_namespaced_deployment(NS, bad)
    body = status_of(invalid.value)
    assert invalid.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.template.metadata.labels"
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_service_account("ghost", {"metadata": {"name": "sa"}})
    assert no_namespace.value.status == 404 and status_of(no_namespace.value)["message"] == 'namespaces "ghost" not found'


def test_replace_with_a_stale_resource_version_conflicts(api):
    core = k8s.CoreV1Api(api)
    created = core.create_namespaced_service_account(NS, {"metadata": {"name": "sa-rv", "labels": {"team": "a"}}})
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.resource_version
    current = core.read_namespaced_service_account("sa-rv", NS)
    current.metadata.labels["team"] = "b"
    updated = core.replace_namespaced_service_account("sa-rv", NS, current)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    current.metadata.labels["team"] = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_service_account("sa-rv", NS, current)
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(stale.value)["message"]
    assert core.read_namespaced_service_account("sa-rv", NS).metadata.labels == {"team": "b"}
    selected = core.list_namespaced_service_account(NS, label_selector="team in (b,z)").items
    assert [sa.metadata.name for sa in selected] == ["sa-rv"]
    assert core.list_namespaced_service_account(NS, label_selector="team!=b,team").items == []


def test_merge_and_json_patches(api):
    core = k8s.CoreV1Api(api)
    core.create_namespaced_service_account(NS, {"metadata": {"name": "sa-patch", "annotations": {"a": "1", "b": "2"}}})
    merged = core.patch_namespaced_service_account("sa-patch", NS, {"metadata": {"annotations": {"a": None, "c": "3"}}},
                                                   _content_type="application/merge-patch+json")
    assert merged.metadata.annotations == {"b": "2", "c": "3"}
    patched = core.patch_namespaced_service_account("sa-patch", NS, [
        {"op": "test", "path": "/metadata/annotations/b", "value": "2"},
        {"op": "add", "path": "/metadata/labels", "value": {"azure.workload.identity/use": "true"}}])
    assert patched.metadata.labels == {"azure.workload.identity/use": "true"}
    with pytest.raises(ApiException) as failed:
        core.patch_namespaced_service_account("sa-patch", NS, [{"op": "test", "path": "/metadata/annotations/b",
                                                                "value": "nope"}])
    assert failed.value.status == 422
    stale = {"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}
    with pytest.raises(ApiException) as conflict:
        core.patch_namespaced_service_account("sa-patch", NS, stale, _content_type="application/merge-patch+json")
    assert conflict.value.status == 409


def test_strategic_merge_patch_of_the_tutorial_deployment(api):
    apps = k8s.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, {**apps.api_client.sanitize_for_serialization(
        apps.read_namespaced_deployment("webapp", NS)), "metadata": {"name": "webapp-copy", "labels": {"app": "webapp"}}})
    before = apps.read_namespaced_deployment("webapp-copy", NS)
    assert before.metadata.generation == 1
    patch = {"metadata": {"annotations": {"note": "x"}}, "spec": {"template": {
        "metadata": {"labels": {"azure.workload.identity/use": "true"},
                     "annotations": {"vault.hashicorp.com/agent-inject": None}},
        "spec": {"containers": [{"name": "webapp", "env": [
            {"name": "DB_PASSWORD_FILE", "$patch": "delete"}, {"name": "AZURE_SQL_AUTH", "value": "workload"}]}]}}}}
    after = apps.patch_namespaced_deployment("webapp-copy", NS, patch)  # the client's default: strategic merge
    container = after.spec.template.spec.containers[0]
    assert container.image == "myregistry.azurecr.io/webapp:latest" and container.ports[0].container_port == 8080
    assert [e.name for e in container.env] == ["DATABASE_HOST", "DATABASE_NAME", "DB_USER", "AZURE_SQL_AUTH"]
    assert after.spec.template.metadata.labels == {"app": "webapp", "azure.workload.identity/use": "true"}
    assert "vault.hashicorp.com/agent-inject" not in after.spec.template.metadata.annotations
    assert "vault.hashicorp.com/role" in after.spec.template.metadata.annotations
    assert after.metadata.generation == 2 and after.status.observed_generation == 2
    again = apps.patch_namespaced_deployment("webapp-copy", NS, patch)
    assert again.metadata.resource_version == after.metadata.resource_version  # nothing changed, nothing written
    meta_only = apps.patch_namespaced_deployment("webapp-copy", NS, {"metadata": {"labels": {"tier": "web"}}})
    assert meta_only.metadata.generation == 2
    replaced = apps.patch_namespaced_deployment("webapp-copy", NS, {"spec": {"template": {"spec": {
        "containers": [{"$patch": "replace"}, {"name": "only", "image": "busybox:1.36"}]}}}})
    assert [c.name for c in replaced.spec.template.spec.containers] == ["only"]


def test_dry_run_changes_nothing(api):
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    shown = core.create_namespaced_service_account(NS, {"metadata": {"name": "sa-dry"}}, dry_run="All")
    assert shown.metadata.name == "sa-dry" and not shown.metadata.resource_version
    with pytest.raises(ApiException):
        core.read_namespaced_service_account("sa-dry", NS)
    before = apps.read_namespaced_deployment("webapp", NS)
    preview = apps.patch_namespaced_deployment("webapp", NS, {"spec": {"replicas": 5}}, dry_run="All")
    assert preview.spec.replicas == 5
    after = apps.read_namespaced_deployment("webapp", NS)
    assert after.spec.replicas == 3 and after.metadata.resource_version == before.metadata.resource_version
    with pytest.raises(ApiException) as wrong:
        apps.patch_namespaced_deployment("webapp", NS, {"spec": {"replicas": 5}}, dry_run="Some")
    assert wrong.value.status == 400


@pytest.fixture(scope="module")
def job_identity(control_plane, cluster, api):
    """mi-kube-job federated with app-namespace/webapp-sa on the cluster issuer; webapp-sa annotated with it."""
    msi = control_plane.client(ManagedServiceIdentityClient)
    identity = msi.user_assigned_identities.create_or_update(RG, "mi-kube-job", {"location": "eastus2"})
    msi.federated_identity_credentials.create_or_update(RG, "mi-kube-job", "webapp", {"properties": {
        "issuer": cluster.oidc.url, "subject": f"system:serviceaccount:{NS}:webapp-sa",
        "audiences": ["api://AzureADTokenExchange"]}})
    k8s.CoreV1Api(api).patch_namespaced_service_account("webapp-sa", NS, {"metadata": {"annotations": {
        "azure.workload.identity/client-id": identity.client_id}}})
    return identity


WHOAMI = """
import base64, json, os
from azure.identity import WorkloadIdentityCredential
token = WorkloadIdentityCredential(disable_instance_discovery=True).get_token("https://management.azure.com/.default")
payload = token.token.split(".")[1]
print("oid", json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["oid"])
print("token file", os.environ["AZURE_FEDERATED_TOKEN_FILE"], oct(os.stat(os.environ["AZURE_FEDERATED_TOKEN_FILE"]).st_mode & 0o777))
"""


def test_job_with_workload_identity_gets_an_entra_token(api, cluster, job_identity, control_plane):
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    batch.create_namespaced_job(NS, python_job("whoami", WHOAMI, {"azure.workload.identity/use": "true"}))
    job = wait_job(batch, "whoami")
    pod = job_pod(core, "whoami")
    log = core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert job.status.succeeded == 1, log
    assert f"oid {job_identity.principal_id}" in log and "0o600" in log
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert job.status.start_time and job.status.completion_time and not job.status.active
    assert pod.status.phase == "Succeeded" and pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert pod.metadata.owner_references[0].uid == job.metadata.uid and pod.metadata.labels["job-name"] == "whoami"
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env == {"AZURE_CLIENT_ID": job_identity.client_id, "AZURE_TENANT_ID": control_plane.tenant,
                   "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
                   "AZURE_AUTHORITY_HOST": control_plane.authority + "/"}
    projected = [v.projected.sources[0].service_account_token for v in pod.spec.volumes if v.projected]
    assert projected[0].audience == "api://AzureADTokenExchange" and projected[0].expiration_seconds == 3600


def test_no_injection_without_the_label_or_without_the_addon(api, cluster, job_identity):
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    script = "import os; print('client', os.environ.get('AZURE_CLIENT_ID'), os.environ.get('AZURE_FEDERATED_TOKEN_FILE'))"
    batch.create_namespaced_job(NS, python_job("nolabel", script))
    assert wait_job(batch, "nolabel").status.succeeded == 1
    pod = job_pod(core, "nolabel")
    assert "client None None" in core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert not pod.spec.containers[0].env and not pod.spec.volumes
    cluster.workload_identity = False
    try:
        batch.create_namespaced_job(NS, python_job("noaddon", script, {"azure.workload.identity/use": "true"}))
        assert wait_job(batch, "noaddon").status.succeeded == 1
        assert "client None None" in core.read_namespaced_pod_log(job_pod(core, "noaddon").metadata.name, NS)
    finally:
        cluster.workload_identity = True


def test_a_failing_job_keeps_its_log_and_a_deadline_kills(api):
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    batch.create_namespaced_job(NS, python_job("fails", "import sys; print('boom'); sys.exit(3)"))
    job = wait_job(batch, "fails")
    assert job.status.failed == 1 and job.status.conditions[-1].type == "Failed"
    assert job.status.conditions[-1].reason == "BackoffLimitExceeded"
    pod = job_pod(core, "fails")
    assert pod.status.phase == "Failed" and pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert core.read_namespaced_pod_log(pod.metadata.name, NS) == "boom\n"
    batch.create_namespaced_job(NS, python_job("slow", "import time; time.sleep(60)", active_deadline_seconds=1))
    slow = wait_job(batch, "slow", timeout_s=10)
    assert slow.status.conditions[-1].reason == "DeadlineExceeded"


def test_job_without_its_service_account_gets_no_pod_and_deletion_propagates(api):
    batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    batch.create_namespaced_job(NS, python_job("orphan-sa", "print(1)", account="missing-sa"))
    time.sleep(0.3)
    assert core.list_namespaced_pod(NS, label_selector="job-name=orphan-sa").items == []
    batch.create_namespaced_job(NS, python_job("sleeper", "import time; time.sleep(60)"))
    pod = job_pod(core, "sleeper")
    assert pod.status.phase == "Running"
    batch.delete_namespaced_job("sleeper", NS, propagation_policy="Background")
    assert core.list_namespaced_pod(NS, label_selector="job-name=sleeper").items == []
    batch.create_namespaced_job(NS, python_job("kept", "print('kept')"))
    wait_job(batch, "kept")
    batch.delete_namespaced_job("kept", NS)  # batch/v1 default: orphan the pods
    kept = job_pod(core, "kept")
    assert not kept.metadata.owner_references
    with pytest.raises(ApiException) as immutable:
        batch.patch_namespaced_job("orphan-sa", NS, {"spec": {"template": {"spec": {"containers": [
            {"name": "check", "args": ["changed"]}]}}}})
    assert immutable.value.status == 422 and "field is immutable" in status_of(immutable.value)["message"]


def test_the_lab_serves_the_first_cluster(control_plane):
    """Wiring: the in-process Lab runs the API server on Ports.kube with the same auth."""
    assert control_plane.lab.kube is not None
    configuration = k8s.Configuration()
    configuration.host = f"https://localhost:{control_plane.ports.kube}"
    configuration.ssl_ca_cert = str(control_plane.paths.ca_cert)
    configuration.api_key = {"BearerToken": control_plane.operator_credential().get_token(AKS_SCOPE).token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    deployment = k8s.AppsV1Api(k8s.ApiClient(configuration)).read_namespaced_deployment("webapp", NS)
    assert deployment.spec.template.spec.service_account_name == "webapp-sa"
    claims = jwt.decode(control_plane.operator_credential().get_token(AKS_SCOPE).token,
                        options={"verify_signature": False})
    assert claims["aud"] == "6dae42f8-4368-4678-94ff-3960e28e3630"
