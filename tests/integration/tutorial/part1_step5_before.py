# The tutorial's Part 1, Step 5 "Before (Vault dynamic secrets)" code, ../shared/seed/000_c4600e33cc2e06e4.txt, as
# published. Not run: secrets_scan's tests and the lab's "webapp" source tree (inventories/lab) read it as what an
# application still on Vault looks like.
import hvac
import pyodbc

# Authenticate to Vault
vault = hvac.Client(url='https://vault:8200')
vault.auth.approle.login(role_id='xxx', secret_id='yyy')

# Get dynamic SQL credentials
creds = vault.secrets.database.generate_credentials('webapp-sql-role')
username = creds['data']['username']
password = creds['data']['password']

# Connect with Vault-generated credentials
conn_str = (
    f"DRIVER={{ODBC Driver 18 for SQL Server}};"
    f"SERVER=sql-prod.database.windows.net;"
    f"DATABASE=appdb;"
    f"UID={username};"
    f"PWD={password};"
    f"Encrypt=yes;"
)
conn = pyodbc.connect(conn_str)
