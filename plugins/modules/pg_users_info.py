#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_users_info
short_description: Password users of an Azure Database for PostgreSQL server, split into known and unknown
version_added: 0.1.0
description:
  - Lists the login roles of the server that sign in with a password, the ones C(passwordAuth=Disabled) locks out.
    Left out are Microsoft Entra principals (C(pgaadauth_list_principals)), the server's administrator login
    (O(administrator_login)), and the roles Azure keeps for itself (C(azuresu), C(azure_pg_admin),
    C(azure_superuser), C(replication), and PostgreSQL's C(pg_*) roles). Superusers are left out too. On Azure no
    customer role is one (the administrator is not), only Azure's own C(azuresu) is.
  - Whether a role has a password is in C(pg_authid), which only a superuser can read, and the server's
    administrators are not superusers on Azure. When it cannot be read, every other login role is counted as a
    password user, since with password authentication on that is how it signs in (RV(passwords_visible) says which).
  - Each is marked known when the inventory accounts for it (O(known_users), O(known_user_regex)) or the operator
    accepted it (O(accepted_users)), else unknown. An unknown password user should keep the server on passwords.
  - Read-only. It runs in check mode too.
author: csa-inabox core team (@csa-inabox)
options:
  administrator_login:
    description: The server's PostgreSQL administrator login (C(properties.administratorLogin)), left out of the list.
    type: str
  known_users:
    description: Exact names the inventory accounts for, e.g. Vault's own connection user.
    type: list
    elements: str
    default: []
  known_user_regex:
    description:
      - Python regular expressions searched in each name. Vault's PostgreSQL plugin names dynamic users
        C(v-<auth display name>-<role, 8 chars>-<random>-<unix time>).
    type: list
    elements: str
    default: []
  accepted_users:
    description: Names the operator accepts to lock out (C(mi_cutover_accept_password_users)).
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.postgres
  - csa_inabox.managed_identity.postgres.admin
  - csa_inabox.managed_identity.attributes.read_only
"""

EXAMPLES = r"""
- name: Who would passwordAuth=Disabled lock out?
  csa_inabox.managed_identity.pg_users_info:
    host: pg-prod.postgres.database.azure.com
    admin_user: mi-operator
    administrator_login: pgadmin
    known_user_regex: ['^v-.*-orders-a-']
  register: pg_users
  failed_when: pg_users.unknown_users | length > 0
"""

RETURN = r"""
users:
  description: Password users, in name order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Role name.
      type: str
    known:
      description: Whether the inventory accounts for it or it was accepted.
      type: bool
    reason:
      description: Why it is known (C(listed), C(pattern <regex>), C(accepted)) or C(unknown).
      type: str
    valid_until:
      description: The role's C(VALID UNTIL) (ISO 8601, UTC), null when it has none.
      type: str
  sample: [{"name": "bi-reader", "known": false, "reason": "unknown", "valid_until": null}]
unknown_users:
  description: Names of the password users nobody accounts for.
  returned: always
  type: list
  elements: str
  sample: ["bi-reader"]
passwords_visible:
  description: Whether C(pg_authid) could be read, so that roles without a password were left out.
  returned: always
  type: bool
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import password_users
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import postgres as pg
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

ENTRA_PRINCIPALS = "SELECT rolname FROM pgaadauth_list_principals(false)"
CAN_READ_PASSWORDS = "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"
LOGIN_ROLES = """
SELECT rolname, to_char(rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
  FROM pg_roles WHERE rolcanlogin AND NOT rolsuper ORDER BY rolname
"""
ROLES_WITH_PASSWORD = "SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL"


def read_current(conn):
    """``(login roles {name: valid_until}, Entra principal names, names with a password or None)``."""
    with conn.cursor() as cur:
        cur.execute(ENTRA_PRINCIPALS)
        entra = set(row[0] for row in cur.fetchall())
        cur.execute(LOGIN_ROLES)
        logins = dict(cur.fetchall())
        cur.execute(CAN_READ_PASSWORDS)
        with_password = None
        if cur.fetchone()[0]:
            cur.execute(ROLES_WITH_PASSWORD)
            with_password = set(row[0] for row in cur.fetchall())
    return logins, entra, with_password


def password_user_names(logins, entra, with_password, administrator_login):
    return [name for name in logins
            if name not in entra and name != administrator_login and not password_users.is_azure_postgres_role(name)
            and (with_password is None or name in with_password)]


def main():
    spec = dict(
        administrator_login=dict(type="str"),
        known_users=dict(type="list", elements="str", default=[]),
        known_user_regex=dict(type="list", elements="str", default=[]),
        accepted_users=dict(type="list", elements="str", default=[]),
    )
    spec.update(pg.SERVER_ARGUMENT_SPEC)
    spec.update(pg.ADMIN_ARGUMENT_SPEC)
    mod = MIModule(spec)
    params = mod.params
    problem = pg.option_problem(params, ("admin_user",))
    if problem:
        mod.fail(problem)
    for pattern, error in password_users.bad_patterns(params["known_user_regex"]):
        mod.fail("known_user_regex %s is not a valid regular expression: %s" % (shown(pattern), error))
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("psycopg"))
    try:
        with pg.connect(params["host"], params["port"], "postgres", params["admin_user"], mod.token("postgres"),
                        params["ssl_mode"], params["ssl_root_cert"], params["connect_timeout"]) as conn:
            logins, entra, with_password = read_current(conn)
    except psycopg.Error as exc:
        mod.fail("could not list the login roles of %s as %s (it must be a Microsoft Entra administrator of the "
                 "server)" % (params["host"], params["admin_user"]), exc)
    names = password_user_names(logins, entra, with_password, params["administrator_login"])
    users = password_users.classify(names, params["known_users"], params["known_user_regex"], params["accepted_users"])
    for user in users:
        user["valid_until"] = logins[user["name"]]
    mod.exit(False, users=users, unknown_users=[u["name"] for u in users if not u["known"]],
             passwords_visible=with_password is not None)


if __name__ == "__main__":
    main()
