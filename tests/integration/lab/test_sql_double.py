"""The lab's Azure SQL double (azurelab.sqlserver) driven by the real clients: pyodbc with Microsoft ODBC Driver 18
(from the ``mssql-python-odbc`` wheel, registered with unixODBC by azurelab.odbc) and ``mssql-python``.

The server runs in-process on a free port with its own state folder, CA, issuer, catalog file and directory (the
lookup behind ``CREATE USER ... FROM EXTERNAL PROVIDER``). TLS is verified for real:
``Encrypt=yes;TrustServerCertificate=no`` with ``SSL_CERT_FILE`` naming the lab bundle (system CAs + lab CA),
which msodbcsql's OpenSSL reads at every connect. The server name must be ``localhost``: the driver checks the
certificate's DNS names, not its IP address entries. Needs Debian's ``unixodbc`` for pyodbc.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyodbc  # needs Debian's unixodbc (libodbc.so.2)
import pytest

from azurelab import ca, odbc, sqlcatalog, tds, tsql  # conftest.py puts lab/ on sys.path
from azurelab.config import LabPaths
from azurelab.sqlserver import SqlLab
from azurelab.tokens import Issuer


SQL_SCOPE = "https://database.windows.net/.default"
TENANT = "7d3e9f5a-1c2b-4d6e-8f90-a1b2c3d4e5f6"
ADMIN, ADMIN_PASSWORD = "sqladmin", "Pa55;wörd}!"
FORBIDDEN_PORTS = set(range(46000, 46011)) | set(range(47000, 47011))
SQL_COPT_SS_ACCESS_TOKEN = 1256

APP_MI = {"type": "ManagedIdentity", "object_id": "0b8c2a61-3f4e-4d5a-9b6c-7d8e9fa0b1c2",
          "client_id": "00112233-4455-6677-8899-aabbccddeeff", "display_name": "mi-webapp"}
STRANGER_MI = {"type": "ManagedIdentity", "object_id": "6e5d4c3b-2a19-4807-b6a5-948372615041",
               "client_id": "a1b2c3d4-e5f6-4789-8abc-def012345678", "display_name": "mi-stranger"}
DBA_USER = {"type": "User", "object_id": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", "upn": "dana@lab.example",
            "display_name": "Dana"}
# An automation identity that is a member of db_owner (not the Entra admin): the Directory Readers case
DEPLOYER_MI = {"type": "ManagedIdentity", "object_id": "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9",
               "client_id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "display_name": "mi-deployer"}
# Identities the migration creates users for: one per test, so tests do not share users
NEW_MIS = [{"type": "ManagedIdentity", "object_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"object/{n}")),
            "client_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"client/{n}")), "display_name": f"mi-new-{n}"}
           for n in range(8)]
OPS_GROUP = {"type": "Group", "object_id": "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", "display_name": "sg-app-ops"}
OPS_USER = {"type": "User", "object_id": "7e6d5c4b-3a29-4180-97f6-e5d4c3b2a190", "upn": "omar@lab.example",
            "display_name": "Omar"}
DIRECTORY = [APP_MI, STRANGER_MI, DBA_USER, DEPLOYER_MI, *NEW_MIS, OPS_GROUP, OPS_USER]
ACCESS_ADMIN, SECURITY_ADMIN, OWNER, LEGACY = "acc_admin", "sec_admin", "db_owner_user", "legacy_app"
SQL_USER_PASSWORD = "Le;gacy}Pa55"


def resolve_principal(name: str | None, object_id: str | None) -> dict | None:
    """The lab directory's lookup: by object id when given, else by display name or UPN (case-insensitive)."""
    for entry in DIRECTORY:
        if object_id is not None:
            if entry["object_id"] == object_id.lower():
                return entry
        elif name is not None and name.casefold() in (entry["display_name"].casefold(),
                                                      entry.get("upn", "").casefold()):
            return entry
    return None


# Independently computed SQL Server SID of APP_MI's client id: the first three groups byte-reversed.
APP_MI_SID = bytes.fromhex("33221100" + "5544" + "7766" + "8899aabbccddeeff")


class Sql:
    """The running double plus what the tests need to reach it."""

    def __init__(self, paths: LabPaths, issuer: Issuer, lab: SqlLab):
        self.paths, self.issuer, self.lab = paths, issuer, lab

    def token(self, principal: dict, scope: str = SQL_SCOPE, lifetime_s: int = 3600) -> str:
        return self.issuer.issue(principal, scope, lifetime_s)[0]

    def odbc(self, database: str = "appdb", extra: str = "", encrypt: str = "yes") -> str:
        return (f"DRIVER={{{odbc.DRIVER_NAME}}};SERVER=tcp:localhost,{self.lab.port};DATABASE={database};"
                f"Encrypt={encrypt};TrustServerCertificate=no;{extra}")

    def pyodbc_token(self, token_bytes: bytes, database: str = "appdb", encrypt: str = "yes", autocommit: bool = False):
        """Connect as the tutorial does: attribute 1256 = 4-byte little-endian length + token bytes."""
        packed = struct.pack(f"<I{len(token_bytes)}s", len(token_bytes), token_bytes)
        return pyodbc.connect(self.odbc(database, encrypt=encrypt), attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed},
                              timeout=5, autocommit=autocommit)

    def connect_as(self, principal: dict, autocommit: bool = True):
        """A pyodbc connection with ``principal``'s token, closed when the ``with`` block ends."""
        return contextlib.closing(self.pyodbc_token(self.token(principal).encode("utf-16-le"), autocommit=autocommit))

    def connect_sql(self, user: str, password: str = SQL_USER_PASSWORD, autocommit: bool = True):
        """A pyodbc connection with SQL authentication, closed when the ``with`` block ends."""
        return contextlib.closing(pyodbc.connect(self.odbc(extra=f"UID={user};PWD={_odbc_braced(password)}"),
                                                 timeout=5, autocommit=autocommit))


def _odbc_braced(value: str) -> str:
    """A connection-string value in braces, so that ``;`` and ``}`` in it survive."""
    return "{" + value.replace("}", "}}") + "}"


def _start(paths: LabPaths, issuer: Issuer, catalog: Path | None = None) -> SqlLab:
    """A SqlLab on a free port outside the ranges reserved for the default and shared labs."""
    while True:
        lab = SqlLab(paths, issuer, 0, "sql-lab", audience="https://database.windows.net/", admin_login=ADMIN,
                     admin_password=ADMIN_PASSWORD, databases=("appdb",), entra_admin=lambda: DBA_USER["object_id"],
                     tenant_id=TENANT, catalog=catalog, resolve_principal=resolve_principal)
        if lab.port not in FORBIDDEN_PORTS:
            return lab
        lab.shutdown()


