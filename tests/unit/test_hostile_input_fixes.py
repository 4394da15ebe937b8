"""The fixes the hostile-input corpus (tests/hostile) led to, each checked without a lab.

* Messages name the option and repeat a bad value only in a bounded form (``values.shown``): a 10,000-character
  value, a line break, a NUL or a right-to-left mark is never printed as it is.
* Values that must be refused are refused before any request: resource names with ``/``, ``?``, ``%`` or control
  characters, resource groups that cannot exist, nil GUIDs, PostgreSQL hosts that libpq would read as a list, names
  with NUL (which a driver would cut: another database), Vault role names Vault cannot route, KV paths with ``.``
  segments, RBAC actions with a line break (which a wildcard matched), Job images and environment names with control
  characters, watch windows of years.
* A failure names the option that holds a resource group or subscription ARM does not know; ansible-core's own
  message for a value that cannot be a list of dicts names the option.
* Nothing is half done: aks_federation checks the identity before turning the cluster's issuer on, azure_mi_assignment
  checks the identities before updating the workload, azure_mi does not try to create an identity in a resource group
  that does not exist, vault_db_role checks backup_dir before asking Vault anything.
"""
import contextlib
import importlib
import io
import json
import types

import pytest
from ansible.module_utils.testing import patch_module_args
from azure.core.exceptions import ResourceNotFoundError

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import (
    arm, base, diagnose, kube, password_users, postgres, sqlserver, values, vault)

LONG = "x" * 10_000
SUBSCRIPTION = "2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23"
AZURE = {"subscription_id": SUBSCRIPTION, "tenant_id": "7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11"}
PG = {"host": "localhost", "port": 5432, "admin_user": "mi-operator"}
SQL = {"host": "localhost", "port": 1433, "database": "appdb"}
VAULT = {"url": "http://127.0.0.1:1", "token_file": "/nonexistent/token"}


def module_code(name):
    """A module of this collection, imported (its helpers are tested as well as its main())."""
    return importlib.import_module("ansible_collections.csa_inabox.managed_identity.plugins.modules." + name)


def inventory_utils():
    return importlib.import_module("ansible_collections.csa_inabox.managed_identity.plugins.plugin_utils.inventory")


def run(name, args, check=False):
    """Module ``name``'s main() in this process with ``args``; its result (it must fail or exit before any request
    that the test does not fake)."""
    loaded = module_code(name)
    out = io.StringIO()
    with patch_module_args(dict(args, _ansible_check_mode=check)), contextlib.redirect_stdout(out):
        with pytest.raises(SystemExit):
            loaded.main()
    return json.loads(out.getvalue().strip().splitlines()[-1])


def refused(name, args, field, check=False):
    result = run(name, args, check)
    assert result.get("failed"), result
    assert field in result["msg"], result["msg"]
    assert len(result["msg"]) < 2000 and LONG not in result["msg"]
    return result["msg"]


# --- the helpers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, shown", [
    ("pg-typo", "'pg-typo'"),
    ("a\nb", "'a\\nb'"),
    ("a\x00b", "'a\\x00b'"),
    ("app\u202e", "'app\\u202e'"),
    (LONG, "'" + "x" * 48 + "'... (10000 characters)"),
    (70000, "70000"),
])
def test_a_bad_value_is_shown_bounded_and_escaped(value, shown):
    assert values.shown(value) == shown


def test_clipped_keeps_a_short_target_as_it_is():
    assert values.clipped("secret/apps/ledger/sql") == "secret/apps/ledger/sql"
    assert values.clipped("secret/" + LONG).endswith("(10007 characters)")
    assert values.clipped("a\nb") == "'a\\nb'"


def test_range_problem_names_the_option():
    assert values.range_problem("timeout", 5, 0, 10) is None
    assert values.range_problem("timeout", -1, 0, 10, " seconds") == "timeout must be between 0 and 10 seconds, got -1"


@pytest.mark.parametrize("value", ["vm\x00", "vm?api-version=1", "vm%2F..", 'pg"&x', "a<b", "x" * 261, "vm\n"])
def test_resource_names_with_url_or_control_characters_are_refused(value):
    problem = arm.resource_name_problem("name", value)
    assert problem and problem.startswith("name ") and len(problem) < 300


@pytest.mark.parametrize("value, ok", [("rg-lab-apps", True), ("rg_(prod).1", True), ("ünï-rg", True),
                                       ("rg/../x", False), ("rg.", False), ("", False), ("r" * 91, False),
                                       ("rg\n", False), ("rg;x", False)])
