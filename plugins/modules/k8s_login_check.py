#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: k8s_login_check
short_description: Prove from inside a Kubernetes cluster that a service account's workload identity reaches its database
version_added: 0.1.0
description:
  - Runs M(csa_inabox.managed_identity.mi_login_check) as a Kubernetes Job in the application's namespace, with the
    application's service account and the label C(azure.workload.identity/use=true), so the login happens exactly
    as the application's pods will do it - the webhook's injected C(AZURE_CLIENT_ID) and projected token, the
    cluster's issuer, the identity's federated credential, the database's user or role assignment.
  - Waits for the Job, reads its pod's log (the module's JSON result, which holds no secret) and returns that result;
    a failed login fails this task with the message and remedy from inside the pod. The Job is deleted afterwards
    unless O(keep_job).
  - In check mode nothing is created; the result says what would run.
author: csa-inabox core team (@csa-inabox)
options:
  namespace:
    description: Namespace of the application.
    type: str
    required: true
  service_account:
    description: The application's service account (the one its federated credential names).
    type: str
    required: true
  login_check:
    description:
      - Options of M(csa_inabox.managed_identity.mi_login_check) for the login to make (C(database_type), C(host),
        C(port), C(database), C(query), C(expected_user), C(container), C(parameters), and the cloud options).
      - C(auth_source) defaults to V(workload_identity) and no C(client_id) is passed, so the check uses what the
        webhook injected, as the application will. Never put a secret here - mi_login_check has no secret option.
    type: dict
    required: true
  image:
    description:
      - Container image with Python 3, this collection and the Python requirements of mi_login_check (the
        collection's C(containers/mi-login-check/Containerfile) builds one). It must be pullable by the cluster.
    type: str
    required: true
  python:
    description: Python interpreter of the image.
    type: str
    default: python3
  environment:
    description:
      - Extra environment variables of the Job's container (for example a CA bundle path). No secrets.
      - C(AZURE_CLIENT_ID), C(AZURE_TENANT_ID), C(AZURE_FEDERATED_TOKEN_FILE), C(AZURE_AUTHORITY_HOST) (the webhook's)
        and this module's own C(MI_LOGIN_CHECK_ARGS) and C(MI_PYTHON) are refused.
    type: dict
    default: {}
  timeout:
    description: Seconds the Job may run (its C(activeDeadlineSeconds)) and this module waits for it.
    type: int
    default: 300
  keep_job:
    description: Keep the finished Job and its pod (for C(kubectl logs)); they are deleted by default.
    type: bool
    default: false
extends_documentation_fragment:
  - csa_inabox.managed_identity.kubernetes
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
"""

EXAMPLES = r"""
- name: Tutorial Part 4 - log in to Azure SQL as webapp-sa's workload identity, from inside the cluster
  csa_inabox.managed_identity.k8s_login_check:
    cluster_name: aks-prod
    cluster_resource_group: rg-aks
    namespace: app-namespace
    service_account: webapp-sa
    image: myregistry.azurecr.io/csa-inabox/mi-login-check:1
    login_check:
      database_type: sql
      host: sql-prod.database.windows.net
      database: appdb
      expected_user: mi-webapp
"""

RETURN = r"""
job:
  description: Name of the Job that ran (or would run), and of its pod.
  returned: always
  type: dict
  sample: {"name": "mi-login-check-x7k2p", "pod": "mi-login-check-x7k2p-9q8ws", "namespace": "app-namespace"}
connected_as:
  description:
    - Who the database saw (the identity's user name, or its principal id for Cosmos DB). The other return values of
      M(csa_inabox.managed_identity.mi_login_check) (C(elapsed_ms), C(rows), C(driver), ...) are returned as well.
  returned: success, not in check mode
  type: str
login:
  description: The result of mi_login_check inside the pod, when it failed.
  returned: failure
  type: dict
"""

import json
import re
import time

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import kube
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown

MODULE = "ansible_collections.csa_inabox.managed_identity.plugins.modules.mi_login_check"
# The arguments travel in an environment variable (they hold no secret) and become the module's arguments file.
SCRIPT = 'f=$(mktemp) && printf "%s" "$MI_LOGIN_CHECK_ARGS" > "$f" && exec "$MI_PYTHON" -m ' + MODULE + ' "$f"'
POLL_S = 0.5
# What the Job's environment must get from this module and from the webhook only: the check proves what they give.
RESERVED_ENV = frozenset({"MI_LOGIN_CHECK_ARGS", "MI_PYTHON", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
                          "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"})
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")  # what the API server takes as a container env var name
IMAGE_MAX = 1024  # an image reference is a registry host, a repository path of at most 255 characters, a tag or digest


def job_body(params):
    args = dict(params["login_check"])
    args.setdefault("auth_source", "workload_identity")
    env = [{"name": "MI_LOGIN_CHECK_ARGS", "value": json.dumps({"ANSIBLE_MODULE_ARGS": args}, sort_keys=True)},
           {"name": "MI_PYTHON", "value": params["python"]}]
    env += [{"name": str(k), "value": str(v)} for k, v in sorted(params["environment"].items())]
    labels = {"app.kubernetes.io/name": "mi-login-check", "app.kubernetes.io/managed-by": "csa_inabox.managed_identity"}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "mi-login-check-", "namespace": params["namespace"], "labels": labels},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": params["timeout"], "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": dict(labels, **{"azure.workload.identity/use": "true"})},
                "spec": {"serviceAccountName": params["service_account"], "restartPolicy": "Never",
                         "containers": [{"name": "mi-login-check", "image": params["image"],
                                         "command": ["sh", "-c", SCRIPT], "env": env}]}}},
    }


def last_json_line(text):
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def wait(objects, namespace, name, timeout):
    """The Job once it has succeeded or failed, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = objects.get("Job", namespace, name) or {}
        status = job.get("status") or {}
        if status.get("succeeded") or status.get("failed"):
            return job
        time.sleep(POLL_S)
    return None


def main():
    spec = dict(
        namespace=dict(type="str", required=True),
        service_account=dict(type="str", required=True),
        login_check=dict(type="dict", required=True),
        image=dict(type="str", required=True),
        python=dict(type="str", default="python3"),
        environment=dict(type="dict", default={}),
        timeout=dict(type="int", default=300),
        keep_job=dict(type="bool", default=False),
    )
    spec.update(kube.KUBERNETES_ARGUMENT_SPEC)
    mod = MIModule(spec, mutually_exclusive=kube.KUBERNETES_MUTUALLY_EXCLUSIVE,
                   required_together=kube.KUBERNETES_REQUIRED_TOGETHER)
    params = mod.params
    problems = [kube.name_problem("namespace", params["namespace"], label=True),
                kube.name_problem("service_account", params["service_account"])]
    reserved = sorted(set(params["environment"]) & RESERVED_ENV)
    if reserved:
        problems.append("environment: %s are set by this module or by the workload identity webhook, not by the "
                        "caller" % ", ".join(reserved))
    if "client_id" in params["login_check"]:
        problems.append("login_check.client_id: leave it out, the check must use the client id the webhook injects "
                        "from the service account's annotation, as the application does")
    if not 10 <= params["timeout"] <= 3600:
        problems.append("timeout must be between 10 and 3600 seconds")
    image = params["image"]
    if not image or len(image) > IMAGE_MAX or has_control(image) or re.search(r"\s", image):
        problems.append("image %s is not an image reference: 1 to %d characters without spaces or control characters "
                        "(registry/repository:tag or @digest)" % (shown(image), IMAGE_MAX))
    problems += ["environment: %s is not an environment variable name (letters, digits, '_', '-' and '.', not "
                 "starting with a digit)" % shown(name) for name in sorted(params["environment"])
                 if not ENV_NAME.fullmatch(str(name))]
    if params["python"] is not None and (not params["python"].strip() or has_control(params["python"])):
        problems.append("python %s is not a command: a path or name without control characters" % shown(params["python"]))
    problems = [p for p in problems if p]
    if problems:
        mod.fail("; ".join(problems))
    namespace = params["namespace"]
    if mod.check_mode:
        mod.exit(False, job={"name": None, "pod": None, "namespace": namespace},
                 msg="would run mi_login_check as %s/%s" % (namespace, params["service_account"]))

    objects = kube.Objects(kube.api_client(mod))
    try:
        # Without its service account a Job never gets a pod (admission refuses it): say so now, not after the timeout.
        if objects.get("ServiceAccount", namespace, params["service_account"]) is None:
            mod.fail("service account %s/%s does not exist: create and annotate it first (k8s_workload_identity)"
                     % (namespace, params["service_account"]))
        job = objects.create("Job", namespace, job_body(params))
    except kube.KubeError as exc:
        mod.fail("could not create the login-check Job in namespace %s" % namespace, exc)
    name = job["metadata"]["name"]
    info = {"name": name, "pod": None, "namespace": namespace}
    try:
        finished = wait(objects, namespace, name, params["timeout"] + 30)
        pods = objects.list("Pod", namespace, "job-name=%s" % name)
        log = ""
        if pods:
            info["pod"] = pods[0]["metadata"]["name"]
            log = objects.log(namespace, info["pod"])
        if not params["keep_job"]:
            objects.delete("Job", namespace, name)
    except kube.KubeError as exc:
        mod.fail("the Kubernetes API server refused a request about Job %s/%s" % (namespace, name), exc, job=info)
    if finished is None:
        mod.fail("Job %s/%s did not finish within %s s" % (namespace, name, params["timeout"] + 30), job=info)
    result = last_json_line(log)
    if result is None:
        mod.fail("Job %s/%s printed no mi_login_check result; the end of its log: %s" % (
            namespace, name, (log or "(empty)")[-600:]), job=info)
    if result.get("failed"):
        extra = {"remedy": result["remedy"]} if result.get("remedy") else {}
        mod.fail("as service account %s/%s: %s" % (namespace, params["service_account"], result.get("msg")),
                 job=info, login=result, **extra)
    for key in ("invocation", "changed", "failed", "warnings", "deprecations"):
        result.pop(key, None)
    mod.exit(False, job=info, **result)


if __name__ == "__main__":
    main()
