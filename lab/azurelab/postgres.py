"""The lab's Azure Database for PostgreSQL Flexible Server: a real PostgreSQL 15 shaped like the managed one.

The server has **no TCP listener**. Its only door is a unix socket in ``paths.pg_socket_dir`` (mode 0700, owned
by ``postgres``, so only root and ``postgres`` reach it); clients come in through :mod:`azurelab.pgfront`, which
speaks TLS on 127.0.0.1, checks Entra tokens and relays sessions to this socket. ``pg_hba.conf``::

    local all postgres             peer map=lab   # the lab's own maintenance (root or postgres)
    local all +lab_entra_principal trust          # Entra roles: the front has already checked the token
    local all all                  password       # password roles: the front relays the client's password

Shaped like Flexible Server (https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-create-users):
the server admin (``administrator_login`` in ``lab/topology.yml``) has LOGIN CREATEROLE CREATEDB, is a member
of ``azure_pg_admin`` and is **not** a superuser; the topology's databases are owned by it and their setup SQL
runs as it; Entra principals come from the ``pgaadauth`` functions (``sql/pgaadauth_shim.sql``) or from ARM's
``administrators/{objectId}`` (:meth:`PostgresLab.create_entra_admin`).

Not emulated: server parameters and restarts, high availability, backups, extensions allow-listing,
``azure_superuser`` and the privileges Azure grants ``azure_pg_admin`` beyond membership, Entra group
login (a group member logging in with the group's name), SECURITY LABEL (see the shim's header).
"""
from __future__ import annotations

import json
import os
import pathlib
import pwd
import secrets
import subprocess

import psycopg
from psycopg import sql

from .config import LabPaths

PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SUPERUSER = "postgres"
LAB_GROUP = "lab_entra_principal"  # also named in sql/pgaadauth_shim.sql and in pg_hba.conf
SHIM_SQL = pathlib.Path(__file__).with_name("sql") / "pgaadauth_shim.sql"
UNIX_PORT = 5432  # only names the socket file (.s.PGSQL.5432)

# ARM's principalType -> the pgaadauth object type.
OBJECT_TYPES = {"User": "user", "Group": "group", "ServicePrincipal": "service"}

PG_HBA = f"""\
# Written by the lab at every start (azurelab.postgres).
local all {SUPERUSER} peer map=lab
local all +{LAB_GROUP} trust
local all all password
"""
PG_IDENT = f"""\
lab root {SUPERUSER}
lab {OS_USER} {SUPERUSER}
"""


class EntraPrincipalError(Exception):
    """An Entra principal change the server refuses; ``str(exc)`` is safe to show (ARM error body, module result)."""


