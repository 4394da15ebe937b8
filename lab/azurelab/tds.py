"""The server side of TDS 7.4 (MS-TDS), as much as the lab's Azure SQL double needs.

What is here, with the MS-TDS section each part follows (the wire facts are in ../shared/TDS_NOTES.md):

- :class:`Channel`: packets (2.2.3) over one TCP connection, split and joined by message; TLS that starts
  inside PRELOGIN packets and then carries the rest of the session (2.2.6.5, "TLS/SSL" in 3.2.5.1), done with
  ``ssl.MemoryBIO`` so that the handshake records can be framed as TDS packets. The server is capped at TLS 1.2:
  msodbcsql stalls on TLS 1.3 inside PRELOGIN.
- PRELOGIN parsing and building (2.2.6.5).
- LOGIN7 parsing (2.2.6.4) including the feature-extension block, FEDAUTH with a security token
  (2.2.6.4 FEDAUTH, library 0x01) and the SQL-authentication password obfuscation.
- SQL batch text (2.2.6.7, after ALL_HEADERS 2.2.5.3), the request type of a transaction-manager request (2.2.6.9)
  and RPC requests (2.2.6.6) with their parameters (:func:`parse_rpc`): NVARCHAR/NCHAR, VARCHAR/CHAR, BIGVARBINARY/
  BIGBINARY (each also as PLP ``(max)`` values, 2.2.5.2.3), INTN and the fixed ints, BIT/BITN, FLTN, DECIMALN/
  NUMERICN, GUID, NULL.
- Token writers (2.2.7): LOGINACK, ENVCHANGE, INFO, ERROR, FEATUREEXTACK, DONE/DONEPROC/DONEINPROC,
  RETURNSTATUS, RETURNVALUE (int), and COLMETADATA (or NoMetaData) + ROW for NVARCHAR, INTN (4 and 8), FLTN,
  DATETIMN, VARBINARY and BIT columns (all nullable).

TDS 8.0 (``Encrypt=strict``: TLS first, ALPN ``tds/8.0``, then PRELOGIN inside it) uses the same channel.

Not emulated: login-only encryption (the double always
encrypts the whole session, as Azure SQL does), MARS / SMP, the ADAL/MSAL FEDAUTH workflows (FEDAUTHINFO, the
driver fetching its own token), SSPI, session recovery, NBCROW, PLP (``(max)``) result columns, the date and time
parameter types, TEXT/NTEXT/IMAGE, XML, UDT and sql_variant parameters, RPC batches after the first, column
encryption, data classification.
"""
from __future__ import annotations

import dataclasses
import datetime
import socket
import ssl
import struct
import uuid

# Packet types (2.2.3.1.1)
SQL_BATCH = 0x01
RPC = 0x03
TABULAR_RESULT = 0x04
ATTENTION = 0x06
TRANSACTION_MANAGER = 0x0E
LOGIN7 = 0x10
PRELOGIN = 0x12

HEADER = struct.Struct(">BBHHBB")  # type, status, length, SPID, packet id, window
STATUS_EOM = 0x01
MAX_MESSAGE = 1 << 20  # a LOGIN7 with a large token is ~10 kB; batches the double runs are small
DEFAULT_PACKET_SIZE = 4096

# PRELOGIN options (2.2.6.5)
PL_VERSION, PL_ENCRYPTION, PL_INSTOPT, PL_THREADID, PL_MARS, PL_TRACEID, PL_FEDAUTHREQUIRED, PL_NONCE = range(8)
PL_TERMINATOR = 0xFF
ENCRYPT_OFF, ENCRYPT_ON, ENCRYPT_NOT_SUP, ENCRYPT_REQ = range(4)

# LOGIN7 feature extensions (2.2.6.4)
FEATURE_FEDAUTH = 0x02
FEATURE_TERMINATOR = 0xFF
FEDAUTH_LIBRARY_SECURITYTOKEN = 0x01

# Transaction manager request types (2.2.6.9)
TM_BEGIN_XACT, TM_COMMIT_XACT, TM_ROLLBACK_XACT = 5, 7, 8

