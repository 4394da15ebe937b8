"""``python -m azurelab up|down|reset|status|env``: start, stop and describe the lab.

``up`` creates the CA and the lab secrets, starts PostgreSQL (``PostgresLab.start()`` + ``.setup()``), registers
the ODBC driver and seeds the Azure SQL catalogs (:func:`azurelab.azuresql.seed_users`), spawns the control-plane
server detached (:mod:`azurelab.server`, which also serves Azure SQL and the Cosmos DB data plane), waits until every
port answers, starts and seeds OpenBao (``OpenBaoLab.start()`` + ``.seed()``, with the SQL users' new passwords), then
writes ``endpoints.json`` and ``env.sh``. It is idempotent.
``down`` stops the server by its pid (which stops the Cosmos DB backend, its child), then OpenBao, then PostgreSQL.
``reset`` = ``down`` + delete the state folder + ``up``. ``status`` exits 0 only when every component is up. ``env``
prints ``env.sh`` (``eval "$(python -m azurelab env)"``). ``reset`` also wipes the Azure SQL catalogs
(``<state>/sql/``).

``LAB_COMPONENTS=azure`` runs the control plane only (``azure,cosmos``: and Cosmos DB; see
:func:`azurelab.server.components`); ``LAB_STATE_DIR`` / ``LAB_PORT_BASE`` move the lab.

Not emulated: nothing - but the lab is not a service manager: no restart on crash, no log rotation.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from . import ca, config, odbc
from .azuresql import new_password
from .directory import AUTOMATION_SP, automation_principal
from .identity_endpoint import identity_header_key
from .server import optional_module, read_secrets

START_TIMEOUT_S = 30.0  # a loaded 2-core CI machine starting several labs at once needs more than 10 s
# The identity endpoint's workload kinds -> where topology.yml lists them.
WORKLOAD_TOPOLOGY_KEYS = {"vms": "virtual_machines", "vmss": "vm_scale_sets", "sites": "web_apps",
                          "containerapps": "container_apps"}
STOP_TIMEOUT_S = 5.0


def _server_pid_file(paths: config.LabPaths) -> pathlib.Path:
    return paths.pids / "server.pid"


def _alive(pid: int) -> bool:
    """Running, and not a zombie: once ``up`` has exited nobody may reap the server quickly (PID 1 in a container
    often does not), and a zombie still answers ``kill(pid, 0)``."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def server_pid(paths: config.LabPaths) -> int | None:
    """The running control-plane server's pid, or ``None`` (also when the pid was reused by another program)."""
    try:
        pid = int(_server_pid_file(paths).read_text())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return pid if b"azurelab.server" in cmdline and _alive(pid) else None


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((config.HOST, port)) == 0


def ensure_secrets(paths: config.LabPaths, topology: dict) -> None:
    """Add the lab's missing secrets to ``paths().secrets`` (mode 0600), keeping the other components' entries.

    Written here: ``sp-lab-automation`` -> ``{"client_id", "client_secret"}`` (the Entra double's client-credentials
    principal; its secret exists nowhere else), ``identity_headers`` -> ``{workload: secret}``, the value App Service
    puts in ``IDENTITY_HEADER`` for the App Service style endpoint of each lab workload (keyed by
    ``identity_endpoint.identity_header_key``: a VM's name, ``vmss/<name>``, ``sites/<name>``,
    ``containerapps/<name>``), and ``sql_servers`` ->
    ``{server: {"administrator_login", "administrator_password"}}``, each Azure SQL server's SQL-authentication admin.
    """
    current = read_secrets(paths)
    workloads = [identity_header_key(kind, workload["name"]) for kind, key in WORKLOAD_TOPOLOGY_KEYS.items()
                 for workload in topology.get(key, [])]
    sql = {server["name"]: server["administrator_login"] for server in topology.get("sql_servers", [])}
    if (AUTOMATION_SP in current and set(current.get("identity_headers", {})) >= set(workloads)
            and set(current.get("sql_servers", {})) >= set(sql)):
        return
    current.setdefault(AUTOMATION_SP, {"client_id": automation_principal(topology["tenant_id"])["client_id"],
                                       "client_secret": secrets.token_urlsafe(30)})
    headers = current.setdefault("identity_headers", {})
    for workload in workloads:
        headers.setdefault(workload, secrets.token_urlsafe(24))
    admins = current.setdefault("sql_servers", {})
    for server, login in sql.items():
        admins.setdefault(server, {"administrator_login": login, "administrator_password": new_password()})
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.secrets.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(current, handle, indent=1)
    os.replace(tmp, paths.secrets)


