#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: sql_users_info
short_description: The users of an Azure SQL database, and how each one authenticates
version_added: 0.1.0
description:
  - Lists the users of O(database) from C(sys.database_principals), with their type and authentication type.
  - Used before Entra-only authentication is switched on. A contained user with a password (authentication
    C(DATABASE)) that no application of the inventory accounts for would be locked out by the cutover.
  - The built-in users (C(dbo), C(guest), C(INFORMATION_SCHEMA), C(sys)) and roles are not listed.
  - Read-only. It runs in check mode too. Logins in C(master) are not seen from a user database.
author: csa-inabox core team (@csa-inabox)
options:
  database:
    description: Database whose users are listed.
    type: str
    required: true
  authentication:
    description: Only users with these authentication types (C(DATABASE) is a contained user with a password,
      C(EXTERNAL) an Entra user, C(INSTANCE) a user for a server login, C(NONE) a user without login). All when empty.
    type: list
    elements: str
    choices: [DATABASE, EXTERNAL, INSTANCE, NONE]
    default: []
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.sqlserver
  - csa_inabox.managed_identity.attributes.read_only
"""

EXAMPLES = r"""
- name: Who still signs in to appdb with a password?
  csa_inabox.managed_identity.sql_users_info:
    host: sql-prod.database.windows.net
    database: appdb
    authentication: [DATABASE]
  register: password_users
"""

RETURN = r"""
users:
  description: The users, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: User name.
      type: str
    type:
      description: C(S) SQL user, C(E) Entra user or application, C(X) Entra group.
      type: str
    authentication:
      description: C(authentication_type_desc).
      type: str
    sid:
      description: The SID in hex (C(0x...)).
      type: str
  sample: [{name: inventory-api-sql, type: S, authentication: DATABASE, sid: "0x0105000000000009030000004A2E"}]
driver:
  description: The client library used, V(pyodbc) or V(mssql-python).
  returned: always
  type: str
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import sqlserver as sql
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule

QUERY = ("SELECT name, type, authentication_type_desc, sid FROM sys.database_principals "
         "WHERE type IN ('S', 'E', 'X')")


def main():
    spec = dict(
        database=dict(type="str", required=True),
        authentication=dict(type="list", elements="str", default=[],
                            choices=["DATABASE", "EXTERNAL", "INSTANCE", "NONE"]),
    )
    spec.update(sql.SERVER_ARGUMENT_SPEC)
    mod = MIModule(spec)
    params = mod.params
    conn, driver, target = sql.sign_in_or_fail(mod)
    try:
        cur = conn.cursor()
        cur.execute(QUERY)
        rows = cur.fetchall()
        conn.rollback()
    except sql.driver_errors(driver) as exc:
        mod.fail("could not read sys.database_principals on %s" % target, exc)
    finally:
        conn.close()
    wanted = set(params["authentication"])
    users = [dict(name=name, type=kind, authentication=auth, sid="0x" + bytes(sid or b"").hex().upper())
             for name, kind, auth, sid in rows
             if name.casefold() not in sql.BUILT_IN_USERS and (not wanted or auth in wanted)]
    mod.exit(False, driver=driver, users=sorted(users, key=lambda user: user["name"].casefold()))


if __name__ == "__main__":
    main()
