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
  - Attaches (O(state=present)) or detaches (O(state=absent)) the listed user-assigned identities on a virtual machine,
    a virtual machine scale set, an App Service or Functions app, or a Container App.
  - Merges, never replaces. Identities that are not listed stay attached, and a system-assigned identity is kept.
    ARM's C(identity.type) replaces the whole set (V(SystemAssigned) alone drops every user-assigned identity), so
    the module reads the workload first and keeps the other half of the type.
  - Virtual machines and scale sets get only the identities that change, V(null) for a removal, as their PATCH API
    defines (api-version 2018-06-01 or later). App Service and Container Apps do not document how their PATCH treats
    the map, so they get the whole map (read, merged, written back), and a removal is checked by reading again and, if
    the identity is still there, sent once more as V(null).
  - A re-run with nothing to change makes no write call.
  - With O(client_id_app_setting=true) an App Service app also gets the app setting C(AZURE_CLIENT_ID) with the
    identity's client id, so that C(DefaultAzureCredential) picks this identity among several. The other settings are
    kept (the settings API replaces the whole set, so they are read and written back).
author: csa-inabox core team (@csa-inabox)
options:
  workload_type:
    description: Kind of workload.
    type: str
    choices: [vm, vmss, app_service, container_app]
    default: vm
  name:
    description: Name of the workload (the VM, scale set, App Service or Functions app, or Container App).
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
  client_id_app_setting:
    description:
      - App Service only. Set the app setting C(AZURE_CLIENT_ID) to the client id of the one identity of
        O(identity_ids). Changing app settings restarts the app.
    type: bool
    default: false
  state:
    description: Whether the listed identities should be attached.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
requirements:
  - azure-mgmt-compute >= 34 (VMs, scale sets)
  - azure-mgmt-web >= 7 (App Service)
  - azure-mgmt-appcontainers >= 3 (Container Apps)
notes:
  - With several user-assigned identities on one workload, an application must select its identity by client id
    (C(AZURE_CLIENT_ID) or C(managed_identity_client_id)); otherwise IMDS answers "Multiple user assigned identities
    exist" and App Service "no default identity is assigned".
"""

EXAMPLES = r"""
- name: Attach the orders API's identity to its VM
  csa_inabox.managed_identity.azure_mi_assignment:
    name: vm-orders
    resource_group: rg-apps
    identity_ids:
      - "{{ identity.identity.id }}"

- name: Attach the storefront's identity to its App Service app, and make it the default credential's choice
  csa_inabox.managed_identity.azure_mi_assignment:
    workload_type: app_service
    name: app-storefront
    resource_group: rg-apps
    identity_ids:
      - "{{ identity.identity.id }}"
    client_id_app_setting: true

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
app_settings_changed:
  description: Whether the C(AZURE_CLIENT_ID) app setting was (or would be) written.
  returned: always
  type: bool
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import (
    READ_ONLY_POST, as_dict, parse_resource_id, resource_group_problem, resource_name_problem)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import KNOWN_AFTER_APPLY, MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.locks import status_of
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

CLIENT_ID_SETTING = "AZURE_CLIENT_ID"


class Workload:
    """One workload kind: how to read it and how to write its identity block."""

    LABEL = "VM"
    DELTA = True  # PATCH takes only the changed identities (null removes); otherwise the whole map is sent

    def __init__(self, mod):
        self.mod = mod
        self.rg, self.name = mod.params["resource_group"], mod.params["name"]

    def read(self):
        return as_dict(self.mod.clients.compute.virtual_machines.get(self.rg, self.name))

    def write(self, identity):
        self.mod.clients.compute.virtual_machines.begin_update(self.rg, self.name, {"identity": identity}).result()

    @staticmethod
    def type_name(system_assigned, user_assigned):
        if system_assigned and user_assigned:
            return "SystemAssigned, UserAssigned"
        if system_assigned:
            return "SystemAssigned"
        return "UserAssigned" if user_assigned else "None"


class ScaleSet(Workload):
    LABEL = "scale set"

    def read(self):
        return as_dict(self.mod.clients.compute.virtual_machine_scale_sets.get(self.rg, self.name))

    def write(self, identity):
        self.mod.clients.compute.virtual_machine_scale_sets.begin_update(
            self.rg, self.name, {"identity": identity}).result()