# DONE status bits (2.2.7.6)
DONE_FINAL, DONE_MORE, DONE_ERROR, DONE_COUNT, DONE_ATTN = 0x00, 0x01, 0x02, 0x10, 0x20
CURCMD_SELECT = 0x00C1

TDS_74 = 0x74000004
# Latin1_General_CI_AS, LCID 0x0409: what Azure SQL Database reports (the 5-byte COLLATION of 2.2.5.1.2)
COLLATION = bytes.fromhex("0904d00034")


class ProtocolError(Exception):
    """The client sent something this server cannot read; the session is closed."""


class Channel:
    """TDS messages over one client socket, in clear or inside TLS.

    Reads block; a socket timeout raises ``OSError`` (``TimeoutError``) to the caller. ``packet_size`` is the
    negotiated size outgoing messages are split to.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.packet_size = DEFAULT_PACKET_SIZE
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._buffer = bytearray()

    # --- raw bytes -------------------------------------------------------------------------------------------
    def _recv_socket(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("client closed the connection")
        return data

    def _fill(self, size: int) -> None:
        """Make ``size`` plaintext bytes available in the buffer."""
        while len(self._buffer) < size:
            if self._tls is None:
                self._buffer += self._recv_socket()
                continue
            try:
                self._buffer += self._tls.read(65536)
            except ssl.SSLWantReadError:
                self._incoming.write(self._recv_socket())
            except ssl.SSLZeroReturnError:
                raise ConnectionResetError("client closed the TLS session") from None

    def _take(self, size: int) -> bytes:
        self._fill(size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _send(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.write(data)
            data = self._outgoing.read()
        self.sock.sendall(data)

    # --- packets and messages ----------------------------------------------------------------------------------
    def read_message(self) -> tuple[int, bytes]:
        """One whole message: ``(packet type, payload of all its packets joined)``."""
        chunks, total, kind = [], 0, None
        while True:
            ptype, status, length, _spid, _packet_id, _window = HEADER.unpack(self._take(HEADER.size))
            if length < HEADER.size or (kind is not None and ptype != kind):
                raise ProtocolError("malformed packet header")
            kind = ptype
            chunk = self._take(length - HEADER.size)
            total += len(chunk)
            if total > MAX_MESSAGE:
                raise ProtocolError("message too large")
            chunks.append(chunk)
            if status & STATUS_EOM:
                return kind, b"".join(chunks)

    def send_message(self, kind: int, payload: bytes) -> None:
        """Send ``payload`` as packets of at most ``packet_size`` bytes, the last one flagged end of message."""
        room = self.packet_size - HEADER.size
        pieces = [payload[i:i + room] for i in range(0, len(payload), room)] or [b""]
        out = bytearray()
        for number, piece in enumerate(pieces, start=1):
            status = STATUS_EOM if number == len(pieces) else 0
            out += HEADER.pack(kind, status, HEADER.size + len(piece), 0, number % 256, 0) + piece
        self._send(bytes(out))

    # --- TLS -------------------------------------------------------------------------------------------------
    def start_tls(self, context: ssl.SSLContext, in_prelogin: bool = True) -> None:
        """Run the server side of the TLS handshake; afterwards every byte both ways is TLS.

        ``in_prelogin``: the handshake records travel as PRELOGIN packet payloads (TDS 7.x); otherwise they are
        the first bytes on the socket (TDS 8.0, ``Encrypt=strict``). Raises ``ssl.SSLError`` when the handshake
        fails (a client that does not trust the certificate).
        """
        tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_handshake(in_prelogin)
                self._incoming.write(self._handshake_records() if in_prelogin else self._recv_socket())
        self._flush_handshake(in_prelogin)
        self._tls = tls

    def _handshake_records(self) -> bytes:
        kind, payload = self.read_message()
        if kind != PRELOGIN:  # msodbcsql with TLS 1.3 sends its last flight bare (0x14): hence the 1.2 cap
            raise ProtocolError(f"packet type {kind:#x} during the TLS handshake")
        return payload

    def _flush_handshake(self, in_prelogin: bool) -> None:
        records = self._outgoing.read()
        if records and in_prelogin:
            self.send_message(PRELOGIN, records)
        elif records:
            self.sock.sendall(records)

    def starts_with_tls(self) -> bool:
        """Whether the client opened with a TLS handshake record (TDS 8.0) rather than a PRELOGIN packet."""
        return self.sock.recv(1, socket.MSG_PEEK) == b"\x16"

    def close(self) -> None:
        """Close, with a TLS close_notify first when TLS is up (best effort: the client may be gone)."""
        try:
            if self._tls is not None:
                try:
                    self._tls.unwrap()
                except ssl.SSLError:
                    pass  # the client's close_notify never comes: we only owe ours
                self.sock.sendall(self._outgoing.read())
        except OSError:
            pass  # the client is already gone
        finally:
            self.sock.close()


# --- PRELOGIN -------------------------------------------------------------------------------------------------
def parse_prelogin(payload: bytes) -> dict[int, bytes]:
    """Option token -> option data."""
    options, pos = {}, 0
    while pos < len(payload) and payload[pos] != PL_TERMINATOR:
        token, offset, length = struct.unpack_from(">BHH", payload, pos)
        if offset + length > len(payload):
            raise ProtocolError("PRELOGIN option out of bounds")
        options[token] = payload[offset:offset + length]
        pos += 5
    return options


def build_prelogin(options: list[tuple[int, bytes]]) -> bytes:
    """PRELOGIN payload from ``[(token, data), ...]`` in the order given."""
    offset = 5 * len(options) + 1
    table, data = bytearray(), bytearray()
    for token, value in options:
        table += struct.pack(">BHH", token, offset + len(data), len(value))
        data += value
    return bytes(table) + bytes([PL_TERMINATOR]) + bytes(data)


# --- LOGIN7 ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FedAuth:
    """A FEDAUTH feature extension: ``library`` (1 = security token), ``echo`` of FEDAUTHREQUIRED, raw token."""

    library: int
    echo: bool
    token: bytes
    nonce: bytes


@dataclasses.dataclass
class Login7:
    tds_version: int
    packet_size: int
    client_pid: int
    hostname: str
    username: str
    password: str
    app_name: str
    server_name: str
    library: str
    language: str
    database: str
    features: dict[int, bytes]
    fedauth: FedAuth | None


def deobfuscate_password(data: bytes) -> str:
    """Undo LOGIN7's password obfuscation (each byte: XOR 0xA5, then swap its nibbles) and decode UTF-16LE."""
    clear = bytes((((b ^ 0xA5) << 4) & 0xF0) | ((b ^ 0xA5) >> 4) for b in data)
    return clear.decode("utf-16-le", errors="replace")


