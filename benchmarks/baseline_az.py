"""Issue 7's baseline (a): the tutorial's per-application sequence run with azure-cli, psql and pyodbc on a lab fleet.

:func:`run` does what an operator following the tutorial (/work/shared/seed/000_c4600e33cc2e06e4.txt) does for every
application of a fleet, one command at a time, and measures it like ``benchmarks/fleet.py`` measures migrate.yml:

* azure-cli (``requirements-az.txt``) in a venv of its own, ``benchmarks/.venv-az``, made once and reused;
* the lab registered as a custom cloud in an ``AZURE_CONFIG_DIR`` below ``work`` (the CLI reads the ARM double's
  ``/metadata/endpoints``), and ``az login --identity`` as the control identity ``mi-operator`` through the lab's App
  Service style identity endpoint of ``vm-control``;
* ``tutorial.sh`` with two tab-separated files written from the fleet's inventory: the servers (SQL
  Entra admin and Entra-only, PostgreSQL Entra and its admin and passwords off, Cosmos DB local auth off, AKS OIDC
  issuer and workload identity, once each) and the applications (identity, database user or role assignment,
  attachment to its VM / App Service app, federated credential and Kubernetes objects for AKS). Its database steps
  run with psql (the token from ``az account get-access-token --resource-type oss-rdbms`` in ``PGPASSWORD``) and
  ``tutorial_sql.py`` (pyodbc); kubectl gets its tokens from az (``aks_token.sh``).

Where the tutorial is wrong (/work/shared/AZURE_FACTS.md) the script does what a careful operator would, so that the
end state compares with migrate.yml's; each place is commented there. Not done, as the tutorial does not do them:
verifying each application's login from its workload, the failover partner's and the read replica's settings, Vault
decommissioning, backups, reports.

After the run the end state is checked in the lab (ARM state, the PostgreSQL and Azure SQL catalogs, the Kubernetes
objects): :func:`run` raises :class:`BaselineFailed` when the baseline did not do its job.

    .venv/bin/python benchmarks/baseline_az.py 10 [--keep DIR]    # a fresh fleet of 10 on a lab of its own

``make bench`` runs it on each fleet with ``benchmarks/fleet.py --baseline-az`` (into results.json).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import pathlib
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "lab")]

AZ_VENV = HERE / ".venv-az"
REQUIREMENTS = HERE / "requirements-az.txt"
ADMIN = {"name": "mi-operator", "resource_group": "rg-lab-ops", "workload": "vm-control"}
COSMOS_ROLES = {"Data Reader": "00000000-0000-0000-0000-000000000001",
                "Data Contributor": "00000000-0000-0000-0000-000000000002"}


class BaselineFailed(RuntimeError):
    """The tutorial script failed, or the lab does not show the migrated end state afterwards."""


def az_venv() -> pathlib.Path:
    """``benchmarks/.venv-az/bin``, with requirements-az.txt installed (once: a stamp records what was installed)."""
    stamp, wanted = AZ_VENV / ".installed", REQUIREMENTS.read_text()
    if not (stamp.exists() and stamp.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(AZ_VENV)], check=True, timeout=300)
        subprocess.run([str(AZ_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(REQUIREMENTS)], check=True, timeout=1800)
        stamp.write_text(wanted)
    return AZ_VENV / "bin"


def _row(*fields) -> str:
    return "\t".join(str(field) if field not in (None, "") else "-" for field in fields) + "\n"


def write_plan(lab, topology_file: pathlib.Path, work: pathlib.Path) -> list[dict]:
    """``work/servers.tsv``, ``work/apps.tsv`` and the PostgreSQL grant files (``work/pg/<app>.sql``) for tutorial.sh,
    from the fleet's inventory (next to ``topology_file``; ``inventories/lab`` for the default lab). Returns the
    applications as planned (``app``, ``identity``, ``workload``, ``database``: the inventory's host entries, for
    :func:`verify`)."""
    inventory = topology_file.parent / "inventory"
    if not inventory.is_dir():
        inventory = REPO / "inventories" / "lab"
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["children"]["applications"]["hosts"]
    group_vars = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())
    endpoints = json.loads((lab.state / "endpoints.json").read_text())
    sql_ports = {name: endpoint["port"] for name, endpoint in endpoints["sql_servers"].items()}
    (work / "pg").mkdir(parents=True, exist_ok=True)
    servers: dict[tuple[str, str], str] = {}
    apps, plan = [], []
    for app, host in hosts.items():
        identity, workload, database = host["mi_identity"], host["mi_workload"], host["mi_databases"][0]
        kind = database["type"]
        access = scope = ""
        if kind == "sql":
            server, database_name = database["server"], database["database"]
            server_rg = group_vars["mi_sql_servers"][server]["resource_group"]
            servers[("sql", server)] = _row("sql", server, server_rg, "localhost", sql_ports[server], "")
            access = ",".join(database["roles"])
        elif kind == "postgres":
            server, database_name = database["server"], database["database"]
            settings = group_vars["mi_postgres_servers"][server]
            server_rg = settings["resource_group"]
            servers[("postgres", server)] = _row("postgres", server, server_rg, "localhost", lab.base + 4,
                                                 settings["owner_roles"][0])
            access = work / "pg" / f"{app}.sql"
            access.write_text(pg_grants(identity["name"], database_name, database["grants"],
                                        database.get("default_privileges", [])))
        else:
            server, database_name = database["account"], database["database"]
            server_rg = group_vars["mi_cosmos_accounts"][server]["resource_group"]
            servers[("cosmos", server)] = _row("cosmos", server, server_rg, "", "", "")
            access, scope = COSMOS_ROLES[database["role"]], database["scope"]
        if workload["type"] == "aks":
            where, where_rg = workload["cluster"], workload["resource_group"]
            servers[("aks", where)] = _row("aks", where, where_rg, "", "", "")
        else:
            where, where_rg = workload["name"], workload["resource_group"]
        apps.append(_row(app, identity["name"], identity["resource_group"], workload["type"], where, where_rg, kind,
                         server, server_rg, database_name, access, scope, workload.get("namespace"),
                         workload.get("service_account"), workload.get("deployment")))
        plan.append({"app": app, "identity": identity, "workload": workload, "database": database})
    # Servers in the tutorial's order: Part 1 (SQL), 2 (PostgreSQL), 3 (Cosmos DB), 4 (AKS).
    order = ("sql", "postgres", "cosmos", "aks")
    (work / "servers.tsv").write_text("".join(servers[key] for key in sorted(servers, key=lambda k: order.index(k[0]))))
    (work / "apps.tsv").write_text("".join(apps))
    return plan


def pg_grants(role: str, database: str, grants: list[dict], default_privileges: list[dict]) -> str:
    """The inventory's grants and default privileges of one application (``mi_databases[].grants`` /
    ``default_privileges``, what migrate.yml grants) as SQL for ``role``, one statement a line: the tutorial's GRANTs
    and ALTER DEFAULT PRIVILEGES, with the application's own objects and privileges."""
    lines = []
    for grant in grants:
        privileges, kind = ", ".join(grant["privileges"]), grant["object_type"]
        if kind == "database":
            target = f'DATABASE "{database}"'
        elif kind == "schema":
            target = f'SCHEMA "{grant["schema"]}"'
        elif grant.get("objects"):
            target = f"{kind.upper()} " + ", ".join(f'"{grant["schema"]}"."{name}"' for name in grant["objects"])
        else:
            target = f'ALL {kind.upper()}S IN SCHEMA "{grant["schema"]}"'
        lines.append(f'GRANT {privileges} ON {target} TO "{role}";')
    for grant in default_privileges:
        lines.append(f'ALTER DEFAULT PRIVILEGES FOR ROLE "{grant["for_role"]}" IN SCHEMA "{grant["schema"]}" GRANT '
                     f'{", ".join(grant["privileges"])} ON {grant["object_type"].upper()}S TO "{role}";')
    return "\n".join(lines) + "\n"


