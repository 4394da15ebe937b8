"""k8s_workload_identity and k8s_login_check against the lab's Kubernetes API server double, one module call at a
time, reaching the cluster as the modules do (ARM listClusterUserCredential + an Entra token of their own).

What they wrote is read back independently with the ``kubernetes`` client as the lab's automation service principal,
as raw JSON (every field the server holds, not only those the client's models know). A list's
``metadata.resourceVersion`` is the store's latest revision (etcd's on a real cluster): when it has not moved, nothing
was written anywhere in the cluster.
"""
from __future__ import annotations

import copy
import json
import ssl
import urllib.request
import uuid

import pytest
import yaml

from labrunner import COLLECTIONS, REPO, kube_client, run_module

RG_AKS, CLUSTER, NAMESPACE = "rg-aks", "aks-prod", "app-namespace"
RG_APPS = "rg-lab-apps"
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
USE_LABEL = "azure.workload.identity/use"
SEEDED_DEPLOYMENT = REPO / "lab" / "k8s" / "webapp" / "deployment.yaml"
VAULT_ANNOTATIONS = ["vault.hashicorp.com/agent-inject", "vault.hashicorp.com/agent-inject-secret-db",
                     "vault.hashicorp.com/agent-inject-template-db", "vault.hashicorp.com/role"]


@pytest.fixture(scope="module")
def kube(lab):
    """A ``kubernetes`` ApiClient for the lab's API server, signed in as the automation service principal."""
    with kube_client(lab) as client:
        yield client


def core(kube):
    import kubernetes

    return kubernetes.client.CoreV1Api(kube)


def apps(kube):
    import kubernetes

    return kubernetes.client.AppsV1Api(kube)


def read(kube, kind: str, name: str) -> dict | None:
    """The object as the API server's JSON, or None when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    reader = {"ServiceAccount": core(kube).read_namespaced_service_account,
              "Deployment": apps(kube).read_namespaced_deployment}[kind]
    try:
        return json.loads(reader(name, NAMESPACE, _preload_content=False).data)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def revision(kube) -> str:
    """The cluster's latest revision (see the module docstring)."""
    return json.loads(core(kube).list_namespaced_service_account(NAMESPACE, _preload_content=False).data)[
        "metadata"]["resourceVersion"]


def jobs(kube) -> list[str]:
    import kubernetes

    answer = kubernetes.client.BatchV1Api(kube).list_namespaced_job(NAMESPACE, _preload_content=False)
    return [job["metadata"]["name"] for job in json.loads(answer.data)["items"]]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_deployment(kube, name: str, service_account: str, pod_annotations: dict | None = None) -> dict:
    """A copy of the seeded tutorial Deployment (Vault Agent annotations, DB_USER / DB_PASSWORD_FILE env) under
    ``name``, running as ``service_account``."""
    body = yaml.safe_load(SEEDED_DEPLOYMENT.read_text())
    body["metadata"]["name"] = name
    body["spec"]["template"]["spec"]["serviceAccountName"] = service_account
    body["spec"]["template"]["metadata"]["annotations"].update(pod_annotations or {})
    apps(kube).create_namespaced_deployment(NAMESPACE, body)
    return read(kube, "Deployment", name)


def mark(lab, check=False, namespace=NAMESPACE, **args) -> dict:
    return run_module(lab, "k8s_workload_identity", check=check, cluster_name=CLUSTER,
                      cluster_resource_group=RG_AKS, namespace=namespace, **args)


def without(obj: dict, *paths: tuple) -> dict:
    """``obj`` less the keys at ``paths`` (tuples of keys) and the server's bookkeeping (resourceVersion, generation,
    the Deployment's observedGeneration); a label or annotation map left empty by the removal goes too."""
    obj = copy.deepcopy(obj)
    for path in paths + (("metadata", "resourceVersion"), ("metadata", "generation"), ("status", "observedGeneration")):
        nodes = [obj]
        for key in path[:-1]:
            nodes.append(nodes[-1].get(key) or {})
        nodes[-1].pop(path[-1], None)
        if len(nodes) > 2 and not nodes[-1]:
            nodes[-2].pop(path[-2], None)
    return obj


