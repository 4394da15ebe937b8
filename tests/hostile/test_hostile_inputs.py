"""A corpus of hostile and wrong inputs, one module call each, against one lab.

Each case is a module call with the arguments the integration tests use (known to work against the lab, see
:func:`baseline`) where exactly one option holds a value that must be refused: names with ``]``, quotes, ``;``,
``--``, NUL bytes, line breaks, right-to-left marks and homoglyphs, 10,000-character values, malformed or nil GUIDs,
wrong types, negative or huge numbers, path traversal, resource groups and subscriptions that do not exist, ARM ids
of the wrong type, scopes outside the subscription. Values that are valid and correctly quoted (a unicode PostgreSQL
role name, ``a]b`` as an Azure SQL user) are not in it: the integration tests create those.

For every case:

1. the module fails, with a message that names the option and stays short (under 2,000 characters: a huge value is
   never echoed whole), and it did not crash (a traceback instead of a result fails :func:`run_module`);
2. nothing changed in the lab: the ARM double's write counter and state, the PostgreSQL catalog (roles, Entra
   principals, privileges, memberships), both Azure SQL catalogs, and, where the module reaches them, OpenBao (roles,
   connections, KV metadata, leases) and the Kubernetes API server (its latest revision); no file appeared in the
   scratch folder the cases point their paths at;
3. no lab secret is in the output (:func:`run_module` checks, as for every module call of the tests).

The cases share one lab (module scope) and are independent of their order: none of them may change anything, which is
what each checks. The corpus is data (:data:`CASES`); :func:`test_hostile_input_is_refused_and_changes_nothing` runs
each.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import uuid

import hvac
import psycopg
import pytest
import yaml

from labrunner import REPO, SUBSCRIPTION, VENV_BIN, kube_client, run_module

LONG = "x" * 10_000
NUL, NEWLINE, RTL = "\x00", "\n", "\u202e"
NIL = "00000000-0000-0000-0000-000000000000"
DANA = "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a"  # a user of the lab directory (topology.yml)
SQL_ADMINS = "9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f"  # a group of the lab directory
APP_CLIENT_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"  # an application that exists only as a SID
HOMOGLYPH = DANA[:-1] + "\u0430"  # the last 'a' is Cyrillic
OTHER_SUBSCRIPTION = "3c7f4a5b-9d2e-4fa0-8c3b-6d1e0f9a2b34"
RG_MISSING = "rg-hostile-missing"
DATA = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-lab-data/providers"
ACCOUNT_ID = f"{DATA}/Microsoft.DocumentDB/databaseAccounts/cosmos-lab"
VM_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-lab-apps/providers/Microsoft.Compute/virtualMachines/vm-orders"
MISSING_IDENTITY = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-lab-apps/providers/Microsoft.ManagedIdentity/"
                    f"userAssignedIdentities/mi-hostile-missing")
SQL_SERVER_SCOPE = {"resource_group": "rg-lab-data", "provider_namespace": "Microsoft.Sql", "resource_type": "servers",
                    "name": "sql-lab", "purpose": "database servers",
                    "actions": ["Microsoft.Sql/servers/administrators/write"]}
PG_GRANTS = [{"object_type": "table", "schema": "orders", "privileges": ["SELECT"]}]
PG_ADMIN = {"object_id": DANA, "principal_name": "dana.dba@lab.example", "principal_type": "User"}
SQL_LOGIN = {"database_type": "sql", "host": "localhost", "database": "appdb", "expected_user": "mi-webapp"}

VAULT_MODULES = {"vault_db_role", "vault_kv_secret", "vault_kv_cosmos_key"}
KUBERNETES_MODULES = {"k8s_workload_identity", "k8s_login_check", "secrets_scan"}
MODULES = sorted(path.stem for path in (REPO / "plugins" / "modules").glob("*.py"))


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile call: ``module`` with :func:`baseline`'s arguments updated with ``args``; ``field`` is the option
    the error message must name. inventory_check's ``hostvars`` replace variables of the lab host orders-api."""

    id: str
    module: str
    args: dict
    field: str
    hostvars: dict | None = None