def test_resource_group_names(value, ok):
    assert (arm.resource_group_problem("resource_group", value) is None) == ok


@pytest.mark.parametrize("value, problem", [
    ("5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", None),
    ("00000000-0000-0000-0000-000000000000", "object_id is the nil GUID"),
    ("5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5\u0430", "is not a GUID"),  # a Cyrillic a
    (LONG, "is not a GUID"),
])
def test_guid_problem(value, problem):
    found = base.guid_problem("object_id", value)
    assert (found is None) if problem is None else (problem in found and len(found) < 300)


def test_error_text_is_bounded_but_the_remedy_sees_all_of_it():
    exc = ValueError("syntax error at or near " + LONG)
    assert len(diagnose.error_text(exc)) < 1100 and "(9024 more characters)" in diagnose.error_text(exc)
    assert len(diagnose.error_text(exc, limit=None)) > 10_000


def test_argument_errors_name_the_option_for_a_string_where_dicts_are_expected():
    msg = refused("pg_entra_principal", dict(PG, role="r", object_id=base.NIL_GUID, database="appdb",
                                             grants="SELECT ON orders"), "grants")
    assert "Elements value for option 'grants'" in msg


@pytest.mark.parametrize("text, field", [
    ("ResourceGroupNotFound: Resource group 'rg-nope' could not be found.", "cluster_resource_group 'rg-nope' "
                                                                            "does not exist in subscription"),
    ("SubscriptionNotFound: The subscription 'x' could not be found.", "subscription_id '%s' is not a subscription"
                                                                       % SUBSCRIPTION),
    ("ResourceNotFound: The Resource 'x' was not found.", None),
])
def test_a_missing_group_or_subscription_is_named_by_its_option(text, field):
    with patch_module_args(dict(AZURE, cluster_resource_group="rg-nope", identity_resource_group="rg-lab-apps")):
        mod = base.MIModule(dict(cluster_resource_group=dict(type="str"), identity_resource_group=dict(type="str")))
    named = mod._named(text, "could not read AKS cluster")  # pylint: disable=protected-access
    assert named.startswith(field) if field else named == "could not read AKS cluster"


@pytest.mark.parametrize("value, ok", [("orders-api", True), ("fleet_005.pg", True), ("orders-api\x00", False),
                                       ("orders-api/../reports", False), ("orders-api\u202e", False),
                                       ("orders api", False), ("-lead", False), ("x" * 256, False)])
def test_vault_role_names(value, ok):
    assert (vault.name_problem("name", value) is None) == ok


def test_vault_paths_are_shown_bounded_and_the_mount_is_quoted_in_the_url():
    assert len(vault.path_problem("path", "apps/" + LONG + "/./x")) < 300
    asked = []
    client = types.SimpleNamespace(adapter=types.SimpleNamespace(get=lambda url: asked.append(url) or {}))
    assert vault.kv_version(client, "secret?version=1") is None
    assert asked == ["/v1/sys/internal/ui/mounts/secret%3Fversion%3D1"]


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"host": "/var/run/postgresql"}, None),
    ({"host": "evil.example,localhost"}, "host 'evil.example,localhost' must be one host name"),
    ({"host": "localhost sslmode=disable"}, "host 'localhost sslmode=disable' must be one host name"),
    ({"host": LONG}, "(10000 characters) must be one host name"),
    ({"host": "a" * 64 + ".example"}, "must be one host name"),  # a label libpq's resolver would crash on
    ({"port": 0}, "port must be between 1 and 65535, got 0"),
    ({"port": -1}, "port must be between 1 and 65535, got -1"),
    ({"connect_timeout": -3}, "connect_timeout must be between 1 and 3600 seconds, got -3"),
    ({"admin_user": "mi-operator\x00"}, "admin_user 'mi-operator\\x00' must be 1 to 63 bytes with no NUL"),
    ({"admin_user": "r" * 64}, "must be 1 to 63 bytes"),
])
def test_postgres_connection_options(change, problem):
    params = dict(dict(PG, ssl_mode="verify-full", connect_timeout=15), **change)
    found = postgres.option_problem(params, ("admin_user",))
    assert found is None if problem is None else problem in found, found


@pytest.mark.parametrize("database", ["appdb\x00", "appdb\x00ledgerdb", LONG, ""])
def test_a_sql_database_a_driver_would_cut_or_refuse_is_named(database):
    params = dict(SQL, database=database, connect_timeout=30)
    problem = sqlserver.option_problem(params)
    assert problem.startswith("database ") and len(problem) < 300


