"""The lab Azure SQL Database endpoint: a TDS server (tds.py) with Azure's login rules and T-SQL (tsql.py).

Clients are the real ones, unchanged: pyodbc with Microsoft ODBC Driver 18 and ``mssql-python``.

Login, as Azure SQL Database does it:

1. PRELOGIN, then TLS (lab certificate, TLS 1.2) for the whole session, whatever ``Encrypt`` the client asked for;
   or, with ``Encrypt=strict`` (TDS 8.0), TLS (1.2 or 1.3, ALPN ``tds/8.0``) first and PRELOGIN inside it.
2. A LOGIN7 with a FEDAUTH security token (``SQL_COPT_SS_ACCESS_TOKEN``, attribute 1256) must carry a token in
   UTF-16LE signed by the lab issuer for the SQL audience (``https://database.windows.net/``) and, when the server
   has a tenant, issued by that tenant. The token names a principal: its client id (``appid``) for applications and
   managed identities, its object id (``oid``) for users. That GUID, in SQL Server's uniqueidentifier byte order, is
   the SID looked up among the database's Entra users (``TYPE = E``); the server's Entra admin becomes ``dbo``.
3. A LOGIN7 with a user name and password is SQL authentication: a contained user WITH PASSWORD of the database the
   login names (``name`` or ``name@server``), else the server admin (also ``admin@server``), who becomes ``dbo``.
   Both are refused while Entra-only authentication is on.
4. Refusals are ERROR 18456 class 14 with Azure's texts ("Login failed for user '<token-identified principal>'.",
   "... The server is not currently configured to accept this token.", "... Token is expired.", the Entra-only
   reason), then DONE with DONE_ERROR and close. Why a login was refused goes to the log, never a token or password.

After login each session runs SQL batches, RPCs (sp_prepexec, sp_prepare, sp_execute, sp_executesql,
sp_unprepare) and transaction-manager requests through :class:`sqlsession.TsqlSession` (batches, transactions,
permissions) on the statement subset of tsql.py. Databases, users and role memberships live in a SQLite catalog
(sqlcatalog.py), one file per server, so they survive a restart. ``SUSER_SNAME()`` and ``login_name`` of a token
session are the database user name (Azure's value, the Entra name, is not emulated).

Not emulated: Entra groups (a member logging in through a ``TYPE = X`` user), logins in master, the ADAL/MSAL
FEDAUTH workflows (``Authentication=ActiveDirectory...``: the driver fetching its own token), server firewall rules,
the gateway's redirect, connection limits, ``sp_describe_undeclared_parameters`` (answered with no rows, so pyodbc
cannot bind a string parameter longer than 4000 characters), every other stored procedure (2812).
"""
from __future__ import annotations

import datetime
import hmac
import logging
import pathlib
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
from typing import Callable

from . import ca, sqlcatalog, sqlsession, tds
from .config import HOST, LabPaths
from .sqlcatalog import DatabaseUser
from .tokens import Issuer, TokenError
from .sqlsession import Principal, is_app

LOG = logging.getLogger("azurelab.sqlserver")

LOGIN_TIMEOUT_S = 30
PROGRAM = "Microsoft SQL Server"
PROGRAM_VERSION = (12, 0, 2000)  # what Azure SQL Database reports in LOGINACK and PRELOGIN
ADMIN_SID = b"\x01"  # the SID SQL Server gives its built-in administrator login
TOKEN_PRINCIPAL = "<token-identified principal>"
NOT_ACCEPTED = "The server is not currently configured to accept this token."
ENTRA_ONLY = "Reason: Azure Active Directory only authentication is enabled. Please contact your system administrator."
FIRST_SESSION_ID = 51  # SQL Server's user sessions start above the system ones


class LoginRefused(Exception):
    """A login the server refuses: ``text`` is what the client sees, ``reason`` what the log gets."""

    def __init__(self, text: str, reason: str, number: int = 18456, state: int = 1):
        super().__init__(text)
        self.text, self.reason, self.number, self.state = text, reason, number, state


