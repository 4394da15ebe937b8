# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Azure SQL Database connections with an Entra access token, T-SQL name quoting, SIDs and error numbers.

Sources:
- Access tokens: the ODBC driver's ``SQL_COPT_SS_ACCESS_TOKEN`` (connection attribute 1256) takes a 4-byte
  little-endian length followed by the token in UTF-16-LE, with no UID/PWD/Authentication in the connection string
  (https://learn.microsoft.com/sql/connect/odbc/using-azure-active-directory#authenticating-with-an-access-token).
- Names: ``QUOTENAME`` rules (brackets, ``]`` doubled, at most 128 characters: ``sysname``).
- SIDs: ``CREATE USER ... WITH SID = 0x..., TYPE = E|X`` takes the principal's GUID as SQL Server stores a
  ``uniqueidentifier`` (the first three groups little-endian), built from the client id of applications and managed
  identities and from the object id of users and groups.

Values are always bound parameters; the only things spliced into statements are names through :func:`quote_name` and
SIDs through :func:`sid_literal`, which build them from validated input.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import struct
import uuid

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown

# Options of doc fragment csa_inabox.managed_identity.sqlserver.
SERVER_ARGUMENT_SPEC = dict(
    host=dict(type="str", required=True),
    port=dict(type="int", default=1433),
    driver=dict(type="str", default="auto", choices=["auto", "pyodbc", "mssql-python"]),
    odbc_driver=dict(type="str", default="ODBC Driver 18 for SQL Server"),
    encrypt=dict(type="str", default="yes", choices=["yes", "strict"]),
    trust_server_certificate=dict(type="bool", default=False),
    connect_timeout=dict(type="int", default=30),
)

SQL_COPT_SS_ACCESS_TOKEN = 1256

# Principals every database has, which no module of this collection creates, drops or alters (compared casefolded).
BUILT_IN_USERS = ("dbo", "guest", "information_schema", "sys")
FIXED_ROLES = ("public", "db_owner", "db_accessadmin", "db_securityadmin", "db_ddladmin", "db_backupoperator",
               "db_datareader", "db_datawriter", "db_denydatareader", "db_denydatawriter")
MAX_NAME = 128  # sysname

# Entra principal kinds, and which of their ids SQL Server keys the user on.
PRINCIPAL_TYPES = {
    "managed_identity": ("E", "client_id"),
    "application": ("E", "client_id"),
    "user": ("E", "object_id"),
    "group": ("X", "object_id"),
}

# SQL Server error numbers this collection reacts to, with the text that identifies each when a driver (mssql-python)
# reports the message without its number.
ERRORS = {
    18456: r"Login failed for user",
    15023: r"already exists in the current database",
    15063: r"already has an account under a different user name",
    15151: r"because it does not exist or you do not have permission",
    15247: r"does not have permission to perform this action",
    33130: r"could not be found or this principal type is not supported",
    33134: r"could not be resolved",
    33159: r"Only connections established with Active Directory accounts",
}


class DriverMissing(Exception):
    """No usable SQL Server driver; the message says what to install."""


def pack_token(token):
    """The value of connection attribute 1256 for ``token`` (str): UINT32 LE byte length + UTF-16-LE bytes."""
    raw = token.encode("utf-16-le")
    return struct.pack("<I", len(raw)) + raw


def quote_name(name):
    """``name`` as ``QUOTENAME(name)`` returns it: ``[...]`` with ``]`` doubled. ValueError when empty or too long."""
    length = len((name or "").encode("utf-16-le")) // 2  # sysname counts UTF-16 code units
    if not length or length > MAX_NAME:
        raise ValueError("a SQL Server name must have 1 to %d characters (UTF-16 code units), got %d"
                         % (MAX_NAME, length))
    if "\x00" in name:
        raise ValueError("a SQL Server name cannot contain NUL")
    return "[" + name.replace("]", "]]") + "]"


