"""The lab Azure SQL Database endpoint: a TDS server (tds.py) with Azure's login rules and a tiny T-SQL subset.

Clients are the real ones, unchanged: pyodbc with Microsoft ODBC Driver 18 and ``mssql-python``.

Login, as Azure SQL Database does it:

1. PRELOGIN, then TLS (lab certificate, TLS 1.2) for the whole session, whatever ``Encrypt`` the client asked for;
   or, with ``Encrypt=strict`` (TDS 8.0), TLS (1.2 or 1.3, ALPN ``tds/8.0``) first and PRELOGIN inside it.
2. A LOGIN7 with a FEDAUTH security token (``SQL_COPT_SS_ACCESS_TOKEN``, attribute 1256) must carry a token in
   UTF-16LE signed by the lab issuer for the SQL audience (``https://database.windows.net/``) and, when the server
   has a tenant, issued by that tenant. The token names a principal: its client id (``appid``) for applications and
   managed identities, its object id (``oid``) for users. That GUID, in SQL Server's uniqueidentifier byte order, is
   the SID looked up among the database's Entra users (``TYPE = E``); the server's Entra admin becomes ``dbo``.
3. A LOGIN7 with a user name and password is SQL authentication: the seeded server admin (also ``admin@server``),
   who becomes ``dbo``. Refused while Entra-only authentication is on.
4. Refusals are ERROR 18456 class 14 with Azure's texts ("Login failed for user '<token-identified principal>'.",
   "... The server is not currently configured to accept this token.", "... Token is expired.", the Entra-only
   reason), then DONE with DONE_ERROR and close. Why a login was refused goes to the log, never a token or password.

T-SQL: one ``SELECT`` of a list of ``CURRENT_USER``, ``USER_NAME()``, ``SUSER_SNAME()``, ``SUSER_SID()``,
``DB_NAME()``, ``@@VERSION``, ``@@SERVERNAME``, integer and ``N'...'`` literals, ``NULL`` and ``CAST(<int> AS
bit)``, each with an optional alias (``SUSER_SNAME()`` of a token session is the database user name: Azure's
value is not emulated). A name alone or after EXEC is answered 2812 "Could not find stored
procedure", anything else 102 "Incorrect syntax near ...", both leaving the session usable. Transactions
(begin/commit/rollback requests) are acknowledged with descriptors and change nothing.

Not emulated: Entra groups (a member logging in through a ``TYPE = X`` user), logins in master and contained
users with passwords, the ADAL/MSAL FEDAUTH workflows (``Authentication=ActiveDirectory...``: the driver fetching
its own token), server firewall rules, the gateway's redirect, connection limits, every other statement, RPC
(parameterised queries, ``sp_prepexec``) beyond an empty answer to the driver's ``sp_datatype_info*`` calls.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import secrets
import socket
import socketserver
import struct
import threading
from typing import Callable

from . import ca, tds
from .config import HOST, LabPaths
from .tokens import Issuer, TokenError

LOG = logging.getLogger("azurelab.sqlserver")

LOGIN_TIMEOUT_S = 30
PROGRAM = "Microsoft SQL Server"
PROGRAM_VERSION = (12, 0, 2000)  # what Azure SQL Database reports in LOGINACK and PRELOGIN
VERSION_TEXT = ("Microsoft SQL Azure (RTM) - 12.0.2000.8 \n\tJan 1 2025 00:00:00 \n\t"
                "Copyright (C) 2022 Microsoft Corporation\n")
ADMIN_SID = b"\x01"  # the SID SQL Server gives its built-in administrator login
TOKEN_PRINCIPAL = "<token-identified principal>"
NOT_ACCEPTED = "The server is not currently configured to accept this token."
ENTRA_ONLY = "Reason: Azure Active Directory only authentication is enabled. Please contact your system administrator."


@dataclasses.dataclass
class DatabaseUser:
    """A database principal: ``type`` ``E`` (Entra user/app/MI), ``X`` (Entra group) or ``S`` (SQL user)."""

    name: str
    sid: bytes
    type: str = "E"


class LoginRefused(Exception):
    """A login the server refuses: ``text`` is what the client sees, ``reason`` what the log gets."""

    def __init__(self, text: str, reason: str, number: int = 18456, state: int = 1):
        super().__init__(text)
        self.text, self.reason, self.number, self.state = text, reason, number, state


class SqlLab:
    """One Azure SQL logical server with its databases, bound to 127.0.0.1:``port`` at construction (0 = free port).

    ``admin_login`` / ``admin_password``: the SQL-authentication server admin. ``entra_admin``: the GUID whose SID
    is the server's Entra admin (client id of an app / MI, object id of a user), or None. ``entra_only()`` is
    asked at every login (the ARM ``azureADOnlyAuthentications/Default`` flag). ``tenant_id``: tokens from another
    tenant are refused when set. Users live in memory: :meth:`add_user`, :meth:`drop_user`, :meth:`users`.
    """

    def __init__(self, paths: LabPaths, issuer: Issuer, port: int, server_name: str, *, audience: str,
                 admin_login: str, admin_password: str, databases: tuple[str, ...] = (),
                 entra_admin: str | None = None, entra_only: Callable[[], bool] = lambda: False,
                 tenant_id: str | None = None):
        self.issuer = issuer
        self.audience = audience
        self.server_name = server_name
        self.admin_login = admin_login
        self._admin_password = admin_password
        self.entra_admin_sid = tds.sid_of(entra_admin) if entra_admin else None
        self.entra_only = entra_only
        self.tenant_id = tenant_id
        self.tls = ca.server_context(paths, max_tls12=True)
        self.tls_strict = ca.server_context(paths)
        self.tls_strict.set_alpn_protocols(["tds/8.0"])
        self._lock = threading.Lock()
        # Names compare case-insensitively, as under Azure's default collation: keyed by casefold().
        self._database_names = {name.casefold(): name for name in ("master", *databases)}
        self._databases: dict[str, dict[str, DatabaseUser]] = {key: {} for key in self._database_names}
        self._server = _Server((HOST, port), _Session)
        self._server.lab = self
        self.port = self._server.server_address[1]
        self._serving = False

    def add_user(self, database: str, name: str, sid: bytes, type_: str = "E") -> None:
        """Add (or replace) a database user, as ``CREATE USER [name] WITH SID = 0x..., TYPE = E`` would."""
        with self._lock:
            self._databases[database.casefold()][name.casefold()] = DatabaseUser(name, bytes(sid), type_)

    def drop_user(self, database: str, name: str) -> None:
        """Remove a database user if present, as ``DROP USER IF EXISTS [name]`` would."""
        with self._lock:
            self._databases[database.casefold()].pop(name.casefold(), None)

    def users(self, database: str) -> list[DatabaseUser]:
        with self._lock:
            return list(self._databases[database.casefold()].values())

    def serve_forever(self) -> None:
        self._serving = True
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop accepting and close the listener; open sessions end when their client disconnects."""
        if self._serving:
            self._server.shutdown()
        self._server.server_close()

    # --- login decisions ----------------------------------------------------------------------------------------
    def _database(self, login: tds.Login7) -> str:
        """The name of the database the login asks for (master when it names none), as the catalog spells it."""
        key = (login.database or "master").casefold()
        with self._lock:
            if key not in self._databases:
                raise LoginRefused(f"Cannot open database \"{login.database}\" requested by the login. "
                                   f"The login failed.", f"no database {login.database!r}", number=4060)
        return self._database_names[key]

    def token_login(self, login: tds.Login7) -> tuple[str, str, bytes]:
        """``(database, user name, SID)`` for a FEDAUTH login, or :class:`LoginRefused`."""
        failed = f"Login failed for user '{TOKEN_PRINCIPAL}'."
        fedauth = login.fedauth
        if fedauth.library != tds.FEDAUTH_LIBRARY_SECURITYTOKEN:
            raise LoginRefused(f"{failed} {NOT_ACCEPTED}", f"FEDAUTH library {fedauth.library} is not emulated")
        try:
            token = fedauth.token.decode("utf-16-le")
            claims = self.issuer.verify(token, self.audience)
        except UnicodeDecodeError:
            raise LoginRefused(f"{failed} {NOT_ACCEPTED}", "token is not UTF-16LE") from None
        except TokenError as exc:
            if exc.reason.startswith("The access token has expired"):
                raise LoginRefused(f"{failed} Token is expired.", exc.reason) from None
            raise LoginRefused(f"{failed} {NOT_ACCEPTED}", exc.reason) from None
        if self.tenant_id and claims.get("tid") != self.tenant_id:
            raise LoginRefused(f"{failed} {NOT_ACCEPTED}", "token is from another tenant")
        principal = claims.get("appid") or claims["oid"]
        try:
            sid = tds.sid_of(principal)
        except ValueError:
            raise LoginRefused(f"{failed} {NOT_ACCEPTED}", "principal id is not a GUID") from None
        database = self._database(login)
        if sid == self.entra_admin_sid:
            return database, "dbo", sid
        with self._lock:
            candidates = self._databases[database.casefold()].values()
            user = next((u for u in candidates if u.sid == sid and u.type == "E"), None)
        if user is None:
            raise LoginRefused(failed, f"no Entra user with SID 0x{sid.hex()} ({principal}) in {database}")
        return database, user.name, sid

    def password_login(self, login: tds.Login7) -> tuple[str, str, bytes]:
        """``(database, user name, SID)`` for SQL authentication, or :class:`LoginRefused`."""
        name = login.username.split("@", 1)[0]
        failed = f"Login failed for user '{login.username}'."
        if self.entra_only():
            raise LoginRefused(f"{failed} {ENTRA_ONLY}", "Entra-only authentication is on")
        if name.casefold() != self.admin_login.casefold() or not hmac.compare_digest(
                login.password.encode(), self._admin_password.encode()):
            raise LoginRefused(failed, "unknown login or wrong password")
        return self._database(login), "dbo", ADMIN_SID


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    lab: SqlLab


