"""The Azure SQL double's catalog: each logical server's databases and principals, kept in one SQLite file.

Tables in the file (``main``), keyed by ``database_id``:

* ``databases`` - ``name``, ``database_id`` (master is 1, user databases 5 and up), ``create_date``;
* ``principals`` - one row per database principal, with the columns of SQL Server's ``sys.database_principals``
  plus ``password_hash`` (PBKDF2-SHA256, for contained users WITH PASSWORD);
* ``role_members`` - ``role_principal_id``, ``member_principal_id``, as ``sys.database_role_members``.

Each session's connection (:meth:`Catalog.connect`) sees its own database through TEMP views named
``sys_database_principals``, ``sys_database_role_members`` and ``sys_databases``, plus a TEMP table
``sys_dm_exec_sessions`` the server refreshes from its live sessions before each query; the T-SQL layer
(``tsql.py``) rewrites ``sys.<view>`` to those names.

Names compare as under Azure SQL Database's default collation (``SQL_Latin1_General_CP1_CI_AS``): case-insensitive
(Unicode case folding), accent-sensitive, trailing spaces ignored. The collation is the SQLite collation ``SQLCI``,
registered on every connection this module opens: the file cannot be queried on those columns without it.

Concurrency follows Azure's READ_COMMITTED_SNAPSHOT default: SQLite in WAL mode gives every statement a committed
snapshot, writers take the write lock (``BEGIN IMMEDIATE``) and hold it to the end of their transaction; another
writer waits up to ``LOCK_TIMEOUT_S``.

Not emulated: schemas and the objects in them, logins in master, permissions other than role membership
(GRANT/DENY), ownership of roles and schemas beyond ``owning_principal_id``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import pathlib
import secrets
import sqlite3
from typing import Iterator

LOCK_TIMEOUT_S = 10.0
PBKDF2_ITERATIONS = 20_000
COLLATION = "SQLCI"
# SQL Server's contained-user SIDs: S-1-9-3 followed by 16 random bytes
CONTAINED_SID_PREFIX = bytes.fromhex("010500000000000903000000")
DBO_SID = b"\x01"
FIRST_PRINCIPAL_ID = 5
FIRST_USER_DATABASE_ID = 5

# name, principal_id, type, type_desc, default_schema_name, sid, authentication_type, authentication_type_desc
FIXED_PRINCIPALS = (
    ("public", 0, "R", "DATABASE_ROLE", None, b"\x01\x05\x00\x00\x00\x00\x00\x09\x04\x00\x00\x00"
     + bytes.fromhex("00000000000000000000000000000000"), 0, "NONE"),
    ("dbo", 1, "S", "SQL_USER", "dbo", DBO_SID, 1, "INSTANCE"),
    ("guest", 2, "S", "SQL_USER", "guest", b"\x00", 0, "NONE"),
    ("INFORMATION_SCHEMA", 3, "S", "SQL_USER", None, None, 0, "NONE"),
    ("sys", 4, "S", "SQL_USER", None, None, 0, "NONE"),
)
FIXED_ROLES = (("db_owner", 16384), ("db_accessadmin", 16385), ("db_securityadmin", 16386),
               ("db_ddladmin", 16387), ("db_backupoperator", 16389), ("db_datareader", 16390),
               ("db_datawriter", 16391), ("db_denydatareader", 16392), ("db_denydatawriter", 16393))
SPECIAL_USERS = ("dbo", "guest", "INFORMATION_SCHEMA", "sys")
TYPE_DESC = {"S": "SQL_USER", "E": "EXTERNAL_USER", "X": "EXTERNAL_GROUP", "R": "DATABASE_ROLE"}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS databases (
    database_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL COLLATE {COLLATION} UNIQUE,
    create_date SQLDATETIME NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    database_id INTEGER NOT NULL REFERENCES databases ON DELETE CASCADE,
    name TEXT NOT NULL COLLATE {COLLATION},
    principal_id INTEGER NOT NULL,
    type TEXT NOT NULL COLLATE {COLLATION},
    type_desc TEXT NOT NULL COLLATE {COLLATION},
    default_schema_name TEXT COLLATE {COLLATION},
    create_date SQLDATETIME NOT NULL,
    modify_date SQLDATETIME NOT NULL,
    owning_principal_id INTEGER,
    sid BLOB,
    is_fixed_role SQLBIT NOT NULL DEFAULT 0,
    authentication_type INTEGER NOT NULL,
    authentication_type_desc TEXT NOT NULL COLLATE {COLLATION},
    default_language_name TEXT COLLATE {COLLATION},
    default_language_lcid INTEGER,
    allow_encrypted_value_modifications SQLBIT NOT NULL DEFAULT 0,
    password_hash TEXT,
    PRIMARY KEY (database_id, principal_id),
    UNIQUE (database_id, name));
CREATE TABLE IF NOT EXISTS role_members (
    database_id INTEGER NOT NULL,
    role_principal_id INTEGER NOT NULL,
    member_principal_id INTEGER NOT NULL,
    PRIMARY KEY (database_id, role_principal_id, member_principal_id),
    FOREIGN KEY (database_id, role_principal_id) REFERENCES principals ON DELETE CASCADE,
    FOREIGN KEY (database_id, member_principal_id) REFERENCES principals ON DELETE CASCADE);
"""

