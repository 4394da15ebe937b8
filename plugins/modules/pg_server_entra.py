#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_server_entra
short_description: Microsoft Entra authentication and Entra administrators of an Azure Database for PostgreSQL flexible server
version_added: 0.1.0
description:
  - Sets the server's C(authConfig) (C(activeDirectoryAuth), C(passwordAuth)) with a PATCH of
    C(Microsoft.DBforPostgreSQL/flexibleServers), and its Microsoft Entra administrators
    (C(flexibleServers/{server}/administrators/{objectId})), through azure-mgmt-postgresqlflexibleservers.
  - Entra is enabled through C(authConfig). The tutorial's C(azure.extensions=pgaadauth) server parameter is
    not a valid way to do it, and C(password_encryption=off) does not disable passwords (it was removed in
    PostgreSQL 10). Passwords are switched off here with O(password_auth=false).
  - Changes are made in a safe order. Entra is enabled first, then administrators are added, and passwords are
    switched off last. O(password_auth=false) is refused before any write unless Entra is on and at least one
    Entra administrator will exist.
  - Administrators not listed are kept unless O(purge_administrators=true).
  - It also returns the server's place in replication (RV(replication_role), RV(source_server_id), RV(replicas)), read
    from the server and C(flexibleServers/{server}/replicas). A read replica's C(authConfig) is its own and must be
    set on it as well, while its Entra administrators are managed on its primary, whose roles it replicates.
author: csa-inabox core team (@csa-inabox)
options:
  name:
    description: Name of the flexible server.
    type: str
    required: true
  resource_group:
    description: Resource group of the server.
    type: str
    required: true
  active_directory_auth:
    description: Whether Microsoft Entra authentication is enabled. Left alone when omitted. Enabling it restarts the server.
    type: bool
  password_auth:
    description: Whether password authentication is enabled. Left alone when omitted.
    type: bool
  administrators:
    description: Microsoft Entra administrators the server must have.
    type: list
    elements: dict
    default: []
    suboptions:
      object_id:
        description: Object id of the user, group or service principal (a managed identity's principal id).
        type: str
        required: true
      principal_name:
        description: Its name; the PostgreSQL role created for it (at most 63 bytes). For a managed identity, its name.
        type: str
        required: true
      principal_type:
        description: Kind of principal.
        type: str
        choices: [User, Group, ServicePrincipal]
        default: User
  purge_administrators:
    description: Remove Entra administrators that are not listed in O(administrators).
    type: bool
    default: false
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.attributes
notes:
  - O(tenant_id) (or C(AZURE_TENANT_ID)) is the tenant written in C(authConfig) and in each administrator.
seealso:
  - name: Microsoft Entra authentication with Azure Database for PostgreSQL
    description: Microsoft Learn.
    link: https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-azure-ad-authentication
"""

EXAMPLES = r"""
- name: Trust Entra, keep passwords for now, make the DBA group and the automation identity administrators
  csa_inabox.managed_identity.pg_server_entra:
    name: pg-prod
    resource_group: rg-data
    tenant_id: 00000000-0000-0000-0000-000000000000
    active_directory_auth: true
    password_auth: true
    administrators:
      - object_id: 9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f
        principal_name: pg-admins
        principal_type: Group
      - object_id: 4a7f0e2b-6c3d-4e8f-9a1b-2c3d4e5f6a7b
        principal_name: mi-operator
        principal_type: ServicePrincipal

- name: Cutover, once every application is verified
  csa_inabox.managed_identity.pg_server_entra:
    name: pg-prod
    resource_group: rg-data
    password_auth: false
"""

RETURN = r"""
auth_config:
  description: C(authConfig) after the change (planned, in check mode).
  returned: always
  type: dict
  sample: {"activeDirectoryAuth": "Enabled", "passwordAuth": "Enabled", "tenantId": "00000000-0000-0000-0000-000000000000"}
administrators:
  description: Entra administrators after the change, each with C(object_id), C(principal_name), C(principal_type).
  returned: always
  type: list
  elements: dict
administrator_login:
  description: The server's PostgreSQL administrator login (C(properties.administratorLogin)), a password user.
  returned: always
  type: str
  sample: pgadmin
replication_role:
  description: C(properties.replicationRole) of the server, C(None), C(Primary), C(AsyncReplica) or C(GeoAsyncReplica).
  returned: always
  type: str
  sample: Primary
source_server_id:
  description: For a read replica, the resource id of its primary (C(properties.sourceServerResourceId)), else null.
  returned: always
  type: str
replicas:
  description: The server's read replicas, each with C(name), C(resource_group), C(id) and C(replication_role).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "pg-prod-replica", "resource_group": "rg-data", "replication_role": "AsyncReplica",
            "id": "/subscriptions/.../resourceGroups/rg-data/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg-prod-replica"}]