def sid_of(guid):
    """The 16-byte SID of an Entra principal whose id is ``guid`` (uniqueidentifier byte order). ValueError if not a GUID."""
    return uuid.UUID(str(guid)).bytes_le


def sid_literal(guid):
    """``0x`` + the SID in upper-case hex, the binary literal ``WITH SID =`` takes."""
    return "0x" + sid_of(guid).hex().upper()


def guid_of_sid(sid):
    """The GUID whose SID is ``sid`` (16 bytes), or None for SIDs that are not Entra ones (SQL users, dbo)."""
    sid = bytes(sid or b"")
    return str(uuid.UUID(bytes_le=sid)) if len(sid) == 16 else None


def error_number(exc):
    """The SQL Server error number in a driver exception: from ``(NNNN)`` in pyodbc's text, else matched on the text."""
    text = str(exc)
    numbers = [int(n) for n in re.findall(r"\((\d{3,5})\)", text)]
    for number in numbers:
        if number in ERRORS:
            return number
    for number, pattern in ERRORS.items():
        if re.search(pattern, text):
            return number
    return numbers[0] if numbers else None


def _braced(value):
    """A connection-string value in braces, so that ``;``, ``=`` and ``}`` in it survive."""
    return "{" + str(value).replace("}", "}}") + "}"


def connection_string(host, port, database, odbc_driver=None, encrypt="yes", trust_server_certificate=False):
    """The ODBC-style connection string, for pyodbc when ``odbc_driver`` is given, else for mssql-python.

    No credentials: the token goes as attribute 1256. The login timeout is the drivers' ``timeout`` argument, which
    both accept, where a connection-string keyword is not.
    """
    parts = ["SERVER=tcp:%s,%d" % (host, port), "DATABASE=%s" % _braced(database), "Encrypt=%s" % encrypt,
             "TrustServerCertificate=%s" % ("yes" if trust_server_certificate else "no")]
    if odbc_driver:  # pyodbc; mssql-python refuses DRIVER and APP (it sets both itself)
        parts = ["DRIVER=%s" % _braced(odbc_driver)] + parts + ["APP=csa_inabox.managed_identity"]
    return ";".join(parts)


def choose_driver(driver="auto", odbc_driver="ODBC Driver 18 for SQL Server"):
    """``(name, module)`` of the driver to use: ``pyodbc`` (with ``odbc_driver`` installed) or ``mssql-python``.

    ``auto`` prefers pyodbc when the ODBC driver is registered, then mssql-python. Raises :class:`DriverMissing`.
    """
    problems = []
    if driver in ("auto", "pyodbc"):
        try:
            import pyodbc  # pylint: disable=import-outside-toplevel
            if odbc_driver in pyodbc.drivers():
                return "pyodbc", pyodbc
            problems.append("pyodbc is installed but unixODBC knows no driver named %r (install msodbcsql18, or "
                            "register it in odbcinst.ini)" % odbc_driver)
        except ImportError as exc:
            problems.append("pyodbc cannot be imported (%s): pip install pyodbc, with unixODBC (apt-get install "
                            "unixodbc) and Microsoft ODBC Driver 18 for SQL Server (msodbcsql18)" % exc)
    if driver in ("auto", "mssql-python"):
        try:
            import mssql_python  # pylint: disable=import-outside-toplevel
            return "mssql-python", mssql_python
        except ImportError as exc:
            problems.append("mssql-python cannot be imported (%s): pip install mssql-python, which needs no system "
                            "ODBC install" % exc)
    raise DriverMissing("no SQL Server driver for driver=%s: %s" % (driver, "; ".join(problems)))


