#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: sql_sessions_info
short_description: Sessions in an Azure SQL database, by login name
version_added: 0.1.0
description:
  - Lists the user sessions in C(sys.dm_exec_sessions) of O(database) whose login name is one of O(users).
  - Used as evidence before anything is taken away. An application that still signs in with its SQL user (the password
    kept in Vault) has not really switched to its identity.
  - Read-only. It runs in check mode too.
  - The identity the module signs in as needs C(VIEW DATABASE STATE) (the server's Entra administrator has it); without
    it Azure SQL shows only the caller's own session.
author: csa-inabox core team (@csa-inabox)
options:
  database:
    description: Database to look in (Azure SQL Database shows the sessions of the database the caller is in).
    type: str
    required: true
  users:
    description: Login names to look for (for a contained SQL user, its user name).
    type: list
    elements: str
    required: true
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.sqlserver
  - csa_inabox.managed_identity.sessions
  - csa_inabox.managed_identity.attributes.read_only
"""

EXAMPLES = r"""
- name: Is the inventory API still signing in with its SQL user?
  csa_inabox.managed_identity.sql_sessions_info:
    host: sql-prod.database.windows.net
    database: appdb
    users: [inventory-api-sql]
    window_seconds: 60
  register: password_sessions
  failed_when: password_sessions.sessions | length > 0
"""

RETURN = r"""
sessions:
  description: Matching sessions seen.
  returned: always
  type: list
  elements: dict
  contains:
    user:
      description: Login name.
      type: str
    session_id:
      description: Session id.
      type: int
    program_name:
      description: Program name the client sent.
      type: str
    host_name:
      description: Host name the client sent.
      type: str
    login_time:
      description: When the session signed in, as the server reports it.
      type: str
driver:
  description: The client library used, V(pyodbc) or V(mssql-python).
  returned: always
  type: str
"""

import time

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import password_users
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import sqlserver as sql
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule

QUERY = ("SELECT session_id, login_name, program_name, host_name, login_time FROM sys.dm_exec_sessions "
         "WHERE is_user_process = 1 AND login_name = ?")


def main():
    spec = dict(
        database=dict(type="str", required=True),
        users=dict(type="list", elements="str", required=True),
        window_seconds=dict(type="int", default=0),
        poll_seconds=dict(type="int", default=2),
    )
    spec.update(sql.SERVER_ARGUMENT_SPEC)
    mod = MIModule(spec)
    params = mod.params
    problem = password_users.window_problem(params)
    if problem:
        mod.fail(problem)
    if not params["users"]:
        mod.fail("users must name at least one login")
    conn, driver, target = sql.sign_in_or_fail(mod)
    seen = {}
    deadline = time.monotonic() + params["window_seconds"]
    try:
        conn.autocommit = True  # each look must see current sessions
        cur = conn.cursor()
        while True:
            for user in params["users"]:
                cur.execute(QUERY, (user,))
                for session_id, login, program, host, started in cur.fetchall():
                    seen[(session_id, str(started))] = dict(user=login, session_id=session_id, program_name=program,
                                                            host_name=host, login_time=str(started))
            if time.monotonic() >= deadline:
                break
            time.sleep(min(params["poll_seconds"], max(0.0, deadline - time.monotonic())))
    except sql.driver_errors(driver) as exc:
        mod.fail("could not read sys.dm_exec_sessions on %s" % target, exc)
    finally:
        conn.close()
    mod.exit(False, driver=driver, sessions=sorted(seen.values(), key=lambda s: (s["login_time"], s["user"])))


if __name__ == "__main__":
    main()