def obfuscate_password(password: str) -> bytes:
    """The client's side of :func:`deobfuscate_password` (for tests)."""
    return bytes((((b << 4) & 0xF0) | (b >> 4)) ^ 0xA5 for b in password.encode("utf-16-le"))


def parse_login7(payload: bytes) -> Login7:
    """Read a LOGIN7 message; raises :class:`ProtocolError` on anything out of bounds."""
    if len(payload) < 94:
        raise ProtocolError("LOGIN7 too short")
    fixed = struct.unpack_from("<IIIIII", payload, 0)
    _length, tds_version, packet_size, _client_version, client_pid, _connection_id = fixed
    option_flags3 = payload[27]

    def text(at: int, obfuscated: bool = False) -> str:
        offset, chars = struct.unpack_from("<HH", payload, at)
        raw = payload[offset:offset + 2 * chars]
        if len(raw) != 2 * chars:
            raise ProtocolError("LOGIN7 field out of bounds")
        return deobfuscate_password(raw) if obfuscated else raw.decode("utf-16-le", errors="replace")

    features: dict[int, bytes] = {}
    if option_flags3 & 0x10:  # fExtension: ibExtension points at a DWORD holding the block's offset
        offset, length = struct.unpack_from("<HH", payload, 56)
        if length >= 4 and offset + 4 <= len(payload):
            features = _parse_features(payload, struct.unpack_from("<I", payload, offset)[0])
    return Login7(tds_version=tds_version, packet_size=packet_size, client_pid=client_pid,
                  hostname=text(36), username=text(40), password=text(44, obfuscated=True), app_name=text(48),
                  server_name=text(52), library=text(60), language=text(64), database=text(68),
                  features=features, fedauth=_parse_fedauth(features.get(FEATURE_FEDAUTH)))