C = Case
CASES = [
    # --- azure_mi: writes identities
    C("azure_mi-name-10k", "azure_mi", {"name": LONG}, "name"),
    C("azure_mi-resource-group-missing", "azure_mi", {"resource_group": RG_MISSING}, "resource_group"),
    C("azure_mi-resource-group-traversal", "azure_mi", {"resource_group": "rg-lab-apps/../rg-lab-ops"}, "resource_group"),
    C("azure_mi-location-injection", "azure_mi", {"location": "eastus2'; DROP --"}, "location"),
    # --- azure_mi_assignment: writes VMs' identities
    C("assignment-vm-id-as-identity", "azure_mi_assignment", {"identity_ids": [VM_ID]}, "identity_ids"),
    C("assignment-identity-missing", "azure_mi_assignment", {"identity_ids": [MISSING_IDENTITY]}, "identity_ids"),
    C("assignment-identity-10k", "azure_mi_assignment", {"identity_ids": [LONG]}, "identity_ids"),
    C("assignment-name-nul", "azure_mi_assignment", {"name": "vm-orders" + NUL}, "name"),
    # --- aks_federation: writes the cluster and federated credentials
    C("federation-identity-missing", "aks_federation", {"identity_name": "mi-hostile-missing"}, "identity_name"),
    C("federation-namespace-injection", "aks_federation", {"namespace": "app-namespace;kubectl delete"}, "namespace"),
    C("federation-service-account-10k", "aks_federation", {"service_account": LONG}, "service_account"),
    C("federation-write-timeout-negative", "aks_federation", {"write_timeout": -1}, "write_timeout"),
    C("federation-cluster-group-missing", "aks_federation", {"cluster_resource_group": RG_MISSING},
      "cluster_resource_group"),
    # --- k8s_workload_identity: writes service accounts and Deployments
    C("workload-identity-nil-client-id", "k8s_workload_identity", {"identity_client_id": NIL}, "identity_client_id"),
    C("workload-identity-client-id-10k", "k8s_workload_identity", {"identity_client_id": LONG}, "identity_client_id"),
    C("workload-identity-deployment-traversal", "k8s_workload_identity", {"deployment": "../webapp"}, "deployment"),
    # --- k8s_login_check: creates a Job
    C("login-job-image-newline", "k8s_login_check", {"image": "img" + NEWLINE + "--privileged"}, "image"),
    C("login-job-environment-name", "k8s_login_check", {"environment": {"A" + NEWLINE + "B": "x"}}, "environment"),
    C("login-job-timeout-negative", "k8s_login_check", {"timeout": -1}, "timeout"),
    # --- pg_server_entra: writes the server's authConfig and administrators
    C("pg-server-admin-nil-guid", "pg_server_entra", {"administrators": [dict(PG_ADMIN, object_id=NIL)]},
      "administrators[0].object_id"),
    C("pg-server-admin-name-10k", "pg_server_entra", {"administrators": [dict(PG_ADMIN, principal_name=LONG)]},
      "administrators[0].principal_name"),
    C("pg-server-admin-name-newline", "pg_server_entra",
      {"administrators": [dict(PG_ADMIN, principal_name="dana" + NEWLINE + "DROP ROLE pgadmin")]},
      "administrators[0].principal_name"),
    C("pg-server-resource-group-missing", "pg_server_entra", {"resource_group": RG_MISSING}, "resource_group"),
    C("pg-server-name-quote", "pg_server_entra", {"name": 'pg-lab"?api-version=1'}, "name"),
    # --- pg_entra_principal: writes roles and grants
    C("pg-principal-role-10k", "pg_entra_principal", {"role": LONG}, "role"),
    C("pg-principal-object-id-homoglyph", "pg_entra_principal", {"object_id": HOMOGLYPH}, "object_id"),
    C("pg-principal-object-id-nil", "pg_entra_principal", {"object_id": NIL}, "object_id"),
    C("pg-principal-host-10k", "pg_entra_principal", {"host": LONG}, "host"),
    C("pg-principal-host-list", "pg_entra_principal", {"host": "evil.example,localhost"}, "host"),
    C("pg-principal-port-negative", "pg_entra_principal", {"port": -1}, "port"),
    C("pg-principal-grants-wrong-type", "pg_entra_principal", {"grants": "SELECT ON orders"}, "grants"),
    C("pg-principal-privilege-injection", "pg_entra_principal",
      {"grants": [dict(PG_GRANTS[0], privileges=["SELECT; DROP TABLE orders.orders"])]}, "grants[0].privileges"),
    C("pg-principal-object-injection", "pg_entra_principal",
      {"grants": [dict(PG_GRANTS[0], objects=['orders"; DROP TABLE orders.orders; --'])]}, "grants[0].objects"),
    C("pg-principal-database-nul", "pg_entra_principal", {"database": "appdb" + NUL + "x"}, "database"),
    # --- pg_sessions_info, pg_users_info: read
    C("pg-sessions-regex-invalid", "pg_sessions_info", {"user_regex": ["(unclosed"]}, "user_regex"),
    C("pg-sessions-window-huge", "pg_sessions_info", {"window_seconds": 10 ** 12}, "window_seconds"),
    C("pg-users-regex-10k", "pg_users_info", {"known_user_regex": ["(" + LONG]}, "known_user_regex"),
    C("pg-users-admin-nul", "pg_users_info", {"admin_user": "mi-operator" + NUL}, "admin_user"),
    # --- sql_server_entra: writes the Entra administrator and Entra-only
    C("sql-server-sid-nil", "sql_server_entra", {"administrator": {"login": "sql-admins", "sid": NIL}},
      "administrator.sid"),
    C("sql-server-sid-10k", "sql_server_entra", {"administrator": {"login": "sql-admins", "sid": LONG}},
      "administrator.sid"),
    C("sql-server-login-nul", "sql_server_entra", {"administrator": {"login": "sql-admins" + NUL, "sid": SQL_ADMINS}},
      "administrator.login"),
    C("sql-server-name-traversal", "sql_server_entra", {"name": "sql-lab/../sql-lab-2"}, "name"),
    C("sql-server-other-subscription", "sql_server_entra", {"subscription_id": OTHER_SUBSCRIPTION}, "subscription_id"),
    # --- sql_entra_user: writes contained users and role memberships
    C("sql-user-name-10k", "sql_entra_user", {"name": LONG}, "name"),
    C("sql-user-client-id-rtl", "sql_entra_user", {"principal_client_id": RTL + APP_CLIENT_ID}, "principal_client_id"),
    C("sql-user-database-10k", "sql_entra_user", {"database": LONG}, "database"),
    C("sql-user-role-injection", "sql_entra_user", {"roles": ["db_datareader]; DROP USER [dbo]; --"]}, "roles"),
    C("sql-user-host-injection", "sql_entra_user", {"host": "localhost;TrustServerCertificate=yes"}, "host"),
    # --- sql_sessions_info, sql_users_info: read
    C("sql-sessions-database-nul", "sql_sessions_info", {"database": "appdb" + NUL + "ledgerdb"}, "database"),
    C("sql-sessions-window-huge", "sql_sessions_info", {"window_seconds": 10 ** 9}, "window_seconds"),
    C("sql-users-database-nul", "sql_users_info", {"database": "appdb" + NUL}, "database"),
    C("sql-users-authentication-unknown", "sql_users_info", {"authentication": ["PASSWORD"]}, "authentication"),
    # --- cosmos_rbac: writes data-plane role assignments
    C("cosmos-rbac-scope-10k", "cosmos_rbac", {"scope": "/dbs/" + LONG}, "scope"),
    C("cosmos-rbac-scope-other-subscription", "cosmos_rbac",
      {"scope": ACCOUNT_ID.replace(SUBSCRIPTION, OTHER_SUBSCRIPTION) + "/dbs/appdb"}, "scope"),
    C("cosmos-rbac-role-azure-rbac-id", "cosmos_rbac",
      {"role": f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
               f"b24988ac-6180-42a0-ab88-20f7382dd24c"}, "role"),
    C("cosmos-rbac-principal-homoglyph", "cosmos_rbac", {"principal_id": HOMOGLYPH}, "principal_id"),
    C("cosmos-rbac-account-newline", "cosmos_rbac", {"account_name": "cosmos-lab" + NEWLINE}, "account_name"),
    # --- cosmos_account_entra: switches keys off, regenerates them
    C("cosmos-account-applications-10k", "cosmos_account_entra", {"applications_using_keys": [LONG]},
      "applications_using_keys"),
    C("cosmos-account-name-10k", "cosmos_account_entra", {"account_name": LONG}, "account_name"),
    C("cosmos-account-resource-group-missing", "cosmos_account_entra", {"resource_group": RG_MISSING},
      "resource_group"),
    # --- vault_kv_cosmos_key: writes a KV secret
    C("kv-cosmos-key-path-traversal", "vault_kv_cosmos_key", {"path": "../sys/policies/acl/root"}, "path"),
    C("kv-cosmos-key-mount-query", "vault_kv_cosmos_key", {"mount": "secret?version=1"}, "mount"),
    C("kv-cosmos-key-field-nul", "vault_kv_cosmos_key", {"field": "key" + NUL}, "field"),
    # --- vault_db_role: revokes leases, deletes the role (the baseline would decommission orders-api)
    C("vault-role-name-nul", "vault_db_role", {"name": "orders-api" + NUL}, "name"),
    C("vault-role-name-traversal", "vault_db_role", {"name": "orders-api/../reports"}, "name"),
    C("vault-role-name-10k", "vault_db_role", {"name": LONG}, "name"),
    C("vault-role-name-rtl", "vault_db_role", {"name": "orders-api" + RTL}, "name"),
    C("vault-role-mount-newline", "vault_db_role", {"mount": "data" + NEWLINE + "base"}, "mount"),
    C("vault-role-backup-dir-is-a-file", "vault_db_role", {"backup_dir": "@file"}, "backup_dir"),
    # --- vault_kv_secret: soft-deletes KV versions (the baseline would retire ledger's password)
    C("kv-secret-path-nul", "vault_kv_secret", {"path": "apps/ledger/sql" + NUL}, "path"),
    C("kv-secret-path-dot-segment", "vault_kv_secret", {"path": "apps/./ledger/sql"}, "path"),
    C("kv-secret-path-10k", "vault_kv_secret", {"path": "apps/" + LONG}, "path"),
    C("kv-secret-mount-traversal", "vault_kv_secret", {"mount": "../secret"}, "mount"),
    # --- mi_login_check: logs in and runs a read-only query
    C("login-check-host-10k", "mi_login_check", {"host": LONG}, "host"),
    C("login-check-port-zero", "mi_login_check", {"port": 0}, "port"),
    C("login-check-user-10k", "mi_login_check", {"user": LONG}, "user"),
    C("login-check-query-10k", "mi_login_check", {"query": "SELECT " + LONG + " FROM"}, "query"),
    C("login-check-timeout-negative", "mi_login_check", {"connect_timeout": -3}, "connect_timeout"),
    # --- secrets_scan: reads files and live objects
    C("scan-path-nul", "secrets_scan", {"paths": ["@tree" + NUL + "/../../etc"]}, "paths"),
    C("scan-ignore-rule-10k", "secrets_scan", {"ignore": [{"rule": LONG, "reason": "accepted"}]}, "ignore"),
    C("scan-object-name-10k", "secrets_scan",
      {"kubernetes_objects": [{"kind": "Deployment", "namespace": "app-namespace", "name": LONG}]},
      "kubernetes_objects[0].name"),
    # --- azure_access_check: reads permissions and locks
    C("access-action-newline", "azure_access_check",
      {"scopes": [dict(SQL_SERVER_SCOPE, actions=["Microsoft.Sql/servers/administrators/write" + NEWLINE + "ok"])]},
      "scopes[0].actions[0]"),
    C("access-action-10k", "azure_access_check", {"scopes": [dict(SQL_SERVER_SCOPE, actions=[LONG])]},
      "scopes[0].actions[0]"),
    C("access-provider-traversal", "azure_access_check",
      {"scopes": [dict(SQL_SERVER_SCOPE, provider_namespace="Microsoft.Sql/../Microsoft.Web")]},
      "scopes[0].provider_namespace"),
    # --- inventory_check (an action plugin: run through the controller)
    C("inventory-hosts-10k", "inventory_check", {"hosts": [LONG]}, "hosts"),
    C("inventory-subscription-rtl", "inventory_check", {}, "mi_subscription_id",
      hostvars={"mi_subscription_id": SUBSCRIPTION[:8] + RTL + SUBSCRIPTION[8:]}),
]


