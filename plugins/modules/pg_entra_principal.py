#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_entra_principal
short_description: A Microsoft Entra principal in Azure Database for PostgreSQL, with exactly the privileges it needs
version_added: 0.1.0
description:
  - Creates the PostgreSQL role of a Microsoft Entra principal (a managed identity, by default) with
    C(pgaadauth_create_principal_with_oid) from its object id. The name-only C(pgaadauth_create_principal) the
    tutorial uses needs a unique display name in the directory, so this module does not use it.
  - Grants exactly the listed privileges on the database, schemas, tables and sequences, and default privileges for
    objects created later. Privileges of the role that are not listed are revoked unless O(purge_grants=false).
  - Everything is read first (principals, schemas, objects, owners, current privileges) and validated before the first
    write. Writes run in one transaction per database. Check mode runs no DDL at all and returns the planned
    statements in RV(queries).
  - Connects as a Microsoft Entra administrator (O(admin_user)) with a token acquired by the module.
author: csa-inabox core team (@csa-inabox)
options:
  role:
    description: Name of the PostgreSQL role (at most 63 bytes). For a managed identity, usually its name; the
      application connects with this user name.
    type: str
    required: true
  object_id:
    description:
      - Object id of the principal in Entra ID. For a managed identity that is its principal id (not its client id).
      - Required with O(state=present).
    type: str
  principal_type:
    description: Kind of principal, as C(pgaadauth_create_principal_with_oid) names it.
    type: str
    choices: [service, user, group]
    default: service
  database:
    description: Database the grants apply to.
    type: str
    required: true
  grants:
    description: Privileges the role must have in O(database).
    type: list
    elements: dict
    default: []
    suboptions:
      object_type:
        description: Kind of object.
        type: str
        required: true
        choices: [database, schema, table, sequence]
      schema:
        description: Schema of the objects, or the schema itself for O(grants[].object_type=schema). Required except for C(database).
        type: str
      objects:
        description: Table or sequence names in O(grants[].schema); C(ALL) means every one that exists now.
        type: list
        elements: str
        default: [ALL]
      privileges:
        description: Privileges, e.g. C(CONNECT) (database), C(USAGE) (schema), C(SELECT) (table), C(USAGE) (sequence).
        type: list
        elements: str
        required: true
  default_privileges:
    description: Privileges the role gets on tables or sequences that O(default_privileges[].for_role) creates later.
    type: list
    elements: dict
    default: []
    suboptions:
      for_role:
        description: The role that will own the new objects (usually the application's schema owner).
        type: str
        required: true
      schema:
        description: Schema the new objects will be created in.
        type: str
        required: true
      object_type:
        description: Kind of object.
        type: str
        required: true
        choices: [table, sequence]
      privileges:
        description: Privileges.
        type: list
        elements: str
        required: true
  purge_grants:
    description: Revoke privileges and default privileges of the role that are not listed.
    type: bool
    default: true
  admin_member_of:
    description:
      - Roles O(admin_user) must be a member of to grant on their objects (the owners of the tables and sequences, and
        the O(default_privileges[].for_role)). The module adds the membership (C(GRANT owner TO CURRENT_USER)) when it
        is missing. Without it, PostgreSQL would refuse the grants, and the module says which owner is missing before
        writing anything.
    type: list
    elements: str
    default: []
  state:
    description: Whether the principal should exist. V(absent) revokes its privileges in O(database), then drops the role.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.postgres
  - csa_inabox.managed_identity.postgres.admin
  - csa_inabox.managed_identity.attributes
seealso:
  - name: Create users in Azure Database for PostgreSQL with Microsoft Entra
    description: Microsoft Learn.
    link: https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-manage-azure-ad-users
"""

EXAMPLES = r"""
- name: The orders API reads and writes its own schema
  csa_inabox.managed_identity.pg_entra_principal:
    host: pg-prod.postgres.database.azure.com
    admin_user: mi-operator
    role: mi-orders-api
    object_id: "{{ identity.identity.principal_id }}"
    database: appdb
    admin_member_of: [pgadmin]
    grants:
      - object_type: database
        privileges: [CONNECT]
      - object_type: schema
        schema: orders
        privileges: [USAGE]
      - object_type: table
        schema: orders
        privileges: [SELECT, INSERT, UPDATE, DELETE]
      - object_type: sequence
        schema: orders
        privileges: [USAGE]
    default_privileges:
      - for_role: pgadmin
        schema: orders
        object_type: table
        privileges: [SELECT, INSERT, UPDATE, DELETE]
  register: principal

- name: Show what ran
  ansible.builtin.debug:
    var: principal.queries
"""

RETURN = r"""
role:
  description: The role name.
  returned: always
  type: str
object_id:
  description: Object id the role is bound to.
  returned: always
  type: str
created:
  description: Whether the principal was (or, in check mode, would be) created.
  returned: always
  type: bool
privileges:
  description: The role's privileges in O(database) after the change, as C(<kind> <object> <privilege>) strings, sorted.
  returned: always
  type: list
  elements: str
  sample: ["database appdb CONNECT", "schema orders USAGE", "table orders.orders SELECT"]
default_privileges:
  description: The role's default privileges after the change, as C(<for_role> <schema> <kind> <privilege>), sorted.
  returned: always
  type: list
  elements: str
unmanaged:
  description:
    - What else the role can do that this module does not manage, so cannot purge. These are privileges granted by
      another role than the object's owner, memberships in other roles, and global default privileges. Each one is
      also a warning; review them.
  returned: always
  type: list
  elements: str
  sample: ["member of role pgadmin", "table billing.invoices SELECT granted by another role than the owner"]
queries:
  description: The statements run (or planned, in check mode), in order, with identifiers quoted. No secrets.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import postgres as pg
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import (
    KNOWN_AFTER_APPLY, MIModule, guid_problem)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

ADVISORY_LOCK_KEY = 0x6D695F7067  # "mi_pg": one lock for this collection's DDL on a cluster


def check_name(mod, field, value):
    problem = pg.name_problem(field, value)
    if problem:
        mod.fail(problem)


def normalise_privileges(mod, field, kind, privileges):
    allowed = pg.PRIVILEGES[kind]
    result = []
    for value in privileges:
        name = pg.PRIVILEGE_ALIASES.get(value.strip().upper(), value.strip().upper())
        if name == "ALL":
            result.extend(allowed)
        elif name not in allowed:
            mod.fail("%s: %s is not a privilege on a %s; use some of %s" % (field, shown(value), kind, ", ".join(allowed)))
        else:
            result.append(name)
    if not result:
        mod.fail("%s: at least one privilege is required" % field)
    return sorted(set(result))


def validate(mod):
    """Check every option before any connection: names, GUIDs, privilege names."""
    params = mod.params
    problem = pg.option_problem(params, ("role", "database", "admin_user"))
    if problem:
        mod.fail(problem)
    if params["state"] == "present":
        oid = params["object_id"]
        problem = guid_problem("object_id", oid, "the managed identity's principal id (object id)")
        if oid == KNOWN_AFTER_APPLY and mod.check_mode:
            pass  # the identity is only planned in this check-mode run
        elif problem:
            mod.fail(problem)
    for index, grant in enumerate(params["grants"]):
        field = "grants[%d]" % index
        if grant["object_type"] != "database":
            if not grant["schema"]:
                mod.fail("%s.schema is required for object_type=%s" % (field, grant["object_type"]))
            check_name(mod, field + ".schema", grant["schema"])
        for name in grant["objects"]:
            if name != "ALL":
                check_name(mod, field + ".objects", name)
        grant["privileges"] = normalise_privileges(mod, field + ".privileges", grant["object_type"], grant["privileges"])
    for index, default in enumerate(params["default_privileges"]):
        field = "default_privileges[%d]" % index
        check_name(mod, field + ".for_role", default["for_role"])
        check_name(mod, field + ".schema", default["schema"])
        default["privileges"] = normalise_privileges(mod, field + ".privileges", default["object_type"], default["privileges"])
    for name in params["admin_member_of"]:
        check_name(mod, "admin_member_of", name)


def read_principal(mod, cur):
    """(exists as a role, the principal's pgaadauth entry or None)."""
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (mod.params["role"],))
    exists = cur.fetchone() is not None
    cur.execute('SELECT "objectId", "principalType" FROM pgaadauth_list_principals(false) WHERE rolname = %s',
                (mod.params["role"],))
    row = cur.fetchone()
    return exists, ({"object_id": row[0], "principal_type": row[1]} if row else None)