class AppService(Workload):
    LABEL = "App Service app"
    DELTA = False

    def read(self):
        return as_dict(self.mod.clients.web.web_apps.get(self.rg, self.name))

    def write(self, identity):
        self.mod.clients.web.web_apps.update(self.rg, self.name, {"identity": identity})

    def settings(self):
        listed = self.mod.clients.web.web_apps.list_application_settings(self.rg, self.name, **READ_ONLY_POST)
        return dict((as_dict(listed) or {}).get("properties") or {})

    def write_settings(self, settings):
        self.mod.clients.web.web_apps.update_application_settings(self.rg, self.name, {"properties": settings})


class ContainerApp(Workload):
    LABEL = "Container App"
    DELTA = False

    def read(self):
        return as_dict(self.mod.clients.container_apps.container_apps.get(self.rg, self.name))

    def write(self, identity):
        self.mod.clients.container_apps.container_apps.begin_update(self.rg, self.name, {"identity": identity}).result()

    @staticmethod
    def type_name(system_assigned, user_assigned):
        # Microsoft.App spells the pair without a space.
        return Workload.type_name(system_assigned, user_assigned).replace(", ", ",")


KINDS = {"vm": Workload, "vmss": ScaleSet, "app_service": AppService, "container_app": ContainerApp}


def identities_of(resource):
    """(identity type, {lower-cased id: (id as ARM spells it, its clientId)})."""
    identity = (resource or {}).get("identity") or {}
    attached = identity.get("userAssignedIdentities") or {}
    return identity.get("type") or "None", dict(
        (key.lower(), (key, (value or {}).get("clientId"))) for key, value in attached.items())


def main():
    mod = MIModule(dict(
        workload_type=dict(type="str", default="vm", choices=sorted(KINDS)),
        name=dict(type="str", required=True),
        resource_group=dict(type="str", required=True),
        identity_ids=dict(type="list", elements="str", required=True),
        client_id_app_setting=dict(type="bool", default=False),
        state=dict(type="str", default="present", choices=["present", "absent"]),
    ))
    params = mod.params
    problems = [p for p in (resource_name_problem("name", params["name"]),
                            resource_group_problem("resource_group", params["resource_group"])) if p]
    if problems:
        mod.fail("; ".join(problems))
    wanted = []
    for value in params["identity_ids"]:
        if value == KNOWN_AFTER_APPLY and mod.check_mode:
            wanted.append(value)  # an identity this check-mode run only plans to create
            continue
        value = value.rstrip("/")
        parts = parse_resource_id(value)
        if not parts or parts["namespace"].lower() != "microsoft.managedidentity" or \
                parts["type"].lower() != "userassignedidentities" or parts["rest"] or \
                resource_group_problem("group", parts["group"]) or resource_name_problem("name", parts["name"]):
            mod.fail("identity_ids: %s is not a user-assigned identity resource id (/subscriptions/<id>/resourceGroups/"
                     "<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>)" % shown(value))
        if value.lower() not in (w.lower() for w in wanted):  # ARM ids are case-insensitive: one entry each
            wanted.append(value)
    if params["client_id_app_setting"]:
        if params["workload_type"] != "app_service":
            mod.fail("client_id_app_setting is for App Service apps (workload_type=app_service)")
        if params["state"] != "present" or len(wanted) != 1:
            mod.fail("client_id_app_setting needs state=present and exactly one identity in identity_ids")

    workload = KINDS[params["workload_type"]](mod)
    try:
        current_type, attached = identities_of(workload.read())
    except Exception as exc:  # the SDK's HttpResponseError family
        mod.fail("could not read %s %s in %s" % (workload.LABEL, params["name"], params["resource_group"]), exc)
    system_assigned = "systemassigned" in current_type.replace(" ", "").lower().split(",")
    if params["state"] == "present":
        added = [v for v in wanted if v.lower() not in attached]
        removed = []
    else:
        added = []
        removed = [attached[v.lower()][0] for v in wanted if v.lower() in attached]
    kept = [spelled for spelled, _client in attached.values() if spelled not in removed]
    after_ids = sorted(set(kept) | set(added), key=str.lower)
    new_type = workload.type_name(system_assigned, after_ids)
    changed = bool(added or removed)

    if added and not mod.check_mode:
        check_identities_exist(mod, added)
    if changed and not mod.check_mode:
        if workload.DELTA:
            patch = dict((v, {}) for v in added)
            patch.update((v, None) for v in removed)
        else:
            patch = dict((v, {}) for v in after_ids)
        body = {"type": new_type}
        if after_ids or workload.DELTA:
            body["userAssignedIdentities"] = patch
        # Without UserAssigned in the type, ARM drops every user-assigned identity by itself.
        if "UserAssigned" not in new_type:
            body.pop("userAssignedIdentities", None)
        try:
            workload.write(body)
            if removed and not workload.DELTA:
                _type, now = identities_of(workload.read())
                left = [v for v in removed if v.lower() in now]
                if left:  # the service merged the map: say the removal explicitly
                    workload.write({"type": new_type, "userAssignedIdentities": dict((v, None) for v in left)})
                    _type, now = identities_of(workload.read())
                    if any(v.lower() in now for v in removed):
                        mod.fail("%s %s kept identities this run detached: %s" % (
                            workload.LABEL, params["name"], ", ".join(v for v in removed if v.lower() in now)))
        except Exception as exc:  # the SDK's HttpResponseError family
            mod.fail("could not update the identities of %s %s" % (workload.LABEL, params["name"]), exc)

    settings_changed = False
    if params["client_id_app_setting"]:
        settings_changed = set_client_id_setting(mod, workload, wanted[0], changed, added)
    if removed and isinstance(workload, AppService):
        warn_stale_client_id(mod, workload, [attached[v.lower()][1] for v in removed])

    before = {"type": current_type, "userAssignedIdentities": sorted((v[0] for v in attached.values()), key=str.lower)}
    after = {"type": new_type, "userAssignedIdentities": after_ids}
    mod.exit(changed or settings_changed, before=before, after=after, identity_type=new_type,
             user_assigned_identities=after_ids, added=added, removed=removed, app_settings_changed=settings_changed)


