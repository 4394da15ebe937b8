#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to csa_inabox.managed_identity
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: inventory_check
short_description: Check the applications' inventory variables before anything runs
version_added: 0.1.0
description:
  - Runs on the control node (an action plugin; nothing is sent to any host). Reads, for each application host of
    the play, only the variables that C(meta/inventory.schema.json) names (C(mi_identity), C(mi_workload),
    C(mi_databases), C(mi_postgres_servers), C(mi_sql_servers), C(mi_cosmos_accounts), C(mi_control_identity),
    the cloud settings, ...), and validates them with the C(jsonschema) library.
  - Then the rules a JSON Schema cannot state. A server or account an application names is described in
    C(mi_postgres_servers), C(mi_sql_servers) or C(mi_cosmos_accounts). An App Service or Container Apps application
    has one database. An AKS application has C(mi_k8s_login_check_image). C(mi_control_host), C(mi_db_admin_host)
    and a server's C(db_admin_host) are inventory hosts. The applications of one run agree on the cloud, subscription,
    tenant, control host and identity, and describe each server the same way (one run covers one environment).
  - Every problem is reported at once, each with the host, the JSON path of the field (for example
    C($.mi_databases[0].server)) and what is expected; the task then fails, before any write.
  - Values are never returned or printed, only names and paths.
  - Returns the Azure scopes the run will write and the actions it needs there, for
    M(csa_inabox.managed_identity.azure_access_check).
author: csa-inabox core team (@csa-inabox)
options:
  hosts:
    description: The application hosts to check. Default is every host of the play (C(ansible_play_hosts_all)).
    type: list
    elements: str
attributes:
  check_mode:
    description: Runs as usual, because it only reads the inventory.
    support: full
  diff_mode:
    description: Nothing changes, so there is nothing to diff.
    support: none
requirements:
  - jsonschema (on the control node)
notes:
  - Use it with C(run_once=true). It reads host variables through C(hostvars), so a variable that cannot be templated
    is reported as a problem of that host.
"""

EXAMPLES = r"""
- name: Check the inventory before anything is written
  csa_inabox.managed_identity.inventory_check:
  run_once: true
  register: mi_inventory
"""

RETURN = r"""
applications:
  description: How many application hosts were checked.
  returned: always
  type: int
problems:
  description: Every problem found, sorted per host; empty when the inventory is valid.
  returned: always
  type: list
  elements: dict
  contains:
    host:
      description: The application host.
      type: str
    path:
      description: JSONPath of the field within the host's variables.
      type: str
    message:
      description: What is wrong and what is expected.
      type: str
  sample: [{host: orders-api, path: "$.mi_databases[0].server", message: "server 'pg-typo' is not in mi_postgres_servers; expected one of ['pg-prod']"}]
servers:
  description: The servers and accounts the applications use, by type (C(postgres), C(sql), C(cosmos)), each once.
  returned: success
  type: dict
  sample: {postgres: [pg-prod], sql: [sql-prod], cosmos: [cosmos-prod]}
write_scopes:
  description:
    - The scopes the run writes, each once, and the actions it needs there.
    - The options of M(csa_inabox.managed_identity.azure_access_check)'s O(csa_inabox.managed_identity.azure_access_check#module:scopes).
  returned: success
  type: list
  elements: dict
  sample: [{resource_group: rg-data, provider_namespace: Microsoft.Sql, resource_type: servers, name: sql-prod,
            actions: [Microsoft.Sql/servers/administrators/write], purpose: database servers}]
"""
