# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reaching a Kubernetes API server without a stored secret, and reading/writing objects as plain dicts.

An AKS cluster with Entra ID integration is reached the way kubelogin does it, minus the plugin: ARM's
``listClusterUserCredential`` gives the server URL and its CA (no secret: the user entry is an exec plugin), and the
module's own credential gets an Entra token for the AKS server application (``6dae42f8-...``). Source:
https://learn.microsoft.com/azure/aks/kubelogin-authentication. Any other cluster is reached through a kubeconfig
file (``kubeconfig``, ``context``), as kubernetes.core does.

Objects are read and written as the API server's JSON (dicts), never through the client's models, so that fields the
client does not know are kept when an object is replaced ("without touching the rest of the manifest").
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import atexit
import base64
import json
import os
import re
import tempfile

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import READ_ONLY_POST
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

# The doc fragment csa_inabox.managed_identity.kubernetes.
KUBERNETES_ARGUMENT_SPEC = dict(
    cluster_name=dict(type="str"),
    cluster_resource_group=dict(type="str"),
    kubeconfig=dict(type="path"),
    context=dict(type="str"),
)
KUBERNETES_MUTUALLY_EXCLUSIVE = [("cluster_name", "kubeconfig")]
KUBERNETES_REQUIRED_TOGETHER = [("cluster_name", "cluster_resource_group")]

# RFC 1123 label (namespaces) and subdomain (service accounts, deployments, jobs), as the API server validates them.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def name_problem(kind, value, label=False):
    """Why ``value`` cannot name a Kubernetes object of ``kind`` (``None`` when it can)."""
    pattern, limit = (DNS_LABEL, 63) if label else (DNS_SUBDOMAIN, 253)
    if not value or len(value) > limit or not pattern.fullmatch(value):
        return ("%s %s is not a valid Kubernetes name: lower-case letters, digits and '-'%s, starting and ending with "
                "a letter or digit, at most %d characters" % (kind, shown(value), "" if label else " or '.'", limit))
    return None


def _write_ca(pem):
    handle = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)  # pylint: disable=consider-using-with
    with handle:
        handle.write(pem)
    atexit.register(os.unlink, handle.name)
    return handle.name


def _aks_kubeconfig(mod):
    """The clusterUser kubeconfig ARM lists for the cluster (a dict); fails the module when it cannot be had."""
    import yaml  # pylint: disable=import-outside-toplevel

    params = mod.params
    try:
        result = mod.clients.aks.managed_clusters.list_cluster_user_credentials(
            params["cluster_resource_group"], params["cluster_name"], format="exec", **READ_ONLY_POST)
    except Exception as exc:  # the SDK's HttpResponseError family
        mod.fail("could not list the user kubeconfig of AKS cluster %s in %s"
                 % (params["cluster_name"], params["cluster_resource_group"]), exc)
    kubeconfigs = getattr(result, "kubeconfigs", None) or []
    if not kubeconfigs:
        mod.fail("ARM listed no kubeconfig for AKS cluster %s" % params["cluster_name"])
    value = kubeconfigs[0].value
    if isinstance(value, str):  # base64 text, when the SDK does not decode it
        value = base64.b64decode(value)
    return yaml.safe_load(bytes(value).decode("utf-8"))


def api_client(mod):
    """A ``kubernetes.client.ApiClient`` for the module's cluster options (see the module docstring)."""
    try:
        import kubernetes  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel

        mod.module.fail_json(msg=missing_required_lib("kubernetes"), exception=str(exc))
    params = mod.params
    if params.get("kubeconfig"):
        try:
            return kubernetes.config.new_client_from_config(config_file=params["kubeconfig"],
                                                            context=params.get("context"))
        except Exception as exc:  # ConfigException, IOError, YAML errors
            mod.fail("could not load kubeconfig %s" % params["kubeconfig"], exc)
    if not params.get("cluster_name"):
        mod.fail("give the cluster as cluster_name and cluster_resource_group (AKS), or as kubeconfig")
    config = _aks_kubeconfig(mod)
    clusters = config.get("clusters") or []
    cluster = (clusters[0].get("cluster") or {}) if clusters else {}
    server = cluster.get("server") or ""
    if not server.startswith("https://"):
        mod.fail("the kubeconfig of AKS cluster %s names no https API server (got %r)" % (params["cluster_name"], server))
    configuration = kubernetes.client.Configuration()
    configuration.host = server
    if cluster.get("certificate-authority-data"):
        configuration.ssl_ca_cert = _write_ca(base64.b64decode(cluster["certificate-authority-data"]))
    scope = mod.cloud.scope("aks")

    def bearer(conf):
        conf.api_key["authorization"] = mod.credential.get_token(scope).token  # azure-identity caches it

    bearer(configuration)
    configuration.api_key_prefix["authorization"] = "Bearer"
    configuration.refresh_api_key_hook = bearer
    return kubernetes.client.ApiClient(configuration)


