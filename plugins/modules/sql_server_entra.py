#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: sql_server_entra
short_description: Microsoft Entra administrator and Entra-only authentication of an Azure SQL logical server
version_added: 0.1.0
description:
  - Sets the server's Microsoft Entra administrator through its own resource,
    C(Microsoft.Sql/servers/{server}/administrators/ActiveDirectory). Setting administrators through a server PUT
    does not update an existing server (azure-sdk-for-python#22009).
  - Switches Entra-only authentication on or off (C(azureADOnlyAuthentications/Default)), which refuses every SQL
    login. It is refused before any write unless the server has (or will have) an Entra administrator.
  - A server has one Entra administrator. An existing one that is not O(administrator) is never replaced silently.
    The module fails and names it, unless O(replace_administrator=true). Microsoft's Service Connector, by
    contrast, replaces it with the caller.
  - It also returns the servers this one is geo-replicated with through failover groups (RV(failover_partners), from
    C(servers/{server}/failoverGroups)). Each partner has its own Entra administrator and Entra-only setting, and
    Microsoft requires the Entra administrator on both the primary and the secondary.
author: csa-inabox core team (@csa-inabox)
options:
  name:
    description: Name of the logical server.
    type: str
    required: true
  resource_group:
    description: Resource group of the server.
    type: str
    required: true
  administrator:
    description: The Entra administrator the server must have. Left alone when omitted.
    type: dict
    suboptions:
      login:
        description: Display name of the user, group or application (what the C(SUSER_SNAME) function shows).
        type: str
        required: true
      sid:
        description:
          - The principal's id as SQL matches it. That is the object id for users and groups, and the client
            (application) id for applications and managed identities.
        type: str
        required: true
  replace_administrator:
    description: Replace an existing Entra administrator that is not O(administrator).
    type: bool
    default: false
  azure_ad_only_authentication:
    description: Whether only Microsoft Entra logins are accepted (SQL authentication off). Left alone when omitted.
    type: bool
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
notes:
  - O(tenant_id) (or C(AZURE_TENANT_ID)) is the administrator's tenant.
  - Use a group as the administrator, so that people and automation can change without touching the server.
seealso:
  - name: Configure Microsoft Entra authentication for Azure SQL
    description: Microsoft Learn.
    link: https://learn.microsoft.com/azure/azure-sql/database/authentication-aad-configure
"""

EXAMPLES = r"""
- name: The DBA group administers the server; SQL logins still work during the migration
  csa_inabox.managed_identity.sql_server_entra:
    name: sql-prod
    resource_group: rg-data
    tenant_id: 00000000-0000-0000-0000-000000000000
    administrator:
      login: sql-admins
      sid: 9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f

- name: Cutover, once every application is verified
  csa_inabox.managed_identity.sql_server_entra:
    name: sql-prod
    resource_group: rg-data
    azure_ad_only_authentication: true
"""

RETURN = r"""
administrator:
  description:
    - The Entra administrator after the change (C(login), C(sid), C(tenant_id)), and C(principal_type) as Azure
      reports it from the directory (known after apply for a new one). Empty when there is none.
  returned: always
  type: dict
azure_ad_only_authentication:
  description: Whether Entra-only authentication is on after the change.
  returned: always
  type: bool
failover_partners:
  description: The partner servers of this server's failover groups, each with C(name), C(resource_group), C(id),
    C(replication_role) (the partner's role, C(Primary) or C(Secondary)) and C(failover_group).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "sql-prod-dr", "resource_group": "rg-dr", "replication_role": "Secondary",
            "failover_group": "fg-prod", "id": "/subscriptions/.../resourceGroups/rg-dr/providers/Microsoft.Sql/servers/sql-prod-dr"}]
operations:
  description: The ARM writes made (or planned, in check mode), in order.
  returned: always
  type: list
  elements: str
