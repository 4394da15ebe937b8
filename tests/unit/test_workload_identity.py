"""The pure parts of the AKS modules: credential planning, Kubernetes markings, the login-check Job."""
import json

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import arm, auth, diagnose, kube
from ansible_collections.csa_inabox.managed_identity.plugins.modules import aks_federation, k8s_login_check
from ansible_collections.csa_inabox.managed_identity.plugins.modules import k8s_workload_identity as wi

ISSUER = "https://eastus2.oic.prod-aks.azure.com/7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/"
SUBJECT = "system:serviceaccount:app-namespace:webapp-sa"
AUDIENCE = "api://AzureADTokenExchange"
CLIENT_ID = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"


def credential(name, issuer=ISSUER, subject=SUBJECT, audiences=(AUDIENCE,)):
    return {"name": name, "id": "/x/" + name, "issuer": issuer, "subject": subject, "audiences": list(audiences)}


def test_an_exact_credential_is_adopted_whatever_its_name():
    assert aks_federation.plan([credential("made-by-terraform")], "mine", ISSUER, SUBJECT, AUDIENCE) == \
        ("none", "made-by-terraform", [])


def test_an_exact_credential_with_another_audience_is_updated():
    assert aks_federation.plan([credential("mine", audiences=["api://other"])], "mine", ISSUER, SUBJECT, AUDIENCE) == \
        ("update", "mine", [])


@pytest.mark.parametrize("issuer, subject", [
    (ISSUER.rstrip("/"), SUBJECT),  # the trailing slash AKS reports was dropped
    (ISSUER.upper().replace("HTTPS://", "https://"), SUBJECT),  # case
    (ISSUER, SUBJECT.replace("webapp-sa", "WebApp-SA")),
    (ISSUER.rstrip("/"), "System:ServiceAccount:app-namespace:webapp-sa"),
])
def test_a_near_miss_is_corrected_in_place_and_reported(issuer, subject):
    action, target, corrected = aks_federation.plan([credential("hand-made", issuer, subject)], "mine", ISSUER,
                                                    SUBJECT, AUDIENCE)
    assert (action, target) == ("update", "hand-made")
    assert corrected == [{"name": "hand-made", "issuer": issuer, "subject": subject}]


def test_another_service_account_or_cluster_is_left_alone():
    others = [credential("other-sa", subject=SUBJECT.replace("webapp-sa", "worker-sa")),
              credential("other-cluster", issuer=ISSUER.replace("0b1c", "ffff"))]
    assert aks_federation.plan(others, "mine", ISSUER, SUBJECT, AUDIENCE) == ("create", "mine", [])


def test_our_name_pointing_elsewhere_is_updated():
    stale = credential("mine", issuer="https://eastus2.oic.prod-aks.azure.com/t/old-cluster/")
    assert aks_federation.plan([stale], "mine", ISSUER, SUBJECT, AUDIENCE) == ("update", "mine", [])


def test_default_credential_names_fit_azures_rule_and_never_collide():
    assert aks_federation.default_credential_name("aks-prod", "app-namespace", "webapp-sa") == \
        "aks-prod_app-namespace_webapp-sa"
    name = aks_federation.default_credential_name("aks.prod", "ns", "sa.with.dots" + "x" * 200)
    assert aks_federation.FIC_NAME.fullmatch(name) and len(name) == 120
    pairs = [("team-a", "api"), ("team", "a-api"), ("ns", "web.app"), ("ns", "web-app"),
             ("ns", "a" * 200 + "b"), ("ns", "a" * 200 + "c")]
    names = [aks_federation.default_credential_name("aks-prod", ns, sa) for ns, sa in pairs]
    assert len(set(names)) == len(names) and all(aks_federation.FIC_NAME.fullmatch(n) for n in names)


def test_a_credential_of_that_name_for_another_service_account_is_never_repointed():
    other = credential("mine", subject="system:serviceaccount:team-a:api")
    with pytest.raises(ValueError, match="belongs to another service account"):
        aks_federation.plan([other], "mine", ISSUER, SUBJECT, AUDIENCE)


@pytest.mark.parametrize("kind, value, label, ok", [
    ("namespace", "app-namespace", True, True),
    ("namespace", "App", True, False),
    ("namespace", "a" * 64, True, False),
    ("namespace", "a.b", True, False),
    ("service_account", "web.app-sa", False, True),
    ("service_account", "sa;rm -rf", False, False),
    ("service_account", "-sa", False, False),
    ("service_account", "", False, False),
    ("service_account", "ünï", False, False),
])
def test_kubernetes_names(kind, value, label, ok):
    problem = kube.name_problem(kind, value, label)
    assert (problem is None) == ok
    if not ok:
        assert repr(value) in problem


def params(**overrides):
    base = {"state": "present", "identity_client_id": CLIENT_ID, "remove_env": [], "remove_vault_agent": False}
    base.update(overrides)
    return base


def tutorial_deployment():
    return {"metadata": {"name": "webapp", "resourceVersion": "7", "annotations": {"keep": "me"}},
            "spec": {"replicas": 3, "template": {
                "metadata": {"labels": {"app": "webapp"},
                             "annotations": {"vault.hashicorp.com/agent-inject": "true",
                                             "vault.hashicorp.com/role": "webapp", "prometheus.io/scrape": "true"}},
                "spec": {"serviceAccountName": "webapp-sa", "unknownFutureField": {"x": 1},
                         "initContainers": [{"name": "migrate", "env": [{"name": "DB_PASSWORD", "value": "x"}]}],
                         "containers": [{"name": "webapp", "image": "i", "env": [
                             {"name": "DATABASE_HOST", "value": "h"},
                             {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}}]}]}}}}