operations:
  description: The ARM writes made (or planned, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["PATCH authConfig activeDirectoryAuth=Enabled", "PUT administrators/9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f (pg-admins)"]
"""

import os

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import (
    as_dict, resource_group_problem, resource_name_problem)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule, guid_problem, is_guid
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown

MAX_ROLE_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


def enabled(flag):
    return None if flag is None else ("Enabled" if flag else "Disabled")


def read_current(mod):
    from azure.core.exceptions import ResourceNotFoundError  # pylint: disable=import-outside-toplevel

    ops = mod.clients.postgres
    rg, name = mod.params["resource_group"], mod.params["name"]
    try:
        server = as_dict(ops.servers.get(rg, name))
        admins = [as_dict(a) for a in ops.administrators_microsoft_entra.list_by_server(rg, name)]
        replicas = [as_dict(r) for r in ops.replicas.list_by_server(rg, name)]
    except ResourceNotFoundError as exc:
        mod.fail("PostgreSQL flexible server %s was not found in resource group %s" % (name, rg), exc)
    except Exception as exc:
        mod.fail("could not read PostgreSQL flexible server %s" % name, exc)
    props = server.get("properties") or {}
    auth_config = props.get("authConfig") or {}
    replication = {
        "administrator_login": props.get("administratorLogin"),
        "replication_role": props.get("replicationRole") or "None",
        "source_server_id": props.get("sourceServerResourceId") or None,
        "replicas": sorted((replica_summary(r) for r in replicas), key=lambda r: r["id"].lower()),
    }
    return {
        "activeDirectoryAuth": auth_config.get("activeDirectoryAuth") or "Disabled",
        "passwordAuth": auth_config.get("passwordAuth") or "Enabled",
        "tenantId": auth_config.get("tenantId"),
    }, dict((a["properties"]["objectId"].lower(), admin_summary(a)) for a in admins), replication


def replica_summary(replica):
    """``{name, resource_group, id, replication_role}`` of a server listed by ``flexibleServers/{s}/replicas``."""
    parts = replica["id"].split("/")
    lowered = [p.lower() for p in parts]
    resource_group = parts[lowered.index("resourcegroups") + 1] if "resourcegroups" in lowered else None
    return {"name": replica.get("name") or parts[-1], "resource_group": resource_group, "id": replica["id"],
            "replication_role": (replica.get("properties") or {}).get("replicationRole")}


def admin_summary(admin):
    props = admin.get("properties") or {}
    return {"object_id": props.get("objectId"), "principal_name": props.get("principalName"),
            "principal_type": props.get("principalType")}


def same_admin(current, wanted):
    return bool(current) and (current["principal_name"], current["principal_type"]) == (
        wanted["principal_name"], wanted["principal_type"])


def by_object_id(admins):
    return sorted(admins, key=lambda a: a["object_id"].lower())


def validate(mod):
    problem = resource_name_problem("name", mod.params["name"]) or \
        resource_group_problem("resource_group", mod.params["resource_group"])
    if problem:
        mod.fail(problem)
    seen = set()
    for index, admin in enumerate(mod.params["administrators"]):
        where = "administrators[%d]" % index
        problem = guid_problem(where + ".object_id", admin["object_id"], "the principal's object id in Entra ID")
        if problem:
            mod.fail(problem)
        if admin["object_id"].lower() in seen:
            mod.fail("%s.object_id %s is listed twice" % (where, admin["object_id"]))
        seen.add(admin["object_id"].lower())
        name = admin["principal_name"]
        if not name.strip() or len(name.encode("utf-8")) > MAX_ROLE_NAME_BYTES or has_control(name):
            mod.fail("%s.principal_name %s must be 1 to %d bytes without control characters (it is the principal's "
                     "display name in Entra ID and becomes a PostgreSQL role name)" % (where, shown(name), MAX_ROLE_NAME_BYTES))


def main():
    mod = MIModule(dict(
        name=dict(type="str", required=True),
        resource_group=dict(type="str", required=True),
        active_directory_auth=dict(type="bool"),
        password_auth=dict(type="bool", no_log=False),  # a switch, not a secret
        administrators=dict(type="list", elements="dict", default=[], options=dict(
            object_id=dict(type="str", required=True),
            principal_name=dict(type="str", required=True),
            principal_type=dict(type="str", default="User", choices=["User", "Group", "ServicePrincipal"]),
        )),
        purge_administrators=dict(type="bool", default=False),
    ))
    params = mod.params
    validate(mod)
    tenant_id = params["tenant_id"] or os.environ.get("AZURE_TENANT_ID")
    if tenant_id and not is_guid(tenant_id):
        mod.fail("tenant_id %s is not a GUID" % shown(tenant_id))

    auth_config, admins, replication = read_current(mod)
    want_ad = enabled(params["active_directory_auth"]) or auth_config["activeDirectoryAuth"]
    want_pw = enabled(params["password_auth"]) or auth_config["passwordAuth"]
    to_add = [a for a in params["administrators"] if not same_admin(admins.get(a["object_id"].lower()), a)]
    listed = set(a["object_id"].lower() for a in params["administrators"])
    to_remove = [a for key, a in admins.items() if key not in listed] if params["purge_administrators"] else []
    replaced = set(a["object_id"].lower() for a in to_add + to_remove)
    admins_after = [a for key, a in admins.items() if key not in replaced] + [dict(a) for a in to_add]

    if replication["source_server_id"] and (to_add or to_remove):
        mod.fail("server %s is a read replica of %s: its Entra administrators are its primary's (the roles replicate "
                 "from it); add or remove them on the primary" % (params["name"],
                                                                  replication["source_server_id"].rsplit("/", 1)[-1]))
    # Refuse what would lock everyone out, before any write.
    if admins and not admins_after:
        mod.fail("purge_administrators would remove every Entra administrator of %s: list at least one in "
                 "administrators" % params["name"])
    if want_pw == "Disabled" and want_ad != "Enabled":
        mod.fail("password_auth=false needs active_directory_auth=true: with both off nobody can log in")
    if want_pw == "Disabled" and not admins_after:
        mod.fail("password_auth=false needs at least one Entra administrator (administrators) first")
    if want_ad == "Disabled" and want_pw == "Disabled":
        mod.fail("active_directory_auth=false needs password_auth=true")
    needs_tenant = (want_ad == "Enabled" and auth_config["activeDirectoryAuth"] != "Enabled") or to_add
    if needs_tenant and not (tenant_id or auth_config["tenantId"]):
        mod.fail("tenant_id is required to enable Entra authentication or add administrators (option or AZURE_TENANT_ID)")
    tenant_id = tenant_id or auth_config["tenantId"]

    rg, name = params["resource_group"], params["name"]

    def patch(auth):
        return lambda: mod.clients.postgres.servers.begin_update(rg, name, {"properties": {"authConfig": auth}}).result()

    def put(admin):
        body = {"properties": {"principalType": admin["principal_type"], "principalName": admin["principal_name"],
                               "tenantId": tenant_id}}
        return lambda: mod.clients.postgres.administrators_microsoft_entra.begin_create_or_update(
            rg, name, admin["object_id"], body).result()

    def delete(admin):
        return lambda: mod.clients.postgres.administrators_microsoft_entra.begin_delete(
            rg, name, admin["object_id"]).result()

    steps = []
    after_first = auth_config
    if want_ad == "Enabled" and auth_config["activeDirectoryAuth"] != "Enabled":
        after_first = dict(auth_config, activeDirectoryAuth="Enabled", tenantId=tenant_id)
        steps.append(("PATCH authConfig activeDirectoryAuth=Enabled", patch(after_first)))
    steps.extend(("PUT administrators/%s (%s)" % (a["object_id"], a["principal_name"]), put(a)) for a in to_add)
    steps.extend(("DELETE administrators/%s (%s)" % (a["object_id"], a["principal_name"]), delete(a))
                 for a in to_remove)
    final = {"activeDirectoryAuth": want_ad, "passwordAuth": want_pw, "tenantId": tenant_id}
    if (final["activeDirectoryAuth"], final["passwordAuth"]) != \
            (after_first["activeDirectoryAuth"], after_first["passwordAuth"]):
        steps.append(("PATCH authConfig activeDirectoryAuth=%s passwordAuth=%s" % (want_ad, want_pw), patch(final)))
    operations = mod.apply_steps(steps, "server %s" % name)

    mod.exit(bool(steps),
             before={"authConfig": auth_config, "administrators": by_object_id(admins.values())},
             after={"authConfig": final, "administrators": by_object_id(admins_after)},
             auth_config=final, administrators=by_object_id(admins_after), operations=operations, **replication)


if __name__ == "__main__":
    main()