@dataclasses.dataclass
class Context:
    """What the baselines refer to: the lab's ports and files, the identities the fixture made."""

    lab: object
    app: dict
    scratch: object
    kube: object


def baseline(module: str, ctx: Context) -> dict:
    """Arguments of ``module`` that the lab accepts (those of the integration tests); most would change something."""
    lab = ctx.lab
    pg = dict(host="localhost", port=lab.base + 4, admin_user="mi-operator")
    sql = dict(host="localhost", port=lab.base + 7, database="appdb")
    cluster = dict(cluster_name="aks-prod", cluster_resource_group="rg-aks")
    vault = dict(url=lab.env["VAULT_ADDR"], token_file=str(lab.state / "openbao" / "token"))
    account = dict(account_name="cosmos-lab", resource_group="rg-lab-data")
    return {
        "azure_mi": dict(name="mi-hostile-new", resource_group="rg-lab-apps", location="eastus2"),
        "azure_mi_assignment": dict(name="vm-orders", resource_group="rg-lab-apps", identity_ids=[ctx.app["id"]]),
        "aks_federation": dict(cluster, identity_name="mi-hostile", identity_resource_group="rg-lab-apps",
                               namespace="app-namespace", service_account="webapp-sa"),
        "k8s_workload_identity": dict(cluster, namespace="app-namespace", service_account="webapp-sa",
                                      identity_client_id=ctx.app["client_id"], deployment="webapp"),
        "k8s_login_check": dict(cluster, namespace="app-namespace", service_account="webapp-sa",
                                image="lab.local/csa-inabox/mi-login-check:lab", timeout=60,
                                login_check=dict(SQL_LOGIN, port=lab.base + 7)),
        "pg_server_entra": dict(name="pg-lab", resource_group="rg-lab-data", administrators=[PG_ADMIN]),
        "pg_entra_principal": dict(pg, role="mi-hostile", object_id="1a2b3c4d-0000-4000-8000-0000000000aa",
                                   database="appdb", admin_member_of=["pgadmin"], grants=PG_GRANTS),
        "pg_sessions_info": dict(pg, users=["mi-operator"]),
        "pg_users_info": dict(pg, administrator_login="pgadmin"),
        "sql_server_entra": dict(name="sql-lab-2", resource_group="rg-lab-data",
                                 administrator={"login": "sql-admins", "sid": SQL_ADMINS}),
        "sql_entra_user": dict(sql, name="mi-hostile-sql", principal_client_id=APP_CLIENT_ID, roles=["db_datareader"]),
        "sql_sessions_info": dict(sql, users=["mi-operator"]),
        "sql_users_info": dict(sql),
        "cosmos_rbac": dict(account, principal_id=DANA, role="Data Reader", scope="/dbs/appdb"),
        "cosmos_account_entra": dict(account, regenerate_keys=True),
        "vault_kv_cosmos_key": dict(vault, **account, path="apps/catalog-api/cosmos"),
        "vault_db_role": dict(vault, name="orders-api", backup_dir=str(ctx.scratch / "vault-backups")),
        "vault_kv_secret": dict(vault, mount="secret", path="apps/ledger/sql", state="absent"),
        "mi_login_check": dict(host="localhost", port=lab.base + 4, database="appdb", user="mi-operator",
                               query="SELECT 1"),
        "secrets_scan": dict(paths=[str(ctx.scratch / "tree")], kubernetes_objects=[], **cluster),
        "azure_access_check": dict(scopes=[SQL_SERVER_SCOPE]),
        "inventory_check": dict(hosts=["orders-api"]),
    }[module]


