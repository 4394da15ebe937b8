"""The lab's Azure SQL logical servers as ``python -m azurelab up`` runs them, and their part of the "before" state.

:func:`build` makes one :class:`azurelab.sqlserver.SqlLab` per entry of ``topology.yml``'s ``sql_servers``, served
by the control-plane process (:mod:`azurelab.server`) and wired to the rest of the lab:

* port: ``Ports.sql`` (base+7, base+8, ... in topology order); catalog: ``<state>/sql/<server>.sqlite``, so users
  and role memberships survive ``down`` / ``up`` (``reset`` deletes the state folder, catalogs included);
* SQL-authentication server admin: ``administrator_login`` from the topology, its password random per lab, kept
  only in the lab secrets file (``sql_servers.<name>.administrator_password``, written by ``labctl.ensure_secrets``);
* Entra admin and Entra-only authentication: read from the ARM double's state at every login
  (``properties.administrators.sid`` and ``azureADOnlyAuthentication``), so an ARM PUT takes effect at the next
  login, as on Azure;
* ``CREATE USER ... FROM EXTERNAL PROVIDER`` resolves names and object ids in the lab directory
  (:func:`principal_resolver`): users, groups, the automation service principal and the managed identities ARM
  created (their SID is then the client id);
* Directory Readers: only when the topology says ``directory_readers: true`` for the server (no lab server does).
  Without it a managed identity caller cannot create a user by name alone, which is Azure's documented behaviour.

:func:`seed_users` writes the SQL side of the "before" state straight into the catalogs (the server reads them at
every login, so it may run before or while the server serves): each database's custom roles, and per SQL
application (``database.type: sql``) a contained user WITH PASSWORD with a fresh random password and its roles.
The passwords are returned, for :meth:`azurelab.openbao.OpenBaoLab.seed` to keep in KV; they are written nowhere
else (the catalog keeps a PBKDF2 hash).

Not emulated: anything about a server that ARM does not hold (firewall, databases as ARM resources), the server's
own managed identity (hence the topology flag for Directory Readers).
"""
from __future__ import annotations

import json
import logging
import secrets
import string
from typing import TYPE_CHECKING, Callable

from . import sqlcatalog
from .config import LabPaths, is_sql_application
from .directory import Directory

if TYPE_CHECKING:
    from .arm import ArmState
    from .sqlserver import SqlLab
    from .tokens import Issuer

LOG = logging.getLogger("azurelab.azuresql")

DBO_OWNER = 1  # principal_id of dbo: the owner of roles the lab creates, as when the server admin creates them


def admin_password(secrets_file: dict, server_name: str) -> str:
    """The SQL server admin's password from the lab secrets (``KeyError`` before ``ensure_secrets`` ran)."""
    return secrets_file["sql_servers"][server_name]["administrator_password"]


def new_password() -> str:
    """A random password meeting Azure SQL's complexity rule (three of: upper, lower, digit, symbol)."""
    while True:
        password = secrets.token_urlsafe(24)
        if all(any(c in kind for c in password)
               for kind in (string.ascii_uppercase, string.ascii_lowercase, string.digits)):
            return password


def principal_resolver(directory: Directory) -> Callable[[str | None, str | None], dict | None]:
    """``resolve(name, object_id)`` for ``CREATE USER ... FROM EXTERNAL PROVIDER``: a directory entry or None.

    An object id wins over the name. A name matches a user's UPN, or the display name of a group, application or
    managed identity (case-insensitively); a name shared by several principals resolves to None (Azure refuses it
    too, asking for a unique display name or ``WITH OBJECT_ID``).
    """
    def resolve(name: str | None, object_id: str | None) -> dict | None:
        if object_id:
            return directory.by_object_id(object_id)
        if not name:
            return None
        wanted = name.casefold()
        found = [e for e in directory.entries()
                 if (e.get("upn") if e["type"] == "User" else e.get("display_name", "")).casefold() == wanted]
        return found[0] if len(found) == 1 else None

    return resolve


