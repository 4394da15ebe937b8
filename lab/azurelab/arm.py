"""Azure Resource Manager double (HTTPS): the resource types the migration touches, answered like ARM.

Follows /work/shared/ARM_NOTES.md (what the real azure-mgmt SDKs accept). Served:

* ``/subscriptions[/{s}]`` GET; ``/subscriptions/{s}/resourcegroups[/{rg}]`` list, PUT, GET, HEAD, DELETE.
* ``/metadata/endpoints`` GET without a token (:func:`cloud_metadata`: a custom cloud given as the ARM URL, as
  ``az cloud register --endpoint-resource-manager`` and azure.azcollection's ``cloud_environment`` read it). Tokens
  for the double's own URL (``https://127.0.0.1:<port>/``, what azure.azcollection's clients ask for) are accepted
  like ``resource_manager`` ones.
* ``Microsoft.Sql/servers/{s}`` PUT of an existing server (``azure_rm_sqlserver``): only ``administrators`` and
  ``tags`` are applied (202 + ``Azure-AsyncOperation``); no server is created.
* ``Microsoft.ManagedIdentity/userAssignedIdentities``: PUT (201 new, 200 existing; not long-running), GET,
  DELETE (200, or 204 when absent), list by resource group. Creating one registers its service principal in the
  directory; deleting removes it there but, as in Azure, leaves the reference on any VM it was attached to
  ("Deleting a user-assigned identity doesn't remove it from the resources it was assigned to").
* ``userAssignedIdentities/{i}/federatedIdentityCredentials[/{name}]``: PUT (201 new, 200 replaced), GET, list,
  DELETE (200, or 204 when absent). ``properties.issuer`` (an https URL), ``subject`` and ``audiences`` (exactly one)
  are required and kept exactly as written (Entra compares them exactly); the name must match
  ``^[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}$``; an identity holds at most 20. Writes to one identity's credentials less than
  ``FIC_WRITE_WINDOW_S`` apart get Azure's 409 ``ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity``
  (the real service refuses overlapping writes; its writes take seconds, the lab's none). Deleting the identity deletes
  its credentials. :meth:`ArmState.federated_credentials` gives them to the Entra double by client id.
* ``Microsoft.Compute/virtualMachines``: GET, list, PATCH (200 only) with VM identity PATCH semantics: listed
  ``userAssignedIdentities`` keys are added, ``null`` removes one, unlisted ones are kept, ``type`` replaces
  (``None`` drops all, ``SystemAssigned`` drops the user-assigned ones).
* ``Microsoft.DBforPostgreSQL/flexibleServers``: GET, list, PATCH (202 + ``Azure-AsyncOperation`` + ``Location`` +
  ``retry-after-ms``, then the SDK's final GET) of ``properties.authConfig`` and ``tags``.
* ``flexibleServers/{s}/capabilities``: GET, the server's own SKU, storage and version only (azure-cli's
  ``postgres flexible-server update`` checks its arguments against it; :meth:`ArmState.pg_capabilities`).
* ``flexibleServers/{s}/administrators/{objectId}``: PUT (202), GET (``name`` is the ``principalName``),
  list, DELETE (202, or 204 when absent). The real PostgreSQL follows through :class:`PostgresHooks`.
* Read replicas (topology ``postgres_servers[].replicas``): servers with ``replicationRole: AsyncReplica`` and
  ``sourceServerResourceId`` (their primary says ``Primary``), listed by ``GET flexibleServers/{s}/replicas``. A
  replica's ``authConfig`` is its own (Microsoft: "Authentication method: Adjustable" after creation); its Entra
  admins are its primary's, since the roles they are replicate from it (a lab reading: writing them on a replica is
  refused with the lab code ``OperationNotSupportedOnReadReplica``). A replica has no PostgreSQL of its own in the
  lab: nothing logs in to it.
* ``Microsoft.Sql/servers``: GET (``properties.administrators`` shows the Entra admin and the Entra-only flag), list.
* ``servers/{s}/administrators/ActiveDirectory``: PUT (202 + ``Azure-AsyncOperation``, then the SDK's final GET),
  GET (404 when there is none), DELETE (202, or 204 when absent; 400 ``InvalidServerAzureADAdminDeleteOperation``
  while Entra-only authentication is on). One admin per server; ``principalType`` comes from the lab directory.
* Failover groups (topology ``sql_servers[].failover_group``: ``name``, ``partner``): the partner is a logical server
  of its own (ARM only: it has no TDS endpoint in the lab), and ``GET servers/{s}/failoverGroups`` lists the group
  from either side (``replicationRole``, ``partnerServers``, ``databases``). Its Entra admin and Entra-only setting are
  its own, as in Azure ("the Microsoft Entra administrator must be configured for both the primary and the secondary
  servers"); no failover, no group writes.
* ``servers/{s}/azureADOnlyAuthentications/Default``: PUT (202 as above; ``true`` without an admin is 400
  ``InvalidServerAADOnlyAuthNoAADAdminPropertyName``), GET.
* ``Microsoft.DocumentDB/databaseAccounts`` (Cosmos DB for NoSQL): GET, list, PATCH of ``properties.disableLocalAuth``
  and ``tags`` (200 with ``provisioningState: Updating`` + ``Azure-AsyncOperation``, then the SDK's final GET), POST
  ``listKeys`` (200), POST ``regenerateKey`` (``{keyKind}``: 202 + ``Azure-AsyncOperation``). The keys are random
  per lab and live in ``paths().secrets`` (``cosmos_accounts``), never in the ARM state. ``documentEndpoint`` is the
  lab's Cosmos data-plane port (``config.Ports.cosmos``, served by :mod:`azurelab.cosmos`). A container's partition key
  path comes from the topology's ``partition_keys`` (default ``/id``).
* ``databaseAccounts/{a}/sqlRoleDefinitions[/{id}]``: GET, list: the two built-in roles only (Data Reader ``...0001``,
  Data Contributor ``...0002``).
* ``databaseAccounts/{a}/sqlRoleAssignments[/{guid}]``: PUT (202 + ``Azure-AsyncOperation``, then the SDK's final
  GET), GET, list, DELETE (202, or 204 when absent). As in Cosmos, ``roleDefinitionId`` and ``scope`` must be fully
  qualified ids of this account (scope: the account, optionally ``/dbs/{db}[/colls/{c}]``), the principal must be
  in the lab directory (400 ``BadRequest`` "... was not found in the AAD tenant(s) ..."), and the same
  (principal, role, scope) may be assigned again under another id.
* ``Microsoft.ContainerService/managedClusters`` (AKS; seeded from ``topology["aks_clusters"]`` with Entra ID
  integration (managed, Azure RBAC), the OIDC issuer off and no workload identity): GET, list, PUT of an existing
  cluster (200 with ``provisioningState: Updating`` + ``Azure-AsyncOperation``, then the SDK's final GET; see
  :meth:`ArmState.aks_put`), PATCH of ``tags`` (``begin_update_tags``, 200). Turning ``oidcIssuerProfile.enabled`` on
  gives ``issuerURL = https://localhost:<ARM port>/oidc/<tenant>/<cluster uid>/`` (trailing slash, like
  ``https://{region}.oic.prod-aks.azure.com/{tenant}/{guid}/``) and restarts the API server (counted, see the lab
  API); turning it off again is refused (400 ``OIDCIssuerFeatureCannotBeDisabled``, "OIDC issuer feature cannot be
  disabled.", Azure's words); ``securityProfile.workloadIdentity.enabled`` without the issuer is refused (400
  ``OIDCIssuerRequiredForWorkloadIdentity``: a lab code, the resource provider's is not documented; its message is
  azure-cli's). POST ``listClusterUserCredential`` (200): a ``format=exec`` kubeconfig for the lab's Kubernetes API
  server (``Ports.kube``) with the lab CA and the kubelogin exec plugin, no secret.
* The clusters' OIDC issuer documents, without authentication like the real public issuer:
  ``GET {issuerURL}.well-known/openid-configuration`` and ``GET {issuerURL}openid/v1/jwks``, from
  :class:`azurelab.aks.ClusterIssuer` (404 while the issuer is off).
* ``Microsoft.Compute/virtualMachineScaleSets``: GET, list, PATCH (``begin_update``, 200 only) of ``identity`` and
  ``tags`` with the VMs' identity semantics.
* ``Microsoft.Web/sites`` (App Service): GET, list, PATCH (not long-running, 200) of ``tags``, ``identity`` and
  ``properties`` (JSON merge patch, read-only ones ignored), and PUT of an existing app, applied as that PATCH (the
  body is the whole app as GET gave it, which azure-cli's ``webapp identity assign`` sends back; a property left out
  of a PUT keeps its value here); POST ``config/appsettings/list`` (200) and PUT
  ``config/appsettings`` (200; replaces the whole set). App Service's PATCH semantics for
  ``identity.userAssignedIdentities`` are not documented, so the double is strict: the map sent REPLACES the attached
  set (a client must read, merge and write the whole map).
* ``Microsoft.App/containerApps``: GET, list, PATCH (JSON merge patch: 202 + ``Azure-AsyncOperation`` + ``Location``,
  then the SDK's final GET) with the same strict ``identity`` replace; a template change makes a new revision name.
  The container env lives in ``properties.template.containers[].env``.
* ``/subscriptions/{s}/providers/{ns}/locations/{l}/azureAsyncOperation|operationResults/{id}``: operation status.
* ``{resource group or resource}/providers/Microsoft.Authorization/permissions`` (the caller's roles' ``actions`` and
  ``notActions``, one entry per role assignment at the scope or above) and ``.../locks`` (the locks at, above and
  below the scope), GET only; writes under a ``ReadOnly`` lock, and deletes under any lock, get 409 ``ScopeLocked``.
  See :mod:`azurelab.rbac`.

Every request needs a lab bearer token for the ``resource_manager`` audience (401 ``InvalidAuthenticationToken``)
and an ``api-version`` (any value). Ids compare case-insensitively. Errors use ARM's envelope and codes. State is
saved to ``paths().arm_state`` after every write.

Lab API (no auth; loopback only; not counted): ``GET /lab/counters`` (ARM requests by method, ``total``, ``writes``,
``faulted``; and the databases' ``postgres_sessions``, ``postgres_round_trips``, ``sql_sessions``,
``sql_round_trips``, see :meth:`ArmState.count_database`), ``POST /lab/counters/reset``,
``GET|POST|DELETE /lab/faults``, ``GET|POST|DELETE /lab/grant-faults`` (grants the PostgreSQL server takes away
from a role at its logins, see :meth:`ArmState.add_grant_fault`), ``GET /lab/state``, ``GET|POST|DELETE /lab/locks``,
``GET|POST|DELETE /lab/role-assignments``, ``GET /lab/aks/{cluster}`` (``apiServerRestarts``,
``lastRestart``: what a test can check about an AKS cluster that ARM does not show).

Faults (``POST /lab/faults``, :meth:`ArmState.add_fault`): the next ``count`` requests whose method and path match
are answered with an error in ARM's envelope (``status``, ``code``, ``message``, ``Retry-After`` when
``retry_after`` is given: 429 ``SubscriptionRequestsThrottled``, 5xx, the federated credentials' concurrent-write
409, Cosmos DB's 412 ``PreconditionFailed``, a 400 for a principal not replicated yet, whose message may say
``{principal_id}`` for the request body's ``properties.principalId``, ...), or with no answer at all
(``"reset": true``: the connection is dropped with a TCP RST after the request is read; nothing is applied). ``GET``
lists the faults still pending (``value``) and every request a fault answered (``served``: its method and path, and
``retried``, whether the same method and path came again afterwards); ``DELETE`` clears both. A fault is matched
after authentication, so it is served to a real client's request, never to a probe.

Not emulated: Azure RBAC enforcement (any valid token may do anything; only the permissions API reflects the lab's
role assignments), lock writes through ARM (the lab API sets them), policy, tags-only PATCH of identities,
the 20-credential limit's exact wording (the lab's code ``FederatedIdentityCredentialsLimitExceeded``), PUT of VMs
or servers (only the seeded ones exist), any VM/server property other than
``identity``/``tags``/``authConfig`` (SQL: other than the Entra admin and Entra-only flag; no server PUT/PATCH, no
list of ``administrators`` or ``azureADOnlyAuthentications``, no managed instances; Cosmos: no account PUT, no
``sqlDatabases``/``containers`` routes (the seeded ones are only read by the lab), no custom role definitions,
no ``listReadOnlyKeys``/``listConnectionStrings``, no check that a scope's database or container exists, no
exclusive-lock 412 of its own: inject it), system-assigned identities
beyond the ``type`` flag (no principal, no token), the resource actually being "Updating" while its operation runs
(the change is applied at once; the operation reports ``InProgress`` for ~100 ms so clients really poll), rate
limiting (the ``x-ms-ratelimit-remaining-*`` headers count down from ARM's hourly budgets but never reach 429 on their own: inject faults instead).
AKS: creating or deleting clusters, agent pools, upgrades, any property change other than the issuer, workload
identity and tags (a PUT's other properties are ignored, except that a new value of ``kubernetesVersion``,
``dnsPrefix``, ``enableRBAC``, ``nodeResourceGroup``, ``disableLocalAccounts`` or ``aadProfile`` is refused with 400
``LabNotEmulated``; a property absent from a PUT keeps its value, where the real service may reset it), the legacy
``format=azure`` kubeconfig, ``listClusterAdminCredential``, ETags; only the first cluster has an API server (every
cluster's kubeconfig names ``Ports.kube``). Scale sets: instances, models other than identity/tags. App Service: slots,
other ``config/*`` resources, connection strings, the real app settings' slot stickiness. Container Apps: revisions
and replicas as resources, secrets' values, environments (the ``managedEnvironmentId`` names one that is not served).
The PostgreSQL validation errors (``InvalidAuthConfig``, ``EntraAuthDisabled``) and the SQL request checks
(``InvalidParameterValue``: admin without ``login``/``sid``, non-GUID ``sid``) use lab codes: the real ones are not
documented; their messages say what Azure requires. The Cosmos messages for a bad ``scope`` or
``roleDefinitionId`` are the lab's words in Cosmos's format (``BadRequest``, an ``ActivityId`` line).
"""
from __future__ import annotations

import base64
import copy
import datetime
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from typing import Protocol

import yaml

from . import issued
from .aks import ClusterIssuer
from .config import LabPaths, ports as configured_ports
from .directory import Directory
from .rbac import Rbac, RbacError
from .tokens import Issuer, TokenError
from .web import JsonHandler

LOG = logging.getLogger("azurelab.arm")