def arguments(case: Case, ctx: Context) -> dict:
    """The baseline updated with the case's value; ``@file`` and ``@tree`` stand for a file and a folder of the
    scratch folder."""
    args = copy.deepcopy(baseline(case.module, ctx))
    for key, value in case.args.items():
        if value == "@file":
            value = str(ctx.scratch / "not-a-folder")
        elif isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("@tree"):
            value = [str(ctx.scratch / "tree") + value[0][len("@tree"):]]
        args[key] = value
    return args


# --- what "nothing changed" compares --------------------------------------------------------------------------------

def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def arm_snapshot(lab) -> dict:
    """The ARM double's write counter and the digest of its whole state, resource by resource."""
    state = lab.lab_api("GET", "state")
    resources = {resource["id"].lower(): digest(resource) for resource in state["resources"]}
    return {"writes": lab.arm_counters()["writes"], "resources": resources,
            "rest": digest({k: v for k, v in state.items() if k != "resources"}),
            "aks": lab.lab_api("GET", "aks/aks-prod")}


def pg_snapshot(lab) -> dict:
    """Roles, Entra principals, memberships and every privilege of the lab's PostgreSQL server, as its superuser."""
    def rows(dbname, sql):
        with psycopg.connect(host=str(lab.state / "pg" / "run"), dbname=dbname, user="postgres") as conn:
            return sorted(tuple(str(c) for c in row) for row in conn.execute(sql))

    return {
        "roles": rows("postgres", "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles"),
        "principals": rows("postgres", 'SELECT rolname, "objectId" FROM pgaadauth_list_principals(false)'),
        "members": rows("postgres", "SELECT roleid::regrole, member::regrole FROM pg_auth_members"),
        "databases": rows("postgres", "SELECT datname, datacl FROM pg_database"),
        "acls": rows("appdb", "SELECT relname, relacl FROM pg_class WHERE relacl IS NOT NULL"),
        "schemas": rows("appdb", "SELECT nspname, nspacl FROM pg_namespace"),
        "defaults": rows("appdb", "SELECT defaclrole::regrole, defaclnamespace, defaclacl FROM pg_default_acl"),
    }


