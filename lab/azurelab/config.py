"""Where the lab lives: its state folder, its ports and the topology it seeds.

Everything the lab writes goes below one ignored folder, ``.lab/`` at the repository root (``LAB_STATE_DIR``
overrides it). Every server binds 127.0.0.1 only. Ports start at ``LAB_PORT_BASE`` (default 47000): base+1 .. base+6
for the control plane, PostgreSQL and OpenBao, then one per Azure SQL server (base+7, base+8, ... in the order of
``topology.yml``'s ``sql_servers``), then the Cosmos DB data plane, then the AKS cluster's Kubernetes API server,
then one per App Service app and Container App (``web_apps`` then ``container_apps``, in topology order).
``LAB_TOPOLOGY`` names another topology file than ``lab/topology.yml`` (:func:`topology_file`).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TOPOLOGY_FILE = REPO_ROOT / "lab" / "topology.yml"
HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Ports:
    """TCP ports of the lab's endpoints, all on 127.0.0.1."""

    entra: int  # HTTPS: Entra ID token endpoint, OIDC discovery, JWKS
    arm: int  # HTTPS: Azure Resource Manager
    identity: int  # HTTP: managed identity endpoints, one path prefix per lab VM
    postgres: int  # TLS PostgreSQL front (token or password login), relays to the real server
    openbao: int  # HTTP: OpenBao dev server (the "before" state); openbao + 1 is its cluster port
    sql: tuple[int, ...] = ()  # TDS: one Azure SQL server each, in topology order; empty runs none
    cosmos: int = 0  # HTTPS: the Cosmos DB data-plane front (azurelab.cosmos); accounts' documentEndpoint
    kube: int = 0  # HTTPS: the first AKS cluster's Kubernetes API server (azurelab.kube); 0 runs none
    web: tuple[int, ...] = ()  # HTTPS: one per App Service app, then per Container App, in topology order

    SQL_OFFSET = 7  # base + 6 is OpenBao's cluster port

    @classmethod
    def from_base(cls, base: int, sql_servers: int = 0, web_workloads: int = 0) -> "Ports":
        cosmos = base + cls.SQL_OFFSET + sql_servers
        return cls(entra=base + 1, arm=base + 2, identity=base + 3, postgres=base + 4, openbao=base + 5,
                   sql=tuple(base + cls.SQL_OFFSET + i for i in range(sql_servers)), cosmos=cosmos, kube=cosmos + 1,
                   web=tuple(cosmos + 2 + i for i in range(web_workloads)))

    @property
    def last(self) -> int:
        """The highest port of this lab (the span a lab needs is ``last - entra + 1``)."""
        return max((self.openbao + 1, self.cosmos, self.kube, *self.sql, *self.web))

    def sql_servers(self, topology: dict) -> dict[str, int]:
        """Azure SQL server name -> port, for the servers these ports include (``{}`` when ``sql`` is empty)."""
        return dict(zip((server["name"] for server in topology.get("sql_servers", [])), self.sql))

    def web_workloads(self, topology: dict) -> dict[str, int]:
        """App Service app or Container App name -> the port its lab front serves the app on."""
        return dict(zip((app["name"] for app in web_workloads(topology)), self.web))


@dataclasses.dataclass(frozen=True)
class LabPaths:
    """Files below the state folder."""

    root: pathlib.Path

    @property
    def ca_cert(self) -> pathlib.Path:
        return self.root / "tls" / "ca.pem"

    @property
    def ca_key(self) -> pathlib.Path:
        return self.root / "tls" / "ca-key.pem"

    @property
    def server_cert(self) -> pathlib.Path:
        return self.root / "tls" / "server.pem"

    @property
    def server_key(self) -> pathlib.Path:
        return self.root / "tls" / "server-key.pem"

    @property
    def ca_bundle(self) -> pathlib.Path:
        """System CAs plus the lab CA: what REQUESTS_CA_BUNDLE / SSL_CERT_FILE point at."""
        return self.root / "tls" / "ca-bundle.pem"

    @property
    def signing_key(self) -> pathlib.Path:
        return self.root / "tls" / "issuer-key.pem"

    @property
    def arm_state(self) -> pathlib.Path:
        return self.root / "arm.json"

    @property
    def secrets(self) -> pathlib.Path:
        """Lab-only secrets (server admin password, OpenBao root token); mode 0600."""
        return self.root / "secrets.json"

    @property
    def env_file(self) -> pathlib.Path:
        return self.root / "env.sh"

    @property
    def endpoints(self) -> pathlib.Path:
        return self.root / "endpoints.json"

    @property
    def pids(self) -> pathlib.Path:
        return self.root / "pids"

    @property
    def logs(self) -> pathlib.Path:
        return self.root / "logs"

    @property
    def pg_data(self) -> pathlib.Path:
        return self.root / "pg" / "data"

    @property
    def pg_socket_dir(self) -> pathlib.Path:
        return self.root / "pg" / "run"

    def sql_catalog(self, server: str) -> pathlib.Path:
        """The SQLite file holding an Azure SQL server's users and role memberships (kept across restarts)."""
        return self.root / "sql" / f"{server}.sqlite"

    @property
    def apps(self) -> pathlib.Path:
        """Demo applications' configuration, one JSON file per application."""
        return self.root / "apps"


