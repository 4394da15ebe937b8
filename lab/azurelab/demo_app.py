"""The lab's demo application: ``python -m azurelab.demo_app <app-name> [--identity-check | --switch-to-identity ...]``.

It stands for an application running on its workload (a VM, an App Service app, a Container App or a pod). It
reads ``<state>/apps/<app>.json`` and connects the way the tutorial's code does, unmodified clients only.
``db_type`` chooses the database (``postgres`` when absent):

PostgreSQL (tutorial Part 2):

* ``mode: vault`` (before): hvac AppRole login with ``role_id`` and the secret id stored in ``secret_id_file``,
  ``generate_credentials`` for ``vault_role``, psycopg with that username and password.
* ``mode: identity`` (after): azure-identity ``DefaultAzureCredential(managed_identity_client_id=...)``, a token
  for ``https://ossrdbms-aad.database.windows.net/.default``, psycopg with ``user = db_user`` and the token as
  password.

Azure SQL (``db_type: sql``; tutorial Part 1, Step 5), pyodbc with "ODBC Driver 18 for SQL Server",
``SERVER=tcp:<db_host>,<db_port>`` (``localhost``: the driver checks the certificate's DNS name), ``Encrypt=yes``:

* ``mode: vault`` (before): hvac AppRole login, then the KV v2 secret ``<vault_kv_mount>/<vault_kv_path>``
  (``username``, ``password``: a contained SQL user) as ``UID`` / ``PWD``. OpenBao has no mssql database plugin,
  so the SQL "before" is Vault's other pattern, a static secret in KV.
* ``mode: identity`` (after): the tutorial's code: ``DefaultAzureCredential(managed_identity_client_id=...)``, a
  token for ``https://database.windows.net/.default`` in UTF-16-LE, packed with its length and passed as
  connection attribute 1256 (``SQL_COPT_SS_ACCESS_TOKEN``). ``db_user`` is not used: the token names the user.

  Lab plumbing, what a VM image would provide: the driver is registered with unixODBC from the lab's
  ``odbcinst.ini`` (:mod:`azurelab.odbc`), and ``SSL_CERT_FILE`` is set to ``db_ca_bundle`` (system CAs + lab CA).

Azure Cosmos DB for NoSQL (``db_type: cosmos``; tutorial Part 3, Step 2), azure-cosmos with the account endpoint
``db_endpoint``, database ``db_name`` and container ``db_container``; the app's ``query`` may use ``@cat``, bound to
``query_category`` (the tutorial's ``SELECT * FROM c WHERE c.category = @cat``):

* ``mode: vault`` (before): the tutorial's "before" code: hvac AppRole login, then the KV v2 secret
  ``<vault_kv_mount>/<vault_kv_path>`` whose ``key`` is the account's primary key, passed as the client's credential.
* ``mode: identity`` (after): the tutorial's "after" code: ``DefaultAzureCredential(managed_identity_client_id=...)``
  as the client's credential (the SDK asks for a token for ``https://<endpoint host>/.default``). ``connected_as``
  is the token's ``oid``: Cosmos DB has no notion of a current user.

In identity mode the credential is given ``managed_identity_client_id`` only when the config has one; without it
``DefaultAzureCredential`` falls back to ``AZURE_CLIENT_ID``.

``--identity-check`` (:func:`identity_check`): whatever ``mode`` says, sign in to the app's database with
``DefaultAzureCredential()`` and no client id, as the app's health endpoint would, and report who the database saw
(``connected_as``) and which identity the token was for (``identity_client_id``, ``identity_object_id``). It is what
the lab's App Service / Container Apps front (:mod:`azurelab.webfront`) serves at ``/health/identity``.

On a lab VM the caller sets ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` to that VM's managed identity endpoint
(``http://127.0.0.1:<ports.identity>/vms/<vm>``), as IMDS is on a real VM. On App Service and Container Apps the
platform (the lab front) sets ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``, and the app settings or container env.

Config keys: ``app``, ``vm`` (a VM workload) or ``workload`` (``{"type": "app_service" | "container_app" | "aks",
"name"}``; informative only: the environment decides which endpoint the credential uses), ``mode``, ``db_host``,
``db_port``, ``db_name``, ``query``; vault mode adds ``vault_addr``, ``vault_approle_mount``, ``role_id``, ``secret_id_file``; identity mode adds
``managed_identity_client_id`` and ``db_user``. PostgreSQL adds ``db_sslmode``, ``db_sslrootcert`` and, in vault
mode, ``vault_database_mount``, ``vault_role``. Azure SQL adds ``db_type: sql``, ``db_server`` (the logical
server's name), ``db_ca_bundle`` and, in vault mode, ``vault_kv_mount``, ``vault_kv_path``. Cosmos DB adds
``db_type: cosmos``, ``db_account``, ``db_endpoint``, ``db_container``, ``query_category`` and, in vault mode,
``vault_kv_mount``, ``vault_kv_path``.

``--switch-to-identity --client-id <id> --db-user <name> [--config <file>] [--check] [--no-run]`` (:func:`switch_to_identity`):
what the switch phase does to a lab VM app in one process (a deploy pipeline's job on a real fleet): the AppRole
secret id file is removed first (a switch killed half-way must not leave a secret behind a config that no longer names
it), then the config is rewritten in identity mode (``role_id`` and ``secret_id_file`` dropped, ``mode``,
``managed_identity_client_id`` and ``db_user`` set; written to a temporary file and renamed, mode 0600), then the app
runs (not with ``--no-run``: an App Service app runs behind the lab front). Its line adds ``changed`` (whether anything
was removed or rewritten); ``--check`` only says whether it would change, and runs nothing.

Prints one JSON line, ``{"app", "mode", "ok": true, "connected_as": <current user>, "rows": [...]}`` (with
``--identity-check``: ``mode: identity-check`` and ``identity_client_id``, ``identity_object_id``), and exits 0;
on failure ``{"app", "mode", "ok": false, "error": "<type>: <message>"}`` and exits 1. Neither holds a secret:
the error is the client library's message, which never echoes a password or token.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import struct
import sys
import tempfile

from .config import paths

POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
SQL_SCOPE = "https://database.windows.net/.default"
SQL_DRIVER = "ODBC Driver 18 for SQL Server"
SQL_COPT_SS_ACCESS_TOKEN = 1256
LOGIN_TIMEOUT_S = 10
MAX_ERROR_CHARS = 2000  # DefaultAzureCredential lists every credential it tried before the one that failed


def approle_client(config: dict):
    """An hvac client signed in with the app's AppRole (``role_id`` + the secret id from ``secret_id_file``)."""
    import hvac  # each mode imports only its own client, as each app generation would

    client = hvac.Client(url=config["vault_addr"])
    with open(config["secret_id_file"], encoding="utf-8") as handle:
        secret_id = handle.read().strip()
    client.auth.approle.login(role_id=config["role_id"], secret_id=secret_id,
                              mount_point=config["vault_approle_mount"])
    return client