def connect(host, port, database, token, driver="auto", odbc_driver="ODBC Driver 18 for SQL Server", encrypt="yes",
            trust_server_certificate=False, connect_timeout=30):
    """A DB-API connection (autocommit off) signed in with the access token ``token``.

    Returns ``(connection, driver name)``. Raises :class:`DriverMissing`, or the driver's own error (pyodbc.Error,
    mssql_python.Error) when the server refuses.
    """
    name, lib = choose_driver(driver, odbc_driver)
    conn_str = connection_string(host, port, database, odbc_driver if name == "pyodbc" else None, encrypt,
                                 trust_server_certificate)
    attrs = {SQL_COPT_SS_ACCESS_TOKEN: pack_token(token)}
    conn = lib.connect(conn_str, attrs_before=attrs, timeout=connect_timeout, autocommit=False)
    return conn, name


def connect_with(params, token, database=None):
    """:func:`connect` with a module's options (those of :data:`SERVER_ARGUMENT_SPEC`) and ``database`` (default
    ``params["database"]``)."""
    return connect(params["host"], params["port"], database or params["database"], token, params["driver"],
                   params["odbc_driver"], params["encrypt"], params["trust_server_certificate"],
                   params["connect_timeout"])


def sign_in_or_fail(mod):
    """For read-only modules: check the connection options, sign in to ``params["database"]`` with the module's own
    token, and return ``(connection, driver name, "host:port/database")``; any problem fails the module
    (``mod`` is an :class:`MIModule`)."""
    params = mod.params
    problem = option_problem(params)
    if problem:
        mod.fail(problem)
    target = "%s:%s/%s" % (params["host"], params["port"], params["database"])
    try:
        conn, driver = connect_with(params, mod.token("sql"))
    except DriverMissing as exc:
        mod.fail(str(exc))
    except Exception as exc:  # the driver's own error types: pyodbc.Error, mssql_python.Error
        mod.fail("sign-in to %s failed" % target, exc)
    return conn, driver, target


def driver_errors(lib_name):
    """The exception base class of a driver, for ``except``."""
    if lib_name == "pyodbc":
        import pyodbc  # pylint: disable=import-outside-toplevel
        return pyodbc.Error
    import mssql_python  # pylint: disable=import-outside-toplevel
    return mssql_python.Error


# Catalog reads (parameterised). Names compare under the database's collation, as the server does.
USER_BY_NAME = ("SELECT name, type, sid, authentication_type_desc, principal_id FROM sys.database_principals "
                "WHERE name = ?")
USER_BY_SID = "SELECT name, type FROM sys.database_principals WHERE sid = ?"
ROLES_OF = ("SELECT r.name FROM sys.database_role_members AS m JOIN sys.database_principals AS r "
            "ON r.principal_id = m.role_principal_id WHERE m.member_principal_id = ?")
ROLE_BY_NAME = "SELECT name FROM sys.database_principals WHERE type = 'R' AND name = ?"


def _tokens(query):
    """The lexical tokens of a T-SQL text as SQL Server splits it, skipping white space and comments.

    Yields ``(kind, text)`` with kind ``string`` ('..' with '' inside, N'..' too), ``name`` ([..] with ]] inside, or
    ".." with "" inside), ``word``, ``number`` (digits: ``1DROP`` is ``1`` then ``DROP``, as the server reads it) or
    ``symbol``. Block comments nest, as in T-SQL; a line comment ends at a line feed. Raises ValueError for an
    unterminated string, name or comment, and for a carriage return that does not start a CRLF (where drivers and
    servers may disagree on where a comment ends).
    """
    if re.search("\r(?!\n)", query):
        raise ValueError("a carriage return outside a CRLF line end")
    i, end = 0, len(query)
    closers = {"'": "'", "[": "]", '"': '"'}
    while i < end:
        char = query[i]
        if char.isspace():
            i += 1
        elif query.startswith("--", i):
            newline = query.find("\n", i)
            i = end if newline < 0 else newline + 1
        elif query.startswith("/*", i):
            depth, i = 1, i + 2
            while depth:
                if i >= end:
                    raise ValueError("an unterminated /* comment")
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif char in closers or (char in "Nn" and query[i + 1:i + 2] == "'"):
            start = i
            if char in "Nn":
                i += 1
            closer = closers[query[i]]
            i += 1
            while True:
                close = query.find(closer, i)
                if close < 0:
                    raise ValueError("an unterminated %s...%s" % (query[start], closer))
                if query[close + 1:close + 2] == closer:  # doubled: an escaped closer
                    i = close + 2
                    continue
                i = close + 1
                break
            yield ("string" if closer == "'" else "name"), query[start:i]
        elif char.isdigit():
            start = i
            while i < end and (query[i].isdigit() or query[i] == "."):
                i += 1
            yield "number", query[start:i]
        elif char.isalpha() or char in "_@#":
            start = i
            while i < end and (query[i].isalnum() or query[i] in "_@#$"):
                i += 1
            yield "word", query[start:i]
        else:
            yield "symbol", char
            i += 1


