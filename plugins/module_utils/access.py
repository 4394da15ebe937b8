# -*- coding: utf-8 -*-
# Copyright: contributors to csa_inabox.managed_identity
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Azure RBAC action matching and management-lock evaluation (pure functions; no SDK here).

Azure's rules (https://learn.microsoft.com/azure/role-based-access-control/role-definitions):

* An action string is ``{Company}.{ProviderName}/{resourceType}/{action}``; Azure compares them case-insensitively.
* ``*`` in ``actions``/``notActions`` is a wildcard for any characters (``Microsoft.Compute/*``, ``*/read``,
  ``Microsoft.Authorization/*/Write``). A ``/*/`` between two segments also matches a single ``/``: Managed Identity
  Operator's ``userAssignedIdentities/*/assign/action`` is what grants ``userAssignedIdentities/assign/action``.
* ``notActions`` are subtracted from the ``actions`` of **the same** role: they are not a deny. An action is allowed
  when at least one permission (one per role assignment, as ``GET {scope}/providers/Microsoft.Authorization/
  permissions`` lists them) has a matching action and no matching notAction. Deny assignments are not part of that
  answer and are not evaluated here.
* Locks (``Microsoft.Authorization/locks``) apply to the scope they are set on and everything below it, whoever the
  caller: ``ReadOnly`` refuses every write and delete (and POST actions such as ``listKeys``); ``CanNotDelete``
  refuses deletes only.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# The built-in roles that grant each action this collection needs, narrowest first
# (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
ROLE_HINTS = {
    "microsoft.managedidentity/userassignedidentities/write": "Managed Identity Contributor",
    "microsoft.managedidentity/userassignedidentities/delete": "Managed Identity Contributor",
    "microsoft.managedidentity/userassignedidentities/federatedidentitycredentials/write":
        "Managed Identity Contributor",
    "microsoft.managedidentity/userassignedidentities/assign/action": "Managed Identity Operator",
    "microsoft.compute/virtualmachines/write": "Virtual Machine Contributor",
    "microsoft.compute/virtualmachinescalesets/write": "Virtual Machine Contributor",
    "microsoft.web/sites/write": "Website Contributor",
    "microsoft.web/sites/config/write": "Website Contributor",
    "microsoft.web/sites/config/list/action": "Website Contributor",
    "microsoft.app/containerapps/write": "Container Apps Contributor",
    "microsoft.containerservice/managedclusters/write": "Azure Kubernetes Service Contributor Role",
    "microsoft.containerservice/managedclusters/listclusterusercredential/action":
        "Azure Kubernetes Service Cluster User Role",
    "microsoft.dbforpostgresql/flexibleservers/write": "Contributor (or a custom role: there is no narrower built-in)",
    "microsoft.dbforpostgresql/flexibleservers/administrators/write":
        "Contributor (or a custom role: there is no narrower built-in)",
    "microsoft.sql/servers/administrators/write": "SQL Server Contributor",
    "microsoft.sql/servers/azureadonlyauthentications/write":
        "SQL Security Manager (SQL Server Contributor excludes it in its notActions)",
    "microsoft.documentdb/databaseaccounts/sqlroleassignments/write": "DocumentDB Account Contributor",
    "microsoft.documentdb/databaseaccounts/write": "DocumentDB Account Contributor",
    "microsoft.documentdb/databaseaccounts/regeneratekey/action": "DocumentDB Account Contributor",
    "microsoft.documentdb/databaseaccounts/listkeys/action": "DocumentDB Account Contributor",
}


def _tokens(wildcard):
    """An action pattern as tokens: ``("lit", char)``, ``("star",)`` (any characters, none included) and
    ``("skip", index)`` (go on at ``index`` without consuming: what makes ``/*/`` also match a single ``/``)."""
    tokens = []
    for index, piece in enumerate(wildcard.lower().split("/*/")):
        if index:
            tokens.append(("lit", "/"))
            tokens.append(("skip", len(tokens) + 3))  # (?:.*/)? : skip, or any characters then "/"
            tokens.extend([("star",), ("lit", "/")])
        for char in piece:
            tokens.append(("star",) if char == "*" else ("lit", char))
    return tokens


def _closure(tokens, states):
    """``states`` with every state reachable without consuming a character."""
    pending, seen = list(states), set(states)
    while pending:
        state = pending.pop()
        if state < len(tokens) and tokens[state][0] in ("star", "skip"):
            for following in (state + 1, tokens[state][1]) if tokens[state][0] == "skip" else (state + 1,):
                if following not in seen:
                    seen.add(following)
                    pending.append(following)
    return seen


def action_matches(wildcard, action):
    """True when the ``actions``/``notActions`` entry ``wildcard`` covers the concrete ``action``.

    A set-of-states automaton, not a regex: time grows with ``len(wildcard) * len(action)`` whatever the number of
    ``*`` (a regex of many ``.*`` backtracks exponentially on a pattern such as ``a*a*a*a*b``)."""
    tokens = _tokens(wildcard)
    states = _closure(tokens, {0})
    for char in action.lower():
        following = set()
        for state in states:
            if state < len(tokens):
                token = tokens[state]
                if token[0] == "star":
                    following.add(state)
                elif token[0] == "lit" and token[1] == char:
                    following.add(state + 1)
        states = _closure(tokens, following)
        if not states:
            return False
    return len(tokens) in states


def permission_allows(permission, action):
    """One permission entry (``{actions, notActions}``, snake_case ``not_actions`` accepted) and one action."""
    actions = permission.get("actions") or []
    not_actions = permission.get("notActions", permission.get("not_actions")) or []
    return (any(action_matches(p, action) for p in actions)
            and not any(action_matches(p, action) for p in not_actions))


def allowed(permissions, action):
    """True when any of the caller's ``permissions`` at a scope allows ``action`` (notActions per role)."""
    return any(permission_allows(permission, action) for permission in permissions)


def missing_actions(permissions, actions):
    """The ``actions`` that ``permissions`` do not allow, in the order given."""
    return [action for action in actions if not allowed(permissions, action)]


def role_hint(action):
    return ROLE_HINTS.get(action.lower(), "a role whose actions include it (see the Azure built-in roles)")


def blocking_locks(locks, deletes=False):
    """The locks that refuse this run's requests: every ``ReadOnly``, and ``CanNotDelete`` when ``deletes``.

    ``locks``: ``[{id, name, level}]`` (``level``: ``ReadOnly``, ``CanNotDelete``; ARM's ``NotSpecified`` refuses
    nothing). Returns them in the order given.
    """
    refused = ("readonly", "cannotdelete") if deletes else ("readonly",)
    return [lock for lock in locks if str(lock.get("level") or "").lower() in refused]


def lock_scope(lock_id):
    """The scope a lock is set on: its id without ``/providers/Microsoft.Authorization/locks/{name}``."""
    match = re.search(r"/providers/Microsoft\.Authorization/locks/[^/]+\Z", lock_id or "", re.IGNORECASE)
    return lock_id[:match.start()] if match else lock_id


def lock_applies(scope_of_lock, target):
    """True when a lock set on ``scope_of_lock`` covers ``target`` (the same scope or one above it). Listing the locks
    of a resource group also returns those of the resources in it, which do not stop a write elsewhere in the group."""
    lock, wanted = (scope_of_lock or "").rstrip("/").lower(), (target or "").rstrip("/").lower()
    return wanted == lock or wanted.startswith(lock + "/")