def desired_privileges(mod, cur):
    """Expand the grants into (kind, schema, name, privilege) tuples; fail on schemas/objects that do not exist.

    Also returns the owners of the objects (the admin must be a member of each to grant).
    """
    params = mod.params
    wanted, owners = set(), set()
    # Since PostgreSQL 15 schema public belongs to pg_database_owner, which stands for the database's owner.
    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
    database_owner = cur.fetchone()[0]
    for index, grant in enumerate(params["grants"]):
        field = "grants[%d]" % index
        kind = grant["object_type"]
        if kind == "database":
            wanted.update((kind, params["database"], params["database"], p) for p in grant["privileges"])
            continue
        cur.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (grant["schema"],))
        row = cur.fetchone()
        if row is None:
            mod.fail("%s.schema: schema %s does not exist in database %s" % (field, shown(grant["schema"]), params["database"]))
        if kind == "schema":
            owners.add(database_owner if row[0] == "pg_database_owner" else row[0])
            wanted.update((kind, grant["schema"], grant["schema"], p) for p in grant["privileges"])
            continue
        cur.execute(pg.OBJECTS_IN_SCHEMA, {"schema": grant["schema"], "kinds": pg.RELKINDS[kind]})
        present = dict(cur.fetchall())
        names = sorted(present) if "ALL" in grant["objects"] else grant["objects"]
        missing = [n for n in names if n not in present]
        if missing:
            mod.fail("%s.objects: no %s named %s in schema %s" % (field, kind, ", ".join(map(shown, missing)),
                                                                  grant["schema"]))
        for name in names:
            owners.add(present[name])
            wanted.update((kind, grant["schema"], name, p) for p in grant["privileges"])
    defaults = set()
    for index, default in enumerate(params["default_privileges"]):
        field = "default_privileges[%d]" % index
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (default["schema"],))
        if cur.fetchone() is None:
            mod.fail("%s.schema: schema %s does not exist in database %s"
                     % (field, shown(default["schema"]), params["database"]))
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (default["for_role"],))
        if cur.fetchone() is None:
            mod.fail("%s.for_role: role %s does not exist" % (field, shown(default["for_role"])))
        owners.add(default["for_role"])
        defaults.update((default["for_role"], default["schema"], default["object_type"], p) for p in default["privileges"])
    return wanted, defaults, owners


