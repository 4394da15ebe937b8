#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cosmos_rbac
short_description: Cosmos DB for NoSQL data-plane role assignment for a principal
version_added: 0.1.0
description:
  - Gives a principal (a managed identity's principal id) a Cosmos DB data-plane role on an account, a database or a
    container, through C(Microsoft.DocumentDB/databaseAccounts/{account}/sqlRoleAssignments). These roles are not Azure
    RBAC roles. An Azure C(Reader) or C(Contributor) role assignment gives no access to data.
  - O(scope) may be relative (C(/dbs/appdb)), as the Azure CLI takes it, or fully qualified. Both name the same
    assignment. The Azure CLI doubles a fully qualified scope (azure-cli#31422); this module normalises either form.
  - An assignment that already gives the principal that role on that scope is found whatever its name, so
    assignments made by the portal, the CLI or Terraform are not duplicated. New assignments get a deterministic
    name derived from (account, principal, role, scope).
  - Writes to one account are serialised between the processes of the control node and retried while Cosmos DB
    answers that another operation is in progress (412/409). A principal that Cosmos DB does not know yet (an identity
    created seconds ago) is retried for O(principal_wait_timeout) seconds.
author: csa-inabox core team (@csa-inabox)
options:
  principal_id:
    description:
      - Object (principal) id of the identity, user, group or service principal. Not its client id.
      - In check mode, V((known after apply)) (what azure_mi returns for an identity it would create) plans a new
        assignment.
    type: str
    required: true
  role:
    description:
      - The role definition. V(Data Reader) or V(Data Contributor) (or the full built-in names, any case), a role
        definition GUID such as C(00000000-0000-0000-0000-000000000002), or the definition's full id in this account.
      - A GUID that is not built in must be a custom role definition of the account.
    type: str
    required: true
  scope:
    description:
      - Where the role applies. V(/) is the whole account, C(/dbs/<database>) a database, C(/dbs/<database>/colls/<container>)
        a container. Or the same, fully qualified (the account's resource id followed by that path).
      - Database and container names are case-sensitive.
    type: str
    default: /
  state:
    description: V(absent) removes every assignment of that role to the principal on exactly that scope.
    type: str
    choices: [present, absent]
    default: present
  principal_wait_timeout:
    description: Seconds to keep retrying while Cosmos DB does not know the principal yet (new identities).
    type: int
    default: 300
  busy_timeout:
    description: Seconds to wait for other writes on the account (this control node's lock, then 412/409 answers).
    type: int
    default: 120
extends_documentation_fragment:
  - csa_inabox.managed_identity.cosmos
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
notes:
  - Data-plane roles cannot create databases or containers. Create them through ARM (Bicep, Terraform, the portal).
seealso:
  - name: Use data plane role-based access control with Azure Cosmos DB for NoSQL
    description: Microsoft Learn.
    link: https://learn.microsoft.com/azure/cosmos-db/nosql/security/how-to-grant-data-plane-role-based-access
"""

EXAMPLES = r"""
- name: The orders API reads and writes the appdb database (scope as the tutorial writes it)
  csa_inabox.managed_identity.cosmos_rbac:
    account_name: cosmos-prod
    resource_group: rg-mi-demo
    principal_id: "{{ identity.identity.principal_id }}"
    role: Data Contributor
    scope: /dbs/appdb

- name: A reporting job only reads one container
  csa_inabox.managed_identity.cosmos_rbac:
    account_name: cosmos-prod
    resource_group: rg-mi-demo
    principal_id: 3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b
    role: 00000000-0000-0000-0000-000000000001
    scope: /dbs/appdb/colls/items
"""

RETURN = r"""
assignment:
  description:
    - The assignment giving the role (V(present)), or the last one removed (V(absent)); empty when there was none.
    - C(name), C(id), C(principal_id), C(role_definition_id), C(role) (the built-in role's name, else the GUID) and
      C(scope) (fully qualified). In check mode a new assignment's C(id) and C(name) are the ones it will get.
  returned: always
  type: dict
removed:
  description: Names of the assignments removed (V(absent)), or that would be.
  returned: always
  type: list
  elements: str
retries:
  description: How many times a write was retried (busy account, principal not replicated yet).
  returned: always
  type: int
operations:
  description: The ARM writes made (or planned, in check mode), in order.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import cosmos
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import as_dict
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import (
    KNOWN_AFTER_APPLY, MIModule, is_guid)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

NIL_GUID = "00000000-0000-0000-0000-000000000000"


def check_role_exists(mod, guid):
    """Custom role definitions must exist in the account (built-in ones always do)."""
    if guid in cosmos.BUILT_IN_ROLES:
        return
    from azure.core.exceptions import ResourceNotFoundError  # pylint: disable=import-outside-toplevel

    try:
        mod.clients.cosmos.sql_resources.get_sql_role_definition(
            guid, mod.params["resource_group"], mod.params["account_name"])
    except ResourceNotFoundError as exc:
        mod.fail("role %s is not a role definition of account %s: use Data Reader, Data Contributor or an existing "
                 "custom definition" % (mod.params["role"], mod.params["account_name"]), exc)
    except Exception as exc:  # the SDK's HttpResponseError family: 403, throttling beyond the retries
        mod.fail("could not read role definition %s of account %s" % (guid, mod.params["account_name"]), exc)


def main():
    mod = MIModule(dict(
        cosmos.ACCOUNT_ARGUMENT_SPEC,
        principal_id=dict(type="str", required=True),
        role=dict(type="str", required=True),
        scope=dict(type="str", default="/"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        principal_wait_timeout=dict(type="int", default=300),
        busy_timeout=dict(type="int", default=120),
    ))
    params = mod.params
    principal = (params["principal_id"] or "").strip().lower()
    planned = params["principal_id"] == KNOWN_AFTER_APPLY and mod.check_mode  # an identity this check run only plans
    if not planned and (not is_guid(principal) or principal == NIL_GUID):
        mod.fail("principal_id %s is not a principal (object) id: give the identity's principal id, a GUID"
                 % shown(params["principal_id"]))
    problem = cosmos.account_problem(params)
    if problem:
        mod.fail(problem)
    for option in ("principal_wait_timeout", "busy_timeout"):
        if not 0 <= params[option] <= 3600:
            mod.fail("%s must be between 0 and 3600 seconds, got %s" % (option, params[option]))
    # The account's id is known without asking Azure: a malformed scope or role fails before any request.
    expected = cosmos.account_id(mod.subscription_id, params["resource_group"], params["account_name"])
    try:
        relative = cosmos.normalise_scope(params["scope"], expected)[1]
        guid = cosmos.role_definition_guid(params["role"], expected)
    except cosmos.ScopeError as exc:
        mod.fail(str(exc))

    account = cosmos.read_account(mod)["id"]  # the id as Azure spells it, used in what is written and compared
    full_scope = account + relative
    check_role_exists(mod, guid)
    ops = mod.clients.cosmos.sql_resources
    rg, name = params["resource_group"], params["account_name"]

    def equivalents():
        try:
            listed = [cosmos.describe(as_dict(a), account) for a in ops.list_sql_role_assignments(rg, name)]
        except Exception as exc:
            mod.fail("could not list the role assignments of account %s" % name, exc)
        return [] if planned else cosmos.equivalent(listed, principal, guid, full_scope)

    found = equivalents()
    raced = []  # an equivalent assignment another process made between our list and our turn to write

    steps, retries = [], [0]
    before = {"assignments": found}
    if params["state"] == "present":
        if found:
            assignment, after = found[0], before
        else:
            new = KNOWN_AFTER_APPLY if planned else cosmos.assignment_name(account, principal, guid, relative)
            role_id = cosmos.role_definition_id(account, guid)
            assignment = {"name": new, "id": "%s/sqlRoleAssignments/%s" % (account, new), "principal_id": principal,
                          "role_definition_id": role_id, "role": cosmos.BUILT_IN_ROLES.get(guid, guid),
                          "scope": full_scope}
            after = {"assignments": [assignment]}
            body = {"properties": {"roleDefinitionId": role_id, "scope": full_scope, "principalId": principal}}

            def create():
                now = equivalents()  # under the account's lock: only one of several parallel runs writes
                if now:
                    raced.extend(now)
                    return None
                return ops.begin_create_update_sql_role_assignment(new, rg, name, body).result()
            steps.append(("PUT sqlRoleAssignments/%s (%s on %s)" % (new, assignment["role"], relative or "/"),
                          lambda: write(mod, account, retries, create)))
        removed = []
    else:
        assignment = found[-1] if found else {}
        after = {"assignments": []}
        removed = [a["name"] for a in found]
        for old in removed:
            steps.append(("DELETE sqlRoleAssignments/%s" % old,
                          lambda old=old: write(mod, account, retries, lambda: ops.begin_delete_sql_role_assignment(
                              old, rg, name).result())))
    operations = mod.apply_steps(steps, "Cosmos DB account %s" % name)
    if raced:
        mod.exit(False, before=before, after={"assignments": raced}, assignment=raced[0], removed=[],
                 retries=retries[0], operations=[])
    mod.exit(bool(steps), before=before, after=after, assignment=assignment, removed=removed,
             retries=retries[0], operations=operations)


def write(mod, account, retries, call):
    """``call()`` under the account's lock, retried while the account is busy or the principal not replicated;
    ``retries[0]`` counts the retries."""
    params = mod.params

    def counted(_exc):
        retries[0] += 1

    def attempt():
        with cosmos.AccountLock(account, params["busy_timeout"]):
            return cosmos.retry(call, cosmos.is_busy, params["busy_timeout"], on_retry=counted)

    return cosmos.retry(attempt, cosmos.is_principal_not_replicated, params["principal_wait_timeout"],
                        on_retry=counted, first_wait=2.0, max_wait=30.0)


if __name__ == "__main__":
    main()
