"""The tutorial's Part 1 step 3 for one application, as an operator runs it with pyodbc (sqlcmd is not installable
here): connected to the database as the Entra admin, create the managed identity's user, add it to its roles, and
read it back.

    az account get-access-token --resource https://database.windows.net/ --query accessToken -o tsv |
        python tutorial_sql.py --host H --port P --database D --user NAME --client-id GUID --roles r1,r2

The token comes on stdin and goes to the driver as the tutorial packs it (attribute 1256: UINT32 length + UTF-16-LE),
never to the output. Deviation from the tutorial (/work/shared/AZURE_FACTS.md): ``CREATE USER ... FROM EXTERNAL
PROVIDER`` needs a directory look-up the server cannot do for a managed identity caller without Directory Readers;
``WITH SID`` (the identity's client id in SQL Server's byte order) and ``TYPE = E`` needs none. Needs ``ODBCSYSINI`` /
``ODBCINSTINI`` naming "ODBC Driver 18 for SQL Server" and ``SSL_CERT_FILE`` trusting the server (the lab's env.sh).
Prints the user's name, type and authentication type; exits non-zero on any error.
"""
from __future__ import annotations

import argparse
import struct
import sys
import uuid

import pyodbc

SQL_COPT_SS_ACCESS_TOKEN = 1256


def quote(name: str) -> str:
    return "[" + name.replace("]", "]]") + "]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    for option in ("--host", "--database", "--user", "--client-id", "--roles"):
        parser.add_argument(option, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    token_bytes = sys.stdin.readline().strip().encode("UTF-16-LE")
    token_struct = struct.pack(f"<I{len(token_bytes)}s", len(token_bytes), token_bytes)
    conn = pyodbc.connect(f"DRIVER={{ODBC Driver 18 for SQL Server}};SERVER=tcp:{args.host},{args.port};"
                          f"DATABASE={args.database};Encrypt=yes;",
                          attrs_before={SQL_COPT_SS_ACCESS_TOKEN: token_struct}, autocommit=True)
    sid = "0x" + uuid.UUID(args.client_id).bytes_le.hex()
    cursor = conn.cursor()
    cursor.execute(f"CREATE USER {quote(args.user)} WITH SID = {sid}, TYPE = E")
    for role in args.roles.split(","):
        cursor.execute(f"ALTER ROLE {quote(role)} ADD MEMBER {quote(args.user)}")
    cursor.execute("SELECT name, type_desc, authentication_type_desc FROM sys.database_principals WHERE name = ?",
                   args.user)
    print(*cursor.fetchone())
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