def sql_snapshot(lab) -> dict:
    """Every principal and role membership of both Azure SQL doubles, from their catalog files."""
    found = {}
    for server in ("sql-lab", "sql-lab-2"):
        uri = (lab.state / "sql" / f"{server}.sqlite").as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            found[server] = (sorted(conn.execute("SELECT database_id, principal_id, name, type, sid FROM principals")),
                             sorted(conn.execute("SELECT * FROM role_members")))
    return found


def vault_snapshot(lab) -> dict:
    """OpenBao as its root token sees it: database roles and connections, the metadata of every KV secret, leases.
    Read with the lab's root token file (never printed); KV data is not read."""
    client = hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())

    def listed(call, *args, **kwargs):
        try:
            return call(*args, **kwargs)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return []

    database = client.secrets.database
    roles = {name: database.read_role(name, mount_point="database")["data"]
             for name in listed(database.list_roles, mount_point="database")}
    connections = {name: database.read_connection(name, mount_point="database")["data"]
                   for name in listed(database.list_connections, mount_point="database")}
    kv, folders = {}, [""]
    while folders:
        folder = folders.pop()
        for key in listed(client.secrets.kv.v2.list_secrets, path=folder, mount_point="secret"):
            if key.endswith("/"):
                folders.append(folder + key)
            else:
                kv[folder + key] = client.secrets.kv.v2.read_secret_metadata(path=folder + key, mount_point="secret")[
                    "data"]
    leases = {role: listed(client.sys.list_leases, f"database/creds/{role}") for role in roles}
    return {"roles": roles, "connections": connections, "kv": kv, "leases": leases}