class SqlLab:
    """One Azure SQL logical server with its databases, bound to 127.0.0.1:``port`` at construction (0 = free port).

    ``admin_login`` / ``admin_password``: the SQL-authentication server admin. ``entra_admin()`` is asked at every
    login: the GUID whose SID is the server's Entra admin (client id of an app / MI, object id of a user or group), or
    None. ``entra_only()`` is asked at every login (the ARM ``azureADOnlyAuthentications/Default`` flag).
    ``tenant_id``: tokens from another tenant are refused when set. ``catalog``: the SQLite file the databases persist
    in (with its ``-wal`` / ``-shm`` companions; kept across restarts; None = a temporary file removed at
    :meth:`shutdown`); ``databases`` are created in it when missing. ``resolve_principal(name, object_id)`` is the
    directory lookup of ``CREATE USER ... FROM EXTERNAL PROVIDER``: a dict with ``object_id``, ``client_id`` (apps
    and managed identities) and ``type`` (``User``, ``Group``, ``ServicePrincipal``, ``ManagedIdentity``), or None
    when not found. ``directory_readers()``: whether the server's identity may read Entra (Directory Readers),
    needed when the caller is an app or managed identity. ``count(what)`` is called for every session that signs in
    (``"sessions"``) and every request it sends (``"round_trips"``: a SQL batch, an RPC, a transaction request).

    Seeding, outside any session: :meth:`add_user`, :meth:`add_sql_user`, :meth:`add_role_member`,
    :meth:`drop_user`; reading: :meth:`users`, :meth:`role_members`.
    """

    def __init__(self, paths: LabPaths, issuer: Issuer, port: int, server_name: str, *, audience: str,
                 admin_login: str, admin_password: str, databases: tuple[str, ...] = (),
                 entra_admin: Callable[[], str | None] = lambda: None, entra_only: Callable[[], bool] = lambda: False,
                 tenant_id: str | None = None, catalog: pathlib.Path | None = None,
                 resolve_principal: Callable[[str | None, str | None], dict | None] | None = None,
                 directory_readers: Callable[[], bool] = lambda: True, count: Callable[[str], None] = lambda what: None):
        self.issuer = issuer
        self.count = count
        self.audience = audience
        self.server_name = server_name
        self.admin_login = admin_login
        self._admin_password = admin_password
        self.entra_admin = entra_admin
        self.entra_only = entra_only
        self.tenant_id = tenant_id
        self.resolve_principal = resolve_principal
        self.directory_readers = directory_readers
        self._scratch = None if catalog else pathlib.Path(tempfile.mkdtemp(prefix="sqllab-"))
        self.catalog = sqlcatalog.Catalog(catalog or self._scratch / "catalog.sqlite3", databases)
        self.tls = ca.server_context(paths, max_tls12=True)
        self.tls_strict = ca.server_context(paths)
        self.tls_strict.set_alpn_protocols(["tds/8.0"])
        self._lock = threading.Lock()
        self._sessions: dict[int, dict] = {}  # session_id -> its sys.dm_exec_sessions row
        self._next_session_id = FIRST_SESSION_ID
        self._server = _Server((HOST, port), _Session)
        self._server.lab = self
        self.port = self._server.server_address[1]
        self._serving = False

    # --- seeding -------------------------------------------------------------------------------------------------
    def add_user(self, database: str, name: str, sid: bytes, type_: str = "E") -> None:
        """Add (or replace) an Entra user, as ``CREATE USER [name] WITH SID = 0x..., TYPE = E`` (or X) would."""
        self.catalog.add_user(database, name, sid, type_)

    def add_sql_user(self, database: str, name: str, password: str, roles: tuple[str, ...] = ()) -> None:
        """Add a contained user, as ``CREATE USER [name] WITH PASSWORD = '...'`` would, member of ``roles``."""
        self.catalog.add_sql_user(database, name, password, roles)

    def add_role_member(self, database: str, role: str, member: str) -> None:
        """As ``ALTER ROLE [role] ADD MEMBER [member]`` would; :class:`sqlcatalog.SqlError` when either is unknown."""
        self.catalog.add_role_member(database, role, member)

    def drop_user(self, database: str, name: str) -> None:
        """Remove a database user if present, as ``DROP USER IF EXISTS [name]`` would."""
        self.catalog.drop_user(database, name)

    def users(self, database: str) -> list[DatabaseUser]:
        return self.catalog.users(database)

    def role_members(self, database: str, role: str) -> list[str]:
        return self.catalog.role_members(database, role)

    def serve_forever(self) -> None:
        self._serving = True
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop accepting and close the listener; open sessions end when their client disconnects."""
        if self._serving:
            self._server.shutdown()
        self._server.server_close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # --- live sessions (sys.dm_exec_sessions) -----------------------------------------------------------------
    def open_session(self, who: Principal, login: tds.Login7) -> int:
        """Register a signed-in session; returns its session_id (@@SPID)."""
        with self._lock:
            session_id = self._next_session_id
            self._next_session_id += 1
            self._sessions[session_id] = {
                "session_id": session_id, "login_time": datetime.datetime.now(datetime.timezone.utc),
                "host_name": login.hostname, "program_name": login.app_name, "login_name": who.login,
                "nt_user_name": None, "status": "sleeping", "is_user_process": True, "original_login_name": who.login,
                "database_id": who.database_id,
                # contained users authenticate in their database, the server's admins in master
                "authenticating_database_id": 1 if who.principal_id == 1 else who.database_id}
        return session_id

    def close_session(self, session_id: int) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def live_sessions(self) -> list[dict]:
        """The rows of ``sys.dm_exec_sessions``, keyed by its column names (``sqlcatalog.SESSION_COLUMNS``)."""
        with self._lock:
            return [dict(row) for row in self._sessions.values()]

    # --- login decisions ----------------------------------------------------------------------------------------
    def _database(self, login: tds.Login7) -> tuple[int, str]:
        """``(database_id, name as the catalog spells it)`` of the login's database (master when it names none)."""
        found = self.catalog.database(login.database or "master")
        if found is None:
            raise LoginRefused(f"Cannot open database \"{login.database}\" requested by the login. "
                               f"The login failed.", f"no database {login.database!r}", number=4060)
        return found

    def token_login(self, login: tds.Login7) -> Principal:
        """Who a FEDAUTH login is, or :class:`LoginRefused`."""
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
        principal = claims.get("appid") if is_app(claims) else claims["oid"]
        try:
            sid = tds.sid_of(principal)
        except (ValueError, TypeError):
            raise LoginRefused(f"{failed} {NOT_ACCEPTED}", "principal id is not a GUID") from None
        database_id, database = self._database(login)
        admin = self.entra_admin()
        if admin and sid == tds.sid_of(admin):
            return Principal(database, database_id, "dbo", 1, "dbo", sid, claims)
        user = self.catalog.user_by_sid(database, sid)
        if user is None:
            raise LoginRefused(failed, f"no Entra user with SID 0x{sid.hex()} ({principal}) in {database}")
        return Principal(database, database_id, user.name, user.principal_id, user.name, sid, claims)

    def password_login(self, login: tds.Login7) -> Principal:
        """Who a SQL-authentication login is (a contained user of the login's database, else the server admin)."""
        name = login.username.split("@", 1)[0]
        failed = f"Login failed for user '{login.username}'."
        if self.entra_only():
            raise LoginRefused(f"{failed} {ENTRA_ONLY}", "Entra-only authentication is on")
        database_id, database = self._database(login)
        if database_id != 1 and self.catalog.has_contained_user(database, name):
            user = self.catalog.contained_user(database, name, login.password)
            if user is None:
                raise LoginRefused(failed, f"wrong password for contained user {name!r} of {database}")
            return Principal(database, database_id, user.name, user.principal_id, user.name, user.sid)
        if name.casefold() != self.admin_login.casefold() or not hmac.compare_digest(
                login.password.encode(), self._admin_password.encode()):
            raise LoginRefused(failed, "unknown login or wrong password")
        return Principal(database, database_id, "dbo", 1, login.username, ADMIN_SID)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    lab: SqlLab


