"""A signed-in session of the Azure SQL double: SQL batches, RPCs and transactions run on the catalog (sqlcatalog.py).

The statements and the SELECT rewrites are tsql.py's.

Batches, as SQL Server runs them: the whole batch is parsed first and a syntax error (102, 105, 103) runs nothing.
Statements then run in order, each atomically (a savepoint); a failing one sends its ERROR and the batch goes on,
unless ``SET XACT_ABORT ON``: then the error rolls back the open transaction and ends the batch. DDL is
transactional: ``BEGIN TRAN`` / the driver's transaction-manager requests map onto a SQLite transaction, opened with
the write lock at the first change, so a rollback undoes CREATE USER and ALTER ROLE.

Permissions: dbo (the server admin, the Entra admin) and members of db_owner may do everything; db_accessadmin
members CREATE/DROP USER; db_securityadmin members CREATE/DROP ROLE and change membership of roles that are not
fixed roles (fixed roles: db_owner only), as do the owners of a role; everyone may read the catalog views.

Result columns: text as NVARCHAR, integers as INT (BIGINT past 32 bits), bytes as VARBINARY, the catalog's bit
columns as BIT (computed values are INT), its dates as DATETIME, reals as FLOAT; SQL Server's names for bare columns
and aliases, empty for expressions.

Requests: SQL batches; RPC ``sp_prepexec``, ``sp_prepare``, ``sp_execute``, ``sp_executesql`` and ``sp_unprepare``
(by ProcID or name), answered as TDS_NOTES.md describes (RETURNVALUE with the handle first, DONEINPROC per
statement, RETURNSTATUS, DONEPROC; NoMetaData for fNoMetaData); ``sp_datatype_info*`` and
``sp_describe_undeclared_parameters`` with no rows; transaction-manager begin / commit / rollback.

Not emulated: visibility rules of the catalog views (everyone sees every principal), schemas and their ownership
(DROP USER of a schema owner succeeds), circular role membership, password policy, waits for the write lock longer
than ``sqlcatalog.LOCK_TIMEOUT_S`` (then 1222), the metadata ``sp_prepare`` returns, MARS.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import sqlite3
import uuid

from . import sqlcatalog, tds
from .sqlcatalog import SqlError
from .tsql import DB_OWNER, NotEmulated, Parser, Statement, Translation

LOG = logging.getLogger("azurelab.sqlserver")
# String literals (a PASSWORD = '...' among them) never reach the log: statements are logged with each one replaced.
_STRING_LITERAL = re.compile(r"N?'(?:[^']|'')*'?", re.I)


def redacted(text: str) -> str:
    """``text`` with every string literal replaced by ``'***'``, for the log."""
    return _STRING_LITERAL.sub("'***'", text)


VERSION_TEXT = ("Microsoft SQL Azure (RTM) - 12.0.2000.8 \n\tJan 1 2025 00:00:00 \n\t"
                "Copyright (C) 2022 Microsoft Corporation\n")
DB_ACCESSADMIN, DB_SECURITYADMIN = 16385, 16386
# Azure's 33134 text when the server's identity cannot read Entra. Sources: the "Principal '...' could not be
# resolved. Error message: '...'" form, 33134 level 16: MicrosoftDocs/azure-docs issue 56886; the inner message is
# the one quoted in blog.rufer.be (2025-02-27, "Server identity does not have Azure Active Directory Readers
# permission"). Newer servers word it "Server identity does not have the Microsoft Entra Directory Readers
# permission. For more information, see https://go.microsoft.com/fwlink/?linkid=2323204." (Microsoft Q&A 5923505):
# clients should match the number and "Directory Readers", not the whole text.
DIRECTORY_READERS_TEXT = ("Server identity does not have Azure Active Directory Readers permission. Please follow the "
                          "steps here : https://docs.microsoft.com/azure/azure-sql/database/"
                          "authentication-aad-service-principal")


class _UdfError(Exception):
    """Raised inside a SQLite function; the session turns it into the SqlError it carries."""


def _guid(value):
    if value is None or isinstance(value, bytes) and len(value) == 16:
        return value
    try:
        return uuid.UUID(str(value).strip("{}")).bytes_le
    except ValueError:
        raise _UdfError(SqlError(8169, "Conversion failed when converting from a character string to "
                                       "uniqueidentifier.")) from None


def _varbinary(value):
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return value.to_bytes(4, "big", signed=True)
    return str(value).encode("utf-16-le")  # as from nvarchar, the type every client sends strings as


def _text(value, style: int):
    if isinstance(value, bytes):
        if style in (1, 2):
            return ("0x" if style == 1 else "") + value.hex().upper()
        return value.decode("utf-16-le", errors="replace")
    return None if value is None else str(value)


def _bit(value):
    return None if value is None else int(bool(int(value)))


def _len(value):
    return None if value is None else len(str(value).rstrip(" "))


# --- the session ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Principal:
    """Who a signed-in session is: database, user name and principal_id there, login name, SID, token claims."""

    database: str
    database_id: int
    user: str
    principal_id: int
    login: str
    sid: bytes
    claims: dict | None = None  # None for SQL authentication


def is_app(claims: dict | None) -> bool:
    """Whether a token is an application's or managed identity's (appid and idtyp app, or no upn): not a user's."""
    return bool(claims and claims.get("appid")) and (claims.get("idtyp") == "app" or not claims.get("upn"))


