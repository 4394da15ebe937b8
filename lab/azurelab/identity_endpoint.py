"""Managed identity endpoint of the lab VMs (plain HTTP, like IMDS): one path prefix per VM.

A process "on" VM ``vm-orders`` sets ``AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:<port>/vms/vm-orders``;
azure-identity (and MSAL) then call ``GET {that}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...``
with ``Metadata: true``, optionally selecting an identity with ``client_id``, ``object_id`` (``principal_id`` is
accepted too) or ``msi_res_id``.
Source: https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token

Tokens are served only for user-assigned identities attached to that VM in the ARM double's *current* state and
still present in the directory (an identity deleted while attached leaves a dangling reference on the VM, as in
Azure, and is "not found" here). Answers follow IMDS: ``expires_in`` / ``expires_on`` as strings, 400
``invalid_request`` for a missing ``Metadata`` header, "Identity not found", and "Multiple user assigned identities
exist, ..." when several are attached and none is selected.

Not emulated: system-assigned identities, the App Service / Functions endpoint (``IDENTITY_ENDPOINT``), the rest of
IMDS (instance metadata, attested data), IMDS's rate limit (HTTP 429 above 20 requests/s), token caching by IMDS.
"""
from __future__ import annotations

import time
from typing import Callable

from .directory import Directory
from .entra import entra_error
from .tokens import Issuer, normalise_audience
from .web import JsonHandler

TOKEN_PATH = "metadata/identity/oauth2/token"


class IdentityEndpoint:
    """``vm_identities(vm)`` (``ArmState.vm_user_assigned_identities``) returns the VM's
    ``identity.userAssignedIdentities`` map (resource id -> ``{principalId, clientId}``), ``{}`` for a VM without
    identities, or ``None`` for an unknown VM.
    """

    def __init__(self, issuer: Issuer, directory: Directory, audiences: list[str],
                 vm_identities: Callable[[str], dict | None]):
        self.issuer = issuer
        self.directory = directory
        self.audiences = {normalise_audience(a) for a in audiences}
        self.vm_identities = vm_identities


def _bad_request(description: str) -> tuple[int, dict]:
    return 400, {"error": "invalid_request", "error_description": description}


class IdentityHandler(JsonHandler):
    def do_GET(self):
        parts = self.route.strip("/").split("/", 2)
        endpoint: IdentityEndpoint = self.app
        attached = endpoint.vm_identities(parts[1]) if len(parts) == 3 and parts[0] == "vms" else None
        if attached is None or parts[2] != TOKEN_PATH:
            return self.send_json(404, {"error": "not_found", "error_description": f"No route for {self.route}"})
        self.send_json(*self.token(endpoint, attached, self.query))

    def token(self, endpoint: IdentityEndpoint, attached: dict, query: dict[str, str]) -> tuple[int, dict]:
        if self.headers.get("Metadata", "").lower() != "true":
            return _bad_request("Required metadata header not specified")
        if not query.get("api-version"):
            return _bad_request("Required query variable 'api-version' is missing")
        resource = query.get("resource")
        if not resource:
            return _bad_request("Required audience parameter not specified")
        selectors = {
            "clientId": query.get("client_id"),
            "principalId": query.get("object_id") or query.get("principal_id"),
            "resourceId": query.get("msi_res_id"),
        }
        selectors = {k: v.lower() for k, v in selectors.items() if v}
        candidates = [{"resourceId": rid, **ids} for rid, ids in attached.items()]
        if selectors:
            candidates = [c for c in candidates if all((c.get(k) or "").lower() == v for k, v in selectors.items())]
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
