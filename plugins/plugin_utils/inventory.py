# Copyright: contributors to csa_inabox.managed_identity
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inventory check: one application host's variables against ``meta/inventory.schema.json``, then the rules a
JSON Schema cannot state (a server an application names exists; one run, one environment; ...), and the scopes the
run will write (what ``azure_access_check`` reads permissions and locks for).

Controller-side only (used by the ``inventory_check`` action). Everything here is pure: values in, problems out.
A problem is a dict ``{host, path, message}``; ``path`` is a JSONPath such as ``$.mi_databases[0].server``.
"""
from __future__ import annotations

import json
import os

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.secretscan import mask

try:
    from jsonschema import Draft202012Validator
except ImportError:  # reported by check(): the action plugin then fails saying what to install
    Draft202012Validator = None

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "meta", "inventory.schema.json")

# The variables of the control plane: every application of one run must agree on them, because the tasks that
# configure servers and read the control identity run once (run_once) with the first application's view.
RUN_WIDE = ("mi_cloud_environment", "mi_cloud_endpoints", "mi_subscription_id", "mi_tenant_id", "mi_control_host",
            "mi_control_identity", "mi_db_admin_host")
SERVER_MAPS = {"postgres": ("mi_postgres_servers", "server"), "sql": ("mi_sql_servers", "server"),
               "cosmos": ("mi_cosmos_accounts", "account")}
WEB = ("app_service", "container_app")


def load_schema(path: str = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def variable_names(schema: dict) -> list[str]:
    """The host variables the check reads (and the only ones it ever reads): the schema's top-level properties."""
    return sorted(schema["properties"])


def _plain(value):
    """Ansible's tagged values as plain JSON types (bool before int: a bool is an int in Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _described(schema) -> str | None:
    return schema.get("description") if isinstance(schema, dict) else None


SHOWN_MAX = 64  # characters of a bad value a message repeats; longer values are described, not printed


def _shown(value) -> str:
    """How a message names a bad value: its ``repr`` when short and harmless; otherwise its kind and size. A value
    that looks like a secret (a token, a key, ``password=...``) is never repeated: problems are printed and logged."""
    if isinstance(value, dict):
        return "a mapping of %d key%s" % (len(value), "" if len(value) == 1 else "s")
    if isinstance(value, list):
        return "a list of %d item%s" % (len(value), "" if len(value) == 1 else "s")
    if isinstance(value, str):
        if len(value) > SHOWN_MAX or not value.isprintable():
            return "a string of %d characters" % len(value)
        if mask(value) != value.strip():
            return "a string of %d characters (not shown: it may be a secret)" % len(value)
    return repr(value)


def shown(value) -> str:
    """How a message of the controller side repeats a value it refuses (see :func:`_shown`)."""
    return _shown(value)


def _message(error) -> str:
    """jsonschema's message with the bad value described by :func:`_shown` in place of its ``repr``."""
    instance = repr(error.instance)
    shown = _shown(error.instance)
    return error.message if shown == instance else error.message.replace(instance, shown)


def _schema_message(error) -> str:
    """What is wrong and what is expected, without printing a schema, a regular expression or a secret."""
    if error.validator == "not":
        expected = _described(error.validator_value) or _described(error.schema)
        return expected or "has a field it must not have"
    if error.validator in ("anyOf", "oneOf", "allOf"):
        expected = _described(error.schema)
        return "expected %s" % expected if expected else _message(error)
    expected = _described(error.schema)
    if error.validator == "pattern":
        expected = expected or "to match %s" % error.validator_value
        return "%s is not valid; expected %s" % (_shown(error.instance), expected)
    if error.validator in ("enum", "type", "const", "minimum", "maximum", "minLength", "minItems", "required",
                           "additionalProperties") and expected:
        return "%s; expected %s" % (_message(error), expected)
    return _message(error)


def schema_problems(host: str, variables: dict, schema: dict) -> list[dict]:
    """Every schema violation of one host's variables (all of them, sorted by path)."""
    validator = Draft202012Validator(schema)
    found = []
    for error in validator.iter_errors(variables):
        # A described anyOf/oneOf (a port: a number or a string of digits) says it best; otherwise its leaf errors.
        leaves = [] if _described(error.schema) and error.validator in ("anyOf", "oneOf") else [
            e for e in (error.context or []) if e.validator not in ("if",)]
        for item in leaves or [error]:
            found.append({"host": host, "path": item.json_path, "message": _schema_message(item)})
    unique = {(p["path"], p["message"]): p for p in found}
    return sorted(unique.values(), key=lambda p: (p["path"], p["message"]))


