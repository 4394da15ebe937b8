"""The lab CA: one self-signed root that signs the certificate every lab TLS endpoint serves.

Clients trust the lab by a CA bundle (system CAs + lab CA) named in ``REQUESTS_CA_BUNDLE`` /
``SSL_CERT_FILE`` / ``PGSSLROOTCERT``; nothing disables certificate verification. The system
bundle is appended to, never replaced: this machine reaches its package registries through a
TLS proxy whose CA is only in the system bundle.

Not emulated: certificate revocation, intermediate CAs, per-service names (one certificate
for ``127.0.0.1`` and ``localhost`` serves every endpoint).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import LabPaths

SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def _write_private(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure(paths: LabPaths) -> None:
    """Create the CA, the server certificate, the CA bundle and the token-signing key once."""
    if paths.server_cert.exists() and paths.signing_key.exists() and paths.ca_bundle.exists():
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csa_inabox managed_identity lab CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write_private(paths.ca_key, _pem_key(ca_key))
    _write_private(paths.server_key, _pem_key(server_key))
    paths.ca_cert.write_bytes(ca_pem)
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    system = next((pathlib.Path(p).read_bytes() for p in SYSTEM_BUNDLES if pathlib.Path(p).exists()), b"")
    paths.ca_bundle.write_bytes(system.rstrip(b"\n") + b"\n" + ca_pem)
    # Entra signs with RS256: so does the lab issuer.
    _write_private(paths.signing_key, _pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


def server_context(paths: LabPaths, max_tls12: bool = False) -> ssl.SSLContext:
    """A server-side TLS context with the lab certificate (``max_tls12`` for TDS, see TDS_NOTES.md)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths.server_cert, paths.server_key)
    if max_tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context
