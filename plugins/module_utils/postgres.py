# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL connections with an Entra token as the password, and privilege catalog reads.

Identifiers are always quoted by psycopg (``psycopg.sql.Identifier``); values are always bound parameters.
Source for token logins: https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-configure-sign-in-azure-ad-authentication
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, range_problem, shown

# Options of doc fragment csa_inabox.managed_identity.postgres (the server), and .postgres.admin (who connects).
SERVER_ARGUMENT_SPEC = dict(
    host=dict(type="str", required=True),
    port=dict(type="int", default=5432),
    ssl_mode=dict(type="str", default="verify-full", choices=["require", "verify-ca", "verify-full"]),
    ssl_root_cert=dict(type="path"),
    connect_timeout=dict(type="int", default=15),
)
ADMIN_ARGUMENT_SPEC = dict(admin_user=dict(type="str", required=True))

# What each kind of object accepts in GRANT (PostgreSQL 15 documentation, "Privileges", table 5.2).
PRIVILEGES = {
    "database": ("CONNECT", "CREATE", "TEMPORARY"),
    "schema": ("USAGE", "CREATE"),
    "table": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"),
    "sequence": ("USAGE", "SELECT", "UPDATE"),
}
PRIVILEGE_ALIASES = {"TEMP": "TEMPORARY"}

MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL cuts longer names, so a longer one would name another object
# libpq reads ',' in host as a list of hosts to try, and a host name never has spaces, quotes, ';' or '='.
HOST_FORBIDDEN = re.compile(r"[\s,;='\"\\]")


def name_problem(field, value):
    """Why ``value`` cannot be a PostgreSQL name (role, database, schema, object), or ``None``: 1 to 63 bytes, no NUL."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        return "%s %s must be 1 to %d bytes with no NUL character" % (field, shown(value), MAX_NAME_BYTES)
    return None


def option_problem(params, names=()):
    """What is wrong with the connection options of :data:`SERVER_ARGUMENT_SPEC` and the PostgreSQL names among
    ``names`` (options such as ``admin_user``, ``database``), or ``None``. Checked before any token is asked for."""
    host = params["host"]
    if not host or len(host) > 253 or HOST_FORBIDDEN.search(host) or has_control(host) or (
            not host.startswith("/") and any(len(label) > 63 for label in host.split("."))):
        return ("host %s must be one host name or address (at most 253 characters, labels of at most 63), without "
                "spaces, ',', ';', '=' or quotes (give the port in port)" % shown(host))
    problem = range_problem("port", params["port"], 1, 65535) or \
        range_problem("connect_timeout", params["connect_timeout"], 1, 3600, " seconds")
    if problem:
        return problem
    for option in names:
        if params.get(option) is not None:
            problem = name_problem(option, params[option])
            if problem:
                return problem
    return None


def connect(host, port, dbname, user, token, ssl_mode="verify-full", ssl_root_cert=None, connect_timeout=15):
    """Open a psycopg connection (autocommit off) with ``token`` as the password.

    TLS is always on (Azure requires it); ``ssl_root_cert`` defaults to libpq's own (PGSSLROOTCERT or
    ~/.postgresql/root.crt). Raises ``psycopg.OperationalError``; ImportError without psycopg.
    """
    import psycopg  # pylint: disable=import-outside-toplevel

    kwargs = dict(host=host, port=port, dbname=dbname, user=user, password=token, sslmode=ssl_mode,
                  connect_timeout=connect_timeout, application_name="csa_inabox.managed_identity")
    if ssl_root_cert:
        kwargs["sslrootcert"] = ssl_root_cert
    return psycopg.connect(**kwargs)


def render(conn, statement):
    """The text of a composed statement, for the ``queries`` return value (identifiers quoted, no secrets)."""
    return statement.as_string(conn) if hasattr(statement, "as_string") else str(statement)


# Privileges of one role in the connected database: (kind, schema, name, privilege, granted by the owner) rows.
# The database row has schema and name set to the database name; schema rows have name = schema. Only grants made
# as the owner can be revoked by the owner's members; the others are reported, not managed.
CURRENT_PRIVILEGES = """
SELECT 'database', d.datname, d.datname, a.privilege_type, a.grantor = d.datdba
  FROM pg_database d, aclexplode(d.datacl) a
 WHERE d.datname = current_database() AND a.grantee = %(oid)s
UNION ALL
SELECT 'schema', n.nspname, n.nspname, a.privilege_type, a.grantor = n.nspowner
  FROM pg_namespace n, aclexplode(n.nspacl) a
 WHERE a.grantee = %(oid)s
UNION ALL
SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, n.nspname, c.relname, a.privilege_type,
       a.grantor = c.relowner
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND a.grantee = %(oid)s
"""

# Roles the role was made a member of by someone other than the platform: privileges this module does not manage,
# reported as warnings. On Flexible Server only the platform is a superuser, so memberships it grants are its own.
MEMBERSHIPS = """
SELECT r.rolname
  FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles g ON g.oid = m.grantor
 WHERE m.member = %(oid)s AND NOT g.rolsuper
"""

# Whether the role owns anything anywhere in the cluster (pg_shdepend is shared by all databases).
OWNS_OBJECTS = "SELECT count(*) FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass AND refobjid = %(oid)s" \
               " AND deptype = 'o'"

# Default privileges granted to one role: (owner role, schema or '', kind, privilege).
CURRENT_DEFAULT_PRIVILEGES = """
SELECT pg_get_userbyid(d.defaclrole), COALESCE(n.nspname, ''),
       CASE d.defaclobjtype WHEN 'r' THEN 'table' WHEN 'S' THEN 'sequence' ELSE d.defaclobjtype::text END,
       a.privilege_type
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
 WHERE a.grantee = %(oid)s
"""

# Objects of a kind in a schema, with their owners: (name, owner).
OBJECTS_IN_SCHEMA = """
SELECT c.relname, pg_get_userbyid(c.relowner)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind = ANY(%(kinds)s)
 ORDER BY c.relname
"""
RELKINDS = {"table": ["r", "p", "v", "m", "f"], "sequence": ["S"]}