@dataclasses.dataclass
class _Result:
    """What one statement sends before its DONE: tokens, and the DONE's status bits, command and row count."""

    tokens: bytes = b""
    status: int = 0
    curcmd: int = 0
    rows: int = 0
    error: bool = False


class TsqlSession:
    """One signed-in session's T-SQL: its SQLite connection, transaction state and prepared statements.

    ``server`` is the SqlLab: ``server_name``, ``resolve_principal``, ``directory_readers``, ``live_sessions()`` and
    ``catalog`` are used. Every public method returns the bytes of one TABULAR_RESULT message.
    """

    def __init__(self, server, who: Principal, session_id: int):
        self.server, self.who, self.session_id = server, who, session_id
        self.conn = server.catalog.connect(who.database_id)
        for name, function, arity in (("tsql_guid", _guid, 1), ("tsql_varbinary", _varbinary, 1),
                                      ("tsql_text", _text, 2), ("tsql_bit", _bit, 1), ("tsql_len", _len, 1)):
            self.conn.create_function(name, arity, self._udf(function), deterministic=True)
        self.trancount = 0
        self.descriptor = b""
        self.in_sqlite_transaction = False
        self.xact_abort = False
        self.nocount = False
        self.prepared: dict[int, tuple[str, str]] = {}
        self._udf_error: SqlError | None = None

    def close(self) -> None:
        self.conn.close()  # an open transaction is rolled back, as when a SQL Server session ends

    def _udf(self, function):
        def call(*args):
            try:
                return function(*args)
            except _UdfError as exc:
                self._udf_error = exc.args[0]
                raise
        return call

    # --- values of the session ---------------------------------------------------------------------------------
    def user_value(self, name: str):
        """CURRENT_USER and the other niladic functions of this session."""
        who = self.who
        return {"CURRENT_USER": who.user, "SESSION_USER": who.user, "USER": who.user, "USER_NAME": who.user,
                "SYSTEM_USER": who.login, "SUSER_SNAME": who.login, "SUSER_NAME": who.login,
                "ORIGINAL_LOGIN": who.login, "SUSER_SID": who.sid, "DB_NAME": who.database, "DB_ID": who.database_id,
                "USER_ID": who.principal_id, "DATABASE_PRINCIPAL_ID": who.principal_id}[name]

    def system_value(self, name: str):
        values = {"@@VERSION": VERSION_TEXT, "@@SERVERNAME": self.server.server_name, "@@SPID": self.session_id,
                  "@@TRANCOUNT": self.trancount}
        if name.upper() not in values:
            raise SqlError(137, f'Must declare the scalar variable "{name}".', severity=15, state=2)
        return values[name.upper()]

    # --- requests ----------------------------------------------------------------------------------------------
    def batch(self, text: str) -> bytes:
        """A SQL batch message: its statements' results, each ending in DONE."""
        return self._run(text, {}, in_proc=False)

    def rpc(self, request: tds.RpcRequest) -> bytes:
        """An RPC request: sp_prepexec / sp_prepare / sp_execute / sp_executesql / sp_unprepare, else 2812."""
        proc = request.proc
        if isinstance(proc, str):  # "[sys].sp_executesql" -> sp_executesql, or its ProcID
            proc = re.sub(r"[\[\]]", "", proc).lower().rsplit(".", 1)[-1]
            proc = _PROC_IDS.get(proc, proc)
        params = request.params
        metadata = not request.flags & tds.RPC_NO_METADATA
        try:
            if proc == tds.SP_PREPEXEC and len(params) >= 3:
                handle = self._prepare(params[1].value, params[2].value)
                return tds.returnvalue(0, params[0].name, handle) + self._proc(handle, params[3:], metadata)
            if proc == tds.SP_PREPARE and len(params) >= 3:
                handle = self._prepare(params[1].value, params[2].value)
                return tds.returnvalue(0, params[0].name, handle) + _end_proc(False)
            if proc == tds.SP_EXECUTE and params:
                return self._proc(params[0].value, params[1:], metadata)
            if proc == tds.SP_EXECUTESQL and params:
                declaration = params[1].value if len(params) > 1 else ""
                return self._statements(params[0].value, declaration, params[2:], metadata)
            if proc == tds.SP_UNPREPARE and params:
                self.prepared.pop(params[0].value, None)
                return _end_proc(False)
        except SqlError as error:
            return self._message(error) + _end_proc(True)
        if isinstance(proc, str) and proc.lower().startswith(("sp_datatype_info", "sp_describe_undeclared")):
            return _end_proc(False)  # tolerated by the drivers (TDS_NOTES.md)
        label = proc if isinstance(proc, str) else f"ProcID {proc}"
        LOG.info("%s: RPC %s is not emulated", self.server.server_name, label)
        return self._message(SqlError(2812, f"Could not find stored procedure '{label}'.", state=62)) + \
            _end_proc(True)

    def _prepare(self, declaration, statement) -> int:
        handle = len(self.prepared) + 1
        while handle in self.prepared:
            handle += 1
        self.prepared[handle] = (declaration or "", statement or "")
        return handle

    def _proc(self, handle, values: list[tds.RpcParam], metadata: bool) -> bytes:
        if handle not in self.prepared:
            raise SqlError(8179, f"Could not find prepared statement with handle {handle}.")
        declaration, statement = self.prepared[handle]
        return self._statements(statement, declaration, values, metadata)

    def _statements(self, statement: str, declaration: str, values: list[tds.RpcParam], metadata: bool) -> bytes:
        names = re.findall(r"@[\w@$#]+", declaration or "")
        params: dict[str, object] = {}
        for index, param in enumerate(values):
            key = (param.name or (names[index] if index < len(names) else f"@P{index + 1}")).lower()
            params[key] = param.value
        for name in names:
            if name.lower() not in params:
                raise SqlError(8178, f"The parameterized query '({declaration}){statement}' expects the parameter "
                                     f"'{name}', which was not supplied.")
        out = self._run(statement or "", params, in_proc=True, metadata=metadata)
        return out + _end_proc(False)

    def transaction_manager(self, payload: bytes) -> bytes:
        """A transaction-manager request (begin / commit / rollback, 2.2.6.9) on the same transaction as BEGIN TRAN."""
        request, begin_after = tds.transaction_request(payload)
        out = b""
        if request in (tds.TM_COMMIT_XACT, tds.TM_ROLLBACK_XACT):
            out += self._end_transaction(commit=request == tds.TM_COMMIT_XACT, every_level=True)
        if request == tds.TM_BEGIN_XACT or begin_after:
            out += self._begin_transaction()
        return out + tds.done(curcmd=0)

    # --- transactions ----------------------------------------------------------------------------------------------
    def _begin_transaction(self) -> bytes:
        self.trancount += 1
        if self.trancount > 1:
            return b""
        self.descriptor = secrets.token_bytes(8)
        return tds.envchange(tds.ENV_BEGIN_TRAN, self.descriptor, b"")

    def _end_transaction(self, commit: bool, every_level: bool = False) -> bytes:
        """COMMIT (one level) or ROLLBACK (all levels); the ENVCHANGE when the transaction ends.

        ``every_level``: the driver's commit or rollback request, which ends the transaction whatever its nesting
        and is acknowledged even when there is none.
        """
        if self.trancount == 0 and not every_level:
            raise SqlError(3902 if commit else 3903, f"The {'COMMIT' if commit else 'ROLLBACK'} TRANSACTION request "
                                                     f"has no corresponding BEGIN TRANSACTION.")
        self.trancount = self.trancount - 1 if commit and self.trancount > 1 and not every_level else 0
        if self.trancount:
            return b""
        if self.in_sqlite_transaction:
            self.conn.execute("COMMIT" if commit else "ROLLBACK")
            self.in_sqlite_transaction = False
        old, self.descriptor = self.descriptor, b""
        return tds.envchange(tds.ENV_COMMIT_TRAN if commit else tds.ENV_ROLLBACK_TRAN, b"", old)

    def _writing(self) -> None:
        """Take the write lock for the session's transaction (or this statement) before the first change."""
        if self.in_sqlite_transaction:
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise SqlError(1222, "Lock request time out period exceeded.") from None
            raise
        self.in_sqlite_transaction = True

    # --- running statements --------------------------------------------------------------------------------------
    def _run(self, text: str, params: dict[str, object], in_proc: bool, metadata: bool = True) -> bytes:
        try:
            statements = Parser(text).batch()
        except NotEmulated as exc:
            LOG.info("%s: not emulated (%s): %.200r", self.server.server_name, exc.reason, redacted(text))
            return self._message(SqlError(102, f"Incorrect syntax near '{exc.near}'.", severity=15)) + \
                self._done([_Result(error=True)], in_proc)
        except SqlError as error:
            LOG.info("%s: syntax error %s: %.200r", self.server.server_name, error.number, redacted(text))
            return self._message(error) + self._done([_Result(error=True)], in_proc)
        results: list[_Result] = []
        for statement in statements:
            result = self._one(statement, params, metadata)
            results.append(result)
            if result.error and self.xact_abort:
                results.append(_Result(self._abort()))
                break
        return self._done(results, in_proc)

    def _done(self, results: list[_Result], in_proc: bool) -> bytes:
        out = bytearray()
        token = 0xFF if in_proc else 0xFD
        for index, result in enumerate(results or [_Result()]):
            status = result.status | (tds.DONE_ERROR if result.error else 0)
            if index < len(results) - 1:
                status |= tds.DONE_MORE
            out += result.tokens + tds.done(status, result.rows, result.curcmd, token)
        return bytes(out)

    def _abort(self) -> bytes:
        """XACT_ABORT ON after an error: the transaction is rolled back and the batch ends."""
        if self.trancount:
            return self._end_transaction(commit=False)
        return b""

    def _one(self, statement: Statement, params: dict[str, object], metadata: bool) -> _Result:
        """Run one statement atomically; its errors become an ERROR token and DONE_ERROR."""
        writes = statement.kind in ("create_user", "drop_user", "create_role", "drop_role", "alter_role")
        savepoint = False
        try:
            if writes:
                self._writing()
                self.conn.execute("SAVEPOINT tsql_statement")
                savepoint = True
            result = self._dispatch(statement, params, metadata)
            if savepoint:
                self.conn.execute("RELEASE tsql_statement")
                self._autocommit()
            return result
        except (SqlError, NotEmulated, sqlite3.Error) as exc:
            if savepoint:
                self.conn.execute("ROLLBACK TO tsql_statement")
                self.conn.execute("RELEASE tsql_statement")
                self._autocommit()
            return _Result(self._message(self._error(exc, statement)), error=True)

    def _autocommit(self) -> None:
        if self.trancount == 0 and self.in_sqlite_transaction:
            self.conn.execute("COMMIT")
            self.in_sqlite_transaction = False

    def _error(self, exc: Exception, statement: Statement) -> SqlError:
        if isinstance(exc, SqlError):
            return exc
        if isinstance(exc, NotEmulated):
            LOG.info("%s: not emulated (%s): %.200r", self.server.server_name, exc.reason, redacted(statement.text))
            return SqlError(102, f"Incorrect syntax near '{exc.near}'.", severity=15)
        if self._udf_error is not None:
            error, self._udf_error = self._udf_error, None
            return error
        return _sqlite_error(str(exc), statement, self.server.server_name)

    def _message(self, error: SqlError) -> bytes:
        return tds.message(error.number, error.text, self.server.server_name, state=error.state,
                           severity=error.severity)

    def _dispatch(self, statement: Statement, params: dict[str, object], metadata: bool) -> _Result:
        kind = statement.kind
        if kind == "select":
            return self._select(statement, params, metadata)
        if kind == "create_user":
            self._create_user(statement.name, statement.options)
        elif kind == "drop_user":
            self._drop_user(statement.name, statement.options["if_exists"])
        elif kind == "create_role":
            self._create_role(statement.name, statement.options["owner"])
        elif kind == "drop_role":
            self._drop_role(statement.name, statement.options["if_exists"])
        elif kind == "alter_role":
            self._alter_role(statement.name, statement.options["action"], statement.options["member"])
        elif kind == "begin":
            return _Result(self._begin_transaction())
        elif kind in ("commit", "rollback"):
            return _Result(self._end_transaction(commit=kind == "commit"))
        elif kind == "set" and statement.name == "XACT_ABORT":
            self.xact_abort = statement.options["on"]
        elif kind == "set" and statement.name == "NOCOUNT":
            self.nocount = statement.options["on"]
        elif kind == "exec":
            raise SqlError(2812, f"Could not find stored procedure '{statement.name}'.", state=62)
        return _Result()

    # --- SELECT ------------------------------------------------------------------------------------------------
    def _select(self, statement: Statement, params: dict[str, object], metadata: bool) -> _Result:
        constant = _constant_select(statement.text, self)
        if constant is not None:
            columns, row = constant
            rows = [row]
        else:
            translation = Translation(self, statement.tokens, params)
            sql = translation.sql()
            if "temp.sys_dm_exec_sessions" in sql:
                self._refresh_sessions()
            denied: list[str] = []
            self.conn.set_authorizer(_read_only(denied))
            try:
                cursor = self.conn.execute(sql, translation.values)
                rows = cursor.fetchall()
            except sqlite3.DatabaseError as exc:
                if denied:
                    raise SqlError(208, f"Invalid object name '{denied[0]}'.") from None
                raise exc
            finally:
                self.conn.set_authorizer(None)
            names = translation.column_names([d[0] for d in cursor.description])
            columns = [_column(name, [row[i] for row in rows]) for i, name in enumerate(names)]
        body = tds.result_set(columns, [tuple(_cell(c, v) for c, v in zip(columns, row)) for row in rows], metadata)
        return _Result(body, 0 if self.nocount else tds.DONE_COUNT, tds.CURCMD_SELECT, len(rows))

    def _refresh_sessions(self) -> None:
        """Fill this connection's sys.dm_exec_sessions from the server's live sessions (this one is running)."""
        columns = sqlcatalog.SESSION_COLUMNS
        rows = []
        for session in self.server.live_sessions():
            if session["session_id"] == self.session_id:
                session["status"] = "running"
            session["login_time"] = sqlcatalog.datetime_text(session["login_time"])
            rows.append(tuple(session[column] for column in columns))
        self.conn.execute("DELETE FROM temp.sys_dm_exec_sessions")
        self.conn.executemany(f"INSERT INTO temp.sys_dm_exec_sessions ({', '.join(columns)}) "
                              f"VALUES ({', '.join('?' * len(columns))})", rows)

    # --- principals ---------------------------------------------------------------------------------------------
    def _roles(self) -> set[int]:
        """principal_ids of the roles the session's user is in, through nested roles (dbo: db_owner)."""
        if self.who.principal_id == 1:
            return {DB_OWNER}
        rows = self.conn.execute(
            "WITH RECURSIVE m(id) AS (SELECT ? UNION SELECT role_principal_id FROM role_members JOIN m "
            "ON member_principal_id = m.id WHERE database_id = ?) SELECT id FROM m",
            (self.who.principal_id, self.who.database_id)).fetchall()
        return {row[0] for row in rows}

    def _may(self, *roles: int) -> bool:
        return bool(self._roles() & {DB_OWNER, *roles})

    def _create_user(self, name: str, options: dict) -> None:
        if not self._may(DB_ACCESSADMIN):
            raise SqlError(15247, "User does not have permission to perform this action.")
        database_id = self.who.database_id
        schema = options.get("default_schema", "dbo")
        if "login" in options or not options:
            login = options.get("login", name)
            raise SqlError(15007, f"'{login}' is not a valid login or you do not have permission.")
        if options.get("external"):
            if set(options) - {"external", "object_id", "default_schema"}:
                raise NotEmulated("WITH", "FROM EXTERNAL PROVIDER with SID, TYPE or PASSWORD")
            type_, sid = self._resolve(name, options.get("object_id"))
            sqlcatalog.create_principal(self.conn, database_id, name, type_, sid=sid, default_schema=schema)
        elif "password" in options:
            if set(options) - {"password", "default_schema"}:
                raise NotEmulated("WITH", "PASSWORD with SID or TYPE")
            sqlcatalog.create_principal(self.conn, database_id, name, "S", password=options["password"],
                                        default_schema=schema)
        elif options.get("without_login"):
            if set(options) - {"without_login", "default_schema"}:
                raise NotEmulated("WITH", "WITHOUT LOGIN with SID, TYPE or PASSWORD")
            sqlcatalog.create_principal(self.conn, database_id, name, "S", default_schema=schema)
        elif "sid" in options and "type" in options and not set(options) - {"sid", "type", "default_schema"}:
            sqlcatalog.create_principal(self.conn, database_id, name, options["type"], sid=options["sid"],
                                        default_schema=schema)
        else:
            raise NotEmulated("WITH", f"CREATE USER options {sorted(options)}")

    def _resolve(self, name: str, object_id: str | None) -> tuple[str, bytes]:
        """FROM EXTERNAL PROVIDER: the type and SID of ``name`` from the directory, or Azure's errors."""
        if self.who.claims is None:
            raise SqlError(33159, f"Principal '{name}' could not be created. Only connections established with "
                                  f"Active Directory accounts can create other Active Directory users.")
        if sqlcatalog.principal(self.conn, self.who.database_id, name) is not None:
            raise SqlError(15023, f"User, group, or role '{name}' already exists in the current database.")
        if is_app(self.who.claims) and not self.server.directory_readers():
            raise SqlError(33134, f"Principal '{name}' could not be resolved. Error message: "
                                  f"'{DIRECTORY_READERS_TEXT}'")
        resolve = self.server.resolve_principal
        entry = resolve(name, object_id) if resolve is not None else None
        if entry is None:
            raise SqlError(33130, f"Principal '{name}' could not be found or this principal type is not supported.")
        if entry["type"] in ("ServicePrincipal", "ManagedIdentity"):
            return "E", tds.sid_of(entry["client_id"])
        return ("X" if entry["type"] == "Group" else "E"), tds.sid_of(entry["object_id"])

    def _drop_user(self, name: str, if_exists: bool) -> None:
        row = sqlcatalog.principal(self.conn, self.who.database_id, name)
        denied = not self._may(DB_ACCESSADMIN)
        if row is None or row["type"] == "R" or denied:
            if if_exists and not denied:
                return
            raise SqlError(15151, f"Cannot drop the user '{name}', because it does not exist or you do not have "
                                  f"permission.")
        if row["principal_id"] < sqlcatalog.FIRST_PRINCIPAL_ID:
            raise SqlError(15150, f"Cannot drop the user '{row['name']}'.")
        if self.conn.execute("SELECT 1 FROM principals WHERE database_id = ? AND type = 'R' AND owning_principal_id "
                             "= ?", (self.who.database_id, row["principal_id"])).fetchone():
            raise SqlError(15421, "The database principal owns a database role and cannot be dropped.")
        sqlcatalog.drop_principal(self.conn, self.who.database_id, row["principal_id"])

    def _create_role(self, name: str, owner: str | None) -> None:
        if not self._may(DB_SECURITYADMIN):
            raise SqlError(15247, "User does not have permission to perform this action.")
        owner_id = self.who.principal_id
        if owner is not None:
            row = sqlcatalog.principal(self.conn, self.who.database_id, owner)
            if row is None:
                raise SqlError(15151, f"Cannot find the user '{owner}', because it does not exist or you do not "
                                      f"have permission.")
            owner_id = row["principal_id"]
        sqlcatalog.create_principal(self.conn, self.who.database_id, name, "R", owner=owner_id)

    def _drop_role(self, name: str, if_exists: bool) -> None:
        row = sqlcatalog.principal(self.conn, self.who.database_id, name)
        allowed = row is not None and (self._may(DB_SECURITYADMIN) or row["owning_principal_id"] ==
                                       self.who.principal_id)
        if row is None or row["type"] != "R" or not allowed:
            if if_exists and (row is None or row["type"] != "R"):
                return
            raise SqlError(15151, f"Cannot drop the role '{name}', because it does not exist or you do not have "
                                  f"permission.")
        if row["is_fixed_role"] or row["principal_id"] == 0:
            raise SqlError(15150, f"Cannot drop the role '{row['name']}'.")
        if self.conn.execute("SELECT 1 FROM role_members WHERE database_id = ? AND role_principal_id = ?",
                             (self.who.database_id, row["principal_id"])).fetchone():
            raise SqlError(15144, "The role has members. It must be empty before it can be dropped.")
        sqlcatalog.drop_principal(self.conn, self.who.database_id, row["principal_id"])

    def _alter_role(self, role: str, action: str, member: str) -> None:
        database_id = self.who.database_id
        row = sqlcatalog.principal(self.conn, database_id, role)
        if row is not None and row["type"] == "R":
            # fixed roles: db_owner only; other roles: db_securityadmin too, and the role's owner
            allowed = self._may() if row["is_fixed_role"] else (
                self._may(DB_SECURITYADMIN) or row["owning_principal_id"] == self.who.principal_id)
            if not allowed:
                raise SqlError(15151, f"Cannot alter the role '{role}', because it does not exist or you do not "
                                      f"have permission.")
        role_row, member_row = sqlcatalog.role_and_member(self.conn, database_id, role, member, action)
        if action == "add":
            self.conn.execute("INSERT OR IGNORE INTO role_members VALUES (?, ?, ?)",
                              (database_id, role_row["principal_id"], member_row["principal_id"]))
        else:
            self.conn.execute("DELETE FROM role_members WHERE database_id = ? AND role_principal_id = ? AND "
                              "member_principal_id = ?", (database_id, role_row["principal_id"],
                                                          member_row["principal_id"]))