def kube_revision(kube) -> str:
    """The Kubernetes API server's latest revision: when it has not moved, nothing was written in the cluster."""
    import kubernetes

    answer = kubernetes.client.CoreV1Api(kube).list_namespaced_service_account("app-namespace", _preload_content=False)
    return json.loads(answer.data)["metadata"]["resourceVersion"]


def snapshot(ctx: Context, module: str) -> dict:
    lab = ctx.lab
    taken = {"arm": arm_snapshot(lab), "postgres": pg_snapshot(lab), "sql": sql_snapshot(lab),
             "scratch": sorted(str(p.relative_to(ctx.scratch)) for p in ctx.scratch.rglob("*"))}
    if module in VAULT_MODULES:
        taken["vault"] = digest(vault_snapshot(lab))
    if module in KUBERNETES_MODULES:
        taken["kubernetes"] = kube_revision(ctx.kube)
    return taken


def changes(before: dict, after: dict) -> list[str]:
    """What differs, named (never the values: they are digests, ids and catalog rows)."""
    found = []
    for system in before:
        if before[system] == after[system]:
            continue
        if system == "arm":
            for key in ("writes", "rest", "aks"):
                if before["arm"][key] != after["arm"][key]:
                    found.append(f"arm {key}: {before['arm'][key]} -> {after['arm'][key]}")
            ids = set(before["arm"]["resources"]) | set(after["arm"]["resources"])
            found += [f"arm resource {i}" for i in sorted(ids)
                      if before["arm"]["resources"].get(i) != after["arm"]["resources"].get(i)]
        elif system in ("postgres", "sql"):
            found += [f"{system} {key}" for key in before[system] if before[system][key] != after[system][key]]
        else:
            found.append(system)
    return found