def _parse_features(payload: bytes, pos: int) -> dict[int, bytes]:
    features = {}
    while pos < len(payload) and payload[pos] != FEATURE_TERMINATOR:
        if pos + 5 > len(payload):
            raise ProtocolError("feature extension out of bounds")
        feature, length = struct.unpack_from("<BI", payload, pos)
        features[feature] = payload[pos + 5:pos + 5 + length]
        pos += 5 + length
    return features


def _parse_fedauth(data: bytes | None) -> FedAuth | None:
    if data is None:
        return None
    if not data:
        raise ProtocolError("empty FEDAUTH feature")
    library, echo = data[0] >> 1, bool(data[0] & 1)
    if library != FEDAUTH_LIBRARY_SECURITYTOKEN:
        return FedAuth(library, echo, b"", b"")
    if len(data) < 5:
        raise ProtocolError("FEDAUTH token length missing")
    length = struct.unpack_from("<I", data, 1)[0]
    if 5 + length > len(data):
        raise ProtocolError("FEDAUTH token out of bounds")
    return FedAuth(library, echo, data[5:5 + length], data[5 + length:5 + length + 32])


# --- requests after login -------------------------------------------------------------------------------------
def _skip_all_headers(payload: bytes) -> int:
    """Offset just past ALL_HEADERS (its first DWORD is its own total length)."""
    if len(payload) < 4:
        raise ProtocolError("ALL_HEADERS missing")
    total = struct.unpack_from("<I", payload, 0)[0]
    if total < 4 or total > len(payload):
        raise ProtocolError("ALL_HEADERS out of bounds")
    return total


def batch_text(payload: bytes) -> str:
    """The T-SQL of a SQL batch message."""
    return payload[_skip_all_headers(payload):].decode("utf-16-le", errors="replace")


def rpc_name(payload: bytes) -> str | int:
    """The procedure an RPC request calls: its name, or its well-known ProcID (13 = sp_prepexec, ...)."""
    pos = _skip_all_headers(payload)
    length = struct.unpack_from("<H", payload, pos)[0]
    if length == 0xFFFF:
        return struct.unpack_from("<H", payload, pos + 2)[0]
    return payload[pos + 2:pos + 2 + 2 * length].decode("utf-16-le", errors="replace")


# Well-known RPC ProcIDs (2.2.6.6)
SP_EXECUTESQL, SP_PREPARE, SP_EXECUTE, SP_PREPEXEC, SP_UNPREPARE = 10, 11, 12, 13, 15
RPC_NO_METADATA = 0x02  # OptionFlags fNoMetaData: answer COLMETADATA with NoMetaData (0xFFFF)


@dataclasses.dataclass
class RpcParam:
    """One RPC parameter: ``name`` ("" when unnamed), ``output`` (by reference), the decoded ``value``.

    Values: NVARCHAR / VARCHAR / NCHAR / CHAR -> str, BIGVARBINARY / BIGBINARY -> bytes, INTN and fixed ints -> int,
    BIT / BITN -> bool, FLTN / FLT4 / FLT8 -> float, DECIMALN / NUMERICN -> int or float, GUID -> its 16 wire
    bytes (SQL Server's uniqueidentifier byte order), NULL -> None.
    """

    name: str
    output: bool
    value: object
    type_id: int


@dataclasses.dataclass
class RpcRequest:
    """An RPC request (2.2.6.6): the procedure (name or ProcID), its OptionFlags and parameters (first batch only)."""

    proc: str | int
    flags: int
    params: list[RpcParam]


