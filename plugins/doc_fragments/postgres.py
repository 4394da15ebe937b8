# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How modules reach an Azure Database for PostgreSQL flexible server: TLS, and a token as the password."""

    DOCUMENTATION = r"""
options:
  host:
    description: Server host name (C(<server>.postgres.database.azure.com)) or address.
    type: str
    required: true
  port:
    description: Server port.
    type: int
    default: 5432
  ssl_mode:
    description: libpq C(sslmode). Azure requires TLS; C(verify-full) also checks the server's name.
    type: str
    default: verify-full
    choices: [require, verify-ca, verify-full]
  ssl_root_cert:
    description: CA bundle to verify the server with. Defaults to libpq's (C(PGSSLROOTCERT), then C(~/.postgresql/root.crt)).
    type: path
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 15
requirements:
  - psycopg >= 3.2
"""

    # For the modules that connect as the server's Microsoft Entra administrator.
    ADMIN = r"""
options:
  admin_user:
    description:
      - The role to connect as, a Microsoft Entra administrator of the server (its C(principal_name)).
      - The password is an access token for the PostgreSQL audience, acquired inside the module with the
        credential of O(auth_source); no password is ever passed.
    type: str
    required: true
"""