def check_identities_exist(mod, ids):
    """Fail, before any write, naming each identity of ``ids`` (in the module's subscription) that ARM does not know:
    the workload's update would be refused, after a write call."""
    missing = []
    for value in ids:
        parts = parse_resource_id(value)
        if parts["subscription"].lower() != mod.subscription_id.lower():
            continue  # another subscription's identity: ARM checks it when it is attached
        try:
            mod.clients.msi.user_assigned_identities.get(parts["group"], parts["name"])
        except Exception as exc:  # the SDK's HttpResponseError family
            if status_of(exc) != 404:
                mod.fail("could not read identity %s" % value, exc)
            missing.append(value)
    if missing:
        mod.fail("identity_ids: %s %s not exist; nothing was changed (create %s with azure_mi first)"
                 % (", ".join(missing), "does" if len(missing) == 1 else "do", "it" if len(missing) == 1 else "them"))


def warn_stale_client_id(mod, workload, client_ids):
    """Warn when the app setting ``AZURE_CLIENT_ID`` names an identity this run detached."""
    try:
        named = workload.settings().get(CLIENT_ID_SETTING, "")
    except Exception:  # pylint: disable=broad-except
        # a warning only: the detach itself succeeded
        return
    if named and named.lower() in [(c or "").lower() for c in client_ids]:
        mod.module.warn("the app setting %s of App Service app %s still names the identity this run detached (%s): "
                        "DefaultAzureCredential in the app will fail until it names an attached identity"
                        % (CLIENT_ID_SETTING, mod.params["name"], named))


def set_client_id_setting(mod, workload, identity_id, attached_changed, added):
    """Write ``AZURE_CLIENT_ID`` = the identity's client id among the app's settings; True when it changes.
    A failure says whether the identity was attached by this run already (nothing is silent)."""
    if identity_id == KNOWN_AFTER_APPLY:
        return True
    parts = parse_resource_id(identity_id)
    try:
        try:
            identity = as_dict(mod.clients.msi.user_assigned_identities.get(parts["group"], parts["name"])) or {}
        except Exception as exc:  # the SDK's HttpResponseError family
            if mod.check_mode and status_of(exc) == 404:
                return True  # an identity this check-mode run only plans to create: its client id is not known yet
            raise
        client_id = (identity.get("properties") or {}).get("clientId")
        settings = workload.settings()
        if settings.get(CLIENT_ID_SETTING) == client_id:
            return False
        if not mod.check_mode:
            settings[CLIENT_ID_SETTING] = client_id
            workload.write_settings(settings)
    except Exception as exc:  # the SDK's HttpResponseError family
        done = "; the identity was attached by this run already" if attached_changed and not mod.check_mode else ""
        mod.fail("could not set the %s app setting of App Service app %s%s" % (
            CLIENT_ID_SETTING, mod.params["name"], done), exc, changed=attached_changed and not mod.check_mode,
            added=added)
    return True


if __name__ == "__main__":
    main()
