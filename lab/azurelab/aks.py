"""The service-account token issuer of a lab AKS cluster: its signing key, its OIDC documents and its tokens.

An AKS cluster with the OIDC issuer on publishes ``{issuerURL}.well-known/openid-configuration`` and the JWK Set it
names (``{issuerURL}openid/v1/jwks``); the API server signs projected service-account tokens with the matching key.
Entra trusts such a token as a client assertion when a federated identity credential of the identity names the same
issuer, subject and audience. Sources:
https://learn.microsoft.com/azure/aks/use-oidc-issuer and
https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens

One RSA key per cluster, created on first use in ``<state>/aks/<cluster>/sa-signer.pem`` (mode 0600) and kept across
restarts, as a cluster keeps its key. Used by the ARM double (which serves the issuer documents) and by the Kubernetes
double (which signs the tokens it projects into Job pods).

Not emulated: key rotation (AKS rotates the signing key and publishes both keys for a while), the
``kubernetes.io/serviceaccount/*`` legacy token claims.
"""
from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import issued
from .config import LabPaths

# Where the API server's tokens come from when the OIDC issuer is off: the cluster-local default, which no Entra
# federated credential can name.
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
TOKEN_LIFETIME_S = 3600  # the workload identity webhook projects tokens valid for one hour
TOKEN_AUDIENCE = "api://AzureADTokenExchange"


def _load_or_create(path) -> rsa.RSAPrivateKey:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


class ClusterIssuer:
    """Signs service-account tokens for one cluster and describes its keys.

    ``issuer_url`` arguments are the cluster's ``oidcIssuerProfile.issuerURL`` exactly as ARM reports it (trailing
    slash included), or :data:`DEFAULT_ISSUER` when the issuer is off.
    """

    def __init__(self, paths: LabPaths, cluster_name: str):
        self.cluster_name = cluster_name
        self._root = paths.root
        self._private = _load_or_create(paths.root / "aks" / cluster_name / "sa-signer.pem")
        self._public = self._private.public_key()
        der = self._public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")

    @staticmethod
    def discovery(issuer_url: str) -> dict:
        """The document served at ``{issuer_url}.well-known/openid-configuration`` (``issuer`` is the URL as is)."""
        return {"issuer": issuer_url, "jwks_uri": issuer_url.rstrip("/") + "/openid/v1/jwks",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]}

    def jwks(self) -> dict:
        """The JWK Set served at the discovery document's ``jwks_uri``."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._public, as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    def service_account_token(self, issuer_url: str, namespace: str, service_account: str,
                              audience: str = TOKEN_AUDIENCE, lifetime_s: int = TOKEN_LIFETIME_S,
                              pod: dict | None = None, service_account_uid: str | None = None) -> str:
        """A bound service-account token (RS256 JWT), as the kubelet projects it into a pod.

        ``sub`` is ``system:serviceaccount:<namespace>:<service account>``, ``aud`` a one-element list, ``pod`` an
        optional ``{"name", "uid"}`` the token is bound to.
        """
        now = int(time.time())
        claims = {
            "iss": issuer_url, "sub": f"system:serviceaccount:{namespace}:{service_account}", "aud": [audience],
            "iat": now, "nbf": now, "exp": now + lifetime_s, "jti": str(uuid.uuid4()),
            "kubernetes.io": {"namespace": namespace,
                              "serviceaccount": {"name": service_account,
                                                 "uid": service_account_uid or str(uuid.uuid4())}},
        }
        if pod:
            claims["kubernetes.io"]["pod"] = {"name": pod["name"], "uid": pod["uid"]}
        token = jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})
        issued.record(self._root, "service-account-token", token, audience=audience)
        return token