@pytest.fixture(scope="module")
def sql():
    root = Path(tempfile.mkdtemp(prefix="lab-sql-test-"))
    paths = LabPaths(root)
    ca.ensure(paths)
    issuer = Issuer(paths, TENANT, "https://127.0.0.1:1")  # only signs and verifies: nothing is fetched
    lab = _start(paths, issuer, root / "sql-lab.sqlite3")
    lab.add_user("appdb", "mi-webapp", tds.sid_of(APP_MI["client_id"]))
    lab.add_user("appdb", "mi-deployer", tds.sid_of(DEPLOYER_MI["client_id"]))
    lab.add_role_member("appdb", "db_owner", "mi-deployer")
    lab.add_sql_user("appdb", ACCESS_ADMIN, SQL_USER_PASSWORD, roles=("db_accessadmin",))
    lab.add_sql_user("appdb", SECURITY_ADMIN, SQL_USER_PASSWORD, roles=("db_securityadmin",))
    lab.add_sql_user("appdb", OWNER, SQL_USER_PASSWORD, roles=("db_owner",))
    lab.add_sql_user("appdb", LEGACY, SQL_USER_PASSWORD, roles=("db_datareader", "db_datawriter"))
    thread = threading.Thread(target=lab.serve_forever, daemon=True)
    thread.start()
    env = odbc.register_driver(paths) | {"SSL_CERT_FILE": str(paths.ca_bundle)}
    try:
        with pytest.MonkeyPatch.context() as patch:  # the environment is restored after the module
            for key, value in env.items():
                patch.setenv(key, value)
            assert odbc.DRIVER_NAME in pyodbc.drivers(), "unixODBC was used in this process before ODBCSYSINI was set"
            yield Sql(paths, issuer, lab)
    finally:
        lab.shutdown()
        thread.join(5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stranger_user(sql):
    """A test that adds user "mi-stranger" gets it dropped afterwards."""
    yield sql
    sql.lab.drop_user("appdb", "mi-stranger")


# --- protocol helpers --------------------------------------------------------------------------------------------
def test_sid_is_sql_server_uniqueidentifier_byte_order():
    assert tds.sid_of(APP_MI["client_id"]) == APP_MI_SID
    assert tds.sid_of(APP_MI["client_id"]) != uuid.UUID(APP_MI["client_id"]).bytes


def test_password_obfuscation_matches_ms_tds():
    # "a" is 61 00 in UTF-16LE; nibbles swapped 16 00; XOR A5 -> B3 A5
    assert tds.obfuscate_password("a") == b"\xb3\xa5"
    assert tds.deobfuscate_password(b"\xb3\xa5") == "a"
    assert tds.deobfuscate_password(tds.obfuscate_password(ADMIN_PASSWORD)) == ADMIN_PASSWORD


def test_prelogin_round_trip():
    payload = tds.build_prelogin([(tds.PL_VERSION, b"\x0c\x00\x07\xd0\x00\x00"), (tds.PL_ENCRYPTION, b"\x01")])
    assert tds.parse_prelogin(payload) == {tds.PL_VERSION: b"\x0c\x00\x07\xd0\x00\x00", tds.PL_ENCRYPTION: b"\x01"}


def _rpc_param(type_info: bytes, value: bytes, name: str = "") -> bytes:
    return tds.b_varchar(name) + b"\x00" + type_info + value


def test_rpc_parameters_are_decoded():
    """sp_prepexec as the drivers send it, with a statement split over two PLP chunks and one value of each type."""
    statement = "SELECT name FROM sys.database_principals WHERE name = @P1".encode("utf-16-le")
    chunks = (statement[:10], statement[10:])
    plp = struct.pack("<Q", len(statement)) + b"".join(struct.pack("<I", len(c)) + c for c in chunks) + b"\0\0\0\0"
    nvarchar_max = b"\xe7\xff\xff" + tds.COLLATION
    utf8_collation = (0x0409 | 1 << 26).to_bytes(4, "little") + b"\x00"
    payload = (struct.pack("<IIHQI", 22, 18, 2, 0, 1) + struct.pack("<HHH", 0xFFFF, tds.SP_PREPEXEC, 0)
               + tds.b_varchar("") + b"\x01" + b"\x26\x04\x00"  # the handle: INTN, output, NULL
               + _rpc_param(nvarchar_max, plp)
               + _rpc_param(b"\xe7\x10\x00" + tds.COLLATION, struct.pack("<H", 4) + "é]".encode("utf-16-le"))
               + _rpc_param(b"\xa7\x08\x00" + utf8_collation, struct.pack("<H", 3) + "é;".encode())
               + _rpc_param(b"\xa5\x10\x00", struct.pack("<H", 16) + APP_MI_SID, "@sid")
               + _rpc_param(b"\x26\x08", b"\x08" + struct.pack("<q", -5))
               + _rpc_param(b"\x68\x01", b"\x01\x01")
               + _rpc_param(b"\x6c\x11\x26\x02", b"\x05\x00" + (1234).to_bytes(4, "little"))
               + _rpc_param(b"\x24\x10", b"\x10" + APP_MI_SID))
    request = tds.parse_rpc(payload + _rpc_param(b"\xa5\x10\x00", b"\xff\xff"))
    assert (request.proc, request.flags) == (tds.SP_PREPEXEC, 0)
    assert request.params[0].output and request.params[0].value is None
    assert [p.value for p in request.params[1:]] == [statement.decode("utf-16-le"), "é]", "é;", APP_MI_SID, -5, True,
                                                     -12.34, APP_MI_SID, None]
    assert request.params[4].name == "@sid"
    with pytest.raises(tds.UnsupportedType) as caught:
        tds.parse_rpc(payload + _rpc_param(b"\x2a\x07", b"\x00"))  # DATETIME2N
    assert caught.value.type_id == 0x2A


def test_names_are_parsed_as_sql_server_quotes_them():
    statements = tsql.Parser("create user [a]]b'c;é] with sid=0x0A0b, type=x\n"
                             "ALTER ROLE \"db owner\" ADD MEMBER plain_name; DROP USER IF EXISTS [x]").batch()
    expected = [("create_user", "a]b'c;é"), ("alter_role", "db owner"), ("drop_user", "x")]
    assert [(s.kind, s.name) for s in statements] == expected
    assert statements[0].options == {"sid": b"\x0a\x0b", "type": "X"}
    assert statements[1].options == {"action": "add", "member": "plain_name"}
    with pytest.raises(tsql.SqlError) as caught:
        tsql.Parser("CREATE USER [" + "n" * 129 + "] WITHOUT LOGIN").batch()
    assert caught.value.number == 103
    with pytest.raises(tsql.SqlError) as caught:
        tsql.Parser("CREATE USER [a] WITH PASSWORD = 'open").batch()
    assert caught.value.number == 105


# --- pyodbc + ODBC Driver 18 -------------------------------------------------------------------------------------
def test_token_login_is_the_contained_user(sql):
    with sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le")) as conn:
        row = conn.cursor().execute("SELECT CURRENT_USER AS username, @@VERSION AS version").fetchone()
        assert row.username == "mi-webapp"
        assert row.version.startswith("Microsoft SQL Azure")
        row = conn.cursor().execute("SELECT SUSER_SID(), NULL, CAST(1 AS bit), N'é''s'").fetchone()
        assert tuple(row) == (APP_MI_SID, None, True, "é's")  # VARBINARY, NULL, BIT, NVARCHAR over the wire
        conn.commit()  # autocommit off: the driver began a transaction at connect; the double acknowledges both


@pytest.mark.parametrize("encrypt", ["strict", "no"])
def test_every_encrypt_mode_ends_in_tls(sql, encrypt):
    """strict: TDS 8.0, TLS before PRELOGIN; no: the driver accepts the double's ENCRYPT_ON and encrypts it all."""
    with sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le"), encrypt=encrypt) as conn:
        assert conn.cursor().execute("SELECT CURRENT_USER").fetchone()[0] == "mi-webapp"


def test_entra_admin_user_token_is_dbo(sql):
    with sql.pyodbc_token(sql.token(DBA_USER).encode("utf-16-le")) as conn:
        assert conn.cursor().execute("SELECT CURRENT_USER").fetchone()[0] == "dbo"


def _login_error(sql, token_bytes: bytes, database: str = "appdb") -> str:
    with pytest.raises(pyodbc.InterfaceError) as caught:
        sql.pyodbc_token(token_bytes, database)
    assert caught.value.args[0] == "28000"
    return caught.value.args[1]


def test_token_without_user_is_18456(sql):
    message = _login_error(sql, sql.token(STRANGER_MI).encode("utf-16-le"))
    assert "Login failed for user '<token-identified principal>'. (18456)" in message


@pytest.mark.parametrize("sid_from", ["principal id", "big-endian client id"])
def test_user_with_a_wrong_sid_never_logs_in(stranger_user, sid_from):
    sql = stranger_user
    wrong = (tds.sid_of(STRANGER_MI["object_id"]) if sid_from == "principal id"
             else uuid.UUID(STRANGER_MI["client_id"]).bytes)
    sql.lab.add_user("appdb", "mi-stranger", wrong)
    message = _login_error(sql, sql.token(STRANGER_MI).encode("utf-16-le"))
    assert "Login failed for user '<token-identified principal>'. (18456)" in message
    sql.lab.add_user("appdb", "mi-stranger", tds.sid_of(STRANGER_MI["client_id"]))
    with sql.pyodbc_token(sql.token(STRANGER_MI).encode("utf-16-le")) as conn:
        assert conn.cursor().execute("SELECT CURRENT_USER").fetchone()[0] == "mi-stranger"


@pytest.mark.parametrize("case", ["wrong audience", "utf-8 token", "other tenant"])
def test_unacceptable_token_is_refused_like_azure(sql, case):
    if case == "wrong audience":
        token_bytes = sql.token(APP_MI, scope="https://management.azure.com/.default").encode("utf-16-le")
    elif case == "utf-8 token":
        token_bytes = sql.token(APP_MI).encode("utf-8")
    else:
        other = Issuer(sql.paths, "11111111-2222-3333-4444-555555555555", "https://127.0.0.1:1")
        token_bytes = other.issue(APP_MI, SQL_SCOPE)[0].encode("utf-16-le")
    message = _login_error(sql, token_bytes)
    assert ("Login failed for user '<token-identified principal>'. "
            "The server is not currently configured to accept this token. (18456)") in message


def test_expired_token(sql):
    message = _login_error(sql, sql.token(APP_MI, lifetime_s=-120).encode("utf-16-le"))
    assert "Token is expired. (18456)" in message


def test_unknown_database_is_4060(sql):
    # SQL Server's SQLSTATE for 4060 is 42000, which pyodbc maps to ProgrammingError (not InterfaceError)
    with pytest.raises(pyodbc.ProgrammingError) as caught:
        sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le"), database="nodb")
    assert 'Cannot open database "nodb" requested by the login. The login failed. (4060)' in caught.value.args[1]


def test_sql_auth_server_admin(sql):
    conn_str = sql.odbc(database="AppDB", extra=f"UID={ADMIN};PWD={_odbc_braced(ADMIN_PASSWORD)}")
    with pyodbc.connect(conn_str, timeout=5) as conn:  # database names are case-insensitive
        assert tuple(conn.cursor().execute("SELECT CURRENT_USER, SUSER_SNAME(), DB_NAME()").fetchone()) == \
            ("dbo", ADMIN, "appdb")
    with pytest.raises(pyodbc.InterfaceError, match=r"Login failed for user 'sqladmin'\. \(18456\)"):
        pyodbc.connect(sql.odbc(extra=f"UID={ADMIN};PWD=wrong"), timeout=5)


def test_entra_only_refuses_sql_auth(sql, monkeypatch):
    monkeypatch.setattr(sql.lab, "entra_only", lambda: True)
    with pytest.raises(pyodbc.InterfaceError, match="Azure Active Directory only authentication is enabled"):
        pyodbc.connect(sql.odbc(extra=f"UID={ADMIN};PWD={_odbc_braced(ADMIN_PASSWORD)}"), timeout=5)
    with sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le")) as conn:
        assert conn.cursor().execute("SELECT CURRENT_USER").fetchone()[0] == "mi-webapp"


def test_statements_outside_the_subset_are_sql_server_errors(sql):
    with sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le")) as conn:
        cursor = conn.cursor()
        with pytest.raises(pyodbc.ProgrammingError, match=r"Incorrect syntax near 'INTO'\. \(102\)"):
            cursor.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(pyodbc.ProgrammingError, match=r"Could not find stored procedure 'sp_nothing'\. \(2812\)"):
            cursor.execute("EXEC sp_nothing")
        with pytest.raises(pyodbc.ProgrammingError, match=r"Invalid object name 'principals'\. \(208\)"):
            cursor.execute("SELECT * FROM principals")  # the catalog's own tables are not visible
        with pytest.raises(pyodbc.ProgrammingError, match=r"Invalid object name 'sys.objects'\. \(208\)"):
            cursor.execute("SELECT name FROM sys.objects")
        with pytest.raises(pyodbc.ProgrammingError, match=r"Invalid column name 'nope'\. \(207\)"):
            cursor.execute("SELECT nope FROM sys.database_principals")
        with pytest.raises(pyodbc.ProgrammingError, match=r'Must declare the scalar variable "@x"\. \(137\)'):
            cursor.execute("SELECT @x")
        assert cursor.execute("SELECT 1").fetchone()[0] == 1  # the session survives errors
    with sql.connect_as(DBA_USER) as conn:  # logins in master are not emulated: CREATE USER for a login fails
        with pytest.raises(pyodbc.ProgrammingError, match=r"'nobody' is not a valid login or you do not have "
                                                          r"permission\. \(15007\)"):
            conn.cursor().execute("CREATE USER nobody")


def test_certificate_is_verified(sql, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(sql.paths.ca_cert.with_name("absent.pem")))
    with pytest.raises(pyodbc.OperationalError, match="certificate verify failed"):
        sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le"))


# --- the T-SQL subset: users, roles, catalog views, transactions ------------------------------------------------
def _sid_literal(sid: bytes) -> str:
    return "0x" + sid.hex().upper()


def _error_of(cursor, text: str, *params) -> str:
    """The ODBC message of the SQL Server error a statement raises (pyodbc puts the number in it)."""
    with pytest.raises(pyodbc.Error) as caught:
        cursor.execute(text, *params)
    return caught.value.args[1]


def _run_all(cursor, text: str) -> list[str]:
    """Execute a batch and walk all its results; the messages of the errors met, in order."""
    errors = []
    try:
        cursor.execute(text)
    except pyodbc.Error as exc:
        errors.append(exc.args[1])
    while True:
        try:
            if not cursor.nextset():
                return errors
        except pyodbc.Error as exc:
            errors.append(exc.args[1])


def _principal(cursor, name: str):
    return cursor.execute("SELECT name, principal_id, type, type_desc, sid, authentication_type_desc, "
                          "default_schema_name FROM sys.database_principals WHERE name = ?", name).fetchone()


def _members(cursor, role: str) -> list[str]:
    rows = cursor.execute("SELECT m.name FROM sys.database_role_members AS rm "
                          "JOIN sys.database_principals AS r ON r.principal_id = rm.role_principal_id "
                          "JOIN sys.database_principals AS m ON m.principal_id = rm.member_principal_id "
                          "WHERE r.name = ? ORDER BY m.name", role).fetchall()
    return [row.name for row in rows]


def test_fixed_principals_are_sql_servers(sql):
    with sql.connect_as(APP_MI) as conn:
        rows = conn.cursor().execute("SELECT principal_id, name, type, type_desc, is_fixed_role "
                                     "FROM sys.database_principals WHERE principal_id < 5 OR is_fixed_role = 1 "
                                     "ORDER BY principal_id").fetchall()
    assert [tuple(row) for row in rows] == [
        (0, "public", "R", "DATABASE_ROLE", False), (1, "dbo", "S", "SQL_USER", False),
        (2, "guest", "S", "SQL_USER", False), (3, "INFORMATION_SCHEMA", "S", "SQL_USER", False),
        (4, "sys", "S", "SQL_USER", False), (16384, "db_owner", "R", "DATABASE_ROLE", True),
        (16385, "db_accessadmin", "R", "DATABASE_ROLE", True), (16386, "db_securityadmin", "R", "DATABASE_ROLE", True),
        (16387, "db_ddladmin", "R", "DATABASE_ROLE", True), (16389, "db_backupoperator", "R", "DATABASE_ROLE", True),
        (16390, "db_datareader", "R", "DATABASE_ROLE", True), (16391, "db_datawriter", "R", "DATABASE_ROLE", True),
        (16392, "db_denydatareader", "R", "DATABASE_ROLE", True),
        (16393, "db_denydatawriter", "R", "DATABASE_ROLE", True)]


@pytest.mark.parametrize("sid_from, logs_in", [("client id", True), ("object id", False), ("uuid.bytes", False)])
def test_user_created_with_sid_logs_in_only_from_the_client_id(sql, sid_from, logs_in):
    mi = NEW_MIS[["client id", "object id", "uuid.bytes"].index(sid_from)]
    sid = {"client id": tds.sid_of(mi["client_id"]), "object id": tds.sid_of(mi["object_id"]),
           "uuid.bytes": uuid.UUID(mi["client_id"]).bytes}[sid_from]
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        cursor.execute(f"CREATE USER [{mi['display_name']}] WITH SID = {_sid_literal(sid)}, TYPE = E")
        row = _principal(cursor, mi["display_name"])
        assert tuple(row)[2:] == ("E", "EXTERNAL_USER", sid, "EXTERNAL", "dbo")
        assert row.principal_id >= 5
        try:
            token = sql.token(mi).encode("utf-16-le")
            if logs_in:
                with contextlib.closing(sql.pyodbc_token(token)) as app:
                    assert app.cursor().execute("SELECT CURRENT_USER").fetchone()[0] == mi["display_name"]
            else:
                assert "Login failed for user '<token-identified principal>'. (18456)" in _login_error(sql, token)
        finally:
            cursor.execute(f"DROP USER [{mi['display_name']}]")


def test_create_user_type_x_is_an_external_group(sql):
    sid = tds.sid_of(OPS_GROUP["object_id"])
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        cursor.execute(f"CREATE USER [sg-ops-x] WITH SID = {_sid_literal(sid)}, TYPE = X")
        try:
            assert tuple(_principal(cursor, "sg-ops-x"))[2:6] == ("X", "EXTERNAL_GROUP", sid, "EXTERNAL")
        finally:
            cursor.execute("DROP USER [sg-ops-x]")


@pytest.mark.parametrize("value, near", [("CAST(0x01 AS varbinary(16))", "CAST"), ("@sid", "@sid"), ("'0x01'", "'0x01'")])
def test_with_sid_takes_a_binary_literal_only(sql, value, near):
    with sql.connect_as(DBA_USER) as conn:
        message = _error_of(conn.cursor(), f"CREATE USER [mi-expr] WITH SID = {value}, TYPE = E")
    assert f"Incorrect syntax near '{near}'. (102)" in message


@pytest.mark.parametrize("name, object_id, entry, type_", [
    ("mi-new-3", None, NEW_MIS[3], "E"),  # managed identity: SID from its client id
    ("sg-app-ops", None, OPS_GROUP, "X"),  # group: SID from its object id
    ("omar@lab.example", None, OPS_USER, "E"),  # user by UPN: SID from its object id
    ("duplicate display name", NEW_MIS[4]["object_id"], NEW_MIS[4], "E"),  # WITH OBJECT_ID picks the principal
])
def test_create_user_from_external_provider(sql, name, object_id, entry, type_):
    expected_sid = tds.sid_of(entry["client_id"] if "client_id" in entry else entry["object_id"])
    statement = f"CREATE USER [{name}] FROM EXTERNAL PROVIDER"
    if object_id:
        statement += f" WITH OBJECT_ID = '{object_id}'"
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        cursor.execute(statement)
        try:
            assert tuple(_principal(cursor, name))[2:6] == (type_, "EXTERNAL_GROUP" if type_ == "X" else
                                                            "EXTERNAL_USER", expected_sid, "EXTERNAL")
            if entry["type"] == "ManagedIdentity":
                with sql.connect_as(entry) as app:
                    assert app.cursor().execute("SELECT CURRENT_USER").fetchone()[0] == name
        finally:
            cursor.execute(f"DROP USER [{name}]")


def test_from_external_provider_errors(sql, monkeypatch):
    with sql.connect_sql(ADMIN, ADMIN_PASSWORD) as conn:  # the SQL admin is dbo but not an Entra session
        assert ("Principal 'mi-new-5' could not be created. Only connections established with Active Directory "
                "accounts can create other Active Directory users. (33159)") in _error_of(
                    conn.cursor(), "CREATE USER [mi-new-5] FROM EXTERNAL PROVIDER")
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        assert ("Principal 'nobody' could not be found or this principal type is not supported. (33130)"
                in _error_of(cursor, "CREATE USER [nobody] FROM EXTERNAL PROVIDER"))
        assert "(33130)" in _error_of(cursor, "CREATE USER [mi-new-5] FROM EXTERNAL PROVIDER WITH OBJECT_ID = "
                                              "'00000000-0000-0000-0000-00000000dead'")
    monkeypatch.setattr(sql.lab, "directory_readers", lambda: False)
    with sql.connect_as(DEPLOYER_MI) as conn:  # an app caller: the server's identity must read Entra
        message = _error_of(conn.cursor(), "CREATE USER [mi-new-5] FROM EXTERNAL PROVIDER")
        assert ("Principal 'mi-new-5' could not be resolved. Error message: 'Server identity does not have Azure "
                "Active Directory Readers permission.") in message
        assert "(33134)" in message
        assert _principal(conn.cursor(), "mi-new-5") is None
    with sql.connect_as(DBA_USER) as conn:  # a user caller: Azure resolves the name with the user's own token
        cursor = conn.cursor()
        cursor.execute("CREATE USER [mi-new-5] FROM EXTERNAL PROVIDER")
        cursor.execute("DROP USER [mi-new-5]")
    monkeypatch.setattr(sql.lab, "directory_readers", lambda: True)
    with sql.connect_as(DEPLOYER_MI) as conn:
        cursor = conn.cursor()
        cursor.execute("CREATE USER [mi-new-5] FROM EXTERNAL PROVIDER")
        assert _principal(cursor, "mi-new-5").sid == tds.sid_of(NEW_MIS[5]["client_id"])
        cursor.execute("DROP USER [mi-new-5]")


def test_duplicate_name_and_sid(sql):
    sid = tds.sid_of(NEW_MIS[6]["client_id"])
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        cursor.execute(f"CREATE USER [Mi-Été] WITH SID = {_sid_literal(sid)}, TYPE = E")
        try:
            # names compare case-insensitively (accents count), as under the default collation
            assert ("User, group, or role 'mi-éTÉ' already exists in the current database. (15023)" in _error_of(
                cursor, "CREATE USER [mi-éTÉ] WITH SID = 0x01, TYPE = E"))
            assert "(15023)" in _error_of(cursor, "CREATE USER [db_owner] WITHOUT LOGIN")
            assert "(15023)" in _error_of(cursor, "CREATE USER [MI-ÉTÉ] FROM EXTERNAL PROVIDER")
            assert ("The login already has an account under a different user name. (15063)" in _error_of(
                cursor, f"CREATE USER [other-name] WITH SID = {_sid_literal(sid)}, TYPE = E"))
            assert "(15063)" in _error_of(cursor, "CREATE USER [mi-new-6] FROM EXTERNAL PROVIDER")
            assert _principal(cursor, "mi-ete") is None
        finally:
            cursor.execute("DROP USER [MI-ÉTÉ]")


def test_drop_user(sql):
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        assert ("Cannot drop the user 'nobody', because it does not exist or you do not have permission. (15151)"
                in _error_of(cursor, "DROP USER [nobody]"))
        cursor.execute("DROP USER IF EXISTS [nobody]")
        assert "Cannot drop the user 'dbo'. (15150)" in _error_of(cursor, "DROP USER dbo")
        assert "(15151)" in _error_of(cursor, "DROP USER db_owner")  # a role, not a user
        cursor.execute("CREATE USER [to-drop] WITHOUT LOGIN")
        cursor.execute("ALTER ROLE db_datareader ADD MEMBER [to-drop]")
        cursor.execute("CREATE ROLE [owned_role] AUTHORIZATION [to-drop]")
        assert "The database principal owns a database role and cannot be dropped. (15421)" in _error_of(
            cursor, "DROP USER [to-drop]")
        cursor.execute("DROP ROLE [owned_role]")
        cursor.execute("DROP USER IF EXISTS [TO-DROP]")
        assert _principal(cursor, "to-drop") is None
        assert "to-drop" not in _members(cursor, "db_datareader")
        assert "Cannot drop the role 'db_owner'. (15150)" in _error_of(cursor, "DROP ROLE db_owner")
        assert ("Cannot drop the role 'nope', because it does not exist or you do not have permission. (15151)"
                in _error_of(cursor, "DROP ROLE nope"))


def test_alter_role_membership(sql):
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        cursor.execute("CREATE USER [member-1] WITHOUT LOGIN; CREATE ROLE [app_readers]")
        try:
            cursor.execute("ALTER ROLE db_datareader ADD MEMBER [member-1]")
            cursor.execute("ALTER ROLE DB_DATAREADER ADD MEMBER [MEMBER-1]")  # already a member: no-op
            assert _members(cursor, "db_datareader").count("member-1") == 1
            cursor.execute("ALTER ROLE [app_readers] ADD MEMBER [member-1]")
            assert _members(cursor, "app_readers") == ["member-1"]
            cursor.execute("ALTER ROLE db_datareader DROP MEMBER [member-1]")
            cursor.execute("ALTER ROLE db_datareader DROP MEMBER [member-1]")  # not a member: no-op
            assert "member-1" not in _members(cursor, "db_datareader")
            assert ("Cannot alter the role 'nope', because it does not exist or you do not have permission. (15151)"
                    in _error_of(cursor, "ALTER ROLE [nope] ADD MEMBER [member-1]"))
            assert "(15151)" in _error_of(cursor, "ALTER ROLE [member-1] ADD MEMBER [member-1]")  # a user
            assert ("Cannot add the principal 'nobody', because it does not exist or you do not have permission. "
                    "(15151)") in _error_of(cursor, "ALTER ROLE db_datareader ADD MEMBER [nobody]")
            assert ("Cannot drop the principal 'nobody', because it does not exist or you do not have permission. "
                    "(15151)") in _error_of(cursor, "ALTER ROLE db_datareader DROP MEMBER [nobody]")
            assert "Membership of the public role cannot be changed. (15081)" in _error_of(
                cursor, "ALTER ROLE [public] ADD MEMBER [member-1]")
            assert "Cannot use the special principal 'dbo'. (15405)" in _error_of(
                cursor, "ALTER ROLE db_owner ADD MEMBER dbo")
            assert "Cannot make a role a member of itself. (15413)" in _error_of(
                cursor, "ALTER ROLE [app_readers] ADD MEMBER [app_readers]")
            assert "User, group, or role 'APP_READERS' already exists in the current database. (15023)" in _error_of(
                cursor, "CREATE ROLE [APP_READERS]")
            assert "The role has members. It must be empty before it can be dropped. (15144)" in _error_of(
                cursor, "DROP ROLE [app_readers]")
        finally:
            cursor.execute("DROP USER [member-1]; DROP ROLE IF EXISTS [app_readers]")
        assert _principal(cursor, "app_readers") is None


@pytest.mark.parametrize("who, create_user, alter_fixed_role, alter_custom_role", [
    (LEGACY, "15247", "15151", "15151"),  # an ordinary user: reads only
    (ACCESS_ADMIN, None, "15151", "15151"),  # db_accessadmin: CREATE/DROP USER
    (SECURITY_ADMIN, "15247", "15151", None),  # db_securityadmin: membership of roles that are not fixed roles
    (OWNER, None, None, None),  # db_owner: everything
])
def test_permission_model(sql, who, create_user, alter_fixed_role, alter_custom_role):
    user = f"perm-{who}"
    with sql.connect_as(DBA_USER) as conn:
        conn.cursor().execute("CREATE ROLE [perm_role]; CREATE USER [perm-member] WITHOUT LOGIN")
    try:
        with sql.connect_sql(who) as conn:
            cursor = conn.cursor()
            assert cursor.execute("SELECT COUNT(*) FROM sys.database_principals WHERE name = ?", who).fetchone()[0] == 1
            outcomes = []
            for statement in (f"CREATE USER [{user}] WITHOUT LOGIN", "ALTER ROLE db_datareader ADD MEMBER [perm-member]",
                              "ALTER ROLE [perm_role] ADD MEMBER [perm-member]"):
                try:
                    cursor.execute(statement)
                    outcomes.append(None)
                except pyodbc.Error as exc:
                    outcomes.append(exc.args[1].rsplit("(", 2)[-2].rstrip(") "))
            assert outcomes == [create_user, alter_fixed_role, alter_custom_role]
            if create_user:
                assert "User does not have permission to perform this action. (15247)" in _error_of(
                    cursor, "CREATE USER [x] WITHOUT LOGIN")
                assert ("Cannot drop the user 'perm-member', because it does not exist or you do not have permission. "
                        "(15151)") in _error_of(cursor, "DROP USER [perm-member]")
            else:
                cursor.execute(f"DROP USER [{user}]")
            if alter_fixed_role:
                assert ("Cannot alter the role 'db_datareader', because it does not exist or you do not have "
                        "permission. (15151)") in _error_of(cursor, "ALTER ROLE db_datareader ADD MEMBER [perm-member]")
    finally:
        with sql.connect_as(DBA_USER) as conn:
            conn.cursor().execute("DROP USER IF EXISTS [perm-member]; DROP ROLE IF EXISTS [perm_role]")


def test_parameterised_reads_with_awkward_names(sql):
    name = "a]b'c;é"
    sid = tds.sid_of(NEW_MIS[7]["client_id"])
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        cursor.execute(f"CREATE USER [a]]b'c;é] WITH SID = {_sid_literal(sid)}, TYPE = E")
        try:
            for execution in range(2):  # the second execution reuses the prepared handle (fNoMetaData)
                row = cursor.execute("SELECT name, sid, type FROM sys.database_principals WHERE name = ?",
                                     "A]B'C;É").fetchone()
                assert tuple(row) == (name, sid, "E"), execution
            rows = cursor.execute("SELECT name FROM sys.database_principals WHERE sid = ? AND type IN ('E', 'X')",
                                  sid).fetchall()
            assert [r.name for r in rows] == [name]
            assert cursor.execute("SELECT COUNT(*) AS n FROM sys.database_principals WHERE sid = ?",
                                  uuid.UUID(NEW_MIS[7]["client_id"]).bytes).fetchone().n == 0
            # the SID computed on the server, as AZURE_FACTS.md shows it
            row = cursor.execute("SELECT name FROM sys.database_principals WHERE sid = "
                                 "CAST(CAST(? AS uniqueidentifier) AS varbinary(16))", NEW_MIS[7]["client_id"]).fetchone()
            assert row.name == name
            cursor.execute("SELECT TOP (1) name FROM sys.database_principals WHERE name = ? ORDER BY name", name)
            assert cursor.fetchall()[0][0] == name
            row = cursor.execute("WITH e (n, s) AS (SELECT name, sid FROM sys.database_principals WHERE type = 'E') "
                                 "SELECT n FROM e WHERE s = ?", sid).fetchone()
            assert row[0] == name
        finally:
            cursor.execute("DROP USER [a]]b'c;é]")


def test_rollback_undoes_ddl(sql):
    with sql.connect_as(DBA_USER, autocommit=False) as conn:  # the driver's transaction-manager requests
        cursor = conn.cursor()
        cursor.execute("CREATE USER [rolled-back] WITHOUT LOGIN")
        cursor.execute("ALTER ROLE db_datareader ADD MEMBER [rolled-back]")
        cursor.execute(f"ALTER ROLE db_datareader ADD MEMBER [{LEGACY}]")  # already one: stays after the rollback
        assert _principal(cursor, "rolled-back") is not None  # the transaction sees its own changes
        conn.rollback()
        assert _principal(cursor, "rolled-back") is None
        assert LEGACY in _members(cursor, "db_datareader")
        cursor.execute("CREATE USER [committed] WITHOUT LOGIN")
        conn.commit()
    with sql.connect_as(DBA_USER) as conn:  # T-SQL transactions, autocommit on
        cursor = conn.cursor()
        assert _principal(cursor, "committed") is not None
        cursor.execute("BEGIN TRAN; DROP USER [committed]; CREATE USER [in-tran] WITHOUT LOGIN; ROLLBACK")
        assert _principal(cursor, "committed") is not None and _principal(cursor, "in-tran") is None
        assert cursor.execute("SELECT @@TRANCOUNT").fetchone()[0] == 0
        assert ("The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION. (3902)"
                in _error_of(cursor, "COMMIT"))
        assert ("The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION. (3903)"
                in _error_of(cursor, "ROLLBACK TRAN"))
        cursor.execute("BEGIN TRANSACTION; DROP USER [committed]; COMMIT TRANSACTION")
        assert _principal(cursor, "committed") is None


def test_uncommitted_changes_are_invisible_to_other_sessions(sql):
    """READ_COMMITTED_SNAPSHOT, Azure's default: a reader neither waits for nor sees another session's open change."""
    with sql.connect_as(DBA_USER, autocommit=False) as writer, sql.connect_as(APP_MI) as reader:
        writer.cursor().execute("CREATE USER [uncommitted] WITHOUT LOGIN")
        started = time.monotonic()
        assert _principal(reader.cursor(), "uncommitted") is None
        assert time.monotonic() - started < 1
        writer.commit()
        assert _principal(reader.cursor(), "uncommitted") is not None
        writer.cursor().execute("DROP USER [uncommitted]")
        writer.commit()


def test_a_second_writer_waits_for_the_first(sql, monkeypatch):
    monkeypatch.setattr(sqlcatalog, "LOCK_TIMEOUT_S", 0.3)  # read when a session opens its catalog connection
    with sql.connect_as(DBA_USER, autocommit=False) as first, sql.connect_sql(OWNER) as second:
        first.cursor().execute("CREATE USER [first-writer] WITHOUT LOGIN")
        assert "Lock request time out period exceeded. (1222)" in _error_of(
            second.cursor(), "CREATE USER [second-writer] WITHOUT LOGIN")
        first.rollback()
        second.cursor().execute("CREATE USER [second-writer] WITHOUT LOGIN; DROP USER [second-writer]")


def test_a_failed_statement_does_not_end_the_batch_unless_xact_abort(sql):
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        errors = _run_all(cursor, "CREATE USER [batch-1] WITHOUT LOGIN\nDROP USER [nobody]\n"
                                  "CREATE USER [batch-2] WITHOUT LOGIN")
        assert len(errors) == 1 and "(15151)" in errors[0]
        assert _principal(cursor, "batch-1") is not None and _principal(cursor, "batch-2") is not None
        errors = _run_all(cursor, "SET XACT_ABORT ON; BEGIN TRAN; CREATE USER [batch-3] WITHOUT LOGIN; "
                                  "DROP USER [nobody]; CREATE USER [batch-4] WITHOUT LOGIN; COMMIT")
        assert len(errors) == 1 and "(15151)" in errors[0]
        assert _principal(cursor, "batch-3") is None and _principal(cursor, "batch-4") is None
        assert cursor.execute("SELECT @@TRANCOUNT").fetchone()[0] == 0
        # a syntax error anywhere in a batch runs none of it
        errors = _run_all(cursor, "DROP USER [batch-1]; CREATE USER")
        assert len(errors) == 1 and "Incorrect syntax near 'USER'. (102)" in errors[0]
        assert _principal(cursor, "batch-1") is not None
        cursor.execute("SET XACT_ABORT OFF; DROP USER [batch-1]; DROP USER [batch-2]")
        assert _principal(cursor, "batch-2") is None


def test_contained_user_password_login(sql, monkeypatch):
    with sql.connect_as(DBA_USER) as conn:
        conn.cursor().execute("CREATE USER [app_sql] WITH PASSWORD = 'Str0ng;P@ss}'")
    try:
        for user in ("app_sql", "APP_SQL@sql-lab"):
            with sql.connect_sql(user, "Str0ng;P@ss}") as conn:
                row = conn.cursor().execute("SELECT CURRENT_USER, SUSER_SNAME(), DB_NAME()").fetchone()
                assert tuple(row) == ("app_sql", "app_sql", "appdb")
        with pytest.raises(pyodbc.InterfaceError, match=r"Login failed for user 'app_sql'\. \(18456\)"):
            pyodbc.connect(sql.odbc(extra="UID=app_sql;PWD=wrong"), timeout=5)
        with pytest.raises(pyodbc.InterfaceError, match=r"Login failed for user 'app_sql'\. \(18456\)"):
            pyodbc.connect(sql.odbc(database="master", extra="UID=app_sql;PWD={Str0ng;P@ss}}}"), timeout=5)
        monkeypatch.setattr(sql.lab, "entra_only", lambda: True)
        with pytest.raises(pyodbc.InterfaceError, match="Azure Active Directory only authentication is enabled"):
            pyodbc.connect(sql.odbc(extra="UID=app_sql;PWD={Str0ng;P@ss}}}"), timeout=5)
    finally:
        with sql.connect_as(DBA_USER) as conn:
            conn.cursor().execute("DROP USER [app_sql]")


def test_dm_exec_sessions_shows_live_sessions(sql):
    query = "SELECT login_name, status, is_user_process FROM sys.dm_exec_sessions WHERE session_id = ?"
    with sql.connect_as(APP_MI) as app:
        cursor = app.cursor()
        with sql.connect_sql(LEGACY) as legacy:
            legacy_id = legacy.cursor().execute("SELECT @@SPID").fetchone()[0]
            assert tuple(cursor.execute(query.replace("?", "@@SPID")).fetchone()) == ("mi-webapp", "running", True)
            assert tuple(cursor.execute(query, legacy_id).fetchone()) == (LEGACY, "sleeping", True)
        deadline = time.monotonic() + 2  # the server notices the disconnect on its own thread
        while cursor.execute(query, legacy_id).fetchone() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cursor.execute(query, legacy_id).fetchone() is None


def test_catalog_persists_across_a_restart(sql):
    catalog = sql.paths.root / "restart.sqlite3"
    sid = tds.sid_of(STRANGER_MI["client_id"])
    for generation in range(2):
        lab = _start(sql.paths, sql.issuer, catalog)
        thread = threading.Thread(target=lab.serve_forever, daemon=True)
        thread.start()
        try:
            token = sql.token(STRANGER_MI if generation else DBA_USER).encode("utf-16-le")
            packed = struct.pack(f"<I{len(token)}s", len(token), token)
            conn_str = sql.odbc().replace(f",{sql.lab.port};", f",{lab.port};")
            with contextlib.closing(pyodbc.connect(conn_str, attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed},
                                                   timeout=5, autocommit=True)) as conn:
                cursor = conn.cursor()
                if generation == 0:
                    cursor.execute(f"CREATE USER [mi-stranger] WITH SID = {_sid_literal(sid)}, TYPE = E; "
                                   f"ALTER ROLE db_datareader ADD MEMBER [mi-stranger]")
                else:  # the restarted server knows the user: its token signs in, its membership is there
                    row = cursor.execute("SELECT CURRENT_USER, IS_ROLEMEMBER('db_datareader')").fetchone()
                    assert tuple(row) == ("mi-stranger", 1)
        finally:
            lab.shutdown()
            thread.join(5)
    assert [u.name for u in lab.users("appdb")] == ["mi-stranger"]


