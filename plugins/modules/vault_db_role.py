#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_db_role
short_description: Decommission (or restore) a Vault / OpenBao database secrets engine role
version_added: 0.1.0
description:
  - With O(state=absent), backs up the role's definition (never a secret value), revokes the leases it issued
    (Vault then runs the role's revocation statements, dropping the dynamic database users), deletes the role, and,
    with O(delete_unused_connection=true), deletes the database connection once no role uses it. Run it while Vault
    can still reach the database, or the leases cannot be revoked cleanly.
  - With O(state=present), recreates the role from a backup written by an earlier O(state=absent) run (rollback).
    The connection is not recreated here, because that needs the database administrator's password, which this
    collection never handles.
  - The Vault token is read inside the module from C(VAULT_TOKEN) or O(token_file); it is never an option.
extends_documentation_fragment:
  - csa_inabox.managed_identity.vault
  - csa_inabox.managed_identity.attributes
author: csa-inabox core team (@csa-inabox)
options:
  mount:
    description: Mount point of the database secrets engine.
    type: str
    default: database
  name:
    description: Name of the role.
    type: str
    required: true
  state:
    description: V(absent) decommissions the role; V(present) restores it from O(backup_dir).
    type: str
    choices: [present, absent]
    default: absent
  backup_dir:
    description:
      - Directory for the backups, one JSON file per role (C(<mount>/roles/<name>.json)) and per connection
        (C(<mount>/connections/<name>.json)). Required.
      - Backups hold definitions only (statements, TTLs, plugin, URL template, user name); Vault never returns
        passwords on read.
    type: path
    required: true
  revoke_leases:
    description: Revoke the role's leases before deleting it.
    type: bool
    default: true
  delete_unused_connection:
    description: Delete the role's database connection when no other role (dynamic or static) uses it any more.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Retire the orders API's Vault role, once its identity is verified
  csa_inabox.managed_identity.vault_db_role:
    url: https://vault.example.com:8200
    name: orders-api
    backup_dir: /var/backups/vault-migration
    delete_unused_connection: true
  register: retired

- name: Roll back
  csa_inabox.managed_identity.vault_db_role:
    name: orders-api
    state: present
    backup_dir: /var/backups/vault-migration
"""

RETURN = r"""
role:
  description: The role's definition before the change (after it, for O(state=present)); empty when there is none.
  returned: always
  type: dict
leases_revoked:
  description: Leases revoked (or that would be, in check mode).
  returned: always
  type: int
connection_deleted:
  description: Name of the connection deleted (or that would be), or null.
  returned: always
  type: str
backup_files:
  description: Backup files written (none in check mode).
  returned: always
  type: list
  elements: str
operations:
  description: The Vault API calls that change something, made or planned, in order.
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import vault
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule

ROLE_FIELDS = ("db_name", "creation_statements", "revocation_statements", "rollback_statements",
               "renew_statements", "default_ttl", "max_ttl", "credential_type", "credential_config")
CONNECTION_SECRET_KEYS = ("password", "private_key", "tls_certificate_key")


def read_or_none(call):
    import hvac  # pylint: disable=import-outside-toplevel

    try:
        return call()["data"]
    except hvac.exceptions.InvalidPath:
        return None


def write_backup(path, data):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def roles_using(client, mount, connection, except_role):
    names = []
    for kind, lister, reader in (("dynamic", "list_roles", "read_role"),
                                 ("static", "list_static_roles", "read_static_role")):
        listed = read_or_none(lambda: getattr(client.secrets.database, lister)(mount_point=mount)) or {}
        for role in listed.get("keys", []):
            if kind == "dynamic" and role == except_role:
                continue
            data = read_or_none(lambda r=role: getattr(client.secrets.database, reader)(r, mount_point=mount)) or {}
            if data.get("db_name") == connection:
                names.append("%s:%s" % (kind, role))
    return names


def count_leases(client, prefix):
    import hvac  # pylint: disable=import-outside-toplevel

    try:
        return len(client.sys.list_leases(prefix)["data"].get("keys", []))
    except hvac.exceptions.InvalidPath:
        return 0


def main():
    spec = dict(
        mount=dict(type="str", default="database"),
        name=dict(type="str", required=True),
        state=dict(type="str", default="absent", choices=["present", "absent"]),
        backup_dir=dict(type="path", required=True),
        revoke_leases=dict(type="bool", default=True),
        delete_unused_connection=dict(type="bool", default=False),
    )
    spec.update(vault.VAULT_ARGUMENT_SPEC)
    mod = MIModule(spec, azure=False)
    params = mod.params
    mount, name = params["mount"].strip("/"), params["name"]
    if not name or "/" in name or name in (".", ".."):
        mod.fail("name %r is not a role name (no '/')" % name)
    if not mount or any(part in ("", ".", "..") for part in mount.split("/")):
        mod.fail("mount %r is not a mount path (no empty, '.' or '..' segments)" % params["mount"])
    role_backup = os.path.join(params["backup_dir"], mount, "roles", name + ".json")
    try:
        import hvac  # pylint: disable=import-outside-toplevel
        client = vault.client(params, warn=mod.module.warn)
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("hvac"))
    except vault.VaultConfigError as exc:
        mod.fail(str(exc))

    operations, files = [], []
    try:
        role = read_or_none(lambda: client.secrets.database.read_role(name, mount_point=mount))
        role = dict((k, v) for k, v in (role or {}).items() if k in ROLE_FIELDS) or None
        if params["state"] == "present":
            if role is not None:
                mod.exit(False, before=role, after=role, role=role, leases_revoked=0, connection_deleted=None,
                         backup_files=[], operations=[])
            try:
                with open(role_backup, encoding="utf-8") as handle:
                    saved = json.load(handle)
            except (OSError, ValueError) as exc:
                mod.fail("cannot restore role %s: no readable backup at %s (%s)" % (name, role_backup, exc))
            operations.append("POST %s/roles/%s" % (mount, name))
            if not mod.check_mode:
                client.secrets.database.create_role(
                    name, db_name=saved["db_name"], creation_statements=saved["creation_statements"],
                    revocation_statements=saved.get("revocation_statements"),
                    rollback_statements=saved.get("rollback_statements"),
                    renew_statements=saved.get("renew_statements"), default_ttl=saved.get("default_ttl"),
                    max_ttl=saved.get("max_ttl"), mount_point=mount)
            mod.exit(True, before={}, after=saved, role=saved, leases_revoked=0, connection_deleted=None,
                     backup_files=[], operations=operations)

        if role is None:
            mod.exit(False, before={}, after={}, role={}, leases_revoked=0, connection_deleted=None,
                     backup_files=[], operations=[])
        prefix = "%s/creds/%s" % (mount, name)
        leases = count_leases(client, prefix) if params["revoke_leases"] else 0
        connection_name = role.get("db_name")
        connection = read_or_none(lambda: client.secrets.database.read_connection(connection_name, mount_point=mount))
        delete_connection = None
        if params["delete_unused_connection"] and connection is not None and \
                not roles_using(client, mount, connection_name, name):
            delete_connection = connection_name
        if not mod.check_mode:
            write_backup(role_backup, dict(role, name=name, mount=mount))
            files.append(role_backup)
            if connection is not None:
                conn_backup = os.path.join(params["backup_dir"], mount, "connections", connection_name + ".json")
                write_backup(conn_backup, dict(((k, v) for k, v in connection.items() if k not in CONNECTION_SECRET_KEYS),
                                               name=connection_name, mount=mount))
                files.append(conn_backup)
        if params["revoke_leases"]:
            operations.append("PUT sys/leases/revoke-prefix/%s (%d leases)" % (prefix, leases))
            if not mod.check_mode:
                client.sys.revoke_prefix(prefix)
        operations.append("DELETE %s/roles/%s" % (mount, name))
        if not mod.check_mode:
            client.secrets.database.delete_role(name, mount_point=mount)
        if delete_connection:
            operations.append("DELETE %s/config/%s" % (mount, delete_connection))
            if not mod.check_mode:
                client.secrets.database.delete_connection(delete_connection, mount_point=mount)
    except hvac.exceptions.VaultError as exc:
        mod.fail("Vault refused %s" % (operations[-1] if operations else "a read"), exc,
                 operations=operations, backup_files=files)
    mod.exit(True, before={"role": role, "leases": leases, "connection": connection_name},
             after={"role": None, "leases": 0 if params["revoke_leases"] else leases,
                    "connection": None if delete_connection else connection_name},
             role=role, leases_revoked=leases, connection_deleted=delete_connection, backup_files=files,
             operations=operations)


if __name__ == "__main__":
    main()