def _service_ports(ports: config.Ports) -> dict[str, int]:
    wanted = {"entra": ports.entra, "arm": ports.arm, "identity": ports.identity}
    if optional_module("pgfront") and optional_module("postgres"):
        wanted["postgres"] = ports.postgres
    if optional_module("azuresql"):
        wanted.update(ports.sql_servers(config.topology()))
    if cosmos_accounts(config.topology()):
        wanted["cosmos"] = ports.cosmos
    if kube_clusters(config.topology(), ports):
        wanted["kube"] = ports.kube
    wanted.update(web_workloads(ports, config.topology()))
    return wanted


def kube_clusters(topology: dict, ports: config.Ports) -> list[str]:
    """The AKS clusters whose Kubernetes API server this lab serves: the first of ``aks_clusters`` when the component
    runs and has a port (see :mod:`azurelab.kube`), else none."""
    clusters = topology.get("aks_clusters") or []
    return [clusters[0]["name"]] if clusters and ports.kube and optional_module("kube") else []


def web_workloads(ports: config.Ports, topology: dict) -> dict[str, int]:
    """App Service app or Container App -> the port of its lab front (:mod:`azurelab.webfront`), when the ``web``
    component runs; else ``{}``."""
    return ports.web_workloads(topology) if optional_module("webfront") else {}


def cosmos_accounts(topology: dict) -> list[str]:
    """The Cosmos DB accounts whose data plane this lab serves: the first of ``cosmos_accounts`` when the component
    runs (one front, one account; see :mod:`azurelab.cosmos`), else none."""
    accounts = topology.get("cosmos_accounts") or []
    return [accounts[0]["name"]] if accounts and optional_module("cosmos") else []


def endpoints(paths: config.LabPaths, ports: config.Ports, topology: dict) -> dict:
    """What clients need to reach the lab (no secret values: those stay in ``paths().secrets``)."""
    identity = f"http://{config.HOST}:{ports.identity}"
    return {
        "tenant_id": topology["tenant_id"],
        "subscription_id": topology["subscription_id"],
        "ca_bundle": str(paths.ca_bundle),
        "secrets_file": str(paths.secrets),
        "ports": {"entra": ports.entra, "arm": ports.arm, "identity": ports.identity, "postgres": ports.postgres,
                  "openbao": ports.openbao, "sql": ports.sql_servers(topology), "cosmos": ports.cosmos,
                  "kube": ports.kube},
        "authority_host": f"https://{config.HOST}:{ports.entra}",
        "resource_manager": f"https://{config.HOST}:{ports.arm}/",
        "audiences": topology["audiences"],
        "automation_client_id": automation_principal(topology["tenant_id"])["client_id"],
        "identity_endpoints": {vm["name"]: f"{identity}/vms/{vm['name']}" for vm in topology["virtual_machines"]},
        "postgres": {"host": config.HOST, "port": ports.postgres},
        # The ODBC driver checks the certificate's DNS name, not its IP address: Azure SQL clients use localhost.
        "sql_servers": {name: {"host": "localhost", "port": port}
                        for name, port in ports.sql_servers(topology).items()},
        # Cosmos DB account -> its documentEndpoint (localhost: azure-cosmos asks for a token for scheme://host).
        "cosmos": {name: f"https://localhost:{ports.cosmos}/" for name in cosmos_accounts(topology)},
        # App Service app / Container App -> the URL its lab front serves the app on (/health/identity, /).
        "web_workloads": {name: f"https://localhost:{port}/" for name, port in web_workloads(ports, topology).items()},
        "vault_addr": f"http://{config.HOST}:{ports.openbao}",
        # AKS cluster -> its API server (localhost: the name in the lab certificate that kubeconfigs use).
        "kube_servers": {name: f"https://localhost:{ports.kube}" for name in kube_clusters(topology, ports)},
    }