class UnsupportedType(ProtocolError):
    """A parameter of a TDS type the parser does not decode (the server answers SQL Server's error 8009)."""

    def __init__(self, ordinal: int, name: str, type_id: int):
        super().__init__(f"parameter {ordinal} type {type_id:#04x}")
        self.ordinal, self.name, self.type_id = ordinal, name, type_id


_FIXED_TYPES = {0x1F: 0, 0x30: 1, 0x32: 1, 0x34: 2, 0x38: 4, 0x7F: 8, 0x3B: 4, 0x3E: 8}  # NULL, INT1..8, BIT, FLT4/8
_BYTELEN_TYPES = {0x26, 0x68, 0x6D, 0x24, 0x6A, 0x6C}  # INTN, BITN, FLTN, GUID, DECIMALN, NUMERICN
_CHAR_TYPES = {0xA7, 0xAF, 0xE7, 0xEF}  # BIGVARCHAR, BIGCHAR, NVARCHAR, NCHAR: USHORT length + collation
_BINARY_TYPES = {0xA5, 0xAD}  # BIGVARBINARY, BIGBINARY
PLP_NULL = 0xFFFFFFFFFFFFFFFF


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ProtocolError("RPC request out of bounds")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def parse_rpc(payload: bytes) -> RpcRequest:
    """Read an RPC request; raises :class:`UnsupportedType` for a parameter type outside the list of RpcParam."""
    reader = _Reader(payload, _skip_all_headers(payload))
    length = reader.unpack("H")
    proc: str | int = reader.unpack("H") if length == 0xFFFF else reader.take(2 * length).decode("utf-16-le")
    flags = reader.unpack("H")
    params = []
    while not reader.at_end() and reader.data[reader.pos] not in (0x80, 0xFF):  # batch separators end the first call
        name = reader.take(2 * reader.unpack("B")).decode("utf-16-le")
        status = reader.unpack("B")
        type_id = reader.unpack("B")
        params.append(RpcParam(name, bool(status & 0x01), _read_value(reader, type_id, len(params) + 1, name),
                               type_id))
    return RpcRequest(proc, flags, params)


def _read_value(reader: _Reader, type_id: int, ordinal: int, name: str):
    """TYPE_INFO (after its type byte) then the value, decoded."""
    if type_id in _FIXED_TYPES:
        raw = reader.take(_FIXED_TYPES[type_id])
        return _decode_number(type_id, raw)
    if type_id in _BYTELEN_TYPES:
        reader.unpack("B")  # maximum length
        scale = 0
        if type_id in (0x6A, 0x6C):
            reader.unpack("B")  # precision
            scale = reader.unpack("B")
        raw = reader.take(reader.unpack("B"))
        if not raw:
            return None
        if type_id in (0x6A, 0x6C):  # sign byte (1 = positive), then the magnitude little-endian
            number = int.from_bytes(raw[1:], "little") * (1 if raw[0] else -1)
            return number if scale == 0 else number / 10 ** scale
        return raw if type_id == 0x24 else _decode_number(type_id, raw)
    if type_id in _CHAR_TYPES or type_id in _BINARY_TYPES:
        max_length = reader.unpack("H")
        collation = reader.take(5) if type_id in _CHAR_TYPES else b""
        raw = _read_plp(reader) if max_length == 0xFFFF else _read_ushort_bytes(reader)
        if raw is None or type_id in _BINARY_TYPES:
            return raw
        if type_id in (0xE7, 0xEF):
            return raw.decode("utf-16-le")
        # fUTF8 is bit 26 of the collation's first DWORD; otherwise Latin1_General's code page
        utf8 = int.from_bytes(collation[:4], "little") >> 26 & 1
        return raw.decode("utf-8" if utf8 else "cp1252", errors="replace")
    raise UnsupportedType(ordinal, name, type_id)


def _decode_number(type_id: int, raw: bytes):
    if type_id == 0x1F:
        return None
    if type_id in (0x32, 0x68):
        return raw != b"\0"
    if type_id in (0x3B, 0x3E, 0x6D):
        return struct.unpack("<f" if len(raw) == 4 else "<d", raw)[0]
    return int.from_bytes(raw, "little", signed=len(raw) > 1)  # INT1 (tinyint) is unsigned


