"""aks_federation and azure_mi_assignment against the lab's ARM double, one module call at a time, as the control
identity. What they wrote is read back independently with the azure-mgmt SDKs as the lab's automation service
principal, and from the ARM double's request counters."""
from __future__ import annotations

import concurrent.futures
import json
import time
import uuid

import pytest

from labrunner import SUBSCRIPTION, automation_credential, run_module

RG_AKS, CLUSTER = "rg-aks", "aks-prod"
RG_APPS = "rg-lab-apps"
AUDIENCE = "api://AzureADTokenExchange"


def sdk(lab, client_class):
    """An azure-mgmt client as the lab's automation service principal: the independent reader."""
    return client_class(automation_credential(lab), SUBSCRIPTION, base_url=f"https://127.0.0.1:{lab.base + 2}",
                        credential_scopes=["https://management.azure.com/.default"], polling_interval=0.05,
                        connection_verify=str(lab.state / "tls" / "ca-bundle.pem"))


@pytest.fixture(scope="module")
def msi(lab):
    from azure.mgmt.msi import ManagedServiceIdentityClient

    return sdk(lab, ManagedServiceIdentityClient)


def identity(lab, prefix="mi-test") -> dict:
    created = run_module(lab, "azure_mi", name=f"{prefix}-{uuid.uuid4().hex[:6]}", resource_group=RG_APPS,
                         location="eastus2")
    assert created["changed"] and not created["failed"], created
    return created["identity"]


def federation(lab, check=False, **args):
    base = dict(cluster_name=CLUSTER, cluster_resource_group=RG_AKS, identity_resource_group=RG_APPS,
                namespace="app-namespace", service_account="webapp-sa")
    return run_module(lab, "aks_federation", check=check, **dict(base, **args))


def writes(lab) -> int:
    return lab.arm_counters()["writes"]


def credentials(msi, name):
    return {c.name: (c.issuer, c.subject, list(c.audiences)) for c in msi.federated_identity_credentials.list(RG_APPS, name)}


def restarts(lab) -> int:
    return lab.lab_api("GET", f"aks/{CLUSTER}")["apiServerRestarts"]


def test_federation_turns_the_issuer_on_once_and_uses_its_exact_url(lab, msi):
    from azure.mgmt.containerservice import ContainerServiceClient

    mi = identity(lab)
    before = writes(lab)
    plan = federation(lab, check=True, identity_name=mi["name"])
    assert plan["changed"] and not plan["failed"], plan
    assert plan["issuer"] == "(known after apply)" and plan["cluster"]["changed"]
    assert "restarts its API server" in json.dumps(plan.get("warnings", [])), plan
    assert writes(lab) == before and restarts(lab) == 0

    done = federation(lab, identity_name=mi["name"])
    assert done["changed"] and not done["failed"], done
    cluster = sdk(lab, ContainerServiceClient).managed_clusters.get(RG_AKS, CLUSTER)
    issuer = cluster.oidc_issuer_profile.issuer_url
    assert issuer.endswith("/") and done["issuer"] == issuer
    assert cluster.security_profile.workload_identity.enabled
    assert credentials(msi, mi["name"]) == {
        "aks-prod_app-namespace_webapp-sa": (issuer, "system:serviceaccount:app-namespace:webapp-sa", [AUDIENCE])}
    assert restarts(lab) == 1 and done["credential_count"] == 1

    before = writes(lab)
    again = federation(lab, identity_name=mi["name"])
    assert not again["changed"] and not again["failed"] and again["operations"] == [], again
    assert writes(lab) == before and restarts(lab) == 1

    gone = federation(lab, identity_name=mi["name"], state="absent")
    assert gone["changed"] and credentials(msi, mi["name"]) == {}
    assert sdk(lab, ContainerServiceClient).managed_clusters.get(RG_AKS, CLUSTER).oidc_issuer_profile.enabled


def issuer_url(lab):
    from azure.mgmt.containerservice import ContainerServiceClient

    federation(lab, identity_name=identity(lab)["name"])  # the issuer is on from here
    return sdk(lab, ContainerServiceClient).managed_clusters.get(RG_AKS, CLUSTER).oidc_issuer_profile.issuer_url


@pytest.mark.parametrize("issuer_change, subject", [
    (lambda url: url.rstrip("/"), "system:serviceaccount:app-namespace:webapp-sa"),
    (lambda url: url.replace("https://localhost", "https://LOCALHOST"), "system:serviceaccount:app-namespace:webapp-sa"),
    (lambda url: url, "system:serviceaccount:App-Namespace:WebApp-SA"),
])
def test_a_trailing_slash_or_case_difference_is_found_and_corrected(lab, msi, issuer_change, subject):
    url = issuer_url(lab)
    mi = identity(lab)
    wrong = issuer_change(url)
    msi.federated_identity_credentials.create_or_update(
        RG_APPS, mi["name"], "hand-made", {"issuer": wrong, "subject": subject, "audiences": [AUDIENCE]})
    time.sleep(0.4)  # Azure refuses overlapping writes on one identity
    fixed = federation(lab, identity_name=mi["name"])
    assert fixed["changed"] and not fixed["failed"], fixed
    assert fixed["corrected"] == [{"name": "hand-made", "issuer": wrong, "subject": subject}]
    assert credentials(msi, mi["name"]) == {
        "hand-made": (url, "system:serviceaccount:app-namespace:webapp-sa", [AUDIENCE])}


