"""Every secret the lab hands out, kept so that a test can prove that none of them leaked.

Two records, both inside the lab's state folder (which is where lab secrets live, and which the leak checks skip):

* ``<state>/issued.jsonl`` (mode 0600): one ``{"kind", "value"}`` line per secret the lab's own servers make: Entra
  access tokens (:class:`azurelab.tokens.Issuer`), AKS service-account tokens (:class:`azurelab.aks.ClusterIssuer`) and
  Cosmos DB account keys (:mod:`azurelab.arm`, at creation and at every ``regenerateKey``);
* ``<state>/openbao/audit.log``: OpenBao's own file audit device, enabled with ``log_raw`` from the server's config file
  (``audit`` stanza: OpenBao refuses audit devices created through its API unless told otherwise). Every request and
  response is logged unhashed, so the dynamic database users' passwords, AppRole secret ids, client tokens and the KV
  values are all there.

:func:`values` reads both, plus what ``secrets.json`` and the OpenBao token file hold. Appends are one ``write`` of
one line with ``O_APPEND``, which POSIX keeps whole across the lab's threads and processes.
"""
from __future__ import annotations

import json
import os
import pathlib

ISSUED_FILE = "issued.jsonl"
AUDIT_LOG = pathlib.Path("openbao") / "audit.log"
# The fields of OpenBao's audit entries that carry a secret (in requests and responses alike): a dynamic user's
# password, an AppRole secret id, a client token, a KV value of the lab's apps ({"password"} or {"key"}).
AUDIT_SECRET_FIELDS = frozenset({"password", "secret_id", "client_token", "token", "key"})
# In secrets.json, every string field whose name says it is one (administrator_password, client_secret, ...).
SECRET_WORDS = ("password", "secret", "token", "key")
MIN_LENGTH = 8  # shorter values are names and flags, not secrets


def record(root: pathlib.Path, kind: str, value: str, **about: str) -> None:
    """Append ``value`` (a ``kind`` of secret, e.g. ``"entra-token"``) to ``<root>/issued.jsonl``, with what the caller
    says ``about`` it that is not secret (a token's ``audience``): the benchmarks count tokens by scope from it."""
    line = json.dumps({"kind": kind, "value": value, **about}) + "\n"
    fd = os.open(pathlib.Path(root) / ISSUED_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _walk(node, is_secret, found: set[str]) -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            if isinstance(value, str) and is_secret(str(name)):
                found.add(value)
            else:
                _walk(value, is_secret, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, is_secret, found)


def _audit_field(name: str) -> bool:
    return name in AUDIT_SECRET_FIELDS


def _secrets_file_field(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def values(root: pathlib.Path) -> set[str]:
    """Every secret the lab at ``root`` issued or holds: the issued record, OpenBao's audit log (every secret field of
    every request and response), ``secrets.json`` and the OpenBao root token. Missing files count as empty."""
    root = pathlib.Path(root)
    found: set[str] = set()
    for path in (root / ISSUED_FILE, root / AUDIT_LOG):
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written while we read
                if path.name == ISSUED_FILE:
                    found.add(entry["value"])
                else:
                    _walk(entry, _audit_field, found)
    if (root / "secrets.json").exists():
        _walk(json.loads((root / "secrets.json").read_text()), _secrets_file_field, found)
    token = root / "openbao" / "token"
    if token.exists():
        found.add(token.read_text().strip())
    return {value for value in found if len(value) >= MIN_LENGTH}
