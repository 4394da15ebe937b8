#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_kv_cosmos_key
short_description: Put a Cosmos DB account's current key into a Vault KV v2 secret, without the key passing through Ansible
version_added: 0.1.0
description:
  - Reads the account's keys from Azure Resource Manager (C(listKeys)) and writes the chosen one to the field O(field)
    of the KV v2 secret O(path), keeping the secret's other fields. The key never becomes a module option, a result or
    a variable. Rollback uses it to give applications that go back to their key the key that works now (the one they
    had in Vault was regenerated at decommission).
  - Changes nothing when the secret's current version already holds that key (compared in constant time).
author: csa-inabox core team (@csa-inabox)
options:
  key_kind:
    description: Which key to store. The read-only keys only read data.
    type: str
    choices: [primary, secondary, primaryReadonly, secondaryReadonly]
    default: primary
  mount:
    description: Mount point of the KV v2 secrets engine.
    type: str
    default: secret
  path:
    description: Path of the secret inside the mount (the tutorial's application reads C(cosmos/primary-key)).
    type: str
    required: true
  field:
    description: Field of the secret that holds the key (the tutorial's code reads C(key)).
    type: str
    default: key
extends_documentation_fragment:
  - csa_inabox.managed_identity.cosmos
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.vault
  - csa_inabox.managed_identity.attributes
"""

EXAMPLES = r"""
- name: Rollback - the application reads a working key from Vault again
  csa_inabox.managed_identity.vault_kv_cosmos_key:
    account_name: cosmos-prod
    resource_group: rg-mi-demo
    url: https://vault.example.com:8200
    path: cosmos/primary-key
"""

RETURN = r"""
secret:
  description: The secret written (or that would be), C(mount/path), and the field.
  returned: always
  type: str
  sample: secret/cosmos/primary-key#key
version:
  description: The secret's current version after the change (null in check mode when a version would be written).
  returned: always
  type: int
operations:
  description: What was written (or would be, in check mode); never a value.
  returned: always
  type: list
  elements: str
"""

import hmac

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import cosmos, vault
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import READ_ONLY_POST, as_dict
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control

FIELDS = {"primary": "primaryMasterKey", "secondary": "secondaryMasterKey",
          "primaryReadonly": "primaryReadonlyMasterKey", "secondaryReadonly": "secondaryReadonlyMasterKey"}


def read_key(mod):
    """The chosen key, from ARM; it stays in this process."""
    from azure.core.exceptions import ResourceNotFoundError  # pylint: disable=import-outside-toplevel

    rg, name = mod.params["resource_group"], mod.params["account_name"]
    try:
        keys = as_dict(mod.clients.cosmos.database_accounts.list_keys(rg, name, **READ_ONLY_POST))
    except ResourceNotFoundError as exc:
        mod.fail("Cosmos DB account %s was not found in resource group %s" % (name, rg), exc)
    except Exception as exc:
        mod.fail("could not list the keys of Cosmos DB account %s" % name, exc)
    value = keys.get(FIELDS[mod.params["key_kind"]])
    if not value:
        mod.fail("ARM listed no %s key for Cosmos DB account %s" % (mod.params["key_kind"], name))
    return value


def main():
    spec = dict(vault.VAULT_ARGUMENT_SPEC)
    spec.update(cosmos.ACCOUNT_ARGUMENT_SPEC)
    spec.update(key_kind=dict(type="str", default="primary", choices=list(FIELDS), no_log=False),
                mount=dict(type="str", default="secret"), path=dict(type="str", required=True),
                field=dict(type="str", default="key"))
    mod = MIModule(spec)
    params = mod.params
    path, field, mount = params["path"].strip("/"), params["field"], params["mount"].strip("/")
    for option, value in (("mount", params["mount"]), ("path", params["path"])):
        problem = vault.path_problem(option, value)
        if problem:
            mod.fail(problem + " (path names a secret inside the mount, without the mount)")
    if not field or len(field) > 256 or has_control(field):
        mod.fail("field must be 1 to 256 characters without control characters (the key the application reads)")
    problem = cosmos.account_problem(params)
    if problem:
        mod.fail(problem)
    target = "%s/%s#%s" % (mount, path, field)
    try:
        import hvac.exceptions  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("hvac"))
    try:
        client = vault.client(params, mod.module.warn)
        engine = vault.kv_version(client, mount)
    except vault.VaultConfigError as exc:
        mod.fail(str(exc))
    except Exception as exc:  # hvac raises per status code, requests per transport
        mod.fail("could not read the configuration of mount %s" % mount, exc)
    if engine != "2":
        mod.fail("mount %s is not a KV version 2 secrets engine (%s): nothing was written"
                 % (mount, "KV version %s" % engine if engine else "not KV"))
    kv = client.secrets.kv.v2

    key = read_key(mod)
    try:
        current = kv.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=False)["data"]
    except hvac.exceptions.InvalidPath:
        current = None
    except Exception as exc:  # hvac raises per status code, requests per transport
        mod.fail("could not read %s" % target, exc)
    data = dict((current or {}).get("data") or {})
    version = ((current or {}).get("metadata") or {}).get("version")
    if isinstance(data.get(field), str) and hmac.compare_digest(data[field].encode("utf-8"), key.encode("utf-8")):
        mod.exit(False, secret=target, version=version, operations=[])
    data[field] = key
    operations = ["WRITE %s (the %s key ARM lists for %s now)" % (target, params["key_kind"], params["account_name"])]
    if mod.check_mode:
        mod.exit(True, before={"secret": target, "version": version}, after={"secret": target, "version": None},
                 secret=target, version=None, operations=operations)
    try:
        written = kv.create_or_update_secret(path=path, secret=data, mount_point=mount)
    except Exception as exc:  # hvac raises per status code
        mod.fail("could not write %s" % target, exc)
    new_version = (written.get("data") or {}).get("version")
    mod.exit(True, before={"secret": target, "version": version}, after={"secret": target, "version": new_version},
             secret=target, version=new_version, operations=operations)


if __name__ == "__main__":
    main()
