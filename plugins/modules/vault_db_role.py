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
  - With O(state=present), recreates the role from a backup written by an earlier O(state=absent) run (rollback),
    and first its database connection when it is gone, from the connection's backup and the database
    administrator's password. The operator supplies that password at rollback time in a file
    (O(connection_password_file)) or an environment variable (O(connection_password_env)); the module reads it
    there and sends it to Vault only, so it is never an option value, a result or a diff. Vault verifies the
    login before it keeps the connection, so the database must accept passwords again first. In check mode a
    missing password is a warning, not a failure.
  - A role or connection that exists is left as it is (a re-run makes no write); the module warns when an
    existing connection differs from its backup.
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
  connection_password_file:
    description:
      - With O(state=present), a file holding the password of the connection's database administrator (the
        connection's C(username)), used only when the connection has to be recreated. Surrounding whitespace is
        dropped.
      - Keep it readable by the user running the module only (mode 0600), and remove it after the rollback.
    type: path
  connection_password_env:
    description:
      - With O(state=present), the B(name) of an environment variable of the module's process that holds that
        password (not the password itself), for example C(MI_VAULT_CONNECTION_PASSWORD).
      - Mutually exclusive with O(connection_password_file).
    type: str
"""

EXAMPLES = r"""
- name: Retire the orders API's Vault role, once its identity is verified
  csa_inabox.managed_identity.vault_db_role:
    url: https://vault.example.com:8200
    name: orders-api
    backup_dir: /var/backups/vault-migration
    delete_unused_connection: true
  register: retired

- name: Roll back (the connection too, when it is gone; its admin password is read from the file)
  csa_inabox.managed_identity.vault_db_role:
    name: orders-api
    state: present
    backup_dir: /var/backups/vault-migration
    connection_password_file: /run/secrets/pg-prod-admin-password

- name: Roll back, with the admin password in the job's environment (exported as MI_VAULT_CONNECTION_PASSWORD)
  csa_inabox.managed_identity.vault_db_role:
    name: orders-api
    state: present
    backup_dir: /var/backups/vault-migration
    connection_password_env: MI_VAULT_CONNECTION_PASSWORD
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
connection_restored:
  description: Name of the connection recreated from its backup (or that would be), or null.
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
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

ROLE_FIELDS = ("db_name", "creation_statements", "revocation_statements", "rollback_statements",
               "renew_statements", "default_ttl", "max_ttl", "credential_type", "credential_config")
CONNECTION_SECRET_KEYS = ("password", "private_key", "tls_certificate_key")


def read_or_none(call):
    import hvac  # pylint: disable=import-outside-toplevel

    try:
        return call()["data"]
    except hvac.exceptions.InvalidPath:
        return None