# --- mssql-python (same msodbcsql18 by default, no system ODBC needed) ------------------------------------------
@pytest.fixture(scope="module")
def mssql_python():
    return pytest.importorskip("mssql_python", reason="the mssql-python wheel does not install on this machine")


def _mssql_conn_str(sql) -> str:
    return f"SERVER=tcp:localhost,{sql.lab.port};DATABASE=appdb;Encrypt=yes;TrustServerCertificate=no"


def test_mssql_python_token_and_sql_auth(sql, mssql_python):
    token = sql.token(APP_MI).encode("utf-16-le")
    packed = struct.pack(f"<I{len(token)}s", len(token), token)
    conn = mssql_python.connect(_mssql_conn_str(sql), attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed}, timeout=5)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT CURRENT_USER AS username")
        assert cursor.fetchone()[0] == "mi-webapp"
    finally:
        conn.close()
    conn = mssql_python.connect(_mssql_conn_str(sql) + f";UID={ADMIN};PWD={_odbc_braced(ADMIN_PASSWORD)}",
                                timeout=5)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT CURRENT_USER")
        assert cursor.fetchone()[0] == "dbo"
    finally:
        conn.close()


def test_mssql_python_login_failure_text(sql, mssql_python):
    token = sql.token(STRANGER_MI).encode("utf-16-le")
    packed = struct.pack(f"<I{len(token)}s", len(token), token)
    # mssql-python's message has the text but not the number (TDS_NOTES.md): match on the text.
    with pytest.raises(mssql_python.OperationalError, match=r"Login failed for user '<token-identified principal>'\."):
        mssql_python.connect(_mssql_conn_str(sql), attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed}, timeout=5)