def test_tutorial_part4_marks_exactly_the_annotation_and_the_labels(lab, kube):
    client_id = str(uuid.uuid4())
    sa_before, deployment_before = read(kube, "ServiceAccount", "webapp-sa"), read(kube, "Deployment", "webapp")
    args = dict(service_account="webapp-sa", identity_client_id=client_id, deployment="webapp")
    before = revision(kube)

    plan = mark(lab, check=True, **args)
    assert not plan["failed"] and plan["changed"], plan
    assert plan["diff"]["before"]["service_account"] == {"annotations": {}, "labels": {}}
    assert plan["diff"]["after"]["service_account"] == {"annotations": {CLIENT_ID_ANNOTATION: client_id},
                                                        "labels": {USE_LABEL: "true"}}
    assert plan["diff"]["before"]["deployment"]["pod_labels"] == {"app": "webapp"}
    assert plan["diff"]["after"]["deployment"]["pod_labels"] == {"app": "webapp", USE_LABEL: "true"}
    assert revision(kube) == before
    assert read(kube, "ServiceAccount", "webapp-sa") == sa_before
    assert read(kube, "Deployment", "webapp") == deployment_before

    done = mark(lab, **args)
    assert not done["failed"] and done["changed"], done
    sa, deployment = read(kube, "ServiceAccount", "webapp-sa"), read(kube, "Deployment", "webapp")
    assert sa["metadata"]["annotations"] == {CLIENT_ID_ANNOTATION: client_id}
    assert sa["metadata"]["labels"] == {USE_LABEL: "true"}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "webapp", USE_LABEL: "true"}
    assert deployment["metadata"]["generation"] == deployment_before["metadata"]["generation"] + 1  # a rollout
    sa_keys = (("metadata", "annotations", CLIENT_ID_ANNOTATION), ("metadata", "labels", USE_LABEL))
    assert without(sa, *sa_keys) == without(sa_before, *sa_keys)
    pod_label = ("spec", "template", "metadata", "labels", USE_LABEL)
    assert without(deployment, pod_label) == without(deployment_before, pod_label)

    written = revision(kube)
    again = mark(lab, **args)
    assert not again["failed"] and not again["changed"], again
    assert revision(kube) == written
    assert read(kube, "ServiceAccount", "webapp-sa")["metadata"]["resourceVersion"] == sa["metadata"]["resourceVersion"]
    assert read(kube, "Deployment", "webapp")["metadata"]["resourceVersion"] == \
        deployment["metadata"]["resourceVersion"]


def test_vault_agent_left_is_warned_about_then_removed_keeping_the_rest(lab, kube):
    name, account = unique("webapp-vault"), unique("vault-sa")
    create_deployment(kube, name, account, pod_annotations={"prometheus.io/scrape": "true"})
    args = dict(service_account=account, identity_client_id=str(uuid.uuid4()), deployment=name)

    warned = mark(lab, **args)
    assert not warned["failed"] and warned["changed"], warned
    assert warned["vault_agent_annotations"] == VAULT_ANNOTATIONS
    assert warned["secret_like_env"] == ["DB_PASSWORD_FILE"]
    warnings = json.dumps(warned.get("warnings", []))
    assert "vault.hashicorp.com/agent-inject" in warnings and "remove_vault_agent" in warnings, warnings
    assert "DB_PASSWORD_FILE" in warnings and "remove_env" in warnings, warnings
    template = read(kube, "Deployment", name)["spec"]["template"]
    assert sorted(k for k in template["metadata"]["annotations"] if k.startswith("vault.")) == VAULT_ANNOTATIONS

    switch = dict(args, remove_env=["DB_USER", "DB_PASSWORD_FILE"], remove_vault_agent=True)
    switched = mark(lab, **switch)
    assert not switched["failed"] and switched["changed"], switched
    assert switched["deployment"]["removed_env"] == ["DB_PASSWORD_FILE", "DB_USER"]
    assert switched["deployment"]["removed_annotations"] == VAULT_ANNOTATIONS
    assert switched["vault_agent_annotations"] == [] and switched["secret_like_env"] == []
    assert "vault.hashicorp.com" not in json.dumps(switched.get("warnings", []))
    template = read(kube, "Deployment", name)["spec"]["template"]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert template["metadata"]["labels"] == {"app": "webapp", USE_LABEL: "true"}
    assert template["spec"]["containers"][0]["env"] == [
        {"name": "DATABASE_HOST", "value": "sql-prod.database.windows.net"}, {"name": "DATABASE_NAME", "value": "appdb"}]

    written = revision(kube)
    again = mark(lab, **switch)
    assert not again["failed"] and not again["changed"] and again["deployment"]["removed_env"] == [], again
    assert revision(kube) == written