def vault_credentials(config: dict) -> tuple[str, str]:
    """Before: an AppRole login, then a dynamic database user from Vault. Returns ``(username, password)``."""
    creds = approle_client(config).secrets.database.generate_credentials(name=config["vault_role"],
                                                                         mount_point=config["vault_database_mount"])
    return creds["data"]["username"], creds["data"]["password"]


def default_credential(config: dict) -> "_RecordingCredential":
    """After: ``DefaultAzureCredential``, given ``managed_identity_client_id`` only when the config names one.

    Passing ``None`` explicitly would make azure-identity ignore ``AZURE_CLIENT_ID``, the app setting by which an
    App Service or Container App picks one of several identities.
    """
    from azure.identity import DefaultAzureCredential

    client_id = config.get("managed_identity_client_id")
    chosen = {"managed_identity_client_id": client_id} if client_id else {}
    return _RecordingCredential(DefaultAzureCredential(**chosen))


def identity_credentials(config: dict, credential) -> tuple[str, str]:
    """After: the workload's managed identity. Returns ``(role name, access token)``; the role is ``db_user``."""
    return config["db_user"], credential.get_token(POSTGRES_SCOPE).token


def run_postgres(config: dict, credential=None) -> tuple[str, list]:
    """Connect as the config says, run the app's query; returns ``(current_user, rows)`` (raises on failure)."""
    import psycopg

    if config["mode"] == "vault":
        user, password = vault_credentials(config)
    else:
        user, password = identity_credentials(config, credential)
    with psycopg.connect(host=config["db_host"], port=config["db_port"], dbname=config["db_name"], user=user,
                         password=password, sslmode=config.get("db_sslmode", "verify-full"),
                         sslrootcert=config.get("db_sslrootcert"), connect_timeout=10) as conn:
        connected_as = conn.execute("SELECT current_user").fetchone()[0]
        rows = conn.execute(config["query"]).fetchall()
    return connected_as, rows


def _odbc_value(value: str) -> str:
    """An ODBC connection-string value in braces, so that ``;`` and ``}`` in it survive."""
    return "{" + value.replace("}", "}}") + "}"