_PROC_IDS = {"sp_executesql": tds.SP_EXECUTESQL, "sp_prepare": tds.SP_PREPARE, "sp_execute": tds.SP_EXECUTE,
             "sp_prepexec": tds.SP_PREPEXEC, "sp_unprepare": tds.SP_UNPREPARE}


def _end_proc(error: bool) -> bytes:
    return tds.returnstatus(0) + tds.done(tds.DONE_ERROR if error else 0, token=0xFE, curcmd=0xE0)


def _read_only(denied: list[str]):
    """A SQLite authorizer for user SELECTs: reads of the TEMP catalog views only (and what they read)."""
    def authorize(action, arg1, _arg2, database, view):
        if action == sqlite3.SQLITE_READ:
            if database in ("temp", None) or (view or "").startswith("sys_"):  # None: a CTE
                return sqlite3.SQLITE_OK
            denied.append(arg1)
            return sqlite3.SQLITE_DENY
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        denied.append(arg1 or "")
        return sqlite3.SQLITE_DENY
    return authorize


def _sqlite_error(message: str, statement: Statement, server: str) -> SqlError:
    """SQL Server's error for what SQLite said about a translated SELECT."""
    patterns = ((r"no such table: (?:temp\.sys_)?(.+)", 208, "Invalid object name '{}'."),
                (r"unknown database (.+)", 208, "Invalid object name '{}'."),
                (r"no such column: (?:.*\.)?(.+)", 207, "Invalid column name '{}'."),
                (r"ambiguous column name: (?:.*\.)?(.+)", 209, "Ambiguous column name '{}'."),
                (r"no such function: (.+)", 195, "'{}' is not a recognized built-in function name."),
                (r'near "(.+?)": syntax error', 102, "Incorrect syntax near '{}'."))
    for pattern, number, text in patterns:
        match = re.fullmatch(pattern, message)
        if match:
            return SqlError(number, text.format(match[1].strip('"')), severity=15 if number == 102 else 16)
    LOG.info("%s: SQLite said %r for %.200r", server, message, redacted(statement.text))
    return SqlError(102, f"Incorrect syntax near '{statement.tokens[-1].text if statement.tokens else ''}'.",
                    severity=15)


