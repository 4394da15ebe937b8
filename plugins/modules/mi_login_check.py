#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mi_login_check
short_description: Prove, from the workload itself, that its managed identity can log in to its database
version_added: 0.1.0
description:
  - Acquires a token with the credential chain of the host the task runs on (run it on the workload, where its managed
    identity endpoint or its workload identity is), connects to the database with it, runs a read-only query and
    reports the user the database says it connected as.
  - This is the migration's gate. Nothing is decommissioned or switched off for an application until this check has
    passed as that application.
  - For Cosmos DB (O(database_type=cosmos)) the azure-cosmos client gets the token itself, for the scope of the account's
    endpoint (C(https://<account>.documents.azure.com/.default) in Azure's public cloud, C(.documents.azure.us) in US
    Government, C(.documents.azure.cn) in China), and reads the container's metadata. O(query) is then run with
    O(parameters). Cosmos DB has no current user, so C(connected_as) is the principal (object) id the token carries.
  - Never changes anything. It runs in check mode too, because it only reads.
author: csa-inabox core team (@csa-inabox)
options:
  database_type:
    description: Kind of database.
    type: str
    choices: [postgres, sql, cosmos]
    default: postgres
  host:
    description:
      - Server host name (C(<server>.postgres.database.azure.com), C(<server>.database.windows.net)).
      - For Cosmos DB, the account endpoint (C(https://<account>.documents.azure.com:443/)) or its host name.
    type: str
    required: true
  port:
    description: Server port. Defaults to 5432 for PostgreSQL and 1433 for Azure SQL.
    type: int
  database:
    description: Database to connect to.
    type: str
    required: true
  container:
    description: Cosmos DB only. The container to read and query. Required for Cosmos DB.
    type: str
  parameters:
    description:
      - Cosmos DB only. Parameters of O(query), as azure-cosmos takes them (C(name) with its C(@), and C(value)).
    type: list
    elements: dict
  cosmos_scope:
    description:
      - Cosmos DB only. Ask for a token for this scope instead of the one the endpoint implies (for example
        C(https://cosmos.azure.com/.default)).
    type: str
  user:
    description:
      - User name to connect as, for PostgreSQL (the role created for the identity). Required for PostgreSQL.
      - Azure SQL takes the user from the token; there it is only the default of O(expected_user).
    type: str
  query:
    description:
      - Query to run after connecting; its first row is returned. Defaults to C(SELECT current_user) (PostgreSQL) or
        C(SELECT CURRENT_USER) (Azure SQL). For Cosmos DB it is a Cosmos DB query, which can only read; without it
        only the container's metadata is read.
      - PostgreSQL runs it as a single prepared statement in a read-only transaction that is rolled back, so it cannot
        change anything (several statements separated by C(;) are refused).
      - Azure SQL has no read-only transactions. Before connecting, the module splits the query as SQL Server does
        (strings, quoted names, nested comments) and refuses anything but one C(SELECT) or C(WITH ... SELECT).
        There must be no C(;) inside, no C(INTO), and no bare word that starts another statement (T-SQL needs no separator between
        statements), such as C(DROP), C(EXEC) or C(COMMIT). Quote a column with such a name (C([end])). It then runs
        in a transaction that is rolled back.
    type: str
  expected_user:
    description:
      - Fail unless the database reports this C(current_user). Defaults to O(user).
      - For Cosmos DB, the principal (object) id the token must carry.
      - Required for Azure SQL (or O(user)); compared case-insensitively there, as the server compares names. An
        identity that is the server's Entra administrator is C(dbo) there.
    type: str
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 15
  ssl_mode:
    description: PostgreSQL only. libpq C(sslmode); Azure requires TLS, C(verify-full) also checks the server's name.
    type: str
    default: verify-full
    choices: [require, verify-ca, verify-full]
  ssl_root_cert:
    description: PostgreSQL only. CA bundle to verify the server with (default libpq's).
    type: path
  driver:
    description:
      - Azure SQL only. Client library; V(auto) takes pyodbc when Microsoft ODBC Driver 18 is registered, else
        mssql-python.
    type: str
    default: auto
    choices: [auto, pyodbc, mssql-python]
  odbc_driver:
    description: Azure SQL only. ODBC driver name for V(pyodbc).
    type: str
    default: ODBC Driver 18 for SQL Server
  encrypt:
    description: Azure SQL only. C(Encrypt) of the connection (V(strict) is TDS 8.0).
    type: str
    default: "yes"
    choices: ["yes", strict]
  trust_server_certificate:
    description: Azure SQL only. Accept the server certificate unchecked (diagnosis only).
    type: bool
    default: false
requirements:
  - psycopg >= 3.2 (PostgreSQL)
  - pyodbc and Microsoft ODBC Driver 18 for SQL Server, or mssql-python (Azure SQL)
  - azure-cosmos >= 4.9 (Cosmos DB)
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes.read_only
"""

EXAMPLES = r"""
- name: Verify as the orders API, on its own VM
  csa_inabox.managed_identity.mi_login_check:
    host: pg-prod.postgres.database.azure.com
    database: appdb
    user: mi-orders-api
    client_id: "{{ identity.identity.client_id }}"
    auth_source: managed_identity
    query: SELECT count(*) FROM orders.orders
  register: login

- name: Verify as the inventory API against Azure SQL (the user comes from the token)
  csa_inabox.managed_identity.mi_login_check:
    database_type: sql
    host: sql-prod.database.windows.net
    database: appdb
    expected_user: mi-inventory-api
    client_id: "{{ identity.identity.client_id }}"
    auth_source: managed_identity

- name: Verify as the catalog API against Cosmos DB, with the tutorial's query
  csa_inabox.managed_identity.mi_login_check:
    database_type: cosmos
    host: https://cosmos-prod.documents.azure.com:443/
    database: appdb
    container: items
    query: SELECT * FROM c WHERE c.category = @cat
    parameters: [{name: "@cat", value: electronics}]
    expected_user: "{{ identity.identity.principal_id }}"
    client_id: "{{ identity.identity.client_id }}"
    auth_source: managed_identity
"""

RETURN = r"""
connected_as:
  description:
    - What the database reported as C(current_user) (C(CURRENT_USER) on Azure SQL).
    - For Cosmos DB, which has no users, the principal (object) id of the token it accepted.
  returned: success
  type: str
  sample: mi-orders-api
token_object_id:
  description: The C(oid) claim of the token used (the identity's principal id). The token itself is never returned.
  returned: success
  type: str
token_expires_on:
  description: When the token used expires, in epoch seconds.
  returned: success
  type: int
row:
  description:
    - First row of O(query), as a list.
    - For Cosmos DB, the first item's values in the order of its sorted property names, without the system
      properties (C(_rid), C(_etag), ...).
  returned: success
  type: list
  elements: raw
item_count:
  description: Cosmos DB only. How many items O(query) returned (C(row) is the first one).
  returned: success, with O(database_type=cosmos) and O(query)
  type: int
scope:
  description: Cosmos DB only. The scope the token was asked for.
  returned: success, with O(database_type=cosmos)
  type: str
driver:
  description: Azure SQL only. The client library used, V(pyodbc) or V(mssql-python).
  returned: success, with O(database_type=sql)
  type: str
elapsed_ms:
  description: Time to get the token, connect and query, in milliseconds.
  returned: success
  type: int
"""

import base64
import json
import time

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import cosmos
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import postgres as pg
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import sqlserver as sql
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import clipped, shown


def object_id_of(token):
    """The ``oid`` claim, read without verifying (only the database verifies); None if unreadable."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("oid")
    except (IndexError, ValueError):
        return None


def check_postgres(mod, token):
    """``(connected_as, first row, extra result)`` over psycopg; the query runs read-only and is rolled back."""
    params = mod.params
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("psycopg"))
    try:
        with pg.connect(params["host"], params["port"], params["database"], params["user"], token,
                        params["ssl_mode"], params["ssl_root_cert"], params["connect_timeout"]) as conn:
            conn.read_only = True
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                connected_as = cur.fetchone()[0]
                # A prepared statement is one statement: "SELECT 1; COMMIT; DROP ..." is refused by the server,
                # so the query cannot leave the read-only transaction. Nothing is committed either way.
                try:
                    cur.execute(params["query"] or "SELECT current_user", prepare=True)
                except psycopg.Error as exc:
                    raise QueryFailed(connected_as, exc)
                row = cur.fetchone() if cur.description else None
            conn.rollback()
    except psycopg.Error as exc:
        raise LoginFailed(exc)
    return connected_as, row, {}


def check_sql(mod, token):
    """``(connected_as, first row, extra result)`` over pyodbc or mssql-python; the query is rolled back."""
    params = mod.params
    try:
        conn, driver = sql.connect_with(params, token)
    except sql.DriverMissing as exc:
        mod.fail(str(exc))
    except Exception as exc:  # the driver's own error types: pyodbc.Error, mssql_python.Error
        raise LoginFailed(exc)
    try:
        cur = conn.cursor()
        try:
            cur.execute("SELECT CURRENT_USER")
            connected_as = cur.fetchone()[0]
        except sql.driver_errors(driver) as exc:
            raise LoginFailed(exc)
        try:
            cur.execute(params["query"] or "SELECT CURRENT_USER")
            row = cur.fetchone() if cur.description else None
        except sql.driver_errors(driver) as exc:
            raise QueryFailed(connected_as, exc)
        conn.rollback()
    finally:
        conn.close()
    return connected_as, row, {"driver": driver}


class RecordingCredential:
    """The module's credential as azure-cosmos sees it: asks for ``scope`` when one is forced, and keeps the scope and
    the token it handed out (to report the principal; the token itself never leaves the module)."""

    def __init__(self, credential, scope=None):
        self.credential = credential
        self.forced = scope
        self.scope = None
        self.access = None
        self.error = None

    def get_token(self, *scopes, **kwargs):
        self.scope = self.forced or scopes[0]
        try:
            self.access = self.credential.get_token(self.scope, **kwargs)
        except Exception as exc:  # azure-identity raises several unrelated types; reported by check_cosmos
            self.error = exc
            raise
        self.error = None  # azure-cosmos retries another scope after some refusals: only the last outcome counts
        return self.access


def cosmos_endpoint(mod):
    """The account endpoint (``https://host[:port]/``) from O(host); fails on anything else, and on an endpoint of
    another built-in cloud than the module's (its token would be for the wrong audience)."""
    from ansible.module_utils.six.moves.urllib.parse import urlsplit  # pylint: disable=import-outside-toplevel

    text = mod.params["host"].strip()
    parts = urlsplit(text if "://" in text else "https://" + text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username or parts.password or port in (-1, 0)
            or not all(c.isalnum() or c in "-." for c in parts.hostname)):
        text_shown = text.replace(parts.netloc, parts.netloc.rpartition("@")[2]) if "@" in parts.netloc else text
        hidden = " (the user and password it held are not shown)" if "@" in parts.netloc else ""
        mod.fail("host %s is not a Cosmos DB account endpoint: give https://<account>.documents.azure.com:443/ or the "
                 "host name alone%s" % (shown(text_shown), hidden))
    for cloud, suffix in cosmos.ENDPOINT_SUFFIXES.items():
        if parts.hostname.endswith(suffix) and mod.cloud.name in cosmos.ENDPOINT_SUFFIXES and cloud != mod.cloud.name:
            mod.fail("host %s is a Cosmos DB endpoint of %s, but cloud_environment is %s: its token would be for the "
                     "wrong cloud" % (parts.hostname, cloud, mod.cloud.name))
    return "https://%s%s/" % (parts.hostname, ":%d" % port if port else "")


def check_cosmos(mod, credential):
    """``(principal id, first item, extra result)``: reads the container (metadata), then runs the query if any."""
    params = mod.params
    try:
        from azure.cosmos import CosmosClient  # pylint: disable=import-outside-toplevel
        from azure.cosmos.exceptions import CosmosHttpResponseError  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("azure-cosmos"))
    try:
        # connection_verify=True: azure-cosmos otherwise skips TLS verification for a localhost endpoint (its
        # emulator), and a tunnel to a real account is reached as localhost too.
        client = CosmosClient(cosmos_endpoint(mod), credential=credential, connection_timeout=params["connect_timeout"],
                              retry_total=2, retry_backoff_max=2, connection_verify=True)
        container = client.get_database_client(params["database"]).get_container_client(params["container"])
        container.read()
    except Exception as exc:  # CosmosHttpResponseError, connection errors, or the credential's own error
        raise LoginFailed(credential.error or exc)
    principal = object_id_of(credential.access.token)
    extra = {"scope": credential.scope}
    row = None
    if params["query"]:
        try:
            items = list(container.query_items(query=params["query"], parameters=params["parameters"] or None,
                                               enable_cross_partition_query=True))
        except CosmosHttpResponseError as exc:
            raise QueryFailed(principal, exc)
        extra["item_count"] = len(items)
        if items:
            first = items[0]
            row = [first.get(k) for k in sorted(first) if not k.startswith("_")] if isinstance(first, dict) else [first]
    return principal, row, extra


class LoginFailed(Exception):
    """The database refused the login; carries the driver's exception."""


class QueryFailed(Exception):
    """The login worked (as ``args[0]``) but the query failed; carries the driver's exception (``args[1]``)."""


def main():
    mod = MIModule(dict(
        database_type=dict(type="str", default="postgres", choices=["postgres", "sql", "cosmos"]),
        host=dict(type="str", required=True),
        port=dict(type="int"),
        database=dict(type="str", required=True),
        container=dict(type="str"),
        parameters=dict(type="list", elements="dict"),
        cosmos_scope=dict(type="str"),
        user=dict(type="str"),
        query=dict(type="str"),
        expected_user=dict(type="str"),
        connect_timeout=dict(type="int", default=15),
        ssl_mode=dict(type="str", default="verify-full", choices=["require", "verify-ca", "verify-full"]),
        ssl_root_cert=dict(type="path"),
        driver=dict(type="str", default="auto", choices=["auto", "pyodbc", "mssql-python"]),
        odbc_driver=dict(type="str", default="ODBC Driver 18 for SQL Server"),
        encrypt=dict(type="str", default="yes", choices=["yes", "strict"]),
        trust_server_certificate=dict(type="bool", default=False),
    ), required_if=[("database_type", "postgres", ["user"]), ("database_type", "cosmos", ["container"])])
    params = mod.params
    if params["database_type"] == "cosmos":
        main_cosmos(mod)
    is_sql = params["database_type"] == "sql"
    if params["port"] is None:
        params["port"] = 1433 if is_sql else 5432
    if is_sql:
        problem = sql.option_problem(params)
        if problem:
            mod.fail(problem)
        problem = params["query"] and sql.read_only_problem(params["query"])
        if problem:
            mod.fail("query is refused: %s. The check only reads" % problem)
    else:
        problem = pg.option_problem(params, ("database", "user", "expected_user"))
        if problem:
            mod.fail(problem)
    expected = params["expected_user"] or params["user"]
    if is_sql and not expected:
        mod.fail("expected_user (or user) is required for database_type=sql: the name the identity's database user has")
    service = "sql" if is_sql else "postgres"
    started = time.monotonic()
    try:
        access = mod.credential.get_token(mod.cloud.scope(service))
    except Exception as exc:  # azure-identity raises several unrelated types
        mod.fail("no token for the %s audience from this host's credential (auth_source=%s)"
                 % (service, params["auth_source"]), exc)
    try:
        connected_as, row, extra = (check_sql if is_sql else check_postgres)(mod, access.token)
    except LoginFailed as failed:
        target = "%s:%s/%s" % (params["host"], params["port"], params["database"])
        who = "the token's identity" if is_sql else params["user"]
        mod.fail("login as %s to %s failed" % (who, target), failed.args[0], token_object_id=object_id_of(access.token))
    except QueryFailed as failed:
        mod.fail("logged in as %r, but the query failed (the login itself works)" % failed.args[0], failed.args[1],
                 connected_as=failed.args[0], token_object_id=object_id_of(access.token))
    plain = [v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in (row or [])]
    result = dict(connected_as=connected_as, token_object_id=object_id_of(access.token),
                  token_expires_on=int(access.expires_on), row=plain,
                  elapsed_ms=int((time.monotonic() - started) * 1000), **extra)
    # Azure SQL compares names case-insensitively (its default collation), PostgreSQL exactly.
    if (connected_as.casefold() != expected.casefold()) if is_sql else (connected_as != expected):
        option = "expected_user" if params["expected_user"] else "user"
        mod.fail("connected as %r, expected %s (%s)" % (connected_as, shown(expected), option), **result)
    mod.exit(False, **result)


def cosmos_status(exc):
    """`` (status 403, substatus 5301)`` for a Cosmos DB error, else ``""``: the substatus says which refusal it is."""
    status, sub = getattr(exc, "status_code", None), getattr(exc, "sub_status", None)
    if status is None:
        return ""
    return " (status %s%s)" % (status, ", substatus %s" % sub if sub else "")


def main_cosmos(mod):
    params = mod.params
    for option in ("database", "container"):
        if not (params[option] or "").strip():
            mod.fail("%s is required for database_type=cosmos" % option)
        problem = cosmos.name_problem(params[option])
        if problem:
            mod.fail("%s %s is not a Cosmos DB id: it %s" % (option, shown(params[option]), problem))
    if not 1 <= params["connect_timeout"] <= 300:
        mod.fail("connect_timeout must be between 1 and 300 seconds, got %s" % params["connect_timeout"])
    if params["parameters"] and not params["query"]:
        mod.fail("parameters are given but no query uses them")
    for number, parameter in enumerate(params["parameters"] or []):
        if sorted(parameter) != ["name", "value"]:
            mod.fail("parameters[%d] must have exactly the keys name and value, got %s"
                     % (number, ", ".join(sorted(parameter)) or "none"))
        if not isinstance(parameter["name"], str) or not parameter["name"].startswith("@"):
            mod.fail("parameters[%d].name must be a string starting with @ (as the query names it), got %s"
                     % (number, shown(parameter["name"])))
    expected = (params["expected_user"] or "").lower() or None
    cosmos_endpoint(mod)  # a bad endpoint fails before any token is asked for
    credential = RecordingCredential(mod.credential, params["cosmos_scope"])
    started = time.monotonic()
    try:
        principal, row, extra = check_cosmos(mod, credential)
    except LoginFailed as failed:
        if credential.access is None:
            mod.fail("no token for Cosmos DB (scope %s) from this host's credential (auth_source=%s)"
                     % (credential.scope, params["auth_source"]), failed.args[0])
        if getattr(failed.args[0], "status_code", None) == 404:
            mod.fail("database %s or its container %s does not exist in %s (status 404): create it through ARM; "
                     "data-plane roles cannot" % (params["database"], params["container"], params["host"].rstrip("/")),
                     token_object_id=object_id_of(credential.access.token), scope=credential.scope)
        mod.fail("Cosmos DB refused %s on %s/%s/%s%s" % (
            object_id_of(credential.access.token), params["host"].rstrip("/"), params["database"], params["container"],
            cosmos_status(failed.args[0])), failed.args[0],
            token_object_id=object_id_of(credential.access.token), scope=credential.scope)
    except QueryFailed as failed:
        mod.fail("signed in as %s, but the query failed%s (the sign-in itself works)"
                 % (failed.args[0], cosmos_status(failed.args[1])), failed.args[1],
                 connected_as=failed.args[0], token_object_id=failed.args[0], scope=credential.scope)
    plain = [v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in (row or [])]
    result = dict(connected_as=principal, token_object_id=principal, token_expires_on=int(credential.access.expires_on),
                  row=plain, elapsed_ms=int((time.monotonic() - started) * 1000), **extra)
    if expected and principal != expected:
        mod.fail("connected as principal %s, expected %s (expected_user)" % (principal, clipped(expected)), **result)
    mod.exit(False, **result)


if __name__ == "__main__":
    main()