def test_a_deployment_running_as_another_account_or_missing_is_refused_without_a_write(lab, kube):
    name, account = unique("webapp-other"), unique("new-sa")
    create_deployment(kube, name, "other-sa")
    before = revision(kube)
    refused = mark(lab, service_account=account, identity_client_id=str(uuid.uuid4()), deployment=name)
    assert refused["failed"] and "runs as service account 'other-sa'" in refused["msg"], refused
    assert "serviceAccountName" in refused["msg"]
    missing = mark(lab, service_account=account, identity_client_id=str(uuid.uuid4()), deployment=unique("nowhere"))
    assert missing["failed"] and "does not exist" in missing["msg"], missing
    assert revision(kube) == before and read(kube, "ServiceAccount", account) is None
    assert USE_LABEL not in read(kube, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("args, complaint", [
    ({"namespace": "App-Namespace"}, "namespace"),
    ({"namespace": "app-namespace;kubectl"}, "namespace"),
    ({"service_account": 'webapp"sa'}, "service_account"),
    ({"service_account": "wébapp-sa"}, "service_account"),
    ({"deployment": "webapp/../x"}, "deployment"),
    ({"identity_client_id": "not-a-guid"}, "identity_client_id"),
    ({"remove_env": ["DB_USER=x"]}, "remove_env"),
    ({"create_service_account": False, "service_account": "no-such-sa"}, "create_service_account is false"),
])
def test_hostile_or_impossible_input_is_refused_without_a_write(lab, kube, args, complaint):
    before = revision(kube)
    refused = mark(lab, **dict(dict(service_account="webapp-sa", identity_client_id=str(uuid.uuid4())), **args))
    assert refused["failed"] and complaint in refused["msg"], refused
    assert revision(kube) == before


def conflicts(lab, path: str) -> int:
    """PUTs of ``path`` the API server answered 409 Conflict (from the lab's request log: method, path, status)."""
    return (lab.state / "logs" / "server.log").read_text().count(f"KubeHandler PUT {path} 409")


def concurrent_writer(lab, path: str, label: str) -> None:
    """Make another writer add ``label`` to the object at ``path`` just before the module's next PUT of it (the lab
    double's fault switch), so that the module's PUT carries a stale resourceVersion."""
    context = ssl.create_default_context(cafile=str(lab.state / "tls" / "ca.pem"))
    request = urllib.request.Request(f"{lab.env['LAB_KUBE_SERVER']}/lab/concurrent-writes", method="POST",
                                     data=json.dumps({"path": path, "labels": {label: "x"}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=10):  # noqa: S310 - https only
        pass


def test_a_concurrent_writer_makes_conflicts_that_are_retried_and_its_labels_survive(lab, kube):
    name, account = unique("webapp-busy"), unique("busy-sa")
    core(kube).create_namespaced_service_account(NAMESPACE, {"metadata": {"name": account}})
    create_deployment(kube, name, account)
    paths = {("ServiceAccount", account): f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{account}",
             ("Deployment", name): f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"}
    client_id = str(uuid.uuid4())
    for run, state in enumerate(("present", "absent")):
        before = {path: conflicts(lab, path) for path in paths.values()}
        for path in paths.values():
            concurrent_writer(lab, path, f"example.com/other-writer-{run}")
        result = mark(lab, service_account=account, identity_client_id=client_id, deployment=name, state=state)
        assert not result["failed"] and result["changed"], result
        assert all(conflicts(lab, path) == before[path] + 1 for path in paths.values()), "no stale write was refused"
        sa, deployment = read(kube, "ServiceAccount", account), read(kube, "Deployment", name)
        present = state == "present"
        assert (sa["metadata"].get("annotations") or {}).get(CLIENT_ID_ANNOTATION) == (client_id if present else None)
        assert (sa["metadata"]["labels"].get(USE_LABEL) == "true") is present
        assert (deployment["spec"]["template"]["metadata"]["labels"].get(USE_LABEL) == "true") is present
        for kind, object_name in paths:  # the module re-read after the conflict: the other writer's labels survive
            labels = read(kube, kind, object_name)["metadata"]["labels"]
            assert {f"example.com/other-writer-{r}" for r in range(run + 1)} <= set(labels), (kind, labels)


# --- k8s_login_check -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def login_env(lab):
    """The control identity as Entra admin of sql-lab, and what a lab Job pod needs beside the webhook's injection
    (the inventory's mi_k8s_job_environment)."""
    operator = run_module(lab, "azure_mi", name="mi-operator", resource_group="rg-lab-ops")["identity"]
    admin = run_module(lab, "sql_server_entra", name="sql-lab", resource_group="rg-lab-data",
                       administrator={"login": "mi-operator", "sid": operator["client_id"]})
    assert not admin["failed"], admin
    ca_bundle = str(lab.state / "tls" / "ca-bundle.pem")
    return {"PYTHONPATH": str(COLLECTIONS), "REQUESTS_CA_BUNDLE": ca_bundle, "SSL_CERT_FILE": ca_bundle,
            "ODBCSYSINI": str(lab.state / "odbc"), "ODBCINSTINI": "odbcinst.ini"}


def new_identity(lab) -> dict:
    created = run_module(lab, "azure_mi", name=unique("mi-k8s"), resource_group=RG_APPS, location="eastus2")
    assert not created["failed"] and created["changed"], created
    return created["identity"]


def sql_login(lab, **extra) -> dict:
    """mi_login_check's options for sql-lab/appdb, with the lab cloud (run_module gives the same to Azure modules)."""
    return dict(database_type="sql", host="localhost", port=int(lab.env["LAB_SQL_PORT_SQL_LAB"]), database="appdb",
                cloud_environment="custom", cloud_endpoints={
                    "resource_manager": f"https://127.0.0.1:{lab.base + 2}",
                    "authority_host": f"https://127.0.0.1:{lab.base + 1}",
                    "resource_manager_audience": "https://management.azure.com/"}, **extra)


def login_check(lab, login_env, account, check=False, **login) -> dict:
    return run_module(lab, "k8s_login_check", check=check, cluster_name=CLUSTER, cluster_resource_group=RG_AKS,
                      namespace=NAMESPACE, service_account=account, image="lab.local/csa-inabox/mi-login-check:lab",
                      environment=login_env, timeout=60, login_check=sql_login(lab, **login))


def test_login_check_signs_in_as_a_new_federated_identity_and_deletes_its_job(lab, kube, login_env):
    mi, account = new_identity(lab), unique("login-sa")
    federated = run_module(lab, "aks_federation", cluster_name=CLUSTER, cluster_resource_group=RG_AKS,
                           identity_name=mi["name"], identity_resource_group=RG_APPS, namespace=NAMESPACE,
                           service_account=account)
    assert not federated["failed"] and federated["changed"], federated
    marked = mark(lab, service_account=account, identity_client_id=mi["client_id"])
    assert marked["changed"] and marked["service_account"]["created"], marked
    user = run_module(lab, "sql_entra_user", host="localhost", port=int(lab.env["LAB_SQL_PORT_SQL_LAB"]),
                      database="appdb", name=mi["name"], principal_client_id=mi["client_id"], roles=["db_datareader"])
    assert not user["failed"] and user["changed"], user

    login = login_check(lab, login_env, account, expected_user=mi["name"])
    assert not login["failed"], login
    assert login["connected_as"] == mi["name"]
    assert login["job"]["name"].startswith("mi-login-check-") and login["job"]["pod"], login
    assert login["job"]["name"] not in jobs(kube)
    pods = core(kube).list_namespaced_pod(NAMESPACE, label_selector=f"job-name={login['job']['name']}")
    assert pods.items == []


def test_login_check_without_a_federated_credential_names_the_issuer_and_subject(lab, kube, login_env):
    mi, account = new_identity(lab), unique("unfederated-sa")
    assert not mark(lab, service_account=account, identity_client_id=mi["client_id"])["failed"]
    login = login_check(lab, login_env, account, expected_user=mi["name"])
    assert login["failed"] and "AADSTS70021" in login["msg"], login
    assert f"system:serviceaccount:{NAMESPACE}:{account}" in login["msg"]  # Entra names the subject it was shown
    assert "issuer" in login["remedy"] and "system:serviceaccount:<namespace>:<service account>" in login["remedy"]
    assert login["job"]["name"] not in jobs(kube)


def test_login_check_with_an_unannotated_service_account_says_what_to_mark(lab, kube, login_env):
    account = unique("plain-sa")
    core(kube).create_namespaced_service_account(NAMESPACE, {"metadata": {"name": account}})
    login = login_check(lab, login_env, account, expected_user="anyone")
    assert login["failed"] and f"as service account {NAMESPACE}/{account}" in login["msg"], login
    assert "client_id" in login["msg"]  # the webhook injected no AZURE_CLIENT_ID
    assert "azure.workload.identity/client-id" in login["remedy"], login
    assert login["job"]["name"] not in jobs(kube)


def test_login_check_plans_in_check_mode_and_refuses_a_client_id_or_a_missing_account(lab, kube, login_env):
    before = revision(kube)
    plan = login_check(lab, login_env, "webapp-sa", check=True, expected_user="mi-webapp")
    assert not plan["failed"] and not plan["changed"] and "would run mi_login_check" in plan["msg"], plan
    assert plan["job"]["name"] is None
    refused = login_check(lab, login_env, "webapp-sa", expected_user="mi-webapp", client_id=str(uuid.uuid4()))
    assert refused["failed"] and "login_check.client_id" in refused["msg"], refused
    for name in ("AZURE_CLIENT_ID", "MI_LOGIN_CHECK_ARGS"):
        hijack = run_module(lab, "k8s_login_check", cluster_name=CLUSTER, cluster_resource_group=RG_AKS,
                            namespace=NAMESPACE, service_account="webapp-sa", image="img",
                            login_check={"database_type": "sql", "host": "localhost", "database": "appdb"},
                            environment={name: str(uuid.uuid4())})
        assert hijack["failed"] and name in hijack["msg"] and "not by the caller" in hijack["msg"], hijack
    missing = login_check(lab, login_env, unique("no-such-sa"), expected_user="mi-webapp")
    assert missing["failed"] and "does not exist" in missing["msg"], missing
    assert revision(kube) == before and jobs(kube) == []