# Words that start a T-SQL statement other than a query (or make a query write: INTO, NEXT VALUE FOR), and the
# rowset functions that run a statement elsewhere. T-SQL needs no separator between statements, so a second statement
# can only be told by its first word: a query holding one of these as a bare word is refused (quote a column of that
# name: [end]).
STATEMENT_WORDS = frozenset("""
ADD ALTER BACKUP BEGIN BREAK BULK CHECKPOINT CLOSE COMMIT CONTINUE CREATE DBCC DEALLOCATE DECLARE DELETE DENY DISABLE
DROP ENABLE END EXEC EXECUTE FETCH GET GO GOTO GRANT IF INSERT INTO KILL MERGE MOVE NEXT OPEN OPENDATASOURCE OPENQUERY
OPENROWSET OPENXML PRINT RAISERROR READTEXT RECEIVE RECONFIGURE RESTORE RETURN REVERT REVOKE ROLLBACK SAVE SEND SET
SETUSER SHUTDOWN THROW TRUNCATE UPDATE UPDATETEXT USE WAITFOR WHILE WRITETEXT
""".split())


def read_only_problem(query):
    """Why ``query`` is not one read-only query (a str), or None.

    The text is split as SQL Server splits it (:func:`_tokens`: strings, quoted names, nested comments, ``1DROP`` as
    two tokens). It must start with SELECT or WITH, hold no ``;`` but a trailing one, no ODBC escape and no bare word
    of :data:`STATEMENT_WORDS`.
    """
    try:
        tokens = list(_tokens(query))
    except ValueError as exc:
        return "it has %s" % exc
    while tokens and tokens[-1] == ("symbol", ";"):
        tokens.pop()
    if not tokens or tokens[0][0] != "word" or tokens[0][1].upper() not in ("SELECT", "WITH"):
        return "it must be one SELECT (or WITH ... SELECT) statement"
    for kind, text in tokens:
        if kind == "symbol" and text == ";":
            return "it must be a single statement"
        if kind == "symbol" and text in "{}":
            return "ODBC escape sequences ({...}) are not accepted"
        if kind == "word" and text.upper() in STATEMENT_WORDS:
            return ("it contains %s, which starts another statement or writes (quote a column of that name: [%s])"
                    % (text.upper(), text))
    return None


HOST_FORBIDDEN = re.compile(r"[;,={}\s]")


def option_problem(params):
    """What is wrong with the connection options of :data:`SERVER_ARGUMENT_SPEC` and the module's ``database`` (a
    str), or None."""
    if not params["host"] or HOST_FORBIDDEN.search(params["host"]) or has_control(params["host"]) or \
            len(params["host"]) > 253:
        return ("host %s must be a host name or address, without ';', ',', '=', braces or spaces (give the port in "
                "port)" % shown(params["host"]))
    if not 0 < params["port"] < 65536:
        return "port must be 1 to 65535, got %d" % params["port"]
    if params["connect_timeout"] < 1:
        return "connect_timeout must be at least 1 second"
    if params.get("database") is not None:
        try:
            quote_name(params["database"])
        except ValueError as exc:  # a NUL would end the connection string's value early: another database
            return "database %s: %s" % (shown(params["database"]), exc)
    return None