def test_service_account_gets_exactly_the_tutorials_annotation_and_label():
    sa = {"metadata": {"name": "webapp-sa", "labels": {"team": "web"}}}
    assert wi.mark_service_account(sa, params()) is True
    assert sa["metadata"]["annotations"] == {wi.CLIENT_ID_ANNOTATION: CLIENT_ID}
    assert sa["metadata"]["labels"] == {"team": "web", wi.USE_LABEL: "true"}
    assert wi.mark_service_account(sa, params()) is False  # a re-run changes nothing


def test_absent_removes_only_our_markings_and_only_for_our_identity():
    sa = {"metadata": {"annotations": {wi.CLIENT_ID_ANNOTATION: "0" * 8 + CLIENT_ID[8:]}, "labels": {wi.USE_LABEL: "true"}}}
    wi.mark_service_account(sa, params(state="absent"))
    assert wi.CLIENT_ID_ANNOTATION in sa["metadata"]["annotations"]  # another identity's annotation is kept
    wi.mark_service_account(sa, params(state="absent", identity_client_id=None))
    assert sa["metadata"]["annotations"] == {} and sa["metadata"]["labels"] == {}


def test_deployment_gets_the_pod_label_and_nothing_else_changes():
    deployment = tutorial_deployment()
    changed, removed_env, removed_annotations = wi.mark_deployment(deployment, params())
    assert changed and removed_env == [] and removed_annotations == []
    expected = tutorial_deployment()
    expected["spec"]["template"]["metadata"]["labels"][wi.USE_LABEL] = "true"
    assert deployment == expected
    assert wi.mark_deployment(deployment, params())[0] is False


def test_switch_removes_password_env_and_vault_agent_only():
    deployment = tutorial_deployment()
    changed, removed_env, removed_annotations = wi.mark_deployment(
        deployment, params(remove_env=["DB_PASSWORD"], remove_vault_agent=True))
    assert changed and removed_env == ["DB_PASSWORD"]
    assert removed_annotations == ["vault.hashicorp.com/agent-inject", "vault.hashicorp.com/role"]
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert [e["name"] for e in template["spec"]["containers"][0]["env"]] == ["DATABASE_HOST"]
    assert template["spec"]["initContainers"][0]["env"] == []
    assert template["spec"]["unknownFutureField"] == {"x": 1}
    assert deployment["metadata"]["annotations"] == {"keep": "me"}


def test_the_login_check_job_runs_as_the_service_account_with_the_webhook_label():
    body = k8s_login_check.job_body({
        "namespace": "app-namespace", "service_account": "webapp-sa", "image": "img", "python": "python3",
        "environment": {"REQUESTS_CA_BUNDLE": "/ca.pem"}, "timeout": 120,
        "login_check": {"database_type": "sql", "host": "h", "database": "appdb"}})
    template = body["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["spec"]["serviceAccountName"] == "webapp-sa"
    assert body["spec"]["backoffLimit"] == 0 and body["spec"]["activeDeadlineSeconds"] == 120
    env = dict((e["name"], e["value"]) for e in template["spec"]["containers"][0]["env"])
    args = json.loads(env["MI_LOGIN_CHECK_ARGS"])["ANSIBLE_MODULE_ARGS"]
    assert args == {"database_type": "sql", "host": "h", "database": "appdb", "auth_source": "workload_identity"}
    assert env["REQUESTS_CA_BUNDLE"] == "/ca.pem"


def test_the_result_is_the_last_json_line_of_the_log():
    log = "warning: something\n{\"changed\": false, \"connected_as\": \"mi-webapp\"}\n"
    assert k8s_login_check.last_json_line(log)["connected_as"] == "mi-webapp"
    assert k8s_login_check.last_json_line("Traceback (most recent call last):\n  boom") is None


def test_aks_audience_is_the_aks_server_application_in_every_cloud():
    for name in ("AzureCloud", "AzureUSGovernment", "AzureChinaCloud"):
        assert auth.resolve_cloud(name).scope("aks") == "6dae42f8-4368-4678-94ff-3960e28e3630/.default"
    custom = auth.resolve_cloud("custom", {"resource_manager": "https://arm", "authority_host": "https://login"})
    assert custom.scope("aks") == auth.AKS_SERVER_APP_ID + "/.default"


def test_federation_failures_carry_their_remedy():
    assert "trailing slash" in diagnose.remedy("AADSTS70021: No matching federated identity record found")
    assert "azure.workload.identity/use" in diagnose.remedy(
        "WorkloadIdentityCredential authentication unavailable. AZURE_FEDERATED_TOKEN_FILE is missing")


@pytest.mark.parametrize("value, ok", [("vm-orders", True), ("aks_prod.1", True), ("", False), (".", False),
                                       ("..", False), ("a/b", False), ("a\\b", False), (" vm", False),
                                       ("x" * 261, False), ("ünï-app", True)])
def test_resource_names_that_cannot_go_in_an_arm_path_are_refused(value, ok):
    problem = arm.resource_name_problem("name", value)
    assert (problem is None) == ok
    if not ok:
        assert problem.startswith("name ") and "not a resource name" in problem
