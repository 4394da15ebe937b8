"""Cutover is safe per server: it rolls one server at a time and stops at the first that fails, it never locks out a
password user that the inventory does not know (Azure SQL and PostgreSQL, until accepted explicitly), an application
that fails keeps only its own server out, and a PostgreSQL read replica is switched with its primary.

The tests share one lab and run in order: each leaves the servers as the next expects them."""
from __future__ import annotations

import json
import shutil

import psycopg
import yaml

from labrunner import REPO, run_module
from test_migrate_playbook import COSMOS_APPS, PG_APPS, recap, superuser

SERVERS = "mi_cutover_servers"  # a limited run names the cutover play's group as well


def inventory_copy(tmp_path, edit=None, **group_vars) -> str:
    inventory = tmp_path / "lab"
    shutil.copytree(REPO / "inventories" / "lab", inventory)
    if edit:
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
        edit(hosts["all"]["children"]["applications"]["hosts"])
        (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    if group_vars:
        with open(inventory / "group_vars" / "all.yml", "a", encoding="utf-8") as all_vars:
            all_vars.write("\n" + yaml.safe_dump(group_vars))
    return str(inventory)


def forget_ledger_password_user(apps):
    del apps["ledger"]["mi_databases"][0]["password_users"]  # the operator forgot it


def ledger_inventory(tmp_path, **group_vars) -> str:
    return inventory_copy(tmp_path, forget_ledger_password_user, **group_vars)


def limit(*apps) -> str:
    return ",".join([*apps, SERVERS])


def report(lab) -> dict:
    return {app["application"]: app for app in
            json.loads((lab.state / "reports" / "migration-report.json").read_text())}


def ledger_report(lab) -> dict:
    return report(lab)["ledger"]


def pg_auth(lab, server) -> dict:
    return run_module(lab, "pg_server_entra", name=server, resource_group="rg-lab-data")


def entra_only(lab, server) -> bool:
    return run_module(lab, "sql_server_entra", name=server, resource_group="rg-lab-data")["azure_ad_only_authentication"]


def keys_off(lab, account) -> bool:
    return run_module(lab, "cosmos_account_entra", account_name=account, resource_group="rg-lab-data")[
        "disable_local_auth"]


def test_a_server_that_fails_its_cutover_stops_the_roll_before_the_next_batch(lab, tmp_path):
    # ledger's sql-lab-2 is the first server of the roll, cosmos-lab the second: Entra-only fails on sql-lab-2.
    lab.lab_api("POST", "faults", {"method": "PUT", "path": "sql-lab-2/azureADOnlyAuthentications", "status": 400,
                                   "count": 1, "message": "Injected by the test: the switch fails."})
    run = lab.playbook("playbooks/migrate.yml", "--limit", limit("ledger", *COSMOS_APPS))
    assert run.returncode != 0
    hosts = recap(run.stdout)
    assert hosts["sql/sql-lab-2"]["failed"] == 1
    assert "cosmos/cosmos-lab" not in hosts  # its batch never started
    assert "Injected by the test: the switch fails." in run.stdout
    assert entra_only(lab, "sql-lab-2") is False and keys_off(lab, "cosmos-lab") is False
    lab.assert_no_secret_in(run.stdout + run.stderr)


def test_an_unaccounted_password_user_keeps_its_server_off_entra_only(lab, tmp_path):
    run = lab.playbook("playbooks/migrate.yml", "--limit", limit("ledger"), inventory=ledger_inventory(tmp_path / "a"))
    assert run.returncode == 0, run.stdout[-4000:]
    assert "sql-lab-2 stays on SQL authentication: ledgerdb has the password user ledger-sql" in " ".join(
        run.stdout.split())
    [db] = ledger_report(lab)["databases"]
    assert db["login_verified_as"] == "mi-ledger"
    assert db["entra_only"] == "unchanged by this run" and db["unknown_password_users"] == ["ledger-sql"]
    assert db["password_login_probe"] == "accepted"
    assert "kept off        the server has password users no application accounts for: ledger-sql" in (
        lab.state / "reports" / "migration-report.txt").read_text()

    accepted = ledger_inventory(tmp_path / "b", mi_cutover_accept_password_users=["ledger-sql"])
    run = lab.playbook("playbooks/migrate.yml", "--limit", limit("ledger"), inventory=accepted)
    assert run.returncode == 0, run.stdout[-4000:]
    [db] = ledger_report(lab)["databases"]
    assert db["entra_only"] is True and db["unknown_password_users"] == []
    assert db["password_login_probe"] == "refused"


def test_a_failed_application_and_an_unknown_postgres_password_user_keep_only_their_server_out(lab, tmp_path):
    # A BI tool's login, made by a DBA on the real server: nobody in the inventory knows it.
    with superuser(lab) as conn:
        conn.execute("CREATE ROLE bi_reader LOGIN PASSWORD 'Bi-Reader-Pw-0001'")

    def break_reports(apps):
        apps["reports"]["mi_databases"][0]["grants"][1]["schema"] = "analytics"  # an operator's typo

    run = lab.playbook("playbooks/migrate.yml", "--limit", limit(*PG_APPS, *COSMOS_APPS),
                       inventory=inventory_copy(tmp_path / "a", break_reports))
    assert run.returncode != 0
    assert recap(run.stdout)["reports"]["failed"] == 1
    said = " ".join(run.stdout.split())
    assert ("pg-lab stays on passwords: applications of it did not pass verify and evidence in this run (or were not "
            "in it): reports; it has the password user bi_reader, which the inventory does not know (list it in "
            "password_users of the application or server that uses it, or accept it in "
            "mi_cutover_accept_password_users)") in said
    assert pg_auth(lab, "pg-lab")["auth_config"]["passwordAuth"] == "Enabled"
    assert pg_auth(lab, "pg-lab-replica")["auth_config"]["passwordAuth"] == "Enabled"
    # cosmos-lab, whose applications all passed, is cut over in the same run.
    assert keys_off(lab, "cosmos-lab") is True
    apps = report(lab)
    assert apps["reports"]["failed"] is True
    [db] = apps["orders-api"]["databases"]
    assert db["password_auth"] == "unchanged by this run" and db["password_login_probe"] == "accepted"
    assert apps["catalog-api"]["databases"][0]["local_auth_disabled"] is True


def test_an_accepted_postgres_password_user_lets_the_server_and_its_replica_go_passwordless(lab, tmp_path):
    run = lab.playbook("playbooks/migrate.yml", "--limit", limit(*PG_APPS),
                       inventory=inventory_copy(tmp_path / "a", mi_cutover_accept_password_users=["bi_reader"]))
    assert run.returncode == 0, run.stdout[-4000:]
    primary, replica = pg_auth(lab, "pg-lab"), pg_auth(lab, "pg-lab-replica")
    assert primary["auth_config"]["passwordAuth"] == "Disabled" and primary["replicas"][0]["name"] == "pg-lab-replica"
    assert replica["auth_config"] == {**primary["auth_config"]}  # Entra on, passwords off, same tenant
    assert replica["replication_role"] == "AsyncReplica" and replica["source_server_id"].endswith("/pg-lab")
    [db] = report(lab)["orders-api"]["databases"]
    assert db["password_auth"] == "Disabled" and db["password_login_probe"] == "refused"
    # The accepted user is locked out now, like every password user.
    try:
        psycopg.connect(host="localhost", port=lab.base + 4, dbname="postgres", user="bi_reader",
                        password="Bi-Reader-Pw-0001", sslmode="require", connect_timeout=10).close()
        locked_out = False
    except psycopg.OperationalError:
        locked_out = True
    assert locked_out