def _column(name: str, values: list) -> tds.Column:
    """The TDS column for a result column's values (SQLite keeps no declared type for expressions)."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if not present:
        return tds.Column(name, "int")
    if kinds == {bool}:
        return tds.Column(name, "bit")
    if kinds <= {int, bool}:
        wide = any(not -2**31 <= int(v) < 2**31 for v in present)
        return tds.Column(name, "bigint" if wide else "int")
    if kinds <= {int, float}:
        return tds.Column(name, "float")
    if kinds == {bytes}:
        return tds.Column(name, "varbinary", min(8000, max(1, *(len(v) for v in present))))
    if len(kinds) == 1 and hasattr(present[0], "isoformat") and hasattr(present[0], "hour"):
        return tds.Column(name, "datetime")
    return tds.nvarchar(name, min(4000, max(128, *(len(str(v)) for v in present))))


def _cell(column: tds.Column, value):
    if value is None or column.kind != "nvarchar":
        return value
    return str(value)[:4000]


# --- the expression-only SELECT answered without SQLite (exact types: BIT, NVARCHAR, VARBINARY) --------------------
_ITEM = re.compile(r"""\s*(?P<expr>CURRENT_USER|USER_NAME\(\s*\)|SUSER_SNAME\(\s*\)|SUSER_SID\(\s*\)|DB_NAME\(\s*\)
                   |@@VERSION|@@SERVERNAME|NULL|-?\d+|N'(?:[^']|'')*'|CAST\(\s*(?P<bit>[01])\s+AS\s+BIT\s*\))
                   (?:\s+AS)?(?:\s+(?P<alias>\[(?:[^\]]|\]\])+\]|[A-Za-z_]\w*))?\s*(?:,|$)""", re.I | re.X)
_SELECT = re.compile(r"\s*SELECT\s+(?P<list>.*?)\s*", re.I | re.S)


def _constant_select(text: str, session: TsqlSession) -> tuple[list[tds.Column], tuple] | None:
    """Columns and the single row of a list of niladic values and literals, or None for any other SELECT."""
    select = _SELECT.fullmatch(text)
    if not select:
        return None
    columns, values, pos, items = [], [], 0, select["list"]
    while pos < len(items):
        item = _ITEM.match(items, pos)
        if not item or item.end() == pos:
            return None
        pos = item.end()
        alias = item["alias"]
        if alias and alias.upper() in ("FROM", "WHERE", "ORDER", "GROUP", "UNION"):
            return None
        column, value = _expression(item, session)
        if alias:
            column = dataclasses.replace(column, name=alias[1:-1].replace("]]", "]") if alias[0] == "[" else alias)
        columns.append(column)
        values.append(value)
    return (columns, tuple(values)) if columns else None


def _expression(item: re.Match, session: TsqlSession) -> tuple[tds.Column, object]:
    expr = re.sub(r"\s+", "", item["expr"]).upper()
    if expr in ("CURRENT_USER", "USER_NAME()"):
        return tds.nvarchar(""), session.who.user
    if expr == "SUSER_SNAME()":
        return tds.nvarchar(""), session.who.login
    if expr == "SUSER_SID()":
        return tds.Column("", "varbinary", 85), session.who.sid
    if expr == "DB_NAME()":
        return tds.nvarchar(""), session.who.database
    if expr == "@@VERSION":
        return tds.nvarchar("", 300), VERSION_TEXT
    if expr == "@@SERVERNAME":
        return tds.nvarchar(""), session.server.server_name
    if expr == "NULL":
        return tds.Column("", "int"), None
    if item["bit"] is not None:
        return tds.Column("", "bit"), item["bit"] == "1"
    if expr.startswith("N'"):
        value = item["expr"][2:-1].replace("''", "'")
        return tds.nvarchar("", max(len(value), 1)), value
    return tds.Column("", "int"), int(expr)