# The catalog views a session sees, in SQL Server's column order.
_PRINCIPAL_COLUMNS = ("name, principal_id, type, type_desc, default_schema_name, create_date, modify_date, "
                      "owning_principal_id, sid, is_fixed_role, authentication_type, authentication_type_desc, "
                      "default_language_name, default_language_lcid, allow_encrypted_value_modifications")
SESSION_COLUMNS = ("session_id", "login_time", "host_name", "program_name", "login_name", "nt_user_name", "status",
                   "is_user_process", "original_login_name", "database_id", "authenticating_database_id")
VIEWS = ("database_principals", "database_role_members", "databases", "dm_exec_sessions")


def collate(left: str, right: str) -> int:
    """SQL_Latin1_General_CP1_CI_AS, near enough: case folded, trailing spaces ignored, accents kept."""
    a, b = left.rstrip(" ").casefold(), right.rstrip(" ").casefold()
    return (a > b) - (a < b)


def datetime_text(value: datetime.datetime) -> str:
    """A datetime as the catalog stores it: UTC, milliseconds (Azure SQL Database runs in UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def now_text() -> str:
    return datetime_text(datetime.datetime.now(datetime.timezone.utc))


def _to_datetime(value: bytes) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.decode())


# Global to the sqlite3 module: the distinctive names keep them from touching anyone else's columns.
sqlite3.register_converter("SQLDATETIME", _to_datetime)
sqlite3.register_converter("SQLBIT", lambda value: bool(int(value)))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"{salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    salt, digest = stored.split("$", 1)
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), PBKDF2_ITERATIONS)
    return hmac.compare_digest(actual.hex(), digest)


@dataclasses.dataclass
class DatabaseUser:
    """A database principal: ``type`` ``E`` (Entra user/app/MI), ``X`` (Entra group) or ``S`` (SQL user)."""

    name: str
    sid: bytes
    type: str = "E"
    principal_id: int = 0


class SqlError(Exception):
    """A SQL Server error: ``number``, ``text``, ``severity`` (the "class") and ``state``, as sent in ERROR."""

    def __init__(self, number: int, text: str, severity: int = 16, state: int = 1):
        super().__init__(text)
        self.number, self.text, self.severity, self.state = number, text, severity, state


class Catalog:
    """The SQLite file of one logical server (``path``), created with master plus ``databases`` when new.

    Databases named in ``databases`` are added when missing; existing ones (and everything in them) are kept, so a
    restarted server sees what an earlier one created.
    """

    def __init__(self, path: pathlib.Path, databases: tuple[str, ...] = ()):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._open()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            for name in ("master", *databases):
                conn.execute("BEGIN IMMEDIATE")
                self._ensure_database(conn, name)
                conn.execute("COMMIT")
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                               detect_types=sqlite3.PARSE_DECLTYPES)
        conn.create_collation(COLLATION, collate)
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @staticmethod
    def _ensure_database(conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM databases WHERE name = ?", (name,)).fetchone():
            return
        if name.casefold() == "master":
            database_id = 1
        else:
            database_id = max(FIRST_USER_DATABASE_ID - 1,
                              conn.execute("SELECT COALESCE(MAX(database_id), 0) FROM databases").fetchone()[0]) + 1
        created = now_text()
        conn.execute("INSERT INTO databases VALUES (?, ?, ?)", (database_id, name, created))
        for principal in FIXED_PRINCIPALS:
            pname, pid, ptype, desc, schema, sid, auth, auth_desc = principal
            conn.execute("INSERT INTO principals (database_id, name, principal_id, type, type_desc, "
                         "default_schema_name, create_date, modify_date, owning_principal_id, sid, "
                         "authentication_type, authentication_type_desc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         (database_id, pname, pid, ptype, desc, schema, created, created,
                          1 if ptype == "R" else None, sid, auth, auth_desc))
        for role, pid in FIXED_ROLES:
            conn.execute("INSERT INTO principals (database_id, name, principal_id, type, type_desc, create_date, "
                         "modify_date, owning_principal_id, is_fixed_role, authentication_type, "
                         "authentication_type_desc) VALUES (?,?,?,'R','DATABASE_ROLE',?,?,1,1,0,'NONE')",
                         (database_id, role, pid, created, created))

    # --- connections -----------------------------------------------------------------------------------------
    def connect(self, database_id: int) -> sqlite3.Connection:
        """A connection for one session of ``database_id``, with its TEMP catalog views (see the module doc)."""
        conn = self._open()
        conn.executescript(f"""
            CREATE TEMP VIEW sys_database_principals AS
                SELECT {_PRINCIPAL_COLUMNS} FROM main.principals WHERE database_id = {int(database_id)};
            CREATE TEMP VIEW sys_database_role_members AS
                SELECT role_principal_id, member_principal_id FROM main.role_members
                WHERE database_id = {int(database_id)};
            CREATE TEMP VIEW sys_databases AS SELECT name, database_id, create_date FROM main.databases;
            CREATE TEMP TABLE sys_dm_exec_sessions (
                session_id INTEGER, login_time SQLDATETIME, host_name TEXT COLLATE {COLLATION},
                program_name TEXT COLLATE {COLLATION}, login_name TEXT COLLATE {COLLATION},
                nt_user_name TEXT COLLATE {COLLATION}, status TEXT COLLATE {COLLATION}, is_user_process SQLBIT,
                original_login_name TEXT COLLATE {COLLATION}, database_id INTEGER,
                authenticating_database_id INTEGER);
        """)
        return conn

    def database(self, name: str) -> tuple[int, str] | None:
        """``(database_id, name as the catalog spells it)`` or None."""
        conn = self._open()
        try:
            row = conn.execute("SELECT database_id, name FROM databases WHERE name = ?", (name,)).fetchone()
        finally:
            conn.close()
        return (row[0], row[1]) if row else None

    # --- reads used by logins --------------------------------------------------------------------------------
    def user_by_sid(self, database: str, sid: bytes, types: tuple[str, ...] = ("E",)) -> DatabaseUser | None:
        with self._session(database) as (conn, database_id):
            row = conn.execute(f"SELECT name, sid, type, principal_id FROM principals WHERE database_id = ? "
                               f"AND sid = ? AND type IN ({','.join('?' * len(types))})",
                               (database_id, sid, *types)).fetchone()
        return DatabaseUser(*row) if row else None

    def contained_user(self, database: str, name: str, password: str) -> DatabaseUser | None:
        """The contained user WITH PASSWORD ``name`` when ``password`` is its password, else None."""
        with self._session(database) as (conn, database_id):
            row = conn.execute("SELECT name, sid, type, principal_id, password_hash FROM principals "
                               "WHERE database_id = ? AND name = ? AND type = 'S' AND authentication_type = 2",
                               (database_id, name)).fetchone()
        if row is None or not check_password(password, row[4]):
            return None
        return DatabaseUser(*row[:4])

    def has_contained_user(self, database: str, name: str) -> bool:
        with self._session(database) as (conn, database_id):
            return conn.execute("SELECT 1 FROM principals WHERE database_id = ? AND name = ? AND type = 'S' "
                                "AND authentication_type = 2", (database_id, name)).fetchone() is not None

    # --- seeding (the lab's own writes, outside any session) ---------------------------------------------------
    def add_user(self, database: str, name: str, sid: bytes, type_: str = "E") -> None:
        """Add (or replace the SID and type of) an Entra user (``E``) or group (``X``), as WITH SID would."""
        with self._session(database, write=True) as (conn, database_id):
            row = principal(conn, database_id, name)
            if row is None:
                create_principal(conn, database_id, name, type_, sid=bytes(sid))
            else:
                conn.execute("UPDATE principals SET sid = ?, type = ?, type_desc = ?, modify_date = ? "
                             "WHERE database_id = ? AND principal_id = ?",
                             (bytes(sid), type_, TYPE_DESC[type_], now_text(), database_id, row["principal_id"]))

    def add_sql_user(self, database: str, name: str, password: str, roles: tuple[str, ...] = ()) -> None:
        """Add a contained user WITH PASSWORD (replacing its password if it exists) and make it a member of roles."""
        with self._session(database, write=True) as (conn, database_id):
            row = principal(conn, database_id, name)
            if row is None:
                create_principal(conn, database_id, name, "S", password=password)
            else:
                conn.execute("UPDATE principals SET password_hash = ?, modify_date = ? WHERE database_id = ? "
                             "AND principal_id = ?", (hash_password(password), now_text(), database_id,
                                                      row["principal_id"]))
            for role in roles:
                add_member(conn, database_id, role, name)

    def add_role_member(self, database: str, role: str, member: str) -> None:
        """Make ``member`` a member of ``role`` (a no-op when it is one); raises :class:`SqlError` 15151."""
        with self._session(database, write=True) as (conn, database_id):
            add_member(conn, database_id, role, member)

    def drop_user(self, database: str, name: str) -> None:
        """Remove a user (not a role or a special user) if present, as ``DROP USER IF EXISTS`` would."""
        with self._session(database, write=True) as (conn, database_id):
            row = principal(conn, database_id, name)
            if row is not None and row["type"] != "R" and row["principal_id"] >= FIRST_PRINCIPAL_ID:
                drop_principal(conn, database_id, row["principal_id"])

    def users(self, database: str) -> list[DatabaseUser]:
        """The users created in a database (SQL, Entra user and Entra group users; not dbo, guest, ...)."""
        with self._session(database) as (conn, database_id):
            rows = conn.execute("SELECT name, sid, type, principal_id FROM principals WHERE database_id = ? "
                                "AND type IN ('S','E','X') AND principal_id >= ? ORDER BY principal_id",
                                (database_id, FIRST_PRINCIPAL_ID)).fetchall()
        return [DatabaseUser(*row) for row in rows]

    def role_members(self, database: str, role: str) -> list[str]:
        """Names of the members of a role, sorted."""
        with self._session(database) as (conn, database_id):
            rows = conn.execute("SELECT m.name FROM role_members rm JOIN principals r ON r.database_id = "
                                "rm.database_id AND r.principal_id = rm.role_principal_id JOIN principals m ON "
                                "m.database_id = rm.database_id AND m.principal_id = rm.member_principal_id "
                                "WHERE rm.database_id = ? AND r.name = ? ORDER BY m.name",
                                (database_id, role)).fetchall()
        return [row[0] for row in rows]

    @contextlib.contextmanager
    def _session(self, database: str, write: bool = False) -> Iterator[tuple[sqlite3.Connection, int]]:
        """``(connection, database_id)`` for a seeding call; ``write``: in a transaction committed on success."""
        found = self.database(database)
        if found is None:
            raise KeyError(f"no database {database!r}")
        conn = self._open()
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            yield conn, found[0]
            if write:
                conn.execute("COMMIT")
        finally:
            conn.close()  # after an exception, without COMMIT: the change is rolled back


# --- catalog changes shared by seeding and T-SQL (the caller owns the transaction) ---------------------------------
def principal(conn: sqlite3.Connection, database_id: int, name: str) -> dict | None:
    """The principals row named ``name`` (collation rules), as a mapping, or None."""
    cursor = conn.execute("SELECT name, principal_id, type, sid, owning_principal_id, is_fixed_role "
                          "FROM principals WHERE database_id = ? AND name = ?", (database_id, name))
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row))


def create_principal(conn: sqlite3.Connection, database_id: int, name: str, type_: str, *, sid: bytes | None = None,
                     password: str | None = None, default_schema: str | None = "dbo", owner: int | None = None) -> int:
    """Insert a user or role; returns its principal_id. Raises :class:`SqlError` 15023 / 15063 on duplicates.

    ``type_`` ``S`` with ``password``: a contained user (authentication DATABASE, SID S-1-9-3-...); ``S`` without:
    a user WITHOUT LOGIN (NONE); ``E`` / ``X`` with ``sid``: EXTERNAL; ``R``: a role owned by ``owner``.
    """
    if principal(conn, database_id, name) is not None:
        raise SqlError(15023, f"User, group, or role '{name}' already exists in the current database.")
    if type_ == "S":
        sid = CONTAINED_SID_PREFIX + secrets.token_bytes(16)
        auth, auth_desc = (2, "DATABASE") if password is not None else (0, "NONE")
    elif type_ == "R":
        sid, auth, auth_desc, default_schema = None, 0, "NONE", None
    else:
        auth, auth_desc = 4, "EXTERNAL"
    if sid is not None and type_ != "R" and conn.execute(
            "SELECT 1 FROM principals WHERE database_id = ? AND sid = ?", (database_id, sid)).fetchone():
        raise SqlError(15063, "The login already has an account under a different user name.")
    principal_id = conn.execute("SELECT MAX(principal_id) FROM principals WHERE database_id = ? AND principal_id < ?",
                                (database_id, FIXED_ROLES[0][1])).fetchone()[0] + 1
    created = now_text()
    conn.execute("INSERT INTO principals (database_id, name, principal_id, type, type_desc, default_schema_name, "
                 "create_date, modify_date, owning_principal_id, sid, authentication_type, "
                 "authentication_type_desc, password_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (database_id, name, max(principal_id, FIRST_PRINCIPAL_ID), type_, TYPE_DESC[type_], default_schema,
                  created, created, owner if type_ == "R" else None, sid, auth, auth_desc,
                  hash_password(password) if password is not None else None))
    return max(principal_id, FIRST_PRINCIPAL_ID)


def drop_principal(conn: sqlite3.Connection, database_id: int, principal_id: int) -> None:
    conn.execute("DELETE FROM role_members WHERE database_id = ? AND (member_principal_id = ? OR "
                 "role_principal_id = ?)", (database_id, principal_id, principal_id))
    conn.execute("DELETE FROM principals WHERE database_id = ? AND principal_id = ?", (database_id, principal_id))


def add_member(conn: sqlite3.Connection, database_id: int, role: str, member: str) -> None:
    """``ALTER ROLE [role] ADD MEMBER [member]`` without the permission check."""
    role_row, member_row = role_and_member(conn, database_id, role, member, "add")
    conn.execute("INSERT OR IGNORE INTO role_members VALUES (?, ?, ?)",
                 (database_id, role_row["principal_id"], member_row["principal_id"]))


def role_and_member(conn: sqlite3.Connection, database_id: int, role: str, member: str,
                    action: str) -> tuple[dict, dict]:
    """The rows of a role and of a (would-be) member for ``ALTER ROLE ... ADD|DROP MEMBER``, or SQL Server's errors.

    15151 (unknown role or member), 15081 (the public role), 15405 (a special principal or fixed role as the member),
    15413 (a role as its own member). ``action`` is ``add`` or ``drop``.
    """
    role_row = principal(conn, database_id, role)
    if role_row is None or role_row["type"] != "R":
        raise SqlError(15151, f"Cannot alter the role '{role}', because it does not exist or you do not have "
                              f"permission.")
    if role_row["principal_id"] == 0:
        raise SqlError(15081, "Membership of the public role cannot be changed.")
    member_row = principal(conn, database_id, member)
    if member_row is None:
        raise SqlError(15151, f"Cannot {action} the principal '{member}', because it does not exist or you do "
                              f"not have permission.")
    if member_row["principal_id"] < FIRST_PRINCIPAL_ID or member_row["is_fixed_role"]:
        raise SqlError(15405, f"Cannot use the special principal '{member_row['name']}'.", severity=11)
    if member_row["principal_id"] == role_row["principal_id"]:
        raise SqlError(15413, "Cannot make a role a member of itself.", severity=11)
    return role_row, member_row
