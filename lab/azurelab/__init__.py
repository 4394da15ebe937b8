"""A local Azure for demos, tests and benchmarks: doubles that speak Azure's wire protocols on 127.0.0.1.

Components (each module's docstring says what it does not emulate):

* :mod:`azurelab.ca` - the lab CA and the certificates of every lab TLS endpoint.
* :mod:`azurelab.tokens` - the lab issuer: signs and verifies Entra-style JWTs.
* :mod:`azurelab.config` - ports, paths and the seeded topology (``lab/topology.yml``).
"""
