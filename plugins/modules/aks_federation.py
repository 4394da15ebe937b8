#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: aks_federation
short_description: Let a Kubernetes service account of an AKS cluster sign in as a user-assigned managed identity
version_added: 0.1.0
description:
  - Turns on the cluster's OIDC issuer and workload identity when they are off (tutorial Part 4, Step 1;
    C(az aks update --enable-oidc-issuer --enable-workload-identity)), reads the issuer URL the cluster reports, and
    creates on the identity the federated identity credential that trusts
    C(system:serviceaccount:<namespace>:<service account>) of that issuer for audience C(api://AzureADTokenExchange).
  - Entra compares issuer and subject exactly, case and trailing slash included (AADSTS70021 otherwise). The issuer is
    therefore never typed by hand but taken from the cluster. A credential of the identity that differs from the
    wanted one only by a trailing slash or letter case is corrected in place and reported in C(corrected).
  - An existing credential with the same issuer and subject is adopted whatever its name. An identity holds at most
    20 credentials; a 21st is refused before anything is written.
  - Writes to one identity's credentials are made one at a time (Azure refuses concurrent ones with 409
    C(ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity)); the forks of a run take turns through a
    lock on the control node, and a 409 from writers elsewhere is retried until O(write_timeout).
  - O(state=absent) deletes the credential. The cluster's OIDC issuer is never turned off (Azure cannot).
