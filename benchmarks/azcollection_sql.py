"""The tutorial's Part 1 step 3 for benchmarks/azcollection.yml, which no azure.azcollection module does: a contained
database user for a managed identity and its roles, through pyodbc and Microsoft ODBC Driver 18 with an Entra token.

``python azcollection_sql.py HOST PORT DATABASE USER CLIENT_ID ROLES`` (ROLES comma-separated); the caller's access
token for https://database.windows.net/ comes in ``AZC_SQL_ACCESS_TOKEN`` (never an argument, never printed). Prints
``changed`` or ``ok``. The user is created with ``WITH SID = <client id>, TYPE = E``: a managed identity caller cannot
have the server look a name up in the directory (``FROM EXTERNAL PROVIDER`` needs Directory Readers).
"""
import os
import struct
import sys
import uuid

import pyodbc

SQL_COPT_SS_ACCESS_TOKEN = 1256


def main(host, port, database, user, client_id, roles):
    token = os.environ["AZC_SQL_ACCESS_TOKEN"].encode("utf-16-le")
    packed = struct.pack(f"<I{len(token)}s", len(token), token)
    conn = pyodbc.connect(f"DRIVER={{ODBC Driver 18 for SQL Server}};SERVER={host},{port};DATABASE={database};"
                          "Encrypt=yes;", attrs_before={SQL_COPT_SS_ACCESS_TOKEN: packed}, autocommit=True, timeout=30)
    cursor = conn.cursor()
    quoted = "[" + user.replace("]", "]]") + "]"
    changed = False
    if cursor.execute("SELECT 1 FROM sys.database_principals WHERE name = ?", user).fetchone() is None:
        sid = "0x" + uuid.UUID(client_id).bytes_le.hex().upper()
        cursor.execute(f"CREATE USER {quoted} WITH SID = {sid}, TYPE = E")
        changed = True
    for role in filter(None, roles.split(",")):
        member = cursor.execute(
            "SELECT 1 FROM sys.database_role_members m JOIN sys.database_principals r ON r.principal_id = "
            "m.role_principal_id JOIN sys.database_principals u ON u.principal_id = m.member_principal_id "
            "WHERE r.name = ? AND u.name = ?", role, user).fetchone()
        if member is None:
            cursor.execute(f"ALTER ROLE [{role.replace(']', ']]')}] ADD MEMBER {quoted}")
            changed = True
    conn.close()
    print("changed" if changed else "ok")


if __name__ == "__main__":
    main(*sys.argv[1:7])