def environment(lab, az_bin: pathlib.Path, work: pathlib.Path) -> dict:
    """The operator's shell: the lab's control node environment, azure-cli on PATH with its own config folder, the
    control identity's App Service style endpoint for ``az login --identity``, and what tutorial.sh reads."""
    secrets = json.loads((lab.state / "secrets.json").read_text())
    env = dict(lab.env)
    env.pop("AZURE_POD_IDENTITY_AUTHORITY_HOST", None)  # one managed identity source: IDENTITY_ENDPOINT
    env.update(
        PATH=f"{az_bin}:{env['PATH']}", AZURE_CONFIG_DIR=str(work / "azure"), AZURE_CORE_COLLECT_TELEMETRY="false",
        AZURE_CORE_SURVEY_MESSAGE="false", AZURE_CORE_NO_COLOR="true", AZURE_CORE_INSTANCE_DISCOVERY="false",
        AZURE_CORE_ONLY_SHOW_ERRORS="true",
        IDENTITY_ENDPOINT=f"http://127.0.0.1:{lab.base + 3}/vms/{ADMIN['workload']}/msi/token",
        IDENTITY_HEADER=secrets["identity_headers"][ADMIN["workload"]],
        KUBECONFIG=str(work / "kubeconfig"), BENCH_LOG=str(work / "commands.tsv"), PYTHON=sys.executable,
        TUTORIAL_SQL=str(HERE / "tutorial_sql.py"), ADMIN_NAME=ADMIN["name"], ADMIN_RG=ADMIN["resource_group"])
    return env


