# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Azure Resource Manager clients, built lazily with one retry policy, and resource id helpers.

Only the SDK a module uses is imported (azure.azcollection imports ~45 for every module).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown

# azure-core's defaults retry 429/5xx with exponential backoff and honour Retry-After; we keep them but cap the wait
# so a throttled fleet run slows down instead of sleeping for minutes on one call.
RETRY_TOTAL = 8
RETRY_BACKOFF_FACTOR = 0.8
RETRY_BACKOFF_MAX_S = 60
# The methods sent again after a connection reset or a lost answer, and on 408/429/502 without Retry-After.
# azure-core retries HEAD, GET, PUT, DELETE, OPTIONS and TRACE only, so a PATCH whose connection was reset failed the
# module. Every PATCH this collection sends sets absolute values (identity maps, authConfig, disableLocalAuth, tags,
# app settings, container env), so sending it twice changes nothing; POST stays out (regenerateKey is not idempotent).
RETRY_METHODS = frozenset(["HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"])
# Keyword arguments for an SDK call of a POST action that only reads (listKeys, listClusterUserCredential,
# config/appsettings/list): sending it again is harmless, so it is retried like a GET.
READ_ONLY_POST = {"retry_on_methods": RETRY_METHODS | frozenset(["POST"])}

_CLIENTS = {
    # name: (module, class)
    "msi": ("azure.mgmt.msi", "ManagedServiceIdentityClient"),
    "compute": ("azure.mgmt.compute", "ComputeManagementClient"),
    "postgres": ("azure.mgmt.postgresqlflexibleservers", "PostgreSQLManagementClient"),
    "sql": ("azure.mgmt.sql", "SqlManagementClient"),
    "cosmos": ("azure.mgmt.cosmosdb", "CosmosDBManagementClient"),
    "aks": ("azure.mgmt.containerservice", "ContainerServiceClient"),
    "web": ("azure.mgmt.web", "WebSiteManagementClient"),
    "container_apps": ("azure.mgmt.appcontainers", "ContainerAppsAPIClient"),
    "authorization": ("azure.mgmt.authorization", "AuthorizationManagementClient"),
    "locks": ("azure.mgmt.resource.locks", "ManagementLockClient"),
}

_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourcegroups/(?P<group>[^/]+)"
    r"/providers/(?P<namespace>[^/]+)/(?P<type>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$", re.IGNORECASE)


class ArmClients:
    """Lazily built management clients for one credential, cloud and subscription.

    ``clients.msi``, ``clients.compute``, ``clients.postgres``, ``clients.sql``, ``clients.cosmos``, ``clients.aks``,
    ``clients.web``, ``clients.container_apps``, ``clients.authorization``, ``clients.locks``: each is created on first use and reused.
    """

    def __init__(self, credential, cloud, subscription_id):
        self._credential = credential
        self._cloud = cloud
        self._subscription_id = subscription_id
        self._built = {}

    def __getattr__(self, name):
        if name.startswith("_") or name not in _CLIENTS:
            raise AttributeError(name)
        if name not in self._built:
            self._built[name] = self._build(*_CLIENTS[name])
        return self._built[name]

    def _build(self, module_name, class_name):
        import importlib  # pylint: disable=import-outside-toplevel

        client_class = getattr(importlib.import_module(module_name), class_name)
        return client_class(
            credential=self._credential,
            subscription_id=self._subscription_id,
            base_url=self._cloud.resource_manager,
            credential_scopes=[self._cloud.scope("resource_manager")],
            retry_policy=retry_policy(),
        )


def retry_policy():
    """The azure-core ``RetryPolicy`` of every client: azure-core's (429/5xx with exponential backoff, Retry-After
    honoured, connection errors retried) with :data:`RETRY_TOTAL` attempts, waits capped at
    :data:`RETRY_BACKOFF_MAX_S` seconds, and :data:`RETRY_METHODS` (PATCH added) as the methods retried, unless a call passes its own
    (:data:`READ_ONLY_POST`)."""
    from azure.core.pipeline.policies import RetryPolicy  # pylint: disable=import-outside-toplevel

    class ArmRetryPolicy(RetryPolicy):
        def configure_retries(self, options):
            chosen = "retry_on_methods" in options  # a call's own choice (READ_ONLY_POST) wins
            settings = super(ArmRetryPolicy, self).configure_retries(options)
            if not chosen:
                settings["methods"] = RETRY_METHODS
            return settings

    return ArmRetryPolicy(retry_total=RETRY_TOTAL, retry_backoff_factor=RETRY_BACKOFF_FACTOR,
                          retry_backoff_max=RETRY_BACKOFF_MAX_S)


def resource_id(subscription_id, resource_group, namespace, resource_type, name):
    """``/subscriptions/{s}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}``."""
    return "/subscriptions/%s/resourceGroups/%s/providers/%s/%s/%s" % (
        subscription_id, resource_group, namespace, resource_type, name)


# Characters no ARM resource name may hold (Azure's naming rules: "can't use <, >, %, &, \\, ?, /"), besides control
# characters.
NOT_IN_NAMES = set("<>%&\\?/")
# Resource group names: 1 to 90 letters (any alphabet), digits, '-', '_', '.', '(' or ')', not ending in '.'.
_RESOURCE_GROUP = re.compile(r"[-\w.()]{0,89}[-\w()]")


def resource_name_problem(option, value):
    """Why ``value`` cannot be an ARM resource name in a URL path (``None`` when it can): empty, ``.``, ``..``, one of
    ``< > % & \\ ? /`` or a control character, surrounding spaces, or over 260 characters."""
    if not value or value in (".", "..") or NOT_IN_NAMES & set(value) or has_control(value) or len(value) > 260 \
            or value != value.strip():
        return ("%s %s is not a resource name (1 to 260 characters, none of < > %% & \\ ? / or a control character, not "
                "'.' or '..')" % (option, shown(value)))
    return None


def resource_group_problem(option, value):
    """Why ``value`` cannot be a resource group name, or ``None``."""
    if not isinstance(value, str) or not _RESOURCE_GROUP.fullmatch(value):
        return ("%s %s is not a resource group name: 1 to 90 letters, digits, '-', '_', '.', '(' or ')', not ending in "
                "'.'" % (option, shown(value)))
    return None


def parse_resource_id(value):
    """Split an ARM resource id into a dict (subscription, group, namespace, type, name, rest); None if not one."""
    match = _RESOURCE_ID.fullmatch(value or "")
    return match.groupdict() if match else None


def as_dict(model):
    """An SDK model (or None) as a plain dict in REST (camelCase) shape, read-only properties included.

    Both SDK generations are handled: msrest models (``serialize``) and the newer dict-like ones (``as_dict``).
    """
    if model is None or isinstance(model, dict):
        return model
    if hasattr(model, "serialize"):
        return model.serialize(keep_readonly=True)
    return model.as_dict()