author: csa-inabox core team (@csa-inabox)
options:
  cluster_name:
    description: Name of the AKS cluster.
    type: str
    required: true
  cluster_resource_group:
    description: Resource group of the AKS cluster.
    type: str
    required: true
  enable_cluster_features:
    description:
      - Turn on the OIDC issuer and workload identity when they are off. Enabling the issuer restarts the cluster's
        API server (a short control-plane interruption; running pods are not restarted) and cannot be undone.
      - With V(false) a cluster without them is an error.
    type: bool
    default: true
  identity_name:
    description: Name of the user-assigned managed identity.
    type: str
    required: true
  identity_resource_group:
    description: Resource group of the identity.
    type: str
    required: true
  namespace:
    description: Kubernetes namespace of the service account.
    type: str
    required: true
  service_account:
    description: Name of the Kubernetes service account.
    type: str
    required: true
  audience:
    description: Audience of the credential (what the projected token's C(aud) holds).
    type: str
    default: api://AzureADTokenExchange
  credential_name:
    description:
      - Name of the federated identity credential. Default, C(<cluster>_<namespace>_<service account>) (one per
        service account, Kubernetes names have no C(_)), with a hash suffix when a C(.) had to be replaced or the name
        cut to Azure's 120 characters.
      - A credential of that name that trusts another service account is never repointed or deleted; the module fails.
    type: str
  write_timeout:
    description: Seconds to keep retrying a write another writer's concurrent write refused (HTTP 409).
    type: int
    default: 120
  state:
    description: Whether the federated credential should exist.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
requirements:
  - azure-mgmt-containerservice >= 30
  - azure-mgmt-msi >= 7.1
notes:
  - The service account also needs the C(azure.workload.identity/client-id) annotation and the pods the
    C(azure.workload.identity/use=true) label (M(csa_inabox.managed_identity.k8s_workload_identity)).
  - Source of the matching rules, https://learn.microsoft.com/entra/workload-id/workload-identity-federation-considerations
"""

EXAMPLES = r"""
- name: Tutorial Part 4, Step 1 and the federated credential
  csa_inabox.managed_identity.aks_federation:
    cluster_name: aks-prod
    cluster_resource_group: rg-aks
    identity_name: mi-webapp
    identity_resource_group: rg-apps
    namespace: app-namespace
    service_account: webapp-sa

- name: Only add the credential; fail if the cluster has no OIDC issuer yet
  csa_inabox.managed_identity.aks_federation:
    cluster_name: aks-prod
    cluster_resource_group: rg-aks
    enable_cluster_features: false
    identity_name: mi-webapp
    identity_resource_group: rg-apps
    namespace: app-namespace
    service_account: webapp-sa
"""

RETURN = r"""
issuer:
  description: The cluster's OIDC issuer URL, exactly as AKS reports it ("(known after apply)" in check mode before it is on).
  returned: always
  type: str
  sample: https://eastus2.oic.prod-aks.azure.com/7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11/0b1c.../
subject:
  description: The credential's subject.
  returned: always
  type: str
  sample: system:serviceaccount:app-namespace:webapp-sa
audience:
  description: The credential's audience.
  returned: always
  type: str
credential:
  description: Name and id of the federated credential (planned in check mode; the removed one with O(state=absent)).
  returned: always
  type: dict
  sample: {"name": "aks-prod-app-namespace-webapp-sa", "id": "/subscriptions/.../federatedIdentityCredentials/aks-prod-app-namespace-webapp-sa"}
cluster:
  description:
    - C(oidc_issuer_enabled) and C(workload_identity_enabled) after the run, and C(changed) when this run turned them
      on (which restarted the API server).
  returned: always
  type: dict
corrected:
  description: Credentials that differed only by a trailing slash or letter case, with their old issuer and subject.
  returned: always
  type: list
  elements: dict
credential_count:
  description: Federated credentials the identity has after the run (at most 20).
  returned: always
  type: int
"""

import hashlib
import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import kube
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import (
    as_dict, resource_group_problem, resource_name_problem)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import KNOWN_AFTER_APPLY, MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.locks import WriteLock, retry, status_of
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import range_problem, shown

FIC_LIMIT = 20
FIC_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,119}")


class CredentialLock(WriteLock):
    KIND = "federated-credentials"


def default_credential_name(cluster, namespace, service_account):
    """``<cluster>_<namespace>_<service account>``: one name per service account, since Kubernetes names have no
    ``_``. When a character Azure does not allow in the name (``.``) had to be replaced, or the name cut to 120, a hash
    of the three keeps it unique."""
    whole = "%s_%s_%s" % (cluster, namespace, service_account)
    if FIC_NAME.fullmatch(whole):
        return whole
    digest = hashlib.sha256(whole.encode("utf-8")).hexdigest()[:10]
    return "%s-%s" % (re.sub(r"[^a-zA-Z0-9_-]", "-", whole)[:109], digest)


def is_concurrent_write(exc):
    code = getattr(getattr(exc, "error", None), "code", None) or ""
    return status_of(exc) == 409 and ("Concurrent" in code or "Concurrent" in str(exc))


def loose(value):
    return (value or "").rstrip("/").lower()


def props(credential):
    body = as_dict(credential) or {}
    inner = body.get("properties") or body  # REST shape, or a flattened model
    return {"name": body.get("name"), "id": body.get("id"), "issuer": inner.get("issuer"),
            "subject": inner.get("subject"), "audiences": list(inner.get("audiences") or [])}


def read_cluster(mod, missing_ok=False):
    """The cluster as a REST-shaped dict; ``{}`` for a missing cluster when ``missing_ok`` (removing a credential of a
    cluster that is gone)."""
    params = mod.params
    try:
        return as_dict(mod.clients.aks.managed_clusters.get(params["cluster_resource_group"], params["cluster_name"]))
    except Exception as exc:  # the SDK's HttpResponseError family
        if missing_ok and status_of(exc) == 404:
            return {}
        mod.fail("could not read AKS cluster %s in %s" % (params["cluster_name"], params["cluster_resource_group"]), exc)
    return None  # not reached


def check_identity_exists(mod):
    """Fail when the identity to federate does not exist (in check mode it may be one this run only plans)."""
    params = mod.params
    try:
        mod.clients.msi.user_assigned_identities.get(params["identity_resource_group"], params["identity_name"])
    except Exception as exc:  # the SDK's HttpResponseError family
        if status_of(exc) == 404 and "ResourceGroupNotFound" not in str(exc):
            mod.fail("identity_name: identity %s does not exist in resource group %s (identity_resource_group); "
                     "nothing was changed: create it first (azure_mi)"
                     % (params["identity_name"], params["identity_resource_group"]), exc)
        mod.fail("could not read identity %s in %s" % (params["identity_name"], params["identity_resource_group"]), exc)


def cluster_state(cluster):
    properties = cluster.get("properties") or {}
    oidc = properties.get("oidcIssuerProfile") or {}
    workload = (properties.get("securityProfile") or {}).get("workloadIdentity") or {}
    return {"oidc_issuer_enabled": bool(oidc.get("enabled")), "workload_identity_enabled": bool(workload.get("enabled")),
            "issuer": oidc.get("issuerURL")}


def enable_cluster_features(mod, cluster):
    """PUT the cluster as read with the issuer and workload identity on; returns the cluster after the change."""
    params = mod.params
    properties = cluster.setdefault("properties", {})
    properties.setdefault("oidcIssuerProfile", {})["enabled"] = True
    security = properties.get("securityProfile") or {}
    security["workloadIdentity"] = {"enabled": True}
    properties["securityProfile"] = security
    try:
        poller = mod.clients.aks.managed_clusters.begin_create_or_update(
            params["cluster_resource_group"], params["cluster_name"], cluster)
        return as_dict(poller.result())
    except Exception as exc:  # the SDK's HttpResponseError family
        mod.fail("could not turn on the OIDC issuer and workload identity of AKS cluster %s" % params["cluster_name"],
                 exc)
    return None  # not reached


def plan(credentials, name, issuer, subject, audience):
    """What to write: ``(action, target name, corrected)``; action is ``none``, ``create`` or ``update``.

    Raises ``ValueError`` when the credential called ``name`` trusts another subject (never repointed).
    An exact (issuer, subject) match is adopted; else a near miss (trailing slash, case) is corrected; else the
    credential called ``name`` is updated; else one is created.
    """
    exact = [c for c in credentials if c["issuer"] == issuer and c["subject"] == subject]
    if exact:
        chosen = next((c for c in exact if c["name"] == name), exact[0])
        return ("none" if chosen["audiences"] == [audience] else "update"), chosen["name"], []
    near = [c for c in credentials if loose(c["issuer"]) == loose(issuer) and c["subject"].lower() == subject.lower()]
    if near:
        chosen = next((c for c in near if c["name"] == name), near[0])
        return "update", chosen["name"], [{"name": chosen["name"], "issuer": chosen["issuer"],
                                           "subject": chosen["subject"]}]
    named = next((c for c in credentials if c["name"] == name), None)
    if named is not None:
        if named["subject"] != subject:
            raise ValueError("federated credential %s of this identity trusts %s, not %s: it belongs to another "
                             "service account; give this one another credential_name" % (name, named["subject"], subject))
        return "update", name, []  # same service account, another issuer: the cluster was recreated
    return "create", name, []


def main():
    mod = MIModule(dict(
        cluster_name=dict(type="str", required=True),
        cluster_resource_group=dict(type="str", required=True),
        enable_cluster_features=dict(type="bool", default=True),
        identity_name=dict(type="str", required=True),
        identity_resource_group=dict(type="str", required=True),
        namespace=dict(type="str", required=True),
        service_account=dict(type="str", required=True),
        audience=dict(type="str", default="api://AzureADTokenExchange"),
        credential_name=dict(type="str"),
        write_timeout=dict(type="int", default=120),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    ))
    params = mod.params
    name = params["credential_name"] or default_credential_name(
        params["cluster_name"], params["namespace"], params["service_account"])
    problems = [kube.name_problem("namespace", params["namespace"], label=True),
                kube.name_problem("service_account", params["service_account"])]
    if not FIC_NAME.fullmatch(name):
        problems.append("credential_name %s must be 3 to 120 letters, digits, '-' or '_', starting with a letter or "
                        "digit" % shown(name))
    if not params["audience"] or re.search(r"\s", params["audience"]) or len(params["audience"]) > 600:
        problems.append("audience must be a non-empty value without spaces, at most 600 characters")
    problems += [resource_name_problem(option, params[option]) for option in ("cluster_name", "identity_name")]
    problems += [resource_group_problem(option, params[option]) for option in
                 ("cluster_resource_group", "identity_resource_group")]
    problems.append(range_problem("write_timeout", params["write_timeout"], 0, 3600, " seconds"))
    problems = [p for p in problems if p]
    if problems:
        mod.fail("; ".join(problems))
    subject = "system:serviceaccount:%s:%s" % (params["namespace"], params["service_account"])

    cluster = read_cluster(mod, missing_ok=params["state"] == "absent")
    if params["state"] == "present" and not mod.check_mode:
        check_identity_exists(mod)  # before the cluster's features are turned on: nothing is half done
    state = cluster_state(cluster)
    before_cluster = dict(state)
    cluster_changed = False
    if params["state"] == "present" and not (state["oidc_issuer_enabled"] and state["workload_identity_enabled"]):
        if not params["enable_cluster_features"]:
            mod.fail("AKS cluster %s has %s off (enable_cluster_features is false): turn them on, e.g. az aks update "
                     "--enable-oidc-issuer --enable-workload-identity" % (
                         params["cluster_name"], " and ".join(
                             label for key, label in (("oidc_issuer_enabled", "the OIDC issuer"),
                                                      ("workload_identity_enabled", "workload identity"))
                             if not state[key])))
        cluster_changed = True
        if mod.check_mode:
            state = {"oidc_issuer_enabled": True, "workload_identity_enabled": True,
                     "issuer": state["issuer"] or KNOWN_AFTER_APPLY}
        else:
            state = cluster_state(enable_cluster_features(mod, cluster))
        if not before_cluster["oidc_issuer_enabled"]:
            mod.module.warn("the OIDC issuer of AKS cluster %s %s on: this restarts its API server, and it cannot be "
                            "turned off again" % (params["cluster_name"], "would be turned" if mod.check_mode
                                                  else "was turned"))
    issuer = state["issuer"]
    if params["state"] == "present" and not issuer:
        mod.fail("AKS cluster %s reports no OIDC issuer URL although the issuer is on" % params["cluster_name"])

    msi = mod.clients.msi.federated_identity_credentials
    rg, identity = params["identity_resource_group"], params["identity_name"]
    identity_id = "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%s" % (
        mod.subscription_id, rg, identity)

    def list_credentials():
        try:
            return [props(c) for c in msi.list(rg, identity)]
        except Exception as exc:  # the SDK's HttpResponseError family
            if status_of(exc) == 404 and (mod.check_mode or params["state"] == "absent"):
                return []  # an identity this check-mode run only plans to create, or one already gone
            mod.fail("could not list the federated credentials of identity %s in %s" % (identity, rg), exc)
        return None  # not reached

    def write(call):
        return retry(call, is_concurrent_write, params["write_timeout"], first_wait=0.5, max_wait=8.0)

    corrected, action, target, credentials = [], "none", name, []
    try:
        with CredentialLock(identity_id, params["write_timeout"]):
            credentials = list_credentials()  # read under the lock: another fork may just have written
            if params["state"] == "present":
                try:
                    action, target, corrected = plan(credentials, name, issuer, subject, params["audience"])
                except ValueError as exc:
                    mod.fail(str(exc))
                if action == "create" and len(credentials) >= FIC_LIMIT:
                    mod.fail("identity %s already has %d federated credentials, the most Azure allows (%d): delete "
                             "one it no longer needs (%s) before adding %s" % (
                                 identity, len(credentials), FIC_LIMIT, ", ".join(sorted(c["name"] for c in credentials)),
                                 subject))
                if action != "none" and not mod.check_mode:
                    body = {"properties": {"issuer": issuer, "subject": subject, "audiences": [params["audience"]]}}
                    try:
                        write(lambda: msi.create_or_update(rg, identity, target, body))
                    except Exception as exc:  # the SDK's HttpResponseError family
                        mod.fail("could not write federated credential %s on identity %s" % (target, identity), exc)
            else:
                # Only a credential for this service account: by name (any issuer: the cluster may be gone), or by
                # exact issuer and subject.
                match = [c for c in credentials if c["subject"] == subject and (c["name"] == name or c["issuer"] == issuer)]
                foreign = [c for c in credentials if c["name"] == name and c["subject"] != subject]
                if foreign:
                    mod.fail("federated credential %s of identity %s trusts %s, not %s: not deleting another service "
                             "account's credential" % (name, identity, foreign[0]["subject"], subject))
                if match:
                    action, target = "delete", match[0]["name"]
                    if not mod.check_mode:
                        try:
                            write(lambda: msi.delete(rg, identity, target))
                        except Exception as exc:  # the SDK's HttpResponseError family
                            mod.fail("could not delete federated credential %s of identity %s" % (target, identity), exc)
    except TimeoutError as exc:
        mod.fail("another run kept the federated credentials of identity %s locked" % identity, exc)

    count = len(credentials) + (1 if action == "create" else 0) - (1 if action == "delete" else 0)
    existing = next((c for c in credentials if c["name"] == target), None)
    before = {"cluster": before_cluster, "credential": existing}
    after = {"cluster": state, "credential": None if action == "delete" else
             {"name": target, "issuer": issuer, "subject": subject, "audiences": [params["audience"]]}}
    mod.exit(cluster_changed or action != "none", before=before, after=after, issuer=issuer or "", subject=subject,
             audience=params["audience"], credential={"name": target, "id": "%s/federatedIdentityCredentials/%s" % (
                 identity_id, target)},
             cluster=dict(oidc_issuer_enabled=state["oidc_issuer_enabled"],
                          workload_identity_enabled=state["workload_identity_enabled"], changed=cluster_changed),
             corrected=corrected, credential_count=count, operations=[] if action == "none" else [action])


if __name__ == "__main__":
    main()