def timed(command: list[str], env: dict, log, what: str) -> None:
    """Run one set-up az command, logged to BENCH_LOG as tutorial.sh logs its own."""
    started = time.monotonic()
    status = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300, check=False)
    with open(env["BENCH_LOG"], "a", encoding="utf-8") as bench_log:
        bench_log.write(f"az\t{what}\t{time.monotonic() - started:.3f}\t0\n")
    if status.returncode:
        raise BaselineFailed(f"{' '.join(command[:4])} failed ({status.returncode}); see {log.name}")


def tokens_issued(lab) -> int:
    """How many Entra access tokens the lab has issued (``<state>/issued.jsonl``)."""
    return sum('"kind": "entra-token"' in line for line in (lab.state / "issued.jsonl").read_text().splitlines())


def run(lab, topology: pathlib.Path, work: pathlib.Path) -> dict:
    """The tutorial baseline on the running ``lab`` of fleet ``topology``, in folder ``work``.

    Returns ``{"status", "wall_s", "cpu_s", "arm", "tokens", "commands", "db_statements", "per_command"}``: the
    script's exit status, its wall time and the CPU time of every process under it (s), the ARM double's counters
    (reset at the start), the Entra tokens issued, az invocations, SQL statements sent by psql and pyodbc, and per az
    command name ``{"count", "median_s", "total_s"}``. Set-up (the venv) is not measured; the cloud registration and
    the login are. Raises :class:`BaselineFailed` when the script fails or the end state is not migrated.
    """
    az_bin = az_venv()
    work.mkdir(parents=True, exist_ok=True)
    plan = write_plan(lab, topology, work)
    env = environment(lab, az_bin, work)
    az = str(az_bin / "az")
    pathlib.Path(env["BENCH_LOG"]).write_text("")
    log_path = work / "tutorial.log"
    lab.lab_api("POST", "counters/reset")
    tokens_before = tokens_issued(lab)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        timed([az, "cloud", "register", "--name", "Lab", "--endpoint-resource-manager",
               f"https://127.0.0.1:{lab.base + 2}/"], env, log, "cloud register")
        timed([az, "cloud", "set", "--name", "Lab"], env, log, "cloud set")
        timed([az, "login", "--identity", "--output", "none"], env, log, "login")
        status = subprocess.run(["bash", str(HERE / "tutorial.sh"), str(work / "servers.tsv"), str(work / "apps.tsv")],
                                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=6 * 3600,
                                check=False).returncode
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    arm = lab.arm_counters()
    tokens = tokens_issued(lab) - tokens_before
    output = log_path.read_text()
    lab.assert_no_secret_in(output)
    if status:
        raise BaselineFailed(f"tutorial.sh exited with {status}:\n{output[-3000:]}")
    commands = [line.split("\t") for line in pathlib.Path(env["BENCH_LOG"]).read_text().splitlines()]
    verify(lab, plan)
    return {"status": status, "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
            "arm": arm, "tokens": tokens, "commands": sum(tool == "az" for tool, *_rest in commands),
            "db_statements": sum(int(count) for *_rest, count in commands), "per_command": per_command(commands)}