def sql_connect_vault(config: dict):
    """Before: the contained SQL user's password from Vault KV v2, then SQL authentication."""
    secret = approle_client(config).secrets.kv.v2.read_secret_version(
        path=config["vault_kv_path"], mount_point=config["vault_kv_mount"], raise_on_deleted_version=True)
    username, password = secret["data"]["data"]["username"], secret["data"]["data"]["password"]
    import pyodbc

    conn_str = (
        f"DRIVER={{{SQL_DRIVER}}};"
        f"SERVER=tcp:{config['db_host']},{config['db_port']};"
        f"DATABASE={config['db_name']};"
        f"UID={_odbc_value(username)};"
        f"PWD={_odbc_value(password)};"
        f"Encrypt=yes;"
    )
    return pyodbc.connect(conn_str, timeout=LOGIN_TIMEOUT_S)


def sql_connect_identity(config: dict, credential):
    """After: tutorial Part 1, Step 5 (``credential`` is its ``DefaultAzureCredential``), with the lab's server
    address."""
    import pyodbc

    token = credential.get_token(SQL_SCOPE)
    token_bytes = token.token.encode("UTF-16-LE")
    token_struct = struct.pack(f'<I{len(token_bytes)}s', len(token_bytes), token_bytes)
    return pyodbc.connect(
        f"DRIVER={{{SQL_DRIVER}}};"
        f"SERVER=tcp:{config['db_host']},{config['db_port']};"
        f"DATABASE={config['db_name']};"
        "Encrypt=yes;",
        attrs_before={SQL_COPT_SS_ACCESS_TOKEN: token_struct}, timeout=LOGIN_TIMEOUT_S,
    )


def run_sql(config: dict, credential=None) -> tuple[str, list]:
    """Connect to Azure SQL as the config says, run the app's query; returns ``(CURRENT_USER, rows)``."""
    from . import odbc

    # unixODBC reads these once, at the process's first ODBC call; OpenSSL in the driver reads SSL_CERT_FILE.
    os.environ.update(odbc.register_driver(paths()))
    if config.get("db_ca_bundle"):
        os.environ["SSL_CERT_FILE"] = config["db_ca_bundle"]
    conn = sql_connect_vault(config) if config["mode"] == "vault" else sql_connect_identity(config, credential)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT CURRENT_USER AS connected_as")
        connected_as = cursor.fetchone().connected_as
        rows = cursor.execute(config["query"]).fetchall()
    finally:
        conn.close()
    return connected_as, rows


def _token_claims(token: str) -> dict:
    """The claims of a token, read without verifying it (the database verified it)."""
    import base64

    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class _RecordingCredential:
    """Passes ``get_token`` through and keeps the last token's ``oid`` and client id (``appid``), to report which
    identity connected."""

    def __init__(self, credential):
        self.credential = credential
        self.object_id = None
        self.client_id = None

    def get_token(self, *scopes, **kwargs):
        token = self.credential.get_token(*scopes, **kwargs)
        claims = _token_claims(token.token)
        self.object_id, self.client_id = claims.get("oid"), claims.get("appid") or claims.get("azp")
        return token


def run_cosmos(config: dict, credential=None) -> tuple[str, list]:
    """Tutorial Part 3: the key from Vault KV (before) or the managed identity (after); returns ``(principal, rows)``
    where ``principal`` is ``key`` in vault mode (a key names nobody) and the token's ``oid`` in identity mode."""
    from azure.cosmos import CosmosClient

    if config["mode"] == "vault":
        secret = approle_client(config).secrets.kv.v2.read_secret_version(
            path=config["vault_kv_path"], mount_point=config["vault_kv_mount"], raise_on_deleted_version=True)
        primary_key = secret["data"]["data"]["key"]
        client = CosmosClient(url=config["db_endpoint"], credential=primary_key)
        principal = None
    else:
        client = CosmosClient(url=config["db_endpoint"], credential=credential)
        principal = credential
    database = client.get_database_client(config["db_name"])
    container = database.get_container_client(config["db_container"])
    items = list(container.query_items(
        query=config["query"],
        parameters=[{"name": "@cat", "value": config.get("query_category", "electronics")}],
        enable_cross_partition_query=True,
    ))
    rows = [[item.get("id"), item.get("category")] if isinstance(item, dict) else [item] for item in items]
    return ("key" if principal is None else principal.object_id), rows


RUNNERS = {"sql": run_sql, "cosmos": run_cosmos, "postgres": run_postgres}


