"""Workload identity federation in the Entra double (issue 5, first part): azure-identity's WorkloadIdentityCredential
exchanges a service-account token signed by an OIDC issuer (here a small HTTPS issuer run by the test, as an AKS
cluster's would be) for a managed identity's token, only when a federated credential matches exactly."""
from __future__ import annotations

import base64
import json
import time
import uuid
from http.server import BaseHTTPRequestHandler

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import WorkloadIdentityCredential
from azure.mgmt.msi import ManagedServiceIdentityClient
from cryptography.hazmat.primitives.asymmetric import rsa

from azurelab import ca
from azurelab.web import LabHTTPServer
from labrunner import free_base

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

RG = "rg-lab-apps"
SUBJECT = "system:serviceaccount:app-ns:app-sa"
AUDIENCE = "api://AzureADTokenExchange"
ARM_SCOPE = "https://management.azure.com/.default"
KID = "cluster-key-1"


class OidcIssuer:
    """An OIDC issuer as AKS publishes one: a discovery document and a JWK Set, over HTTPS."""

    def __init__(self, paths):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_base(1) + 1
        self.url = f"https://localhost:{self.port}/oidc/cluster-1/"  # trailing slash, as AKS's issuer URL has
        numbers = self.key.public_key().public_numbers()

        def b64(value: int) -> str:
            return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode().rstrip("=")
        documents = {
            "/oidc/cluster-1/.well-known/openid-configuration": {"issuer": self.url,
                                                                 "jwks_uri": f"{self.url}openid/v1/jwks"},
            "/oidc/cluster-1/openid/v1/jwks": {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                                                         "n": b64(numbers.n), "e": b64(numbers.e)}]},
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the base class's name
                body = json.dumps(documents.get(self.path.rstrip("/") if self.path.endswith("/") else self.path,
                                                None)).encode()
                self.send_response(200 if body != b"null" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = LabHTTPServer(self.port, Handler, None, ca.server_context(paths))
        self.server.start("oidc-issuer")

    def token(self, issuer=None, subject=SUBJECT, audience=AUDIENCE, lifetime=3600, key=None) -> str:
        now = int(time.time())
        claims = {"iss": issuer or self.url, "sub": subject, "aud": [audience], "iat": now, "nbf": now,
                  "exp": now + lifetime}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": KID})

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issuer(control_plane):
    oidc = OidcIssuer(control_plane.paths)
    yield oidc
    oidc.stop()


@pytest.fixture(scope="module")
def federated(control_plane):
    """mi-wi-app with one federated credential for the test issuer's app-sa."""
    msi = control_plane.client(ManagedServiceIdentityClient)
    identity = msi.user_assigned_identities.create_or_update(RG, "mi-wi-app", {"location": "eastus2"})
    return identity, msi


def exchange(control_plane, identity, tmp_path, assertion: str):
    token_file = tmp_path / f"token-{uuid.uuid4()}"
    token_file.write_text(assertion)
    credential = WorkloadIdentityCredential(tenant_id=control_plane.tenant, client_id=identity.client_id,
                                            token_file_path=str(token_file), authority=control_plane.authority,
                                            disable_instance_discovery=True)
    return credential.get_token(ARM_SCOPE)


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_exchange_needs_a_federated_credential_that_matches_exactly(control_plane, issuer, federated, tmp_path):
    identity, msi = federated
    with pytest.raises(ClientAuthenticationError) as none_yet:
        exchange(control_plane, identity, tmp_path, issuer.token())
    assert "AADSTS70021" in str(none_yet.value) and f"Assertion Issuer: '{issuer.url}'" in str(none_yet.value)
    msi.federated_identity_credentials.create_or_update(RG, "mi-wi-app", "app-sa", {"properties": {
        "issuer": issuer.url, "subject": SUBJECT, "audiences": [AUDIENCE]}})
    token = exchange(control_plane, identity, tmp_path, issuer.token())
    claims = claims_of(token.token)
    assert claims["oid"] == identity.principal_id and claims["aud"] == "https://management.azure.com"
    for wrong in (dict(issuer=issuer.url.rstrip("/")), dict(issuer=issuer.url.upper().replace("HTTPS", "https")),
                  dict(subject=SUBJECT.upper()), dict(subject=SUBJECT + "/"), dict(audience="api://other")):
        with pytest.raises(ClientAuthenticationError) as refused:
            exchange(control_plane, identity, tmp_path, issuer.token(**wrong))
        assert "AADSTS70021" in str(refused.value), wrong


def test_expired_and_forged_assertions_are_refused(control_plane, issuer, federated, tmp_path):
    identity, _msi = federated
    with pytest.raises(ClientAuthenticationError) as expired:
        exchange(control_plane, identity, tmp_path, issuer.token(lifetime=-600))
    assert "AADSTS700024" in str(expired.value)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ClientAuthenticationError) as forged:
        exchange(control_plane, identity, tmp_path, issuer.token(key=forger))
    assert "AADSTS700027" in str(forged.value)