def read_privileges(cur, role, unmanaged=None):
    """The role's privileges granted as the objects' owners, and its schema-level default privileges.

    Privileges granted by someone else, role memberships and global default privileges cannot be revoked by the
    owners' members; they are appended to ``unmanaged`` (a list of strings) when given.
    """
    cur.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,))
    row = cur.fetchone()
    if row is None:
        return set(), set()
    cur.execute(pg.CURRENT_PRIVILEGES, {"oid": row[0]})
    rows = cur.fetchall()
    current = set(r[:4] for r in rows if r[4])
    cur.execute(pg.CURRENT_DEFAULT_PRIVILEGES, {"oid": row[0]})
    defaults = cur.fetchall()
    if unmanaged is not None:
        foreign = as_text(r[:4] for r in rows if not r[4])
        unmanaged.extend("%s granted by another role than the owner" % text for text in foreign)
        global_defaults = as_text((r for r in defaults if not r[1]), False)
        unmanaged.extend("global default privilege %s" % text for text in global_defaults)
        cur.execute(pg.MEMBERSHIPS, {"oid": row[0]})
        unmanaged.extend("member of role %s" % r[0] for r in cur.fetchall())
    return current, set(r for r in defaults if r[1])


def grant_statements(sql, role, database, add, remove):
    """GRANT/REVOKE statements, one per object, for sets of (kind, schema, name, privilege)."""
    statements = []
    for verb, rows, prep in (("REVOKE", remove, "FROM"), ("GRANT", add, "TO")):
        by_object = {}
        for kind, schema, name, privilege in rows:
            by_object.setdefault((kind, schema, name), []).append(privilege)
        for (kind, schema, name), privileges in sorted(by_object.items()):
            target = sql.Identifier(database) if kind == "database" else (
                sql.Identifier(schema) if kind == "schema" else sql.Identifier(schema, name))
            statements.append(sql.SQL("{verb} {privs} ON {kind} {target} {prep} {role}").format(
                verb=sql.SQL(verb), privs=sql.SQL(", ").join(sql.SQL(p) for p in sorted(privileges)),
                kind=sql.SQL(kind.upper()), target=target, prep=sql.SQL(prep), role=sql.Identifier(role)))
    return statements


