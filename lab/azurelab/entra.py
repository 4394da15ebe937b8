"""Entra ID double (HTTPS): OpenID discovery, the signing keys and the v2.0 token endpoint for one tenant.

Routes (``{tenant}`` is the lab tenant id):

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``GET /{tenant}/.well-known/openid-configuration``
* ``GET /{tenant}/discovery/v2.0/keys`` - the issuer's JWK Set
* ``POST /{tenant}/oauth2/v2.0/token`` - ``grant_type=client_credentials`` with ``client_secret``, or with a
  ``client_assertion`` (``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``) for a
  managed identity's client id: workload identity federation. One ``<resource>/.default`` scope; the resource must be
  one of the topology's ``audiences``.

Workload identity federation, as Entra does it: the assertion's ``iss``, ``sub`` and ``aud`` must equal, exactly (case
and trailing slash included), the issuer, subject and audience of one of the identity's federated credentials (held
by the ARM double), else ``AADSTS70021``. The assertion must be signed by a key of its issuer, found the way Entra finds
it: ``<iss>/.well-known/openid-configuration``, then its ``jwks_uri``, over HTTPS (the lab CA trusted), else
``AADSTS700027``; and be within its validity window (60 s leeway), else ``AADSTS700024``.

Clients: ``ClientSecretCredential`` / ``EnvironmentCredential`` with ``AZURE_AUTHORITY_HOST=https://127.0.0.1:<port>``
and ``disable_instance_discovery=True``: MSAL sends instance discovery for hosts it does not know to
``login.microsoftonline.com`` (never to the authority itself), and the lab has no route there.

Not emulated: other grant types (authorization code, device code, refresh tokens), client assertions for
applications (certificates) rather than managed identities, caching rules of issuer keys (fetched at every exchange), v1.0
endpoints (the v1 discovery path serves the v2.0 document), certificates as client credentials, conditional
access, ``/common`` and ``/organizations``, throttling. Error bodies follow Entra's shape
(``error``, ``error_description`` starting with the AADSTS code, ``error_codes``, ``timestamp``, ``trace_id``,
``correlation_id``).
"""
from __future__ import annotations

import datetime
import hmac
import json
import ssl
import time
import urllib.request
import uuid
from typing import Callable

import jwt

from .directory import Directory
from .tokens import TOKEN_LIFETIME_S, Issuer, normalise_audience
from .web import JsonHandler


class Entra:
    """The state the handler needs: tenant, issuer, directory, client secrets and the audiences the tenant knows."""

    def __init__(self, issuer: Issuer, directory: Directory, authority_host: str, audiences: list[str],
                 client_secrets: dict[str, str],
                 federated_credentials: Callable[[str], list[dict]] = lambda client_id: [],
                 issuer_tls: ssl.SSLContext | None = None):
        """``client_secrets`` maps a client id to its secret (from ``paths().secrets``, never logged).
        ``federated_credentials(client_id)`` gives a managed identity's federated credentials
        (``[{"issuer", "subject", "audiences"}]``, :meth:`azurelab.arm.ArmState.federated_credentials`);
        ``issuer_tls`` is how the issuers' OIDC documents are fetched (default: the system's trust store)."""
        self.federated_credentials = federated_credentials
        self.issuer_tls = issuer_tls or ssl.create_default_context()
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

    def issuer_keys(self, issuer: str) -> jwt.PyJWKSet:
        """The signing keys an OIDC issuer publishes (its discovery document's ``jwks_uri``); raises ``OSError`` or
        ``ValueError`` when they cannot be had."""
        def fetch(url: str) -> dict:
            with urllib.request.urlopen(url, context=self.issuer_tls, timeout=5) as answer:  # noqa: S310 - https only
                return json.loads(answer.read())
        if not issuer.startswith("https://"):
            raise ValueError("the issuer is not an https URL")
        discovery = fetch(issuer.rstrip("/") + "/.well-known/openid-configuration")
        jwks_uri = discovery.get("jwks_uri", "")
        if not jwks_uri.startswith("https://"):
            raise ValueError("the issuer's discovery document has no https jwks_uri")
        return jwt.PyJWKSet.from_dict(fetch(jwks_uri))

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
        if "client_assertion" in form:
            refused = self.federated(entra, principal, form)
            if refused:
                return refused
        elif "client_secret" not in form:
            return entra_error(401, "invalid_client", 7000218,
                               "The request body must contain the following parameter: 'client_assertion' or "
                               "'client_secret'.")
        elif not entra.secret_matches(client_id, form["client_secret"]):
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

    @staticmethod
    def federated(entra: Entra, principal: dict, form: dict[str, str]) -> tuple[int, dict] | None:
        """``None`` when the client assertion is accepted for ``principal`` (a managed identity), else the error."""
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return entra_error(400, "invalid_request", 50027,
                               "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.")
        assertion = form["client_assertion"]
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return entra_error(400, "invalid_request", 50027, "Invalid JWT token. The token is malformed.")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        matched = any(fic["issuer"] == claims.get("iss") and fic["subject"] == claims.get("sub")
                      and any(a in fic["audiences"] for a in audiences)
                      for fic in entra.federated_credentials(principal["client_id"]))
        if not matched:
            return entra_error(400, "invalid_client", 70021,
                               "No matching federated identity record found for presented assertion. Assertion "
                               f"Issuer: '{claims.get('iss')}'. Assertion Subject: '{claims.get('sub')}'. Assertion "
                               f"Audience: '{audience if not isinstance(audience, list) else ','.join(audience)}'. "
                               "https://learn.microsoft.com/entra/workload-id/workload-identity-federation")
        try:
            keys = entra.issuer_keys(claims["iss"])
            key = keys[jwt.get_unverified_header(assertion)["kid"]]
            jwt.decode(assertion, key.key, algorithms=["RS256"], audience=audiences, issuer=claims["iss"],
                       options={"verify_exp": False, "verify_nbf": False})
        except (OSError, ValueError, KeyError, jwt.PyJWTError):
            return entra_error(401, "invalid_client", 700027,
                               "Client assertion failed signature validation, or the keys of its issuer "
                               f"'{claims.get('iss')}' could not be read.")
        now = time.time()
        if not claims.get("exp") or claims["exp"] + 60 < now or claims.get("nbf", 0) - 60 > now:
            valid_from = datetime.datetime.fromtimestamp(claims.get("nbf", 0), datetime.timezone.utc)
            expiry = datetime.datetime.fromtimestamp(claims.get("exp") or 0, datetime.timezone.utc)
            return entra_error(400, "invalid_client", 700024,
                               f"Client assertion is not within its valid time range. Current time: "
                               f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S}Z, assertion valid "
                               f"from {valid_from:%Y-%m-%dT%H:%M:%S}Z, expiry time of assertion "
                               f"{expiry:%Y-%m-%dT%H:%M:%S}Z.")
        return None
