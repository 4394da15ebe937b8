#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: k8s_workload_identity
short_description: Mark a Kubernetes service account and Deployment for Microsoft Entra Workload ID
version_added: 0.1.0
description:
  - Puts on a service account the annotation C(azure.workload.identity/client-id) (the managed identity's client id)
    and the label C(azure.workload.identity/use=true), and on a Deployment's pod template the label
    C(azure.workload.identity/use=true), which is what makes the workload identity webhook inject
    C(AZURE_CLIENT_ID), C(AZURE_TENANT_ID), C(AZURE_FEDERATED_TOKEN_FILE), C(AZURE_AUTHORITY_HOST) and the projected
    token into the pods (tutorial Part 4, Steps 2 and 3).
  - Touches nothing else. Objects are read and replaced as the API server's JSON, so fields this module does not know
    are kept; a concurrent change (HTTP 409 on the read C(resourceVersion)) is re-read and re-applied.
  - When asked (the switch phase), removes the listed environment variables (the database password ones) from the
    Deployment's containers and the Vault Agent injector annotations (C(vault.hashicorp.com/*)) from its pod template.
    Changing the pod template rolls the Deployment out, as any template change does.
  - The Deployment must already run as O(service_account) (C(spec.template.spec.serviceAccountName)), since the federated
    credential names that account, and changing a workload's account is the application's decision, not this
    module's.
  - O(state=absent) takes the annotation and labels away again (the Vault annotations are not put back).
author: csa-inabox core team (@csa-inabox)
options:
  namespace:
    description: Namespace of the service account and the Deployment.
    type: str
    required: true
  service_account:
    description: Name of the service account (the C(<service account>) of the federated credential's subject).
    type: str
    required: true
  identity_client_id:
    description:
      - Client id of the user-assigned managed identity the workload signs in as. Required with O(state=present).
    type: str
  create_service_account:
    description: Create the service account when it does not exist.
    type: bool
    default: true
  deployment:
    description: Name of the Deployment whose pods use the identity. Without it only the service account is handled.
    type: str
  remove_env:
    description:
      - Environment variables to remove from every container and init container of the Deployment, by name
        (for example C(DB_USER), C(DB_PASSWORD)). Compared exactly.
    type: list
    elements: str
    default: []
  remove_vault_agent:
    description: Remove every C(vault.hashicorp.com/) annotation from the Deployment's pod template.
    type: bool
    default: false
  state:
    description: Whether the workload identity markings should be present.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.kubernetes
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
notes:
  - The identity still needs a federated credential for the cluster's issuer and this service account
    (M(csa_inabox.managed_identity.aks_federation)); the order does not matter, pods only get tokens Entra accepts once
    both exist.
  - C(warnings) reports Vault Agent annotations and password-like environment variables the Deployment still has.
"""

EXAMPLES = r"""
- name: Tutorial Part 4, Steps 2 and 3, on an AKS cluster with Entra ID integration
  csa_inabox.managed_identity.k8s_workload_identity:
    cluster_name: aks-prod
    cluster_resource_group: rg-aks
    namespace: app-namespace
    service_account: webapp-sa
    identity_client_id: "{{ identity.identity.client_id }}"
    deployment: webapp

- name: Switch phase, once the identity is verified - drop the password and Vault Agent
  csa_inabox.managed_identity.k8s_workload_identity:
    kubeconfig: ~/.kube/config
    namespace: app-namespace
    service_account: webapp-sa
    identity_client_id: "{{ identity.identity.client_id }}"
    deployment: webapp
    remove_env: [DB_USER, DB_PASSWORD_FILE]
    remove_vault_agent: true
"""

RETURN = r"""
service_account:
  description: The service account's annotations and labels after the change (planned ones in check mode).
  returned: always
  type: dict
  sample: {"name": "webapp-sa", "namespace": "app-namespace", "created": false,
           "annotations": {"azure.workload.identity/client-id": "3f1c..."}, "labels": {"azure.workload.identity/use": "true"}}
deployment:
  description:
    - The Deployment's pod template labels and annotations and each container's environment variable names after the
      change; the environment variables and annotations this run removed. Absent without O(deployment).
  returned: when O(deployment) is set
  type: dict
  sample: {"name": "webapp", "pod_labels": {"app": "webapp", "azure.workload.identity/use": "true"},
           "removed_env": ["DB_PASSWORD_FILE"], "removed_annotations": ["vault.hashicorp.com/agent-inject"]}
vault_agent_annotations:
  description: C(vault.hashicorp.com/) annotations left on the pod template after the change.
  returned: when O(deployment) is set
  type: list
  elements: str
secret_like_env:
  description: Names of environment variables left in the Deployment that look like passwords or secrets.
  returned: when O(deployment) is set
  type: list
  elements: str
"""

import copy
import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import kube
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import KNOWN_AFTER_APPLY, MIModule, guid_problem
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
USE_LABEL = "azure.workload.identity/use"
VAULT_PREFIX = "vault.hashicorp.com/"
SECRET_LIKE = re.compile(r"(?i)(password|passwd|pwd|secret|token|credential)")
CONFLICT_RETRIES = 5
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")  # what the API server takes as a container env var name


def _metadata(obj, *path):
    """``obj[path...]`` as a dict, created empty where missing (``metadata.labels`` of an object without labels)."""
    node = obj
    for key in path:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    return node


def mark_service_account(sa, params):
    """Change ``sa`` in place; True when something changed."""
    annotations = _metadata(sa, "metadata", "annotations")
    labels = _metadata(sa, "metadata", "labels")
    before = (dict(annotations), dict(labels))
    if params["state"] == "present":
        annotations[CLIENT_ID_ANNOTATION] = params["identity_client_id"]
        labels[USE_LABEL] = "true"
    else:
        wanted = params.get("identity_client_id")
        if wanted is None or annotations.get(CLIENT_ID_ANNOTATION, "").lower() == wanted.lower():
            annotations.pop(CLIENT_ID_ANNOTATION, None)
        labels.pop(USE_LABEL, None)
    return (dict(annotations), dict(labels)) != before


def _containers(spec):
    return (spec.get("containers") or []) + (spec.get("initContainers") or [])


def mark_deployment(deployment, params):
    """Change ``deployment`` in place; returns (changed, removed env names, removed annotation names)."""
    template = _metadata(deployment, "spec", "template")
    labels = _metadata(template, "metadata", "labels")
    annotations = _metadata(template, "metadata", "annotations")
    spec = _metadata(template, "spec")
    before = copy.deepcopy(template)
    removed_env, removed_annotations = [], []
    if params["state"] == "present":
        labels[USE_LABEL] = "true"
        doomed = set(params["remove_env"])
        for container in _containers(spec):
            env = container.get("env") or []
            kept = [entry for entry in env if entry.get("name") not in doomed]
            removed_env += [entry["name"] for entry in env if entry.get("name") in doomed]
            if len(kept) != len(env):
                container["env"] = kept
        if params["remove_vault_agent"]:
            removed_annotations = sorted(k for k in annotations if k.startswith(VAULT_PREFIX))
            for key in removed_annotations:
                del annotations[key]
    else:
        labels.pop(USE_LABEL, None)
    return template != before, sorted(set(removed_env)), removed_annotations


def deployment_view(deployment):
    template = (deployment.get("spec") or {}).get("template") or {}
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    return {"pod_labels": dict(meta.get("labels") or {}), "pod_annotations": dict(meta.get("annotations") or {}),
            "service_account": spec.get("serviceAccountName") or spec.get("serviceAccount") or "default",
            "env": dict((c.get("name"), [e.get("name") for e in c.get("env") or []]) for c in _containers(spec))}


def sa_view(sa):
    meta = sa.get("metadata") or {}
    return {"annotations": dict(meta.get("annotations") or {}), "labels": dict(meta.get("labels") or {})}


def converge(mod, objects, kind, read, change):
    """Read, change, replace; again on a 409 Conflict. Returns (before, after, changed, extra) where ``extra`` is
    what ``change`` returned beyond its first value."""
    params = mod.params
    for _attempt in range(CONFLICT_RETRIES):
        current = read()
        if current is None:
            return None, None, False, ()
        wanted = copy.deepcopy(current)
        outcome = change(wanted)
        changed, extra = (outcome[0], outcome[1:]) if isinstance(outcome, tuple) else (outcome, ())
        if not changed or mod.check_mode:
            return current, wanted, changed, extra
        try:
            return current, objects.replace(kind, params["namespace"], wanted), True, extra
        except kube.KubeError as exc:
            if exc.status != 409:
                mod.fail("could not update %s %s/%s" % (kind, params["namespace"], wanted["metadata"]["name"]), exc)
    mod.fail("%s in %s kept changing under this module (%d conflicts); try again"
             % (kind, params["namespace"], CONFLICT_RETRIES))
    return None  # not reached


def main():
    spec = dict(
        namespace=dict(type="str", required=True),
        service_account=dict(type="str", required=True),
        identity_client_id=dict(type="str"),
        create_service_account=dict(type="bool", default=True),
        deployment=dict(type="str"),
        remove_env=dict(type="list", elements="str", default=[]),
        remove_vault_agent=dict(type="bool", default=False),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )
    spec.update(kube.KUBERNETES_ARGUMENT_SPEC)
    mod = MIModule(spec, mutually_exclusive=kube.KUBERNETES_MUTUALLY_EXCLUSIVE,
                   required_together=kube.KUBERNETES_REQUIRED_TOGETHER,
                   required_if=[("state", "present", ["identity_client_id"])])
    params = mod.params
    problems = [kube.name_problem("namespace", params["namespace"], label=True),
                kube.name_problem("service_account", params["service_account"])]
    if params["deployment"] is not None:
        problems.append(kube.name_problem("deployment", params["deployment"]))
    client_id = params["identity_client_id"]
    if client_id is not None and not (mod.check_mode and client_id == KNOWN_AFTER_APPLY):
        problems.append(guid_problem("identity_client_id", client_id, "the identity's client id"))
    problems += ["remove_env: %s is not an environment variable name" % shown(name) for name in params["remove_env"]
                 if not ENV_NAME.fullmatch(name or "")]
    problems = [p for p in problems if p]
    if problems:
        mod.fail("; ".join(problems))

    objects = kube.Objects(kube.api_client(mod))
    namespace, name = params["namespace"], params["service_account"]
    result = {}

    def read_deployment():
        found = objects.get("Deployment", namespace, params["deployment"])
        if found is None:
            mod.fail("Deployment %s/%s does not exist" % (namespace, params["deployment"]))
        account = deployment_view(found)["service_account"]
        if params["state"] == "present" and account != name:
            mod.fail("Deployment %s/%s runs as service account %r, not %r: the federated credential names %r. "
                     "Set spec.template.spec.serviceAccountName in the application's manifest first"
                     % (namespace, params["deployment"], account, name, name))
        return found

    try:
        if params["deployment"]:
            read_deployment()  # refuse a missing Deployment, or one running as another account, before any write
        sa_before, sa_after, sa_changed, _extra = converge(
            mod, objects, "ServiceAccount", lambda: objects.get("ServiceAccount", namespace, name),
            lambda sa: mark_service_account(sa, params))
        created = False
        if sa_before is None and params["state"] == "present":
            if not params["create_service_account"]:
                mod.fail("service account %s/%s does not exist (create_service_account is false)" % (namespace, name))
            sa_after = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
            mark_service_account(sa_after, params)
            if not mod.check_mode:
                sa_after = objects.create("ServiceAccount", namespace, sa_after)
            created = sa_changed = True
        result["service_account"] = dict(name=name, namespace=namespace, created=created,
                                         **sa_view(sa_after or {}))
        diff_before = {"service_account": sa_view(sa_before) if sa_before else None}
        diff_after = {"service_account": sa_view(sa_after) if sa_after else None}

        changed = sa_changed
        if params["deployment"]:
            dep_before, dep_after, dep_changed, extra = converge(
                mod, objects, "Deployment", read_deployment, lambda d: mark_deployment(d, params))
            removed_env, removed_annotations = extra
            view = deployment_view(dep_after)
            vault_left = sorted(k for k in view["pod_annotations"] if k.startswith(VAULT_PREFIX))
            secret_env = sorted(set(n for names in view["env"].values() for n in names if SECRET_LIKE.search(n or "")))
            result["deployment"] = dict(name=params["deployment"], removed_env=removed_env,
                                        removed_annotations=removed_annotations, **view)
            result["vault_agent_annotations"] = vault_left
            result["secret_like_env"] = secret_env
            playbook = "in migrate.yml, the switch phase with mi_switch_method: kubernetes"
            if vault_left:
                mod.module.warn("Deployment %s/%s still has the Vault Agent injector annotations %s: its pods still get "
                                "a Vault sidecar (remove_vault_agent removes them; %s)"
                                % (namespace, params["deployment"], ", ".join(vault_left), playbook))
            if secret_env:
                mod.module.warn("Deployment %s/%s still sets %s: remove them once the application uses its identity "
                                "(remove_env; %s and mi_workload.remove_env)"
                                % (namespace, params["deployment"], ", ".join(secret_env), playbook))
            diff_before["deployment"] = deployment_view(dep_before)
            diff_after["deployment"] = view
            changed = changed or dep_changed
    except kube.KubeError as exc:
        mod.fail("the Kubernetes API server refused a request", exc)
    mod.exit(changed, before=diff_before, after=diff_after, **result)


if __name__ == "__main__":
    main()
