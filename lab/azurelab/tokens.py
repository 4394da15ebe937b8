"""The lab issuer: Entra-style access tokens (RS256 JWTs) and their validation.

Claims follow Microsoft identity platform access tokens: ``aud``, ``iss``, ``iat``, ``nbf``, ``exp``,
``oid`` (object / principal id), ``appid`` and ``azp`` (client id, for applications and managed
identities), ``tid``, ``sub``, ``idtyp`` (``app`` or ``user``), ``xms_mirid`` (a managed identity's
resource id). Source: https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference

Not emulated: v1/v2 token differences (every token is v2-shaped, ``iss`` is the lab authority),
key rollover (one signing key per lab), encrypted tokens, ``scp``/``roles`` claims.
"""
from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterable

import jwt
from cryptography.hazmat.primitives import serialization

from . import issued
from .config import LabPaths

TOKEN_LIFETIME_S = 3600


class TokenError(Exception):
    """A token was refused; ``reason`` is short and safe to show (it never contains the token).

    ``kind`` says why, for servers that word each case their own way: ``expired``, ``audience`` or ``invalid``.
    """

    def __init__(self, reason: str, kind: str = "invalid"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def normalise_audience(resource_or_scope: str) -> str:
    """``https://x/.default`` and ``https://x/`` and ``https://x`` name the same audience."""
    value = resource_or_scope.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    return value.rstrip("/")


class Issuer:
    """Signs and verifies lab tokens for one tenant.

    ``authority`` is the issuer URL placed in ``iss`` (``https://127.0.0.1:<entra port>/<tenant>/v2.0``).
    """

    def __init__(self, paths: LabPaths, tenant_id: str, authority_host: str):
        self.tenant_id = tenant_id
        self.issuer = f"{authority_host.rstrip('/')}/{tenant_id}/v2.0"
        self._root = paths.root
        pem = paths.signing_key.read_bytes()
        self._private = serialization.load_pem_private_key(pem, password=None)
        self._public = self._private.public_key()
        der = self._public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:15]).decode().rstrip("=")

    def issue(self, principal: dict, audience: str, lifetime_s: int = TOKEN_LIFETIME_S) -> tuple[str, int]:
        """Sign a token for a directory principal.

        ``principal`` is a directory entry: ``object_id``, ``type`` (``ServicePrincipal`` / ``ManagedIdentity`` /
        ``User``), and for applications ``client_id``, for managed identities ``resource_id``, for users ``upn``.
        Returns ``(token, expires_on)`` with ``expires_on`` in epoch seconds.
        """
        now = int(time.time())
        claims = {
            "aud": normalise_audience(audience),
            "iss": self.issuer,
            "iat": now,
            "nbf": now - 60,
            "exp": now + lifetime_s,
            "oid": principal["object_id"],
            "sub": principal["object_id"],
            "tid": self.tenant_id,
            "uti": uuid.uuid4().hex,
            "ver": "2.0",
        }
        if principal["type"] == "User":
            claims.update(idtyp="user", upn=principal.get("upn", ""), name=principal.get("display_name", ""))
        else:
            claims.update(idtyp="app", appid=principal["client_id"], azp=principal["client_id"])
            if principal.get("resource_id"):
                claims["xms_mirid"] = principal["resource_id"]
        token = jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})
        issued.record(self._root, "entra-token", token, audience=claims["aud"])
        return token, claims["exp"]

    def verify(self, token: str, audience: str | Iterable[str]) -> dict:
        """Return the claims of a valid token for ``audience`` (or for any of several); raise :class:`TokenError`
        otherwise.

        Checks the signature, ``iss``, ``aud``, ``exp`` and ``nbf`` (60 s leeway, like Entra's resource servers).
        """
        audiences = [audience] if isinstance(audience, str) else list(audience)
        expected = [normalise_audience(a) for a in audiences]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("not a JWT") from None
        if header.get("kid") != self.kid:
            raise TokenError("signed by an unknown key")
        try:
            return jwt.decode(token, self._public, algorithms=["RS256"], audience=expected,
                              issuer=self.issuer, leeway=60, options={"require": ["exp", "aud", "iss", "oid"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("The access token has expired", "expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"audience is not {' or '.join(expected)}", "audience") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {type(exc).__name__}") from None

    def jwks(self) -> dict:
        """The public key as a JWK Set, as served at ``/{tenant}/discovery/v2.0/keys``."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._public, as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}


def looks_like_jwt(value: str) -> bool:
    """Cheap shape test used by fronts that accept either a password or a token in the same field."""
    parts = value.split(".")
    return len(parts) == 3 and all(parts) and value.startswith("eyJ")