def default_statements(sql, role, add, remove):
    statements = []
    for verb, rows, prep in (("REVOKE", remove, "FROM"), ("GRANT", add, "TO")):
        grouped = {}
        for owner, schema, kind, privilege in rows:
            grouped.setdefault((owner, schema, kind), []).append(privilege)
        for (owner, schema, kind), privileges in sorted(grouped.items()):
            statements.append(sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} {verb} {privs} ON {kinds} {prep} {role}"
            ).format(owner=sql.Identifier(owner), schema=sql.Identifier(schema), verb=sql.SQL(verb),
                     privs=sql.SQL(", ").join(sql.SQL(p) for p in sorted(privileges)),
                     kinds=sql.SQL("TABLES" if kind == "table" else "SEQUENCES"), prep=sql.SQL(prep),
                     role=sql.Identifier(role)))
    return statements


def as_text(rows, kind_first=True):
    out = []
    for kind, schema, name, privilege in rows:
        if kind_first:
            target = name if kind in ("database", "schema") else "%s.%s" % (schema, name)
            out.append("%s %s %s" % (kind, target, privilege))
        else:  # default privileges: (owner, schema, kind, privilege)
            out.append("%s %s %s %s" % (kind, schema, name, privilege))
    return sorted(out)


def main():
    spec = dict(
        role=dict(type="str", required=True),
        object_id=dict(type="str"),
        principal_type=dict(type="str", default="service", choices=["service", "user", "group"]),
        database=dict(type="str", required=True),
        grants=dict(type="list", elements="dict", default=[], options=dict(
            object_type=dict(type="str", required=True, choices=["database", "schema", "table", "sequence"]),
            schema=dict(type="str"),
            objects=dict(type="list", elements="str", default=["ALL"]),
            privileges=dict(type="list", elements="str", required=True),
        )),
        default_privileges=dict(type="list", elements="dict", default=[], options=dict(
            for_role=dict(type="str", required=True),
            schema=dict(type="str", required=True),
            object_type=dict(type="str", required=True, choices=["table", "sequence"]),
            privileges=dict(type="list", elements="str", required=True),
        )),
        purge_grants=dict(type="bool", default=True),
        admin_member_of=dict(type="list", elements="str", default=[]),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    )
    spec.update(pg.SERVER_ARGUMENT_SPEC)
    spec.update(pg.ADMIN_ARGUMENT_SPEC)
    mod = MIModule(spec, required_if=[("state", "present", ("object_id",))])
    validate(mod)
    try:
        import psycopg  # pylint: disable=import-outside-toplevel
        from psycopg import sql  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("psycopg"))
    params = mod.params
    role = params["role"]
    token = mod.token("postgres")

    def open_db(dbname):
        try:
            return pg.connect(params["host"], params["port"], dbname, params["admin_user"], token,
                              params["ssl_mode"], params["ssl_root_cert"], params["connect_timeout"])
        except psycopg.Error as exc:
            if mod.check_mode:
                return None
            mod.fail("could not connect to %s:%s/%s as %s" % (params["host"], params["port"], dbname,
                                                              params["admin_user"]), exc)

    admin_db = open_db("postgres")
    target_db = open_db(params["database"]) if admin_db else None
    if admin_db is None or target_db is None:
        # Check mode before the server trusts Entra (or before the admin exists): plan against an empty catalog.
        mod.module.warn("could not connect as %s yet (Entra not enabled or administrator not created in this "
                        "check-mode run): the plan assumes the role does not exist" % params["admin_user"])
        planned = plan_without_catalog(mod, sql, role)
        mod.exit(True, before={}, after={"role": role, "planned": planned}, role=role,
                 object_id=params["object_id"], created=params["state"] == "present", privileges=[],
                 default_privileges=[], unmanaged=[], queries=planned)

    queries = []
    try:
        # Leaving these blocks commits each database's transaction; an exception rolls it back.
        with admin_db, target_db:
            with admin_db.cursor() as cur:
                if not mod.check_mode:
                    # Applications sharing a server are migrated in parallel; role and membership DDL on one
                    # cluster must not interleave ("tuple concurrently updated"). Held until this transaction ends.
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                exists, principal = read_principal(mod, cur)
            if params["state"] == "absent":
                result = run_absent(mod, sql, admin_db, target_db, exists, queries)
            else:
                result = run_present(mod, sql, admin_db, target_db, exists, principal, queries)
    except psycopg.Error as exc:
        mod.fail("PostgreSQL refused a statement; nothing was committed in the database that failed", exc,
                 queries=queries)
    mod.exit(bool(queries), queries=queries, **result)


