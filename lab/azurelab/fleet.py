"""``python -m azurelab fleet --apps N --out DIR``: a lab fleet of N applications, for tests and benchmarks.

It writes, below ``DIR``:

* ``topology.yml``: ``lab/topology.yml`` extended (its tenant, control identity, workloads, servers, Cosmos DB
  account, AKS cluster and ten applications are kept as they are) with ``N - 10`` generated applications and, with
  ``--sql-servers`` above 2, more Azure SQL servers (``sql-fleet-3``, ... each with database ``fleetdb``). Start a lab
  on it with ``LAB_TOPOLOGY=DIR/topology.yml python -m azurelab up``;
* ``inventory/``: ``inventories/lab`` extended the same way (``hosts.yml``, ``group_vars/all.yml``), its ports
  following the topology's (more SQL servers move the Cosmos DB, Kubernetes and web ports up);
* ``k8s/<app>/``: the "before" manifests of each generated AKS application (namespace, service account, Deployment
  with the Vault Agent injector's annotations, as ``lab/k8s/webapp``), which the lab's one AKS cluster holds.

Generated applications take turns over the four parts of the tutorial, in this order: PostgreSQL on a VM (dynamic
users from OpenBao; read-only on ``public.products``, read-write on ``orders``, or one table of ``billing``), Azure
SQL on a VM (a contained SQL user with its password in KV; the servers in turn), Cosmos DB on a VM (the account key in
KV; a Data Reader on the container or a Data Contributor on the database), and AKS (a namespace and service account
of their own on ``aks-prod``, Azure SQL). The App Service part is ``storefront`` (PostgreSQL), kept from the default
lab. Names are ``fleet-<i>-<kind>`` (identity ``mi-fleet-<i>-<kind>``, VM ``vm-fleet-<i>``), so a test can pick one
by kind. The output depends on its arguments only.
"""
from __future__ import annotations

import argparse
import copy
import pathlib
import sys

import yaml

from . import config

DEFAULT_INVENTORY = config.REPO_ROOT / "inventories" / "lab"
KINDS = ("pg", "sql", "cosmos", "aks")
MIN_SQL_SERVERS = 2  # the default lab's sql-lab and sql-lab-2
ROLE_STATEMENT = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"

# PostgreSQL least-privilege profiles: (Vault creation statements after CREATE ROLE, inventory grants, query).
PG_PROFILES = (
    ([
        'GRANT CONNECT ON DATABASE appdb TO "{{name}}";',
        'GRANT USAGE ON SCHEMA public TO "{{name}}";',
        'GRANT SELECT ON public.products TO "{{name}}";',
    ], [
        {"object_type": "database", "privileges": ["CONNECT"]},
        {"object_type": "schema", "schema": "public", "privileges": ["USAGE"]},
        {"object_type": "table", "schema": "public", "objects": ["products"], "privileges": ["SELECT"]},
    ], "SELECT count(*) FROM public.products"),
    ([
        'GRANT CONNECT ON DATABASE appdb TO "{{name}}";',
        'GRANT USAGE ON SCHEMA orders TO "{{name}}";',
        'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orders TO "{{name}}";',
        'GRANT USAGE ON ALL SEQUENCES IN SCHEMA orders TO "{{name}}";',
    ], [
        {"object_type": "database", "privileges": ["CONNECT"]},
        {"object_type": "schema", "schema": "orders", "privileges": ["USAGE"]},
        {"object_type": "table", "schema": "orders", "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"]},
        {"object_type": "sequence", "schema": "orders", "privileges": ["USAGE", "SELECT"]},
    ], "SELECT count(*) FROM orders.orders"),
    ([
        'GRANT CONNECT ON DATABASE appdb TO "{{name}}";',
        'GRANT USAGE ON SCHEMA billing TO "{{name}}";',
        'GRANT SELECT, INSERT ON billing.invoices TO "{{name}}";',
        'GRANT USAGE, SELECT ON SEQUENCE billing.invoice_number TO "{{name}}";',
    ], [
        {"object_type": "database", "privileges": ["CONNECT"]},
        {"object_type": "schema", "schema": "billing", "privileges": ["USAGE"]},
        {"object_type": "table", "schema": "billing", "objects": ["invoices"], "privileges": ["SELECT", "INSERT"]},
        {"object_type": "sequence", "schema": "billing", "objects": ["invoice_number"], "privileges": ["USAGE", "SELECT"]},
    ], "SELECT last_value FROM billing.invoice_number"),
)
SQL_ROLES = (["db_datareader"], ["db_datareader", "db_datawriter"])
COSMOS_ROLES = (("Data Reader", "/dbs/appdb/colls/items", "books"), ("Data Contributor", "/dbs/appdb", "electronics"))