def build(paths: LabPaths, topology: dict, issuer: "Issuer", ports: dict[str, int], arm: "ArmState",
          directory: Directory, secrets_file: dict) -> dict[str, "SqlLab"]:
    """One SqlLab per server in ``ports`` (name -> port), bound but not yet serving; see the module docstring.

    ``arm`` is the ARM double's state, which the Entra admin and the Entra-only flag are read from; ``secrets_file``
    the lab secrets (:func:`azurelab.server.read_secrets`).
    """
    from .sqlserver import SqlLab  # the TDS server is needed only where SQL runs

    def admin_sid(name: str) -> Callable[[], str | None]:
        return lambda: (arm.sql_entra_admin(name) or {}).get("sid")

    def entra_only(name: str) -> Callable[[], bool]:
        return lambda: bool((arm.sql_entra_admin(name) or {}).get("azureADOnlyAuthentication"))

    labs = {}
    resolve = principal_resolver(directory)
    for server in topology.get("sql_servers", []):
        name = server["name"]
        if name not in ports:
            continue
        readers = bool(server.get("directory_readers", False))
        labs[name] = SqlLab(
            paths, issuer, ports[name], name, audience=topology["audiences"]["sql"],
            admin_login=server["administrator_login"], admin_password=admin_password(secrets_file, name),
            databases=tuple(server.get("databases", {})), entra_admin=admin_sid(name), entra_only=entra_only(name),
            tenant_id=topology["tenant_id"], catalog=paths.sql_catalog(name), resolve_principal=resolve,
            directory_readers=lambda readers=readers: readers, count=lambda what: arm.count_database("sql", what))
    return labs


def seed_users(paths: LabPaths, topology: dict) -> dict[str, dict]:
    """Seed the catalogs; returns ``{app: {"username", "password"}}`` for each user whose password it set.

    Per SQL application, in ``database.name`` on ``database.server``: the contained user ``database.user`` is
    created with a new password, or its password replaced when it is already a contained (type ``S``) user, and
    made a member of ``database.roles``. Two cases are left alone, and get no password: a principal of that name
    that is not a SQL user (an Entra user someone created: never the seed's to touch), and a user that is gone from
    an application the migration already switched to its identity (``mode`` in ``<state>/apps/<app>.json`` is no
    longer ``vault``): decommissioning dropped it, and a restart must not bring the password path back.

    Raises :class:`azurelab.sqlcatalog.SqlError` when the topology names a role that does not exist.
    """
    servers = {server["name"]: server for server in topology.get("sql_servers", [])}
    catalogs = {}
    for name, server in servers.items():
        catalog = catalogs[name] = sqlcatalog.Catalog(paths.sql_catalog(name), tuple(server.get("databases", {})))
        for database, spec in server.get("databases", {}).items():
            for role in (spec or {}).get("roles", []):
                _ensure_role(catalog, database, role)
    issued = {}
    for app in filter(is_sql_application, topology.get("applications", [])):
        spec = app["database"]
        catalog, database, user = catalogs[spec["server"]], spec["name"], spec["user"]
        current = next((u for u in catalog.users(database) if sqlcatalog.collate(u.name, user) == 0), None)
        if current is not None and current.type != "S":
            LOG.warning("%s: %s in %s is not a SQL user: left alone, no password issued", app["name"], user, database)
            continue
        if current is None and _switched(paths, app["name"]):
            continue
        password = new_password()
        catalog.add_sql_user(database, user, password, tuple(spec.get("roles", ())))
        issued[app["name"]] = {"username": user, "password": password}
    return issued


def _ensure_role(catalog: sqlcatalog.Catalog, database: str, role: str) -> None:
    """``CREATE ROLE [role] AUTHORIZATION dbo`` unless a principal of that name exists."""
    database_id = catalog.database(database)[0]
    conn = catalog.connect(database_id)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if sqlcatalog.principal(conn, database_id, role) is None:
            sqlcatalog.create_principal(conn, database_id, role, "R", owner=DBO_OWNER)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _switched(paths: LabPaths, app: str) -> bool:
    """Whether the migration switched the demo app to its identity (its config exists and is not in vault mode)."""
    config_file = paths.apps / f"{app}.json"
    return config_file.exists() and json.loads(config_file.read_text()).get("mode") != "vault"
