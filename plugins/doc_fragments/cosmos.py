# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The Cosmos DB account a module works on (through Azure Resource Manager)."""

    DOCUMENTATION = r"""
options:
  account_name:
    description: Name of the Cosmos DB account.
    type: str
    required: true
  resource_group:
    description: Resource group of the account.
    type: str
    required: true
requirements:
  - azure-mgmt-cosmosdb >= 10.0
"""