def _load(path: pathlib.Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _port(offset: int) -> str:
    return f"{{{{ mi_lab_port_base | int + {offset} }}}}"


def sql_servers(count: int) -> list[dict]:
    """The default lab's two Azure SQL servers, then ``sql-fleet-3`` ... up to ``count`` (database ``fleetdb``)."""
    servers = copy.deepcopy(_load(config.TOPOLOGY_FILE)["sql_servers"])
    for index in range(len(servers) + 1, count + 1):
        servers.append({"name": f"sql-fleet-{index}", "resource_group": "rg-lab-data", "administrator_login": "sqladmin",
                        "databases": {"fleetdb": {}}})
    return servers


def _manifests(name: str, namespace: str, account: str, deployment: str, kv_path: str, user: str) -> dict[str, dict]:
    """The AKS application's "before" objects: no workload identity, its SQL password injected by the Vault Agent."""
    template = f'{{{{- with secret "secret/data/{kv_path}" -}}}}{{{{ .Data.data.password }}}}{{{{- end -}}}}'
    return {
        "namespace.yaml": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        "serviceaccount.yaml": {"apiVersion": "v1", "kind": "ServiceAccount",
                                "metadata": {"name": account, "namespace": namespace}},
        "deployment.yaml": {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": deployment, "namespace": namespace, "labels": {"app": deployment}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": deployment}}, "template": {
                "metadata": {"labels": {"app": deployment}, "annotations": {
                    "vault.hashicorp.com/agent-inject": "true", "vault.hashicorp.com/role": name,
                    "vault.hashicorp.com/agent-inject-secret-db": f"secret/data/{kv_path}",
                    "vault.hashicorp.com/agent-inject-template-db": template}},
                "spec": {"serviceAccountName": account, "containers": [{
                    "name": deployment, "image": f"myregistry.azurecr.io/{deployment}:latest",
                    "env": [{"name": "DATABASE_HOST", "value": "sql-prod.database.windows.net"},
                            {"name": "DB_USER", "value": user},
                            {"name": "DB_PASSWORD_FILE", "value": "/vault/secrets/db"}]}]}}}},
    }


