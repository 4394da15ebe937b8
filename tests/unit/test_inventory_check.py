"""The inventory check (plugins/plugin_utils/inventory.py + meta/inventory.schema.json): a good inventory passes and
yields the run's write scopes; each kind of bad field is reported with its host, JSON path and what is expected; every
problem at once."""
import copy

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.plugin_utils import inventory

GROUP = {
    "mi_control_host": "localhost",
    "mi_control_identity": {"name": "mi-operator", "resource_group": "rg-ops"},
    "mi_cloud_environment": "AzureUSGovernment",
    "mi_subscription_id": "2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23",
    "mi_tenant_id": "7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11",
    "mi_location": "usgovvirginia",
    "mi_cutover": True,
    "mi_decommission": True,
    "mi_evidence_window_seconds": "60",
    "mi_k8s_login_check_image": "registry.example/mi-login-check:1",
    "mi_postgres_servers": {"pg-prod": {"resource_group": "rg-data", "host": "pg-prod.example", "port": 5432,
                                        "db_admin_host": "jump-1",
                                        "administrators": [{"object_id": "9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f",
                                                            "principal_name": "dbas", "principal_type": "Group"}]}},
    "mi_sql_servers": {"sql-prod": {"resource_group": "rg-data", "host": "sql-prod.example", "port": "1433",
                                    "administrator": {"login": "sql-admins",
                                                      "sid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"}}},
    "mi_cosmos_accounts": {"cosmos-prod": {"resource_group": "rg-data",
                                           "endpoint": "https://cosmos-prod.documents.azure.us:443/"}},
}
APPS = {
    "orders": {"mi_identity": {"name": "mi-orders", "resource_group": "rg-apps"},
               "mi_workload": {"type": "vm", "name": "vm-orders", "resource_group": "rg-apps"},
               "mi_vault_database_role": "orders",
               "mi_databases": [{"type": "postgres", "server": "pg-prod", "database": "appdb",
                                 "grants": [{"object_type": "database", "privileges": ["CONNECT"]},
                                            {"object_type": "table", "schema": "s", "privileges": ["SELECT"]}],
                                 "default_privileges": [{"for_role": "owner", "schema": "s", "object_type": "table",
                                                         "privileges": ["SELECT"]}]}]},
    "shop": {"mi_identity": {"name": "mi-shop", "resource_group": "rg-apps"},
             "mi_workload": {"type": "app_service", "name": "app-shop", "resource_group": "rg-apps",
                             "health_url": "https://app-shop.example/health", "client_id_app_setting": True},
             "mi_databases": [{"type": "sql", "server": "sql-prod", "database": "shop", "roles": ["db_datareader"],
                               "password_users": ["shop-sql"]}]},
    "web": {"mi_identity": {"name": "mi-web", "resource_group": "rg-apps"},
            "mi_workload": {"type": "aks", "cluster": "aks-prod", "resource_group": "rg-aks", "namespace": "web",
                            "service_account": "web-sa", "deployment": "web", "remove_env": ["DB_PASSWORD"]},
            "mi_switch_method": "kubernetes",
            "mi_databases": [{"type": "cosmos", "account": "cosmos-prod", "database": "db", "container": "items",
                              "role": "Data Reader", "scope": "/dbs/db",
                              "verify_parameters": [{"name": "@x", "value": 1}]}]},
}
KNOWN_HOSTS = {"orders", "shop", "web", "jump-1", "localhost"}


def run(apps=None, group=None):
    group = GROUP if group is None else group
    variables = {host: dict(copy.deepcopy(group), **copy.deepcopy(app)) for host, app in (apps or APPS).items()}
    return inventory.check(variables, KNOWN_HOSTS)


def with_change(host, change):
    apps = copy.deepcopy(APPS)
    change(apps[host])
    return run(apps)


