# The tutorial's Part 3, Step 2 "After (managed identity)" code, ../shared/seed/000_c4600e33cc2e06e4.txt, as published,
# with its indentation restored. tests/integration/test_migrate_playbook.py changes only the url (to the lab account's
# endpoint) before running it on the catalog API's VM.
from azure.identity import DefaultAzureCredential
from azure.cosmos import CosmosClient

credential = DefaultAzureCredential()
client = CosmosClient(
    url='https://cosmos-prod.documents.azure.com:443/',
    credential=credential  # Managed identity -- no key needed
)
database = client.get_database_client('appdb')
container = database.get_container_client('items')

# Query data
items = list(container.query_items(
    query="SELECT * FROM c WHERE c.category = @cat",
    parameters=[{"name": "@cat", "value": "electronics"}],
    enable_cross_partition_query=True
))
print(f"Found {len(items)} items")
