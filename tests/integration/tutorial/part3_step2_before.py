# The tutorial's Part 3, Step 2 "Before (Vault-stored primary key)" code, ../shared/seed/000_c4600e33cc2e06e4.txt, as
# published, with its indentation restored. tests/integration/test_rollback.py changes only the addresses, the AppRole
# ids and the KV path (to the lab's) before running it on the catalog API's VM, from stdin (the secret id is on no
# command line). Building the client reads the account with the key, so it fails when the key is refused.
# secrets_scan's tests also read it, as what an application still on Vault looks like.
import hvac
from azure.cosmos import CosmosClient

vault = hvac.Client(url='https://vault:8200')
vault.auth.approle.login(role_id='xxx', secret_id='yyy')
secret = vault.secrets.kv.v2.read_secret_version(path='cosmos/primary-key')
primary_key = secret['data']['data']['key']
client = CosmosClient(
    url='https://cosmos-prod.documents.azure.com:443/',
    credential=primary_key
)