# --- running a case -------------------------------------------------------------------------------------------------

def run_inventory_check(lab, ctx: Context, args: dict, hostvars: dict | None) -> dict:
    """inventory_check as ``ansible localhost -m ...`` against the lab inventory, ``hostvars`` replacing variables
    of orders-api through a second inventory source; the task's result."""
    sources = ["-i", str(REPO / "inventories" / "lab")]
    if hostvars:
        extra = ctx.scratch / f"inventory-{uuid.uuid4().hex[:8]}.yml"
        extra.write_text(yaml.safe_dump({"all": {"hosts": {"orders-api": hostvars}}}, allow_unicode=True))
        sources += ["-i", str(extra)]
    run = subprocess.run([str(VENV_BIN / "ansible"), "localhost", "--one-line", *sources, "-m",
                          "csa_inabox.managed_identity.inventory_check", "-a", json.dumps(args)],
                         cwd=REPO, env=lab.env, capture_output=True, text=True, timeout=180, check=False)
    if hostvars:
        extra.unlink()
    lab.assert_no_secret_in(run.stdout + run.stderr)
    line = next((line for line in run.stdout.splitlines() if line.startswith("localhost | ")), None)
    assert line is not None and "=> " in line, (run.stdout + run.stderr)[-2000:]
    status, result = line.split("=> ", 1)
    return dict(json.loads(result), failed="FAILED!" in status)  # the one-line output says failed in its status