def backup_dir_problem(path):
    """Why the backups cannot go below ``path``, or ``None``: a NUL in it, or an existing file (not a folder) at it or
    at one of its parents. Checked before Vault is asked anything."""
    if not path or "\x00" in path:
        return "backup_dir %s is not a path" % shown(path)
    here = os.path.abspath(path)
    while True:
        if os.path.exists(here):
            if not os.path.isdir(here):
                return ("backup_dir %s: %s is not a folder, so the backups cannot be written below it; nothing was "
                        "changed" % (shown(path), here))
            return None
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def write_backup(path, data):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_backup(path):
    """The JSON object in ``path``; raises ``ValueError`` saying why there is none (missing, unreadable, not JSON)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ValueError("no readable backup at %s (%s)" % (path, exc.strerror))
    except ValueError as exc:
        raise ValueError("the backup %s is not JSON (%s)" % (path, exc))
    if not isinstance(data, dict):
        raise ValueError("the backup %s does not hold a JSON object" % path)
    return data


def read_password(password_file, env_name, environ=None):
    """The connection's admin password, from ``password_file`` or the environment variable named ``env_name``.

    Raises ``ValueError`` with a message that never holds the value: neither given, file unreadable, empty, or a
    value with line breaks or control characters inside (two values, or not a password file at all).
    """
    environ = os.environ if environ is None else environ
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as handle:
                value, source = handle.read().strip(), "the file %s" % password_file
        except OSError as exc:
            raise ValueError("cannot read the connection password file %s (%s)" % (password_file, exc.strerror))
    elif env_name:
        value, source = environ.get(env_name, "").strip(), "the environment variable %s" % env_name
    else:
        raise ValueError("give the database administrator's password in connection_password_file or in an "
                         "environment variable named by connection_password_env")
    if not value:
        raise ValueError("%s is empty or not set" % source)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("%s holds line breaks or control characters: it must hold the password only (not shown)"
                         % source)
    return value


def connection_arguments(backup):
    """``hvac`` ``configure()`` keyword arguments rebuilt from a connection backup (no password: the caller adds it).

    Vault answers a read with the plugin's parameters under ``connection_details`` and the rotation statements as
    ``root_credentials_rotate_statements``; a write takes them at the top level and as ``root_rotation_statements``.
    """
    arguments = dict(backup.get("connection_details") or {})
    for key in CONNECTION_SECRET_KEYS:
        arguments.pop(key, None)
    arguments.update(plugin_name=backup["plugin_name"], allowed_roles=backup.get("allowed_roles") or [],
                     verify_connection=True)
    if backup.get("root_credentials_rotate_statements"):
        arguments["root_rotation_statements"] = backup["root_credentials_rotate_statements"]
    for key in ("password_policy", "plugin_version"):
        if backup.get(key):
            arguments[key] = backup[key]
    return arguments


def connection_drift(backup, current):
    """The fields (sorted names) in which an existing connection differs from its backup."""
    drift = [key for key in ("plugin_name", "connection_details") if (backup.get(key) or None) != (current.get(key) or None)]
    if sorted(backup.get("allowed_roles") or []) != sorted(current.get("allowed_roles") or []):
        drift.append("allowed_roles")
    return sorted(drift)


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


def backup_or_empty(path):
    try:
        return read_backup(path)
    except ValueError:
        return {}


def connection_name_problem(value):
    """Why ``value`` (a role's ``db_name``, read from Vault or from a backup file) cannot name a connection and its
    backup file ``{backup_dir}/{mount}/connections/{value}.json``, or ``None``. Vault's connection names are one path
    segment (``database/config/:name``)."""
    if not isinstance(value, str) or not value:
        return "db_name %r is not a connection name" % (value,)
    if "/" in value or "\\" in value or "\0" in value or value in (".", "..") or len(value) > 255:
        return "db_name %r is not a connection name (one path segment of at most 255 characters)" % (value[:80],)
    return None


def restore(mod, client, mount, name, role, role_backup):
    """state=present: the connection (when gone), then the role, from their backups. Everything is read and checked
    (backups, password) before the first write."""
    import hvac  # pylint: disable=import-outside-toplevel

    params = mod.params
    saved = None
    if role is None:
        try:
            saved = read_backup(role_backup)
        except ValueError as exc:
            mod.fail("cannot restore role %s: %s" % (name, exc))
        if not saved.get("db_name") or not saved.get("creation_statements"):
            mod.fail("cannot restore role %s: the backup %s has no db_name or creation_statements" % (name, role_backup))
    connection_name = (role or saved)["db_name"]
    if connection_name_problem(connection_name):
        mod.fail("cannot restore role %s: %s (from %s)" % (name, connection_name_problem(connection_name),
                                                           "Vault" if role else role_backup))
    connection = read_or_none(lambda: client.secrets.database.read_connection(connection_name, mount_point=mount))
    conn_backup_path = os.path.join(params["backup_dir"], mount, "connections", connection_name + ".json")
    conn_saved, password = None, None
    if connection is None:
        try:
            conn_saved = read_backup(conn_backup_path)
        except ValueError as exc:
            mod.fail("cannot restore connection %s of role %s: %s. Recreate it by hand (vault write %s/config/%s) or "
                     "restore its backup" % (connection_name, name, exc, mount, connection_name))
        if not conn_saved.get("plugin_name"):
            mod.fail("cannot restore connection %s: the backup %s has no plugin_name" % (connection_name, conn_backup_path))
        try:
            password = read_password(params["connection_password_file"], params["connection_password_env"])
            mod.module.no_log_values.add(password)  # masked wherever Ansible would print it
        except ValueError as exc:
            problem = ("connection %s is gone and must be recreated with its administrator's password (%s): %s"
                       % (connection_name, (conn_saved.get("connection_details") or {}).get("username", "?"), exc))
            if not mod.check_mode:
                mod.fail(problem)
            mod.module.warn(problem + " (check mode goes on: the real run needs it)")
    else:
        drift = connection_drift(backup_or_empty(conn_backup_path), connection)
        if drift:
            mod.module.warn("connection %s exists and differs from its backup in %s: it is left as it is"
                            % (connection_name, ", ".join(drift)))

    operations = []
    steps = []
    if conn_saved is not None:
        arguments = connection_arguments(conn_saved)
        steps.append(("POST %s/config/%s (from its backup; Vault verifies the login)" % (mount, connection_name),
                      lambda: client.secrets.database.configure(name=connection_name, mount_point=mount,
                                                                password=password, **arguments)))
    if saved is not None:
        steps.append(("POST %s/roles/%s" % (mount, name), lambda: client.secrets.database.create_role(
            name, db_name=saved["db_name"], creation_statements=saved["creation_statements"],
            revocation_statements=saved.get("revocation_statements"),
            rollback_statements=saved.get("rollback_statements"), renew_statements=saved.get("renew_statements"),
            default_ttl=saved.get("default_ttl"), max_ttl=saved.get("max_ttl"), mount_point=mount)))
    for label, call in steps:
        operations.append(label)
        if not mod.check_mode:
            try:
                call()
            except hvac.exceptions.VaultError as exc:
                mod.fail("Vault refused %s; applied before it: %s" % (label, ", ".join(operations[:-1]) or "nothing"),
                         exc, operations=operations)
    restored_connection = connection_name if conn_saved is not None else None
    public_connection = dict((k, v) for k, v in (conn_saved or {}).items() if k not in ("name", "mount"))
    role_after = role or dict((k, v) for k, v in saved.items() if k in ROLE_FIELDS)
    mod.exit(bool(steps),
             before={"role": role, "connection": connection_name if connection is not None else None},
             after={"role": role_after, "connection": connection_name,
                    "connection_definition": public_connection or None},
             role=role_after, leases_revoked=0, connection_deleted=None, connection_restored=restored_connection,
             backup_files=[], operations=operations)


def main():
    spec = dict(
        mount=dict(type="str", default="database"),
        name=dict(type="str", required=True),
        state=dict(type="str", default="absent", choices=["present", "absent"]),
        backup_dir=dict(type="path", required=True),
        revoke_leases=dict(type="bool", default=True),
        delete_unused_connection=dict(type="bool", default=False),
        connection_password_file=dict(type="path", no_log=False),  # where it is, not what it is
        connection_password_env=dict(type="str", no_log=False),  # a variable's name, not its value
    )
    spec.update(vault.VAULT_ARGUMENT_SPEC)
    mod = MIModule(spec, azure=False, mutually_exclusive=[("connection_password_file", "connection_password_env")])
    params = mod.params
    mount, name = params["mount"].strip("/"), params["name"]
    problem = vault.name_problem("name", name) or vault.path_problem("mount", params["mount"]) or \
        backup_dir_problem(params["backup_dir"])
    if problem:
        mod.fail(problem)
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
            restore(mod, client, mount, name, role, role_backup)

        if role is None:
            mod.exit(False, before={}, after={}, role={}, leases_revoked=0, connection_deleted=None,
                     connection_restored=None, backup_files=[], operations=[])
        prefix = "%s/creds/%s" % (mount, name)
        leases = count_leases(client, prefix) if params["revoke_leases"] else 0
        connection_name = role.get("db_name")
        if connection_name_problem(connection_name):
            mod.fail("cannot decommission role %s: %s (as Vault returns it)" % (name, connection_name_problem(
                connection_name)))
        connection = read_or_none(lambda: client.secrets.database.read_connection(connection_name, mount_point=mount))
        delete_connection = None
        if params["delete_unused_connection"] and connection is not None and \
                not roles_using(client, mount, connection_name, name):
            delete_connection = connection_name
        if not mod.check_mode:
            try:
                write_backup(role_backup, dict(role, name=name, mount=mount))
                files.append(role_backup)
                if connection is not None:
                    conn_backup = os.path.join(params["backup_dir"], mount, "connections", connection_name + ".json")
                    write_backup(conn_backup, dict(((k, v) for k, v in connection.items()
                                                    if k not in CONNECTION_SECRET_KEYS), name=connection_name, mount=mount))
                    files.append(conn_backup)
            except OSError as exc:  # before any Vault write: the role stays as it is
                mod.fail("backup_dir: could not write the backup below %s (%s); nothing was changed in Vault"
                         % (params["backup_dir"], exc.strerror or exc), backup_files=files)
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
             role=role, leases_revoked=leases, connection_deleted=delete_connection, connection_restored=None,
             backup_files=files, operations=operations)


if __name__ == "__main__":
    main()
