"""The lab PostgreSQL endpoint: a TLS front that signs clients in the way Flexible Server does, then relays.

A client (psycopg, psql, pgx inside OpenBao) connects to 127.0.0.1:<port> and speaks the PostgreSQL v3
protocol (https://www.postgresql.org/docs/15/protocol-flow.html):

1. ``SSLRequest`` is answered ``S`` and TLS starts with the lab certificate; ``GSSENCRequest`` is answered ``N``.
   A StartupMessage without TLS is refused, as Flexible Server does with ``require_secure_transport`` on.
2. After the StartupMessage the front asks for a cleartext password (``AuthenticationCleartextPassword``, as
   Azure does: the password field carries either a password or an Entra access token).
3. A JWT (``activeDirectoryAuth`` Enabled) must be signed by the lab issuer for the PostgreSQL audience, not be
   expired, and carry the ``oid`` recorded for the role (pgaadauth shim). The session is then opened over the
   server's unix socket as that role, which ``pg_hba.conf`` trusts as a member of the lab's Entra group.
4. Anything else is a password (``passwordAuth`` Enabled, and never for an Entra role): the session is opened
   over the unix socket and the client's password is relayed to the server's own cleartext request, so the
   real SCRAM verifier decides.
   With a grant fault for the role (``grant_faults(role)``, set through the ARM double's lab API
   ``/lab/grant-faults``), the server first revokes the role's table privileges, as a DBA or a drift tool might
   between the migration's grant and verify phases: its queries then fail with PostgreSQL's own error.
5. From the server's AuthenticationOk on, bytes are relayed both ways unchanged; ``BackendKeyData`` is the real
   server's, so a ``CancelRequest`` is forwarded to the server as it is.

Refusals are ``FATAL`` ErrorResponses with the texts PostgreSQL / Azure send (``28P01 password authentication
failed for user "x"``, "The access token has expired", ``28000 no pg_hba.conf entry ... no encryption``); the
reason goes to the log, never a token or a password.

Not emulated: Entra group login (a member signing in with the group's name), MFA claims, ``user@server`` names,
direct TLS negotiation (``sslnegotiation=direct``), connection limits and throttling, the gateway's
redirection. One thread per session relays both directions in turn, so a client that streams a large COPY
while the server streams large output at the same time could stall; no client this project runs does.
"""
from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import struct
from typing import Callable

from . import ca
from .config import HOST, LabPaths
from .postgres import PostgresLab
from .tokens import Issuer, TokenError, looks_like_jwt

LOG = logging.getLogger("azurelab.pgfront")

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_MAJOR = 3
MAX_STARTUP = 10_000  # PostgreSQL's own limit for a startup packet
MAX_PASSWORD = 64 * 1024  # room for large Entra tokens (group overage claims)
STARTUP_TIMEOUT_S = 30