def long_values(value):
    """The values of 1,000 characters or more in ``value`` (nested), which a message must not repeat whole."""
    if isinstance(value, str):
        return [value] if len(value) >= 1000 else []
    if isinstance(value, dict):
        return [v for item in list(value.keys()) + list(value.values()) for v in long_values(item)]
    if isinstance(value, list):
        return [v for item in value for v in long_values(item)]
    return []


@pytest.fixture(scope="module")
def ctx(lab, tmp_path_factory):
    """The lab as the cases find it: the control identity Entra administrator of pg-lab and sql-lab (so that the
    database modules get as far as their input lets them), an application identity ``mi-hostile`` (not attached to
    anything), a scratch folder with a small tree to scan and a plain file. The AKS cluster keeps its issuer off."""
    operator = run_module(lab, "azure_mi", name="mi-operator", resource_group="rg-lab-ops")["identity"]
    app = run_module(lab, "azure_mi", name="mi-hostile", resource_group="rg-lab-apps", location="eastus2")
    assert app["changed"] and not app["failed"], app
    entra = run_module(lab, "pg_server_entra", name="pg-lab", resource_group="rg-lab-data", active_directory_auth=True,
                       administrators=[{"object_id": operator["principal_id"], "principal_name": "mi-operator",
                                        "principal_type": "ServicePrincipal"}])
    assert entra["changed"] and not entra["failed"], entra
    admin = run_module(lab, "sql_server_entra", name="sql-lab", resource_group="rg-lab-data",
                       administrator={"login": "mi-operator", "sid": operator["client_id"]})
    assert admin["changed"] and not admin["failed"], admin
    scratch = tmp_path_factory.mktemp("hostile")
    (scratch / "tree").mkdir()
    (scratch / "tree" / "db.py").write_text("import hvac\n")
    (scratch / "not-a-folder").write_text("a file where a folder is expected\n")
    with kube_client(lab) as kube:
        yield Context(lab=lab, app=app["identity"], scratch=scratch, kube=kube)


def test_the_corpus_covers_every_module():
    counts = {module: sum(1 for case in CASES if case.module == module) for module in MODULES}
    assert all(counts.values()), [module for module, count in counts.items() if not count]
    assert len(CASES) >= 45 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("module", MODULES)
def test_the_baseline_is_accepted(ctx, module):
    """Each baseline passes in check mode (which writes nothing): a case fails for its one hostile value only."""
    args = baseline(module, ctx)
    if module == "inventory_check":
        result = run_inventory_check(ctx.lab, ctx, args, None)
    else:
        result = run_module(ctx.lab, module, check=True, **args)
    assert not result.get("failed"), str(result.get("msg"))[:1000]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_is_refused_and_changes_nothing(ctx, case):
    lab = ctx.lab
    args = arguments(case, ctx)
    before = snapshot(ctx, case.module)
    if case.module == "inventory_check":
        result = run_inventory_check(lab, ctx, args, case.hostvars)
    else:
        result = run_module(lab, case.module, **args)
    after = snapshot(ctx, case.module)
    msg = str(result.get("msg", ""))
    assert result.get("failed") is True, f"accepted: changed={result.get('changed')} {msg[:500]}"
    assert not result.get("changed"), msg[:500]
    assert "MODULE FAILURE" not in msg and "Traceback" not in msg, msg[:2000]
    assert case.field in msg, f"the message does not name {case.field}: {msg[:500]}"
    assert len(msg) < 2000, f"{len(msg)} characters: {msg[:300]}"
    for value in long_values(case.args) + long_values(case.hostvars or {}):
        assert value not in msg and value[:200] not in msg, "the message repeats the huge value"
    assert changes(before, after) == [], "the lab changed"
