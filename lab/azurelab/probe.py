"""Lab-side evidence: ``python -m azurelab.probe password-login <server>``.

Tries the server administrator's real password, as a password-using client would, and prints one JSON line:
``{"server", "password_login": "accepted" | "refused", "detail"}``. For the PostgreSQL server it goes through the
PostgreSQL front (psycopg); for an Azure SQL server (``sql_servers`` in ``topology.yml``) it is a SQL-authentication
login to ``master`` with pyodbc and ODBC Driver 18, ``Encrypt=yes`` against the lab CA. The password is read from
the lab's own secrets file and never printed; ``detail`` is the server's message (for Azure SQL with its error
number, e.g. ``Login failed for user 'sqladmin'. Reason: Azure Active Directory only authentication is enabled.
... (18456)``). The migration's audit uses it to show that a cutover really closed the password path (the
collection itself never holds a database password).

For a Cosmos DB account (``cosmos_accounts``) the "password" is the account's current primary key: azure-cosmos
signs a request with it (master-key auth) and lists the databases; ``detail`` is Cosmos DB's message, e.g. ``Local
Authorization is disabled. ...``.

An Azure SQL server that cannot be reached at all is not "refused": the line then says ``"password_login":
"error"`` and the exit status is 1.
"""
from __future__ import annotations

import json
import os
import re
import sys

from .config import paths, ports, topology
from .server import read_secrets

LOGIN_TIMEOUT_S = 5


def password_login(server: str) -> dict:
    sql_servers = {s["name"]: s for s in topology().get("sql_servers", [])}
    if server in sql_servers:
        return sql_password_login(sql_servers[server])
    if server in {a["name"] for a in topology().get("cosmos_accounts", [])}:
        return cosmos_key_login(server)
    return postgres_password_login(server)


def cosmos_key_login(account: str) -> dict:
    """The account's current primary key, as a key-using client signs with it (azure-cosmos, master-key auth)."""
    import logging

    from azure.cosmos import CosmosClient
    from azure.cosmos.exceptions import CosmosHttpResponseError

    logging.getLogger("azure").setLevel(logging.ERROR)
    key = read_secrets(paths())["cosmos_accounts"][account]["primaryMasterKey"]
    try:
        # connection_verify: azure-cosmos would skip TLS verification for localhost (its emulator); check the lab CA.
        client = CosmosClient(f"https://localhost:{ports().cosmos}/", credential=key, retry_total=0,
                              connection_verify=str(paths().ca_bundle))
        list(client.list_databases())
    except CosmosHttpResponseError as exc:
        if exc.status_code in (401, 403):
            return {"server": account, "password_login": "refused", "detail": _cosmos_message(exc)}
        return {"server": account, "password_login": "error", "detail": _cosmos_message(exc)}
    return {"server": account, "password_login": "accepted", "detail": ""}


def _cosmos_message(exc: Exception) -> str:
    """Cosmos DB's ``message`` of an error, without the SDK's headers and diagnostics."""
    found = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"', str(exc))
    text = json.loads(f'"{found.group(1)}"') if found else str(exc)
    return text.splitlines()[0].strip()


def postgres_password_login(server: str) -> dict:
    import psycopg

    from .postgres import PostgresLab

    lab = PostgresLab(paths(), topology())
    if server != lab.name:
        known = [lab.name, *(s["name"] for s in topology().get("sql_servers", []))]
        raise SystemExit(f"unknown server {server!r}; the lab has {', '.join(map(repr, known))}")
    try:
        with psycopg.connect(host="localhost", port=ports().postgres, dbname="postgres", user=lab.admin_login,
                             password=lab.admin_password(), sslmode="verify-full",
                             sslrootcert=str(paths().ca_bundle), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return {"server": server, "password_login": "accepted", "detail": ""}
    except psycopg.OperationalError as exc:
        return {"server": server, "password_login": "refused", "detail": str(exc).strip().splitlines()[-1]}


def sql_password_login(server: dict) -> dict:
    import pyodbc

    from . import odbc
    from .azuresql import admin_password

    lab_paths, name = paths(), server["name"]
    os.environ.update(odbc.register_driver(lab_paths))  # before pyodbc's first connect: unixODBC reads it once
    os.environ["SSL_CERT_FILE"] = str(lab_paths.ca_bundle)
    password = admin_password(read_secrets(lab_paths), name)
    conn_str = (f"DRIVER={{{odbc.DRIVER_NAME}}};SERVER=tcp:localhost,{ports().sql_servers(topology())[name]};"
                f"DATABASE=master;UID={server['administrator_login']};PWD={{{password.replace('}', '}}')}}};"
                "Encrypt=yes;")
    try:
        conn = pyodbc.connect(conn_str, timeout=LOGIN_TIMEOUT_S)
    except pyodbc.Error as exc:
        state = exc.args[0] if exc.args else ""
        verdict = "refused" if state == "28000" else "error"
        return {"server": name, "password_login": verdict, "detail": _odbc_message(exc)}
    try:
        conn.cursor().execute("SELECT 1").fetchone()
    finally:
        conn.close()
    return {"server": name, "password_login": "accepted", "detail": ""}


def _odbc_message(exc: Exception) -> str:
    """The server's (or driver's) message of a pyodbc error, without the ``[Microsoft][ODBC ...]`` prefixes."""
    text = str(exc.args[-1] if exc.args else exc)
    text = re.sub(r"\s*\(SQLDriverConnect\)\s*$", "", text.rsplit("]", 1)[-1]).strip()
    return text


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "password-login":
        print("usage: python -m azurelab.probe password-login <server>", file=sys.stderr)
        return 2
    result = password_login(argv[1])
    print(json.dumps(result))
    return 1 if result["password_login"] == "error" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