def plan_without_catalog(mod, sql, role):
    params = mod.params
    if params["state"] == "absent":
        return []
    ident = sql.Identifier(role)
    plan = ["SELECT * FROM pgaadauth_create_principal_with_oid(%s, %s, %s, false, false)" % (
        sql.Literal(role).as_string(None), sql.Literal(params["object_id"]).as_string(None),
        sql.Literal(params["principal_type"]).as_string(None))]
    for owner in params["admin_member_of"]:
        plan.append("GRANT %s TO CURRENT_USER" % sql.Identifier(owner).as_string(None))
    for grant in params["grants"]:
        privs = ", ".join(grant["privileges"])
        if grant["object_type"] == "database":
            target = "DATABASE " + sql.Identifier(params["database"]).as_string(None)
        elif grant["object_type"] == "schema":
            target = "SCHEMA " + sql.Identifier(grant["schema"]).as_string(None)
        elif "ALL" in grant["objects"]:
            target = "ALL %sS IN SCHEMA %s" % (grant["object_type"].upper(), sql.Identifier(grant["schema"]).as_string(None))
        else:
            target = "%s %s" % (grant["object_type"].upper(), ", ".join(
                sql.Identifier(grant["schema"], n).as_string(None) for n in grant["objects"]))
        plan.append("GRANT %s ON %s TO %s" % (privs, target, ident.as_string(None)))
    plan.extend(s.as_string(None) for s in default_statements(sql, role, set(
        (d["for_role"], d["schema"], d["object_type"], p) for d in params["default_privileges"] for p in d["privileges"]), set()))
    return plan


def execute(mod, conn, statements, queries):
    """Record each statement's text; run it unless in check mode."""
    with conn.cursor() as cur:
        for statement in statements:
            queries.append(pg.render(conn, statement))
            if not mod.check_mode:
                cur.execute(statement)