def run(config: dict) -> dict:
    """Connect as the config says, run the app's query; returns the result line (raises on failure)."""
    credential = default_credential(config) if config["mode"] != "vault" else None
    connected_as, rows = RUNNERS[config.get("db_type", "postgres")](config, credential)
    return {"app": config["app"], "mode": config["mode"], "ok": True, "connected_as": connected_as,
            "rows": [list(row) for row in rows]}


def identity_check(config: dict) -> dict:
    """``--identity-check``: the app's database, signed in with ``DefaultAzureCredential()`` whatever ``mode`` says.

    No client id is passed (``managed_identity_client_id`` in the config is ignored): on App Service and Container
    Apps the ``AZURE_CLIENT_ID`` app setting is how the default credential picks one of several identities. For
    PostgreSQL the role to sign in as is the ``PGUSER`` environment variable (libpq's own; an app setting), else the
    config's ``db_user``; SQL and Cosmos DB take the user from the token. Returns the result line with
    ``identity_client_id`` and ``identity_object_id`` (the token's ``appid`` and ``oid``); raises on failure.
    """
    checked = {key: value for key, value in config.items() if key != "managed_identity_client_id"}
    checked["mode"] = "identity"
    if checked.get("db_type", "postgres") == "postgres":
        checked["db_user"] = os.environ.get("PGUSER") or config.get("db_user")
        if not checked["db_user"]:
            raise ValueError("identity check: no PostgreSQL role to sign in as (set PGUSER, the identity's role name)")
    credential = default_credential(checked)
    connected_as, rows = RUNNERS[checked.get("db_type", "postgres")](checked, credential)
    return {"app": config["app"], "mode": "identity-check", "ok": True, "connected_as": connected_as,
            "identity_client_id": credential.client_id, "identity_object_id": credential.object_id,
            "rows": [list(row) for row in rows]}


def switch_to_identity(config_file: pathlib.Path, client_id: str, db_user: str, check: bool = False) -> bool:
    """Put the app at ``config_file`` in identity mode (see the module docstring); returns whether anything changed
    (or would, with ``check``). ``OSError`` / ``ValueError`` when the config cannot be read or written."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    secret_id_file = config.get("secret_id_file")
    wanted = {key: value for key, value in config.items() if key not in ("role_id", "secret_id_file")}
    wanted.update(mode="identity", managed_identity_client_id=client_id, db_user=db_user)
    stale_secret = bool(secret_id_file) and os.path.exists(secret_id_file)
    changed = stale_secret or wanted != config
    if check or not changed:
        return changed
    if stale_secret:
        os.remove(secret_id_file)
    handle, temporary = tempfile.mkstemp(dir=config_file.parent, prefix=f".{config_file.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:  # mkstemp's file is 0600
        out.write(json.dumps(wanted, indent=4, sort_keys=True) + "\n")
    os.replace(temporary, config_file)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m azurelab.demo_app", description="The lab's demo application.")
    parser.add_argument("app")
    parser.add_argument("--identity-check", action="store_true")
    parser.add_argument("--switch-to-identity", action="store_true")
    parser.add_argument("--client-id")
    parser.add_argument("--db-user")
    parser.add_argument("--config", type=pathlib.Path, help="default: <state>/apps/<app>.json")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--no-run", action="store_true", help="switch only (an App Service app runs behind the lab front)")
    args = parser.parse_args(argv)
    if args.switch_to_identity and not (args.client_id and args.db_user) or args.identity_check and args.switch_to_identity:
        parser.error("--switch-to-identity needs --client-id and --db-user, and goes without --identity-check")
    app, config_file = args.app, args.config or paths().apps / f"{args.app}.json"
    config: dict = {"app": app, "mode": None}
    switched = None
    try:
        if args.switch_to_identity:
            switched = switch_to_identity(config_file, args.client_id, args.db_user, args.check)
            if args.check or args.no_run:
                print(json.dumps({"app": app, "mode": "identity", "changed": switched, "ran": False}))
                return 0
        config = json.loads(config_file.read_text(encoding="utf-8"))
        result = identity_check(config) if args.identity_check else run(config)
    except Exception as exc:  # the app's one failure report: whatever broke, say so as JSON and exit 1
        message = f"{type(exc).__name__}: {exc}".strip()[:MAX_ERROR_CHARS]
        mode = "identity-check" if args.identity_check else config.get("mode")
        failed = {"app": app, "mode": mode, "ok": False, "error": message}
        print(json.dumps(failed if switched is None else dict(failed, changed=switched)))
        return 1
    if switched is not None:
        result["changed"] = switched
    print(json.dumps(result, default=str))  # numeric and date columns print as text
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