def test_sessions_watch_at_most_a_day():
    assert password_users.window_problem({"window_seconds": 60, "poll_seconds": 2}) is None
    assert password_users.window_problem({"window_seconds": 10 ** 12, "poll_seconds": 2}).startswith("window_seconds")
    assert password_users.window_problem({"window_seconds": 0, "poll_seconds": 0}).startswith("poll_seconds")


def test_kubernetes_names_are_shown_bounded():
    assert len(kube.name_problem("service_account", LONG)) < 300


# --- Azure (ARM) and Kubernetes modules refuse before any request ----------------------------------------------------

@pytest.mark.parametrize("name, args, field", [
    ("azure_mi", dict(AZURE, name=LONG, resource_group="rg-lab-apps"), "name"),
    ("azure_mi", dict(AZURE, name="mi-x", resource_group="rg-lab-apps/../rg-lab-ops"), "resource_group"),
    ("azure_mi", dict(AZURE, name="mi-x", resource_group="rg-lab-apps", location="eastus2'; DROP --"), "location"),
    ("azure_mi_assignment", dict(AZURE, name="vm-orders", resource_group="rg-lab-apps", identity_ids=[
        "/subscriptions/%s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi\n" % SUBSCRIPTION]),
     "identity_ids"),
    ("aks_federation", dict(AZURE, cluster_name="aks-prod", cluster_resource_group="rg-aks", identity_name="mi-x",
                            identity_resource_group="rg-lab-apps", namespace="ns", service_account="sa",
                            write_timeout=-1), "write_timeout"),
    ("k8s_workload_identity", dict(AZURE, cluster_name="aks-prod", cluster_resource_group="rg-aks", namespace="ns",
                                   service_account="sa", identity_client_id=base.NIL_GUID), "identity_client_id"),
    ("k8s_login_check", dict(AZURE, cluster_name="aks-prod", cluster_resource_group="rg-aks", namespace="ns",
                             service_account="sa", image="img\n--privileged", login_check={}), "image"),
    ("k8s_login_check", dict(AZURE, cluster_name="aks-prod", cluster_resource_group="rg-aks", namespace="ns",
                             service_account="sa", image="img", login_check={}, environment={"A\nB": "x"}),
     "environment"),
    ("pg_server_entra", dict(AZURE, name="pg-lab", resource_group="rg-lab-data", administrators=[
        {"object_id": base.NIL_GUID, "principal_name": "dana"}]), "administrators[0].object_id"),
    ("pg_server_entra", dict(AZURE, name="pg-lab", resource_group="rg-lab-data", administrators=[
        {"object_id": "5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", "principal_name": "dana\nx"}]),
     "administrators[0].principal_name"),
    ("pg_server_entra", dict(AZURE, name='pg-lab"?x', resource_group="rg-lab-data"), "name"),
    ("sql_server_entra", dict(AZURE, name="sql-lab", resource_group="rg-lab-data",
                              administrator={"login": "a", "sid": base.NIL_GUID}), "administrator.sid"),
    ("sql_server_entra", dict(AZURE, name="sql-lab", resource_group="rg-lab-data",
                              administrator={"login": "a\x00", "sid": "9c2d4e6f-1a3b-4c5d-8e7f-6a5b4c3d2e1f"}),
     "administrator.login"),
    ("sql_server_entra", dict(AZURE, name="sql-lab/../sql-lab-2", resource_group="rg-lab-data"), "name"),
    ("cosmos_rbac", dict(AZURE, account_name="cosmos-lab\n", resource_group="rg-lab-data",
                         principal_id="5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", role="Data Reader"), "account_name"),
    ("cosmos_rbac", dict(AZURE, account_name="cosmos-lab", resource_group="rg-lab-data", principal_id=LONG,
                         role="Data Reader"), "principal_id"),
    ("cosmos_account_entra", dict(AZURE, account_name="cosmos-lab", resource_group="rg-lab-data",
                                  applications_using_keys=[LONG]), "applications_using_keys"),
    ("cosmos_account_entra", dict(AZURE, account_name=LONG, resource_group="rg-lab-data"), "account_name"),
    ("azure_access_check", dict(AZURE, scopes=[{"resource_group": "rg", "actions": ["Microsoft.Sql/servers/write\nok"]}]),
     "scopes[0].actions[0]"),
])
def test_an_arm_or_kubernetes_module_refuses_before_any_request(name, args, field):
    refused(name, args, field)