class _Session(socketserver.BaseRequestHandler):
    """One client connection, from PRELOGIN to close."""

    server: _Server
    _login7: tds.Login7

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

    def _login(self, channel: tds.Channel, lab: SqlLab) -> Principal | None:
        """Negotiate, read LOGIN7, and answer with the login response or a refusal (then None)."""
        if not self._negotiate(channel, lab):
            return None
        kind, payload = channel.read_message()
        if kind != tds.LOGIN7:
            raise tds.ProtocolError(f"expected LOGIN7, got packet type {kind:#x}")
        login = tds.parse_login7(payload)
        channel.packet_size = min(max(login.packet_size, 512), 32767) if login.packet_size else tds.DEFAULT_PACKET_SIZE
        try:
            who = lab.token_login(login) if login.fedauth is not None else lab.password_login(login)
        except LoginRefused as refused:
            LOG.info("%s: login refused: %s", lab.server_name, refused.reason)
            out = b""
            if refused.number != 18456:  # SQL Server follows e.g. 4060 with the generic login failure
                out += tds.message(refused.number, refused.text, lab.server_name, severity=11)
                refused = LoginRefused(f"Login failed for user '{login.username or TOKEN_PRINCIPAL}'.", "")
            out += tds.message(18456, refused.text, lab.server_name, state=refused.state, severity=14)
            channel.send_message(tds.TABULAR_RESULT, out + tds.done(tds.DONE_ERROR, curcmd=0))
            return None
        self._login7 = login
        LOG.info("%s: %s signed in to %s as %s", lab.server_name,
                 "token" if login.fedauth else "SQL login", who.database, who.user)
        channel.send_message(tds.TABULAR_RESULT, self._login_response(lab, login, who.database, channel.packet_size))
        return who

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

    def _serve(self, channel: tds.Channel, lab: SqlLab, who: Principal) -> None:
        session_id = lab.open_session(who, self._login7)
        session = sqlsession.TsqlSession(lab, who, session_id)
        lab.count("sessions")
        try:
            while True:
                kind, payload = channel.read_message()
                lab.count("round_trips")
                if kind == tds.SQL_BATCH:
                    reply = session.batch(tds.batch_text(payload))
                elif kind == tds.RPC:
                    reply = _rpc(session, payload, lab)
                elif kind == tds.TRANSACTION_MANAGER:
                    reply = session.transaction_manager(payload)
                elif kind == tds.ATTENTION:
                    reply = tds.done(tds.DONE_ATTN, curcmd=0)
                else:
                    raise tds.ProtocolError(f"packet type {kind:#x} is not emulated")
                channel.send_message(tds.TABULAR_RESULT, reply)
        finally:
            session.close()
            lab.close_session(session_id)


def _rpc(session: sqlsession.TsqlSession, payload: bytes, lab: SqlLab) -> bytes:
    """An RPC request; a parameter type the parser does not read is SQL Server's 8009, the session stays usable."""
    try:
        request = tds.parse_rpc(payload)
    except tds.UnsupportedType as exc:
        LOG.info("%s: RPC parameter type %#04x is not emulated", lab.server_name, exc.type_id)
        return (tds.message(8009, f"The incoming tabular data stream (TDS) remote procedure call (RPC) protocol "
                                  f"stream is incorrect. Parameter {exc.ordinal} (\"{exc.name}\"): Data type "
                                  f"0x{exc.type_id:02X} is unknown.", lab.server_name)
                + tds.done(tds.DONE_ERROR, token=0xFE, curcmd=0xE0))
    return session.rpc(request)
