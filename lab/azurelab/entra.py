"""Entra ID double (HTTPS): OpenID discovery, the signing keys and the v2.0 token endpoint for one tenant.

Routes (``{tenant}`` is the lab tenant id):

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``GET /{tenant}/.well-known/openid-configuration``
* ``GET /{tenant}/discovery/v2.0/keys`` - the issuer's JWK Set
* ``POST /{tenant}/oauth2/v2.0/token`` - ``grant_type=client_credentials`` with ``client_secret``, one
  ``<resource>/.default`` scope; the resource must be one of the topology's ``audiences``.

Clients: ``ClientSecretCredential`` / ``EnvironmentCredential`` with ``AZURE_AUTHORITY_HOST=https://127.0.0.1:<port>``
and ``disable_instance_discovery=True``: MSAL sends instance discovery for hosts it does not know to
``login.microsoftonline.com`` (never to the authority itself), and the lab has no route there.

Not emulated: other grant types (authorization code, device code, client assertions, refresh tokens), v1.0
endpoints (the v1 discovery path serves the v2.0 document), certificates as client credentials, conditional
access, ``/common`` and ``/organizations``, throttling. Error bodies follow Entra's shape
(``error``, ``error_description`` starting with the AADSTS code, ``error_codes``, ``timestamp``, ``trace_id``,
``correlation_id``).
"""
from __future__ import annotations

import datetime
import hmac
import uuid

from .directory import Directory
from .tokens import TOKEN_LIFETIME_S, Issuer, normalise_audience
from .web import JsonHandler


class Entra:
    """The state the handler needs: tenant, issuer, directory, client secrets and the audiences the tenant knows."""

    def __init__(self, issuer: Issuer, directory: Directory, authority_host: str, audiences: list[str],
                 client_secrets: dict[str, str]):
        """``client_secrets`` maps a client id to its secret (from ``paths().secrets``, never logged)."""
        self.issuer = issuer
        self.directory = directory
        self.authority_host = authority_host.rstrip("/")
        self.audiences = {normalise_audience(a) for a in audiences}
        self._secrets = {k.lower(): v for k, v in client_secrets.items()}

    def openid_configuration(self) -> dict:
        base = f"{self.authority_host}/{self.issuer.tenant_id}"
        return {
            "issuer": self.issuer.issuer,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "NA",
            "cloud_instance_name": "lab.local",
        }

    def secret_matches(self, client_id: str, secret: str) -> bool:
        expected = self._secrets.get(client_id.lower())
        return expected is not None and hmac.compare_digest(expected.encode(), secret.encode())


def entra_error(status: int, error: str, code: int, description: str) -> tuple[int, dict]:
    now = datetime.datetime.now(datetime.timezone.utc)
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    text = (f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {now:%Y-%m-%d %H:%M:%SZ}")
    return status, {"error": error, "error_description": text, "error_codes": [code],
                    "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}", "trace_id": trace, "correlation_id": correlation}


class EntraHandler(JsonHandler):
    def _tenant_and_rest(self) -> tuple[str, str]:
        tenant, _slash, rest = self.route.lstrip("/").partition("/")
        return tenant, rest

    def _unknown_tenant(self, tenant: str) -> tuple[int, dict]:
        return entra_error(400, "invalid_tenant", 90002,
                           f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                           "signing into the correct cloud.")

    def do_GET(self):
        entra: Entra = self.app
        tenant, rest = self._tenant_and_rest()
        if rest in ("v2.0/.well-known/openid-configuration", ".well-known/openid-configuration",
                    "discovery/v2.0/keys"):
            if tenant.lower() != entra.issuer.tenant_id:
                return self.send_json(*self._unknown_tenant(tenant))
            body = entra.issuer.jwks() if rest.startswith("discovery") else entra.openid_configuration()
            return self.send_json(200, body)
        self.send_json(404, {"error": "not_found", "error_description": f"No route for GET {self.route}"})

    def do_POST(self):
        entra: Entra = self.app
        tenant, rest = self._tenant_and_rest()
        if rest != "oauth2/v2.0/token":
            self.read_body()
            return self.send_json(404, {"error": "not_found", "error_description": f"No route for POST {self.route}"})
        form = self.read_form()
        if tenant.lower() != entra.issuer.tenant_id:
            return self.send_json(*self._unknown_tenant(tenant))
        self.send_json(*self.token(entra, form))

    def token(self, entra: Entra, form: dict[str, str]) -> tuple[int, dict]:
        grant = form.get("grant_type", "")
        if grant != "client_credentials":
            return entra_error(400, "unsupported_grant_type", 70003,
                               f"The app requested an unsupported grant type '{grant}'.")
        client_id = form.get("client_id", "")
        principal = entra.directory.by_client_id(client_id) if client_id else None
        if principal is None:
            return entra_error(400, "unauthorized_client", 700016,
                               f"Application with identifier '{client_id}' was not found in the directory "
                               f"'{entra.issuer.tenant_id}'. This can happen if the application has not been installed "
                               "by the administrator of the tenant or consented to by any user in the tenant. You may "
                               "have sent your authentication request to the wrong tenant.")
        if "client_secret" not in form:
            return entra_error(401, "invalid_client", 7000218,
                               "The request body must contain the following parameter: 'client_assertion' or "
                               "'client_secret'.")
        if not entra.secret_matches(client_id, form["client_secret"]):
            return entra_error(401, "invalid_client", 7000215,
                               "Invalid client secret provided. Ensure the secret being sent in the request is the "
                               "client secret value, not the client secret ID, for a secret added to app "
                               f"'{client_id}'.")
        scopes = form.get("scope", "").split()
        resources = [s for s in scopes if s.endswith("/.default")]
        if len(resources) != 1:
            return entra_error(400, "invalid_scope", 1002012,
                               f"The provided value for scope {form.get('scope', '')} is not valid. Client "
                               "credential flows must have a scope value with /.default suffixed to the resource "
                               "identifier (application ID URI).")
        audience = normalise_audience(resources[0])
        if audience not in entra.audiences:
            return entra_error(400, "invalid_resource", 500011,
                               f"The resource principal named {audience} was not found in the tenant named "
                               f"{entra.issuer.tenant_id}. This can happen if the application has not been "
                               "installed by the administrator of the tenant or consented to by any user in the "
                               "tenant. You might have sent your authentication request to the wrong tenant.")
        token, _expires_on = entra.issuer.issue(principal, audience)
        return 200, {"token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S,
                     "ext_expires_in": TOKEN_LIFETIME_S, "access_token": token}