"""

import os

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import (
    as_dict, resource_group_problem, resource_name_problem)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import (
    KNOWN_AFTER_APPLY, MIModule, guid_problem, is_guid)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown


def read_current(mod):
    from azure.core.exceptions import ResourceNotFoundError  # pylint: disable=import-outside-toplevel

    ops = mod.clients.sql
    rg, name = mod.params["resource_group"], mod.params["name"]
    try:
        server = as_dict(ops.servers.get(rg, name))
    except ResourceNotFoundError as exc:
        mod.fail("Azure SQL server %s was not found in resource group %s" % (name, rg), exc)
    except Exception as exc:
        mod.fail("could not read Azure SQL server %s" % name, exc)
    try:
        props = as_dict(ops.server_azure_ad_administrators.get(rg, name, "ActiveDirectory")).get("properties") or {}
        # The administrator resource has no principal type; the server's view of it does (Azure reads the directory).
        summary = (server.get("properties") or {}).get("administrators") or {}
        admin = {"login": props.get("login"), "sid": props.get("sid"), "tenant_id": props.get("tenantId"),
                 "principal_type": summary.get("principalType")}
    except ResourceNotFoundError:
        admin = {}
    try:
        only = as_dict(ops.server_azure_ad_only_authentications.get(rg, name, "Default")).get("properties") or {}
        entra_only = bool(only.get("azureADOnlyAuthentication"))
    except ResourceNotFoundError:
        entra_only = False
    try:
        groups = [as_dict(g) for g in ops.failover_groups.list_by_server(rg, name)]
    except Exception as exc:
        mod.fail("could not list the failover groups of Azure SQL server %s" % name, exc)
    return admin, entra_only, failover_partners(groups)


def failover_partners(groups):
    """The partner servers of failover groups (``servers/{s}/failoverGroups`` items), one entry per server."""
    partners = {}
    for group in groups:
        for partner in (group.get("properties") or {}).get("partnerServers") or []:
            parts = partner["id"].split("/")
            lowered = [p.lower() for p in parts]
            resource_group = parts[lowered.index("resourcegroups") + 1] if "resourcegroups" in lowered else None
            partners.setdefault(partner["id"].lower(), {
                "name": parts[-1], "resource_group": resource_group, "id": partner["id"],
                "replication_role": partner.get("replicationRole"), "failover_group": group.get("name")})
    return [partners[key] for key in sorted(partners)]


def same_admin(current, wanted):
    return bool(current) and (current["sid"] or "").lower() == wanted["sid"].lower() and \
        current["login"] == wanted["login"]


def main():
    mod = MIModule(dict(
        name=dict(type="str", required=True),
        resource_group=dict(type="str", required=True),
        administrator=dict(type="dict", options=dict(
            login=dict(type="str", required=True),
            sid=dict(type="str", required=True),
        )),
        replace_administrator=dict(type="bool", default=False),
        azure_ad_only_authentication=dict(type="bool"),
    ))
    params = mod.params
    problem = resource_name_problem("name", params["name"]) or \
        resource_group_problem("resource_group", params["resource_group"])
    if problem:
        mod.fail(problem)
    wanted = params["administrator"]
    if wanted is not None:
        problem = guid_problem("administrator.sid", wanted["sid"], "the object id of a user or group, or the client id "
                               "of an application or managed identity")
        if problem:
            mod.fail(problem)
        if not wanted["login"].strip() or len(wanted["login"]) > 128 or has_control(wanted["login"]):
            mod.fail("administrator.login must be 1 to 128 characters without control characters (the principal's "
                     "display name in Entra ID)")
    tenant_id = params["tenant_id"] or os.environ.get("AZURE_TENANT_ID")
    if tenant_id and not is_guid(tenant_id):
        mod.fail("tenant_id %s is not a GUID" % shown(tenant_id))

    admin, entra_only, partners = read_current(mod)
    rg, name = params["resource_group"], params["name"]
    steps = []
    admin_after = admin
    if wanted is not None and not same_admin(admin, wanted):
        if admin and (admin["sid"] or "").lower() != wanted["sid"].lower() and not params["replace_administrator"]:
            mod.fail("server %s already has Entra administrator %s (sid %s): it is left alone. Make it the administrator "
                     "in the inventory, or set replace_administrator=true if replacing it is intended"
                     % (params["name"], admin["login"], admin["sid"]))
        if not tenant_id:
            mod.fail("tenant_id is required to set the Entra administrator (option or AZURE_TENANT_ID)")
        admin_after = dict(wanted, tenant_id=tenant_id, principal_type=KNOWN_AFTER_APPLY)
        body = {"properties": {"administratorType": "ActiveDirectory", "login": wanted["login"], "sid": wanted["sid"],
                               "tenantId": tenant_id}}
        steps.append(("PUT administrators/ActiveDirectory (%s)" % wanted["login"],
                      lambda: mod.clients.sql.server_azure_ad_administrators.begin_create_or_update(
                          rg, name, "ActiveDirectory", body).result()))
    want_only = params["azure_ad_only_authentication"]
    if want_only is not None and want_only != entra_only:
        if want_only and not admin_after:
            mod.fail("azure_ad_only_authentication=true needs an Entra administrator (administrator) first: "
                     "otherwise nobody could log in")
        steps.append(("PUT azureADOnlyAuthentications/Default azureADOnlyAuthentication=%s" % str(want_only).lower(),
                      lambda: mod.clients.sql.server_azure_ad_only_authentications.begin_create_or_update(
                          rg, name, "Default", {"properties": {"azureADOnlyAuthentication": want_only}}).result()))
    only_after = entra_only if want_only is None else want_only
    operations = mod.apply_steps(steps, "server %s" % name)

    mod.exit(bool(steps), before={"administrator": admin, "azure_ad_only_authentication": entra_only},
             after={"administrator": admin_after, "azure_ad_only_authentication": only_after},
             administrator=admin_after, azure_ad_only_authentication=only_after, operations=operations,
             failover_partners=partners)


if __name__ == "__main__":
    main()