PAGE_SIZE = 5  # small on purpose: clients' nextLink paging code runs in the lab's small world
OPERATION_S = 0.1
RETRY_AFTER_MS = "50"
HOURLY_BUDGET = {"reads": 12000, "writes": 1200, "deletes": 15000}
FIC = "federatedIdentityCredentials"
AUTHZ_PREFIX = "/providers/Microsoft.Authorization/"
AUTHZ = AUTHZ_PREFIX.lower()
FIC_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities/" + FIC
FIC_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}")
FIC_LIMIT = 20
FIC_WRITE_WINDOW_S = 0.3
WRITE_METHODS = ("PUT", "PATCH", "DELETE", "POST")
DATABASE_ENGINES = ("postgres", "sql")
DATABASE_COUNTS = ("sessions", "round_trips")

MI = "Microsoft.ManagedIdentity/userAssignedIdentities"
VM = "Microsoft.Compute/virtualMachines"
PG = "Microsoft.DBforPostgreSQL/flexibleServers"
PG_ADMIN = PG + "/administrators"
SQL = "Microsoft.Sql/servers"
SQL_ADMIN = SQL + "/administrators"
SQL_AAD_ONLY = SQL + "/azureADOnlyAuthentications"
COSMOS = "Microsoft.DocumentDB/databaseAccounts"
COSMOS_ROLE_DEFINITION = COSMOS + "/sqlRoleDefinitions"
COSMOS_ROLE_ASSIGNMENT = COSMOS + "/sqlRoleAssignments"
COSMOS_DATABASE = COSMOS + "/sqlDatabases"
COSMOS_CONTAINER = COSMOS_DATABASE + "/containers"
AKS = "Microsoft.ContainerService/managedClusters"
VMSS = "Microsoft.Compute/virtualMachineScaleSets"
SITE = "Microsoft.Web/sites"
SITE_CONFIG = SITE + "/config"
CONTAINER_APP = "Microsoft.App/containerApps"
RG = "Microsoft.Resources/resourceGroups"

# The workload kinds that carry user-assigned identities: the identity endpoint's path prefix -> resource type.
WORKLOAD_TYPES = {"vms": VM, "vmss": VMSS, "sites": SITE, "containerapps": CONTAINER_APP}
# AKS with Entra ID integration: the server application kubelogin asks tokens for, and the client it signs in as
# (what ``az aks get-credentials --format exec`` writes).
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
AKS_KUBELOGIN_CLIENT_ID = "80faf920-1908-4b52-b5ef-a8e7bedfc67a"
# Writable cluster properties the lab does not change: a PUT with another value is refused rather than ignored.
AKS_FIXED_PROPERTIES = ("kubernetesVersion", "dnsPrefix", "enableRBAC", "nodeResourceGroup", "disableLocalAccounts",
                        "aadProfile")
# Read-only properties a PATCH may carry back from a GET: ignored, as ARM ignores them.
SITE_READ_ONLY = frozenset({"state", "hostNames", "repositorySiteName", "usageState", "enabledHostNames",
                            "availabilityState", "lastModifiedTimeUtc", "trafficManagerHostNames", "targetSwapSlot",
                            "outboundIpAddresses", "possibleOutboundIpAddresses", "suspendedTill", "maxNumberOfWorkers",
                            "resourceGroup", "isDefaultContainer", "defaultHostName", "slotSwapStatus",
                            "inProgressOperationId", "sku", "provisioningState"})
CONTAINER_APP_READ_ONLY = frozenset({"provisioningState", "runningStatus", "deploymentErrors", "latestRevisionName",
                                     "latestReadyRevisionName", "latestRevisionFqdn", "customDomainVerificationId",
                                     "outboundIpAddresses", "eventStreamEndpoint"})

# keyKind of regenerateKey -> the listKeys field it renews.
COSMOS_KEY_KINDS = {"primary": "primaryMasterKey", "secondary": "secondaryMasterKey",
                    "primaryReadonly": "primaryReadonlyMasterKey", "secondaryReadonly": "secondaryReadonlyMasterKey"}
# The built-in data-plane roles every account has (these are not Azure RBAC roles): id -> (roleName, dataActions).
COSMOS_BUILT_IN_ROLES = {
    "00000000-0000-0000-0000-000000000001": ("Cosmos DB Built-in Data Reader", (
        "readMetadata", "sqlDatabases/containers/executeQuery", "sqlDatabases/containers/readChangeFeed",
        "sqlDatabases/containers/items/read")),
    "00000000-0000-0000-0000-000000000002": ("Cosmos DB Built-in Data Contributor", (
        "readMetadata", "sqlDatabases/containers/*", "sqlDatabases/containers/items/*")),
}


class PostgresHooks(Protocol):
    """What the real PostgreSQL must do when ARM changes a server's Entra admins (``azurelab.postgres.PostgresLab``).

    Raising fails the ARM operation (status ``Failed``, the exception text as message); ARM state is then unchanged.
    """

    def create_entra_admin(self, server_name: str, principal_name: str, object_id: str,
                           principal_type: str) -> None: ...

    def drop_entra_admin(self, server_name: str, object_id: str) -> None: ...


class ArmError(Exception):
    """An answer in ARM's error envelope."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": []}}


class ConnectionReset(Exception):
    """An injected fault that answers nothing: the handler drops the connection (see :meth:`ArmState.add_fault`)."""


def _principal_of(body: bytes) -> str:
    """``properties.principalId`` of a JSON request body, or ``""``."""
    try:
        return str(((json.loads(body or b"{}") or {}).get("properties") or {}).get("principalId") or "")
    except (ValueError, AttributeError):
        return ""


def _utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _cosmos_error(status: int, code: str, message: str) -> ArmError:
    """An error as Cosmos DB's resource provider words it: the message ends with an ``ActivityId`` line."""
    return ArmError(status, code, f"{message}\r\nActivityId: {uuid.uuid4()}, Microsoft.Azure.Documents.Common/2.14.0")


def _cosmos_key(paths: LabPaths) -> str:
    """A new account key: 64 random bytes in base64, like Cosmos's 88-character keys (recorded as issued)."""
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    issued.record(paths.root, "cosmos-key", key)
    return key


