#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: sql_entra_user
short_description: A contained Azure SQL database user for a Microsoft Entra principal, and its database roles
version_added: 0.1.0
description:
  - Creates the contained database user of a Microsoft Entra principal (a managed identity, by default) and makes it a
    member of the listed database roles, built-in (C(db_datareader), ...) or custom.
  - By default the user is created with C(CREATE USER ... WITH SID = 0x..., TYPE = E|X), from the id Azure SQL keys
    Entra logins on - the client id of applications and managed identities, the object id of users and groups - in
    SQL Server's byte order. This needs no directory lookup. The tutorial's name-only C(CREATE USER ... FROM EXTERNAL
    PROVIDER) (O(create_from=external_provider)) needs a unique display name and, when the module signs in as an
    application or managed identity, the B(server's) identity must hold Directory Readers.
  - The user is judged by its SID, not only its name. A user of that name with another SID (an identity deleted and
    recreated under the same name) or a SQL-authenticated user of that name is reported and left alone, and only
    replaced (dropped and created again) with O(replace=true).
  - Everything is read and validated before the first write (the roles must exist); writes run in one transaction,
    rolled back on any error. Check mode runs no write and returns the planned statements in RV(queries).
  - Signs in with a token for the SQL audience acquired with the credential of O(auth_source). That principal must be
    the server's Entra administrator, or a member of C(db_owner) (or C(db_accessadmin) and C(db_securityadmin)).
author: csa-inabox core team (@csa-inabox)
options:
  name:
    description: Name of the database user (at most 128 characters). For a managed identity, usually its name.
    type: str
    required: true
  database:
    description: Database the user is created in (a contained user lives in one database).
    type: str
    required: true
  principal_type:
    description: Kind of Entra principal. Groups become C(TYPE = X) users; the others C(TYPE = E).
    type: str
    choices: [managed_identity, application, user, group]
    default: managed_identity
  principal_client_id:
    description:
      - Client (application) id of a managed identity or application, which its SID is built from. Required for those
        kinds with O(create_from=sid) and O(state=present).
      - Not its principal (object) id; a user built from the object id is created but can never sign in.
    type: str
  object_id:
    description:
      - Object id of a user or group, which its SID is built from. Required for those kinds with O(create_from=sid).
      - With O(create_from=external_provider), passed as C(WITH OBJECT_ID) to pick one of several principals that
        share a display name.
    type: str
  create_from:
    description:
      - V(sid) creates the user from its SID, with no directory lookup.
      - V(external_provider) creates it by name with C(FROM EXTERNAL PROVIDER), looked up in Entra by the server.
    type: str
    choices: [sid, external_provider]
    default: sid
  roles:
    description:
      - Database roles the user must be a member of. Every one must exist; names compare case-insensitively.
      - C(public) may be listed but is never managed; every user is a member of it.
    type: list
    elements: str
    default: []
  role_membership:
    description:
      - V(additive) adds the missing memberships and keeps others.
      - V(exact) also removes memberships in roles that are not listed.
    type: str
    choices: [additive, exact]
    default: additive
  replace:
    description:
      - Drop and recreate a user of this name that has another SID, another type, or is a SQL-authenticated user.
        Its role memberships and permissions go with it; the new user gets O(roles).
    type: bool
    default: false
  state:
    description:
      - Whether the user should exist. V(absent) drops it (with its memberships).
      - V(absent) drops a SQL-authenticated user, or an Entra user whose SID is not that of the given id, only with
        O(replace=true).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.sqlserver
  - csa_inabox.managed_identity.attributes
seealso:
  - name: Microsoft Entra server principals and contained users in Azure SQL
    description: Microsoft Learn, CREATE USER (Transact-SQL), "FROM EXTERNAL PROVIDER" and "WITH SID".
    link: https://learn.microsoft.com/sql/t-sql/statements/create-user-transact-sql
  - module: csa_inabox.managed_identity.sql_server_entra
"""

EXAMPLES = r"""
- name: The inventory API reads and writes appdb as its managed identity
  csa_inabox.managed_identity.sql_entra_user:
    host: sql-prod.database.windows.net
    database: appdb
    name: mi-inventory-api
    principal_client_id: "{{ identity.identity.client_id }}"
    roles: [db_datareader, db_datawriter]
    role_membership: exact
  register: user

- name: A DBA group, by object id
  csa_inabox.managed_identity.sql_entra_user:
    host: sql-prod.database.windows.net
    database: appdb
    name: sql-dbas
    principal_type: group
    object_id: 9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f
    roles: [db_owner]

- name: Remove a user
  csa_inabox.managed_identity.sql_entra_user:
    host: sql-prod.database.windows.net
    database: appdb
    name: mi-old-app
    state: absent
"""

RETURN = r"""
user:
  description: The user after the change (or as planned, in check mode); empty when absent.
  returned: always
  type: dict
  contains:
    name:
      description: User name, as the catalog spells it.
      type: str
    type:
      description: C(E) Entra user/application, C(X) Entra group, C(S) SQL user.
      type: str
    sid:
      description: The SID in hex (C(0x...)).
      type: str
    sid_guid:
      description: The GUID the SID stands for (the client id or object id), or null.
      type: str
    sid_source:
      description: Which id of the principal the SID is built from, V(client_id) or V(object_id).
      type: str
    roles:
      description: Database roles the user is a member of, sorted.
      type: list
      elements: str
  sample:
    name: mi-inventory-api
    type: E
    sid: "0x33221100554477668899AABBCCDDEEFF"
    sid_guid: 00112233-4455-6677-8899-aabbccddeeff
    sid_source: client_id
    roles: [db_datareader, db_datawriter]
created:
  description: Whether the user was (or would be) created.
  returned: always
  type: bool
replaced:
  description: Whether a user of the same name with another SID or type was (or would be) dropped first.
  returned: always
  type: bool
conflict:
  description:
    - What stood in the way when a user of this name exists with another SID or type and O(replace=false) (the module
      then fails), or null.
  returned: always
  type: dict
queries:
  description: The statements run (or planned, in check mode), in order. No secrets.
  returned: always
  type: list
  elements: str
driver:
  description: The client library used, V(pyodbc) or V(mssql-python).
  returned: when connected
  type: str
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import sqlserver as sql
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import (
    KNOWN_AFTER_APPLY, MIModule, is_guid)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

TYPE_DESC = {"E": "EXTERNAL_USER", "X": "EXTERNAL_GROUP", "S": "SQL_USER"}
# The option holding each kind of id. Not "client_id": that is the option of the shared Azure auth options that
# picks the identity the module itself signs in as.
OPTION_OF = {"client_id": "principal_client_id", "object_id": "object_id"}


def check_name(mod, field, value):
    try:
        sql.quote_name(value)
    except ValueError as exc:
        mod.fail("%s %s: %s" % (field, shown(value), exc))


def validate(mod):
    """Check every option before connecting; returns ``(type, id kind, GUID)``, the GUID None when unknown."""
    params = mod.params
    problem = sql.option_problem(params)
    if problem:
        mod.fail(problem)
    check_name(mod, "name", params["name"])
    check_name(mod, "database", params["database"])
    if params["name"].casefold() in sql.BUILT_IN_USERS + sql.FIXED_ROLES:
        mod.fail("name %r is a principal every database has (a built-in user or a fixed role); it is not managed here"
                 % params["name"])
    for role in params["roles"]:
        check_name(mod, "roles", role)
    for field in ("principal_client_id", "object_id"):
        value = params[field]
        if value == KNOWN_AFTER_APPLY and mod.check_mode:
            continue
        if value and not is_guid(value):
            mod.fail("%s %s is not a GUID: give it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" % (field, shown(value)))
        if value and not value.strip("0-"):
            mod.fail("%s is the nil GUID, which no Entra principal has" % field)
    kind, source = sql.PRINCIPAL_TYPES[params["principal_type"]]
    guid = params[OPTION_OF[source]]
    if params["state"] == "present" and params["create_from"] == "sid" and not guid:
        hint = (" (the managed identity's client id, not its principal id)" if source == "client_id" else "")
        mod.fail("%s is required to create a %s user from its SID%s"
                 % (OPTION_OF[source], params["principal_type"], hint))
    if params["principal_type"] in ("user", "group") and params["principal_client_id"]:
        mod.fail("principal_client_id applies to managed identities and applications; a %s is keyed on its object_id"
                 % params["principal_type"])
    return kind, source, (guid if guid != KNOWN_AFTER_APPLY else None)


def wanted_roles(params):
    """The roles asked for, casefold -> name, without duplicates and without ``public`` (every user is a member)."""
    return dict((role.casefold(), role) for role in params["roles"] if role.casefold() != "public")


def create_statement(params, quoted, kind, guid):
    """The CREATE USER of the wanted user (``guid`` None: an identity only planned in check mode)."""
    if params["create_from"] == "sid":
        literal = sql.sid_literal(guid) if guid else KNOWN_AFTER_APPLY
        return "CREATE USER %s WITH SID = %s, TYPE = %s" % (quoted, literal, kind)
    if params["object_id"] and params["object_id"] != KNOWN_AFTER_APPLY:
        return "CREATE USER %s FROM EXTERNAL PROVIDER WITH OBJECT_ID = '%s'" % (quoted, params["object_id"].lower())
    return "CREATE USER %s FROM EXTERNAL PROVIDER" % quoted


def read_user(cur, name):
    """The user named ``name`` as a dict, or None."""
    cur.execute(sql.USER_BY_NAME, (name,))
    row = cur.fetchone()
    if row is None:
        return None
    sid = bytes(row[2] or b"")
    cur.execute(sql.ROLES_OF, (row[4],))
    roles = sorted(r[0] for r in cur.fetchall())
    return {"name": row[0], "type": row[1], "sid": "0x" + sid.hex().upper(), "sid_guid": sql.guid_of_sid(sid),
            "authentication": row[3], "roles": roles}


def resolve_roles(mod, cur):
    """The catalog spelling of each wanted role; fails naming the roles that do not exist."""
    found, missing = [], []
    for role in wanted_roles(mod.params).values():
        cur.execute(sql.ROLE_BY_NAME, (role,))
        row = cur.fetchone()
        (found if row else missing).append(row[0] if row else role)
    if missing:
        mod.fail("roles: database %s has no role named %s; create the role first (roles belong to the application's schema, "
                 "which this module does not manage)" % (mod.params["database"], ", ".join(shown(r) for r in missing)))
    return sorted(set(found), key=str.casefold)


def conflict_with(existing, kind, guid, planned=False):
    """Why ``existing`` is not the wanted user (a dict), or None when it is. ``planned``: the wanted principal does
    not exist yet (check mode), so no existing user can be its own."""
    if existing is None:
        return None
    if existing["type"] == "R":
        return {"reason": "a database role has this name", "existing": existing, "role": True}
    if existing["type"] not in ("E", "X"):
        return {"reason": "a %s user of this name exists (authentication %s), not an Entra one"
                % (TYPE_DESC.get(existing["type"], existing["type"]), existing["authentication"]),
                "existing": existing}
    if existing["type"] != kind:
        return {"reason": "an Entra user of this name exists with type %s, not %s" % (existing["type"], kind),
                "existing": existing}
    if planned:
        return {"reason": "an Entra user of this name exists (SID of %s), and the identity this run creates cannot "
                "be its principal" % existing["sid_guid"], "existing": existing}
    if guid and existing["sid_guid"] != guid.lower():
        return {"reason": "an Entra user of this name exists for another principal (SID of %s, not %s): an identity "
                "recreated under the same name, or a user built from the wrong id" % (existing["sid_guid"], guid),
                "existing": existing}
    return None


def plan(mod, cur, kind, source, guid):
    """``(statements, before, after, created, replaced, conflict)`` for the wanted state; reads only."""
    params = mod.params
    name = params["name"]
    quoted = sql.quote_name(name)
    existing = read_user(cur, name)
    before = existing or {}
    planned = guid is None and params[OPTION_OF[source]] == KNOWN_AFTER_APPLY
    if params["state"] == "absent":
        if existing is None:
            return [], before, {}, False, False, None
        # Without an id, only an Entra user is dropped by name alone; a SQL user (a password) needs replace=true.
        problem = conflict_with(existing, existing["type"] if not guid else kind, guid)
        if problem and (not params["replace"] or problem.get("role")):
            return [], before, before, False, False, problem
        return ["DROP USER %s" % quoted], before, {}, False, False, None

    roles = resolve_roles(mod, cur)
    problem = conflict_with(existing, kind, guid, planned)
    if problem and (not params["replace"] or problem.get("role")):
        return [], before, before, False, False, problem
    statements = []
    replaced = problem is not None
    if replaced:
        statements.append("DROP USER %s" % quoted)
    if existing is None or replaced:
        if guid:
            cur.execute(sql.USER_BY_SID, (sql.sid_of(guid),))
            other = cur.fetchone()
            if other is not None and other[0].casefold() != name.casefold():
                mod.fail("the %s %s already has the user %r in %s; one principal has one user per database (SQL "
                         "Server error 15063). Rename that user (ALTER USER ... WITH NAME) or remove it first"
                         % (source.replace("_", " "), guid, other[0], params["database"]))
        statements.append(create_statement(params, quoted, kind, guid))
        current_roles = []
    else:
        current_roles = existing["roles"]
    have = dict((r.casefold(), r) for r in current_roles)
    want = dict((r.casefold(), r) for r in roles)
    for key in sorted(set(want) - set(have)):
        statements.append("ALTER ROLE %s ADD MEMBER %s" % (sql.quote_name(want[key]), quoted))
    kept = set(have)
    if params["role_membership"] == "exact":
        for key in sorted(set(have) - set(want)):
            statements.append("ALTER ROLE %s DROP MEMBER %s" % (sql.quote_name(have[key]), quoted))
        kept &= set(want)
    after_roles = sorted([have[k] for k in kept] + [want[k] for k in set(want) - set(have)], key=str.casefold)
    sid = "0x" + sql.sid_of(guid).hex().upper() if guid else (KNOWN_AFTER_APPLY if existing is None or replaced
                                                              else existing["sid"])
    after = {"name": name if existing is None or replaced else existing["name"], "type": kind, "sid": sid,
             "sid_guid": guid.lower() if guid else (None if existing is None or replaced else existing["sid_guid"]),
             "roles": after_roles}
    return statements, before, after, existing is None or replaced, replaced, None


def plan_without_catalog(mod, kind, source, guid):
    """Check mode before this run has made the module's identity the server's Entra administrator: exit with the
    plan for a database that has no such user (the roles are not checked)."""
    params = mod.params
    mod.module.warn("check mode: could not sign in to %s (login failed, 18456). That is expected when this run would "
                    "make the module's identity the server's Entra administrator; otherwise the real run will fail "
                    "the same way. The plan assumes the user does not exist and does not check that the roles do"
                    % params["host"])
    if params["state"] == "absent":
        mod.exit(False, before={}, after={}, user={}, created=False, replaced=False, conflict=None, queries=[])
    quoted = sql.quote_name(params["name"])
    roles = sorted(wanted_roles(params).values(), key=str.casefold)
    statements = [create_statement(params, quoted, kind, guid)]
    statements += ["ALTER ROLE %s ADD MEMBER %s" % (sql.quote_name(role), quoted) for role in roles]
    after = {"name": params["name"], "type": kind, "sid": sql.sid_literal(guid) if guid else KNOWN_AFTER_APPLY,
             "sid_guid": guid.lower() if guid else None, "sid_source": source, "roles": roles}
    mod.exit(True, before={}, after=after, user=after, created=True, replaced=False, conflict=None, queries=statements)


def main():
    mod = MIModule(dict(
        name=dict(type="str", required=True),
        database=dict(type="str", required=True),
        principal_type=dict(type="str", default="managed_identity", choices=list(sql.PRINCIPAL_TYPES)),
        principal_client_id=dict(type="str"),
        object_id=dict(type="str"),
        create_from=dict(type="str", default="sid", choices=["sid", "external_provider"]),
        roles=dict(type="list", elements="str", default=[]),
        role_membership=dict(type="str", default="additive", choices=["additive", "exact"]),
        replace=dict(type="bool", default=False),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        **sql.SERVER_ARGUMENT_SPEC
    ))
    params = mod.params
    kind, source, guid = validate(mod)
    target = "%s:%s/%s" % (params["host"], params["port"], params["database"])
    token = mod.token("sql")
    try:
        conn, driver = sql.connect_with(params, token)
    except sql.DriverMissing as exc:
        mod.fail(str(exc))
    except Exception as exc:  # the driver's own error types: pyodbc.Error, mssql_python.Error
        if mod.check_mode and sql.error_number(exc) == 18456:
            plan_without_catalog(mod, kind, source, guid)
        mod.fail("sign-in to %s with a token for auth_source=%s failed" % (target, params["auth_source"]), exc)
    errors = sql.driver_errors(driver)
    result = dict(driver=driver, created=False, replaced=False, conflict=None, queries=[])
    try:
        cur = conn.cursor()
        statements, before, after, created, replaced, problem = plan(mod, cur, kind, source, guid)
        result.update(created=created, replaced=replaced, conflict=problem, queries=statements)
        if problem:
            remedy = ("choose another name" if problem.get("role") else
                      "set replace=true to drop it anyway" if params["state"] == "absent" else
                      "set replace=true to drop it and create the user again")
            mod.fail("user %r in %s: %s. Nothing was changed; %s" % (params["name"], target, problem["reason"], remedy),
                     **result)
        if statements and not mod.check_mode:
            for done, statement in enumerate(statements):
                try:
                    cur.execute(statement)
                except errors as exc:
                    conn.rollback()
                    result.update(created=False, replaced=False)  # rolled back: what was planned did not happen
                    mod.fail("%s failed (SQL Server error %s) on %s; rolled back, nothing was changed (ran before it: "
                             "%s)" % (statement, sql.error_number(exc), target, "; ".join(statements[:done]) or "none"),
                             exc, **result)
            if params["state"] == "present":
                after = read_user(cur, params["name"]) or {}
                if guid and after.get("sid_guid") != guid.lower():  # a name lookup that found someone else
                    conn.rollback()
                    result.update(created=False, replaced=False)
                    mod.fail("the directory resolved %r to the principal %s, not %s; rolled back, nothing was changed. "
                             "Use create_from=sid" % (params["name"], after.get("sid_guid"), guid), **result)
            conn.commit()
        else:
            conn.rollback()
    except errors as exc:
        mod.fail("reading the users of %s failed" % target, exc, **result)
    finally:
        conn.close()
    for side in (before, after):
        side.pop("authentication", None)
    if after:
        after["sid_source"] = source
    mod.exit(bool(statements), before=before, after=after, user=after, **result)


if __name__ == "__main__":
    main()
