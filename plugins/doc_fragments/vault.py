# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How modules reach HashiCorp Vault / OpenBao; the token is read inside the module, never passed."""

    DOCUMENTATION = r"""
options:
  url:
    description: Vault / OpenBao address. Defaults to C(VAULT_ADDR).
    type: str
  token_file:
    description: File holding the token when C(VAULT_TOKEN) is not set.
    type: path
    default: ~/.vault-token
  ca_cert:
    description: CA bundle for Vault's TLS certificate. Defaults to C(VAULT_CACERT), then the system's.
    type: path
  namespace:
    description: Vault Enterprise namespace. Defaults to C(VAULT_NAMESPACE).
    type: str
requirements:
  - hvac >= 2.3
"""