def _guid(value) -> str | None:
    """``value`` as a lower-case GUID string, ``None`` when it is not one."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def _merge_patch(target, patch):
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7396): objects merge, ``null`` removes a key,
    anything else (arrays included) replaces. Returns a new value; ``target`` is not changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _unset(value) -> bool:
    """A null, or an object whose values are all unset: what a client sends for a property it does not change."""
    return value is None or (isinstance(value, dict) and all(_unset(v) for v in value.values()))


def _not_found(type_: str, name: str, rg: str) -> ArmError:
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{type_}/{name}' under resource group '{rg}' was not found. "
                    "For more details please go to https://aka.ms/ARMResourceNotFoundFix")


class ArmState:
    """The ARM double's resources, operations, counters and faults; every public method is thread-safe.

    ``hooks`` receives Entra admin changes on flexible servers (see :class:`PostgresHooks`). ``cosmos_port`` is where
    Cosmos accounts' ``documentEndpoint`` points, ``arm_port`` where this double serves (AKS issuer URLs name it) and
    ``kube_port`` the AKS API server a cluster's kubeconfig names (defaults: the configured lab's ``Ports``).
    """

    def __init__(self, paths: LabPaths, topology: dict, directory: Directory, hooks: PostgresHooks,
                 cosmos_port: int | None = None, arm_port: int | None = None, kube_port: int | None = None):
        self.paths = paths
        self.cosmos_port = cosmos_port or configured_ports().cosmos
        self.arm_port = arm_port or configured_ports().arm
        self.kube_port = kube_port or configured_ports().kube
        self.topology = topology
        self.tenant_id = topology["tenant_id"]
        self.subscription_id = topology["subscription_id"]
        self.directory = directory
        self.hooks = hooks
        self._lock = threading.RLock()
        self._resources: dict[str, dict] = {}  # lower-case id -> the resource as GET returns it
        self._operations: dict[str, dict] = {}
        self._faults: list[dict] = []
        self._served: list[dict] = []
        self._grant_faults: list[dict] = []
        self._fic_writes: dict[str, float] = {}  # identity id -> when its last credential write was accepted
        self.rbac = Rbac(self.subscription_id, topology)
        self.reset_counters()
        if paths.arm_state.exists():
            self._resources = json.loads(paths.arm_state.read_text())["resources"]
            self._seed_missing()
        else:
            self._seed()
            self._save()
        for resource in self._resources.values():
            if resource["type"] == MI:
                self._register(resource)
        self._cosmos_keys = self._ensure_cosmos_keys()
        # Made here, before any other component asks, so that each cluster's signing key file is created once.
        self._cluster_issuers = {r["name"].lower(): ClusterIssuer(paths, r["name"])
                                 for r in self._resources.values() if r["type"] == AKS}

    # ----- the seeded world and persistence -----

    def _seed(self) -> None:
        topo, location = self.topology, self.topology["location"]
        for rg in topo["resource_groups"]:
            self._store(self._rg_body(rg, location, {}))
        for identity in topo.get("identities", []):
            self._store(self._identity_body(identity["resource_group"], identity["name"], location, {}))
        for vm in topo.get("virtual_machines", []):
            body = {"id": self._id(vm["resource_group"], VM, vm["name"]), "name": vm["name"], "type": VM,
                    "location": location, "tags": {},
                    "properties": {"vmId": str(uuid.uuid4()), "provisioningState": "Succeeded",
                                   "hardwareProfile": {"vmSize": "Standard_B2s"},
                                   "osProfile": {"computerName": vm["name"], "adminUsername": "azureuser"}}}
            attached = [self._get(self._id(i["resource_group"], MI, i["name"])) for i in vm.get("identities", [])]
            if attached:
                body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {
                    i["id"]: self._identity_ref(i) for i in attached}}
            self._store(body)
        for server in topo.get("postgres_servers", []):
            primary_id = self._id(server["resource_group"], PG, server["name"])
            replicas = server.get("replicas") or []
            self._store(self._pg_body(primary_id, server, location, "Primary" if replicas else "None"))
            for replica in replicas:
                self._store(self._pg_body(self._id(replica.get("resource_group", server["resource_group"]), PG,
                                                   replica["name"]),
                                          dict(server, name=replica["name"]), location, "AsyncReplica", primary_id))
        for server in topo.get("sql_servers", []):
            self._store(self._sql_body(server, location))
            group = server.get("failover_group")
            if group:
                partner = dict(server, resource_group=group.get("resource_group", server["resource_group"]),
                               name=group["partner"])
                self._store(self._sql_body(partner, group.get("location", location)))
                self._seed_failover_group(group["name"], server, partner, location, group.get("location", location))
        for account in topo.get("cosmos_accounts", []):
            self._seed_cosmos(account, location)
        for cluster in topo.get("aks_clusters", []):
            self._seed_aks(cluster, location)
        for scale_set in topo.get("vm_scale_sets", []):
            self._seed_vmss(scale_set, location)
        for site in topo.get("web_apps", []):
            self._seed_site(site, location)
        for app in topo.get("container_apps", []):
            self._seed_container_app(app, location)

    def _sql_body(self, server: dict, location: str) -> dict:
        """A logical server without an Entra admin: ``properties.administrators`` is absent (Entra-only is off)."""
        return {
            "id": self._id(server["resource_group"], SQL, server["name"]), "name": server["name"], "type": SQL,
            "location": location, "kind": "v12.0", "tags": {},
            "properties": {
                "administratorLogin": server["administrator_login"], "version": "12.0", "state": "Ready",
                "fullyQualifiedDomainName": server.get("fully_qualified_domain_name", "localhost"),
                "publicNetworkAccess": "Enabled", "minimalTlsVersion": "1.2"}}

    def _seed_failover_group(self, name: str, primary: dict, secondary: dict, primary_location: str,
                             secondary_location: str) -> None:
        """A failover group between two servers, as each of them lists it (``servers/{s}/failoverGroups``)."""
        primary_id = self._id(primary["resource_group"], SQL, primary["name"])
        secondary_id = self._id(secondary["resource_group"], SQL, secondary["name"])
        databases = [f"{primary_id}/databases/{db}" for db in primary.get("databases") or {}]
        for own_id, role, location, partner_id, partner_role, partner_location in (
                (primary_id, "Primary", primary_location, secondary_id, "Secondary", secondary_location),
                (secondary_id, "Secondary", secondary_location, primary_id, "Primary", primary_location)):
            self._store({
                "id": f"{own_id}/failoverGroups/{name}", "name": name, "type": SQL + "/failoverGroups",
                "location": location, "tags": {},
                "properties": {
                    "readWriteEndpoint": {"failoverPolicy": "Manual"}, "readOnlyEndpoint": {"failoverPolicy": "Disabled"},
                    "replicationRole": role, "replicationState": "CATCH_UP",
                    "partnerServers": [{"id": partner_id, "location": partner_location,
                                        "replicationRole": partner_role}],
                    "databases": databases}})

    def sql_failover_groups(self, rg: str, server_name: str) -> list[dict]:
        """``GET .../servers/{s}/failoverGroups``."""
        with self._lock:
            server = self._require(rg, SQL, server_name)
            prefix = server["id"].lower() + "/failovergroups/"
            return [copy.deepcopy(r) for k, r in self._resources.items() if k.startswith(prefix)]

    def _pg_body(self, server_id: str, server: dict, location: str, role: str, source_id: str = "") -> dict:
        """A flexible server with password authentication only; ``role`` is its ``replicationRole`` (``None``,
        ``Primary`` or ``AsyncReplica``, then ``sourceServerResourceId`` names its primary)."""
        return {
            "id": server_id, "name": server["name"], "type": PG, "location": location, "tags": {},
            "sku": {"name": "Standard_D2ds_v5", "tier": "GeneralPurpose"},
            "properties": {
                "administratorLogin": server["administrator_login"], "version": str(server["version"]),
                "state": "Ready", "fullyQualifiedDomainName": "localhost",
                "storage": {"storageSizeGB": 32}, "network": {"publicNetworkAccess": "Enabled"},
                "backup": {"backupRetentionDays": 7, "geoRedundantBackup": "Disabled"},
                "highAvailability": {"mode": "Disabled"},
                "replicationRole": role, "replicaCapacity": 0 if source_id else 5,
                "authConfig": {"activeDirectoryAuth": "Disabled", "passwordAuth": "Enabled",
                               "tenantId": self.tenant_id},
                **({"sourceServerResourceId": source_id} if source_id else {})}}

    def _seed_cosmos(self, account: dict, location: str) -> None:
        """A Cosmos DB for NoSQL account with key authentication on, and its databases and containers."""
        account_id = self._id(account["resource_group"], COSMOS, account["name"])
        self._store({
            "id": account_id, "name": account["name"], "type": COSMOS, "location": location,
            "kind": "GlobalDocumentDB", "tags": {}, "identity": {"type": "None"},
            "properties": {
                "provisioningState": "Succeeded", "databaseAccountOfferType": "Standard",
                "disableLocalAuth": False, "disableKeyBasedMetadataWriteAccess": False,
                "publicNetworkAccess": "Enabled", "enableAutomaticFailover": False, "capabilities": [],
                "consistencyPolicy": {"defaultConsistencyLevel": "Session"},
                "locations": [{"locationName": location, "failoverPriority": 0, "isZoneRedundant": False}]}})
        for database, spec in (account.get("databases") or {}).items():
            database_id = f"{account_id}/sqlDatabases/{database}"
            self._store({"id": database_id, "name": database, "type": COSMOS_DATABASE,
                         "properties": {"resource": {"id": database}}})
            partition_keys = (spec or {}).get("partition_keys") or {}
            for container in (spec or {}).get("containers", []):
                self._store({"id": f"{database_id}/containers/{container}", "name": container,
                             "type": COSMOS_CONTAINER, "properties": {"resource": {
                                 "id": container,
                                 "partitionKey": {"paths": [partition_keys.get(container, "/id")], "kind": "Hash"}}}})

    def _seed_aks(self, cluster: dict, location: str) -> None:
        """An AKS cluster with Entra ID integration (managed, Azure RBAC), the OIDC issuer and workload identity off.

        ``_lab`` holds what the double keeps about the cluster but ARM does not show: ``issuerId`` (the stable uid in
        its issuer URL) and ``apiServerRestarts`` (how often a change restarted the API server).
        """
        rg, name = cluster["resource_group"], cluster["name"]
        version = str(cluster["kubernetes_version"])
        node_rg = f"MC_{rg}_{name}_{location}"
        kubelet = f"/subscriptions/{self.subscription_id}/resourcegroups/{node_rg}/providers/{MI}/{name}-agentpool"
        self._store({
            "id": self._id(rg, AKS, name), "name": name, "type": AKS, "location": location, "tags": {},
            "sku": {"name": "Base", "tier": "Free"},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": self.tenant_id},
            "properties": {
                "provisioningState": "Succeeded", "powerState": {"code": "Running"},
                "kubernetesVersion": version, "currentKubernetesVersion": version, "dnsPrefix": f"{name}-dns",
                "fqdn": "localhost", "nodeResourceGroup": node_rg, "enableRBAC": True, "disableLocalAccounts": True,
                "agentPoolProfiles": [{
                    "name": "nodepool1", "count": 1, "vmSize": "Standard_D2s_v5", "osType": "Linux",
                    "mode": "System", "type": "VirtualMachineScaleSets", "orchestratorVersion": version,
                    "currentOrchestratorVersion": version, "provisioningState": "Succeeded",
                    "powerState": {"code": "Running"}}],
                "aadProfile": {"managed": True, "enableAzureRBAC": True, "tenantID": self.tenant_id},
                "oidcIssuerProfile": {"enabled": False},
                "securityProfile": {},
                "identityProfile": {"kubeletidentity": {"resourceId": kubelet, "clientId": str(uuid.uuid4()),
                                                        "objectId": str(uuid.uuid4())}},
                "networkProfile": {"networkPlugin": "azure", "loadBalancerSku": "standard"}},
            "_lab": {"issuerId": str(uuid.uuid4()), "apiServerRestarts": 0}})

    def _seed_vmss(self, scale_set: dict, location: str) -> None:
        self._store({
            "id": self._id(scale_set["resource_group"], VMSS, scale_set["name"]), "name": scale_set["name"],
            "type": VMSS, "location": location, "tags": {},
            "sku": {"name": "Standard_B2s", "tier": "Standard", "capacity": 2},
            "properties": {"uniqueId": str(uuid.uuid4()), "provisioningState": "Succeeded",
                           "orchestrationMode": "Uniform", "upgradePolicy": {"mode": "Manual"},
                           "virtualMachineProfile": {"osProfile": {"computerNamePrefix": scale_set["name"],
                                                                   "adminUsername": "azureuser"}}}})

    def _seed_site(self, site: dict, location: str) -> None:
        """An App Service app (Linux) and its app settings (``app_settings`` of the topology entry, default none)."""
        rg, name = site["resource_group"], site["name"]
        site_id = self._id(rg, SITE, name)
        self._store({
            "id": site_id, "name": name, "type": SITE, "kind": site.get("kind", "app,linux"), "location": location,
            "tags": {},
            "properties": {
                "state": "Running", "enabled": True, "httpsOnly": True, "reserved": True, "resourceGroup": rg,
                "hostNames": [f"{name}.azurewebsites.net"], "enabledHostNames": [f"{name}.azurewebsites.net"],
                "defaultHostName": f"{name}.azurewebsites.net", "usageState": "Normal", "availabilityState": "Normal",
                "serverFarmId": self._id(rg, "Microsoft.Web/serverfarms", f"asp-{name}"),
                "siteConfig": {"linuxFxVersion": "PYTHON|3.11", "alwaysOn": True, "ftpsState": "Disabled",
                               "minTlsVersion": "1.2"}}})
        self._store({"id": f"{site_id}/config/appsettings", "name": "appsettings", "type": SITE_CONFIG,
                     "properties": {k: str(v) for k, v in (site.get("app_settings") or {}).items()}})

    def _seed_container_app(self, app: dict, location: str) -> None:
        """A Container App with one container (``image`` and ``env`` of the topology entry: a name -> value map)."""
        rg, name = app["resource_group"], app["name"]
        environment = self._id(rg, "Microsoft.App/managedEnvironments", app.get("environment", "cae-lab"))
        self._store({
            "id": self._id(rg, CONTAINER_APP, name), "name": name, "type": CONTAINER_APP, "location": location,
            "tags": {}, "identity": {"type": "None"},
            "properties": {
                "provisioningState": "Succeeded", "runningStatus": "Running", "managedEnvironmentId": environment,
                "environmentId": environment, "workloadProfileName": "Consumption",
                "latestRevisionName": f"{name}--0000001", "latestReadyRevisionName": f"{name}--0000001",
                "latestRevisionFqdn": f"{name}--0000001.localhost", "outboundIpAddresses": ["127.0.0.1"],
                "configuration": {"activeRevisionsMode": "Single", "secrets": [],
                                  "ingress": {"external": True, "targetPort": 8080, "transport": "Auto",
                                              "fqdn": f"{name}.localhost"}},
                "template": {
                    "containers": [{"name": name, "image": app.get("image", "mcr.microsoft.com/azurelab/demo-app:1"),
                                    "env": [{"name": k, "value": str(v)} for k, v in (app.get("env") or {}).items()],
                                    "resources": {"cpu": 0.5, "memory": "1Gi"}}],
                    "scale": {"minReplicas": 1, "maxReplicas": 1}}}})

    def _seed_missing(self) -> None:
        """Add the topology's resources that a kept state lacks (a lab made from an older ``topology.yml``): the
        others, and everything done to them since, stay as they are."""
        kept, self._resources = self._resources, {}
        self._seed()
        seeded, self._resources = self._resources, kept
        missing = {key: body for key, body in seeded.items() if key not in kept}
        if missing:
            kept.update(missing)
            self._save()
            LOG.info("added %d resource(s) of topology.yml that the kept state lacked: %s", len(missing),
                     ", ".join(sorted(body["name"] for body in missing.values())))

    def _ensure_cosmos_keys(self) -> dict[str, dict[str, str]]:
        """Every Cosmos account's keys (account name -> the four ``listKeys`` fields), creating the missing ones in
        the lab secrets file's ``cosmos_accounts`` entry; the file's other entries are kept."""
        stored = json.loads(self.paths.secrets.read_text()) if self.paths.secrets.exists() else {}
        keys = stored.setdefault("cosmos_accounts", {})
        missing = [r["name"] for r in self._resources.values() if r["type"] == COSMOS and r["name"] not in keys]
        for name in missing:
            keys[name] = {field: _cosmos_key(self.paths) for field in COSMOS_KEY_KINDS.values()}
        if missing:
            self._save_secrets(stored)
        return keys

    def _save_secrets(self, stored: dict) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.secrets.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle, indent=1)
        os.replace(tmp, self.paths.secrets)

    def _save(self) -> None:
        tmp = self.paths.arm_state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"resources": self._resources}, indent=1, sort_keys=True))
        os.replace(tmp, self.paths.arm_state)

    # ----- ids and storage -----

    def _id(self, rg: str, type_: str, name: str, child: str | None = None) -> str:
        rg = (self._get(self._rg_id(rg)) or {}).get("name", rg)
        # The managed identity provider answers with lower-case "resourcegroups"; the others with "resourceGroups".
        segment = "resourcegroups" if type_ == MI else "resourceGroups"
        rid = f"/subscriptions/{self.subscription_id}/{segment}/{rg}/providers/{type_}/{name}"
        return f"{rid}/administrators/{child}" if child is not None else rid

    def _rg_id(self, rg: str) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"

    def _get(self, rid: str) -> dict | None:
        return self._resources.get(rid.lower())

    def _store(self, body: dict) -> None:
        self._resources[body["id"].lower()] = body

    def _require_rg(self, rg: str) -> dict:
        group = self._get(self._rg_id(rg))
        if group is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return group

    def _require(self, rg: str, type_: str, name: str) -> dict:
        self._require_rg(rg)
        resource = self._get(self._id(rg, type_, name))
        if resource is None:
            raise _not_found(type_, name, rg)
        return resource

    def _in_rg(self, rg: str, type_: str) -> list[dict]:
        prefix = self._rg_id(rg).lower() + "/providers/"
        return [r for k, r in self._resources.items() if k.startswith(prefix) and r["type"] == type_]

    def _by_name(self, type_: str, name: str) -> dict | None:
        return next((r for r in self._resources.values() if r["type"] == type_ and r["name"].lower() == name.lower()),
                    None)

    # ----- what the other lab components read -----

    def postgres_auth_config(self, server_name: str) -> dict:
        """The flexible server's current ``properties.authConfig`` (``activeDirectoryAuth``, ``passwordAuth``,
        ``tenantId``); ``KeyError`` for an unknown server."""
        with self._lock:
            server = self._by_name(PG, server_name)
            if server is None:
                raise KeyError(server_name)
            return dict(server["properties"]["authConfig"])

    def sql_entra_admin(self, server_name: str) -> dict | None:
        """The SQL server's ``properties.administrators`` (``login``, ``sid``, ``tenantId``, ``principalType``,
        ``azureADOnlyAuthentication``...), ``None`` when it has no Entra admin; ``KeyError`` for an unknown server."""
        with self._lock:
            server = self._by_name(SQL, server_name)
            if server is None:
                raise KeyError(server_name)
            return copy.deepcopy(server["properties"].get("administrators"))

    def cosmos_account(self, account_name: str) -> dict:
        """What the Cosmos data-plane front needs about an account: ``{"id": account resource id, "disableLocalAuth":
        bool, "keys": {"primaryMasterKey", "secondaryMasterKey", "primaryReadonlyMasterKey",
        "secondaryReadonlyMasterKey"}, "assignments": [{"principalId", "roleDefinitionId", "scope"}], "endpoint":
        "https://localhost:<port>/", "databases": {database: [container, ...]}, "partitionKeys": {database:
        {container: {"paths": [...], "kind": "Hash"}}}}``; ``KeyError`` for an unknown account."""
        with self._lock:
            account = self._by_name(COSMOS, account_name)
            if account is None:
                raise KeyError(account_name)
            prefix = account["id"].lower() + "/"
            children = [r for k, r in self._resources.items() if k.startswith(prefix)]
            containers = {r["name"]: [c for c in children if c["type"] == COSMOS_CONTAINER
                                      and c["id"].lower().startswith(r["id"].lower() + "/")]
                          for r in children if r["type"] == COSMOS_DATABASE}
            assignments = [{k: r["properties"][k] for k in ("principalId", "roleDefinitionId", "scope")}
                           for r in children if r["type"] == COSMOS_ROLE_ASSIGNMENT]
            return {"id": account["id"], "disableLocalAuth": bool(account["properties"]["disableLocalAuth"]),
                    "keys": dict(self._cosmos_keys[account["name"]]), "assignments": assignments,
                    "endpoint": self._cosmos_endpoint(),
                    "databases": {db: [c["name"] for c in found] for db, found in containers.items()},
                    "partitionKeys": {db: {c["name"]: copy.deepcopy(c["properties"]["resource"]["partitionKey"])
                                           for c in found} for db, found in containers.items()}}

    def workload_user_assigned_identities(self, kind: str, name: str) -> dict | None:
        """The workload's ``identity.userAssignedIdentities`` (resource id -> ``{principalId, clientId}``), ``{}``
        when it has none, ``None`` when there is no such workload. ``kind`` is a key of :data:`WORKLOAD_TYPES`
        (``vms``, ``vmss``, ``sites``, ``containerapps``); another raises ``ValueError``."""
        if kind not in WORKLOAD_TYPES:
            raise ValueError(f"unknown workload kind {kind!r}: use one of {', '.join(WORKLOAD_TYPES)}")
        with self._lock:
            workload = self._by_name(WORKLOAD_TYPES[kind], name)
            if workload is None:
                return None
            return copy.deepcopy((workload.get("identity") or {}).get("userAssignedIdentities") or {})

    def vm_user_assigned_identities(self, vm_name: str) -> dict | None:
        """:meth:`workload_user_assigned_identities` of a VM."""
        return self.workload_user_assigned_identities("vms", vm_name)

    def site_app_settings(self, site_name: str) -> dict[str, str]:
        """The App Service app's app settings (name -> value), what the platform puts in the app's environment;
        ``KeyError`` for an unknown app."""
        with self._lock:
            site = self._by_name(SITE, site_name)
            if site is None:
                raise KeyError(site_name)
            return dict(self._get(f"{site['id']}/config/appsettings")["properties"])

    def container_app_env(self, app_name: str) -> dict[str, str]:
        """The Container App's first container's environment: the ``env`` entries with a plain ``value`` (name ->
        value; ``secretRef`` entries are left out); ``KeyError`` for an unknown app."""
        with self._lock:
            app = self._by_name(CONTAINER_APP, app_name)
            if app is None:
                raise KeyError(app_name)
            containers = app["properties"]["template"].get("containers") or [{}]
            return {e["name"]: e["value"] for e in containers[0].get("env") or [] if e.get("value") is not None}

    def aks_cluster(self, cluster_name: str) -> dict:
        """The managed cluster as ARM's GET returns it (``properties.oidcIssuerProfile.issuerURL`` present while the
        issuer is on, ``properties.securityProfile.workloadIdentity.enabled``, ``aadProfile.tenantID``...);
        ``KeyError`` for an unknown cluster."""
        with self._lock:
            cluster = self._by_name(AKS, cluster_name)
            if cluster is None:
                raise KeyError(cluster_name)
            return self._view(cluster)

    def aks_lab_status(self, cluster_name: str) -> dict:
        """What the lab knows about the cluster beyond ARM (``GET /lab/aks/{cluster}``): ``{"apiServerRestarts":
        int, "lastRestart": {"at": ISO time, "reason": str} | absent}``; ``KeyError`` for an unknown cluster."""
        with self._lock:
            cluster = self._by_name(AKS, cluster_name)
            if cluster is None:
                raise KeyError(cluster_name)
            return {k: copy.deepcopy(v) for k, v in cluster["_lab"].items() if k != "issuerId"}

    def cluster_issuer(self, cluster_name: str) -> ClusterIssuer:
        """The cluster's service-account token signer (one per cluster, shared with the Kubernetes double);
        ``KeyError`` for an unknown cluster."""
        return self._cluster_issuers[cluster_name.lower()]

    def aks_issuer_document(self, tenant_id: str, issuer_id: str, document: str) -> dict | None:
        """``document`` (``openid-configuration`` or ``jwks``) of the cluster whose issuer URL is
        ``/oidc/{tenant_id}/{issuer_id}/``, ``None`` when no cluster has that issuer turned on (404, as for a
        cluster whose issuer is off or gone)."""
        with self._lock:
            if tenant_id.lower() != self.tenant_id.lower():
                return None
            cluster = next((r for r in self._resources.values() if r["type"] == AKS
                            and r["_lab"]["issuerId"] == issuer_id.lower()
                            and r["properties"]["oidcIssuerProfile"].get("enabled")), None)
            if cluster is None:
                return None
            if document == "jwks":
                return self._cluster_issuers[cluster["name"].lower()].jwks()
            return ClusterIssuer.discovery(self._issuer_url(cluster))

    def caller_principals(self, object_id: str) -> set[str]:
        """The caller's object id and the names of the lab identities that have it (role assignments name either)."""
        with self._lock:
            names = {r["name"] for r in self._resources.values()
                     if r["type"] == MI and r["properties"].get("principalId") == object_id}
        return names | {object_id}

    def dump(self) -> dict:
        """Everything, for ``GET /lab/state`` (ARM state holds no secrets: Cosmos keys stay in the secrets file)."""
        with self._lock:
            return {"resources": copy.deepcopy(list(self._resources.values())),
                    "operations": copy.deepcopy(list(self._operations.values())),
                    "faults": copy.deepcopy(self._faults), "directory": self.directory.entries()}

    # ----- counters and faults (the lab API) -----

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = {m: 0 for m in ("GET", "HEAD", "PUT", "PATCH", "DELETE", "POST")}
            self.counters.update(total=0, writes=0, faulted=0)
            self.counters.update({f"{engine}_{what}": 0 for engine in DATABASE_ENGINES for what in DATABASE_COUNTS})

    def count_database(self, engine: str, what: str) -> None:
        """Count one database session (``what="sessions"``: a login that got in) or one round trip (``"round_trips"``:
        a request the client waits for, a query or an extended-protocol Sync on PostgreSQL, a SQL batch, RPC or
        transaction request on Azure SQL) of ``engine`` (``postgres`` or ``sql``), whoever the client is.
        ``KeyError`` for another engine or count."""
        key = f"{engine}_{what}"
        with self._lock:
            if key not in self.counters:
                raise KeyError(key)
            self.counters[key] += 1

    def counters_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def count(self, method: str, path: str = "") -> None:
        """Count a request. ``writes`` counts the ones that change state: PUT, PATCH, DELETE and POST actions, but not
        the POST actions that only read (``listKeys``, ``listClusterUserCredential``, ``config/appsettings/list``),
        which ARM still charges to the write budget (``remaining``)."""
        with self._lock:
            for served in self._served:
                if not served["retried"] and served["method"] == method and served["path"].lower() == path.lower():
                    served["retried"] = True
            self.counters[method] = self.counters.get(method, 0) + 1
            self.counters["total"] += 1
            last = path.rstrip("/").rsplit("/", 1)[-1].lower()
            if method in WRITE_METHODS and not (method == "POST" and last.startswith("list")):
                self.counters["writes"] += 1

    def remaining(self, method: str) -> tuple[str, int]:
        """The ``x-ms-ratelimit-remaining-subscription-*`` header for this method and its value."""
        with self._lock:
            if method == "DELETE":
                kind, used = "deletes", self.counters["DELETE"]
            elif method in WRITE_METHODS:
                kind, used = "writes", self.counters["PUT"] + self.counters["PATCH"] + self.counters["POST"]
            else:
                kind, used = "reads", self.counters["GET"] + self.counters["HEAD"]
            return f"x-ms-ratelimit-remaining-subscription-{kind}", max(0, HOURLY_BUDGET[kind] - used)

    def add_fault(self, spec: dict) -> dict:
        """``spec``: ``method`` (or ``*``), ``path`` (regex searched in the request path), ``count`` (default 1), and
        either ``status`` with optional ``retry_after`` (seconds), ``code`` and ``message`` (an error answer), or
        ``"reset": true`` (no answer: the connection is dropped with a TCP RST once the request is read, as by a
        load balancer or a backend that crashed; the client sees ECONNRESET, azure-core a ``ServiceResponseError``).
        ``ValueError`` / ``KeyError`` / ``re.error`` for a bad spec."""
        reset = bool(spec.get("reset"))
        status = None if reset else int(spec["status"])
        default_code = "ConnectionReset" if reset else {
            429: "SubscriptionRequestsThrottled", 409: "AnotherOperationInProgress", 412: "PreconditionFailed",
            500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
            504: "GatewayTimeout"}.get(status, "LabInjectedFault")
        fault = {"id": str(uuid.uuid4()), "method": spec.get("method", "*").upper(), "path": spec.get("path", ""),
                 "status": status, "reset": reset, "count": int(spec.get("count", 1)),
                 "retry_after": spec.get("retry_after"), "code": spec.get("code") or default_code,
                 "message": spec.get("message")}
        if fault["count"] < 1:
            raise ValueError("count must be at least 1")
        re.compile(fault["path"])
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget the pending faults and the record of the served ones."""
        with self._lock:
            self._faults.clear()
            self._served.clear()

    def faults(self) -> list[dict]:
        """The faults still to serve (a fault leaves this list when its ``count`` is used up)."""
        with self._lock:
            return copy.deepcopy(self._faults)

    def served_faults(self) -> list[dict]:
        """One entry per request answered by a fault, in order: ``{id, code, status, reset, method, path, retried}``,
        ``path`` the request's, ``retried`` whether the same method and path came again afterwards (a client retry)."""
        with self._lock:
            return copy.deepcopy(self._served)

    def add_grant_fault(self, spec: dict) -> dict:
        """A grant removed in the database, as by a DBA or a drift tool between the grant phase and verify: at every
        token login of ``role`` on PostgreSQL server ``server``, before its session opens, the server revokes the
        role's privileges on the tables of ``schema`` (every schema of the database the session opens when absent),
        so that its queries fail with PostgreSQL's own ``permission denied for table ...``. Lasts until the faults
        are cleared. ``KeyError`` without ``server`` or ``role``."""
        fault = {"id": str(uuid.uuid4()), "server": str(spec["server"]), "role": str(spec["role"]),
                 "schema": spec.get("schema")}
        with self._lock:
            self._grant_faults.append(fault)
        return fault

    def clear_grant_faults(self) -> None:
        with self._lock:
            self._grant_faults.clear()

    def grant_faults(self, server: str | None = None, role: str | None = None) -> list[dict]:
        """The grant faults (:meth:`add_grant_fault`), those of one server and role when given."""
        with self._lock:
            return [dict(fault) for fault in self._grant_faults
                    if server in (None, fault["server"]) and role in (None, fault["role"])]

    def take_fault(self, method: str, path: str, body: bytes = b"") -> ArmError | ConnectionReset | None:
        """What to answer instead of serving this request, when an injected fault matches (uses it up): an
        :class:`ArmError`, or :class:`ConnectionReset` for no answer at all. ``{principal_id}`` in a fault's message
        becomes the request body's ``properties.principalId`` (role assignments name their principal there)."""
        with self._lock:
            for fault in self._faults:
                if fault["method"] in ("*", method) and re.search(fault["path"], path, re.IGNORECASE):
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self._faults.remove(fault)
                    self.counters["faulted"] += 1
                    self._served.append({"id": fault["id"], "code": fault["code"], "status": fault["status"],
                                         "reset": fault["reset"], "method": method, "path": path, "retried": False})
                    if fault["reset"]:
                        return ConnectionReset(fault["code"])
                    headers = {}
                    message = fault["message"] or f"Injected by the lab: {fault['code']}."
                    if "{principal_id}" in message:
                        message = message.replace("{principal_id}", _principal_of(body))
                    if fault["retry_after"] is not None:
                        headers["Retry-After"] = str(fault["retry_after"])
                        if fault["status"] == 429 and not fault["message"]:
                            message = (f"Number of requests for subscription '{self.subscription_id}' and operation "
                                       f"'{method} {path}' exceeded the backend storage limit. Please try again "
                                       f"after '{fault['retry_after']}' seconds.")
                    return ArmError(fault["status"], fault["code"], message, headers)
        return None

    # ----- long-running operations -----

    def _operation(self, base_url: str, api_version: str, error: ArmError | None = None,
                   provider: str = "Microsoft.DBforPostgreSQL") -> dict[str, str]:
        """Record an operation and return the headers of the answer that starts it (a 202, or Cosmos's PATCH 200)."""
        op_id = str(uuid.uuid4())
        self._operations[op_id] = {"name": op_id, "status": "InProgress", "startTime": _utcnow(),
                                   "done_at": time.monotonic() + OPERATION_S,
                                   "error": error.body()["error"] if error else None}
        prefix = (f"{base_url}/subscriptions/{self.subscription_id}/providers/{provider}/locations/"
                  f"{self.topology['location']}")
        return {"Azure-AsyncOperation": f"{prefix}/azureAsyncOperation/{op_id}?api-version={api_version}",
                "Location": f"{prefix}/operationResults/{op_id}?api-version={api_version}",
                "retry-after-ms": RETRY_AFTER_MS}

    def operation_status(self, op_id: str) -> dict:
        with self._lock:
            operation = self._operations.get(op_id)
            if operation is None:
                raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' could not be found.")
            if operation["status"] == "InProgress" and time.monotonic() >= operation["done_at"]:
                operation["status"] = "Failed" if operation["error"] else "Succeeded"
                operation["endTime"] = _utcnow()
            body = {k: v for k, v in operation.items() if k != "done_at" and v is not None}
            return body

    # ----- subscriptions and resource groups -----

    def subscription(self) -> dict:
        return {"id": f"/subscriptions/{self.subscription_id}", "subscriptionId": self.subscription_id,
                "tenantId": self.tenant_id, "displayName": "lab", "state": "Enabled"}

    def _rg_body(self, rg: str, location: str, tags: dict) -> dict:
        return {"id": self._rg_id(rg), "name": rg, "type": RG, "location": location, "tags": tags,
                "properties": {"provisioningState": "Succeeded"}}

    def rg_list(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(r) for r in self._resources.values() if r["type"] == RG]

    def rg_get(self, rg: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._require_rg(rg))

    def rg_put(self, rg: str, body: dict) -> tuple[int, dict]:
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        with self._lock:
            existing = self._get(self._rg_id(rg))
            group = self._rg_body(existing["name"] if existing else rg, body["location"], body.get("tags") or {})
            self._store(group)
            self._save()
            return (200 if existing else 201), copy.deepcopy(group)

    def rg_delete(self, rg: str) -> None:
        """Deletes the group and everything in it (identities leave the directory)."""
        with self._lock:
            self._require_rg(rg)
            prefix = self._rg_id(rg).lower()
            for key in [k for k in self._resources if k == prefix or k.startswith(prefix + "/")]:
                if self._resources[key]["type"] == MI:
                    self.directory.remove(self._resources[key]["properties"]["principalId"])
                del self._resources[key]
            self._save()

    # ----- user-assigned managed identities -----

    def _identity_body(self, rg: str, name: str, location: str, tags: dict) -> dict:
        return {"id": self._id(rg, MI, name), "name": name, "type": MI, "location": location, "tags": tags,
                "properties": {"tenantId": self.tenant_id, "principalId": str(uuid.uuid4()),
                               "clientId": str(uuid.uuid4()), "isolationScope": "None"}}

    def _register(self, identity: dict) -> None:
        props = identity["properties"]
        self.directory.add_managed_identity(object_id=props["principalId"], client_id=props["clientId"],
                                            resource_id=identity["id"], display_name=identity["name"])

    @staticmethod
    def _identity_ref(identity: dict) -> dict:
        return {"principalId": identity["properties"]["principalId"], "clientId": identity["properties"]["clientId"]}

    def identity_put(self, rg: str, name: str, body: dict) -> tuple[int, dict]:
        location = body.get("location")
        if not location:
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        with self._lock:
            self._require_rg(rg)
            existing = self._get(self._id(rg, MI, name))
            if existing is None:
                identity = self._identity_body(rg, name, location, body.get("tags") or {})
                self._register(identity)
                status = 201
            else:
                if existing["location"].replace(" ", "").lower() != location.replace(" ", "").lower():
                    raise ArmError(400, "InvalidResourceLocation",
                                   f"The resource '{existing['name']}' already exists in location "
                                   f"'{existing['location']}' in resource group '{rg}'. A resource with the same name "
                                   f"cannot be created in location '{location}'. Please select a new resource name.")
                identity = dict(existing, tags=body.get("tags") or {})
                status = 200
            self._store(identity)
            self._save()
            return status, copy.deepcopy(identity)

    def identity_delete(self, rg: str, name: str) -> int:
        with self._lock:
            self._require_rg(rg)
            identity = self._resources.pop(self._id(rg, MI, name).lower(), None)
            if identity is None:
                return 204
            for key in [k for k in self._resources if k.startswith(identity["id"].lower() + "/")]:
                del self._resources[key]
            self.directory.remove(identity["properties"]["principalId"])
            self._save()
            return 200

    # ----- federated identity credentials -----

    def _fics(self, identity: dict) -> list[dict]:
        prefix = identity["id"].lower() + f"/{FIC.lower()}/"
        return [r for k, r in self._resources.items() if k.startswith(prefix)]

    def fic_list(self, rg: str, identity_name: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(sorted(self._fics(self._require(rg, MI, identity_name)), key=lambda r: r["name"]))

    def fic_get(self, rg: str, identity_name: str, name: str) -> dict:
        with self._lock:
            identity = self._require(rg, MI, identity_name)
            found = self._get(f"{identity['id']}/{FIC}/{name}")
            if found is None:
                raise ArmError(404, "NotFound", f"Federated Identity Credential '{name}' not found for managed "
                                                f"identity '{identity_name}'.")
            return copy.deepcopy(found)

    def _fic_write_slot(self, identity: dict) -> None:
        """Refuse a write that overlaps the previous one on the same identity, as Azure does (409)."""
        now = time.monotonic()
        last = self._fic_writes.get(identity["id"].lower(), 0.0)
        if now - last < FIC_WRITE_WINDOW_S:
            raise ArmError(409, "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
                           f"Too many Federated Identity Credentials are written concurrently for the managed identity "
                           f"{identity['id']}. Concurrent Federated Identity Credentials writes under the same managed "
                           f"identity are not supported.")
        self._fic_writes[identity["id"].lower()] = now

    def fic_put(self, rg: str, identity_name: str, name: str, body: dict) -> tuple[int, dict]:
        props = body.get("properties") or {}
        if not FIC_NAME.fullmatch(name):
            raise ArmError(400, "BadRequest", f"The federated identity credential name '{name}' is invalid: it must "
                                              f"match ^[a-zA-Z0-9][a-zA-Z0-9-_]{{2,119}}$.")
        issuer, subject, audiences = props.get("issuer"), props.get("subject"), props.get("audiences")
        if not isinstance(issuer, str) or not issuer.startswith("https://"):
            raise ArmError(400, "BadRequest", "The issuer of a federated identity credential must be an https URL.")
        if not isinstance(subject, str) or not subject.strip():
            raise ArmError(400, "BadRequest", "The subject of a federated identity credential is required.")
        if not isinstance(audiences, list) or len(audiences) != 1 or not isinstance(audiences[0], str):
            raise ArmError(400, "BadRequest", "A federated identity credential must have exactly one audience.")
        with self._lock:
            identity = self._require(rg, MI, identity_name)
            existing = self._get(f"{identity['id']}/{FIC}/{name}")
            if existing is None and len(self._fics(identity)) >= FIC_LIMIT:
                raise ArmError(400, "FederatedIdentityCredentialsLimitExceeded",
                               f"The managed identity {identity['id']} already has {FIC_LIMIT} federated identity "
                               f"credentials, the most one identity may have.")
            self._fic_write_slot(identity)
            credential = {"id": f"{identity['id']}/{FIC}/{name}", "name": name, "type": FIC_TYPE,
                          "properties": {"issuer": issuer, "subject": subject, "audiences": list(audiences)}}
            self._store(credential)
            self._save()
            return (200 if existing else 201), copy.deepcopy(credential)

    def fic_delete(self, rg: str, identity_name: str, name: str) -> int:
        with self._lock:
            identity = self._require(rg, MI, identity_name)
            if self._get(f"{identity['id']}/{FIC}/{name}") is None:
                return 204
            self._fic_write_slot(identity)
            del self._resources[f"{identity['id']}/{FIC}/{name}".lower()]
            self._save()
            return 200

    def federated_credentials(self, client_id: str) -> list[dict]:
        """The federated credentials (``{"issuer", "subject", "audiences"}``) of the identity with this client id."""
        with self._lock:
            for resource in self._resources.values():
                if resource["type"] == MI and resource["properties"]["clientId"].lower() == client_id.lower():
                    return [copy.deepcopy(r["properties"]) for r in self._fics(resource)]
            return []

    # ----- virtual machines -----

    def vm_patch(self, rg: str, name: str, body: dict) -> dict:
        with self._lock:
            vm = copy.deepcopy(self._require(rg, VM, name))
            if "tags" in body:
                vm["tags"] = body["tags"] or {}
            if body.get("identity") is not None:
                self._patch_identity(vm, body["identity"])
            self._store(vm)
            self._save()
            return copy.deepcopy(vm)

    def _attachable_identity(self, workload: dict, key: str) -> dict:
        """The user-assigned identity ``key`` names; ARM's 400 ``FailedIdentityOperation`` when there is none."""
        identity = self._get(key)
        if identity is None or identity["type"] != MI:
            response = json.dumps({"error": {"code": "NotFound", "message": f"Resource '{key}' not found."}})
            raise ArmError(400, "FailedIdentityOperation",
                           f"Identity operation for resource '{workload['id']}' failed with error 'Failed to perform "
                           f"resource identity operation. Status: 'NotFound'. Response: '{response}'.'.")
        return identity

    def _patch_identity(self, vm: dict, patch: dict) -> None:
        """VM (and scale set) PATCH of ``identity``: listed keys added, ``null`` removes, unlisted kept, ``type``
        replaces."""
        current = vm.get("identity") or {"type": "None"}
        assigned = dict(current.get("userAssignedIdentities") or {})
        kind = patch.get("type") or (current["type"] if current["type"] != "None" else "UserAssigned")
        if kind not in ("None", "SystemAssigned", "UserAssigned", "SystemAssigned, UserAssigned"):
            raise ArmError(400, "InvalidParameter", f"The value '{kind}' of parameter 'identity.type' is invalid.")
        if "UserAssigned" not in kind:
            assigned = {}
        for key, value in (patch.get("userAssignedIdentities") or {}).items():
            present = next((k for k in assigned if k.lower() == key.lower()), None)
            if value is None:
                assigned.pop(present, None)
                continue
            identity = self._attachable_identity(vm, key)
            assigned[present or identity["id"]] = self._identity_ref(identity)
        # An empty map cannot stay "UserAssigned": the type keeps only its other half (lab leniency, see docstring).
        if not assigned:
            kind = "SystemAssigned" if kind.startswith("SystemAssigned") else "None"
        if kind == "None":
            vm.pop("identity", None)
            return
        identity = {"type": kind}
        if kind.startswith("SystemAssigned"):
            identity.update(principalId=current.get("principalId") or str(uuid.uuid4()), tenantId=self.tenant_id)
        if assigned:
            identity["userAssignedIdentities"] = assigned
        vm["identity"] = identity

    # ----- PostgreSQL flexible servers and their Entra admins -----

    def pg_patch(self, rg: str, name: str, body: dict, base_url: str, api_version: str) -> dict[str, str]:
        """Apply the PATCH and return the 202's headers; invalid requests raise before anything changes."""
        with self._lock:
            server = copy.deepcopy(self._require(rg, PG, name))
            if "tags" in body:
                server["tags"] = body["tags"] or {}
            auth = server["properties"]["authConfig"]
            for key, value in ((body.get("properties") or {}).get("authConfig") or {}).items():
                if key in ("activeDirectoryAuth", "passwordAuth") and value not in ("Enabled", "Disabled"):
                    raise ArmError(400, "InvalidParameterValue", f"Invalid value '{value}' for parameter "
                                   f"'authConfig.{key}': use Enabled or Disabled.")
                if key in ("activeDirectoryAuth", "passwordAuth", "tenantId") and value is not None:
                    auth[key] = value
            if auth["passwordAuth"] == "Disabled":
                if auth["activeDirectoryAuth"] != "Enabled":
                    raise ArmError(400, "InvalidAuthConfig",
                                   f"Password authentication cannot be disabled on server '{name}' while Microsoft "
                                   "Entra authentication is disabled: at least one authentication method must be "
                                   "enabled.")
                if not self._admins(server):
                    raise ArmError(400, "InvalidAuthConfig",
                                   f"Password authentication cannot be disabled on server '{name}': it has no "
                                   "Microsoft Entra administrator. Add one (administrators/{objectId}) first.")
            self._store(server)
            self._save()
            return self._operation(base_url, api_version)

    def _admins(self, server: dict) -> list[dict]:
        """The server's Entra admins; a read replica's are its primary's (its roles are replicated physically)."""
        source = server["properties"].get("sourceServerResourceId")
        prefix = (source or server["id"]).lower() + "/administrators/"
        return [r for k, r in self._resources.items() if k.startswith(prefix)]

    def pg_replicas(self, rg: str, server_name: str) -> list[dict]:
        """``GET .../flexibleServers/{s}/replicas``: the servers whose ``sourceServerResourceId`` is this one."""
        with self._lock:
            server = self._require(rg, PG, server_name)
            return [copy.deepcopy(r) for r in self._resources.values()
                    if r["type"] == PG and (r["properties"].get("sourceServerResourceId") or "").lower()
                    == server["id"].lower()]

    def _refuse_admin_write_on_replica(self, server: dict) -> None:
        source = server["properties"].get("sourceServerResourceId")
        if source:
            raise ArmError(400, "OperationNotSupportedOnReadReplica",
                           f"Server '{server['name']}' is a read replica: its Microsoft Entra administrators are "
                           f"those of its primary '{source.rsplit('/', 1)[-1]}' (roles are replicated from it). "
                           "Add or remove them on the primary.")

    def pg_capabilities(self, rg: str, server_name: str) -> list[dict]:
        """``GET flexibleServers/{s}/capabilities``: what the server can be changed to, which azure-cli's
        ``postgres flexible-server update`` validates its arguments against before any PATCH. The lab's one answer:
        the server's own SKU, tier, storage size and version, no zone redundancy, no geo-backup."""
        with self._lock:
            server = self._require(rg, PG, server_name)
            sku, storage_mb = server["sku"], server["properties"]["storage"]["storageSizeGB"] * 1024
            storage = {"storageSizeMb": storage_mb, "defaultIopsTier": "P4", "supportedIopsTiers": [{"name": "P4"}]}
            edition = {"name": sku["tier"], "defaultSkuName": sku["name"],
                       "supportedStorageEditions": [{"name": "ManagedDisk", "defaultStorageSizeMb": storage_mb,
                                                     "supportedStorageMb": [storage]}],
                       "supportedServerSkus": [{"name": sku["name"], "vCores": 2, "supportedZones": [],
                                                "supportedHaMode": []}]}
            version = {"name": server["properties"]["version"], "supportedVersionsToUpgrade": []}
            off = ("OfferRestricted", "ZoneRedundantHa", "GeoBackup")
            features = [{"name": name, "status": "Disabled"} for name in off]
            return [{"name": "FlexibleServerCapabilities", "supportedServerEditions": [edition],
                     "supportedServerVersions": [version], "supportedFeatures": features}]

    def pg_admin_list(self, rg: str, server_name: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._admins(self._require_parent(rg, server_name)))

    def _require_parent(self, rg: str, server_name: str) -> dict:
        self._require_rg(rg)
        server = self._get(self._id(rg, PG, server_name))
        if server is None:
            raise ArmError(404, "ParentResourceNotFound",
                           f"Can not perform requested operation on nested resource. Parent resource "
                           f"'{server_name}' not found.")
        return server

    def pg_admin_get(self, rg: str, server_name: str, object_id: str) -> dict:
        with self._lock:
            server = self._require_parent(rg, server_name)
            owner = server["properties"].get("sourceServerResourceId") or server["id"]
            admin = self._get(f"{owner}/administrators/{object_id}")
            if admin is None:
                raise _not_found(PG_ADMIN, f"{server['name']}/{object_id}", rg)
            return copy.deepcopy(admin)

    def pg_admin_put(self, rg: str, server_name: str, object_id: str, body: dict, base_url: str,
                     api_version: str) -> dict[str, str]:
        props = body.get("properties") or {}
        principal_type, principal_name = props.get("principalType"), props.get("principalName")
        if principal_type not in ("User", "Group", "ServicePrincipal", "Unknown"):
            raise ArmError(400, "InvalidParameterValue", f"Invalid value '{principal_type}' for 'principalType': "
                           "use User, Group or ServicePrincipal.")
        if not principal_name:
            raise ArmError(400, "InvalidParameterValue", "The 'principalName' property is required.")
        if props.get("objectId") and props["objectId"].lower() != object_id.lower():
            raise ArmError(400, "InvalidParameterValue",
                           f"The objectId '{props['objectId']}' in the body does not match '{object_id}' in the URL.")
        with self._lock:
            server = self._require_parent(rg, server_name)
            self._refuse_admin_write_on_replica(server)
            if server["properties"]["authConfig"]["activeDirectoryAuth"] != "Enabled":
                raise ArmError(400, "EntraAuthDisabled",
                               f"Microsoft Entra authentication is not enabled on server '{server['name']}': enable "
                               "authConfig.activeDirectoryAuth before adding Microsoft Entra administrators.")
            admin = {"id": f"{server['id']}/administrators/{object_id}", "name": principal_name, "type": PG_ADMIN,
                     "properties": {"principalType": principal_type, "principalName": principal_name,
                                    "objectId": object_id, "tenantId": props.get("tenantId") or self.tenant_id}}
            existing = self._get(admin["id"])
            error = None
            if existing is None or existing["properties"] != admin["properties"]:
                try:
                    self.hooks.create_entra_admin(server["name"], principal_name, object_id, principal_type)
                except Exception as exc:  # noqa: BLE001 - any backend failure fails the ARM operation
                    error = ArmError(500, "InternalServerError", str(exc))
            if error is None:
                self._store(admin)
                self._save()
            return self._operation(base_url, api_version, error)

    def pg_admin_delete(self, rg: str, server_name: str, object_id: str, base_url: str,
                        api_version: str) -> dict[str, str] | None:
        """The 202's headers, or ``None`` (204) when there was no such admin."""
        with self._lock:
            server = self._require_parent(rg, server_name)
            self._refuse_admin_write_on_replica(server)
            key = f"{server['id']}/administrators/{object_id}".lower()
            if key not in self._resources:
                return None
            error = None
            try:
                self.hooks.drop_entra_admin(server["name"], object_id)
            except Exception as exc:  # noqa: BLE001 - any backend failure fails the ARM operation
                error = ArmError(500, "InternalServerError", str(exc))
            if error is None:
                del self._resources[key]
                self._save()
            return self._operation(base_url, api_version, error)

    # ----- Azure SQL servers: the Entra admin and Entra-only authentication -----

    def _sql_admin_body(self, server: dict) -> dict | None:
        admins = server["properties"].get("administrators")
        if not admins:
            return None
        return {"id": f"{server['id']}/administrators/ActiveDirectory", "name": "ActiveDirectory", "type": SQL_ADMIN,
                "properties": {k: admins[k] for k in ("administratorType", "login", "sid", "tenantId",
                                                      "azureADOnlyAuthentication")}}

    def sql_admin_get(self, rg: str, server_name: str) -> dict:
        with self._lock:
            server = self._require(rg, SQL, server_name)
            admin = self._sql_admin_body(server)
            if admin is None:
                raise _not_found(SQL_ADMIN, f"{server['name']}/ActiveDirectory", rg)
            return admin

    def sql_admin_put(self, rg: str, server_name: str, body: dict, base_url: str, api_version: str) -> dict[str, str]:
        """Set (or replace: one per server) the Entra admin; return the 202's headers."""
        props = body.get("properties") or {}
        kind, login, sid = props.get("administratorType", "ActiveDirectory"), props.get("login"), props.get("sid")
        if kind != "ActiveDirectory":
            raise ArmError(400, "InvalidParameterValue",
                           f"Invalid value '{kind}' for 'administratorType': the only value is ActiveDirectory.")
        if not login or not sid:
            raise ArmError(400, "InvalidParameterValue", "The 'login' and 'sid' properties are required.")
        try:
            sid = str(uuid.UUID(str(sid)))
        except ValueError:
            raise ArmError(400, "InvalidParameterValue", f"The 'sid' '{sid}' is not a valid GUID.") from None
        with self._lock:
            server = copy.deepcopy(self._require(rg, SQL, server_name))
            entry = self.directory.by_object_id(sid) or {}
            principal_type = {"User": "User", "Group": "Group"}.get(entry.get("type"), "Application")
            only = bool((server["properties"].get("administrators") or {}).get("azureADOnlyAuthentication"))
            server["properties"]["administrators"] = {
                "administratorType": "ActiveDirectory", "principalType": principal_type, "login": login, "sid": sid,
                "tenantId": props.get("tenantId") or self.tenant_id, "azureADOnlyAuthentication": only}
            self._store(server)
            self._save()
            return self._operation(base_url, api_version, provider="Microsoft.Sql")

    def sql_admin_delete(self, rg: str, server_name: str, base_url: str, api_version: str) -> dict[str, str] | None:
        """The 202's headers, or ``None`` (204) when the server had no Entra admin."""
        with self._lock:
            server = copy.deepcopy(self._require(rg, SQL, server_name))
            admins = server["properties"].get("administrators")
            if not admins:
                return None
            if admins.get("azureADOnlyAuthentication"):
                raise ArmError(400, "InvalidServerAzureADAdminDeleteOperation",
                               f"Azure Active Directory Administrator cannot be deleted when Azure Active Directory "
                               f"Only Authentication is enabled for server '{server['name']}'.")
            del server["properties"]["administrators"]
            self._store(server)
            self._save()
            return self._operation(base_url, api_version, provider="Microsoft.Sql")

    def sql_server_put(self, rg: str, server_name: str, body: dict, base_url: str, api_version: str) -> dict[str, str]:
        """PUT of an existing server, as azure.azcollection's ``azure_rm_sqlserver`` sends it (the whole server): only
        ``properties.administrators`` (the Entra admin and the Entra-only flag, checked as their own PUTs are) and
        ``tags`` are applied, the rest is ignored (no server is created). Returns the 202's headers."""
        admins = (body.get("properties") or {}).get("administrators")
        if admins:
            self.sql_admin_put(rg, server_name, {"properties": admins}, base_url, api_version)
            if "azureADOnlyAuthentication" in admins:
                self.sql_aad_only_put(rg, server_name, {"properties": {
                    "azureADOnlyAuthentication": bool(admins["azureADOnlyAuthentication"])}}, base_url, api_version)
        with self._lock:
            server = copy.deepcopy(self._require(rg, SQL, server_name))
            if isinstance(body.get("tags"), dict):
                server["tags"] = body["tags"]
                self._store(server)
                self._save()
            return self._operation(base_url, api_version, provider="Microsoft.Sql")

    def sql_aad_only_get(self, rg: str, server_name: str) -> dict:
        with self._lock:
            server = self._require(rg, SQL, server_name)
            only = bool((server["properties"].get("administrators") or {}).get("azureADOnlyAuthentication"))
            return {"id": f"{server['id']}/azureADOnlyAuthentications/Default", "name": "Default",
                    "type": SQL_AAD_ONLY, "properties": {"azureADOnlyAuthentication": only}}

    def sql_aad_only_put(self, rg: str, server_name: str, body: dict, base_url: str,
                         api_version: str) -> dict[str, str]:
        only = (body.get("properties") or {}).get("azureADOnlyAuthentication")
        if not isinstance(only, bool):
            raise ArmError(400, "InvalidParameterValue",
                           "The 'azureADOnlyAuthentication' property is required and must be true or false.")
        with self._lock:
            server = copy.deepcopy(self._require(rg, SQL, server_name))
            admins = server["properties"].get("administrators")
            if not admins:
                if only:
                    raise ArmError(400, "InvalidServerAADOnlyAuthNoAADAdminPropertyName",
                                   f"Azure Active Directory Only Authentication cannot be enabled on server "
                                   f"'{server['name']}' without an Azure Active Directory admin: set one first.")
            else:
                admins["azureADOnlyAuthentication"] = only
                self._store(server)
                self._save()
            return self._operation(base_url, api_version, provider="Microsoft.Sql")

    # ----- Cosmos DB accounts: keys, local authentication, data-plane role assignments -----

    def _cosmos_endpoint(self) -> str:
        return f"https://localhost:{self.cosmos_port}/"

    def _cosmos_view(self, account: dict) -> dict:
        """The account as GET returns it: the endpoint depends on this lab's ports, so it is not stored."""
        view = copy.deepcopy(account)
        endpoint = self._cosmos_endpoint()
        view["properties"]["documentEndpoint"] = endpoint
        for location in view["properties"]["locations"]:
            location["documentEndpoint"] = endpoint
        return view

    def cosmos_patch(self, rg: str, name: str, body: dict, base_url: str,
                     api_version: str) -> tuple[dict, dict[str, str]]:
        """Apply ``properties.disableLocalAuth`` and ``tags``; return the 200's body (``Updating``) and headers."""
        props = body.get("properties") or {}
        # azure-cli's `cosmosdb update` also sends `apiProperties: {"serverVersion": null}` (MongoDB's): nulls and
        # objects of nulls change nothing, so they pass.
        others = sorted((set(body) - {"properties", "tags", "location"})
                        | {key for key, value in props.items() if key != "disableLocalAuth" and not _unset(value)})
        if others:
            raise ArmError(400, "LabNotEmulated", f"The lab's Cosmos DB accounts only change properties."
                           f"disableLocalAuth and tags, not {', '.join(others)} (see azurelab/arm.py).")
        if "disableLocalAuth" in props and not isinstance(props["disableLocalAuth"], bool):
            raise _cosmos_error(400, "BadRequest", f"Invalid value '{props['disableLocalAuth']}' for "
                                "'disableLocalAuth': use true or false.")
        with self._lock:
            account = copy.deepcopy(self._require(rg, COSMOS, name))
            if "tags" in body:
                account["tags"] = body["tags"] or {}
            if "disableLocalAuth" in props:
                account["properties"]["disableLocalAuth"] = props["disableLocalAuth"]
            self._store(account)
            self._save()
            answer = self._cosmos_view(account)
            answer["properties"]["provisioningState"] = "Updating"
            return answer, self._operation(base_url, api_version, provider="Microsoft.DocumentDB")

    def cosmos_list_keys(self, rg: str, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._cosmos_keys[self._require(rg, COSMOS, name)["name"]])

    def cosmos_regenerate_key(self, rg: str, name: str, body: dict, base_url: str,
                              api_version: str) -> dict[str, str]:
        """Renew the ``keyKind`` key (in the secrets file too); return the 202's headers."""
        field = COSMOS_KEY_KINDS.get(body.get("keyKind"))
        if field is None:
            raise _cosmos_error(400, "BadRequest", f"Invalid keyKind '{body.get('keyKind')}': use "
                                f"{', '.join(COSMOS_KEY_KINDS)}.")
        with self._lock:
            account = self._require(rg, COSMOS, name)
            stored = json.loads(self.paths.secrets.read_text()) if self.paths.secrets.exists() else {}
            current = dict(self._cosmos_keys[account["name"]])
            keys = stored.setdefault("cosmos_accounts", {}).setdefault(account["name"], current)
            keys[field] = _cosmos_key(self.paths)
            self._save_secrets(stored)
            self._cosmos_keys[account["name"]] = dict(keys)
            return self._operation(base_url, api_version, provider="Microsoft.DocumentDB")

    def _cosmos_role_definition(self, account: dict, role_id: str) -> dict:
        role_name, actions = COSMOS_BUILT_IN_ROLES[role_id]
        return {"id": f"{account['id']}/sqlRoleDefinitions/{role_id}", "name": role_id,
                "type": COSMOS_ROLE_DEFINITION,
                "properties": {"roleName": role_name, "type": "BuiltInRole", "assignableScopes": [account["id"]],
                               "permissions": [{"dataActions": [f"{COSMOS}/{a}" for a in actions],
                                                "notDataActions": []}]}}

    def cosmos_role_definitions(self, rg: str, name: str) -> list[dict]:
        with self._lock:
            account = self._require(rg, COSMOS, name)
            return [self._cosmos_role_definition(account, role_id) for role_id in COSMOS_BUILT_IN_ROLES]

    def cosmos_role_definition(self, rg: str, name: str, role_id: str) -> dict:
        with self._lock:
            account = self._require(rg, COSMOS, name)
            if _guid(role_id) not in COSMOS_BUILT_IN_ROLES:
                raise _cosmos_error(404, "NotFound", f"Unable to find a SQL Role Definition with ID [{role_id}].")
            return self._cosmos_role_definition(account, _guid(role_id))

    def _cosmos_assignments(self, account: dict) -> list[dict]:
        prefix = account["id"].lower() + "/sqlroleassignments/"
        return [r for k, r in self._resources.items() if k.startswith(prefix)]

    def cosmos_assignment_list(self, rg: str, name: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._cosmos_assignments(self._require(rg, COSMOS, name)))

    def cosmos_assignment_get(self, rg: str, name: str, assignment_id: str) -> dict:
        with self._lock:
            account = self._require(rg, COSMOS, name)
            assignment = self._get(f"{account['id']}/sqlRoleAssignments/{assignment_id}")
            if assignment is None:
                raise _cosmos_error(404, "NotFound",
                                    f"Unable to find a SQL Role Assignment with ID [{assignment_id}].")
            return copy.deepcopy(assignment)

    def cosmos_assignment_put(self, rg: str, name: str, assignment_id: str, body: dict, base_url: str,
                              api_version: str) -> dict[str, str]:
        """Create or replace the assignment as Cosmos validates it; return the 202's headers."""
        props = body.get("properties") or {}
        role, scope, principal = props.get("roleDefinitionId"), props.get("scope"), props.get("principalId")
        if _guid(assignment_id) is None:
            raise _cosmos_error(400, "BadRequest",
                                f"The provided SQL Role Assignment ID [{assignment_id}] is not a valid GUID.")
        if not role or not scope or not principal:
            raise _cosmos_error(400, "BadRequest",
                                "The properties roleDefinitionId, scope and principalId are required.")
        with self._lock:
            account = self._require(rg, COSMOS, name)
            account_id = re.escape(account["id"])
            found = re.fullmatch(account_id + r"/sqlRoleDefinitions/([^/]+)", role, re.IGNORECASE)
            if found is None:
                raise _cosmos_error(400, "BadRequest",
                                    f"The provided role definition ID [{role}] is not valid: it must be the fully "
                                    f"qualified id {account['id']}/sqlRoleDefinitions/{{roleDefinitionId}}.")
            if _guid(found.group(1)) not in COSMOS_BUILT_IN_ROLES:
                raise _cosmos_error(400, "BadRequest", f"The provided role definition ID [{role}] was not found.")
            if not re.fullmatch(account_id + r"(/dbs/[^/]+(/colls/[^/]+)?)?/?", scope, re.IGNORECASE):
                raise _cosmos_error(400, "BadRequest",
                                    f"The provided scope [{scope}] is not valid: it must be the fully qualified id "
                                    f"of database account [{account['id']}], optionally followed by "
                                    f"/dbs/{{database}} or /dbs/{{database}}/colls/{{container}}.")
            if _guid(principal) is None or self.directory.by_object_id(_guid(principal)) is None:
                raise _cosmos_error(400, "BadRequest",
                                    f"The provided principal ID [{principal}] was not found in the AAD tenant(s) "
                                    f"[{self.tenant_id}] which are associated with the customer's subscription.")
            self._store({"id": f"{account['id']}/sqlRoleAssignments/{_guid(assignment_id)}",
                         "name": _guid(assignment_id), "type": COSMOS_ROLE_ASSIGNMENT,
                         "properties": {"roleDefinitionId": role, "scope": scope.rstrip("/"),
                                        "principalId": _guid(principal)}})
            self._save()
            return self._operation(base_url, api_version, provider="Microsoft.DocumentDB")

    def cosmos_assignment_delete(self, rg: str, name: str, assignment_id: str, base_url: str,
                                 api_version: str) -> dict[str, str] | None:
        """The 202's headers, or ``None`` (204) when there was no such assignment."""
        with self._lock:
            account = self._require(rg, COSMOS, name)
            if self._resources.pop(f"{account['id']}/sqlRoleAssignments/{assignment_id}".lower(), None) is None:
                return None
            self._save()
            return self._operation(base_url, api_version, provider="Microsoft.DocumentDB")

    # ----- AKS managed clusters: OIDC issuer, workload identity, user credentials -----

    def _issuer_url(self, cluster: dict) -> str:
        """The cluster's issuer URL, like ``https://{region}.oic.prod-aks.azure.com/{tenant}/{uid}/`` (trailing
        slash included), served by this double."""
        return f"https://localhost:{self.arm_port}/oidc/{self.tenant_id}/{cluster['_lab']['issuerId']}/"

    def _aks_view(self, cluster: dict) -> dict:
        view = copy.deepcopy(cluster)
        del view["_lab"]
        if view["properties"]["oidcIssuerProfile"].get("enabled"):
            view["properties"]["oidcIssuerProfile"]["issuerURL"] = self._issuer_url(cluster)
        return view

    def aks_put(self, rg: str, name: str, body: dict, base_url: str, api_version: str) -> tuple[dict, dict[str, str]]:
        """Apply a PUT to an existing cluster; return the 200's body (``Updating``) and headers (an operation).

        Changed: ``tags``, ``oidcIssuerProfile.enabled`` (``false`` once on: 400 ``OIDCIssuerFeatureCannotBeDisabled``;
        turning it on restarts the API server) and ``securityProfile.workloadIdentity.enabled`` (on while the issuer
        stays off: 400 ``OIDCIssuerRequiredForWorkloadIdentity``). A property absent from the body keeps its value; a
        different value of :data:`AKS_FIXED_PROPERTIES` is refused (400 ``LabNotEmulated``); other properties are
        ignored. Nothing changes when the request is refused or asks for the current state.
        """
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        props = body.get("properties") or {}
        with self._lock:
            self._require_rg(rg)
            cluster = self._get(self._id(rg, AKS, name))
            if cluster is None:
                raise ArmError(400, "LabNotEmulated", f"The lab's ARM double does not create managed clusters: only "
                               f"those of topology.yml exist, not '{name}' (see azurelab/arm.py).")
            updated = copy.deepcopy(cluster)
            current = updated["properties"]
            for key in AKS_FIXED_PROPERTIES:
                if key in props and props[key] is not None and props[key] != current.get(key):
                    raise ArmError(400, "LabNotEmulated", f"The lab's managed clusters do not change properties.{key} "
                                   f"(from {json.dumps(current.get(key))}; see azurelab/arm.py).")
            if "tags" in body:
                updated["tags"] = body["tags"] or {}
            was_on = bool(current["oidcIssuerProfile"].get("enabled"))
            wanted = (props.get("oidcIssuerProfile") or {}).get("enabled")
            if wanted is not None:
                if was_on and not wanted:
                    raise ArmError(400, "OIDCIssuerFeatureCannotBeDisabled", "OIDC issuer feature cannot be disabled.")
                current["oidcIssuerProfile"] = {"enabled": bool(wanted)}
            workload = (props.get("securityProfile") or {}).get("workloadIdentity")
            if workload is not None and workload.get("enabled") is not None:
                current["securityProfile"]["workloadIdentity"] = {"enabled": bool(workload["enabled"])}
            if (current["securityProfile"].get("workloadIdentity") or {}).get("enabled") \
                    and not current["oidcIssuerProfile"]["enabled"]:
                raise ArmError(400, "OIDCIssuerRequiredForWorkloadIdentity",
                               "Enabling workload identity requires enabling OIDC issuer: set "
                               "properties.oidcIssuerProfile.enabled to true.")
            if current["oidcIssuerProfile"]["enabled"] and not was_on:
                # Enabling the issuer restarts the API server (https://learn.microsoft.com/azure/aks/use-oidc-issuer).
                updated["_lab"]["apiServerRestarts"] += 1
                updated["_lab"]["lastRestart"] = {"at": _utcnow(), "reason": "OIDC issuer enabled"}
            if updated != cluster:
                self._store(updated)
                self._save()
            answer = self._aks_view(updated)
            answer["properties"]["provisioningState"] = "Updating"
            return answer, self._operation(base_url, api_version, provider="Microsoft.ContainerService")

    def aks_patch_tags(self, rg: str, name: str, body: dict) -> dict:
        """``begin_update_tags``: replace the tags (the only thing a managed cluster PATCH changes)."""
        others = sorted(set(body) - {"tags"})
        if others:
            raise ArmError(400, "LabNotEmulated", f"A managed cluster PATCH changes tags only, not {', '.join(others)}.")
        with self._lock:
            cluster = copy.deepcopy(self._require(rg, AKS, name))
            cluster["tags"] = body.get("tags") or {}
            self._store(cluster)
            self._save()
            return self._aks_view(cluster)

    def aks_user_credentials(self, rg: str, name: str, kubeconfig_format: str | None) -> dict:
        """``listClusterUserCredential``: ``{"kubeconfigs": [{"name": "clusterUser", "value": base64 kubeconfig}]}``.

        The kubeconfig (``format=exec``, the default since Kubernetes 1.24) names the lab's API server
        ``https://localhost:<kube port>`` with the lab CA as ``certificate-authority-data``, and a user whose
        credentials come from the kubelogin exec plugin (``get-token --server-id`` the AKS server application): it
        holds no secret. ``format=azure`` (the removed auth-provider) is refused (400 ``LabNotEmulated``).
        """
        if kubeconfig_format not in (None, "exec"):
            raise ArmError(400, "LabNotEmulated", f"The lab's managed clusters only give format=exec kubeconfigs, "
                                                  f"not format={kubeconfig_format}.")
        with self._lock:
            cluster = self._require(rg, AKS, name)
            tenant = cluster["properties"]["aadProfile"]["tenantID"]
            cluster_name, user = cluster["name"], f"clusterUser_{rg}_{cluster['name']}"
        ca = base64.b64encode(self.paths.ca_cert.read_bytes()).decode()
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": cluster_name,
            "clusters": [{"name": cluster_name, "cluster": {"certificate-authority-data": ca,
                                                            "server": f"https://localhost:{self.kube_port}"}}],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
            "users": [{"name": user, "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
                "args": ["get-token", "--environment", "AzurePublicCloud", "--server-id", AKS_SERVER_ID,
                         "--client-id", AKS_KUBELOGIN_CLIENT_ID, "--tenant-id", tenant, "--login", "devicecode"],
                "env": None, "provideClusterInfo": False,
                "installHint": "\nkubelogin is not installed which is required to connect to AAD enabled cluster.\n\n"
                               "To learn more, please go to https://aka.ms/aks/kubelogin\n"}}}],
        }
        value = base64.b64encode(yaml.safe_dump(kubeconfig, sort_keys=False).encode()).decode()
        return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}

    # ----- VM scale sets, App Service apps and Container Apps: identities, app settings, container env -----

    def vmss_patch(self, rg: str, name: str, body: dict) -> dict:
        """PATCH ``identity`` and ``tags`` of a scale set, with the VMs' identity semantics (:meth:`_patch_identity`)."""
        with self._lock:
            scale_set = copy.deepcopy(self._require(rg, VMSS, name))
            if "tags" in body:
                scale_set["tags"] = body["tags"] or {}
            if body.get("identity") is not None:
                self._patch_identity(scale_set, body["identity"])
            self._store(scale_set)
            self._save()
            return copy.deepcopy(scale_set)

    def _replace_identity(self, workload: dict, patch: dict, both: str) -> None:
        """App Service / Container Apps PATCH of ``identity``, strict: the ``userAssignedIdentities`` map sent
        REPLACES the attached set (a ``null`` value leaves that key out; an absent map keeps the set), so a client
        must read, merge and write the whole map. ``both`` is the kind's spelling of the combined type."""
        current = workload.get("identity") or {"type": "None"}
        kind = (patch.get("type") or current.get("type") or "None")
        if kind.replace(" ", "") not in ("None", "SystemAssigned", "UserAssigned", "SystemAssigned,UserAssigned"):
            raise ArmError(400, "InvalidParameter", f"The value '{kind}' of parameter 'identity.type' is invalid.")
        kind = both if "," in kind else kind
        sent = patch.get("userAssignedIdentities")
        if sent is None:
            assigned = dict(current.get("userAssignedIdentities") or {})
        else:
            assigned = {}
            for key, value in sent.items():
                if value is not None:
                    identity = self._attachable_identity(workload, key)
                    assigned[identity["id"]] = self._identity_ref(identity)
        if "UserAssigned" not in kind:
            if sent:
                raise ArmError(400, "InvalidParameter", f"identity.userAssignedIdentities needs an identity.type "
                                                        f"with UserAssigned, not '{kind}'.")
            assigned = {}
        if not assigned and "UserAssigned" in kind:
            kind = "SystemAssigned" if kind.startswith("SystemAssigned") else "None"
        identity = {"type": kind}
        if kind.startswith("SystemAssigned"):
            identity.update(principalId=current.get("principalId") or str(uuid.uuid4()), tenantId=self.tenant_id)
        if assigned:
            identity["userAssignedIdentities"] = assigned
        workload["identity"] = identity

    def site_patch(self, rg: str, name: str, body: dict) -> dict:
        """PATCH an App Service app: ``tags``, ``identity`` (strict replace, :meth:`_replace_identity`) and
        ``properties`` merged as JSON merge patch (read-only ones ignored); returns the app (200)."""
        with self._lock:
            site = copy.deepcopy(self._require(rg, SITE, name))
            if "tags" in body:
                site["tags"] = body["tags"] or {}
            if body.get("identity") is not None:
                self._replace_identity(site, body["identity"], "SystemAssigned, UserAssigned")
            writable = {k: v for k, v in (body.get("properties") or {}).items() if k not in SITE_READ_ONLY}
            site["properties"] = _merge_patch(site["properties"], writable)
            self._store(site)
            self._save()
            return copy.deepcopy(site)

    def _app_settings(self, rg: str, name: str) -> dict:
        site = self._require(rg, SITE, name)
        return self._get(f"{site['id']}/config/appsettings")

    def site_app_settings_list(self, rg: str, name: str) -> dict:
        """``POST .../config/appsettings/list``: the StringDictionary resource (``properties``: name -> value)."""
        with self._lock:
            return copy.deepcopy(self._app_settings(rg, name))

    def site_app_settings_put(self, rg: str, name: str, body: dict) -> dict:
        """``PUT .../config/appsettings``: the body's ``properties`` REPLACE every app setting (Azure's semantics:
        a setting left out is deleted); values must be strings."""
        settings = body.get("properties")
        if not isinstance(settings, dict) or not all(isinstance(v, str) for v in settings.values()):
            raise ArmError(400, "BadRequest", "The app settings must be an object of string values in 'properties'.")
        with self._lock:
            config = copy.deepcopy(self._app_settings(rg, name))
            config["properties"] = dict(settings)
            self._store(config)
            self._save()
            return copy.deepcopy(config)

    def container_app_patch(self, rg: str, name: str, body: dict, base_url: str,
                            api_version: str) -> dict[str, str]:
        """PATCH a Container App (JSON merge patch; arrays such as ``template.containers`` are replaced whole):
        ``tags``, ``identity`` (strict replace, :meth:`_replace_identity`), ``properties`` (read-only ones ignored).
        A template change makes a new revision. Returns the 202's headers; invalid requests change nothing."""
        with self._lock:
            app = copy.deepcopy(self._require(rg, CONTAINER_APP, name))
            if "tags" in body:
                app["tags"] = body["tags"] or {}
            if body.get("identity") is not None:
                self._replace_identity(app, body["identity"], "SystemAssigned,UserAssigned")
            writable = {k: v for k, v in (body.get("properties") or {}).items() if k not in CONTAINER_APP_READ_ONLY}
            before = copy.deepcopy(app["properties"].get("template"))
            app["properties"] = _merge_patch(app["properties"], writable)
            for container in app["properties"].get("template", {}).get("containers") or []:
                if not container.get("name") or not container.get("image"):
                    raise ArmError(400, "ContainerAppInvalidContainer",
                                   "Every container of properties.template.containers needs a name and an image "
                                   "(a PATCH replaces the whole list).")
                for entry in container.get("env") or []:
                    if not entry.get("name") or ("value" not in entry and "secretRef" not in entry):
                        raise ArmError(400, "ContainerAppInvalidContainer",
                                       f"Environment variable {json.dumps(entry)} needs a name and a value or "
                                       f"secretRef.")
            if app["properties"].get("template") != before:
                revision = int(app["properties"]["latestRevisionName"].rsplit("--", 1)[1]) + 1
                app["properties"]["latestRevisionName"] = app["properties"]["latestReadyRevisionName"] = \
                    f"{app['name']}--{revision:07d}"
                app["properties"]["latestRevisionFqdn"] = f"{app['name']}--{revision:07d}.localhost"
            self._store(app)
            self._save()
            return self._operation(base_url, api_version, provider="Microsoft.App")

    def list_in_rg(self, rg: str, type_: str) -> list[dict]:
        with self._lock:
            self._require_rg(rg)
            return [self._view(r) for r in self._in_rg(rg, type_)]

    def get(self, rg: str, type_: str, name: str) -> dict:
        with self._lock:
            return self._view(self._require(rg, type_, name))

    def _view(self, resource: dict) -> dict:
        """The resource as GET returns it: what depends on this lab's ports is added, the lab's own notes removed."""
        if resource["type"] == COSMOS:
            return self._cosmos_view(resource)
        if resource["type"] == AKS:
            return self._aks_view(resource)
        return copy.deepcopy(resource)


