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
  - Never changes anything. It runs in check mode too, because it only reads.
author: csa-inabox core team (@csa-inabox)
options:
  database_type:
    description: Kind of database. PostgreSQL for now.
    type: str
    choices: [postgres]
    default: postgres
  database:
    description: Database to connect to.
    type: str
    required: true
  user:
    description: User name to connect as. For PostgreSQL, the role created for the identity.
    type: str
    required: true
  query:
    description:
      - Query to run after connecting; its first row is returned.
      - It runs as a single prepared statement in a read-only transaction that is rolled back, so it cannot change
        anything (several statements separated by C(;) are refused).
    type: str
    default: SELECT current_user
  expected_user:
    description: Fail unless the database reports this C(current_user). Defaults to O(user).
    type: str
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.postgres
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
"""

RETURN = r"""
connected_as:
  description: What the database reported as C(current_user).
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
  description: First row of O(query), as a list.
  returned: success
  type: list
  elements: raw
elapsed_ms:
  description: Time to get the token, connect and query, in milliseconds.
  returned: success
  type: int
"""

import base64
import json
import time

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import postgres as pg
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule


def object_id_of(token):
    """The ``oid`` claim, read without verifying (only the database verifies); None if unreadable."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("oid")
    except (IndexError, ValueError):
        return None


def main():
    mod = MIModule(dict(
        database_type=dict(type="str", default="postgres", choices=["postgres"]),
        database=dict(type="str", required=True),
        user=dict(type="str", required=True),
        query=dict(type="str", default="SELECT current_user"),
        expected_user=dict(type="str"),
        **pg.SERVER_ARGUMENT_SPEC
    ))
    params = mod.params
    started = time.monotonic()
    try:
        access = mod.credential.get_token(mod.cloud.scope("postgres"))
    except Exception as exc:  # azure-identity raises several unrelated types
        mod.fail("no token for the PostgreSQL audience from this host's credential (auth_source=%s)"
                 % params["auth_source"], exc)
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("psycopg"))
    try:
        with pg.connect(params["host"], params["port"], params["database"], params["user"], access.token,
                        params["ssl_mode"], params["ssl_root_cert"], params["connect_timeout"]) as conn:
            conn.read_only = True
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                connected_as = cur.fetchone()[0]
                # A prepared statement is one statement: "SELECT 1; COMMIT; DROP ..." is refused by the server,
                # so the query cannot leave the read-only transaction. Nothing is committed either way.
                cur.execute(params["query"], prepare=True)
                row = cur.fetchone() if cur.description else None
            conn.rollback()
    except psycopg.Error as exc:
        target = "%s:%s/%s" % (params["host"], params["port"], params["database"])
        mod.fail("login as %s to %s failed" % (params["user"], target), exc, token_object_id=object_id_of(access.token))
    expected = params["expected_user"] or params["user"]
    plain = [v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for v in (row or [])]
    result = dict(connected_as=connected_as, token_object_id=object_id_of(access.token),
                  token_expires_on=int(access.expires_on), row=plain,
                  elapsed_ms=int((time.monotonic() - started) * 1000))
    if connected_as != expected:
        mod.fail("connected as %r, expected %r" % (connected_as, expected), **result)
    mod.exit(False, **result)


if __name__ == "__main__":
    main()