def _db_admin_host(variables: dict, server_map: str, server: str) -> str | None:
    entry = (variables.get(server_map) or {}).get(server) or {}
    return entry.get("db_admin_host") or variables.get("mi_db_admin_host") or variables.get("mi_control_host")


def host_rule_problems(host: str, variables: dict, known_hosts: set) -> list[dict]:
    """The rules of one application that JSON Schema cannot state; a rule whose inputs are malformed is left to the
    schema's report."""
    found = []

    def problem(path, message):
        found.append({"host": host, "path": path, "message": message})

    workload = variables.get("mi_workload") if isinstance(variables.get("mi_workload"), dict) else {}
    databases = variables.get("mi_databases") if isinstance(variables.get("mi_databases"), list) else []
    for index, database in enumerate(databases):
        if not isinstance(database, dict) or database.get("type") not in SERVER_MAPS:
            continue
        server_map, key = SERVER_MAPS[database["type"]]
        name = database.get(key)
        servers = variables.get(server_map) if isinstance(variables.get(server_map), dict) else {}
        if isinstance(name, str) and name not in servers:
            problem("$.mi_databases[%d].%s" % (index, key),
                    "%s %r is not in %s; expected one of %s" % (key, name, server_map, sorted(servers) or "(none)"))
    if workload.get("type") in WEB and len(databases) > 1:
        problem("$.mi_databases", "an %s application has exactly one database (its health URL checks one); found %d"
                % (workload["type"], len(databases)))
    if workload.get("type") == "aks" and not variables.get("mi_k8s_login_check_image"):
        problem("$.mi_k8s_login_check_image", "an aks application needs the image of its verify Job "
                "(containers/mi-login-check/Containerfile builds one)")
    if variables.get("mi_switch_method") == "kubernetes" and workload.get("type") not in (None, "aks"):
        problem("$.mi_switch_method", "kubernetes switches an AKS Deployment; this application's workload is %s"
                % workload["type"])
    if variables.get("mi_cloud_environment") == "custom" and not variables.get("mi_cloud_endpoints"):
        problem("$.mi_cloud_endpoints", "mi_cloud_environment custom needs mi_cloud_endpoints "
                "{resource_manager, authority_host}")
    if variables.get("mi_vault_database_role") and databases and not any(
            isinstance(d, dict) and d.get("type") == "postgres" for d in databases):
        problem("$.mi_vault_database_role", "a Vault database role is retired only for a PostgreSQL application; "
                "this one has no postgres database (use mi_vault_kv_secret for a password or key kept in KV)")
    hosts = [("$.mi_control_host", variables.get("mi_control_host")),
             ("$.mi_db_admin_host", variables.get("mi_db_admin_host"))]
    for server_map in ("mi_postgres_servers", "mi_sql_servers"):
        servers = variables.get(server_map) if isinstance(variables.get(server_map), dict) else {}
        for name, entry in servers.items():
            if isinstance(entry, dict):
                hosts.append(("$.%s['%s'].db_admin_host" % (server_map, name), entry.get("db_admin_host")))
    for path, name in hosts:
        if isinstance(name, str) and name not in known_hosts and name not in ("localhost", "127.0.0.1"):
            problem(path, "%r is not a host of the inventory; expected an inventory host (or localhost)" % name)
    return found