@pytest.mark.parametrize("action, ok", [("Microsoft.Sql/servers/administrators/write", True), ("*/read", True),
                                        ("Microsoft.Web/sites/config/list/action", True),
                                        ("Microsoft.Sql/servers/administrators/write\nok", False),
                                        ("Microsoft.Sql/servers/x y/write", False), (LONG + "/write", False),
                                        ("*", False)])
def test_rbac_actions(action, ok):
    assert bool(module_code('azure_access_check').ACTION.fullmatch(action) and len(action) <= module_code('azure_access_check').ACTION_MAX) == ok


# --- nothing is half done ------------------------------------------------------------------------------------------

class NotFound(ResourceNotFoundError):
    """What the Azure SDK raises for a 404: ``status_code`` and ARM's ``error.code``."""

    def __init__(self, code, message):
        super().__init__(message=message)
        self.status_code = 404
        self.error = types.SimpleNamespace(code=code, message=message)


class Recorder:
    """An SDK operations group: named calls are recorded; ``answers`` give their results (an exception is raised)."""

    def __init__(self, calls, prefix, **answers):
        self._calls, self._prefix, self._answers = calls, prefix, answers

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self._calls.append("%s.%s" % (self._prefix, name))
            answer = self._answers.get(name)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return call


@pytest.fixture
def arm_calls(monkeypatch):
    """Fake ARM clients for MIModule (``clients`` and ``subscription_id``); the calls made, in order."""
    calls, fakes = [], {}
    clients = types.SimpleNamespace()
    monkeypatch.setattr(base.MIModule, "clients", property(lambda self: clients))
    monkeypatch.setattr(base.MIModule, "subscription_id", property(lambda self: SUBSCRIPTION))

    def fake(client, group, **answers):
        setattr(fakes.setdefault(client, types.SimpleNamespace()), group, Recorder(calls, group, **answers))
        setattr(clients, client, fakes[client])
    return calls, fake


def test_federation_checks_the_identity_before_turning_the_issuer_on(arm_calls):
    calls, fake = arm_calls
    fake("aks", "managed_clusters", get={"properties": {"oidcIssuerProfile": {"enabled": False}}})
    fake("msi", "user_assigned_identities", get=NotFound("ResourceNotFound", "The Resource 'mi-x' was not found."))
    msg = refused("aks_federation", dict(AZURE, cluster_name="aks-prod", cluster_resource_group="rg-aks",
                                         identity_name="mi-x", identity_resource_group="rg-lab-apps", namespace="ns",
                                         service_account="sa"), "identity_name")
    assert "nothing was changed" in msg
    assert calls == ["managed_clusters.get", "user_assigned_identities.get"]  # no begin_create_or_update


def test_assignment_checks_the_identities_before_updating_the_workload(arm_calls):
    calls, fake = arm_calls
    fake("compute", "virtual_machines", get={"identity": {"type": "None"}})
    fake("msi", "user_assigned_identities", get=NotFound("ResourceNotFound", "not found"))
    missing = "/subscriptions/%s/resourceGroups/rg-lab-apps/providers/Microsoft.ManagedIdentity/" \
              "userAssignedIdentities/mi-nope" % SUBSCRIPTION
    msg = refused("azure_mi_assignment", dict(AZURE, name="vm-orders", resource_group="rg-lab-apps",
                                              identity_ids=[missing]), "identity_ids")
    assert "does not exist; nothing was changed" in msg
    assert calls == ["virtual_machines.get", "user_assigned_identities.get"]  # no begin_update


def test_an_identity_is_not_created_in_a_resource_group_that_does_not_exist(arm_calls):
    calls, fake = arm_calls
    fake("msi", "user_assigned_identities",
         get=NotFound("ResourceGroupNotFound", "Resource group 'rg-nope' could not be found."))
    msg = refused("azure_mi", dict(AZURE, name="mi-x", resource_group="rg-nope", location="eastus2"), "resource_group")
    assert msg.startswith("resource_group 'rg-nope' does not exist in subscription")
    assert calls == ["user_assigned_identities.get"]  # no create_or_update


def test_an_identity_that_is_not_there_yet_is_still_created(arm_calls):
    calls, fake = arm_calls
    created = types.SimpleNamespace(id="/x/mi-x", name="mi-x", location="eastus2", tags={}, client_id="c",
                                    principal_id="p", tenant_id="t")
    fake("msi", "user_assigned_identities", get=NotFound("ResourceNotFound", "The Resource 'mi-x' was not found."),
         create_or_update=created)
    result = run("azure_mi", dict(AZURE, name="mi-x", resource_group="rg-lab-apps", location="eastus2"))
    assert result["changed"] and not result.get("failed"), result
    assert calls == ["user_assigned_identities.get", "user_assigned_identities.create_or_update"]


