"""Managed identity endpoints of the lab's workloads (plain HTTP): one path prefix per workload, ``/{kind}/{name}``.

``kind`` is ``vms`` (virtual machines), ``vmss`` (VM scale sets), ``sites`` (App Service apps) or ``containerapps``
(Container Apps); ``name`` the workload's name in the ARM double.

IMDS style, for ``vms`` and ``vmss`` (the platforms that have IMDS): a process "on" VM ``vm-orders`` sets
``AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:<port>/vms/vm-orders``; azure-identity (and MSAL) then call
``GET {that}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`` with ``Metadata: true``, optionally
selecting an identity with ``client_id``, ``object_id`` (``principal_id`` is accepted too) or ``msi_res_id``.
Source: https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token

App Service style, for every kind (App Service and Container Apps use it; the VMs keep it for the lab's older tests):
``/{kind}/{name}/msi/token``. A process sets ``IDENTITY_ENDPOINT`` to that URL and ``IDENTITY_HEADER`` to the
workload's secret from the lab secrets file's ``identity_headers`` (key: the VM's name for ``vms``, else
``{kind}/{name}``, e.g. ``sites/app-storefront``): ``GET ?api-version=2019-08-01&resource=...`` with header
``X-IDENTITY-HEADER``, selecting an identity with ``client_id``, ``principal_id`` or ``mi_res_id``; the answer carries
``expires_on`` in epoch seconds. With several user-assigned identities attached and no selector it refuses (400, the
message says "No default identity is assigned"), as App Service does: an app must name one (``AZURE_CLIENT_ID``).
Source: https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference and
https://learn.microsoft.com/azure/container-apps/managed-identity#rest-endpoint-reference

Tokens are served only for user-assigned identities attached to that workload in the ARM double's *current* state
and still present in the directory (an identity deleted while attached leaves a dangling reference on the workload,
as in Azure, and is "not found" here). IMDS answers follow IMDS: ``expires_in`` / ``expires_on`` as strings, 400
``invalid_request`` for a missing ``Metadata`` header, "Identity not found", and "Multiple user assigned identities
exist, ..." when several are attached and none is selected.

Not emulated: system-assigned identities (App Service and Container Apps use the system-assigned identity when no
selector is given; the lab, which has none, serves the only user-assigned identity then), the rest of IMDS (instance
metadata, attested data), IMDS's rate limit (HTTP 429 above 20 requests/s), token caching by the platform, App
Service's and Container Apps' exact error bodies (the lab answers ``{"statusCode", "message"}``).
"""
from __future__ import annotations

import hmac
import time
from typing import Callable

from .arm import WORKLOAD_TYPES
from .directory import Directory
from .entra import entra_error
from .tokens import Issuer, normalise_audience
from .web import JsonHandler

TOKEN_PATH = "metadata/identity/oauth2/token"
APP_SERVICE_PATH = "msi/token"
WORKLOAD_KINDS = tuple(WORKLOAD_TYPES)
IMDS_KINDS = ("vms", "vmss")


class IdentityEndpoint:
    """``workload_identities(kind, name)`` (``ArmState.workload_user_assigned_identities``) returns the workload's
    ``identity.userAssignedIdentities`` map (resource id -> ``{principalId, clientId}``), ``{}`` for a workload
    without identities, or ``None`` for an unknown one. ``identity_headers`` maps a workload (see the module
    docstring for the keys) to its App Service style secret.
    """

    def __init__(self, issuer: Issuer, directory: Directory, audiences: list[str],
                 workload_identities: Callable[[str, str], dict | None],
                 identity_headers: dict[str, str] | None = None):
        self.issuer = issuer
        self.directory = directory
        self.audiences = {normalise_audience(a) for a in audiences}
        self.workload_identities = workload_identities
        self.identity_headers = identity_headers or {}


def identity_header_key(kind: str, name: str) -> str:
    """The key of a workload's secret in the lab secrets file's ``identity_headers``: a VM's name, else
    ``{kind}/{name}`` (``vmss/...``, ``sites/...``, ``containerapps/...``), so that names of two kinds cannot clash."""
    return name if kind == "vms" else f"{kind}/{name}"


def _bad_request(description: str) -> tuple[int, dict]:
    return 400, {"error": "invalid_request", "error_description": description}


class IdentityHandler(JsonHandler):
    def do_GET(self):
        parts = self.route.strip("/").split("/", 2)
        endpoint: IdentityEndpoint = self.app
        kind = parts[0] if len(parts) == 3 and parts[0] in WORKLOAD_KINDS else None
        attached = endpoint.workload_identities(kind, parts[1]) if kind else None
        styles = (TOKEN_PATH, APP_SERVICE_PATH) if kind in IMDS_KINDS else (APP_SERVICE_PATH,)
        if attached is None or parts[2] not in styles:
            return self.send_json(404, {"error": "not_found", "error_description": f"No route for {self.route}"})
        if parts[2] == APP_SERVICE_PATH:
            expected = endpoint.identity_headers.get(identity_header_key(kind, parts[1]), "")
            given = self.headers.get("X-IDENTITY-HEADER", "")
            if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
                return self.send_json(401, {"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is "
                                                                          "missing or wrong"})
            status, body = self.token(endpoint, attached, self.query, app_service=True)
        elif self.headers.get("Metadata", "").lower() != "true":
            status, body = _bad_request("Required metadata header not specified")
        else:
            status, body = self.token(endpoint, attached, self.query, app_service=False)
        if parts[2] == APP_SERVICE_PATH and status == 200:
            body = {k: body[k] for k in ("access_token", "expires_on", "resource", "token_type", "client_id")}
        self.send_json(status, body)

    def token(self, endpoint: IdentityEndpoint, attached: dict, query: dict[str, str],
              app_service: bool) -> tuple[int, dict]:
        if not query.get("api-version"):
            return _bad_request("Required query variable 'api-version' is missing")
        resource = query.get("resource")
        if not resource:
            return _bad_request("Required audience parameter not specified")
        selectors = {
            "clientId": query.get("client_id"),
            "principalId": query.get("object_id") or query.get("principal_id"),
            "resourceId": query.get("msi_res_id") or query.get("mi_res_id"),
        }
        selectors = {k: v.lower() for k, v in selectors.items() if v}
        candidates = [{"resourceId": rid, **ids} for rid, ids in attached.items()]
        if selectors:
            candidates = [c for c in candidates if all((c.get(k) or "").lower() == v for k, v in selectors.items())]
        elif len(candidates) > 1 and app_service:
            return 400, {"statusCode": 400, "message": "No default identity is assigned to this resource: several "
                                                       "user-assigned identities are; select one with client_id, "
                                                       "principal_id or mi_res_id."}
        elif len(candidates) > 1:
            return _bad_request("Multiple user assigned identities exist, please specify the clientId / resourceId "
                                "of the identity in the token request")
        principal = endpoint.directory.by_object_id(candidates[0]["principalId"]) if candidates else None
        if principal is None:
            return _bad_request("Identity not found")
        audience = normalise_audience(resource)
        if audience not in endpoint.audiences:
            return entra_error(400, "invalid_resource", 500011,
                               f"The resource principal named {resource} was not found in the tenant named "
                               f"{endpoint.issuer.tenant_id}.")
        token, expires_on = endpoint.issuer.issue(principal, audience)
        now = int(time.time())
        return 200, {"access_token": token, "client_id": principal["client_id"],
                     "expires_in": str(expires_on - now), "expires_on": str(expires_on),
                     "ext_expires_in": str(expires_on - now), "not_before": str(now),
                     "resource": resource, "token_type": "Bearer"}