@pytest.fixture
def mssql_conn(sql, mssql_python):
    """mssql-python signed in as the Entra admin (autocommit off, its default)."""
    token = sql.token(DBA_USER).encode("utf-16-le")
    packed = struct.pack(f"<I{len(token)}s", len(token), token)
    conn = mssql_python.connect(_mssql_conn_str(sql), attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed}, timeout=5)
    yield conn
    conn.close()


def test_mssql_python_parameterised_reads_and_rollback(sql, mssql_conn, mssql_python):
    name, sid = "mssql]py'é;", tds.sid_of(NEW_MIS[0]["client_id"])
    cursor = mssql_conn.cursor()
    cursor.execute(f"CREATE USER [mssql]]py'é;] WITH SID = {_sid_literal(sid)}, TYPE = E")
    mssql_conn.commit()
    try:
        for value in ("MSSQL]PY'É;", "mssql]py'é;"):  # mssql-python sends str as nvarchar or varchar
            cursor.execute("SELECT name, sid FROM sys.database_principals WHERE name = ?", value)
            assert [tuple(row) for row in cursor.fetchall()] == [(name, sid)]
        cursor.execute("SELECT name FROM sys.database_principals WHERE sid = ? AND principal_id >= ?", sid, 5)
        assert [row[0] for row in cursor.fetchall()] == [name]
        cursor.execute("ALTER ROLE db_datawriter ADD MEMBER [mssql]]py'é;]")
        mssql_conn.rollback()
        cursor.execute("SELECT COUNT(*) FROM sys.database_role_members AS rm JOIN sys.database_principals AS p "
                       "ON p.principal_id = rm.member_principal_id WHERE p.name = ?", name)
        assert cursor.fetchone()[0] == 0
        with pytest.raises(mssql_python.ProgrammingError, match=r"Cannot alter the role 'nope', because it does not"):
            cursor.execute("ALTER ROLE nope ADD MEMBER [mssql]]py'é;]")
    finally:
        cursor.execute("DROP USER [mssql]]py'é;]")
        mssql_conn.commit()