@dataclasses.dataclass
class _Context:
    """What a signed-in session knows about itself."""

    database: str
    user: str
    login: str
    sid: bytes


class _Session(socketserver.BaseRequestHandler):
    """One client connection, from PRELOGIN to close."""

    server: _Server

    def handle(self) -> None:
        lab = self.server.lab
        sock: socket.socket = self.request
        sock.settimeout(LOGIN_TIMEOUT_S)
        channel = tds.Channel(sock)
        try:
            context = self._login(channel, lab)
            if context is None:
                return
            sock.settimeout(None)
            self._serve(channel, lab, context)
        except ConnectionResetError:
            LOG.debug("%s: client disconnected", lab.server_name)
        except (OSError, tds.ProtocolError, ValueError, struct.error) as exc:  # OSError covers ssl.SSLError
            LOG.info("%s: connection ended: %s: %s", lab.server_name, type(exc).__name__, exc)
        finally:
            channel.close()

    def _negotiate(self, channel: tds.Channel, lab: SqlLab) -> bool:
        """PRELOGIN and TLS in either order (TDS 7.4 or 8.0); False when the client cannot encrypt."""
        strict = channel.starts_with_tls()
        if strict:
            channel.start_tls(lab.tls_strict, in_prelogin=False)
        kind, payload = channel.read_message()
        if kind != tds.PRELOGIN:
            raise tds.ProtocolError(f"expected PRELOGIN, got packet type {kind:#x}")
        options = tds.parse_prelogin(payload)
        answer = [(tds.PL_VERSION, bytes(PROGRAM_VERSION[:2]) + PROGRAM_VERSION[2].to_bytes(2, "big") + b"\0\0"),
                  (tds.PL_ENCRYPTION, bytes([tds.ENCRYPT_ON])), (tds.PL_INSTOPT, b"\0"), (tds.PL_THREADID, b""),
                  (tds.PL_MARS, b"\0")]
        if options.get(tds.PL_FEDAUTHREQUIRED, b"\0")[:1] == b"\1":
            answer.append((tds.PL_FEDAUTHREQUIRED, b"\1"))
        channel.send_message(tds.TABULAR_RESULT, tds.build_prelogin(answer))
        if not strict:
            if options.get(tds.PL_ENCRYPTION, b"\2")[:1] == bytes([tds.ENCRYPT_NOT_SUP]):
                LOG.info("%s: client cannot encrypt: refused", lab.server_name)
                return False
            channel.start_tls(lab.tls)
        return True

    def _login(self, channel: tds.Channel, lab: SqlLab) -> _Context | None:
        """Negotiate, read LOGIN7, and answer with the login response or a refusal (then None)."""
        if not self._negotiate(channel, lab):
            return None
        kind, payload = channel.read_message()
        if kind != tds.LOGIN7:
            raise tds.ProtocolError(f"expected LOGIN7, got packet type {kind:#x}")
        login = tds.parse_login7(payload)
        channel.packet_size = min(max(login.packet_size, 512), 32767) if login.packet_size else tds.DEFAULT_PACKET_SIZE
        try:
            if login.fedauth is not None:
                database, user, sid = lab.token_login(login)
            else:
                database, user, sid = lab.password_login(login)
        except LoginRefused as refused:
            LOG.info("%s: login refused: %s", lab.server_name, refused.reason)
            out = b""
            if refused.number != 18456:  # SQL Server follows e.g. 4060 with the generic login failure
                out += tds.message(refused.number, refused.text, lab.server_name, severity=11)
                refused = LoginRefused(f"Login failed for user '{login.username or TOKEN_PRINCIPAL}'.", "")
            out += tds.message(18456, refused.text, lab.server_name, state=refused.state, severity=14)
            channel.send_message(tds.TABULAR_RESULT, out + tds.done(tds.DONE_ERROR, curcmd=0))
            return None
        LOG.info("%s: %s signed in to %s as %s", lab.server_name,
                 "token" if login.fedauth else "SQL login", database, user)
        channel.send_message(tds.TABULAR_RESULT, self._login_response(lab, login, database, channel.packet_size))
        return _Context(database, user, user if login.fedauth else login.username, sid)

    @staticmethod
    def _login_response(lab: SqlLab, login: tds.Login7, database: str, packet_size: int) -> bytes:
        """The token sequence every driver accepted (TDS_NOTES.md)."""
        out = (tds.envchange(tds.ENV_DATABASE, database, "master")
               + tds.message(5701, f"Changed database context to '{database}'.", lab.server_name, severity=0,
                             info=True)
               + tds.envchange(tds.ENV_COLLATION, tds.COLLATION)
               + tds.envchange(tds.ENV_LANGUAGE, "us_english")
               + tds.message(5703, "Changed language setting to us_english.", lab.server_name, severity=0,
                             info=True)
               + tds.loginack(PROGRAM, PROGRAM_VERSION)
               + tds.envchange(tds.ENV_PACKET_SIZE, str(packet_size), str(packet_size)))
        if login.fedauth is not None:
            out += tds.featureextack({tds.FEATURE_FEDAUTH: b""})
        return out + tds.done(curcmd=0)

    def _serve(self, channel: tds.Channel, lab: SqlLab, context: _Context) -> None:
        transaction = b""
        while True:
            kind, payload = channel.read_message()
            if kind == tds.SQL_BATCH:
                reply = _run_batch(tds.batch_text(payload), lab, context)
            elif kind == tds.RPC:
                reply = _run_rpc(tds.rpc_name(payload), lab)
            elif kind == tds.TRANSACTION_MANAGER:
                reply, transaction = _transaction(payload, transaction)
            elif kind == tds.ATTENTION:
                reply = tds.done(tds.DONE_ATTN, curcmd=0)
            else:
                raise tds.ProtocolError(f"packet type {kind:#x} is not emulated")
            channel.send_message(tds.TABULAR_RESULT, reply)


