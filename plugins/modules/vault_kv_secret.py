#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_kv_secret
short_description: Retire (or bring back) a database password kept in a Vault / OpenBao KV version 2 secret
version_added: 0.1.0
description:
  - With O(state=absent), soft-deletes every live version of the secret at O(path) (KV v2 C(POST /delete/<path>) with
    the versions), so no application can read the password any more. Soft deletion is reversible. Nothing is
    destroyed and no copy of the secret is made, so the password exists in no new place.
  - With O(state=present), undeletes the versions an earlier O(state=absent) deleted (rollback).
  - Reads only the secret's metadata, never its data. The Vault token is read inside the module from C(VAULT_TOKEN) or
    O(token_file); it is never an option.
  - Destroy the versions (C(vault kv destroy)) yourself once the database user behind them has been dropped.
extends_documentation_fragment:
  - csa_inabox.managed_identity.vault
  - csa_inabox.managed_identity.attributes
author: csa-inabox core team (@csa-inabox)
options:
  mount:
    description: Mount point of the KV version 2 secrets engine.
    type: str
    default: secret
  path:
    description: Path of the secret in the mount, without the mount (C(apps/inventory-api/sql)).
    type: str
    required: true
  state:
    description: V(absent) soft-deletes its live versions; V(present) undeletes its soft-deleted ones.
    type: str
    choices: [present, absent]
    default: absent
seealso:
  - name: KV secrets engine version 2 API
    description: Delete, undelete and read metadata.
    link: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2
"""

EXAMPLES = r"""
- name: Nobody reads the inventory API's SQL password any more
  csa_inabox.managed_identity.vault_kv_secret:
    url: https://vault.example.com:8200
    path: apps/inventory-api/sql
  register: retired

- name: Roll back
  csa_inabox.managed_identity.vault_kv_secret:
    url: https://vault.example.com:8200
    path: apps/inventory-api/sql
    state: present
"""

RETURN = r"""
versions:
  description: The versions deleted or undeleted (or that would be, in check mode).
  returned: always
  type: list
  elements: int
exists:
  description: Whether the secret has metadata at all.
  returned: always
  type: bool
operations:
  description: The Vault API calls that change something, made or planned.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import vault
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule


def main():
    spec = dict(vault.VAULT_ARGUMENT_SPEC)
    spec.update(mount=dict(type="str", default="secret"), path=dict(type="str", required=True),
                state=dict(type="str", default="absent", choices=["present", "absent"]))
    mod = MIModule(spec, azure=False)
    params = mod.params
    path = params["path"].strip("/")
    if not path or ".." in path.split("/"):
        mod.fail("path %r must name a secret inside the mount (no leading mount, no '..')" % params["path"])
    try:
        import hvac.exceptions  # pylint: disable=import-outside-toplevel
    except ImportError:
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        mod.module.fail_json(msg=missing_required_lib("hvac"))
    kv = None
    try:
        kv = vault.client(params, mod.module.warn).secrets.kv.v2
        metadata = kv.read_secret_metadata(path=path, mount_point=params["mount"])["data"]
    except hvac.exceptions.InvalidPath:
        mod.exit(False, versions=[], exists=False, operations=[])
    except vault.VaultConfigError as exc:
        mod.fail(str(exc))
    except Exception as exc:  # hvac raises per status code, requests per transport
        mod.fail("could not read the metadata of %s/%s" % (params["mount"], path), exc)
    versions = metadata.get("versions") or {}
    deleting = params["state"] == "absent"
    chosen = sorted(int(number) for number, version in versions.items()
                    if not version.get("destroyed") and bool(version.get("deletion_time")) != deleting)
    verb = "delete" if deleting else "undelete"
    operations = ["%s %s/%s versions %s" % (verb.upper(), params["mount"], path, chosen)] if chosen else []
    if chosen and not mod.check_mode:
        try:
            if deleting:
                kv.delete_secret_versions(path=path, versions=chosen, mount_point=params["mount"])
            else:
                kv.undelete_secret_versions(path=path, versions=chosen, mount_point=params["mount"])
        except Exception as exc:  # hvac raises per status code
            mod.fail("could not %s versions %s of %s/%s" % (verb, chosen, params["mount"], path), exc)
    was, now = ("live", "deleted") if deleting else ("deleted", "live")
    before = dict(("v%d" % n, was) for n in chosen)
    after = dict(("v%d" % n, now) for n in chosen)
    mod.exit(bool(chosen), before=before, after=after, versions=chosen, exists=True, operations=operations)


if __name__ == "__main__":
    main()