def run_problems(variables_by_host: dict) -> list[dict]:
    """Rules across the applications of one run: the control plane and each server are described the same way by
    every application (servers are configured once, from one application's view)."""
    found = []
    hosts = sorted(variables_by_host)
    if not hosts:
        return found
    first = hosts[0]
    for name in RUN_WIDE:
        values = {}
        for host in hosts:
            values.setdefault(json.dumps(variables_by_host[host].get(name), sort_keys=True), []).append(host)
        if len(values) > 1:
            groups = "; ".join("%s: %s" % (", ".join(h[:3]) + (" ..." if len(h) > 3 else ""), _shown(json.loads(v)))
                               for v, h in values.items())
            found.append({"host": "(the run)", "path": "$.%s" % name,
                          "message": "the applications of this run disagree (%s); one run covers one environment: "
                                     "limit it to one group (--limit prod) or give them the same value" % groups})
    for server_map, key in SERVER_MAPS.values():
        definitions = {}
        for host in hosts:
            for server, entry in (variables_by_host[host].get(server_map) or {}).items():
                definitions.setdefault(server, {}).setdefault(json.dumps(entry, sort_keys=True), []).append(host)
        for server, variants in sorted(definitions.items()):
            if len(variants) > 1:
                found.append({"host": "(the run)", "path": "$.%s['%s']" % (server_map, server),
                              "message": "%s is described differently by %s; a server is configured once: describe "
                                         "it once, in the group variables" % (server, " and by ".join(
                                             ", ".join(h[:3]) for h in variants.values()))})
        used = set()
        for host in hosts:
            for database in variables_by_host[host].get("mi_databases") or []:
                if SERVER_MAPS.get(database.get("type"), (None,))[0] == server_map:
                    used.add(database.get(key))
        missing = sorted(s for s in used if s and s not in (variables_by_host[first].get(server_map) or {}))
        if missing:
            found.append({"host": "(the run)", "path": "$.%s" % server_map,
                          "message": "%s used by applications of this run but not described for %s: one run covers "
                                     "one environment (--limit it to one group)" % (", ".join(missing), first)})
    return found


def write_scopes(variables_by_host: dict) -> list[dict]:
    """The Azure scopes the run writes and the actions it needs there, from the first application's control-plane view
    (``run_problems`` made sure they agree). Each: ``{resource_group, provider_namespace?, resource_type?, name?,
    actions, purpose}``; servers and resource groups once, however many applications share them."""
    scopes = {}
    hosts = sorted(variables_by_host)
    first = variables_by_host[hosts[0]] if hosts else {}

    def need(resource_group, actions, purpose, resource=None):
        namespace, type_, name = resource or (None, None, None)
        key = (resource_group.lower(), (namespace or "").lower(), (type_ or "").lower(), (name or "").lower())
        entry = scopes.setdefault(key, {"resource_group": resource_group, "provider_namespace": namespace,
                                        "resource_type": type_, "name": name, "actions": [], "purpose": []})
        for action in actions:
            if action not in entry["actions"]:
                entry["actions"].append(action)
        if purpose not in entry["purpose"]:
            entry["purpose"].append(purpose)

    mi = "Microsoft.ManagedIdentity/userAssignedIdentities/"
    cutover, decommission = first.get("mi_cutover"), first.get("mi_decommission")
    for host in hosts:
        variables = variables_by_host[host]
        identity, workload = variables["mi_identity"], variables["mi_workload"]
        actions = [mi + "write"]
        if workload["type"] == "aks":
            actions.append(mi + "federatedIdentityCredentials/write")
        else:
            actions.append(mi + "assign/action")
        need(identity["resource_group"], actions, "identities")
        kind = workload["type"]
        if kind == "vm":
            need(workload["resource_group"], ["Microsoft.Compute/virtualMachines/write"], "workloads",
                 ("Microsoft.Compute", "virtualMachines", workload["name"]))
        elif kind == "vmss":
            need(workload["resource_group"], ["Microsoft.Compute/virtualMachineScaleSets/write"], "workloads",
                 ("Microsoft.Compute", "virtualMachineScaleSets", workload["name"]))
        elif kind == "app_service":
            actions = ["Microsoft.Web/sites/write"]
            if workload.get("client_id_app_setting"):
                actions += ["Microsoft.Web/sites/config/list/action", "Microsoft.Web/sites/config/write"]
            need(workload["resource_group"], actions, "workloads", ("Microsoft.Web", "sites", workload["name"]))
        elif kind == "container_app":
            need(workload["resource_group"], ["Microsoft.App/containerApps/write"], "workloads",
                 ("Microsoft.App", "containerApps", workload["name"]))
        elif kind == "aks":
            need(workload["resource_group"], ["Microsoft.ContainerService/managedClusters/write",
                                              "Microsoft.ContainerService/managedClusters/listClusterUserCredential/action"],
                 "AKS clusters", ("Microsoft.ContainerService", "managedClusters", workload["cluster"]))
        for database in variables["mi_databases"]:
            if database["type"] == "postgres":
                server = first["mi_postgres_servers"][database["server"]]
                need(server["resource_group"], ["Microsoft.DBforPostgreSQL/flexibleServers/write",
                                                "Microsoft.DBforPostgreSQL/flexibleServers/administrators/write"],
                     "database servers", ("Microsoft.DBforPostgreSQL", "flexibleServers", database["server"]))
            elif database["type"] == "sql":
                server = first["mi_sql_servers"][database["server"]]
                actions = ["Microsoft.Sql/servers/administrators/write"]
                if cutover:
                    actions.append("Microsoft.Sql/servers/azureADOnlyAuthentications/write")
                need(server["resource_group"], actions, "database servers",
                     ("Microsoft.Sql", "servers", database["server"]))
            else:
                account = first["mi_cosmos_accounts"][database["account"]]
                actions = ["Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments/write"]
                if decommission:
                    actions.append("Microsoft.DocumentDB/databaseAccounts/regenerateKey/action")
                if cutover:
                    actions.append("Microsoft.DocumentDB/databaseAccounts/write")
                need(account["resource_group"], actions, "database accounts",
                     ("Microsoft.DocumentDB", "databaseAccounts", database["account"]))
    result = []
    for entry in scopes.values():
        entry["purpose"] = ", ".join(entry["purpose"])
        result.append({k: v for k, v in entry.items() if v is not None})
    return sorted(result, key=lambda e: (e["resource_group"].lower(), e.get("resource_type", ""), e.get("name", "")))