def test_the_21st_credential_is_refused_before_writing(lab, msi):
    url = issuer_url(lab)
    mi = identity(lab)
    for number in range(20):
        msi.federated_identity_credentials.create_or_update(
            RG_APPS, mi["name"], f"other-{number:02d}",
            {"issuer": url, "subject": f"system:serviceaccount:other:sa-{number}", "audiences": [AUDIENCE]})
        time.sleep(0.32)
    before = writes(lab)
    refused = federation(lab, identity_name=mi["name"])
    assert refused["failed"] and "already has 20 federated credentials" in refused["msg"], refused
    assert "other-00" in refused["msg"] and writes(lab) == before
    # the existing subject of the 20 is still adopted without a write
    adopted = federation(lab, identity_name=mi["name"], namespace="other", service_account="sa-7")
    assert not adopted["changed"] and adopted["credential"]["name"] == "other-07", adopted


def test_parallel_runs_on_one_identity_all_land(lab, msi):
    issuer_url(lab)
    mi = identity(lab)
    accounts = [f"worker-{number}" for number in range(5)]
    with concurrent.futures.ThreadPoolExecutor(len(accounts)) as pool:
        results = list(pool.map(lambda sa: federation(lab, identity_name=mi["name"], service_account=sa), accounts))
    assert all(r["changed"] and not r["failed"] for r in results), results
    subjects = sorted(subject for _issuer, subject, _audiences in credentials(msi, mi["name"]).values())
    assert subjects == [f"system:serviceaccount:app-namespace:{sa}" for sa in accounts]


def test_another_service_accounts_credential_is_neither_repointed_nor_deleted(lab, msi):
    issuer_url(lab)
    mi = identity(lab)
    first = federation(lab, identity_name=mi["name"], credential_name="shared-name", service_account="first-sa")
    assert first["changed"] and not first["failed"], first
    before = writes(lab)
    for state in ("present", "absent"):
        refused = federation(lab, identity_name=mi["name"], credential_name="shared-name", service_account="other-sa",
                             state=state)
        assert refused["failed"] and "system:serviceaccount:app-namespace:first-sa" in refused["msg"], refused
    assert writes(lab) == before
    assert [s for _i, s, _a in credentials(msi, mi["name"]).values()] == ["system:serviceaccount:app-namespace:first-sa"]
    gone = federation(lab, identity_name="mi-never-created", state="absent")
    assert not gone["failed"] and not gone["changed"], gone


def test_federation_refuses_bad_names_without_writing(lab):
    mi = identity(lab)
    before = writes(lab)
    for args in ({"namespace": "App_Namespace"}, {"service_account": "sa;drop"}, {"service_account": "x" * 254},
                 {"credential_name": "-bad"}, {"credential_name": "a b"}, {"audience": " api://x "},
                 {"audience": "api://a b"}, {"audience": "x" * 601}, {"identity_name": ".."}, {"cluster_name": ""},
                 {"identity_resource_group": "rg/x"}):
        refused = federation(lab, **dict({"identity_name": mi["name"]}, **args))
        assert refused["failed"], (args, refused)
    assert writes(lab) == before


def attach(lab, kind, name, ids, check=False, **args):
    return run_module(lab, "azure_mi_assignment", check=check, workload_type=kind, name=name, resource_group=RG_APPS,
                      identity_ids=ids, **args)


@pytest.mark.parametrize("kind, name", [("vm", "vm-orders"), ("vmss", "vmss-workers"), ("app_service", "app-storefront"),
                                        ("container_app", "ca-notifier")])
def test_attach_keeps_other_identities_and_detach_removes_only_one(lab, kind, name):
    first, second = identity(lab, "mi-one"), identity(lab, "mi-two")
    one = attach(lab, kind, name, [first["id"]])
    assert one["changed"] and not one["failed"], one
    two = attach(lab, kind, name, [second["id"]])
    assert two["changed"] and two["added"] == [second["id"]], two
    attached = {i.lower() for i in two["user_assigned_identities"]}
    assert {first["id"].lower(), second["id"].lower()} <= attached

    before = writes(lab)
    again = attach(lab, kind, name, [second["id"].upper().replace("/SUBSCRIPTIONS/", "/subscriptions/")])
    assert not again["changed"] and writes(lab) == before

    plan = attach(lab, kind, name, [first["id"]], check=True, state="absent")
    assert plan["changed"] and writes(lab) == before
    detached = attach(lab, kind, name, [first["id"]], state="absent")
    assert detached["changed"] and detached["removed"] == [first["id"]], detached
    now = run_module(lab, "azure_mi_assignment", check=True, workload_type=kind, name=name, resource_group=RG_APPS,
                     identity_ids=[second["id"]])
    remaining = {i.lower() for i in now["user_assigned_identities"]}
    assert second["id"].lower() in remaining and first["id"].lower() not in remaining


def test_app_service_client_id_setting_keeps_the_other_settings(lab):
    from azure.mgmt.web import WebSiteManagementClient

    web = sdk(lab, WebSiteManagementClient)
    web.web_apps.update_application_settings(RG_APPS, "app-storefront", {"properties": {"FEATURE_X": "on"}})
    mi = identity(lab)
    done = attach(lab, "app_service", "app-storefront", [mi["id"]], client_id_app_setting=True)
    assert done["changed"] and done["app_settings_changed"], done
    settings = web.web_apps.list_application_settings(RG_APPS, "app-storefront").properties
    assert settings == {"FEATURE_X": "on", "AZURE_CLIENT_ID": mi["client_id"]}
    again = attach(lab, "app_service", "app-storefront", [mi["id"]], client_id_app_setting=True)
    assert not again["changed"] and not again["app_settings_changed"]
    refused = attach(lab, "vm", "vm-orders", [mi["id"]], client_id_app_setting=True)
    assert refused["failed"] and "App Service" in refused["msg"]
    detached = attach(lab, "app_service", "app-storefront", [mi["id"]], state="absent")
    assert detached["changed"] and "still names the identity this run detached" in json.dumps(detached["warnings"])