def state_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LAB_STATE_DIR", REPO_ROOT / ".lab")).resolve()


def paths() -> LabPaths:
    return LabPaths(state_dir())


def ports() -> Ports:
    topo = topology()
    return Ports.from_base(int(os.environ.get("LAB_PORT_BASE", "47000")), len(topo.get("sql_servers", [])),
                           len(web_workloads(topo)))


def web_workloads(topo: dict) -> list[dict]:
    """``topology["web_apps"]`` then ``topology["container_apps"]``: the workloads the lab serves over HTTPS."""
    return list(topo.get("web_apps", [])) + list(topo.get("container_apps", []))


def topology_file() -> pathlib.Path:
    """The topology this lab seeds: ``LAB_TOPOLOGY`` when set (e.g. a fleet written by ``python -m azurelab fleet``),
    else ``lab/topology.yml``."""
    return pathlib.Path(os.environ.get("LAB_TOPOLOGY") or TOPOLOGY_FILE).resolve()


def topology() -> dict:
    """The seeded lab (:func:`topology_file`): tenant, subscription, resource groups, VMs, identities, servers,
    directory, apps."""
    with open(topology_file(), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def database_type(app: dict) -> str:
    """``postgres`` (no ``database`` key: dynamic credentials from OpenBao's database secrets engine), ``sql`` or
    ``cosmos`` (``database.type``), for an application of ``topology["applications"]``."""
    return (app.get("database") or {}).get("type", "postgres")


WORKLOAD_TYPES = ("vm", "app_service", "container_app", "aks")


def workload(app: dict) -> dict:
    """Where an application of ``topology["applications"]`` runs: ``{"type": "vm" | "app_service" |
    "container_app" | "aks", "name": <VM, App Service app, Container App or AKS cluster>, ...}`` (an AKS workload also
    names its ``namespace``, ``service_account`` and ``deployment``).

    ``vm: <name>`` is the older spelling of ``workload: {type: vm, name: <name>}`` and still accepted. Raises
    ``ValueError`` for an application with neither, or with a type not in :data:`WORKLOAD_TYPES`.
    """
    if "workload" in app:
        found = dict(app["workload"])
    elif "vm" in app:
        found = {"type": "vm", "name": app["vm"]}
    else:
        raise ValueError(f"application {app.get('name')!r}: no workload (give `workload: {{type, name}}` or `vm`)")
    if found.get("type") not in WORKLOAD_TYPES or not found.get("name"):
        raise ValueError(f"application {app.get('name')!r}: workload type must be one of {', '.join(WORKLOAD_TYPES)}, "
                         f"with a name")
    return found


def application_on(topo: dict, workload_type: str, name: str) -> dict | None:
    """The application of ``topo["applications"]`` that runs on that workload (the first, if several), or None."""
    return next((app for app in topo.get("applications", [])
                 if workload(app)["type"] == workload_type and workload(app)["name"] == name), None)


def is_sql_application(app: dict) -> bool:
    """An application of ``topology["applications"]`` that uses Azure SQL (``database.type: sql``)."""
    return database_type(app) == "sql"


def is_cosmos_application(app: dict) -> bool:
    """An application of ``topology["applications"]`` that uses Cosmos DB (``database.type: cosmos``)."""
    return database_type(app) == "cosmos"