def test_statements_are_logged_without_their_string_literals(sql, caplog):
    """A statement the double does not run is logged, but a password in it is not."""
    caplog.set_level(logging.INFO, logger="azurelab")
    with sql.connect_as(DBA_USER) as conn:
        cursor = conn.cursor()
        assert "(102)" in _error_of(cursor, "ALTER USER [app_sql] WITH PASSWORD = 'N0t-In-The-Log!'")
        assert "(102)" in _error_of(cursor, "CREATE USER [x] WITH PASSWORD = 'N0t-In-The-Log!' oops")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "ALTER USER" in logged and "'***'" in logged
    assert "N0t-In-The-Log" not in logged


def test_the_server_counts_sessions_and_round_trips(sql):
    """Every request a signed-in session sends is one round trip (here a SQL batch each); a refused login is no
    session."""
    counted = []
    sql.lab.count = counted.append
    try:
        with sql.connect_as(APP_MI) as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT 1").fetchall()
            after_one = counted.count("round_trips")
            for _attempt in range(3):
                cursor.execute("SELECT 1").fetchall()
            assert counted.count("round_trips") == after_one + 3, counted
        with pytest.raises(pyodbc.Error):
            sql.connect_sql(LEGACY, "not the password")
    finally:
        sql.lab.count = lambda what: None
    assert counted.count("sessions") == 1
