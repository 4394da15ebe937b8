import struct

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import sqlserver as sql

CLIENT_ID = "00112233-4455-6677-8899-aabbccddeeff"


def test_sid_is_the_uniqueidentifier_byte_order():
    # Independently: SQL Server stores a uniqueidentifier with its first three groups little-endian, so
    # CAST(CAST('00112233-4455-6677-8899-aabbccddeeff' AS uniqueidentifier) AS varbinary(16)) is 0x33221100 5544 7766 ...
    assert sql.sid_literal(CLIENT_ID) == "0x33221100554477668899AABBCCDDEEFF"
    assert sql.sid_of(CLIENT_ID.upper()) == bytes.fromhex("33221100554477668899aabbccddeeff")
    assert sql.guid_of_sid(sql.sid_of(CLIENT_ID)) == CLIENT_ID
    assert sql.guid_of_sid(b"\x01") is None  # dbo's SID is not an Entra one


def test_sid_of_rejects_what_is_not_a_guid():
    with pytest.raises(ValueError):
        sql.sid_of("mi-orders-api")


def test_access_token_attribute_is_length_prefixed_utf16le():
    packed = sql.pack_token("eyJé")
    (length,) = struct.unpack("<I", packed[:4])
    assert length == 8 and packed[4:] == "eyJé".encode("utf-16-le")


@pytest.mark.parametrize("name, quoted", [
    ("mi-app", "[mi-app]"),
    ("a]b", "[a]]b]"),
    ("x'; DROP USER [dbo]; --", "[x'; DROP USER [dbo]]; --]"),
    ("Zoë 🚀", "[Zoë 🚀]"),
])
def test_quote_name_follows_quotename(name, quoted):
    assert sql.quote_name(name) == quoted


@pytest.mark.parametrize("name", ["", "x" * 129, "a\x00b"])
def test_quote_name_refuses_what_quotename_cannot_quote(name):
    with pytest.raises(ValueError):
        sql.quote_name(name)


@pytest.mark.parametrize("text, number", [
    ("[28000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed for user "
     "'<token-identified principal>'. (18456) (SQLDriverConnect)", 18456),
    ("Login failed for user '<token-identified principal>'.", 18456),  # mssql-python: text, no number
    ("[42000] User, group, or role 'x' already exists in the current database. (15023) (SQLExecDirectW)", 15023),
    ("Cannot alter the role 'nope', because it does not exist or you do not have permission.", 15151),
    ("something else entirely", None),
])
def test_error_number_from_either_driver(text, number):
    assert sql.error_number(Exception(text)) == number


def test_connection_string_braces_values():
    text = sql.connection_string("sql-lab.database.windows.net", 1433, "app;db}", "ODBC Driver 18 for SQL Server")
    assert "DATABASE={app;db}}}" in text and "DRIVER={ODBC Driver 18 for SQL Server}" in text
    assert "UID" not in text and "PWD" not in text


@pytest.mark.parametrize("query, ok", [
    ("SELECT CURRENT_USER", True),
    ("SELECT count(*) FROM sales.orders WHERE note = 'DROP; INSERT ) ('", True),
    ("SELECT [delete], [end] FROM [x;y)] ORDER BY 1", True),
    ("SELECT 1 /* DROP */ -- COMMIT;", True),
    ("WITH t AS (SELECT 1 AS n) SELECT n FROM t;", True),
    ("SELECT 1 AS go", False),  # GO is a bare statement word: quote it
    ("SELECT 1; DROP USER x", False),
    ("SELECT 1 DROP USER x", False),  # no separator needed between T-SQL statements
    ("SELECT 1DROP USER [victim] SELECT 1COMMIT", False),  # 1DROP is 1 then DROP
    ("SELECT 1 /* /* */ ' */ DROP USER [x] COMMIT --' */", False),  # block comments nest
    ("WITH t AS (SELECT 1 AS n) DELETE FROM t", False),
    ("SELECT * INTO copy FROM orders", False),
    ("SELECT NEXT VALUE FOR seq", False),
    ("SELECT * FROM OPENQUERY(srv, 'DELETE FROM t')", False),
    ("EXEC sp_who", False),
    ("COMMIT", False),
    ("SELECT 'unterminated", False),
    ("SELECT 1 /* /* nested */ still comment", False),
    ("SELECT 1 --x\rDROP USER y", False),  # where a lone CR ends a comment is not agreed
    ("SELECT {fn user()}", False),  # ODBC escapes are rewritten by the driver
])
def test_read_only_query_guard(query, ok):
    assert (sql.read_only_problem(query) is None) == ok


@pytest.mark.parametrize("host, ok", [
    ("sql-prod.database.windows.net", True), ("127.0.0.1", True),
    ("localhost,1434", False), ("x;TrustServerCertificate=yes", False), ("a b", False), ("{x}", False), ("", False),
])
def test_host_cannot_carry_connection_string_keywords(host, ok):
    params = dict(host=host, port=1433, connect_timeout=30)
    assert (sql.option_problem(params) is None) == ok


def test_ports_and_timeouts_are_checked():
    assert "port" in sql.option_problem(dict(host="h", port=70000, connect_timeout=30))
    assert "connect_timeout" in sql.option_problem(dict(host="h", port=1433, connect_timeout=0))


def test_names_count_utf16_code_units():
    sql.quote_name("y" * 128)
    with pytest.raises(ValueError):
        sql.quote_name("y" * 127 + "\U0001F600")  # one emoji is two UTF-16 code units
