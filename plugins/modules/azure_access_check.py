#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to csa_inabox.managed_identity
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: azure_access_check
short_description: Check that the caller may write where a run will write, and that no lock stops it
version_added: 0.1.0
description:
  - For each scope (a resource group, or a resource in one), reads the caller's effective permissions there
    (C(GET {scope}/providers/Microsoft.Authorization/permissions)) and the management locks that apply to it
    (C(GET {scope}/providers/Microsoft.Authorization/locks), which includes the locks of the resource group and the
    subscription above it).
  - An action is allowed when one of the caller's roles at the scope has a matching C(actions) entry and no matching
    C(notActions) entry, compared case-insensitively with C(*) as a wildcard, as Azure does. C(notActions) only narrow
    their own role; they deny nothing another role grants.
  - A C(ReadOnly) lock refuses every write and delete at and below its scope. A C(CanNotDelete) lock refuses deletes,
    so it matters only for a scope with O(scopes[].deletes=true) (decommission, C(state=absent)).
  - Fails, before anything is written, with one message naming every scope, each missing action and the built-in
    role that grants it, and each blocking lock.
  - Read-only; it runs in check mode too. Deny assignments and Azure Policy are not evaluated (the permissions API
    does not report them).
author: csa-inabox core team (@csa-inabox)
options:
  scopes:
    description:
      - The scopes to check. A scope is a resource group (O(scopes[].resource_group) alone) or a resource in it.
      - M(csa_inabox.managed_identity.inventory_check) returns the scopes of a migration run as its
        RV(csa_inabox.managed_identity.inventory_check#module:write_scopes).
    type: list
    elements: dict
    required: true
    suboptions:
      resource_group:
        description: The resource group.
        type: str
        required: true
      provider_namespace:
        description: The resource's provider, for example C(Microsoft.Sql). Omit for the resource group itself.
        type: str
      resource_type:
        description: The resource type within the provider, for example C(servers).
        type: str
      name:
        description: The resource's name.
        type: str
      actions:
        description: The actions the run performs there, for example C(Microsoft.Sql/servers/administrators/write).
        type: list
        elements: str
        default: []
      deletes:
        description: Whether the run deletes something there (then a C(CanNotDelete) lock blocks it too).
        type: bool
        default: false
      purpose:
        description: What the run does there, for the messages (for example C(database servers)).
        type: str
  fail_on_problems:
    description: Fail when an action is missing or a lock blocks. With V(false) the problems are only returned.
    type: bool
    default: true
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes.read_only
"""

EXAMPLES = r"""
- name: May the control identity change the SQL server's Entra settings, and is nothing locked?
  csa_inabox.managed_identity.azure_access_check:
    scopes:
      - resource_group: rg-data
        provider_namespace: Microsoft.Sql
        resource_type: servers
        name: sql-prod
        actions:
          - Microsoft.Sql/servers/administrators/write
          - Microsoft.Sql/servers/azureADOnlyAuthentications/write
        purpose: database servers

- name: Before decommissioning identities, may they be deleted, and does no lock (CanNotDelete included) refuse it?
  csa_inabox.managed_identity.azure_access_check:
    scopes:
      - resource_group: rg-apps
        actions: [Microsoft.ManagedIdentity/userAssignedIdentities/delete]
        deletes: true
        purpose: identities
  register: access
"""

RETURN = r"""
scopes:
  description: One entry per scope checked.
  returned: always
  type: list
  elements: dict
  contains:
    scope:
      description: The scope's id.
      type: str
    missing_actions:
      description: The actions the caller may not perform there, each with the built-in C(role) that grants it.
      type: list
      elements: dict
    locks:
      description: The locks set on the scope or above it (C(id), C(name), C(level), C(scope)), blocking or not.
      type: list
      elements: dict
    blocking_locks:
      description: The names of the locks that block this run there.
      type: list
      elements: str
  sample: [{scope: /subscriptions/.../resourceGroups/rg-data/providers/Microsoft.Sql/servers/sql-prod,
            missing_actions: [{action: Microsoft.Sql/servers/azureADOnlyAuthentications/write, role: SQL Security Manager}],
            locks: [], blocking_locks: []}]
problems:
  description: One line per missing action or blocking lock; empty when the run may proceed.
  returned: always
  type: list
  elements: str
"""

import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import access
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import (
    as_dict, resource_group_problem, resource_name_problem)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

SCOPE_SPEC = dict(
    resource_group=dict(type="str", required=True),
    provider_namespace=dict(type="str"),
    resource_type=dict(type="str"),
    name=dict(type="str"),
    actions=dict(type="list", elements="str", default=[]),
    deletes=dict(type="bool", default=False),
    purpose=dict(type="str"),
)


# An Azure RBAC action: "<Provider namespace>/<resource type>[/...]/<verb>", with '*' wildcards; no spaces.
ACTION = re.compile(r"[A-Za-z0-9*][A-Za-z0-9.*_-]*(/[A-Za-z0-9.*_-]+)+")
ACTION_MAX = 512


def validate(mod, scopes):
    """Refuse a malformed scope before any request: a resource needs its provider, type and name together; an action
    is an RBAC operation name (a line break in one would match a wildcard and pass)."""
    for index, scope in enumerate(scopes):
        parts = [scope.get(k) for k in ("provider_namespace", "resource_type", "name")]
        if any(parts) and not all(parts):
            mod.fail("scopes[%d]: provider_namespace, resource_type and name go together (a resource), or none of "
                     "them (the resource group)" % index)
        problem = resource_group_problem("scopes[%d].resource_group" % index, scope["resource_group"])
        for option in ("provider_namespace", "resource_type", "name"):
            problem = problem or (scope.get(option) and resource_name_problem("scopes[%d].%s" % (index, option),
                                                                              scope[option]))
        for number, action in enumerate(scope["actions"]):
            if problem is None and (len(action) > ACTION_MAX or not ACTION.fullmatch(action)):
                problem = ("scopes[%d].actions[%d] %s is not an Azure RBAC action: <provider>/<resource type>[/...]/"
                           "<operation>, letters, digits, '.', '_', '-' and '*' wildcards, at most %d characters"
                           % (index, number, shown(action), ACTION_MAX))
        if problem:
            mod.fail(problem)


def scope_id(subscription_id, scope):
    base = "/subscriptions/%s/resourceGroups/%s" % (subscription_id, scope["resource_group"])
    if scope.get("name"):
        return "%s/providers/%s/%s/%s" % (base, scope["provider_namespace"], scope["resource_type"], scope["name"])
    return base


def read_current(mod, scope):
    """The caller's permissions and the locks at ``scope``: ``([{actions, notActions}], [{id, name, level}])``."""
    clients = mod.clients
    target = scope_id(mod.subscription_id, scope)
    try:
        if scope.get("name"):
            args = (scope["resource_group"], scope["provider_namespace"], "", scope["resource_type"], scope["name"])
            permissions = clients.authorization.permissions.list_for_resource(*args)
            locks = clients.locks.management_locks.list_at_resource_level(*args)
        else:
            permissions = clients.authorization.permissions.list_for_resource_group(scope["resource_group"])
            locks = clients.locks.management_locks.list_at_resource_group_level(scope["resource_group"])
        permissions = [as_dict(p) for p in permissions]
        locks = [as_dict(lock) for lock in locks]
    except Exception as exc:  # any SDK/ARM failure ends the module, with its remedy
        mod.fail("could not read the permissions and locks of %s" % target, exc)
    return ([{"actions": p.get("actions") or [], "notActions": p.get("notActions", p.get("not_actions")) or []}
             for p in permissions],
            [{"id": lock.get("id"), "name": lock.get("name"),
              "level": lock.get("level") or (lock.get("properties") or {}).get("level"),
              "scope": access.lock_scope(lock.get("id"))} for lock in locks])


def evaluate(target, scope, permissions, locks):
    """What this scope lacks: ``(result entry, problem lines)``."""
    missing = [{"action": action, "role": access.role_hint(action)}
               for action in access.missing_actions(permissions, scope["actions"])]
    locks = [lock for lock in locks if access.lock_applies(lock["scope"], target)]
    blocking = access.blocking_locks(locks, scope["deletes"])
    why = " (%s)" % scope["purpose"] if scope.get("purpose") else ""
    problems = ["%s%s: the control identity may not perform %s; it needs a role that grants it, e.g. %s"
                % (target, why, item["action"], item["role"]) for item in missing]
    verb = "writes and deletes" if scope["deletes"] else "writes"
    problems += ["%s%s: the %s lock %r on %s refuses the run's %s; remove it (or wait for its owner) and re-run"
                 % (target, why, lock["level"], lock["name"], lock["scope"], verb) for lock in blocking]
    entry = {"scope": target, "missing_actions": missing, "locks": locks,
             "blocking_locks": [lock["name"] for lock in blocking]}
    return entry, problems


def main():
    mod = MIModule(dict(
        scopes=dict(type="list", elements="dict", required=True, options=SCOPE_SPEC),
        fail_on_problems=dict(type="bool", default=True),
    ))
    scopes = mod.params["scopes"]
    validate(mod, scopes)
    results, problems = [], []
    for scope in scopes:
        target = scope_id(mod.subscription_id, scope)
        permissions, locks = read_current(mod, scope)
        entry, found = evaluate(target, scope, permissions, locks)
        results.append(entry)
        problems.extend(found)
    if problems and mod.params["fail_on_problems"]:
        mod.module.fail_json(msg="%d problem(s) would stop the run; nothing was changed:\n%s"
                             % (len(problems), "\n".join(problems)), scopes=results, problems=problems)
    mod.exit(False, scopes=results, problems=problems)


if __name__ == "__main__":
    main()