# --- database modules refuse before any token or connection ----------------------------------------------------------

@pytest.mark.parametrize("name, args, field", [
    ("pg_entra_principal", dict(AZURE, role=LONG, object_id="5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", database="appdb",
                                **PG), "role"),
    ("pg_entra_principal", dict(AZURE, role="r", object_id=base.NIL_GUID, database="appdb", **PG), "object_id"),
    ("pg_entra_principal", dict(AZURE, role="r", object_id="5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", database="appdb",
                                **dict(PG, host="evil.example,localhost")), "host"),
    ("pg_sessions_info", dict(AZURE, users=["u"], window_seconds=10 ** 12, **PG), "window_seconds"),
    ("pg_sessions_info", dict(AZURE, user_regex=["(unclosed"], **PG), "user_regex"),
    ("pg_users_info", dict(AZURE, **dict(PG, admin_user="mi-operator\x00")), "admin_user"),
    ("pg_users_info", dict(AZURE, known_user_regex=["(" + LONG], **PG), "known_user_regex"),
    ("sql_entra_user", dict(AZURE, name=LONG, principal_client_id="3f2504e0-4f89-41d3-9a0c-0305e82c3301", **SQL),
     "name"),
    ("sql_sessions_info", dict(AZURE, users=["u"], **dict(SQL, database="appdb\x00ledgerdb")), "database"),
    ("sql_sessions_info", dict(AZURE, users=["u"], window_seconds=10 ** 9, **SQL), "window_seconds"),
    ("sql_users_info", dict(AZURE, **dict(SQL, database="appdb\x00")), "database"),
    ("mi_login_check", dict(AZURE, host=LONG, database="appdb", user="u"), "host"),
    ("mi_login_check", dict(AZURE, host="localhost", port=0, database="appdb", user="u"), "port"),
    ("mi_login_check", dict(AZURE, host="localhost", database="appdb", user=LONG), "user"),
    ("mi_login_check", dict(AZURE, database_type="sql", host="localhost", database="appdb", expected_user="u",
                            query="SELECT 1; DROP USER [dbo]"), "query is refused"),
])
def test_a_database_module_refuses_before_connecting(name, args, field):
    refused(name, args, field)


# --- Vault modules, secrets_scan and inventory_check -----------------------------------------------------------------

@pytest.mark.parametrize("name, args, field", [
    ("vault_kv_cosmos_key", dict(AZURE, account_name="cosmos-lab", resource_group="rg-lab-data", path="apps/x",
                                 field="key\x00", **VAULT), "field"),
    ("vault_db_role", dict(VAULT, name="orders-api\u202e", backup_dir="/tmp/b"), "name"),
    ("vault_db_role", dict(VAULT, name="orders-api", mount="data\nbase", backup_dir="/tmp/b"), "mount"),
    ("vault_db_role", dict(VAULT, name="orders-api", backup_dir="/proc/version"), "backup_dir"),
    ("vault_kv_secret", dict(VAULT, path="apps/./ledger/sql", state="absent"), "path"),
    ("vault_kv_secret", dict(VAULT, path="apps/ledger/sql\x00", state="absent"), "path"),
    ("vault_kv_secret", dict(VAULT, mount="../secret", path="apps/ledger/sql", state="absent"), "mount"),
    ("secrets_scan", dict(paths=["/tmp\x00/../etc"]), "paths[0]"),
    ("secrets_scan", dict(ignore=[{"rule": LONG, "reason": "r"}], paths=["/nonexistent"]), "ignore"),
    ("secrets_scan", dict(kubernetes_objects=[{"kind": "Deployment", "namespace": "ns", "name": LONG}]),
     "kubernetes_objects[0].name"),
])
def test_a_vault_or_scan_module_refuses_before_any_request(name, args, field):
    refused(name, args, field)


def test_backup_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    assert module_code('vault_db_role').backup_dir_problem(str(tmp_path / "new" / "backups")) is None
    assert "is not a folder" in module_code('vault_db_role').backup_dir_problem(str(tmp_path / "file"))
    assert "is not a folder" in module_code('vault_db_role').backup_dir_problem(str(tmp_path / "file" / "below"))


def test_the_inventory_check_does_not_repeat_a_huge_host():
    assert inventory_utils().shown(LONG) == "a string of 10000 characters"