class _Refused(Exception):
    """A login the front refuses: ``code`` is the SQLSTATE, ``message`` what the client sees."""

    def __init__(self, code: str, message: str, log_reason: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.log_reason = log_reason


class PgFront:
    """The TLS PostgreSQL endpoint of one lab server, bound to 127.0.0.1:``port`` at construction.

    ``auth_config()`` returns the server's current ARM ``properties.authConfig``
    (``{"activeDirectoryAuth": "Enabled"|"Disabled", "passwordAuth": "Enabled"|"Disabled", "tenantId": ...}``;
    missing keys take Azure's defaults, Entra off and passwords on). It is called for every login, so ARM changes
    apply to new sessions only, like on Azure. ``count(what)`` is called for every session relayed (``"sessions"``)
    and every round trip in it (``"round_trips"``, see :func:`_relay`). ``port=0`` picks a free port (then read :attr:`port`).
    """

    def __init__(self, paths: LabPaths, issuer: Issuer, port: int, server_name: str,
                 auth_config: Callable[[], dict], backend: PostgresLab,
                 grant_faults: Callable[[str], list[dict]] = lambda role: [],
                 count: Callable[[str], None] = lambda what: None):
        self.issuer = issuer
        self.count = count
        self.grant_faults = grant_faults
        self.server_name = server_name
        self.auth_config = auth_config
        self.backend = backend
        self.audience = backend.topology["audiences"]["postgres"]
        self.tls = ca.server_context(paths)
        self._server = _Server((HOST, port), _Session)
        self._server.front = self
        self.port = self._server.server_address[1]
        self._serving = False

    def serve_forever(self) -> None:
        self._serving = True
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop accepting and close the listener; sessions already relayed end when either side closes."""
        if self._serving:
            self._server.shutdown()
        self._server.server_close()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    front: PgFront


class _Session(socketserver.BaseRequestHandler):
    """One client connection, from its first byte to the end of the relayed session."""

    server: _Server

    def handle(self) -> None:
        front = self.server.front
        client: socket.socket = self.request
        client.settimeout(STARTUP_TIMEOUT_S)
        try:
            client, startup = self._negotiate(client, front)
            if startup is None:
                return
            backend = self._login(client, startup, front)
            if backend is None:
                return
            client.settimeout(None)
            front.count("sessions")
            with backend:
                _relay(client, backend, lambda: front.count("round_trips"))
        except (OSError, ValueError, struct.error) as exc:
            LOG.info("%s: connection ended: %s", front.server_name, type(exc).__name__)
        finally:
            _close(client)

    def _negotiate(self, client: socket.socket, front: PgFront) -> tuple[socket.socket, bytes | None]:
        """Answer SSL/GSSENC requests and forward cancels; return the TLS socket and the StartupMessage packet."""
        in_tls = False
        while True:
            packet = _read_startup_packet(client)
            code = struct.unpack("!I", packet[4:8])[0]
            if code == SSL_REQUEST and not in_tls:
                client.sendall(b"S")
                client = front.tls.wrap_socket(client, server_side=True)
                in_tls = True
            elif code == GSSENC_REQUEST and not in_tls:
                client.sendall(b"N")
            elif code == CANCEL_REQUEST:
                _forward_cancel(packet, front)
                return client, None
            elif code >> 16 == PROTOCOL_MAJOR:
                if not in_tls:
                    params = _startup_params(packet)
                    _send_error(client, _Refused(
                        "28000", f'no pg_hba.conf entry for host "{client.getpeername()[0]}", user '
                                 f'"{params.get("user", "")}", database "{params.get("database", "")}", no encryption',
                        "client did not request TLS"))
                    return client, None
                return client, packet
            else:
                _send_error(client, _Refused("08P01", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}",
                                             "unsupported protocol"))
                return client, None

    def _login(self, client: socket.socket, startup: bytes, front: PgFront) -> socket.socket | None:
        """Authenticate the client; return a backend socket already past its AuthenticationOk, or None."""
        user = _startup_params(startup).get("user", "")
        try:
            if not user:
                raise _Refused("28000", "no PostgreSQL user name specified in startup packet", "no user name")
            client.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            secret = _read_password(client)
            config = front.auth_config()
            if looks_like_jwt(secret) and config.get("activeDirectoryAuth", "Disabled") == "Enabled":
                self._check_token(front, user, secret, config)
                for fault in front.grant_faults(user):
                    database = _startup_params(startup)["database"]
                    revoked = front.backend.revoke_table_privileges(database, user, fault.get("schema"))
                    LOG.info("%s: grant fault: revoked %r's privileges on the tables of %s in %s", front.server_name,
                             user, ", ".join(revoked) or "no schema", database)
                password = None
            else:
                self._check_password_allowed(front, user, config)
                password = secret
            return _open_backend(client, startup, front.backend.socket_path, password, user)
        except _Refused as refused:
            LOG.info("%s: login as %r refused: %s", front.server_name, user, refused.log_reason)
            _send_error(client, refused)
            return None

    @staticmethod
    def _check_token(front: PgFront, user: str, token: str, config: dict) -> None:
        failed = f'password authentication failed for user "{user}"'
        try:
            claims = front.issuer.verify(token, front.audience)
        except TokenError as exc:
            if exc.reason.startswith("The access token has expired"):
                raise _Refused("28P01", "The access token has expired", exc.reason) from None
            raise _Refused("28P01", failed, exc.reason) from None
        if config.get("tenantId") and claims.get("tid") != config["tenantId"]:
            raise _Refused("28P01", failed, "token tenant is not the server's authConfig.tenantId")
        principal = front.backend.principal_for_role(user)
        if principal is None:
            raise _Refused("28P01", failed, "role is not a Microsoft Entra principal")
        if principal["object_id"] != str(claims["oid"]).lower():
            raise _Refused("28P01", failed, "token oid is not the role's object id")
        LOG.info("%s: token login as %r (oid %s)", front.server_name, user, principal["object_id"])

    @staticmethod
    def _check_password_allowed(front: PgFront, user: str, config: dict) -> None:
        if config.get("passwordAuth", "Enabled") != "Enabled":
            raise _Refused("28P01", f'password authentication failed for user "{user}"',
                           "password authentication is disabled (authConfig.passwordAuth)")
        if front.backend.is_entra_role(user):
            raise _Refused("28P01", f'password authentication failed for user "{user}"',
                           "Microsoft Entra role has no password")


def _open_backend(client: socket.socket, startup: bytes, socket_path, password: str | None,
                  user: str) -> socket.socket | None:
    """Start the real session over the unix socket and walk it to AuthenticationOk.

    ``password`` None: an Entra login, which the server must trust without asking. Otherwise the server must ask
    for it (a password role that somehow became a member of the Entra group must not get in without one).
    The server's AuthenticationOk is forwarded to the client; a server ErrorResponse is forwarded as is.
    """
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.settimeout(STARTUP_TIMEOUT_S)
    backend.connect(str(socket_path))
    backend.sendall(startup)
    asked = False
    while True:
        kind, message = _read_message(backend)
        if kind == b"R" and message[5:9] == struct.pack("!I", 0) and asked == (password is not None):
            client.sendall(message)
            backend.settimeout(None)
            return backend
        if kind == b"R" and message[5:9] == struct.pack("!I", 3) and password is not None and not asked:
            payload = password.encode() + b"\0"
            backend.sendall(b"p" + struct.pack("!I", 4 + len(payload)) + payload)
            asked = True
        elif kind in (b"E", b"v"):  # an error, or the server's protocol negotiation: the client's business
            client.sendall(message)
            if kind == b"E":
                backend.close()
                return None
        else:
            backend.close()
            raise _Refused("28P01", f'password authentication failed for user "{user}"',
                           f"unexpected server message {kind!r} during login")


def _relay(client: socket.socket, backend: socket.socket, round_trip: Callable[[], None] = lambda: None) -> None:
    """Copy bytes both ways until either side closes; ``round_trip()`` for every ReadyForQuery the server sends after
    the one that ends the login (one per simple query or extended-protocol Sync: a round trip the client waits for)."""
    peers = {client: backend, backend: client}
    replies = _ReadyForQueryCounter(round_trip)
    while True:
        # TLS may hold decrypted bytes that select() cannot see.
        pending = isinstance(client, ssl.SSLSocket) and client.pending()
        ready = [client] if pending else select.select(list(peers), [], [])[0]
        for source in ready:
            data = source.recv(65536)
            if not data:
                return
            peers[source].sendall(data)
            if source is backend:
                replies.feed(data)


class _ReadyForQueryCounter:
    """Follows the server's message framing (a type byte, then an int32 length that counts itself) across chunks and
    calls ``found()`` for each ``Z`` (ReadyForQuery) but the first, which ends the login."""

    def __init__(self, found: Callable[[], None]):
        self._found = found
        self._header = b""
        self._skip = 0
        self._seen = 0

    def feed(self, data: bytes) -> None:
        at = 0
        while at < len(data):
            if self._skip:
                step = min(self._skip, len(data) - at)
                self._skip -= step
                at += step
                continue
            take = min(5 - len(self._header), len(data) - at)
            self._header += data[at:at + take]
            at += take
            if len(self._header) == 5:
                kind, length = self._header[:1], struct.unpack("!I", self._header[1:])[0]
                self._header, self._skip = b"", max(length - 4, 0)
                if kind == b"Z":
                    self._seen += 1
                    if self._seen > 1:
                        self._found()


def _close(client: socket.socket) -> None:
    """Close, with a TLS close_notify first: libpq reports a cancel as failed on a bare TCP close."""
    if isinstance(client, ssl.SSLSocket):
        client.settimeout(2)
        try:
            client = client.unwrap()
        except OSError:
            pass  # the client is already gone: nothing left to be polite to
    client.close()


def _forward_cancel(packet: bytes, front: PgFront) -> None:
    """Best effort, like PostgreSQL: the server checks the process id and secret key itself."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as backend:
        backend.connect(str(front.backend.socket_path))
        backend.sendall(packet)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionResetError("peer closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_startup_packet(sock: socket.socket) -> bytes:
    """An untyped startup-phase packet (length included), as sent."""
    header = _recv_exact(sock, 4)
    length = struct.unpack("!I", header)[0]
    if not 8 <= length <= MAX_STARTUP:
        raise ValueError("invalid startup packet length")
    return header + _recv_exact(sock, length - 4)


def _read_message(sock: socket.socket, limit: int = 1 << 20) -> tuple[bytes, bytes]:
    """A typed message: ``(type byte, whole message as sent)``."""
    header = _recv_exact(sock, 5)
    length = struct.unpack("!I", header[1:])[0]
    if not 4 <= length <= limit:
        raise ValueError("invalid message length")
    return header[:1], header + _recv_exact(sock, length - 4)


def _read_password(sock: socket.socket) -> str:
    kind, message = _read_message(sock, MAX_PASSWORD)
    if kind != b"p":
        raise ValueError("expected a password message")
    return message[5:].rstrip(b"\0").decode("utf-8", errors="replace")


def _startup_params(packet: bytes) -> dict:
    """``user``, ``database`` (defaulting to the user, as PostgreSQL does) and the other startup options."""
    fields = packet[8:].split(b"\0")
    params = {fields[i].decode(errors="replace"): fields[i + 1].decode(errors="replace")
              for i in range(0, len(fields) - 1, 2) if fields[i]}
    params.setdefault("database", params.get("user", ""))
    return params


def _send_error(sock: socket.socket, refused: _Refused) -> None:
    fields = b"".join(key + value.encode() + b"\0" for key, value in (
        (b"S", "FATAL"), (b"V", "FATAL"), (b"C", refused.code), (b"M", refused.message)))
    payload = fields + b"\0"
    sock.sendall(b"E" + struct.pack("!I", 4 + len(payload)) + payload)
