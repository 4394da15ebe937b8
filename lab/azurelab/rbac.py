"""Azure RBAC and management locks for the ARM double: what ``GET {scope}/providers/Microsoft.Authorization/
permissions`` and ``.../locks`` answer, and the locks' refusal of writes (409 ``ScopeLocked``).

Role assignments come from ``topology["role_assignments"]`` (``{principal: <identity name>, role, scope}``, the scope
relative to the subscription: ``/`` or ``/resourceGroups/rg[/providers/ns/type/name]``) and locks from
``topology["locks"]`` (``{scope, level, name?, notes?}``); the lab API adds and removes both while the lab runs.

Not emulated: role assignments as ARM resources (``roleAssignments``/``roleDefinitions`` routes), management groups,
deny assignments, conditions (ABAC), and **enforcement** of RBAC: ARM still lets any valid lab token do anything, only
the permissions API reflects the assignments (locks, in contrast, are enforced). The built-in role definitions below
carry the actions and notActions of the real roles that matter to this migration, abridged (monitoring, support and
deployment actions left out); ``Lab PostgreSQL Entra Administrator`` is a custom role, as a real tenant would write
one: PostgreSQL flexible servers have no narrower built-in role than Contributor.
"""
from __future__ import annotations

import copy
import threading
import uuid

