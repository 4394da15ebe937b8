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
    ("SELECT count(*) FROM sales.orders WHERE note = 'DROP; INSERT'", True),
    ("WITH t AS (SELECT 1 AS n) SELECT n FROM t;", True),
    ("SELECT [delete] FROM [x;y]", True),
    ("SELECT 1; DROP USER x", False),
    ("SELECT * INTO copy FROM orders", False),
    ("EXEC sp_who", False),
    ("COMMIT", False),
    ("SELECT 1 /* ok */ -- fine", True),
])
def test_read_only_query_guard(query, ok):
    assert (sql.read_only_problem(query) is None) == ok
