#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: azure_mi_assignment
short_description: Attach user-assigned managed identities to a workload, keeping the ones it already has
version_added: 0.1.0
description:
  - Attaches (O(state=present)) or detaches (O(state=absent)) the listed user-assigned identities on a virtual machine.
  - Merges, never replaces. Identities that are not listed stay attached, and a system-assigned identity is kept.
    ARM's C(identity.type) replaces the whole set (V(SystemAssigned) alone drops every user-assigned identity), so
    the module reads the workload first and keeps the other half of the type.
  - Only the identities that change are sent, V(null) for a removal, as the VM PATCH API defines (api-version
    2018-06-01 or later). A re-run with nothing to change makes no write call.
author: csa-inabox core team (@csa-inabox)
options:
  workload_type:
    description: Kind of workload. Virtual machines for now.
    type: str
    choices: [vm]
    default: vm
  name:
    description: Name of the workload (the VM).
    type: str
    required: true
  resource_group:
    description: Resource group of the workload.
    type: str
    required: true
  identity_ids:
    description:
      - Resource ids of the user-assigned identities, as M(csa_inabox.managed_identity.azure_mi) returns them in C(identity.id).
      - Compared case-insensitively, as ARM does.
    type: list
    elements: str
    required: true
  state:
    description: Whether the listed identities should be attached.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
notes:
  - With several user-assigned identities on one VM, an application must select its identity by client id
    (C(AZURE_CLIENT_ID) or C(managed_identity_client_id)); otherwise IMDS answers "Multiple user assigned identities exist".
"""

EXAMPLES = r"""
- name: Attach the orders API's identity to its VM
  csa_inabox.managed_identity.azure_mi_assignment:
    name: vm-orders
    resource_group: rg-apps
    identity_ids:
      - "{{ identity.identity.id }}"

- name: Detach a retired identity, leaving the VM's other identities alone
  csa_inabox.managed_identity.azure_mi_assignment:
    name: vm-orders
    resource_group: rg-apps
    identity_ids:
      - /subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-retired
    state: absent
"""

RETURN = r"""
identity_type:
  description: The workload's C(identity.type) after the change.
  returned: always
  type: str
  sample: UserAssigned
user_assigned_identities:
  description: Resource ids of every user-assigned identity attached after the change (planned ones in check mode).
  returned: always
  type: list
  elements: str
added:
  description: Identities this run attached (or would attach, in check mode).
  returned: always
  type: list
  elements: str
removed:
  description: Identities this run detached (or would detach, in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import parse_resource_id
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import KNOWN_AFTER_APPLY, MIModule


def read_current(mod):
    """Return (identity type, {lower-cased id: id as ARM spells it}) of the VM."""
    try:
        vm = mod.clients.compute.virtual_machines.get(mod.params["resource_group"], mod.params["name"])
    except Exception as exc:
        mod.fail("could not read VM %s in %s" % (mod.params["name"], mod.params["resource_group"]), exc)
    identity = vm.get("identity") or {}
    attached = identity.get("userAssignedIdentities") or {}
    return identity.get("type") or "None", dict((key.lower(), key) for key in attached)


def identity_type(system_assigned, user_assigned):
    if system_assigned and user_assigned:
        return "SystemAssigned, UserAssigned"
    if system_assigned:
        return "SystemAssigned"
    return "UserAssigned" if user_assigned else "None"


def main():
    mod = MIModule(dict(
        workload_type=dict(type="str", default="vm", choices=["vm"]),
        name=dict(type="str", required=True),
        resource_group=dict(type="str", required=True),
        identity_ids=dict(type="list", elements="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    ))
    wanted = []
    for value in mod.params["identity_ids"]:
        if value == KNOWN_AFTER_APPLY and mod.check_mode:
            wanted.append(value)  # an identity this check-mode run only plans to create
            continue
        value = value.rstrip("/")
        parts = parse_resource_id(value)
        if not parts or parts["namespace"].lower() != "microsoft.managedidentity" or \
                parts["type"].lower() != "userassignedidentities" or parts["rest"]:
            mod.fail("identity_ids: %r is not a user-assigned identity resource id (/subscriptions/<id>/resourceGroups/"
                     "<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>)" % value)
        if value.lower() not in (w.lower() for w in wanted):  # ARM ids are case-insensitive: one entry each
            wanted.append(value)

    current_type, attached = read_current(mod)
    system_assigned = "systemassigned" in current_type.replace(" ", "").lower().split(",")
    if mod.params["state"] == "present":
        added = [v for v in wanted if v.lower() not in attached]
        removed = []
    else:
        added = []
        removed = [attached[v.lower()] for v in wanted if v.lower() in attached]
    after_ids = sorted(set(attached.values()) - set(removed) | set(added), key=str.lower)
    new_type = identity_type(system_assigned, after_ids)
    changed = bool(added or removed)

    if changed and not mod.check_mode:
        patch = dict((v, {}) for v in added)
        patch.update((v, None) for v in removed)
        body = {"identity": {"type": new_type}}
        if "UserAssigned" in new_type:
            body["identity"]["userAssignedIdentities"] = patch
        # Without UserAssigned in the type, ARM drops every user-assigned identity by itself.
        try:
            mod.clients.compute.virtual_machines.begin_update(
                mod.params["resource_group"], mod.params["name"], body).result()
        except Exception as exc:
            mod.fail("could not update the identities of VM %s" % mod.params["name"], exc)

    before = {"type": current_type, "userAssignedIdentities": sorted(attached.values(), key=str.lower)}
    after = {"type": new_type, "userAssignedIdentities": after_ids}
    mod.exit(changed, before=before, after=after, identity_type=new_type, user_assigned_identities=after_ids,
             added=added, removed=removed)


if __name__ == "__main__":
    main()