def sql_port_variable(server: str) -> str:
    """The env.sh variable holding an Azure SQL server's port: ``sql-lab-2`` -> ``LAB_SQL_PORT_SQL_LAB_2``."""
    return "LAB_SQL_PORT_" + "".join(c if c.isalnum() else "_" for c in server).upper()


def cosmos_endpoint_variable(account: str) -> str:
    """The env.sh variable holding a Cosmos DB account's endpoint URL: ``cosmos-lab`` ->
    ``LAB_COSMOS_ENDPOINT_COSMOS_LAB``."""
    return "LAB_COSMOS_ENDPOINT_" + "".join(c if c.isalnum() else "_" for c in account).upper()


def web_url_variable(workload: str) -> str:
    """The env.sh variable holding a web workload's URL: ``app-storefront`` -> ``LAB_WEB_URL_APP_STOREFRONT``."""
    return "LAB_WEB_URL_" + "".join(c if c.isalnum() else "_" for c in workload).upper()


def env_script(paths: config.LabPaths, ports: config.Ports, topology: dict) -> str:
    """Bash exports for a shell on the control node (``vm-control``); no secret values.

    With Azure SQL in the lab it adds ``ODBCSYSINI`` / ``ODBCINSTINI`` (pyodbc finds "ODBC Driver 18 for SQL
    Server" there; ``SSL_CERT_FILE`` makes the driver trust the lab CA) and one ``LAB_SQL_PORT_<SERVER>`` per server;
    with Cosmos DB, ``LAB_COSMOS_ENDPOINT_<ACCOUNT>`` (``https://localhost:<port>/``) per served account; with the
    Kubernetes API server, ``LAB_KUBE_SERVER`` (``https://localhost:<port>``); with web workloads,
    ``LAB_WEB_URL_<WORKLOAD>`` (``https://localhost:<port>/``) per App Service app and Container App.
    """
    info = endpoints(paths, ports, topology)
    exports = {
        "REQUESTS_CA_BUNDLE": info["ca_bundle"],
        "SSL_CERT_FILE": info["ca_bundle"],
        "PGSSLROOTCERT": info["ca_bundle"],
        "AZURE_POD_IDENTITY_AUTHORITY_HOST": info["identity_endpoints"]["vm-control"],
        "AZURE_AUTHORITY_HOST": info["authority_host"],
        "AZURE_TENANT_ID": info["tenant_id"],
        "AZURE_SUBSCRIPTION_ID": info["subscription_id"],
        "VAULT_ADDR": info["vault_addr"],
        # So that inventories/lab (and a new shell) follow this lab, not the default one.
        "LAB_STATE_DIR": str(paths.root),
        "LAB_PORT_BASE": str(ports.entra - 1),
    }
    if os.environ.get("LAB_TOPOLOGY"):
        exports["LAB_TOPOLOGY"] = str(config.topology_file())
    if info["sql_servers"]:
        exports.update(odbc.environment(paths))
        exports.update({sql_port_variable(name): str(server["port"]) for name, server in info["sql_servers"].items()})
    exports.update({cosmos_endpoint_variable(name): endpoint for name, endpoint in info["cosmos"].items()})
    if info["kube_servers"]:
        exports["LAB_KUBE_SERVER"] = next(iter(info["kube_servers"].values()))
    exports.update({web_url_variable(name): url for name, url in info["web_workloads"].items()})
    lines = ["# Written by `python -m azurelab up`: the lab seen from its control node (vm-control)."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
    return "\n".join(lines) + "\n"


def up() -> int:
    paths, ports, topology = config.paths(), config.ports(), config.topology()
    if server_pid(paths):
        print(f"lab already running (server pid {server_pid(paths)}, state {paths.root})")
        return 0
    busy = [f"{name} {port}" for name, port in {**_service_ports(ports), "openbao": ports.openbao}.items()
            if port_open(port)]
    if busy:
        print(f"lab ports already in use by something else ({', '.join(busy)}): another lab? Stop it, or start this "
              f"one elsewhere with LAB_PORT_BASE=<base> (ports base+1 .. base+{ports.last - ports.entra + 1})",
              file=sys.stderr)
        return 1
    started = time.monotonic()
    ca.ensure(paths)
    ensure_secrets(paths, topology)
    paths.pids.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    postgres = optional_module("postgres")
    if postgres:
        backend = postgres.PostgresLab(paths, topology)
        backend.start()
        backend.setup()
    azuresql = optional_module("azuresql")
    sql_passwords = None
    if azuresql:
        odbc.register_driver(paths)
        sql_passwords = azuresql.seed_users(paths, topology)
    env = dict(os.environ, PYTHONPATH=str(config.REPO_ROOT / "lab"))
    with open(paths.logs / "server.out", "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "azurelab.server"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _server_pid_file(paths).write_text(str(process.pid))
    waiting = _service_ports(ports)
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting and time.monotonic() < deadline and process.poll() is None:
        waiting = {name: port for name, port in waiting.items() if not port_open(port)}
        time.sleep(0.05 if waiting else 0)
    if waiting:
        print(f"lab server did not start ({', '.join(waiting)} not answering); see {paths.logs}", file=sys.stderr)
        down()
        return 1
    openbao = optional_module("openbao")
    if openbao:
        vault = openbao.OpenBaoLab(paths, topology, ports)
        vault.start()
        vault.seed(sql_passwords)
    paths.endpoints.write_text(json.dumps(endpoints(paths, ports, topology), indent=1) + "\n")
    paths.env_file.write_text(env_script(paths, ports, topology))
    print(f"lab up in {time.monotonic() - started:.1f} s (state {paths.root}); "
          f"source {paths.env_file} for its environment")
    return 0


def down() -> int:
    paths, ports, topology = config.paths(), config.ports(), config.topology()
    pid = server_pid(paths)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
            _reap(pid)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    _server_pid_file(paths).unlink(missing_ok=True)
    openbao = optional_module("openbao")
    if openbao:
        openbao.OpenBaoLab(paths, topology, ports).stop()
    postgres = optional_module("postgres")
    if postgres:
        postgres.PostgresLab(paths, topology).stop()
    print("lab down")
    return 0


def _reap(pid: int) -> None:
    """Collect the exit status when this process spawned the server (an ``up`` that failed), so no zombie lingers."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def reset() -> int:
    down()
    shutil.rmtree(config.paths().root, ignore_errors=True)
    return up()


def status() -> int:
    paths, ports = config.paths(), config.ports()
    pid = server_pid(paths)
    wanted = _service_ports(ports)
    if optional_module("openbao"):
        wanted["openbao"] = ports.openbao
    states = {name: port_open(port) for name, port in wanted.items()}
    print(f"state {paths.root}; server pid {pid or '-'}")
    for name, ok in states.items():
        print(f"  {name:<9} {'up' if ok else 'down':<4} 127.0.0.1:{wanted[name]}")
    return 0 if pid and all(states.values()) else 3


def env() -> int:
    paths = config.paths()
    if not paths.env_file.exists():
        print("the lab has not been started here: run `python -m azurelab up`", file=sys.stderr)
        return 1
    sys.stdout.write(paths.env_file.read_text())
    return 0


COMMANDS = {"up": up, "down": down, "reset": reset, "status": status, "env": env}


def main(argv: list[str]) -> int:
    if argv[:1] == ["fleet"]:
        from . import fleet  # writes files only: no lab needed

        return fleet.main(argv[1:])
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m azurelab {{{'|'.join(COMMANDS)}|fleet --apps N --out DIR}}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]]()