def _transaction(payload: bytes, current: bytes) -> tuple[bytes, bytes]:
    """Acknowledge begin / commit / rollback with the ENVCHANGEs the driver tracks; returns (reply, descriptor)."""
    request, begin_after = tds.transaction_request(payload)
    out = b""
    if request in (tds.TM_COMMIT_XACT, tds.TM_ROLLBACK_XACT):
        kind = tds.ENV_COMMIT_TRAN if request == tds.TM_COMMIT_XACT else tds.ENV_ROLLBACK_TRAN
        out += tds.envchange(kind, b"", current)
        current = b""
    if request == tds.TM_BEGIN_XACT or begin_after:
        current = secrets.token_bytes(8)
        out += tds.envchange(tds.ENV_BEGIN_TRAN, current, b"")
    return out + tds.done(curcmd=0), current


def _run_rpc(name: str | int, lab: SqlLab) -> bytes:
    if isinstance(name, str) and re.sub(r"[\[\]]", "", name).lower().rsplit(".", 1)[-1].startswith("sp_datatype_info"):
        return tds.returnstatus(0) + tds.done(token=0xFE, curcmd=0xE0)
    label = name if isinstance(name, str) else f"ProcID {name}"
    LOG.info("%s: RPC %s is not emulated", lab.server_name, label)
    return (tds.message(2812, f"Could not find stored procedure '{label}'.", lab.server_name, state=62)
            + tds.done(tds.DONE_ERROR, token=0xFE, curcmd=0xE0))


