# The tutorial's Part 3, Step 2 "Before (Vault-stored primary key)" code, ../shared/seed/000_c4600e33cc2e06e4.txt, as
# published. Not run: secrets_scan's tests read it as what an application still on Vault looks like.
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
