"""playbooks/rollback.yml against a fresh lab: migrate (decommission and cutover) a PostgreSQL, an Azure SQL and a Cosmos
DB application, then roll them back and check the lab itself: passwords and keys accepted again, Vault's connection,
roles and KV secrets back as they were, the "before" code working, check mode writing nothing, a re-run changing nothing.

The inventory is the lab's, trimmed to orders-api and reports (PostgreSQL pg-lab), ledger (Azure SQL sql-lab-2) and
catalog-api (Cosmos DB cosmos-lab): every server and account then has all of its inventory's applications in the play,
so migrate.yml cuts all three over. The lab's two other PostgreSQL applications are not in it: their Vault roles are
retired first (as if an earlier wave had), so that decommission deletes the shared connection with the last role, and
the rollback has to recreate it. The tests of this module run in order on one lab.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import hvac
import psycopg
import pytest
import yaml

from labrunner import REPO, run_module

RECAP_APPS = ("orders-api", "reports", "ledger", "catalog-api")
VMS = {"orders-api": "vm-orders", "reports": "vm-reports", "ledger": "vm-ledger", "catalog-api": "vm-catalog"}
KV_PATHS = {"ledger": "apps/ledger/sql", "catalog-api": "apps/catalog-api/cosmos"}
CONNECTION = "pg-lab-appdb"


def recap(output: str) -> dict:
    import re

    found = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output, re.MULTILINE)
    return {host: {"changed": int(c), "failed": int(f)} for host, _ok, c, _u, f in found}


def flat(text: str) -> str:
    return " ".join(text.split())  # the callback wraps long lines


def root_vault(lab) -> hvac.Client:
    return hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())


def digest(value) -> str:
    """A value compared without ever being printed (pytest shows both sides of a failed ==)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def vault_state(lab) -> dict:
    """What the rollback may change in Vault: roles, the connection, the KV secrets' versions (metadata only)."""
    client = root_vault(lab)
    try:
        roles = sorted(client.secrets.database.list_roles(mount_point="database")["data"]["keys"])
    except hvac.exceptions.InvalidPath:
        roles = []
    try:
        connection = client.secrets.database.read_connection(CONNECTION, mount_point="database")["data"]
    except hvac.exceptions.InvalidPath:
        connection = None
    kv = {}
    for app, path in KV_PATHS.items():
        versions = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point="secret")["data"]["versions"]
        kv[app] = {number: bool(v["deletion_time"]) for number, v in versions.items()}
    return {"roles": roles, "connection": connection, "kv": kv}


def kv_digest(lab, app: str) -> str:
    secret = root_vault(lab).secrets.kv.v2.read_secret_version(path=KV_PATHS[app], mount_point="secret",
                                                               raise_on_deleted_version=True)
    return digest(secret["data"]["data"])


def workload_env(lab, app: str) -> dict:
    return dict(lab.env, AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{lab.base + 3}/vms/{VMS[app]}",
                PYTHONPATH=str(REPO / "lab"))


def demo_app(lab, app: str, secrets: list) -> dict:
    run = subprocess.run([sys.executable, "-m", "azurelab.demo_app", app], env=workload_env(lab, app),
                         capture_output=True, text=True, timeout=60, check=False)
    assert_clean(lab, run.stdout + run.stderr, secrets)
    return json.loads(run.stdout)


def assert_clean(lab, text: str, secrets: list) -> None:
    lab.assert_no_secret_in(text)
    for secret in secrets:
        assert secret not in text, "a KV password leaked"


def server_state(lab) -> dict:
    pg = run_module(lab, "pg_server_entra", check=True, name="pg-lab", resource_group="rg-lab-data")
    sql = run_module(lab, "sql_server_entra", check=True, name="sql-lab-2", resource_group="rg-lab-data")
    cosmos = run_module(lab, "cosmos_account_entra", check=True, account_name="cosmos-lab", resource_group="rg-lab-data")
    replica = run_module(lab, "pg_server_entra", check=True, name="pg-lab-replica", resource_group="rg-lab-data")
    return {"pg": pg["auth_config"]["passwordAuth"], "pg_entra": pg["auth_config"]["activeDirectoryAuth"],
            "pg_replica": replica["auth_config"]["passwordAuth"],
            "sql_entra_only": sql["azure_ad_only_authentication"], "cosmos_keys_off": cosmos["disable_local_auth"]}