# One select-list item: an expression and an optional alias, then a comma or the end.
_ITEM = re.compile(r"""\s*(?P<expr>CURRENT_USER|USER_NAME\(\s*\)|SUSER_SNAME\(\s*\)|SUSER_SID\(\s*\)|DB_NAME\(\s*\)
                   |@@VERSION|@@SERVERNAME|NULL|-?\d+|N'(?:[^']|'')*'|CAST\(\s*(?P<bit>[01])\s+AS\s+BIT\s*\))
                   (?:\s+AS)?(?:\s+(?P<alias>\[(?:[^\]]|\]\])+\]|[A-Za-z_]\w*))?\s*(?:,|$)""", re.I | re.X)
_SELECT = re.compile(r"\s*SELECT\s+(?P<list>.*?)\s*;?\s*", re.I | re.S)
_PROC = re.compile(r"\s*(?:EXEC(?:UTE)?\s+)?(?P<name>[\w.\[\]]+)\s*;?\s*", re.I)
_KEYWORDS = {"select", "insert", "update", "delete", "create", "drop", "alter", "with", "declare", "set", "if",
             "begin", "grant", "revoke", "deny", "use"}


def _run_batch(text: str, lab: SqlLab, context: _Context) -> bytes:
    """Run one statement of the emulated subset; anything else is answered with a SQL Server error."""
    select = _SELECT.fullmatch(text)
    if select:
        columns, row = _select_list(select["list"], lab, context)
        if columns:
            return tds.result_set(columns, [row]) + tds.done(tds.DONE_COUNT, rows=1)
    proc = _PROC.fullmatch(text)
    if proc and proc["name"].lower() not in _KEYWORDS:
        name = proc["name"].strip("[]")
        return (tds.message(2812, f"Could not find stored procedure '{name}'.", lab.server_name, state=62)
                + tds.done(tds.DONE_ERROR, curcmd=0))
    LOG.info("%s: statement not emulated: %.200r", lab.server_name, text)
    words = text.split()
    near = words[1] if len(words) > 1 else (words[0] if words else "")
    return (tds.message(102, f"Incorrect syntax near '{near}'.", lab.server_name, severity=15)
            + tds.done(tds.DONE_ERROR, curcmd=0))


