# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How modules reach an Azure SQL database: TLS, and an Entra access token as connection attribute 1256."""

    DOCUMENTATION = r"""
options:
  host:
    description:
      - Logical server host name (C(<server>.database.windows.net)) or address.
      - The server's certificate is checked against this name; with Microsoft ODBC Driver 18 the name must be a DNS
        name of the certificate (an IP address is not matched).
    type: str
    required: true
  port:
    description: Server port.
    type: int
    default: 1433
  driver:
    description:
      - Client library. V(pyodbc) needs unixODBC and Microsoft ODBC Driver 18 for SQL Server (O(odbc_driver)) on the
        host; V(mssql-python) needs nothing but its wheel. V(auto) takes pyodbc when the ODBC driver is registered,
        else mssql-python, and fails saying what to install when neither is usable.
    type: str
    default: auto
    choices: [auto, pyodbc, mssql-python]
  odbc_driver:
    description: Name of the ODBC driver for V(pyodbc), as registered in C(odbcinst.ini).
    type: str
    default: ODBC Driver 18 for SQL Server
  encrypt:
    description: C(Encrypt) of the connection. V(strict) is TDS 8.0 (TLS before any TDS traffic).
    type: str
    default: "yes"
    choices: ["yes", strict]
  trust_server_certificate:
    description:
      - Accept the server's certificate without checking it. Only for diagnosis; never needed for Azure SQL, whose
        certificates chain to public roots. The drivers read extra trusted roots from C(SSL_CERT_FILE).
    type: bool
    default: false
  connect_timeout:
    description: Seconds to wait for the connection (the driver's login timeout).
    type: int
    default: 30
requirements:
  - pyodbc and Microsoft ODBC Driver 18 for SQL Server, or mssql-python
notes:
  - The access token is acquired inside the module for the SQL audience (C(https://database.windows.net/.default) in
    the public cloud) and passed to the driver as connection attribute 1256; no password is ever passed.
"""