class KubeError(Exception):
    """An API server's refusal: ``status`` (HTTP), ``reason`` (``NotFound``, ``Conflict``, ...) and its ``message``."""

    def __init__(self, status, reason, message):
        super().__init__("%s %s%s" % (status, reason, ": " + message if message else ""))
        self.status = status
        self.reason = reason
        self.message = message


def _kube_error(status, reason, text):
    try:
        answer = json.loads(text or "{}")
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    return KubeError(status, answer.get("reason") or reason, answer.get("message") or "")


class Objects:
    """Namespaced objects as JSON dicts: ``get`` (``None`` when absent), ``list``, ``create``, ``replace``,
    ``delete`` and a pod's ``log``; refusals raise :class:`KubeError`.

    ``path(kind, namespace, name)`` knows ServiceAccounts, Pods, ConfigMaps, Deployments, StatefulSets, DaemonSets,
    Jobs and CronJobs (never Secrets). Works with the kubernetes client's two generations of ``ApiClient``
    (``param_serialize`` + ``call_api`` from v35, ``call_api`` before).
    """

    PATHS = {"ServiceAccount": "/api/v1/namespaces/%s/serviceaccounts", "Pod": "/api/v1/namespaces/%s/pods",
             "ConfigMap": "/api/v1/namespaces/%s/configmaps",
             "Deployment": "/apis/apps/v1/namespaces/%s/deployments",
             "StatefulSet": "/apis/apps/v1/namespaces/%s/statefulsets",
             "DaemonSet": "/apis/apps/v1/namespaces/%s/daemonsets", "Job": "/apis/batch/v1/namespaces/%s/jobs",
             "CronJob": "/apis/batch/v1/namespaces/%s/cronjobs"}

    def __init__(self, client):
        self.client = client

    def path(self, kind, namespace, name=None):
        base = self.PATHS[kind] % namespace
        return base + "/" + name if name else base

    def request(self, method, path, body=None, query=None, accept="application/json"):
        """The answer's body as text; :class:`KubeError` for a status outside 2xx."""
        from kubernetes.client.exceptions import ApiException  # pylint: disable=import-outside-toplevel

        headers = {"Accept": accept, "Content-Type": "application/json"}
        params = list((query or {}).items())
        client = self.client
        if hasattr(client, "param_serialize"):
            response = client.call_api(*client.param_serialize(
                method=method, resource_path=path, query_params=params, header_params=headers, body=body,
                auth_settings=["BearerToken"]))
            response.read()
            text = (response.data or b"").decode("utf-8", "replace")
            if not 200 <= response.status < 300:
                raise _kube_error(response.status, response.reason, text)
            return text
        try:
            response = client.call_api(path, method, query_params=params, header_params=headers, body=body,
                                       auth_settings=["BearerToken"], _preload_content=False,
                                       _return_http_data_only=True)
        except ApiException as exc:
            raise _kube_error(exc.status, exc.reason, exc.body)
        return response.data.decode("utf-8", "replace")

    def _json(self, method, path, body=None, query=None):
        text = self.request(method, path, body, query)
        return json.loads(text) if text else None

    def get(self, kind, namespace, name):
        try:
            return self._json("GET", self.path(kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind, namespace, label_selector):
        return self._json("GET", self.path(kind, namespace), query={"labelSelector": label_selector})["items"]

    def create(self, kind, namespace, body):
        return self._json("POST", self.path(kind, namespace), body)

    def replace(self, kind, namespace, body):
        """PUT ``body`` as read (its ``metadata.resourceVersion`` makes a concurrent change a 409 Conflict)."""
        return self._json("PUT", self.path(kind, namespace, body["metadata"]["name"]), body)

    def delete(self, kind, namespace, name):
        return self._json("DELETE", self.path(kind, namespace, name), {"propagationPolicy": "Background"})

    def log(self, namespace, pod, limit_bytes=1 << 20):
        """The pod's log (text), at most ``limit_bytes``."""
        return self.request("GET", self.path("Pod", namespace, pod) + "/log", query={"limitBytes": limit_bytes},
                            accept="*/*")