def _read_ushort_bytes(reader: _Reader) -> bytes | None:
    length = reader.unpack("H")
    return None if length == 0xFFFF else reader.take(length)


def _read_plp(reader: _Reader) -> bytes | None:
    """A PLP value (2.2.5.2.3): UINT64 total (or PLP_NULL), then chunks (UINT32 length + data) up to a 0 length."""
    if reader.unpack("Q") == PLP_NULL:
        return None
    chunks = []
    while True:
        size = reader.unpack("I")
        if size == 0:
            return b"".join(chunks)
        chunks.append(reader.take(size))


def transaction_request(payload: bytes) -> tuple[int, bool]:
    """``(request type, begin a new transaction afterwards)`` of a transaction-manager request.

    A commit or rollback carries a transaction name (B_VARCHAR) then a flags byte whose bit 0 is fBeginXact.
    """
    pos = _skip_all_headers(payload)
    request = struct.unpack_from("<H", payload, pos)[0]
    begin_after = False
    if request in (TM_COMMIT_XACT, TM_ROLLBACK_XACT) and pos + 3 <= len(payload):
        flags_at = pos + 3 + 2 * payload[pos + 2]
        begin_after = flags_at < len(payload) and bool(payload[flags_at] & 0x01)
    return request, begin_after


# --- token writers (2.2.7) --------------------------------------------------------------------------------------
def b_varchar(value: str) -> bytes:
    return bytes([len(value)]) + value.encode("utf-16-le")


def us_varchar(value: str) -> bytes:
    return struct.pack("<H", len(value)) + value.encode("utf-16-le")


def _with_length(token: int, body: bytes) -> bytes:
    return bytes([token]) + struct.pack("<H", len(body)) + body


def envchange(kind: int, new: str | bytes, old: str | bytes = b"") -> bytes:
    """ENVCHANGE: text values (database, language, packet size) as B_VARCHAR, binary ones as B_VARBYTE."""
    def value(v: str | bytes) -> bytes:
        return b_varchar(v) if isinstance(v, str) else bytes([len(v)]) + v
    return _with_length(0xE3, bytes([kind]) + value(new) + value(old))


ENV_DATABASE, ENV_LANGUAGE, ENV_PACKET_SIZE, ENV_COLLATION = 1, 2, 4, 7
ENV_BEGIN_TRAN, ENV_COMMIT_TRAN, ENV_ROLLBACK_TRAN = 8, 9, 10


def message(number: int, text: str, server: str, *, state: int = 1, severity: int = 16, line: int = 1,
            info: bool = False) -> bytes:
    """ERROR (0xAA), or INFO (0xAB) with ``info=True``: severity is the SQL Server "class"."""
    body = (struct.pack("<iBB", number, state, severity) + us_varchar(text) + b_varchar(server) + b_varchar("")
            + struct.pack("<i", line))
    return _with_length(0xAB if info else 0xAA, body)


def loginack(program: str, version: tuple[int, int, int]) -> bytes:
    """LOGINACK: SQL interface, TDS 7.4 (big-endian on the wire), program name and version (major, minor, build)."""
    major, minor, build = version
    body = bytes([1]) + struct.pack(">I", TDS_74) + b_varchar(program) + struct.pack(">BBH", major, minor, build)
    return _with_length(0xAD, body)


def featureextack(features: dict[int, bytes]) -> bytes:
    return b"\xae" + b"".join(struct.pack("<BI", f, len(d)) + d for f, d in features.items()) + b"\xff"


def done(status: int = DONE_FINAL, rows: int = 0, curcmd: int = CURCMD_SELECT, token: int = 0xFD) -> bytes:
    """DONE (0xFD); DONEPROC is ``token=0xFE``, DONEINPROC ``0xFF``."""
    return struct.pack("<BHHQ", token, status, curcmd, rows)


def returnstatus(value: int = 0) -> bytes:
    return struct.pack("<Bi", 0x79, value)


