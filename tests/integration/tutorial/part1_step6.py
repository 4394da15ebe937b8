# The tutorial's Part 1, Step 6 ("Test the connection", less its shebang line), ../shared/seed/000_c4600e33cc2e06e4.txt, as published, with its
# indentation restored. tests/integration/test_migrate_playbook.py changes only SERVER (to the lab server's name and
# port) before running it; the lab's certificate is trusted through SSL_CERT_FILE, outside the code.
"""Test managed identity SQL connection."""
from azure.identity import DefaultAzureCredential
import pyodbc
import struct

SERVER = "sql-prod.database.windows.net"
DATABASE = "appdb"

print(f"Testing connection to {SERVER}/{DATABASE}...")

try:
    credential = DefaultAzureCredential()
    token = credential.get_token("https://database.windows.net/.default")
    print(f"Token acquired (expires: {token.expires_on})")

    token_bytes = token.token.encode("UTF-16-LE")
    token_struct = struct.pack(f'<I{len(token_bytes)}s', len(token_bytes), token_bytes)

    conn = pyodbc.connect(
        f"DRIVER={{ODBC Driver 18 for SQL Server}};"
        f"SERVER={SERVER};"
        f"DATABASE={DATABASE};"
        f"Encrypt=yes;",
        attrs_before={1256: token_struct}
    )

    cursor = conn.cursor()
    cursor.execute("SELECT CURRENT_USER AS username, @@VERSION AS version")
    row = cursor.fetchone()
    print(f"Connected as: {row.username}")
    print(f"SQL Server: {row.version[:50]}...")
    print("SUCCESS: Managed identity connection works.")
    conn.close()
except Exception as e:
    print(f"FAILED: {e}")