def generate(apps: int, out: pathlib.Path, sql_server_count: int = 3) -> dict:
    """Write the fleet below ``out`` (see the module docstring); returns ``{"topology", "inventory", "applications":
    {name: kind}}`` (paths as strings; kind ``pg``/``sql``/``cosmos``/``aks``, ``default`` for the lab's own ten).

    Raises ``ValueError`` for fewer applications than the default lab has, or fewer than two SQL servers.
    """
    topology = _load(config.TOPOLOGY_FILE)
    hosts = _load(DEFAULT_INVENTORY / "hosts.yml")
    group_vars = _load(DEFAULT_INVENTORY / "group_vars" / "all.yml")
    defaults = len(topology["applications"])
    if apps < defaults:
        raise ValueError(f"a fleet has at least the default lab's {defaults} applications, not {apps}")
    if sql_server_count < MIN_SQL_SERVERS:
        raise ValueError(f"a fleet has at least {MIN_SQL_SERVERS} Azure SQL servers, not {sql_server_count}")
    out.mkdir(parents=True, exist_ok=True)
    topology["sql_servers"] = servers = sql_servers(sql_server_count)
    databases = {server["name"]: next(iter(server["databases"])) for server in servers}
    ports = config.Ports.from_base(0, len(servers), len(config.web_workloads(topology)))
    inventory_hosts = hosts["all"]["children"]["applications"]["hosts"]
    kinds = {app["name"]: "default" for app in topology["applications"]}
    counters = dict.fromkeys(KINDS, 0)
    for index in range(1, apps - defaults + 1):
        kind = KINDS[(index - 1) % len(KINDS)]
        turn = counters[kind]
        counters[kind] += 1
        name, vm = f"fleet-{index:03d}-{kind}", f"vm-fleet-{index:03d}"
        kinds[name] = kind
        identity = {"name": f"mi-{name}", "resource_group": "rg-lab-apps"}
        host = {"mi_identity": identity, "mi_workload": {"type": "vm", "name": vm, "resource_group": "rg-lab-apps"}}
        app = {"name": name, "vm": vm}
        if kind == "pg":
            statements, grants, query = PG_PROFILES[turn % len(PG_PROFILES)]
            # Vault names a dynamic user v-<display>-<role, first 8 characters>-...: the role names differ there,
            # so that one application's evidence never sees another's sessions.
            vault_role = f"{kind}{index:03d}-fleet"
            app.update(vault_role=vault_role, creation_statements=[ROLE_STATEMENT, *statements], query=query)
            host.update(mi_vault_database_role=vault_role, mi_databases=[{
                "type": "postgres", "server": "pg-lab", "database": "appdb", "verify_query": query,
                "grants": copy.deepcopy(grants)}])
        elif kind in ("sql", "aks"):
            server = servers[turn % len(servers)]["name"]
            roles = SQL_ROLES[turn % len(SQL_ROLES)]
            kv_path, user = f"apps/{name}/sql", f"{name}-{'user' if kind == 'sql' else 'sql'}"
            app.update(vault_kv_path=kv_path, query="SELECT DB_NAME() AS database_name",
                       database={"type": "sql", "server": server, "name": databases[server], "user": user,
                                 "roles": list(roles)})
            host.update(mi_vault_kv_secret=kv_path, mi_databases=[{
                "type": "sql", "server": server, "database": databases[server], "roles": list(roles),
                "password_users": [user]}])
            if kind == "aks":
                namespace, account, deployment = f"fleet-{index:03d}", f"{name}-sa", name
                del app["vm"]
                app["workload"] = {"type": "aks", "name": "aks-prod", "namespace": namespace,
                                   "service_account": account, "deployment": deployment}
                host["mi_workload"] = {"type": "aks", "cluster": "aks-prod", "resource_group": "rg-aks",
                                       "namespace": namespace, "service_account": account, "deployment": deployment,
                                       "remove_env": ["DB_USER", "DB_PASSWORD_FILE"]}
                host["mi_switch_method"] = "kubernetes"
                folder = out / "k8s" / name
                folder.mkdir(parents=True, exist_ok=True)
                for filename, manifest in _manifests(name, namespace, account, deployment, kv_path, user).items():
                    (folder / filename).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
                    topology["aks_clusters"][0]["manifests"].append(str((folder / filename).resolve()))
        else:
            role, scope, category = COSMOS_ROLES[turn % len(COSMOS_ROLES)]
            query = "SELECT c.id, c.category FROM c WHERE c.category = @cat"
            app.update(vault_kv_path=f"apps/{name}/cosmos", query=query, query_category=category,
                       database={"type": "cosmos", "account": "cosmos-lab", "name": "appdb", "container": "items"})
            host.update(mi_vault_kv_secret=f"apps/{name}/cosmos", mi_databases=[{
                "type": "cosmos", "account": "cosmos-lab", "database": "appdb", "container": "items", "role": role,
                "scope": scope, "verify_query": query, "verify_parameters": [{"name": "@cat", "value": category}]}])
        if "vm" in app:
            topology["virtual_machines"].append({"name": vm, "resource_group": "rg-lab-apps"})
        topology["applications"].append(app)
        inventory_hosts[name] = host

    # Ports follow the topology: more SQL servers move the Cosmos DB front, the API server and the web fronts up.
    group_vars["mi_sql_servers"] = {server["name"]: {"resource_group": server["resource_group"], "host": "localhost",
                                                     "port": _port(ports.sql[i])} for i, server in enumerate(servers)}
    for account in group_vars["mi_cosmos_accounts"].values():
        account["endpoint"] = f"https://localhost:{_port(ports.cosmos)}/"
    web = ports.web_workloads(topology)
    for host in inventory_hosts.values():
        workload = host["mi_workload"]
        if workload["type"] in ("app_service", "container_app"):
            base = f"https://localhost:{_port(web[workload['name']])}/"
            workload.update(health_url=f"{base}health/identity", app_url=base)

    topology_file = out / "topology.yml"
    header = (f"# A lab fleet of {apps} applications, written by `python -m azurelab fleet --apps {apps} "
              f"--sql-servers {sql_server_count}`: lab/topology.yml extended (see azurelab/fleet.py).\n")
    topology_file.write_text(header + yaml.safe_dump(topology, sort_keys=False, width=120), encoding="utf-8")
    inventory = out / "inventory"
    (inventory / "group_vars").mkdir(parents=True, exist_ok=True)
    (inventory / "hosts.yml").write_text(
        f"# The lab fleet's {apps} applications (azurelab/fleet.py): inventories/lab extended.\n"
        + yaml.safe_dump(hosts, sort_keys=False, width=120), encoding="utf-8")
    (inventory / "group_vars" / "all.yml").write_text(
        "# inventories/lab/group_vars/all.yml with the fleet's servers and ports (azurelab/fleet.py).\n"
        + yaml.safe_dump(group_vars, sort_keys=False, width=120), encoding="utf-8")
    return {"topology": str(topology_file), "inventory": str(inventory), "applications": kinds}


def port_span(topology: dict) -> int:
    """How many ports above ``LAB_PORT_BASE`` a lab of this topology uses (base+1 .. base+span)."""
    return config.Ports.from_base(0, len(topology.get("sql_servers", [])), len(config.web_workloads(topology))).last


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m azurelab fleet",
                                     description="Write a lab topology and inventory for a fleet of N applications.")
    parser.add_argument("--apps", type=int, required=True, help="how many applications (at least 10)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder to write into")
    parser.add_argument("--sql-servers", type=int, default=3, help="Azure SQL servers (at least 2; default 3)")
    args = parser.parse_args(argv)
    try:
        written = generate(args.apps, args.out, args.sql_servers)
    except ValueError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    counts = {kind: sum(1 for k in written["applications"].values() if k == kind) for kind in ("default", *KINDS)}
    print(f"fleet of {len(written['applications'])} applications ({', '.join(f'{n} {k}' for k, n in counts.items())})"
          f": LAB_TOPOLOGY={written['topology']} python -m azurelab up; "
          f"ansible-playbook -i {written['inventory']} playbooks/migrate.yml")
    return 0
