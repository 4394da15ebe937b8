"""One process for the lab's Azure control plane: Entra (HTTPS), the VMs' managed identity endpoint (HTTP),
ARM (HTTPS), when the PostgreSQL part of the lab is present and enabled the PostgreSQL front (TLS), one Azure SQL
double (TDS) per server of ``topology.yml``'s ``sql_servers`` for which ``ports.sql`` has a port (see
:mod:`azurelab.azuresql`), the Cosmos DB data plane of the first of its ``cosmos_accounts`` (HTTPS, see
:mod:`azurelab.cosmos`; its Node.js backend is this process's child and stops with it), the Kubernetes API server
of the first of its ``aks_clusters`` (HTTPS, see :mod:`azurelab.kube`; Job pods are this process's children, killed
when it stops), and one front per App Service app and Container App for which ``ports.web`` has a port (HTTPS, see
:mod:`azurelab.webfront`).

Run by ``python -m azurelab up`` as ``python -m azurelab.server`` (detached; logs to ``paths().logs/server.log``;
SIGTERM stops it cleanly). Tests can also build a :class:`Lab` in-process and pass their own ``hooks``.

``LAB_COMPONENTS=azure`` leaves PostgreSQL, OpenBao, Azure SQL, Cosmos DB, Kubernetes and the web workloads out (no
front, no TDS servers, no Cosmos data plane, no Kubernetes API server, no web fronts; PostgreSQL Entra admin changes
are only logged). ``LAB_COMPONENTS`` may also list the parts to run beside the control plane, comma-separated:
``azure,cosmos`` runs the control plane and Cosmos DB only, ``azure,kube`` the control plane and the Kubernetes API
server.

Not emulated: anything about process supervision (a crashed server stays down until ``up`` runs again).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import signal
import ssl
import threading
from typing import Callable

from . import ca, config
from .arm import ArmApp, ArmHandler, ArmState, PostgresHooks
from .directory import AUTOMATION_SP, Directory
from .entra import Entra, EntraHandler
from .identity_endpoint import IdentityEndpoint, IdentityHandler
from .tokens import Issuer
from .web import LabHTTPServer

log = logging.getLogger("azurelab")


ALL_COMPONENTS = frozenset({"azure", "postgres", "openbao", "sql", "cosmos", "kube", "web"})


def components() -> set[str]:
    """Which optional parts run: ``LAB_COMPONENTS`` = ``all`` (default), ``azure`` (control plane only), or the
    control plane plus a comma-separated list (``azure,cosmos``); unknown names raise ``ValueError``."""
    wanted = {name.strip() for name in os.environ.get("LAB_COMPONENTS", "all").split(",") if name.strip()}
    if wanted == {"all"}:
        return set(ALL_COMPONENTS)
    if not wanted <= ALL_COMPONENTS:
        raise ValueError(f"LAB_COMPONENTS: unknown {', '.join(sorted(wanted - ALL_COMPONENTS))} (use all, or some of "
                         f"{', '.join(sorted(ALL_COMPONENTS))})")
    return wanted | {"azure"}


def optional_module(name: str):
    """``azurelab.<name>`` if that file exists and the component is enabled, else ``None``.

    The PostgreSQL and OpenBao parts of the lab are written in parallel with this one: this guard only covers
    their files not existing yet (an import error inside an existing file is raised, not hidden).
    """
    wanted = {"postgres": "postgres", "pgfront": "postgres", "openbao": "openbao", "azuresql": "sql",
              "cosmos": "cosmos", "kube": "kube", "webfront": "web"}[name]
    if wanted not in components() or importlib.util.find_spec(f"azurelab.{name}") is None:
        return None
    return importlib.import_module(f"azurelab.{name}")


class LoggedHooks:
    """Entra admin changes when no PostgreSQL runs in this lab (``LAB_COMPONENTS=azure``): only logged."""

    def create_entra_admin(self, server_name: str, principal_name: str, object_id: str, principal_type: str) -> None:
        log.info("no PostgreSQL in this lab: create_entra_admin(%s, %s, %s, %s)", server_name, principal_name,
                 object_id, principal_type)

    def drop_entra_admin(self, server_name: str, object_id: str) -> None:
        log.info("no PostgreSQL in this lab: drop_entra_admin(%s, %s)", server_name, object_id)


def aks_cluster_state(arm: ArmState, name: str) -> tuple[Callable[[], str | None], Callable[[], bool]]:
    """``(issuer_url, workload_identity_enabled)`` callables over the ARM double's *current* managed cluster ``name``:
    its ``oidcIssuerProfile.issuerURL`` (``None`` while the issuer is off) and
    ``securityProfile.workloadIdentity.enabled`` (AKS installs the workload identity webhook only then).

    An ARM double without ``managedClusters`` (no ``ArmState.aks_cluster``) gives ``None`` and ``True``: the
    Kubernetes double then signs with :data:`azurelab.aks.DEFAULT_ISSUER` and always runs the webhook.
    """
    accessor = getattr(arm, "aks_cluster", None)
    if accessor is None:
        return (lambda: None), (lambda: True)

    def properties() -> dict:
        return (accessor(name) or {}).get("properties") or {}
    return ((lambda: (properties().get("oidcIssuerProfile") or {}).get("issuerURL")),
            (lambda: bool(((properties().get("securityProfile") or {}).get("workloadIdentity") or {}).get("enabled"))))


def read_secrets(paths: config.LabPaths) -> dict:
    """The lab secrets file (``{"sp-lab-automation": {"client_id", "client_secret"}, ...}``); ``{}`` if absent."""
    return json.loads(paths.secrets.read_text()) if paths.secrets.exists() else {}


class Lab:
    """The control plane's servers, built around one directory, one issuer and one ARM state."""

    def __init__(self, paths: config.LabPaths, topology: dict, ports: config.Ports,
                 hooks: PostgresHooks | None = None):
        host = f"https://{config.HOST}:{ports.entra}"
        self.directory = Directory(topology)
        self.issuer = Issuer(paths, topology["tenant_id"], host)
        backend = None
        if hooks is None:
            postgres = optional_module("postgres")
            backend = postgres.PostgresLab(paths, topology) if postgres else None
            hooks = backend or LoggedHooks()
        self.hooks = hooks
        self.arm = ArmState(paths, topology, self.directory, hooks, cosmos_port=ports.cosmos, arm_port=ports.arm,
                            kube_port=ports.kube)
        # ARM answers to its own URL too: azure.azcollection asks for `{resource_manager}/.default` (see arm.py).
        arm_audiences = [topology["audiences"]["resource_manager"], f"https://{config.HOST}:{ports.arm}/"]
        audiences = list(topology["audiences"].values()) + arm_audiences[1:]
        automation = read_secrets(paths).get(AUTOMATION_SP, {})
        secrets = {automation["client_id"]: automation["client_secret"]} if automation else {}
        tls = ca.server_context(paths)
        self.servers = {
            "entra": LabHTTPServer(ports.entra, EntraHandler,
                                   Entra(self.issuer, self.directory, host, audiences, secrets,
                                         federated_credentials=self.arm.federated_credentials,
                                         issuer_tls=ssl.create_default_context(cafile=str(paths.ca_bundle))), tls),
            "arm": LabHTTPServer(ports.arm, ArmHandler,
                                 ArmApp(self.arm, self.issuer, arm_audiences,
                                        f"{host}/{topology['tenant_id']}"), tls),
            "identity": LabHTTPServer(ports.identity, IdentityHandler,
                                      IdentityEndpoint(self.issuer, self.directory, audiences,
                                                       self.arm.workload_user_assigned_identities,
                                                       read_secrets(paths).get("identity_headers", {}))),
        }
        self.front = None
        pgfront = optional_module("pgfront")
        if pgfront and backend is not None:
            server_name = topology["postgres_servers"][0]["name"]
            self.front = pgfront.PgFront(paths, self.issuer, ports.postgres, server_name,
                                         lambda: self.arm.postgres_auth_config(server_name), backend,
                                         lambda role: self.arm.grant_faults(server_name, role),
                                         lambda what: self.arm.count_database("postgres", what))
        azuresql = optional_module("azuresql")
        self.sql = azuresql.build(paths, topology, self.issuer, ports.sql_servers(topology), self.arm,
                                  self.directory, read_secrets(paths)) if azuresql else {}
        cosmos = optional_module("cosmos")
        self.cosmos = cosmos.CosmosFront(paths, topology, ports.cosmos, self.issuer, self.arm.cosmos_account) \
            if cosmos and topology.get("cosmos_accounts") and ports.cosmos else None
        kube = optional_module("kube")
        self.kube = None
        if kube and topology.get("aks_clusters") and ports.kube:
            cluster = topology["aks_clusters"][0]
            self.kube = kube.KubeCluster(paths, topology, cluster, self.issuer, host,
                                         *aks_cluster_state(self.arm, cluster["name"]))
            self.servers["kube"] = LabHTTPServer(ports.kube, kube.KubeHandler, self.kube, tls)
        webfront = optional_module("webfront")
        self.web = webfront.build(paths, topology, ports, self.arm, read_secrets(paths).get("identity_headers", {})) \
            if webfront else {}

    def start(self) -> None:
        for name, server in self.servers.items():
            server.start(name)
        if self.front is not None:
            threading.Thread(target=self.front.serve_forever, name="pgfront", daemon=True).start()
        for name, sql in self.sql.items():
            threading.Thread(target=sql.serve_forever, name=f"sql {name}", daemon=True).start()
        log.info("control plane serving on %s", {n: s.server_address[1] for n, s in self.servers.items()})
        if self.sql:
            log.info("Azure SQL serving on %s", {n: s.port for n, s in self.sql.items()})
        if self.cosmos is not None:
            self.cosmos.start()
        for name, server in self.web.items():
            server.start(f"web {name}")
        if self.web:
            log.info("web workloads serving on %s", {n: s.server_address[1] for n, s in self.web.items()})

    def stop(self) -> None:
        if self.kube is not None:
            self.kube.shutdown()
        for server in self.web.values():
            server.shutdown()
            server.server_close()
        if self.cosmos is not None:
            self.cosmos.stop()
        if self.front is not None:
            self.front.shutdown()
        for sql in self.sql.values():
            sql.shutdown()
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


def main() -> None:
    paths = config.paths()
    paths.logs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=paths.logs / "server.log", level=logging.INFO,
                        format="%(asctime)s %(threadName)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lab = Lab(paths, config.topology(), config.ports())
    lab.start()
    stop.wait()
    log.info("stopping")
    lab.stop()


if __name__ == "__main__":
    main()
