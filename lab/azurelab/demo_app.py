"""The lab's demo application: ``python -m azurelab.demo_app <app-name>``.

It stands for an application running on its VM. It reads ``<state>/apps/<app>.json`` and connects the way the
tutorial's code does (seed/000 Part 2), unmodified clients only:

* ``mode: vault`` (before): hvac AppRole login with ``role_id`` and the secret id stored in ``secret_id_file``,
  ``generate_credentials`` for ``vault_role``, psycopg with that username and password.
* ``mode: identity`` (after): azure-identity ``DefaultAzureCredential(managed_identity_client_id=...)``, a token
  for ``https://ossrdbms-aad.database.windows.net/.default``, psycopg with ``user = db_user`` and the token as
  password. On a lab VM the caller sets ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` to that VM's managed identity
  endpoint (``http://127.0.0.1:<ports.identity>/vms/<vm>``), as IMDS is on a real VM.

Config keys: ``app``, ``vm``, ``mode``, ``db_host``, ``db_port``, ``db_name``, ``db_sslmode``, ``db_sslrootcert``,
``query``; vault mode adds ``vault_addr``, ``vault_approle_mount``, ``role_id``, ``secret_id_file``,
``vault_database_mount``, ``vault_role``; identity mode adds ``managed_identity_client_id`` and ``db_user``.

Prints one JSON line, ``{"app", "mode", "ok": true, "connected_as": <current_user>, "rows": [...]}``, and exits 0;
on failure ``{"app", "mode", "ok": false, "error": "<type>: <message>"}`` and exits 1. Neither holds a secret:
the error is the client library's message, which never echoes a password or token.
"""
from __future__ import annotations

import json
import sys

import psycopg

from .config import paths

POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
MAX_ERROR_CHARS = 500


def vault_credentials(config: dict) -> tuple[str, str]:
    """Before: an AppRole login, then a dynamic database user from Vault. Returns ``(username, password)``."""
    import hvac  # each mode imports only its own client, as each app generation would

    client = hvac.Client(url=config["vault_addr"])
    with open(config["secret_id_file"], encoding="utf-8") as handle:
        secret_id = handle.read().strip()
    client.auth.approle.login(role_id=config["role_id"], secret_id=secret_id,
                              mount_point=config["vault_approle_mount"])
    creds = client.secrets.database.generate_credentials(name=config["vault_role"],
                                                         mount_point=config["vault_database_mount"])
    return creds["data"]["username"], creds["data"]["password"]


def identity_credentials(config: dict) -> tuple[str, str]:
    """After: the workload's managed identity. Returns ``(role name, access token)``."""
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=config.get("managed_identity_client_id"))
    return config["db_user"], credential.get_token(POSTGRES_SCOPE).token


def run(config: dict) -> dict:
    """Connect as the config says, run the app's query; returns the result line (raises on failure)."""
    user, password = (vault_credentials if config["mode"] == "vault" else identity_credentials)(config)
    with psycopg.connect(host=config["db_host"], port=config["db_port"], dbname=config["db_name"], user=user,
                         password=password, sslmode=config.get("db_sslmode", "verify-full"),
                         sslrootcert=config.get("db_sslrootcert"), connect_timeout=10) as conn:
        connected_as = conn.execute("SELECT current_user").fetchone()[0]
        rows = conn.execute(config["query"]).fetchall()
    return {"app": config["app"], "mode": config["mode"], "ok": True, "connected_as": connected_as,
            "rows": [list(row) for row in rows]}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m azurelab.demo_app <app-name>", file=sys.stderr)
        return 2
    app = argv[0]
    config: dict = {"app": app, "mode": None}
    try:
        with open(paths().apps / f"{app}.json", encoding="utf-8") as handle:
            config = json.load(handle)
        result = run(config)
    except Exception as exc:  # the app's one failure report: whatever broke, say so as JSON and exit 1
        message = f"{type(exc).__name__}: {exc}".strip()[:MAX_ERROR_CHARS]
        print(json.dumps({"app": app, "mode": config.get("mode"), "ok": False, "error": message}))
        return 1
    print(json.dumps(result, default=str))  # numeric and date columns print as text
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
