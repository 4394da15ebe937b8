# The tutorial's Part 2, Step 3 "Update application code" (PostgreSQL), ../shared/seed/000_c4600e33cc2e06e4.txt, as
# published. Not run: secrets_scan's tests read it as an application that passes a token, not a password.
from azure.identity import DefaultAzureCredential
import psycopg2

credential = DefaultAzureCredential()
token = credential.get_token("https://ossrdbms-aad.database.windows.net/.default")

conn = psycopg2.connect(
    host="pg-prod.postgres.database.azure.com",
    port=5432,
    database="appdb",
    user="mi-webapp-sql",  # Managed identity name
    password=token.token,  # Token as password
    sslmode="require"
)
cursor = conn.cursor()
cursor.execute("SELECT current_user, version()")
row = cursor.fetchone()
print(f"Connected as: {row[0]}")
print(f"PostgreSQL: {row[1][:50]}...")
