# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Known Azure, Entra and driver failures, mapped to what the operator should do.

The tutorial's troubleshooting table and AZURE_FACTS.md, turned into data: every module error passes through
:func:`remedy`, so the fix travels with the failure instead of living in a wiki.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# (pattern searched in "<error code> <message>", remedy). First match wins; keep the specific ones first.
REMEDIES = (
    (r"AADSTS70021|No matching federated identity record",
     "Entra found no federated credential for this token: the identity needs one whose issuer is exactly the "
     "cluster's OIDC issuer URL (trailing slash included) and whose subject is exactly "
     "system:serviceaccount:<namespace>:<service account> (aks_federation reads the issuer from the cluster)."),
    (r"AZURE_FEDERATED_TOKEN_FILE|WorkloadIdentityCredential.*(unavailable|missing)|Token acquisition timeout",
     "The pod got no workload identity: label the pod template azure.workload.identity/use=\"true\" and annotate its "
     "service account with azure.workload.identity/client-id (k8s_workload_identity); the cluster needs workload "
     "identity on (aks_federation)."),
    (r"AADSTS700024|not within its valid time range",
     "The client assertion is outside its validity window: sync the workload's clock (NTP)."),
    (r"AADSTS7000215|invalid_client",
     "The service principal's secret is wrong or expired: renew it in the credential the job uses "
     "(AZURE_CLIENT_SECRET, or AZURE_SECRET for AWX)."),
    (r"AADSTS700016|Application with identifier .* was not found in the directory",
     "Entra knows no application with that client id in this tenant: check client_id (a managed identity's client id, "
     "not its principal id) and tenant_id; a managed identity created moments ago can take a minute to replicate."),
    (r"Multiple user assigned identities exist",
     "The workload has several user-assigned identities: pass client_id (or set AZURE_CLIENT_ID) to pick one."),
    (r"no default identity is assigned|No User Assigned or Delegated Managed Identity found",
     "The workload has no default identity (several user-assigned ones, no system-assigned one): set the app setting "
     "AZURE_CLIENT_ID to the identity's client id (azure_mi_assignment client_id_app_setting: true) or pass client_id."),
    (r"Identity not found",
     "This host's managed identity endpoint does not serve that identity: attach it to the workload "
     "(azure_mi_assignment), or pass the client_id of one that is attached."),
    (r"no response from the IMDS endpoint|IMDS endpoint.*unreachable",
     "The managed identity endpoint did not answer: on an Azure VM, IMDS (169.254.169.254) must be reachable and "
     "bypass any proxy; for the local lab, start it (make lab-up) and source its .lab/env.sh."),
    (r"DefaultAzureCredential failed to retrieve a token|CredentialUnavailable",
     "No credential was found where this ran: on the control node set AZURE_CLIENT_ID/AZURE_TENANT_ID (+ secret or "
     "federated token file), run 'az login', or run where a managed identity is attached (for the local lab: "
     "source .lab/env.sh)."),
    (r"Identity not found|ManagedIdentityCredential.*unavailable|No managed identity endpoint",
     "No managed identity is attached where this ran: attach it to the workload (azure_mi_assignment) and run "
     "the task on the workload itself."),
    (r"InvalidAuthenticationToken|AuthenticationFailed",
     "ARM refused the token: check cloud_environment (or cloud_endpoints) matches the subscription's cloud."),
    (r"AuthorizationFailed|LinkedAuthorizationFailed",
     "The control identity lacks an Azure role on this scope: grant it (e.g. Managed Identity Contributor on the "
     "identity's resource group, Contributor on the server) and re-run."),
    (r"ScopeLocked",
     "A resource lock blocks the write: remove or relax the lock (read-only/delete) for the migration window."),
    (r"ResourceGroupNotFound",
     "The resource group does not exist in this subscription: check resource_group and subscription_id."),
    (r"ResourceNotFound|ParentResourceNotFound",
     "The resource does not exist: check its name, resource group and subscription."),
    (r"SubscriptionRequestsThrottled|TooManyRequests|\b429\b",
     "ARM throttled the subscription beyond the retry budget: lower forks/serial for this run or re-run later."),
    (r"PrincipalNotFound|Principal \S+ does not exist in the directory",
     "Entra has not replicated the new identity to where the role assignment is checked yet: wait a minute and re-run "
     "(the principal id, not the client id, is the one to assign)."),
    (r"operation in progress which requires exclusive lock|PreconditionFailed",
     "Another write on the Cosmos DB account is in progress (Cosmos allows one at a time): re-run; this collection "
     "serialises its own writes per account, so the other writer is outside this run."),
    (r"Expected path segment \[dbs\]",
     "The Cosmos DB scope was doubled: the Azure CLI prepends the account id to --scope, so give it relative "
     "(/dbs/appdb) there; cosmos_rbac takes either form (azure-cli#31422)."),
    (r"AnotherOperationInProgress|ConcurrentFederatedIdentityCredentialsWrites",
     "Another write on the same resource is in progress: re-run; writes on one resource are serialised."),
    (r"The access token has expired",
     "The token expired before the connection opened: acquire a fresh token per new connection."),
    (r"Login failed for user '<token-identified principal>'\. The server is not currently configured",
     "Azure SQL did not accept the token: it must be for the SQL audience of the server's cloud, from the server's "
     "tenant, and passed UTF-16-LE as connection attribute 1256 (the drivers of this collection do so)."),
    (r"Login failed for user '<token-identified principal>'",
     "Azure SQL has no user for this token's principal in that database: create it with sql_entra_user from the "
     "identity's client id (a user built from its principal id never matches), or make the principal the server's "
     "Entra administrator (sql_server_entra)."),
    (r"\b15023\b|already exists in the current database",
     "A database user with that name already exists with another SID (a SQL user, or one made from the principal id): "
     "drop or rename it, or let sql_entra_user replace a user it made; the SID must be the identity's client id."),
    (r"Azure Active Directory only authentication is enabled|Microsoft Entra only authentication is enabled",
     "The server accepts Entra logins only (Entra-only authentication): sign in with a token, or switch "
     "azure_ad_only_authentication off with sql_server_entra while the application still needs its password."),
    (r"\b33134\b|Directory Readers",
     "The server's identity cannot read Entra ID: create the user from its SID (sql_entra_user create_from: sid, "
     "the default), or give the server's identity the Directory Readers role."),
    (r"\b33159\b|Only connections established with Active Directory accounts",
     "Entra users can only be created by an Entra login: sign in with a token (the module's auth_source), not a "
     "SQL login."),
    (r"Data source name not found|Can't open lib|driver .* not found",
     "The ODBC driver is missing: install Microsoft ODBC Driver 18 for SQL Server (msodbcsql18) and unixODBC, or use "
     "driver: mssql-python."),
    (r"error verifying connection|error creating database object",
     "Vault could not log in to the database with the connection's administrator password: check the password "
     "supplied at rollback (connection_password_file or connection_password_env), and that the server accepts "
     "passwords again (pg_server_entra password_auth=true) and is reachable from Vault."),
    (r"password authentication failed for user",
     "PostgreSQL refused the login: for a managed identity, the role must be created with "
     "pgaadauth_create_principal_with_oid using the identity's principal (object) id, and the user name must be "
     "that role's name."),
    (r"Updating an existing principal isn't supported",
     "That object id is already a PostgreSQL principal, for example a server Entra administrator set through ARM: an "
     "object id cannot be both; give the application its own identity, or remove it from the administrators."),
    (r"function pgaadauth_\w+.* does not exist",
     "Microsoft Entra authentication is not enabled on this server: enable it through authConfig "
     "(pg_server_entra, active_directory_auth: true) - not with azure.extensions or CREATE EXTENSION."),
    (r"permission denied to create role|must be member of role|permission denied for function pgaadauth",
     "Connect as a Microsoft Entra administrator of the server (pg_server_entra administrators) to create principals."),
    (r"schema .* does not exist",
     "The schema does not exist in this database: create it with the application's migrations first, or fix the grant."),
    (r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|root certificate file|SSL Provider",
     "TLS verification failed: trust the server's CA (PostgreSQL: ssl_root_cert or PGSSLROOTCERT; Azure SQL drivers: "
     "SSL_CERT_FILE, and connect by a DNS name on the certificate, not an IP address; ARM: REQUESTS_CA_BUNDLE)."),
    (r"Connection refused|could not connect to server|timeout expired",
     "The server is not reachable from where this ran: run database tasks on a host inside the server's network "
     "(db_admin_host) and check firewall rules / private endpoints."),
    (r"does not have required RBAC permissions to perform action",
     "Cosmos DB data access needs a data-plane role: give the identity's principal id Data Reader or Data Contributor "
     "on the account, database or container (cosmos_rbac). Azure RBAC roles such as Contributor give no data access, "
     "and database and container names are case-sensitive in the scope."),
    (r"Local Authorization is disabled",
     "The account accepts Microsoft Entra tokens only (disableLocalAuth): connect with a token credential, or switch "
     "keys back on with cosmos_account_entra disable_local_auth=false while rolling back."),
    (r"input authorization token can't serve the request",
     "Cosmos DB refused the key: it is wrong, or the account's keys were regenerated. Read the current key from ARM "
     "(listKeys), or better, use the application's managed identity."),
    (r"principal ID \[[^\]]*\] was not found",
     "Cosmos DB does not know this principal: give the principal (object) id, not the client id. A managed identity "
     "created moments ago can take minutes to replicate: re-run (cosmos_rbac retries for principal_wait_timeout)."),
    (r"permission denied|\bForbidden\b",
     "Permission denied: in PostgreSQL, connect as a Microsoft Entra administrator that is a member of the objects' "
     "owner (admin_member_of); in Vault, check the token's policy."),
)


ERROR_TEXT_MAX = 1000  # characters of a service's error a message repeats (a server may echo a huge input back)


def error_text(exc, limit=ERROR_TEXT_MAX):
    """A one-line, secret-free description of an exception: ARM's error code and message when present; at most
    ``limit`` characters and a count of the rest (``limit=None``: all of it)."""
    if exc is None:
        return ""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    message = " ".join(str(message).split())
    text = "%s: %s" % (code, message) if code and code not in message else message
    if limit is not None and len(text) > limit:
        return "%s... (%d more characters)" % (text[:limit], len(text) - limit)
    return text


def remedy(exc_or_text):
    """The remedy for an exception or error text, or None when the failure is not a known one."""
    text = exc_or_text if isinstance(exc_or_text, str) else error_text(exc_or_text)
    for pattern, advice in REMEDIES:
        if re.search(pattern, text, re.IGNORECASE):
            return advice
    return None