def per_command(commands: list[list[str]]) -> dict:
    """Per tool and command name: how many runs, the median and total seconds."""
    seconds = collections.defaultdict(list)
    for tool, what, elapsed, _statements in commands:
        seconds[f"{tool} {what}"].append(float(elapsed))
    return {name: {"count": len(times), "median_s": round(statistics.median(times), 3),
                   "total_s": round(sum(times), 1)} for name, times in sorted(seconds.items())}


# --- the end state -------------------------------------------------------------------------------------------------

def verify(lab, plan: list[dict]) -> None:
    """Check in the lab that every planned application was migrated by the tutorial's steps: its identity exists and
    is attached to its VM or App Service app (or federated with its AKS service account, which carries its client
    id); its PostgreSQL principal exists with its grants, its Azure SQL user (SID = client id) has its roles, or its
    Cosmos DB role assignment is there; and the servers are Entra-only. Raises :class:`BaselineFailed` listing what
    is missing."""
    state = lab.lab_api("GET", "state")["resources"]
    by_type = collections.defaultdict(dict)
    for item in state:
        by_type[item["type"]][item["name"].lower()] = item
    children = collections.defaultdict(list)  # parent id -> its federated credentials or role assignments
    for item in state:
        parent, _slash, _name = item["id"].lower().rpartition("/")
        children[parent.rpartition("/")[0]].append(item)
    identities = by_type["Microsoft.ManagedIdentity/userAssignedIdentities"]
    problems = []
    for entry in plan:
        app, name, workload, database = entry["app"], entry["identity"]["name"], entry["workload"], entry["database"]
        identity = identities.get(name.lower())
        if identity is None:
            problems.append(f"{app}: identity {name} missing")
            continue
        client_id, principal_id = identity["properties"]["clientId"], identity["properties"]["principalId"]
        problems += [f"{app}: {problem}" for problem in
                     _workload_problems(lab, by_type, children, workload, identity) + _database_problems(
                         lab, by_type, children, database, name, client_id, principal_id)]
    servers = {(db["type"], db.get("server") or db.get("account")) for db in (e["database"] for e in plan)}
    for kind, server in sorted(servers):
        if kind == "sql":
            admins = by_type["Microsoft.Sql/servers"][server.lower()]["properties"].get("administrators") or {}
            if not admins.get("azureADOnlyAuthentication"):
                problems.append(f"{server}: not Entra-only")
        elif kind == "postgres":
            auth = by_type["Microsoft.DBforPostgreSQL/flexibleServers"][server.lower()]["properties"]["authConfig"]
            if (auth.get("activeDirectoryAuth"), auth.get("passwordAuth")) != ("Enabled", "Disabled"):
                problems.append(f"{server}: authConfig {auth}")
        elif not by_type["Microsoft.DocumentDB/databaseAccounts"][server.lower()]["properties"].get("disableLocalAuth"):
            problems.append(f"{server}: keys still on")
    if problems:
        raise BaselineFailed("the tutorial baseline left the fleet unmigrated:\n" + "\n".join(problems))


