"""Remedies for the tutorial's troubleshooting table and the failures of AZURE_FACTS.md, fed the error text as the
service or driver words it (the module error then carries the remedy)."""
import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import diagnose


@pytest.mark.parametrize("text, words", [
    # The tutorial's troubleshooting table, row by row.
    ("ClientAuthenticationError: AADSTS700024: Client assertion is not within its valid time range. Current time: "
     "2026-12-01T05:00:00Z, assertion valid from 2026-12-01T05:10:00Z", "NTP"),
    ("('28000', \"[28000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed for user "
     "'<token-identified principal>'. (18456) (SQLDriverConnect)\")", "sql_entra_user"),
    ("DefaultAzureCredential failed to retrieve a token from the included credentials.\nAttempted credentials:\n\t"
     "EnvironmentCredential: EnvironmentCredential authentication unavailable.", "az login"),
    ("WorkloadIdentityCredential authentication unavailable. The workload options are not fully configured. "
     "Missing required environment variable AZURE_FEDERATED_TOKEN_FILE", "azure.workload.identity/use"),
    ("ERROR:  function pgaadauth_create_principal(unknown, boolean, boolean) does not exist\nHINT:  No function "
     "matches the given name and argument types.", "authConfig"),
    ("(Forbidden) Request blocked by Auth cosmos-prod : Request is blocked because principal "
     "[5d0e3c2a-1b4f-4e6a-9c8d-7f6e5d4c3b2a] does not have required RBAC permissions to perform action "
     "[Microsoft.DocumentDB/databaseAccounts/readMetadata] on resource [/]. ActivityId: x, Substatus: 5301",
     "data-plane role"),
    # AZURE_FACTS.md
    ("(ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity) Too many Federated Identity "
     "Credentials are written concurrently for the managed identity", "serialised"),
    ("Operation returned an invalid status 'Precondition Failed'\nContent: {\"code\":\"PreconditionFailed\",\"message\":"
     "\"There is already an operation in progress which requires exclusive lock on this service cosmos-prod. Please "
     "retry the operation after sometime.\"}", "one at a time"),
    ("ERROR: (BadRequest) Expected path segment [dbs] at position 1 but found [subscriptions]", "relative"),
    ("ERROR:  Updating an existing principal isn't supported", "cannot be both"),
    ("[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]User, group, or role 'mi-webapp-sql' already "
     "exists in the current database. (15023) (SQLExecDirectW)", "SID"),
    ("ManagedIdentityCredential authentication unavailable, no response from the IMDS endpoint. invalid_request: "
     "Unable to load the proper Managed Identity. no default identity is assigned", "AZURE_CLIENT_ID"),
    ("AADSTS700016: Application with identifier '3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b' was not found in the "
     "directory 'Contoso'.", "principal id"),
    ("(PrincipalNotFound) Principal 5d0e3c2a1b4f4e6a9c8d7f6e5d4c3b2a does not exist in the directory "
     "7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11.", "replicated"),
])
def test_failures_carry_their_remedy(text, words):
    advice = diagnose.remedy(text)
    assert advice and words in advice, advice