def cloud_metadata(app: "ArmApp", base_url: str) -> dict:
    """``GET /metadata/endpoints`` (no authentication, as on ARM): the cloud's endpoints in the 2022-09-01 shape, what
    azure-cli's ``get_cloud_from_metadata_endpoint`` reads when a tool is given the ARM URL as its cloud (azure.azcollection's
    ``cloud_environment``, ``az cloud register --endpoint-resource-manager``). Only what those read: the ARM URL, the Entra
    double's login endpoint, the audiences ARM accepts and PostgreSQL's (``ossrdbmsResourceId``: ``az account
    get-access-token --resource-type oss-rdbms``); ``suffixes`` empty (the lab's databases are reached by the ports
    the inventory names)."""
    return {"name": "Lab", "resourceManager": f"{base_url}/", "portal": "", "suffixes": {},
            "authentication": {"loginEndpoint": f"{app.authority.rsplit('/', 1)[0]}/", "identityProvider": "AAD",
                               "tenant": "common", "audiences": list(app.audiences)},
            "ossrdbmsResourceId": app.state.topology["audiences"]["postgres"]}


class ArmHandler(JsonHandler):
    """Routes ARM requests to :class:`ArmState`; ``self.server.app`` is an :class:`ArmApp`."""

    def do_GET(self):
        self.handle_any()

    do_HEAD = do_PUT = do_PATCH = do_DELETE = do_POST = do_GET

    def handle_any(self):
        app: ArmApp = self.app
        state = app.state
        body = self.read_body()
        if self.route.startswith("/lab/"):
            return self.send_json(*self.lab_api(state, body))
        if self.route.startswith("/oidc/"):
            return self.send_json(*self.issuer_document(state))
        state.count(self.command, self.route)
        if self.route.rstrip("/") == "/metadata/endpoints" and self.command == "GET":
            return self.send_json(200, cloud_metadata(app, f"https://{self.headers.get('Host')}"))
        headers = {"x-ms-request-id": str(uuid.uuid4()),
                   "x-ms-correlation-request-id": self.headers.get("x-ms-client-request-id") or str(uuid.uuid4())}
        name, value = state.remaining(self.command)
        headers[name] = str(value)
        try:
            self.authenticate(app)
            if not self.query.get("api-version"):
                raise ArmError(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests.")
            fault = state.take_fault(self.command, self.route, body)
            if isinstance(fault, ConnectionReset):
                return self.reset_connection()
            if fault is not None:
                raise fault
            self.refuse_if_locked(state)
            try:
                payload = json.loads(body) if body else {}
            except ValueError:
                raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                               "deserialized.") from None
            status, answer, extra = self.dispatch(state, payload)
            headers.update(extra)
        except ArmError as err:
            headers.update(err.headers)
            status, answer = err.status, err.body()
        self.send_json(status, answer, headers)

    def authenticate(self, app: "ArmApp") -> None:
        scheme, _space, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        try:
            claims = app.issuer.verify(token.strip(), app.audiences)
        except TokenError as err:
            challenge = (f'Bearer authorization_uri="{app.authority}", error="invalid_token", '
                         f'error_description="{err.reason}"')
            raise ArmError(401, "InvalidAuthenticationToken", f"The access token is invalid: {err.reason}.",
                           {"WWW-Authenticate": challenge}) from None
        if claims.get("tid") != app.state.tenant_id:
            raise ArmError(401, "InvalidAuthenticationTokenTenant",
                           f"The access token is from the wrong issuer '{claims.get('iss')}'.")
        self.claims = claims

    def refuse_if_locked(self, state: ArmState) -> None:
        """ARM's answer to a write under a lock: 409 ``ScopeLocked``, with ARM's words."""
        if AUTHZ in self.route.lower():
            return
        refusal = state.rbac.refusal(self.command, self.route)
        if refusal:
            operation, scopes = refusal
            raise ArmError(409, "ScopeLocked", f"The scope '{self.route}' cannot perform {operation} operation "
                           f"because following scope(s) are locked: '{', '.join(scopes)}'. Please remove the lock "
                           "and try again.")

    def authorization(self, state: ArmState) -> tuple[int, dict | None, dict]:
        """``GET {scope}/providers/Microsoft.Authorization/permissions|locks`` for a resource group or a resource
        (the SDKs send an empty parent resource path as ``//``)."""
        route = re.sub("/+", "/", self.route).rstrip("/")
        at = route.lower().rindex(AUTHZ)
        scope, what = route[:at], route[at + len(AUTHZ):]
        if self.command != "GET" or what.lower() not in ("permissions", "locks"):
            raise self.unsupported()
        if not scope.lower().startswith(f"/subscriptions/{state.subscription_id.lower()}"):
            raise ArmError(404, "SubscriptionNotFound", f"The subscription of '{scope}' could not be found.")
        if what.lower() == "locks":
            return self.page(state.rbac.locks_at(scope), f"https://{self.headers.get('Host')}")
        principals = state.caller_principals(self.claims.get("oid", ""))
        return 200, {"value": state.rbac.permissions(principals, scope)}, {}

    def dispatch(self, state: ArmState, body: dict) -> tuple[int, dict | None, dict]:
        if AUTHZ in self.route.lower():
            return self.authorization(state)
        method, raw = self.command, self.route.strip("/").split("/")
        seg = [s.lower() for s in raw]
        base_url = f"https://{self.headers.get('Host')}"
        api = self.query["api-version"]
        if seg == ["subscriptions"] and method == "GET":
            return 200, {"value": [state.subscription()]}, {}
        if seg[0] != "subscriptions" or len(seg) < 2:
            raise ArmError(404, "NotFound", f"No HTTP resource was found that matches the request URI '{self.path}'.")
        if seg[1] != state.subscription_id.lower():
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{raw[1]}' could not be found.")
        if len(seg) == 2 and method == "GET":
            return 200, state.subscription(), {}
        if len(seg) == 8 and seg[2] == "providers" and seg[4] == "locations" and method == "GET":
            operation = state.operation_status(raw[7])
            if seg[6] == "azureasyncoperation":
                # Like ARM, say when to look again while the operation runs; without it the SDKs wait 30 s.
                return 200, operation, ({"retry-after-ms": RETRY_AFTER_MS} if operation["status"] == "InProgress"
                                        else {})
            if seg[6] == "operationresults":
                if operation["status"] == "InProgress":
                    return 202, None, {"Location": f"{base_url}{self.path}", "retry-after-ms": RETRY_AFTER_MS}
                if operation["status"] == "Failed":
                    error = operation["error"]
                    raise ArmError(400, error["code"], error["message"])
                return 200, None, {}
        if len(seg) < 3 or seg[2] != "resourcegroups":
            raise self.unsupported()
        if len(seg) == 3 and method == "GET":
            return 200, {"value": state.rg_list()}, {}
        rg = raw[3] if len(seg) > 3 else ""
        if len(seg) == 4:
            return self.resource_group(state, method, rg, body)
        if len(seg) < 7 or seg[4] != "providers":
            raise self.unsupported()
        type_ = {t.lower(): t for t in (MI, VM, PG, SQL, COSMOS, AKS, VMSS, SITE, CONTAINER_APP)}.get(
            f"{seg[5]}/{seg[6]}")
        if type_ is None:
            raise self.unsupported()
        if len(seg) == 7:
            if method != "GET":
                raise self.unsupported()
            return self.page(state.list_in_rg(rg, type_), base_url)
        name = raw[7]
        if len(seg) == 8:
            return self.resource(state, method, rg, type_, name, body, base_url, api)
        if type_ == MI and seg[8] == FIC.lower() and len(seg) in (9, 10):
            return self.fic(state, method, rg, name, raw[9] if len(seg) == 10 else None, body, base_url)
        if type_ == PG and seg[8:] == ["capabilities"] and method == "GET":
            return 200, {"value": state.pg_capabilities(rg, name)}, {}
        if type_ == PG and seg[8:] == ["replicas"] and method == "GET":
            return 200, {"value": state.pg_replicas(rg, name)}, {}
        if type_ == PG and seg[8] == "administrators" and len(seg) in (9, 10):
            return self.pg_admin(state, method, rg, name, raw[9] if len(seg) == 10 else None, body, base_url, api)
        if type_ == SQL and seg[8:] == ["failovergroups"] and method == "GET":
            return 200, {"value": state.sql_failover_groups(rg, name)}, {}
        sql_children = (["administrators", "activedirectory"], ["azureadonlyauthentications", "default"])
        if type_ == SQL and len(seg) == 10 and seg[8:] in sql_children:
            return self.sql_child(state, method, rg, name, seg[8], body, base_url, api)
        if type_ == AKS and seg[8:] == ["listclusterusercredential"] and method == "POST":
            return 200, state.aks_user_credentials(rg, name, self.query.get("format")), {}
        if type_ == SITE and seg[8:] == ["config", "appsettings", "list"] and method == "POST":
            return 200, state.site_app_settings_list(rg, name), {}
        if type_ == SITE and seg[8:] == ["config", "appsettings"] and method == "PUT":
            return 200, state.site_app_settings_put(rg, name, body), {}
        if type_ == COSMOS and len(seg) in (9, 10):
            return self.cosmos_child(state, method, rg, name, seg[8], raw[9] if len(seg) == 10 else None, body,
                                     base_url, api)
        raise self.unsupported()

    def unsupported(self) -> ArmError:
        return ArmError(405, "LabNotEmulated",
                        f"The lab's ARM double does not emulate {self.command} {self.route} (see azurelab/arm.py).")

    def page(self, items: list[dict], base_url: str) -> tuple[int, dict, dict]:
        start = int(self.query.get("$skipToken") or 0)
        answer = {"value": items[start:start + PAGE_SIZE]}
        if start + PAGE_SIZE < len(items):
            answer["nextLink"] = (f"{base_url}{self.route}?api-version={self.query['api-version']}"
                                  f"&$skipToken={start + PAGE_SIZE}")
        return 200, answer, {}

    def resource_group(self, state: ArmState, method: str, rg: str, body: dict):
        if method == "GET":
            return 200, state.rg_get(rg), {}
        if method == "HEAD":
            try:
                state.rg_get(rg)
            except ArmError:
                return 404, None, {}
            return 204, None, {}
        if method == "PUT":
            status, group = state.rg_put(rg, body)
            return status, group, {}
        if method == "DELETE":
            state.rg_delete(rg)
            return 200, None, {}
        raise self.unsupported()

    def resource(self, state: ArmState, method: str, rg: str, type_: str, name: str, body: dict, base_url: str,
                 api: str):
        if method == "GET":
            return 200, state.get(rg, type_, name), {}
        if type_ == MI and method == "PUT":
            status, identity = state.identity_put(rg, name, body)
            return status, identity, {}
        if type_ == MI and method == "DELETE":
            return state.identity_delete(rg, name), None, {}
        if type_ == VM and method == "PATCH":
            return 200, state.vm_patch(rg, name, body), {}
        if type_ == VMSS and method == "PATCH":
            return 200, state.vmss_patch(rg, name, body), {}
        if type_ == SITE and method in ("PATCH", "PUT"):  # PUT: azure-cli's `webapp identity assign`, see the docstring
            return 200, state.site_patch(rg, name, body), {}
        if type_ == CONTAINER_APP and method == "PATCH":
            return 202, None, state.container_app_patch(rg, name, body, base_url, api)
        if type_ == AKS and method == "PUT":
            answer, headers = state.aks_put(rg, name, body, base_url, api)
            return 200, answer, headers
        if type_ == AKS and method == "PATCH":
            return 200, state.aks_patch_tags(rg, name, body), {}
        if type_ == PG and method == "PATCH":
            return 202, None, state.pg_patch(rg, name, body, base_url, api)
        if type_ == SQL and method == "PUT":
            return 202, None, state.sql_server_put(rg, name, body, base_url, api)
        if type_ == COSMOS and method == "PATCH":
            answer, headers = state.cosmos_patch(rg, name, body, base_url, api)
            return 200, answer, headers
        raise self.unsupported()

    def fic(self, state: ArmState, method: str, rg: str, identity: str, name: str | None, body: dict, base_url: str):
        if name is None:
            if method == "GET":
                return self.page(state.fic_list(rg, identity), base_url)
        elif method == "GET":
            return 200, state.fic_get(rg, identity, name), {}
        elif method == "PUT":
            status, credential = state.fic_put(rg, identity, name, body)
            return status, credential, {}
        elif method == "DELETE":
            return state.fic_delete(rg, identity, name), None, {}
        raise self.unsupported()

    def pg_admin(self, state: ArmState, method: str, rg: str, server: str, object_id: str | None, body: dict,
                 base_url: str, api: str):
        if object_id is None:
            if method == "GET":
                return 200, {"value": state.pg_admin_list(rg, server)}, {}
        elif method == "GET":
            return 200, state.pg_admin_get(rg, server, object_id), {}
        elif method == "PUT":
            return 202, None, state.pg_admin_put(rg, server, object_id, body, base_url, api)
        elif method == "DELETE":
            headers = state.pg_admin_delete(rg, server, object_id, base_url, api)
            return (204, None, {}) if headers is None else (202, None, headers)
        raise self.unsupported()

    def sql_child(self, state: ArmState, method: str, rg: str, server: str, child: str, body: dict, base_url: str,
                  api: str):
        if child == "administrators":
            if method == "GET":
                return 200, state.sql_admin_get(rg, server), {}
            if method == "PUT":
                return 202, None, state.sql_admin_put(rg, server, body, base_url, api)
            if method == "DELETE":
                headers = state.sql_admin_delete(rg, server, base_url, api)
                return (204, None, {}) if headers is None else (202, None, headers)
        elif method == "GET":
            return 200, state.sql_aad_only_get(rg, server), {}
        elif method == "PUT":
            return 202, None, state.sql_aad_only_put(rg, server, body, base_url, api)
        raise self.unsupported()

    def cosmos_child(self, state: ArmState, method: str, rg: str, account: str, child: str, child_id: str | None,
                     body: dict, base_url: str, api: str):
        if child_id is None:
            if child == "listkeys" and method == "POST":
                return 200, state.cosmos_list_keys(rg, account), {}
            if child == "regeneratekey" and method == "POST":
                return 202, None, state.cosmos_regenerate_key(rg, account, body, base_url, api)
            if child == "sqlroledefinitions" and method == "GET":
                return 200, {"value": state.cosmos_role_definitions(rg, account)}, {}
            if child == "sqlroleassignments" and method == "GET":
                return 200, {"value": state.cosmos_assignment_list(rg, account)}, {}
        elif child == "sqlroledefinitions" and method == "GET":
            return 200, state.cosmos_role_definition(rg, account, child_id), {}
        elif child == "sqlroleassignments":
            if method == "GET":
                return 200, state.cosmos_assignment_get(rg, account, child_id), {}
            if method == "PUT":
                return 202, None, state.cosmos_assignment_put(rg, account, child_id, body, base_url, api)
            if method == "DELETE":
                headers = state.cosmos_assignment_delete(rg, account, child_id, base_url, api)
                return (204, None, {}) if headers is None else (202, None, headers)
        raise self.unsupported()

    def issuer_document(self, state: ArmState) -> tuple[int, dict]:
        """``GET /oidc/{tenant}/{uid}/.well-known/openid-configuration`` and ``.../openid/v1/jwks``: an AKS cluster's
        public OIDC issuer documents, without authentication (404 while the issuer is off)."""
        parts = self.route.split("/")
        if self.command == "GET" and len(parts) >= 6:
            document = {".well-known/openid-configuration": "openid-configuration",
                        "openid/v1/jwks": "jwks"}.get("/".join(parts[4:]))
            found = state.aks_issuer_document(parts[2], parts[3], document) if document else None
            if found is not None:
                return 200, found
        return 404, {"error": {"code": "NotFound", "message": "The OIDC issuer document was not found."}}

    def lab_rbac(self, state: ArmState, route: str, method: str, body: bytes) -> tuple[int, dict | list | None]:
        """``/lab/locks``: GET lists, POST adds ``{scope, level, name?}``, DELETE removes all.
        ``/lab/role-assignments``: GET lists, POST adds ``{principal, role, scope}``, DELETE removes those matching
        the keys given (``{principal?, role?, scope?}``) and returns them."""
        spec = json.loads(body) if body else {}
        try:
            if route == "/lab/locks":
                if method == "GET":
                    return 200, {"value": state.rbac.locks_at(f"/subscriptions/{state.subscription_id}")}
                if method == "POST":
                    return 201, state.rbac.add_lock(spec)
                if method == "DELETE":
                    state.rbac.clear_locks()
                    return 200, {"value": []}
            if method == "GET":
                return 200, {"value": state.rbac.assignments()}
            if method == "POST":
                return 201, state.rbac.add_assignment(spec)
            if method == "DELETE":
                return 200, {"value": state.rbac.remove_assignments(spec)}
        except (RbacError, KeyError) as err:
            return 400, {"error": {"code": "BadRequest", "message": str(err)}}
        return 405, {"error": {"code": "MethodNotAllowed", "message": f"{method} {route}"}}

    def lab_api(self, state: ArmState, body: bytes) -> tuple[int, dict | None]:
        route, method = self.route.rstrip("/"), self.command
        if route == "/lab/counters" and method == "GET":
            return 200, state.counters_snapshot()
        if route == "/lab/counters/reset" and method == "POST":
            state.reset_counters()
            return 200, state.counters_snapshot()
        if route == "/lab/faults":
            if method == "GET":
                return 200, {"value": state.faults(), "served": state.served_faults()}
            if method == "DELETE":
                state.clear_faults()
                return 200, {"value": [], "served": []}
            if method == "POST":
                try:
                    return 201, state.add_fault(json.loads(body or b"{}"))
                except (ValueError, KeyError, re.error) as exc:
                    return 400, {"error": {"code": "InvalidFault", "message": f"Bad fault spec: {exc!r}"}}
        if route == "/lab/grant-faults":
            if method == "GET":
                return 200, {"value": state.grant_faults()}
            if method == "DELETE":
                state.clear_grant_faults()
                return 200, {"value": []}
            if method == "POST":
                try:
                    return 201, state.add_grant_fault(json.loads(body or b"{}"))
                except (ValueError, KeyError, TypeError) as exc:
                    return 400, {"error": {"code": "InvalidFault", "message": f"Bad grant fault spec: {exc!r}"}}
        if route == "/lab/state" and method == "GET":
            return 200, state.dump()
        if route in ("/lab/locks", "/lab/role-assignments"):
            return self.lab_rbac(state, route, method, body)
        if route.startswith("/lab/aks/") and method == "GET":
            try:
                return 200, state.aks_lab_status(route[len("/lab/aks/"):])
            except KeyError:
                pass
        return 404, {"error": {"code": "NotFound", "message": f"No lab API {method} {route}"}}


class ArmApp:
    """What the ARM handler serves: the state, and how to check bearer tokens."""

    def __init__(self, state: ArmState, issuer: Issuer, audiences: list[str], authority: str):
        self.state, self.issuer, self.audiences, self.authority = state, issuer, audiences, authority