def _workload_problems(lab, by_type, children, workload: dict, identity: dict) -> list[str]:
    if workload["type"] in ("vm", "app_service"):
        kind = "Microsoft.Compute/virtualMachines" if workload["type"] == "vm" else "Microsoft.Web/sites"
        attached = (by_type[kind][workload["name"].lower()].get("identity") or {}).get("userAssignedIdentities") or {}
        if identity["id"].lower() not in {key.lower() for key in attached}:
            return [f"identity not attached to {workload['name']}"]
        return []
    subject = f"system:serviceaccount:{workload['namespace']}:{workload['service_account']}"
    credentials = children[identity["id"].lower()]
    problems = [] if any(c["properties"].get("subject") == subject for c in credentials) else [
        f"no federated credential for {subject}"]
    import kubernetes
    from labrunner import kube_client

    with kube_client(lab) as client:
        account = kubernetes.client.CoreV1Api(client).read_namespaced_service_account(
            workload["service_account"], workload["namespace"])
    annotations = account.metadata.annotations or {}
    if annotations.get("azure.workload.identity/client-id") != identity["properties"]["clientId"]:
        problems.append(f"service account {workload['service_account']} lacks the client-id annotation")
    return problems


def _database_problems(lab, by_type, children, database: dict, role: str, client_id: str,
                       principal_id: str) -> list[str]:
    if database["type"] == "postgres":
        return _pg_problems(lab, database, role)
    if database["type"] == "sql":
        roles = _sql_roles(lab, database["server"], database["database"], role, client_id)
        missing = sorted(set(database["roles"]) - set(roles or []))
        return [f"SQL user {role} missing" if roles is None else f"SQL roles missing: {missing}"] if roles is None \
            or missing else []
    account = by_type["Microsoft.DocumentDB/databaseAccounts"][database["account"].lower()]
    wanted_role = COSMOS_ROLES[database["role"]]
    found = [a for a in children[account["id"].lower()] if a["properties"].get("principalId") == principal_id
             and a["properties"]["roleDefinitionId"].endswith(wanted_role)
             and a["properties"]["scope"].lower().endswith(database["scope"].lower())]
    return [] if found else [f"no Cosmos DB {database['role']} assignment at {database['scope']}"]


def _pg_problems(lab, database: dict, role: str) -> list[str]:
    from labrunner import pg_privileges_missing, superuser

    with superuser(lab, database["database"]) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            return [f"PostgreSQL role {role} missing"]
        missing = pg_privileges_missing(conn, database["database"], role, database["grants"])
    return [f"PostgreSQL {problem}" for problem in missing]


def _sql_roles(lab, server: str, database: str, user: str, client_id: str) -> list[str] | None:
    """The roles of ``user`` (whose SID must be ``client_id``'s) in the Azure SQL double's catalog; None: no such
    user."""
    import uuid

    from azurelab import sqlcatalog

    uri = (lab.state / "sql" / f"{server}.sqlite").as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        conn.create_collation(sqlcatalog.COLLATION, sqlcatalog.collate)
        found = conn.execute("SELECT p.database_id, p.principal_id FROM principals p JOIN databases d USING "
                             "(database_id) WHERE d.name = ? AND p.name = ? AND p.sid = ?",
                             (database, user, uuid.UUID(client_id).bytes_le)).fetchone()
        if found is None:
            return None
        return sorted(row[0] for row in conn.execute(
            "SELECT r.name FROM role_members m JOIN principals r ON r.database_id = m.database_id AND "
            "r.principal_id = m.role_principal_id WHERE m.database_id = ? AND m.member_principal_id = ?", found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The tutorial baseline (az, psql, pyodbc) on a fresh lab fleet of N.")
    parser.add_argument("apps", type=int, help="fleet size (at least 10)")
    parser.add_argument("--keep", type=pathlib.Path, help="keep the work folder (logs, plan) here")
    args = parser.parse_args(argv)
    from fleet import generate  # benchmarks/fleet.py, beside this file
    from labrunner import running_lab

    with tempfile.TemporaryDirectory(prefix="mi-baseline-az-") as scratch:
        work = args.keep or pathlib.Path(scratch)
        topology = generate(args.apps, work / "fleet")
        lab_run = running_lab(topology)
        lab = next(lab_run)
        try:
            result = run(lab, topology, work / "baseline")
        finally:
            next(lab_run, None)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
