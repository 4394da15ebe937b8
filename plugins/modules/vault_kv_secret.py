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
  - With O(state=present), undeletes the current version (rollback).
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
    description:
      - V(absent) soft-deletes every version that can still be read (a deletion the mount's C(delete_version_after)
        only scheduled does not count).
      - V(present) undeletes the current version, the password the application last used (rollback). Older versions
        stay as they are.
      - Required, so that no task retires a password by omission.
    type: str
    choices: [present, absent]
    required: true
  missing_ok:
    description: Succeed without a change when there is no such secret (otherwise a wrong mount or path fails).
    type: bool
    default: false
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
    state: absent
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

import datetime

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import vault
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import clipped


def is_deleted(version, now):
    """Whether a KV v2 version is soft-deleted now. A ``deletion_time`` in the future is one scheduled by the
    mount's ``delete_version_after``: that version is still readable."""
    stamp = version.get("deletion_time") or ""
    if not stamp:
        return False
    try:  # RFC 3339 with nanoseconds: keep the seconds
        when = datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return True
    return when <= now


def main():
    spec = dict(vault.VAULT_ARGUMENT_SPEC)
    spec.update(mount=dict(type="str", default="secret"), path=dict(type="str", required=True),
                state=dict(type="str", required=True, choices=["present", "absent"]),
                missing_ok=dict(type="bool", default=False))
    mod = MIModule(spec, azure=False)
    params = mod.params
    path = params["path"].strip("/")
    target = clipped("%s/%s" % (params["mount"], path))
    for option in ("mount", "path"):
        problem = vault.path_problem(option, params[option])
        if problem:
            mod.fail(problem + " (path names a secret inside the mount, without the mount)")
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
        if params["missing_ok"]:
            mod.exit(False, versions=[], exists=False, operations=[])
        mod.fail("there is no KV v2 secret %s (or no KV v2 mount %s): check mount and path, or set missing_ok=true "
                 "when a secret that is already gone is fine" % (target, clipped(params["mount"])))
    except vault.VaultConfigError as exc:
        mod.fail(str(exc))
    except Exception as exc:  # hvac raises per status code, requests per transport
        mod.fail("could not read the metadata of %s" % target, exc)
    versions = dict((int(number), version) for number, version in (metadata.get("versions") or {}).items())
    now = datetime.datetime.now(datetime.timezone.utc)
    if params["state"] == "absent":
        chosen = sorted(n for n, v in versions.items() if not v.get("destroyed") and not is_deleted(v, now))
    else:  # the current version is the application's password: bring back that one only
        current = int(metadata.get("current_version") or max(versions or [0]))
        version = versions.get(current, {})
        if version.get("destroyed"):
            mod.fail("version %d of %s was destroyed: it cannot be brought back" % (current, target))
        chosen = [current] if version and is_deleted(version, now) else []
    verb = "delete" if params["state"] == "absent" else "undelete"
    operations = ["%s %s versions %s" % (verb.upper(), target, chosen)] if chosen else []
    if chosen and not mod.check_mode:
        try:
            if params["state"] == "absent":
                kv.delete_secret_versions(path=path, versions=chosen, mount_point=params["mount"])
            else:
                kv.undelete_secret_versions(path=path, versions=chosen, mount_point=params["mount"])
        except Exception as exc:  # hvac raises per status code
            mod.fail("could not %s versions %s of %s" % (verb, chosen, target), exc)
    was, now_state = ("live", "deleted") if params["state"] == "absent" else ("deleted", "live")
    before = dict(("v%d" % n, was) for n in chosen)
    after = dict(("v%d" % n, now_state) for n in chosen)
    mod.exit(bool(chosen), before=before, after=after, versions=chosen, exists=True, operations=operations)


if __name__ == "__main__":
    main()