def test_a_good_inventory_passes_and_lists_each_server_once():
    result = run()
    assert result["problems"] == []
    assert result["servers"] == {"postgres": ["pg-prod"], "sql": ["sql-prod"], "cosmos": ["cosmos-prod"]}
    scopes = {(s["resource_group"], s.get("name")): s["actions"] for s in result["write_scopes"]}
    assert scopes[("rg-apps", None)] == [
        "Microsoft.ManagedIdentity/userAssignedIdentities/write",
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write"]
    assert scopes[("rg-apps", "app-shop")] == ["Microsoft.Web/sites/write", "Microsoft.Web/sites/config/list/action",
                                               "Microsoft.Web/sites/config/write"]
    assert "Microsoft.Sql/servers/azureADOnlyAuthentications/write" in scopes[("rg-data", "sql-prod")]
    assert scopes[("rg-data", "cosmos-prod")] == [
        "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments/write",
        "Microsoft.DocumentDB/databaseAccounts/regenerateKey/action", "Microsoft.DocumentDB/databaseAccounts/write"]
    assert scopes[("rg-aks", "aks-prod")][0] == "Microsoft.ContainerService/managedClusters/write"


def test_without_cutover_the_switches_are_not_needed():
    result = run(group=dict(GROUP, mi_cutover=False, mi_decommission=False))
    actions = [a for s in result["write_scopes"] for a in s["actions"]]
    assert "Microsoft.Sql/servers/azureADOnlyAuthentications/write" not in actions
    assert "Microsoft.DocumentDB/databaseAccounts/write" not in actions


def _set(path, value):
    def change(app):
        node = app
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return change


DELETE = object()

BAD = [
    # (host, path in the host's variables, new value, expected JSON path, words of the message)
    ("orders", ["mi_identity", "name"], "x", "$.mi_identity.name", "user-assigned identity name"),
    ("orders", ["mi_identity", "resource_group"], "rg.", "$.mi_identity.resource_group", "resource group name"),
    ("orders", ["mi_identity", "nmae"], "typo", "$.mi_identity", "'nmae' was unexpected"),
    ("orders", ["mi_identity"], DELETE, "$", "'mi_identity' is a required property"),
    ("orders", ["mi_workload", "type"], "vmm", "$.mi_workload.type", "one of vm, vmss, app_service"),
    ("orders", ["mi_workload", "name"], DELETE, "$.mi_workload", "'name' is a required property"),
    ("orders", ["mi_workload", "cluster"], "aks-prod", "$.mi_workload", "vm and vmss take name and resource_group"),
    ("shop", ["mi_workload", "health_url"], "http://plain", "$.mi_workload.health_url", "an https:// URL"),
    ("shop", ["mi_workload", "client_id_app_setting"], "yes", "$.mi_workload.client_id_app_setting", "true or false"),
    ("web", ["mi_workload", "namespace"], "Web_NS", "$.mi_workload.namespace", "Kubernetes namespace"),
    ("web", ["mi_workload", "service_account"], DELETE, "$.mi_workload", "'service_account' is a required property"),
    ("orders", ["mi_databases"], [], "$.mi_databases", "should be non-empty"),
    ("orders", ["mi_databases", 0, "type"], "mysql", "$.mi_databases[0].type", "one of postgres, sql, cosmos"),
    ("orders", ["mi_databases", 0, "grants", 1, "schema"], DELETE, "$.mi_databases[0].grants[1]",
     "'schema' is a required property"),
    ("orders", ["mi_databases", 0, "grants", 0, "object_type"], "view", "$.mi_databases[0].grants[0].object_type",
     "one of database, schema, table, sequence"),
    ("orders", ["mi_databases", 0, "grants", 0, "privileges"], [], "$.mi_databases[0].grants[0].privileges",
     "should be non-empty"),
    ("orders", ["mi_databases", 0, "default_privileges", 0, "object_type"], "schema",
     "$.mi_databases[0].default_privileges[0].object_type", "table or sequence"),
    ("orders", ["mi_databases", 0, "roles"], ["db_datareader"], "$.mi_databases[0]", "'roles' was unexpected"),
    ("shop", ["mi_databases", 0, "roles"], DELETE, "$.mi_databases[0]", "'roles' is a required property"),
    ("shop", ["mi_databases", 0, "password_users"], "shop-sql", "$.mi_databases[0].password_users", "is not of type"),
    ("web", ["mi_databases", 0, "container"], DELETE, "$.mi_databases[0]", "'container' is a required property"),
    ("web", ["mi_databases", 0, "scope"], "dbs/db", "$.mi_databases[0].scope", "/dbs/<db>"),
    ("web", ["mi_databases", 0, "verify_parameters", 0, "name"], "x", "$.mi_databases[0].verify_parameters[0].name",
     "is not valid"),
    ("web", ["mi_switch_method"], "helm", "$.mi_switch_method", "none, kubernetes"),
    ("orders", ["mi_vault_database_role"], "", "$.mi_vault_database_role", "non-empty string"),
    # rules JSON Schema cannot state
    ("orders", ["mi_databases", 0, "server"], "pg-typo", "$.mi_databases[0].server",
     "server 'pg-typo' is not in mi_postgres_servers; expected one of ['pg-prod']"),
    ("web", ["mi_databases", 0, "account"], "cosmos-other", "$.mi_databases[0].account", "not in mi_cosmos_accounts"),
    ("orders", ["mi_switch_method"], "kubernetes", "$.mi_switch_method", "switches an AKS Deployment"),
    ("shop", ["mi_vault_database_role"], "shop", "$.mi_vault_database_role", "only for a PostgreSQL application"),
    ("web", ["mi_k8s_login_check_image"], "", "$.mi_k8s_login_check_image", "image of its verify Job"),
]


@pytest.mark.parametrize("host,path,value,where,words", BAD, ids=[f"{b[0]}:{b[3]}:{b[4][:25]}" for b in BAD])
def test_each_bad_field_is_named(host, path, value, where, words):
    problems = with_change(host, _set(path, value))["problems"]
    matching = [p for p in problems if p["host"] == host and p["path"] == where]
    assert matching, problems
    assert any(words in p["message"] for p in matching), matching


BAD_GROUP = [
    ("mi_subscription_id", "not-a-guid", "$.mi_subscription_id", "expected a GUID"),
    ("mi_cloud_environment", "AzureGermanCloud", "$.mi_cloud_environment", "AzureUSGovernment"),
    ("mi_cloud_environment", "custom", "$.mi_cloud_endpoints", "custom needs mi_cloud_endpoints"),
    ("mi_cloud_endpoints", {"resource_manager": "https://arm"}, "$.mi_cloud_endpoints",
     "'authority_host' is a required property"),
    ("mi_location", "East US 2", "$.mi_location", "Azure region name"),
    ("mi_cutover", "yes", "$.mi_cutover", "true or false"),
    ("mi_evidence_window_seconds", -1, "$.mi_evidence_window_seconds", "a whole number >= 0"),
    ("mi_control_host", "nowhere", "$.mi_control_host", "'nowhere' is not a host of the inventory"),
    ("mi_control_identity", {"name": "mi-operator"}, "$.mi_control_identity", "'resource_group' is a required"),
    ("mi_postgres_servers", {"PG_Prod": {"resource_group": "rg", "host": "h"}}, "$.mi_postgres_servers",
     "server name"),
    ("mi_postgres_servers", {"pg-prod": {"resource_group": "rg", "host": "h", "port": 70000}},
     "$.mi_postgres_servers['pg-prod'].port", "TCP port"),
    ("mi_postgres_servers", {"pg-prod": {"resource_group": "rg", "host": "h", "db_admin_host": "jump-9"}},
     "$.mi_postgres_servers['pg-prod'].db_admin_host", "'jump-9' is not a host of the inventory"),
    ("mi_postgres_servers", {"pg-prod": {"resource_group": "rg", "host": "h", "administrators": [
        {"object_id": "dbas", "principal_name": "dbas"}]}},
     "$.mi_postgres_servers['pg-prod'].administrators[0].object_id", "GUID"),
    ("mi_sql_servers", {"sql-prod": {"resource_group": "rg", "host": "h", "administrator": {"login": "x"}}},
     "$.mi_sql_servers['sql-prod'].administrator", "'sid' is a required property"),
    ("mi_sql_servers", {"sql-prod": {"resource_group": "rg"}}, "$.mi_sql_servers['sql-prod']",
     "'host' is a required property"),
    ("mi_cosmos_accounts", {"cosmos-prod": {"resource_group": "rg", "endpoint": "cosmos-prod.documents.azure.us"}},
     "$.mi_cosmos_accounts['cosmos-prod'].endpoint", "https://"),
]


@pytest.mark.parametrize("name,value,where,words", BAD_GROUP, ids=[f"{b[0]}:{b[3][:25]}" for b in BAD_GROUP])
def test_each_bad_group_variable_is_named_once_for_all_its_hosts(name, value, where, words):
    problems = run(group=dict(GROUP, **{name: value}))["problems"]
    matching = [p for p in problems if p["path"] == where and words in p["message"]]
    assert len(matching) == 1, problems
    assert matching[0]["hosts"] == ["orders", "shop", "web"]


def test_every_problem_is_reported_at_once():
    apps = copy.deepcopy(APPS)
    apps["orders"]["mi_workload"]["type"] = "vmm"
    apps["shop"]["mi_databases"].append(copy.deepcopy(apps["orders"]["mi_databases"][0]))
    apps["web"]["mi_databases"][0]["account"] = "cosmos-typo"
    result = run(apps, dict(GROUP, mi_tenant_id="tenant"))
    assert {(p["host"], p["path"]) for p in result["problems"]} == {
        ("orders", "$.mi_workload.type"), ("shop", "$.mi_databases"), ("web", "$.mi_databases[0].account"),
        ("orders, shop, web", "$.mi_tenant_id")}
    assert "write_scopes" not in result
    text = inventory.format_problems(result["problems"])
    assert text.startswith("The inventory has 4 problem(s); nothing was changed:")


def test_one_run_covers_one_environment():
    staging = dict(GROUP, mi_subscription_id="11111111-2222-4333-8444-555555555555",
                   mi_postgres_servers={"pg-prod": dict(GROUP["mi_postgres_servers"]["pg-prod"], host="other")})
    variables = {"orders": dict(copy.deepcopy(GROUP), **APPS["orders"]),
                 "orders-staging": dict(copy.deepcopy(staging), **APPS["orders"])}
    problems = inventory.check(variables, KNOWN_HOSTS | {"orders-staging"})["problems"]
    paths = {p["path"]: p["message"] for p in problems}
    assert "one run covers one environment" in paths["$.mi_subscription_id"]
    assert "pg-prod is described differently" in paths["$.mi_postgres_servers['pg-prod']"]


def test_values_other_than_names_never_reach_the_messages():
    """Only the schema's variables are read; a problem's message quotes the field, never another variable."""
    names = inventory.variable_names(inventory.load_schema())
    assert "mi_vault_token" not in names and all(n.startswith("mi_") for n in names)