def run_present(mod, sql, admin_db, target_db, exists, principal, queries):
    params = mod.params
    role, oid = params["role"], params["object_id"]
    if exists and principal is None:
        mod.fail("role %r already exists and is not a Microsoft Entra principal (a password role?): it is left alone; "
                 "choose another role name or drop that role after checking who uses it" % role)
    if principal and principal["object_id"].lower() != str(oid).lower():
        mod.fail("role %r is bound to object id %s, not %s (was the identity recreated under the same name?): drop the "
                 "role and re-run, or fix object_id" % (role, principal["object_id"], oid))
    unmanaged = []
    with target_db.cursor() as cur:
        if not mod.check_mode:
            # Parallel runs granting on the same tables would collide on their ACLs ("tuple concurrently updated").
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        wanted, wanted_defaults, owners = desired_privileges(mod, cur)
        current, current_defaults = read_privileges(cur, role, unmanaged)
        cur.execute("SELECT r FROM unnest(%s::text[]) r WHERE NOT pg_has_role(current_user, r, 'MEMBER')",
                    (sorted(owners),))
        missing = sorted(r[0] for r in cur.fetchall())
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND (rolsuper OR rolname LIKE 'pg\\_%%')",
                    (missing,))
        refused = sorted(r[0] for r in cur.fetchall())
    not_member = [r for r in missing if r not in params["admin_member_of"]]
    if not_member:
        mod.fail("%s is not a member of %s, which own(s) the objects to grant on: add them to admin_member_of, or "
                 "grant the membership as that role" % (params["admin_user"], ", ".join(not_member)))
    if refused:
        mod.fail("admin_member_of: %s is a superuser or predefined role; grant on its objects as an administrator "
                 "instead" % ", ".join(refused))
    for item in unmanaged:
        mod.module.warn("role %s: %s (not managed by this module; review it)" % (role, item))
    add, remove = wanted - current, (current - wanted) if params["purge_grants"] else set()
    add_defaults = wanted_defaults - current_defaults
    remove_defaults = (current_defaults - wanted_defaults) if params["purge_grants"] else set()

    admin_statements = []
    if principal is None:
        admin_statements.append(sql.SQL("SELECT * FROM pgaadauth_create_principal_with_oid({}, {}, {}, false, false)")
                                .format(sql.Literal(role), sql.Literal(oid), sql.Literal(params["principal_type"])))
    # Only the memberships these grants need: owners of the objects, listed in admin_member_of.
    admin_statements.extend(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(r)) for r in missing)
    execute(mod, admin_db, admin_statements, queries)
    if not mod.check_mode:
        admin_db.commit()  # the role must exist before the target database can grant to it
    execute(mod, target_db, grant_statements(sql, role, params["database"], add, remove)
            + default_statements(sql, role, add_defaults, remove_defaults), queries)
    after, after_defaults = (wanted | (current if not params["purge_grants"] else set()),
                             wanted_defaults | (current_defaults if not params["purge_grants"] else set()))
    before = {"role": role if exists else None, "object_id": principal and principal["object_id"],
              "privileges": as_text(current), "default_privileges": as_text(current_defaults, False)}
    after_view = {"role": role, "object_id": oid, "privileges": as_text(after),
                  "default_privileges": as_text(after_defaults, False)}
    return dict(before=before, after=after_view, created=principal is None, role=role, object_id=oid,
                privileges=after_view["privileges"], default_privileges=after_view["default_privileges"],
                unmanaged=unmanaged)


def run_absent(mod, sql, admin_db, target_db, exists, queries):
    """Revoke every privilege the role holds in the database, then drop it.

    (``DROP OWNED BY`` would need membership in the role, which an Entra administrator does not have.)
    A role that owns objects anywhere is refused before anything changes: dropping it would need its objects
    reassigned first, a decision for the application's owner.
    """
    role = mod.params["role"]
    if exists:
        with target_db.cursor() as cur:
            cur.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,))
            cur.execute(pg.OWNS_OBJECTS, {"oid": cur.fetchone()[0]})
            if cur.fetchone()[0]:
                mod.fail("role %r owns database objects: reassign them (REASSIGN OWNED BY, as a member of both roles) "
                         "before removing the principal; nothing was changed" % role)
            current, current_defaults = read_privileges(cur, role)
        execute(mod, target_db, grant_statements(sql, role, mod.params["database"], set(), current)
                + default_statements(sql, role, set(), current_defaults), queries)
        if not mod.check_mode:
            target_db.commit()  # DROP ROLE, on the other connection, must see the privileges gone
        execute(mod, admin_db, [sql.SQL("DROP ROLE {}").format(sql.Identifier(role))], queries)
    return dict(before={"role": role if exists else None}, after={"role": None}, created=False, role=role,
                object_id=mod.params["object_id"], privileges=[], default_privileges=[], unmanaged=[])


if __name__ == "__main__":
    main()
