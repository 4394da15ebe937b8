# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Clouds, token scopes and the one credential chain every module uses.

A cloud is a set of endpoints and audiences. The three national clouds are built in; any other cloud
(Azure Stack, a sovereign cloud not listed, or this project's local lab) is given as endpoints through
the ``cloud_endpoints`` option: the lab is reached exactly like that, with no test-only code path.

Scopes: AZURE_FACTS.md "Token scopes", from
https://learn.microsoft.com/azure/azure-sql/database/authentication-aad-configure and
https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-connect-with-managed-identity.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

AUTH_SOURCES = ("auto", "managed_identity", "environment", "workload_identity", "cli")

# The Entra server application of AKS clusters with Entra ID integration: the audience kubelogin asks tokens for, in
# every cloud. Source: https://learn.microsoft.com/azure/aks/kubelogin-authentication
AKS_SERVER_APP_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"


class Cloud:
    """Endpoints of one Azure cloud.

    ``resource_manager`` and ``authority_host`` are URLs; ``audiences`` maps a service name (``resource_manager``,
    ``sql``, ``postgres``, ``aks``) to the audience its tokens must carry (no ``/.default`` suffix).
    """

    def __init__(self, name, resource_manager, authority_host, audiences):
        self.name = name
        self.resource_manager = resource_manager.rstrip("/")
        self.authority_host = authority_host.rstrip("/")
        self.audiences = dict((k, v.rstrip("/")) for k, v in audiences.items())

    def scope(self, service):
        """The OAuth2 scope for ``service`` (``https://.../.default``); KeyError for an unknown service."""
        return self.audiences[service] + "/.default"


CLOUDS = {
    "AzureCloud": Cloud(
        "AzureCloud", "https://management.azure.com", "https://login.microsoftonline.com",
        {"resource_manager": "https://management.azure.com",
         "sql": "https://database.windows.net",
         "postgres": "https://ossrdbms-aad.database.windows.net", "aks": AKS_SERVER_APP_ID}),
    "AzureUSGovernment": Cloud(
        "AzureUSGovernment", "https://management.usgovcloudapi.net", "https://login.microsoftonline.us",
        {"resource_manager": "https://management.usgovcloudapi.net",
         "sql": "https://database.usgovcloudapi.net",
         "postgres": "https://ossrdbms-aad.database.usgovcloudapi.net", "aks": AKS_SERVER_APP_ID}),
    "AzureChinaCloud": Cloud(
        "AzureChinaCloud", "https://management.chinacloudapi.cn", "https://login.chinacloudapi.cn",
        {"resource_manager": "https://management.chinacloudapi.cn",
         "sql": "https://database.chinacloudapi.cn",
         "postgres": "https://ossrdbms-aad.database.chinacloudapi.cn", "aks": AKS_SERVER_APP_ID}),
}

# Names azure.azcollection and the Azure CLI also accept for the same clouds.
CLOUD_ALIASES = {"public": "AzureCloud", "azurepubliccloud": "AzureCloud", "usgovernment": "AzureUSGovernment",
                 "azureusgovernmentcloud": "AzureUSGovernment", "china": "AzureChinaCloud",
                 "azurechinacloud": "AzureChinaCloud"}

CUSTOM_ENDPOINT_KEYS = ("resource_manager", "authority_host", "resource_manager_audience", "sql_audience",
                        "postgres_audience", "aks_audience")


class AuthConfigError(ValueError):
    """The auth options are inconsistent; the message names the option to fix."""


def resolve_cloud(name, endpoints=None):
    """Return the :class:`Cloud` for ``name`` (``AzureCloud``, ``AzureUSGovernment``, ``AzureChinaCloud``, aliases,
    or ``custom`` with ``endpoints``).

    ``endpoints`` for ``custom``: ``resource_manager`` and ``authority_host`` (required), and optionally
    ``resource_manager_audience`` (default: the resource manager URL), ``sql_audience``, ``postgres_audience`` and
    ``aks_audience`` (default: the public cloud's). Raises :class:`AuthConfigError`.
    """
    name = (name or os.environ.get("AZURE_CLOUD_ENVIRONMENT") or "AzureCloud").strip()
    if name.lower() == "custom":
        endpoints = endpoints or {}
        unknown = sorted(set(endpoints) - set(CUSTOM_ENDPOINT_KEYS))
        if unknown:
            raise AuthConfigError("cloud_endpoints: unknown key(s) %s; expected some of %s"
                                  % (", ".join(unknown), ", ".join(CUSTOM_ENDPOINT_KEYS)))
        missing = [k for k in ("resource_manager", "authority_host") if not endpoints.get(k)]
        if missing:
            raise AuthConfigError("cloud_environment=custom needs cloud_endpoints.%s" % " and cloud_endpoints.".join(missing))
        for key in ("resource_manager", "authority_host"):
            if not endpoints[key].startswith("https://"):
                raise AuthConfigError("cloud_endpoints.%s must be an https:// URL (bearer tokens are never sent "
                                      "over plain http)" % key)
        public = CLOUDS["AzureCloud"].audiences
        return Cloud("custom", endpoints["resource_manager"], endpoints["authority_host"], {
            "resource_manager": endpoints.get("resource_manager_audience") or endpoints["resource_manager"],
            "sql": endpoints.get("sql_audience") or public["sql"],
            "postgres": endpoints.get("postgres_audience") or public["postgres"],
            "aks": endpoints.get("aks_audience") or AKS_SERVER_APP_ID,
        })
    if endpoints:
        raise AuthConfigError("cloud_endpoints is only used with cloud_environment=custom (got %s)" % name)
    canonical = CLOUD_ALIASES.get(name.lower(), name)
    for key, cloud in CLOUDS.items():
        if key.lower() == canonical.lower():
            return cloud
    raise AuthConfigError("cloud_environment: unknown cloud %r; use one of %s or custom"
                          % (name, ", ".join(sorted(CLOUDS))))


def _awx_secret_settings():
    """The service principal AWX's Azure credential and azure.azcollection inject (AZURE_SECRET, AZURE_TENANT),
    when azure-identity's own names are not set. Returns (tenant_id, client_id, secret) or None.

    AWX's "Microsoft Azure Resource Manager" credential injects AZURE_SUBSCRIPTION_ID (see
    :func:`subscription_id_from`), AZURE_CLOUD_ENVIRONMENT when set (see :func:`resolve_cloud`), and either
    AZURE_CLIENT_ID, AZURE_SECRET and AZURE_TENANT, or, without a client and tenant, AZURE_AD_USER and AZURE_PASSWORD:
    that user sign-in is refused here rather than ignored (azure-identity does not read those names, and Entra ID's
    mandatory MFA stops password sign-ins of users), so a job does not quietly run as another identity.
    """
    if os.environ.get("AZURE_AD_USER") and not (os.environ.get("AZURE_SECRET") or os.environ.get("AZURE_CLIENT_SECRET")):
        raise AuthConfigError("AZURE_AD_USER is set (AWX's Azure credential with a username and password): user "
                              "sign-in with a password is not supported; give the credential a service principal "
                              "(client id, secret, tenant) or run where a managed identity is available")
    if os.environ.get("AZURE_CLIENT_SECRET") or not os.environ.get("AZURE_SECRET"):
        return None
    tenant = os.environ.get("AZURE_TENANT") or os.environ.get("AZURE_TENANT_ID")
    client = os.environ.get("AZURE_CLIENT_ID")
    if not (tenant and client):
        raise AuthConfigError("AZURE_SECRET is set but AZURE_TENANT and AZURE_CLIENT_ID are not: set all three "
                              "(AWX's Azure credential does) or use azure-identity's AZURE_CLIENT_SECRET names")
    return tenant, client, os.environ["AZURE_SECRET"]


def build_credential(cloud, auth_source="auto", client_id=None, tenant_id=None):
    """Return an azure-identity ``TokenCredential`` for the control node or a workload.

    ``auth_source``: ``auto`` (AWX/azcollection service-principal variables when present, else
    ``DefaultAzureCredential``: environment, workload identity, managed identity, Azure CLI), or one of those
    credentials alone. ``client_id`` picks a user-assigned managed identity (or the workload identity's app);
    ``tenant_id`` overrides ``AZURE_TENANT_ID``. Secrets are read by azure-identity from the environment,
    never passed here. Raises :class:`AuthConfigError`; ImportError when azure-identity is missing.
    """
    from azure import identity  # pylint: disable=import-outside-toplevel

    if auth_source not in AUTH_SOURCES:
        raise AuthConfigError("auth_source must be one of %s" % ", ".join(AUTH_SOURCES))
    authority = cloud.authority_host
    # MSAL validates an authority by asking login.microsoftonline.com about it; a custom cloud's authority
    # (Azure Stack, an air-gapped cloud, the lab) is not known there, so its validation is turned off.
    msal = {"authority": authority}
    if cloud.name == "custom":
        msal["disable_instance_discovery"] = True
    if auth_source == "managed_identity":
        return identity.ManagedIdentityCredential(client_id=client_id) if client_id \
            else identity.ManagedIdentityCredential()
    if auth_source == "environment":
        return identity.EnvironmentCredential(**msal)
    if auth_source == "workload_identity":
        kwargs = dict(msal)
        if client_id:
            kwargs["client_id"] = client_id
        if tenant_id:
            kwargs["tenant_id"] = tenant_id
        return identity.WorkloadIdentityCredential(**kwargs)
    if auth_source == "cli":
        return identity.AzureCliCredential(tenant_id=tenant_id) if tenant_id else identity.AzureCliCredential()
    awx = _awx_secret_settings()
    if awx:
        return identity.ClientSecretCredential(tenant_id or awx[0], awx[1], awx[2], **msal)
    kwargs = dict(msal, exclude_interactive_browser_credential=True)
    if client_id:
        kwargs["managed_identity_client_id"] = client_id
        kwargs["workload_identity_client_id"] = client_id
    if tenant_id:
        kwargs["workload_identity_tenant_id"] = tenant_id
    return identity.DefaultAzureCredential(**kwargs)


def subscription_id_from(option):
    """The subscription: the option, else AZURE_SUBSCRIPTION_ID (set by AWX and azcollection users)."""
    return option or os.environ.get("AZURE_SUBSCRIPTION_ID")