class PostgresLab:
    """One Flexible Server (the first of ``topology["postgres_servers"]``) as a local PostgreSQL 15."""

    def __init__(self, paths: LabPaths, topology: dict):
        self.paths = paths
        self.topology = topology
        self.server = topology["postgres_servers"][0]
        self.name = self.server["name"]
        self.admin_login = self.server["administrator_login"]
        self._pg_root = paths.pg_data.parent
        self._pid_file = paths.pids / "postgres.pid"
        self._log_file = paths.logs / "postgres.log"

    # -- process -----------------------------------------------------------------------------------------------

    @property
    def socket_path(self) -> pathlib.Path:
        """The server's unix socket: what :class:`azurelab.pgfront.PgFront` relays sessions to."""
        return self.paths.pg_socket_dir / f".s.PGSQL.{UNIX_PORT}"

    def start(self) -> None:
        """Create the cluster once, write the lab's configuration, start the server; no-op when it runs.

        Raises ``RuntimeError`` when user ``postgres`` cannot reach the state folder, and
        ``subprocess.CalledProcessError`` when initdb or pg_ctl fail (their output is in the log file).
        """
        if self.is_running():
            return
        self._prepare_dirs()
        if not (self.paths.pg_data / "PG_VERSION").exists():
            self._as_postgres("initdb", "-D", self.paths.pg_data, "-U", SUPERUSER, "--auth=peer",
                              "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
            with open(self.paths.pg_data / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.write("\ninclude 'lab.conf'\n")
        self._write_config()
        self._as_postgres("pg_ctl", "-D", self.paths.pg_data, "-l", self._log_file, "-w", "-t", "30", "start")
        self.paths.pids.mkdir(parents=True, exist_ok=True)
        self._pid_file.write_text(f"{self._postmaster_pid()}\n")

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended); no-op when the server is not running."""
        if self.is_running():
            self._as_postgres("pg_ctl", "-D", self.paths.pg_data, "-m", "fast", "-w", "stop")
        self._pid_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and pid_alive(pid)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.paths.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def _prepare_dirs(self) -> None:
        # The state folder belongs to the lab: let other users traverse it (its secrets are 0600 files).
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.root.chmod(self.paths.root.stat().st_mode | 0o001)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self._pg_root.mkdir(mode=0o700, exist_ok=True)
        self.paths.pg_socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._log_file.touch()
        owner = pwd.getpwnam(OS_USER)
        for path in (self._pg_root, self.paths.pg_socket_dir, self._log_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        self._pg_root.chmod(0o700)
        self.paths.pg_socket_dir.chmod(0o700)
        if subprocess.run(["runuser", "-u", OS_USER, "--", "test", "-w", str(self._pg_root)], check=False).returncode:
            raise RuntimeError(f"user {OS_USER} cannot reach {self._pg_root}: every parent folder of the lab "
                               "state folder must be traversable by others (chmod o+x), or set LAB_STATE_DIR")

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": "''",  # no TCP at all: the TLS front is the only way in
            "unix_socket_directories": f"'{self.paths.pg_socket_dir}'",
            "port": str(UNIX_PORT),
            "password_encryption": "'scram-sha-256'",
            # A disposable lab: durability buys nothing and costs seconds.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        files = {
            "lab.conf": "".join(f"{key} = {value}\n" for key, value in settings.items()),
            "pg_hba.conf": PG_HBA,
            "pg_ident.conf": PG_IDENT,
        }
        owner = pwd.getpwnam(OS_USER)
        for name, text in files.items():
            path = self.paths.pg_data / name
            path.write_text(text, encoding="utf-8")
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _as_postgres(self, program: str, *args) -> None:
        subprocess.run(["runuser", "-u", OS_USER, "--", str(PG_BIN / program), *map(str, args)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # -- seeding -----------------------------------------------------------------------------------------------

    def admin_password(self) -> str:
        """The server admin's password: generated once, kept only in ``paths.secrets`` (mode 0600)."""
        stored = _read_secrets(self.paths)
        servers = stored.setdefault("postgres_servers", {})
        entry = servers.setdefault(self.name, {})
        if "administrator_password" not in entry:
            entry.update(administrator_login=self.admin_login, administrator_password=secrets.token_urlsafe(24))
            _write_secrets(self.paths, stored)
        return entry["administrator_password"]

    def setup(self) -> None:
        """Roles, the pgaadauth shim and the topology's databases; safe to re-run.

        A database's setup SQL runs only when the database is created, as the server admin, in one transaction;
        if it fails the database is dropped again so that the next run retries it.
        """
        password = self.admin_password()
        with self.connect() as conn:
            for role in ("azure_pg_admin", LAB_GROUP):
                self._ensure_role(conn, role, sql.SQL("NOLOGIN"))
            if self._ensure_role(conn, self.admin_login, sql.SQL("LOGIN CREATEROLE CREATEDB NOSUPERUSER")):
                verifier = conn.pgconn.encrypt_password(password.encode(), self.admin_login.encode(), b"scram-sha-256")
                # A SCRAM verifier, not the password, goes over the wire: nothing to leak into the server log.
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.admin_login), sql.Literal(verifier.decode())))
            conn.execute(sql.SQL("GRANT azure_pg_admin TO {}").format(sql.Identifier(self.admin_login)))
            conn.execute(SHIM_SQL.read_text(encoding="utf-8"))
            conn.execute("INSERT INTO pgaadauth_lab.server (tenant_id) VALUES (%s) "
                         "ON CONFLICT (only_row) DO UPDATE SET tenant_id = excluded.tenant_id",
                         (self.topology["tenant_id"],))
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for database, spec in self.server.get("databases", {}).items():
            if database not in existing:
                self._create_database(database, spec.get("setup", ""))

    def _ensure_role(self, conn: psycopg.Connection, name: str, attributes: sql.Composable) -> bool:
        """Create or align a role; True when it was created."""
        created = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None
        verb = sql.SQL("CREATE ROLE" if created else "ALTER ROLE")
        conn.execute(sql.SQL("{} {} {}").format(verb, sql.Identifier(name), attributes))
        return created

    def _create_database(self, database: str, setup_sql: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(self.admin_login)))
        try:
            with self.connect(database) as conn, conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(self.admin_login)))
                if setup_sql.strip():
                    conn.execute(setup_sql)
        except psycopg.Error:
            with self.connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(database)))
            raise

    # -- Entra principals ----------------------------------------------------------------------------------------

    def create_entra_admin(self, server_name: str, principal_name: str, object_id: str, principal_type: str) -> bool:
        """What ARM's ``PUT .../flexibleServers/{s}/administrators/{objectId}`` does inside the server.

        ``principal_type`` is ARM's ``User`` / ``Group`` / ``ServicePrincipal``. Creates a login role named
        ``principal_name``, member of ``azure_pg_admin`` with CREATEROLE CREATEDB, recorded as an admin principal.
        Returns True when created, False when that admin already exists. Raises :class:`EntraPrincipalError` when
        the object id is already a non-admin principal or an admin under another name (Azure: "Updating an
        existing principal isn't supported"), when the name is taken by another role, or for an unknown type.
        """
        self._check_server(server_name)
        if principal_type not in OBJECT_TYPES:
            raise EntraPrincipalError(f"principalType must be one of {', '.join(OBJECT_TYPES)}, not {principal_type!r}")
        current = self._principal_by_object_id(object_id)
        if current:
            if current["role"] == principal_name and current["is_admin"]:
                return False
            raise EntraPrincipalError(
                f"Failed to create Microsoft Entra principal. Reason: 'Updating an existing principal isn't "
                f"supported. Drop and recreate the Microsoft Entra principal.' (object id {object_id.lower()} "
                f"is role \"{current['role']}\")")
        try:
            with self.connect() as conn:
                conn.execute("SELECT pgaadauth_lab.create_role(%s, %s, %s, true, false)",
                             (principal_name, object_id, OBJECT_TYPES[principal_type]))
        except psycopg.Error as exc:
            reason = exc.diag.message_primary
            raise EntraPrincipalError(f"Failed to create Microsoft Entra principal. Reason: '{reason}'") from None
        return True

    def drop_entra_admin(self, server_name: str, object_id: str) -> bool:
        """What ARM's ``DELETE .../administrators/{objectId}`` does: drop that admin's role.

        Objects the admin owns are reassigned to the server admin and its privileges revoked, in every
        database, so the drop cannot fail on dependencies. Returns False when no admin has that object id.
        """
        self._check_server(server_name)
        current = self._principal_by_object_id(object_id)
        if not current or not current["is_admin"]:
            return False
        role = sql.Identifier(current["role"])
        with self.connect() as conn:
            databases = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datallowconn")]
        for database in databases:
            with self.connect(database) as conn:
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, sql.Identifier(self.admin_login)))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(role))
        return True

    def revoke_table_privileges(self, database: str, role: str, schema: str | None = None) -> list[str]:
        """``REVOKE ALL ON ALL TABLES IN SCHEMA`` ``schema`` (every schema of ``database`` but the system ones when
        None) ``FROM role``: the lab's grant fault (see :mod:`azurelab.pgfront`). A superuser's REVOKE acts as the
        tables' owner, so grants made by the owner or a member of it are removed. Returns the schemas it ran on."""
        with self.connect(database) as conn:
            schemas = [schema] if schema else [row[0] for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema' "
                "AND has_schema_privilege(%s, oid, 'USAGE') ORDER BY nspname", (role,))]
            for name in schemas:
                conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(
                    sql.Identifier(name), sql.Identifier(role)))
        return schemas

    def principal_for_role(self, role_name: str) -> dict | None:
        """The Entra principal a role stands for: ``{object_id, type ('user'|'group'|'service'), tenant_id,
        is_admin, is_mfa}``, or None for a password role or no role at all."""
        with self.connect() as conn:
            row = conn.execute("SELECT object_id, object_type, tenant_id, is_admin, is_mfa "
                               "FROM pgaadauth_lab.live_principals WHERE rolname = %s", (role_name,)).fetchone()
        if row is None:
            return None
        return dict(zip(("object_id", "type", "tenant_id", "is_admin", "is_mfa"), row))

    def is_entra_role(self, role_name: str) -> bool:
        return self.principal_for_role(role_name) is not None

    def _principal_by_object_id(self, object_id: str) -> dict | None:
        with self.connect() as conn:
            row = conn.execute("SELECT rolname, is_admin FROM pgaadauth_lab.live_principals WHERE object_id = %s",
                               (object_id.lower(),)).fetchone()
        return {"role": row[0], "is_admin": row[1]} if row else None

    def _check_server(self, server_name: str) -> None:
        if server_name != self.name:
            raise EntraPrincipalError(f"the lab runs PostgreSQL server {self.name!r}, not {server_name!r}")

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """A superuser session over the unix socket (peer authentication), autocommit. Lab maintenance only."""
        return psycopg.connect(host=str(self.paths.pg_socket_dir), port=UNIX_PORT, user=SUPERUSER,
                               dbname=database, autocommit=True)


def pid_alive(pid: int) -> bool:
    """True for a running process. An exited one that nobody reaped yet (a zombie) counts as gone: in a container
    the init process may be slow to reap daemons like the postmaster."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_secrets(paths: LabPaths) -> dict:
    try:
        return json.loads(paths.secrets.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _write_secrets(paths: LabPaths, data: dict) -> None:
    """Replace the secrets file atomically, created 0600 (never world-readable, even for an instant)."""
    paths.secrets.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.secrets.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, paths.secrets)
