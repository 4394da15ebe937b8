#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: azure_mi
short_description: Manage a user-assigned managed identity
version_added: 0.1.0
description:
  - Creates, updates (tags) or deletes a user-assigned managed identity
    (C(Microsoft.ManagedIdentity/userAssignedIdentities), api-version 2024-11-30) and returns its ids.
  - A re-run with nothing to change makes no write call. In check mode nothing is written and the ids Azure
    assigns on creation (client, principal and tenant id) are returned as the text "(known after apply)".
author: csa-inabox core team (@csa-inabox)
options:
  name:
    description: Name of the identity (3 to 128 letters, digits, C(-) or C(_), starting with a letter or digit).
    type: str
    required: true
  resource_group:
    description: Resource group of the identity.
    type: str
    required: true
  location:
    description:
      - Azure region. Required to create the identity; it cannot change afterwards.
    type: str
  tags:
    description: Tags to set. Left alone when omitted.
    type: dict
  purge_tags:
    description: Remove tags not listed in O(tags). Only used when O(tags) is given.
    type: bool
    default: true
  state:
    description: Whether the identity should exist.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
notes:
  - Deleting an identity does not detach it from workloads; detach it first with
    M(csa_inabox.managed_identity.azure_mi_assignment).
seealso:
  - name: Manage user-assigned managed identities
    description: Microsoft Learn.
    link: https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-manage-user-assigned-managed-identities
"""

EXAMPLES = r"""
- name: Identity for the orders API
  csa_inabox.managed_identity.azure_mi:
    name: mi-orders-api
    resource_group: rg-apps
    location: eastus2
    tags:
      app: orders-api
  register: identity

- name: Show its ids
  ansible.builtin.debug:
    msg: "client id {{ identity.identity.client_id }}, principal id {{ identity.identity.principal_id }}"

- name: Remove an identity that is no longer used
  csa_inabox.managed_identity.azure_mi:
    name: mi-retired
    resource_group: rg-apps
    state: absent
"""

RETURN = r"""
identity:
  description: The identity after the change (before it, for O(state=absent)); empty when it does not exist.
  returned: always
  type: dict
  contains:
    id:
      description: Resource id.
      type: str
      sample: /subscriptions/<subscription-id>/resourceGroups/rg-apps/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-orders-api
    name:
      description: Name.
      type: str
    location:
      description: Region.
      type: str
    tags:
      description: Tags.
      type: dict
    client_id:
      description: Client (application) id; the SID of its Azure SQL user and what C(AZURE_CLIENT_ID) selects.
      type: str
    principal_id:
      description: Principal (object) id in Entra ID; what PostgreSQL and Cosmos DB grants name.
      type: str
    tenant_id:
      description: Tenant id.
      type: str
"""

import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import resource_group_problem, resource_id
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import (
    KNOWN_AFTER_APPLY, MIModule, differences)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,127}")
# A region's name (eastus2) or display name (East US 2).
LOCATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ]{0,63}")


def read_current(mod):
    from azure.core.exceptions import ResourceNotFoundError  # pylint: disable=import-outside-toplevel

    try:
        found = mod.clients.msi.user_assigned_identities.get(mod.params["resource_group"], mod.params["name"])
    except ResourceNotFoundError as exc:
        if getattr(getattr(exc, "error", None), "code", None) == "ResourceGroupNotFound":
            mod.fail("could not read identity %s" % mod.params["name"], exc)  # creating it would fail the same way
        return None
    except Exception as exc:  # any other ARM failure ends the module with its remedy
        mod.fail("could not read identity %s" % mod.params["name"], exc)
    return summary(found)


def summary(identity):
    return {
        "id": identity.id,
        "name": identity.name,
        "location": identity.location,
        "tags": dict(identity.tags or {}),
        "client_id": identity.client_id,
        "principal_id": identity.principal_id,
        "tenant_id": identity.tenant_id,
    }


def desired(mod, current):
    tags = mod.params["tags"]
    if tags is not None and not mod.params["purge_tags"] and current:
        tags = dict(current["tags"], **tags)
    return {"location": mod.params["location"], "tags": dict((k, str(v)) for k, v in tags.items())
            if tags is not None else None}


def apply(mod, current, want):
    from azure.mgmt.msi.models import Identity  # pylint: disable=import-outside-toplevel

    location = want["location"] or current["location"]
    tags = want["tags"] if want["tags"] is not None else (current or {}).get("tags")
    try:
        result = mod.clients.msi.user_assigned_identities.create_or_update(
            mod.params["resource_group"], mod.params["name"], Identity(location=location, tags=tags))
    except Exception as exc:
        mod.fail("could not write identity %s" % mod.params["name"], exc)
    return summary(result)


def main():
    mod = MIModule(dict(
        name=dict(type="str", required=True),
        resource_group=dict(type="str", required=True),
        location=dict(type="str"),
        tags=dict(type="dict"),
        purge_tags=dict(type="bool", default=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    ))
    params = mod.params
    for key, value in (params["tags"] or {}).items():
        if value is None or isinstance(value, (dict, list)):
            mod.fail("tags.%s: %s is not a tag value (use a string)" % (key, shown(value)))
    if not NAME.fullmatch(params["name"]):
        mod.fail("name %s is not a valid identity name: 3 to 128 letters, digits, '-' or '_', starting with a letter "
                 "or digit" % shown(params["name"]))
    problem = resource_group_problem("resource_group", params["resource_group"])
    if problem:
        mod.fail(problem)
    if params["location"] and not LOCATION.fullmatch(params["location"]):
        mod.fail("location %s is not an Azure region: give its name (eastus2) or display name (East US 2)"
                 % shown(params["location"]))

    current = read_current(mod)
    if params["state"] == "absent":
        if current and not mod.check_mode:
            try:
                mod.clients.msi.user_assigned_identities.delete(params["resource_group"], params["name"])
            except Exception as exc:
                mod.fail("could not delete identity %s" % params["name"], exc)
        mod.exit(bool(current), before=current, after={}, identity=current or {})

    if current is None:
        if not params["location"]:
            mod.fail("location is required to create identity %s" % params["name"])
        planned = {"id": resource_id(mod.subscription_id, params["resource_group"], "Microsoft.ManagedIdentity",
                                     "userAssignedIdentities", params["name"]), "name": params["name"], "location": params["location"],
                   "tags": desired(mod, None)["tags"] or {}, "client_id": KNOWN_AFTER_APPLY,
                   "principal_id": KNOWN_AFTER_APPLY, "tenant_id": KNOWN_AFTER_APPLY}
        after = planned if mod.check_mode else apply(mod, None, desired(mod, None))
        mod.exit(True, before={}, after=after, identity=after)

    want = desired(mod, current)
    if want["location"] and want["location"].replace(" ", "").lower() != current["location"].replace(" ", "").lower():
        mod.fail("identity %s is in %s; its location cannot change to %s (delete and recreate it, then re-grant)"
                 % (params["name"], current["location"], want["location"]))
    want["location"] = None  # compared above, case- and space-insensitively, as ARM does
    changes = differences(current, want)
    after = dict(current, tags=want["tags"]) if changes else current
    if changes and not mod.check_mode:
        after = apply(mod, current, want)
    mod.exit(bool(changes), before=current, after=after, identity=after)


if __name__ == "__main__":
    main()
