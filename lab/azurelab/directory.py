"""The lab tenant's directory: who exists in Entra ID, for the token endpoints and the database fronts.

Entries are plain dicts in the shape :meth:`azurelab.tokens.Issuer.issue` takes:

* ``User``: ``object_id``, ``display_name``, ``upn`` (from ``topology.yml``);
* ``Group``: ``object_id``, ``display_name``, ``members`` (object ids; from ``topology.yml``);
* ``ServicePrincipal``: ``object_id``, ``client_id``, ``display_name`` - the lab's automation principal
  ``sp-lab-automation`` (ids derived from the tenant id, so they are the same on every lab start);
* ``ManagedIdentity``: the service principal of a user-assigned identity, added and removed by the ARM double:
  ``object_id`` (= ARM ``principalId``), ``client_id`` (= ``clientId``), ``resource_id``, ``display_name``
  (= the identity's name).

Not emulated: Microsoft Graph, applications vs service principals, app roles, nested groups, guests,
replication delay after an identity is created (inject it with the ARM fault API instead).
"""
from __future__ import annotations

import copy
import threading
import uuid

AUTOMATION_SP = "sp-lab-automation"
# Any fixed namespace works: it only makes the automation principal's ids stable per tenant.
_LAB_NAMESPACE = uuid.UUID("0b5a1d8e-6c2f-4f3a-9e47-3d1c2b6a5f10")


def automation_principal(tenant_id: str) -> dict:
    """The directory entry of the lab's automation service principal (client-credentials login)."""
    return {
        "type": "ServicePrincipal",
        "object_id": str(uuid.uuid5(_LAB_NAMESPACE, f"{tenant_id}/{AUTOMATION_SP}/object")),
        "client_id": str(uuid.uuid5(_LAB_NAMESPACE, f"{tenant_id}/{AUTOMATION_SP}/app")),
        "display_name": AUTOMATION_SP,
    }


class Directory:
    """Thread-safe set of directory entries; lookups return copies (or ``None`` / ``[]`` when absent)."""

    def __init__(self, topology: dict):
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        for entry in topology.get("directory", []):
            self._put(dict(entry))
        self._put(automation_principal(topology["tenant_id"]))

    def _put(self, entry: dict) -> None:
        entry["object_id"] = entry["object_id"].lower()
        if "client_id" in entry:
            entry["client_id"] = entry["client_id"].lower()
        self._entries[entry["object_id"]] = entry

    def add_managed_identity(self, *, object_id: str, client_id: str, resource_id: str, display_name: str) -> None:
        """Register (or replace) the service principal of a user-assigned managed identity."""
        with self._lock:
            self._put({"type": "ManagedIdentity", "object_id": object_id, "client_id": client_id,
                       "resource_id": resource_id, "display_name": display_name})

    def remove(self, object_id: str) -> None:
        """Forget an entry; unknown ids are ignored (deleting twice is not an error in Entra either)."""
        with self._lock:
            self._entries.pop(object_id.lower(), None)

    def by_object_id(self, object_id: str) -> dict | None:
        with self._lock:
            entry = self._entries.get(object_id.lower())
            return copy.deepcopy(entry)

    def by_client_id(self, client_id: str) -> dict | None:
        """The application or managed identity whose client (app) id this is."""
        wanted = client_id.lower()
        with self._lock:
            return next((copy.deepcopy(e) for e in self._entries.values() if e.get("client_id") == wanted), None)

    def by_display_name(self, display_name: str) -> list[dict]:
        """Every entry with this display name: names are not unique in Entra, callers must handle several."""
        with self._lock:
            return [copy.deepcopy(e) for e in self._entries.values() if e.get("display_name") == display_name]

    def entries(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._entries.values()))