def dynamic_user_login(lab, role: str) -> str:
    """A user Vault issues now for ``role``, signed in to pg-lab with its password over TLS: its current_user."""
    creds = root_vault(lab).secrets.database.generate_credentials(name=role, mount_point="database")["data"]
    with psycopg.connect(host="localhost", port=lab.base + 4, dbname="appdb", user=creds["username"],
                         password=creds["password"], sslmode="verify-full",
                         sslrootcert=str(lab.state / "tls" / "ca.pem"), connect_timeout=10) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def tutorial_part3_before(lab, secrets: list) -> subprocess.CompletedProcess:
    """The tutorial's Part 3 "before" code, run on the catalog API's VM with the lab's addresses, the app's AppRole ids
    (from its config and its 0600 secret id file) and KV path; the code goes through stdin, never a command line."""
    config = json.loads((lab.state / "apps" / "catalog-api.json").read_text())
    code = (REPO / "tests" / "integration" / "tutorial" / "part3_step2_before.py").read_text()
    secret_id = pathlib.Path(config["secret_id_file"]).read_text().strip()
    for published, lab_value in (
            ("url='https://vault:8200'", f"url='{config['vault_addr']}'"),
            ("role_id='xxx', secret_id='yyy'", f"role_id='{config['role_id']}', secret_id='{secret_id}'"),
            ("path='cosmos/primary-key'", f"path='{config['vault_kv_path']}', raise_on_deleted_version=True"),
            ("url='https://cosmos-prod.documents.azure.com:443/'", f"url='{config['db_endpoint']}'")):
        assert published in code, published
        code = code.replace(published, lab_value)
    env = dict(workload_env(lab, "catalog-api"), AZURE_COSMOS_HEALTH_CHECK_MAX_RETRIES="0")
    run = subprocess.run([sys.executable, "-"], input=code, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert_clean(lab, run.stdout + run.stderr, secrets + [secret_id])
    return run


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    path = tmp_path_factory.mktemp("inventory") / "lab"
    shutil.copytree(REPO / "inventories" / "lab", path)
    hosts = yaml.safe_load((path / "hosts.yml").read_text())
    apps = hosts["all"]["children"]["applications"]["hosts"]
    hosts["all"]["children"]["applications"]["hosts"] = {name: apps[name] for name in RECAP_APPS}
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    for role in ("billing-worker", "storefront"):
        root_vault(lab).secrets.database.delete_role(role, mount_point="database")
    return str(path)


@pytest.fixture(scope="module")
def before(lab, inventory):
    """The "before" state, read before the migration: KV secret digests and the SQL password (never printed)."""
    client = root_vault(lab)
    password = client.secrets.kv.v2.read_secret_version(path=KV_PATHS["ledger"], mount_point="secret",
                                                        raise_on_deleted_version=True)
    return {"kv": {app: kv_digest(lab, app) for app in KV_PATHS}, "roles": vault_state(lab)["roles"],
            "secrets": [password["data"]["data"]["password"]]}


def test_migrate_decommissions_and_cuts_over(lab, inventory, before):
    assert before["roles"] == ["orders-api", "reports"]
    run = lab.playbook("playbooks/migrate.yml", inventory=inventory)
    assert run.returncode == 0, run.stdout[-4000:]
    assert_clean(lab, run.stdout + run.stderr, before["secrets"])
    assert server_state(lab) == {"pg": "Disabled", "pg_entra": "Enabled", "pg_replica": "Disabled", "sql_entra_only": True,
                                 "cosmos_keys_off": True}
    state = vault_state(lab)
    assert state["roles"] == [] and state["connection"] is None
    assert all(all(state["kv"][app].values()) for app in KV_PATHS)  # every version soft-deleted
    backup = json.loads((lab.state / "backups" / "database" / "connections" / f"{CONNECTION}.json").read_text())
    assert backup["connection_details"]["username"] == "pgadmin" and "password" not in backup["connection_details"]


def test_vault_db_role_restore_errors_say_what_to_fix_and_change_nothing(lab, before):
    common = dict(url=lab.env["VAULT_ADDR"], token_file=str(lab.state / "openbao" / "token"),
                  backup_dir=str(lab.state / "backups"), state="present")
    missing = run_module(lab, "vault_db_role", name="payroll", **common)
    assert missing["failed"] and "cannot restore role payroll: no readable backup at" in missing["msg"], missing
    unreadable = run_module(lab, "vault_db_role", name="orders-api", connection_password_file="/nonexistent/pw",
                            **common)
    assert unreadable["failed"], unreadable
    assert ("connection pg-lab-appdb is gone and must be recreated with its administrator's password (pgadmin): "
            "cannot read the connection password file /nonexistent/pw") in unreadable["msg"]
    planned = run_module(lab, "vault_db_role", check=True, name="orders-api", **common)  # no password: a warning
    assert not planned["failed"] and planned["changed"], planned
    assert planned["operations"] == [f"POST database/config/{CONNECTION} (from its backup; Vault verifies the login)",
                                     "POST database/roles/orders-api"]
    assert "the real run needs it" in json.dumps(planned["warnings"])
    unset = run_module(lab, "vault_db_role", name="orders-api", connection_password_env="MI_TEST_UNSET_PASSWORD",
                       **common)
    assert unset["failed"] and "the environment variable MI_TEST_UNSET_PASSWORD is empty or not set" in unset["msg"]
    # The right password, but PostgreSQL still refuses passwords: Vault verifies the login and refuses the connection.
    refused = run_module(lab, "vault_db_role", name="orders-api", connection_password_env="MI_TEST_PASSWORD",
                         env={"MI_TEST_PASSWORD": (lab.state / "openbao" / f"{CONNECTION}.password").read_text()},
                         **common)
    assert refused["failed"], refused
    assert refused["msg"].startswith(f"Vault refused POST database/config/{CONNECTION}"), refused["msg"]
    assert "password_auth=true" in refused["remedy"]
    assert refused["operations"] == [f"POST database/config/{CONNECTION} (from its backup; Vault verifies the login)"]
    state = vault_state(lab)
    assert state["roles"] == [] and state["connection"] is None


def test_check_mode_writes_nothing_and_says_what_it_would_do(lab, inventory, before):
    writes, vault = lab.arm_counters()["writes"], vault_state(lab)
    run = lab.playbook("playbooks/rollback.yml", "--check", "--diff", inventory=inventory)
    assert run.returncode == 0, run.stdout[-4000:]
    assert_clean(lab, run.stdout + run.stderr, before["secrets"])
    assert lab.arm_counters()["writes"] == writes
    assert vault_state(lab) == vault
    assert server_state(lab)["pg"] == "Disabled"
    text = flat(run.stdout)
    for planned in ("- passwordAuth: Disabled + passwordAuth: Enabled",
                    "- azure_ad_only_authentication: true + azure_ad_only_authentication: false",
                    "- disable_local_auth: true", "+ disable_local_auth: false",
                    f"- connection: null - role: null + connection: {CONNECTION} + connection_definition:",
                    "- v1: deleted + v1: live",
                    "would put the demo app orders-api back in vault mode (its AppRole role id, a new secret id) and "
                    "run it with its dynamic user from Vault",
                    "run it with its password from Vault KV", "run it with its key from Vault KV"):
        assert planned in text, planned
    assert json.loads((lab.state / "apps" / "orders-api.json").read_text())["mode"] == "identity"


def test_rollback_of_one_application_says_who_else_gets_passwords_back(lab, inventory, before):
    run = lab.playbook("playbooks/rollback.yml", "--limit", "orders-api", inventory=inventory)
    assert run.returncode == 0, run.stdout[-4000:]
    assert_clean(lab, run.stdout + run.stderr, before["secrets"])
    assert ("passwords are on again for all of pg-lab: its applications reports are not rolled back but could now "
            "use a password") in flat(run.stdout)
    assert server_state(lab) == {"pg": "Enabled", "pg_entra": "Enabled", "pg_replica": "Enabled", "sql_entra_only": True,
                                 "cosmos_keys_off": True}  # other servers untouched
    state = vault_state(lab)
    assert state["roles"] == ["orders-api"] and state["connection"] is not None
    result = demo_app(lab, "orders-api", before["secrets"])
    assert result["ok"] and result["mode"] == "vault" and result["connected_as"].startswith("v-"), result
    assert result["connected_as"] != "mi-orders-api"


def test_rollback_restores_passwords_keys_vault_and_the_before_code(lab, inventory, before):
    run = lab.playbook("playbooks/rollback.yml", inventory=inventory)
    assert run.returncode == 0, run.stdout[-4000:]
    assert_clean(lab, run.stdout + run.stderr, before["secrets"])
    assert server_state(lab) == {"pg": "Enabled", "pg_entra": "Enabled", "pg_replica": "Enabled", "sql_entra_only": False,
                                 "cosmos_keys_off": False}

    state = vault_state(lab)
    assert state["roles"] == before["roles"]
    backups = lab.state / "backups" / "database"
    connection = json.loads((backups / "connections" / f"{CONNECTION}.json").read_text())
    assert state["connection"] == {k: v for k, v in connection.items() if k not in ("name", "mount")}
    client = root_vault(lab)
    for role in before["roles"]:
        saved = json.loads((backups / "roles" / f"{role}.json").read_text())
        current = client.secrets.database.read_role(role, mount_point="database")["data"]
        assert {k: current.get(k) for k in saved if k not in ("name", "mount")} == \
            {k: v for k, v in saved.items() if k not in ("name", "mount")}
    assert kv_digest(lab, "ledger") == before["kv"]["ledger"]  # the password the contained user still has
    assert kv_digest(lab, "catalog-api") != before["kv"]["catalog-api"]  # the key regenerated at decommission

    # A user Vault issues now signs in with its password; each application's "before" code works again.
    assert dynamic_user_login(lab, "reports").startswith("v-")
    for app in RECAP_APPS:
        result = demo_app(lab, app, before["secrets"])
        assert result["ok"] and result["mode"] == "vault", result
    assert demo_app(lab, "ledger", before["secrets"])["connected_as"] == "ledger-sql"
    assert demo_app(lab, "catalog-api", before["secrets"])["connected_as"] == "key"
    tutorial = tutorial_part3_before(lab, before["secrets"])
    assert tutorial.returncode == 0, tutorial.stderr[-3000:]
    # Entra stays on: the identities still sign in too.
    client_id = run_module(lab, "azure_mi", name="mi-reports", resource_group="rg-lab-apps")["identity"]["client_id"]
    identity = run_module(lab, "mi_login_check", check=True, host="localhost", port=lab.base + 4, database="appdb",
                          user="mi-reports", query="SELECT 1", auth_source="managed_identity", client_id=client_id,
                          env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{lab.base + 3}/vms/vm-reports"})
    assert not identity["failed"] and identity["connected_as"] == "mi-reports", identity


def test_a_second_rollback_changes_nothing(lab, inventory, before):
    writes, vault = lab.arm_counters()["writes"], vault_state(lab)
    run = lab.playbook("playbooks/rollback.yml", inventory=inventory)
    assert run.returncode == 0, run.stdout[-4000:]
    summary = recap(run.stdout)
    assert set(summary) == set(RECAP_APPS)
    assert all(host["changed"] == 0 and host["failed"] == 0 for host in summary.values()), summary
    assert lab.arm_counters()["writes"] == writes
    assert vault_state(lab) == vault
