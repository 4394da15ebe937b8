#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cosmos_account_entra
short_description: Switch a Cosmos DB account's keys off (Entra ID only), and regenerate them once
version_added: 0.1.0
description:
  - Sets the account's C(disableLocalAuth). With it true, Cosmos DB refuses every request signed with an account key
    (primary, secondary or read-only) and accepts only Microsoft Entra tokens with a data-plane role (cosmos_rbac).
  - The tutorial's C(az cosmosdb update --disable-key-based-metadata-write-access true) does not do this. That flag only
    stops keys from changing databases and containers; reading and writing data with a key keeps working.
  - Refuses to switch keys off while O(applications_using_keys) is not empty, or while the account has no data-plane
    role assignment at all (nobody could read or write data afterwards).
  - O(regenerate_keys) renews all four account keys once, so a key copied somewhere before the migration is dead even
    if keys are switched on again. The time is kept in the account tag C(csa-inabox-keys-regenerated), which makes a
    re-run change nothing. Turning keys back on (O(disable_local_auth=false)) removes the tag, so a later migration
    regenerates them again.
author: csa-inabox core team (@csa-inabox)
options:
  disable_local_auth:
    description: V(true) accepts Entra tokens only; V(false) accepts keys again (rollback). Left alone when omitted.
    type: bool
  regenerate_keys:
    description:
      - Regenerate the primary, secondary and both read-only keys, unless the tag says it was done since keys were
        last switched on.
      - Anything still using a key stops working. Run it after every application has switched and been verified.
    type: bool
    default: false
  applications_using_keys:
    description:
      - Applications that still authenticate with an account key (not switched, or not verified with their identity).
      - With O(disable_local_auth=true), a non-empty list fails the module before any change, naming them.
    type: list
    elements: str
    default: []
  busy_timeout:
    description:
      - Seconds to wait for other writes on the account (this control node's lock, then Cosmos DB's 412 "another
        operation in progress" or 409 answers, which are retried).
    type: int
    default: 120
extends_documentation_fragment:
  - csa_inabox.managed_identity.cosmos
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
seealso:
  - name: Disable key-based authentication with Azure Cosmos DB for NoSQL
    description: Microsoft Learn.
    link: https://learn.microsoft.com/azure/cosmos-db/nosql/security/how-to-disable-key-based-authentication
"""

EXAMPLES = r"""
- name: Decommission - the keys applications used to read from Vault are renewed (keys still on)
  csa_inabox.managed_identity.cosmos_account_entra:
    account_name: cosmos-prod
    resource_group: rg-mi-demo
    regenerate_keys: true

- name: Cutover - Entra ID only
  csa_inabox.managed_identity.cosmos_account_entra:
    account_name: cosmos-prod
    resource_group: rg-mi-demo
    disable_local_auth: true

- name: Rollback - keys accepted again
  csa_inabox.managed_identity.cosmos_account_entra:
    account_name: cosmos-prod
    resource_group: rg-mi-demo
    disable_local_auth: false
"""

RETURN = r"""
disable_local_auth:
  description: Whether the account refuses keys after the change.
  returned: always
  type: bool
keys_regenerated_at:
  description: When this collection last regenerated the keys (ISO 8601, UTC), or null.
  returned: always
  type: str
document_endpoint:
  description: The account's data-plane endpoint.
  returned: always
  type: str
operations:
  description: The ARM writes made (or planned, in check mode), in order.
  returned: always
  type: list
  elements: str
"""

import datetime

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import cosmos
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import KNOWN_AFTER_APPLY, MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown

TAG = "csa-inabox-keys-regenerated"
KEY_KINDS = ("primary", "secondary", "primaryReadonly", "secondaryReadonly")
APPLICATION_MAX = 255  # an application's name (an inventory host name)


def count_assignments(mod):
    try:
        return len(list(mod.clients.cosmos.sql_resources.list_sql_role_assignments(
            mod.params["resource_group"], mod.params["account_name"])))
    except Exception as exc:
        mod.fail("could not list the role assignments of account %s" % mod.params["account_name"], exc)


def main():
    mod = MIModule(dict(
        cosmos.ACCOUNT_ARGUMENT_SPEC,
        disable_local_auth=dict(type="bool"),
        regenerate_keys=dict(type="bool", default=False),
        applications_using_keys=dict(type="list", elements="str", default=[], no_log=False),
        busy_timeout=dict(type="int", default=120),
    ))
    params = mod.params
    rg, name = params["resource_group"], params["account_name"]
    want = params["disable_local_auth"]
    users = params["applications_using_keys"]
    if any(not (user or "").strip() for user in users):
        mod.fail("applications_using_keys has an empty name: list the applications by name")
    bad = [user for user in users if len(user) > APPLICATION_MAX or has_control(user)]
    if bad:
        mod.fail("applications_using_keys: %s is not an application name (at most %d characters, no control "
                 "characters)" % (shown(bad[0]), APPLICATION_MAX))
    problem = cosmos.account_problem(params)
    if problem:
        mod.fail(problem)
    if not 0 < params["busy_timeout"] <= 3600:
        mod.fail("busy_timeout must be 1 to 3600 seconds, not %s" % params["busy_timeout"])
    if params["regenerate_keys"] and want is False:
        mod.fail("regenerate_keys=true with disable_local_auth=false: keys switched back on for applications would be "
                 "regenerated under them. Roll back without regenerate_keys")
    if params["regenerate_keys"] and users:
        mod.fail("keys of Cosmos DB account %s are not regenerated: applications still using a key: %s "
                 "(applications_using_keys)" % (params["account_name"], ", ".join(sorted(users))))
    if want and users:
        mod.fail("keys of Cosmos DB account %s stay on: applications still using a key: %s (applications_using_keys). "
                 "Switch and verify them first (or remove them from the inventory if they are gone)"
                 % (name, ", ".join(sorted(params["applications_using_keys"]))))

    account = cosmos.read_account(mod)
    props = account.get("properties") or {}
    tags = dict(account.get("tags") or {})
    disabled = bool(props.get("disableLocalAuth"))
    regenerated = tags.get(TAG)
    ops = mod.clients.cosmos.database_accounts
    steps = []
    disabled_after, regenerated_after = disabled, regenerated

    if params["regenerate_keys"] and not regenerated:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for kind in KEY_KINDS:
            steps.append(("POST regenerateKey %s" % kind,
                          lambda kind=kind: write(mod, account, lambda: ops.begin_regenerate_key(
                              rg, name, {"keyKind": kind}).result())))
        tags[TAG] = stamp
        regenerated_after = stamp if not mod.check_mode else KNOWN_AFTER_APPLY
    update = {}
    if want is not None and want != disabled:
        if want and count_assignments(mod) == 0:
            mod.fail("account %s has no data-plane role assignment: with keys off nobody could read or write its data. "
                     "Grant the applications' identities first (cosmos_rbac)" % name)
        update["properties"] = {"disableLocalAuth": want}
        disabled_after = want
        if not want and TAG in tags:  # keys on again: a later migration must regenerate them again
            del tags[TAG]
            regenerated_after = None
    if tags != (account.get("tags") or {}):
        update["tags"] = tags
    if update:
        label = "PATCH disableLocalAuth=%s" % str(disabled_after).lower() if "properties" in update else "PATCH tags"
        steps.append((label, lambda: write(mod, account, lambda: ops.begin_update(rg, name, update).result())))
    operations = mod.apply_steps(steps, "Cosmos DB account %s" % name)
    mod.exit(bool(steps), before={"disable_local_auth": disabled, "keys_regenerated_at": regenerated},
             after={"disable_local_auth": disabled_after, "keys_regenerated_at": regenerated_after},
             disable_local_auth=disabled_after, keys_regenerated_at=regenerated_after,
             document_endpoint=props.get("documentEndpoint"), operations=operations)


def write(mod, account, call):
    """``call()`` under the account's lock (:class:`cosmos.AccountLock`), retried while Cosmos DB answers that another
    write on the account is in progress (412 ``PreconditionFailed``, 409), for at most ``busy_timeout`` seconds."""
    with cosmos.AccountLock(account["id"], mod.params["busy_timeout"]):
        return cosmos.retry(call, cosmos.is_busy, mod.params["busy_timeout"])


if __name__ == "__main__":
    main()