def returnvalue(ordinal: int, name: str, value: int | None) -> bytes:
    """RETURNVALUE (0xAC, 2.2.7.19) of an int output parameter, e.g. the handle sp_prepexec returns."""
    data = b"\x00" if value is None else b"\x04" + struct.pack("<i", value)
    return (b"\xac" + struct.pack("<H", ordinal) + b_varchar(name) + b"\x01" + struct.pack("<IH", 0, 0x0001)
            + b"\x26\x04" + data)


@dataclasses.dataclass(frozen=True)
class Column:
    """A result column: ``kind`` is ``nvarchar`` (``size`` in characters, at most 4000), ``int``, ``bigint``,
    ``varbinary`` (``size`` in bytes, at most 8000), ``bit``, ``float`` or ``datetime``."""

    name: str
    kind: str
    size: int = 0


def nvarchar(name: str, size: int = 128) -> Column:
    return Column(name, "nvarchar", size)


def result_set(columns: list[Column], rows: list[tuple], metadata: bool = True) -> bytes:
    """COLMETADATA then one ROW per tuple (``None`` is NULL); follow it with :func:`done` and the row count.

    ``metadata=False`` sends COLMETADATA's NoMetaData (count 0xFFFF), as for an RPC with fNoMetaData.
    """
    if metadata:
        meta = bytearray(b"\x81" + struct.pack("<H", len(columns)))
        for column in columns:
            meta += struct.pack("<IH", 0, 0x0001)  # UserType, Flags: nullable
            meta += _type_info(column) + b_varchar(column.name)
    else:
        meta = bytearray(b"\x81\xff\xff")
    out = bytearray(meta)
    for row in rows:
        if len(row) != len(columns):
            raise ValueError("row width does not match the columns")
        out += b"\xd1" + b"".join(_value(column, value) for column, value in zip(columns, row))
    return bytes(out)


def _type_info(column: Column) -> bytes:
    if column.kind == "nvarchar":
        return b"\xe7" + struct.pack("<H", 2 * column.size) + COLLATION
    if column.kind == "int":
        return b"\x26\x04"
    if column.kind == "bigint":
        return b"\x26\x08"
    if column.kind == "float":
        return b"\x6d\x08"
    if column.kind == "datetime":
        return b"\x6f\x08"
    if column.kind == "varbinary":
        return b"\xa5" + struct.pack("<H", column.size)
    if column.kind == "bit":
        return b"\x68\x01"
    raise ValueError(f"column type {column.kind} is not emulated")


def _value(column: Column, value) -> bytes:
    if column.kind == "nvarchar":
        if value is None:
            return b"\xff\xff"
        data = str(value).encode("utf-16-le")
        return struct.pack("<H", len(data)) + data
    if column.kind == "varbinary":
        return b"\xff\xff" if value is None else struct.pack("<H", len(value)) + bytes(value)
    if value is None:
        return b"\x00"
    if column.kind == "int":
        return b"\x04" + struct.pack("<i", value)
    if column.kind == "bigint":
        return b"\x08" + struct.pack("<q", value)
    if column.kind == "float":
        return b"\x08" + struct.pack("<d", value)
    if column.kind == "datetime":
        return b"\x08" + _datetime(value)
    return b"\x01" + bytes([1 if value else 0])


_EPOCH_1900 = datetime.datetime(1900, 1, 1)


def _datetime(value: datetime.datetime) -> bytes:
    """DATETIME (2.2.5.5.1.8): days since 1900-01-01, then 1/300 seconds since midnight."""
    value = value.replace(tzinfo=None)
    delta = value - _EPOCH_1900
    midnight = value.replace(hour=0, minute=0, second=0, microsecond=0)
    ticks = round((value - midnight).total_seconds() * 300)
    return struct.pack("<iI", delta.days, ticks)


def sid_of(guid: str) -> bytes:
    """SQL Server's uniqueidentifier bytes of a GUID (first three groups little-endian): an Entra user's SID."""
    return uuid.UUID(guid).bytes_le
