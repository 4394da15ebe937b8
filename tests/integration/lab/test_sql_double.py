"""The lab's Azure SQL double (azurelab.sqlserver) driven by the real clients: pyodbc with Microsoft ODBC Driver 18
(from the ``mssql-python-odbc`` wheel, registered with unixODBC by azurelab.odbc) and ``mssql-python``.

The server runs in-process on a free port with its own state folder, CA and issuer. TLS is verified for real:
``Encrypt=yes;TrustServerCertificate=no`` with ``SSL_CERT_FILE`` naming the lab bundle (system CAs + lab CA),
which msodbcsql's OpenSSL reads at every connect. The server name must be ``localhost``: the driver checks the
certificate's DNS names, not its IP address entries. Needs Debian's ``unixodbc`` for pyodbc.
"""
from __future__ import annotations

import shutil
import struct
import tempfile
import threading
import uuid
from pathlib import Path

import pyodbc  # needs Debian's unixodbc (libodbc.so.2)
import pytest

from azurelab import ca, odbc, tds  # conftest.py puts lab/ on sys.path
from azurelab.config import LabPaths
from azurelab.sqlserver import SqlLab
from azurelab.tokens import Issuer


SQL_SCOPE = "https://database.windows.net/.default"
TENANT = "7d3e9f5a-1c2b-4d6e-8f90-a1b2c3d4e5f6"
ADMIN, ADMIN_PASSWORD = "sqladmin", "Pa55;wörd}!"
FORBIDDEN_PORTS = set(range(46000, 46011)) | set(range(47000, 47011))
SQL_COPT_SS_ACCESS_TOKEN = 1256

APP_MI = {"type": "ManagedIdentity", "object_id": "0b8c2a61-3f4e-4d5a-9b6c-7d8e9fa0b1c2",
          "client_id": "00112233-4455-6677-8899-aabbccddeeff"}
STRANGER_MI = {"type": "ManagedIdentity", "object_id": "6e5d4c3b-2a19-4807-b6a5-948372615041",
               "client_id": "a1b2c3d4-e5f6-4789-8abc-def012345678"}
DBA_USER = {"type": "User", "object_id": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", "upn": "dana@lab.example"}
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

    def pyodbc_token(self, token_bytes: bytes, database: str = "appdb", encrypt: str = "yes"):
        """Connect as the tutorial does: attribute 1256 = 4-byte little-endian length + token bytes."""
        packed = struct.pack(f"<I{len(token_bytes)}s", len(token_bytes), token_bytes)
        return pyodbc.connect(self.odbc(database, encrypt=encrypt), attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed},
                              timeout=5)


def _odbc_braced(value: str) -> str:
    """A connection-string value in braces, so that ``;`` and ``}`` in it survive."""
    return "{" + value.replace("}", "}}") + "}"


def _start(paths: LabPaths, issuer: Issuer) -> SqlLab:
    """A SqlLab on a free port outside the ranges reserved for the default and shared labs."""
    while True:
        lab = SqlLab(paths, issuer, 0, "sql-lab", audience="https://database.windows.net/", admin_login=ADMIN,
                     admin_password=ADMIN_PASSWORD, databases=("appdb",), entra_admin=DBA_USER["object_id"],
                     tenant_id=TENANT)
        if lab.port not in FORBIDDEN_PORTS:
            return lab
        lab.shutdown()


@pytest.fixture(scope="module")
def sql():
    root = Path(tempfile.mkdtemp(prefix="lab-sql-test-"))
    paths = LabPaths(root)
    ca.ensure(paths)
    issuer = Issuer(paths, TENANT, "https://127.0.0.1:1")  # only signs and verifies: nothing is fetched
    lab = _start(paths, issuer)
    lab.add_user("appdb", "mi-webapp", tds.sid_of(APP_MI["client_id"]))
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
        with pytest.raises(pyodbc.ProgrammingError, match=r"\(102\)"):
            cursor.execute("SELECT name FROM sys.database_principals")
        with pytest.raises(pyodbc.ProgrammingError, match=r"Could not find stored procedure 'sp_nothing'\. \(2812\)"):
            cursor.execute("EXEC sp_nothing")
        assert cursor.execute("SELECT 1").fetchone()[0] == 1  # the session survives errors


def test_certificate_is_verified(sql, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(sql.paths.ca_cert.with_name("absent.pem")))
    with pytest.raises(pyodbc.OperationalError, match="certificate verify failed"):
        sql.pyodbc_token(sql.token(APP_MI).encode("utf-16-le"))


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