def _about(problem: dict, name: str) -> bool:
    """True when ``problem`` is about variable ``name`` (its own path, or its absence)."""
    return (problem["path"] == "$.%s" % name or problem["path"].startswith("$.%s." % name)
            or problem["path"].startswith("$.%s[" % name) or problem["message"].startswith("%r is a required" % name))


def check(variables_by_host: dict, known_hosts: set, schema: dict | None = None,
          unreadable: list[dict] | None = None) -> dict:
    """Check every application of a run. ``variables_by_host``: host -> its variables (the schema's names only);
    ``unreadable``: problems of variables that could not be read (``{host, path: $.name, message}``), reported in
    place of what their absence would cause.

    Returns ``{problems, applications, servers, write_scopes}``; ``write_scopes`` only when there is no problem.
    """
    if Draft202012Validator is None:
        raise ImportError("the inventory check needs the jsonschema library on the control node "
                          "(pip install jsonschema, see requirements.txt)")
    schema = schema or load_schema()
    plain = {host: _plain(variables) for host, variables in variables_by_host.items()}
    problems = list(unreadable or [])
    skipped = {(p["host"], p["path"][2:]) for p in problems}
    for host in sorted(plain):
        found = schema_problems(host, plain[host], schema) + host_rule_problems(host, plain[host], known_hosts)
        problems.extend(p for p in found if not any(h == host and _about(p, name) for h, name in skipped))
    if not problems:
        problems.extend(run_problems(plain))
    result = {"problems": merge_shared(problems), "applications": len(plain)}
    if not problems:
        servers = {}
        for variables in plain.values():
            for database in variables["mi_databases"]:
                key = SERVER_MAPS[database["type"]][1]
                servers.setdefault(database["type"], set()).add(database[key])
        result["servers"] = {kind: sorted(names) for kind, names in servers.items()}
        result["write_scopes"] = write_scopes(plain)
    return result


def merge_shared(problems: list[dict]) -> list[dict]:
    """One entry for a problem several hosts share (a group variable), its ``host`` naming them all."""
    merged = {}
    for problem in problems:
        merged.setdefault((problem["path"], problem["message"]), []).append(problem["host"])
    result = []
    for (path, message), hosts in merged.items():
        shown = ", ".join(hosts[:5]) + (" and %d more" % (len(hosts) - 5) if len(hosts) > 5 else "")
        result.append({"host": shown, "hosts": hosts, "path": path, "message": message})
    return sorted(result, key=lambda p: (p["hosts"][0], p["path"]))


def format_problems(problems: list[dict]) -> str:
    return "The inventory has %d problem(s); nothing was changed:\n%s" % (len(problems), "\n".join(
        "  %s: %s: %s" % (p["host"], p["path"], p["message"]) for p in problems))
