#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_sessions_info
short_description: Sessions on an Azure Database for PostgreSQL server, by user name
version_added: 0.1.0
description:
  - Lists the sessions in C(pg_stat_activity) whose user name matches O(users) or O(user_regex), across all databases.
  - Used as evidence before anything is taken away. An application that still opens sessions with Vault-issued users
    has not really switched to its identity.
  - Read-only. It runs in check mode too.
author: csa-inabox core team (@csa-inabox)
options:
  users:
    description: Exact user names to look for.
    type: list
    elements: str
    default: []
  user_regex:
    description:
      - Regular expressions (PostgreSQL's C(~) syntax) user names are matched against. Vault's PostgreSQL plugin
        names dynamic users C(v-<auth display name>-<role, 8 chars>-<random>-<unix time>) by default.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.postgres
  - csa_inabox.managed_identity.sessions
  - csa_inabox.managed_identity.postgres.admin
  - csa_inabox.managed_identity.attributes.read_only
"""

EXAMPLES = r"""
- name: Is the orders API still using Vault-issued users?
  csa_inabox.managed_identity.pg_sessions_info:
    host: pg-prod.postgres.database.azure.com
    admin_user: mi-operator
    user_regex: ['^v-.*-orders-a-']
    window_seconds: 60
  register: vault_sessions
  failed_when: vault_sessions.sessions | length > 0
"""

RETURN = r"""
sessions:
  description: Matching sessions seen, one per backend process.
  returned: always
  type: list
  elements: dict
  contains:
    user:
      description: User name.
      type: str
    database:
      description: Database.
      type: str
    application_name:
      description: Application name the client sent.
      type: str
    client_addr:
      description: Client address, null for local sockets.
      type: str
    backend_start:
      description: When the session started (ISO 8601, UTC).
      type: str
"""

import time

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import password_users
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import postgres as pg
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

QUERY = """
SELECT pid, usename, datname, application_name, host(client_addr),
       to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid() AND usename IS NOT NULL
   AND (usename = ANY(%(users)s) OR usename ~ ANY(%(patterns)s))
"""


def main():
    spec = dict(
        users=dict(type="list", elements="str", default=[]),
        user_regex=dict(type="list", elements="str", default=[]),
        window_seconds=dict(type="int", default=0),
        poll_seconds=dict(type="int", default=2),
    )
    spec.update(pg.SERVER_ARGUMENT_SPEC)
    spec.update(pg.ADMIN_ARGUMENT_SPEC)
    mod = MIModule(spec)
    params = mod.params
    problem = password_users.window_problem(params) or pg.option_problem(params, ("admin_user",))
    if problem:
        mod.fail(problem)
    if not (params["users"] or params["user_regex"]):
        mod.fail("give users or user_regex: without them every session would match")
    for pattern, error in password_users.bad_patterns(params["user_regex"]):
        mod.fail("user_regex %s is not a valid regular expression: %s" % (shown(pattern), error))
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("psycopg"))
    seen = {}
    deadline = time.monotonic() + params["window_seconds"]
    try:
        with pg.connect(params["host"], params["port"], "postgres", params["admin_user"], mod.token("postgres"),
                        params["ssl_mode"], params["ssl_root_cert"], params["connect_timeout"]) as conn:
            conn.autocommit = True  # each look must see current activity, not one transaction's snapshot
            while True:
                with conn.cursor() as cur:
                    cur.execute(QUERY, {"users": params["users"], "patterns": params["user_regex"]})
                    for pid, user, database, application, client, started in cur.fetchall():
                        seen[(pid, started)] = dict(user=user, database=database, application_name=application,
                                                    client_addr=client, backend_start=started)
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(params["poll_seconds"], max(0.0, deadline - time.monotonic())))
    except psycopg.Error as exc:
        mod.fail("could not read pg_stat_activity on %s as %s" % (params["host"], params["admin_user"]), exc)
    mod.exit(False, sessions=sorted(seen.values(), key=lambda s: (s["backend_start"], s["user"])))


if __name__ == "__main__":
    main()