def _select_list(text: str, lab: SqlLab, context: _Context) -> tuple[list[tds.Column], tuple]:
    """Columns and the single row of a select list, or ``([], ())`` when it is outside the subset."""
    columns, values, pos = [], [], 0
    while pos < len(text):
        item = _ITEM.match(text, pos)
        if not item or item.end() == pos:
            return [], ()
        pos = item.end()
        column, value = _expression(item, lab, context)
        alias = item["alias"]
        if alias:
            column = dataclasses.replace(column, name=alias[1:-1].replace("]]", "]") if alias[0] == "[" else alias)
        columns.append(column)
        values.append(value)
    return columns, tuple(values)


def _expression(item: re.Match, lab: SqlLab, context: _Context) -> tuple[tds.Column, object]:
    expr = re.sub(r"\s+", "", item["expr"]).upper()
    if expr in ("CURRENT_USER", "USER_NAME()"):
        return tds.nvarchar(""), context.user
    if expr == "SUSER_SNAME()":
        return tds.nvarchar(""), context.login
    if expr == "SUSER_SID()":
        return tds.Column("", "varbinary", 85), context.sid
    if expr == "DB_NAME()":
        return tds.nvarchar(""), context.database
    if expr == "@@VERSION":
        return tds.nvarchar("", 300), VERSION_TEXT
    if expr == "@@SERVERNAME":
        return tds.nvarchar(""), lab.server_name
    if expr == "NULL":
        return tds.Column("", "int"), None
    if item["bit"] is not None:
        return tds.Column("", "bit"), item["bit"] == "1"
    if expr.startswith("N'"):
        value = item["expr"][2:-1].replace("''", "'")
        return tds.nvarchar("", max(len(value), 1)), value
    return tds.Column("", "int"), int(expr)