BUILT_IN_ROLES: dict[str, dict[str, list[str]]] = {
    "Reader": {"actions": ["*/read"], "notActions": []},
    "Contributor": {"actions": ["*"], "notActions": [
        "Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write",
        "Microsoft.Authorization/elevateAccess/Action", "Microsoft.Blueprint/blueprintAssignments/write",
        "Microsoft.Blueprint/blueprintAssignments/delete", "Microsoft.Compute/galleries/share/action"]},
    "Managed Identity Contributor": {"actions": [
        "Microsoft.ManagedIdentity/userAssignedIdentities/read", "Microsoft.ManagedIdentity/userAssignedIdentities/write",
        "Microsoft.ManagedIdentity/userAssignedIdentities/delete",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/delete",
        "Microsoft.Authorization/*/read", "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Managed Identity Operator": {"actions": [
        "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
        "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
        "Microsoft.Authorization/*/read", "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Virtual Machine Contributor": {"actions": [
        "Microsoft.Compute/virtualMachines/*", "Microsoft.Compute/virtualMachineScaleSets/*",
        "Microsoft.Compute/availabilitySets/*", "Microsoft.Authorization/*/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Website Contributor": {"actions": [
        "Microsoft.Web/sites/*", "Microsoft.Web/serverFarms/read", "Microsoft.Authorization/*/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Container Apps Contributor": {"actions": [
        "Microsoft.App/containerApps/*", "Microsoft.App/managedEnvironments/read", "Microsoft.Authorization/*/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Azure Kubernetes Service Contributor Role": {"actions": [
        "Microsoft.ContainerService/managedClusters/read", "Microsoft.ContainerService/managedClusters/write",
        "Microsoft.Authorization/*/read", "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Azure Kubernetes Service Cluster User Role": {"actions": [
        "Microsoft.ContainerService/managedClusters/listClusterUserCredential/action",
        "Microsoft.ContainerService/managedClusters/read"], "notActions": []},
    "SQL Server Contributor": {"actions": [
        "Microsoft.Sql/locations/*/read", "Microsoft.Sql/servers/*", "Microsoft.Authorization/*/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": [
        "Microsoft.Sql/servers/auditingSettings/*", "Microsoft.Sql/servers/securityAlertPolicies/*",
        "Microsoft.Sql/servers/vulnerabilityAssessments/*",
        "Microsoft.Sql/servers/azureADOnlyAuthentications/delete",
        "Microsoft.Sql/servers/azureADOnlyAuthentications/write"]},
    "SQL Security Manager": {"actions": [
        "Microsoft.Sql/servers/read", "Microsoft.Sql/servers/auditingSettings/*",
        "Microsoft.Sql/servers/securityAlertPolicies/*", "Microsoft.Sql/servers/azureADOnlyAuthentications/*",
        "Microsoft.Authorization/*/read", "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "DocumentDB Account Contributor": {"actions": [
        "Microsoft.DocumentDb/databaseAccounts/*", "Microsoft.Authorization/*/read",
        "Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": []},
    "Lab PostgreSQL Entra Administrator": {"actions": [
        "Microsoft.DBforPostgreSQL/flexibleServers/read", "Microsoft.DBforPostgreSQL/flexibleServers/write",
        "Microsoft.DBforPostgreSQL/flexibleServers/administrators/*"], "notActions": []},
}

LOCK_LEVELS = ("CanNotDelete", "ReadOnly")


class RbacError(ValueError):
    """A lab API request the lab cannot honour (unknown role, bad level): the message says what is expected."""


def _norm(scope: str) -> str:
    return "/" + "/".join(part for part in scope.lower().split("/") if part)


def covers(outer: str, inner: str) -> bool:
    """True when scope ``outer`` is ``inner`` or above it (ids compare case-insensitively)."""
    outer, inner = _norm(outer), _norm(inner)
    return inner == outer or outer == "/" or inner.startswith(outer + "/")


class Rbac:
    """The lab's role assignments and locks; thread-safe. Scopes here are full ids (``/subscriptions/{s}/...``)."""

    def __init__(self, subscription_id: str, topology: dict):
        self.subscription = f"/subscriptions/{subscription_id}"
        self._lock = threading.RLock()
        self._assignments: list[dict] = []
        self._locks: list[dict] = []
        for assignment in topology.get("role_assignments", []):
            self.add_assignment(assignment)
        for lock in topology.get("locks", []):
            self.add_lock(lock)

    def full(self, relative: str) -> str:
        """``/resourceGroups/rg`` (or ``/``) -> ``/subscriptions/{s}/resourceGroups/rg``; a full id is kept."""
        if relative.lower().startswith("/subscriptions/"):
            return relative.rstrip("/")
        return (self.subscription + "/" + relative.strip("/")).rstrip("/")

    # ----- role assignments -----

    def add_assignment(self, spec: dict) -> dict:
        """``{principal, role, scope}``: principal is a lab identity's name (or an object id)."""
        if spec.get("role") not in BUILT_IN_ROLES:
            raise RbacError(f"role: expected one of {sorted(BUILT_IN_ROLES)}")
        entry = {"principal": spec["principal"], "role": spec["role"], "scope": self.full(spec.get("scope", "/"))}
        with self._lock:
            if entry not in self._assignments:
                self._assignments.append(entry)
        return entry

    def remove_assignments(self, spec: dict) -> list[dict]:
        """Remove the assignments matching every key given (``principal``, ``role``, ``scope``)."""
        wanted = dict(spec)
        if "scope" in wanted:
            wanted["scope"] = _norm(self.full(wanted["scope"]))
        with self._lock:
            removed = [a for a in self._assignments
                       if all((_norm(a[k]) if k == "scope" else a[k]) == v for k, v in wanted.items())]
            self._assignments = [a for a in self._assignments if a not in removed]
        return removed

    def assignments(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._assignments)

    def permissions(self, principals: set[str], scope: str) -> list[dict]:
        """One ``{actions, notActions, dataActions, notDataActions}`` per role assignment of the caller (its object
        id or identity name in ``principals``) at ``scope`` or above, as the permissions API lists them."""
        with self._lock:
            chosen = [a for a in self._assignments if a["principal"] in principals and covers(a["scope"], scope)]
        return [{"actions": list(BUILT_IN_ROLES[a["role"]]["actions"]),
                 "notActions": list(BUILT_IN_ROLES[a["role"]]["notActions"]), "dataActions": [], "notDataActions": []}
                for a in chosen]

    # ----- locks -----

    def add_lock(self, spec: dict) -> dict:
        """``{scope, level: CanNotDelete|ReadOnly, name?, notes?}`` -> the lock as ARM shows it."""
        if spec.get("level") not in LOCK_LEVELS:
            raise RbacError(f"level: expected one of {list(LOCK_LEVELS)}")
        scope = self.full(spec.get("scope", "/"))
        name = spec.get("name") or f"lab-lock-{uuid.uuid4().hex[:8]}"
        lock = {"id": f"{scope}/providers/Microsoft.Authorization/locks/{name}", "type": "Microsoft.Authorization/locks",
                "name": name, "properties": {"level": spec["level"], "notes": spec.get("notes", ""), "owners": []}}
        with self._lock:
            self._locks = [known for known in self._locks if known["id"].lower() != lock["id"].lower()] + [lock]
        return copy.deepcopy(lock)

    def clear_locks(self) -> None:
        with self._lock:
            self._locks.clear()

    def locks_at(self, scope: str) -> list[dict]:
        """The locks set on ``scope``, above it, or below it: what ARM lists at a resource group or resource."""
        with self._lock:
            return copy.deepcopy([lock for lock in self._locks
                                  if covers(_lock_scope(lock), scope) or covers(scope, _lock_scope(lock))])

    def refusal(self, method: str, path: str) -> tuple[str, list[str]] | None:
        """``(operation, locked scopes)`` when a lock refuses this request, else ``None``. ReadOnly refuses PUT, PATCH,
        DELETE and POST (``listKeys`` included, as in Azure); CanNotDelete refuses DELETE."""
        if method not in ("PUT", "PATCH", "DELETE", "POST"):
            return None
        operation = "delete" if method == "DELETE" else "write"
        with self._lock:
            locked = [_lock_scope(lock) for lock in self._locks if covers(_lock_scope(lock), path)
                      and (lock["properties"]["level"] == "ReadOnly" or operation == "delete")]
        return (operation, locked) if locked else None


def _lock_scope(lock: dict) -> str:
    return lock["id"][:lock["id"].lower().rindex("/providers/microsoft.authorization/locks/")]
