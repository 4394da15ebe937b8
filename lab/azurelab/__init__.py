"""A local Azure for demos, tests and benchmarks: doubles that speak Azure's wire protocols on 127.0.0.1.

Components (each module's docstring says what it does not emulate):

* :mod:`azurelab.ca` - the lab CA and the certificates of every lab TLS endpoint.
* :mod:`azurelab.tokens` - the lab issuer: signs and verifies Entra-style JWTs.
* :mod:`azurelab.config` - ports, paths and the seeded topology (``lab/topology.yml``).
* :mod:`azurelab.entra`, :mod:`azurelab.identity_endpoint`, :mod:`azurelab.arm` - Entra ID, the managed identity
  endpoints and Azure Resource Manager, served by one process (:mod:`azurelab.server`).
* :mod:`azurelab.postgres`, :mod:`azurelab.pgfront` - the real PostgreSQL 15 and its token-checking TLS front.
* :mod:`azurelab.openbao` - the real OpenBao with the "before" state; :mod:`azurelab.demo_app` - the demo app.
* :mod:`azurelab.tds`, :mod:`azurelab.sqlserver`, :mod:`azurelab.sqlcatalog`, :mod:`azurelab.odbc` - the Azure
  SQL double (TDS); :mod:`azurelab.azuresql` - the topology's SQL servers as the lab runs them, and their seed.
* :mod:`azurelab.labctl` - ``python -m azurelab up|down|reset|status|env``; :mod:`azurelab.probe` - evidence.
"""
