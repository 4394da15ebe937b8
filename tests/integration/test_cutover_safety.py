"""Cutover never locks out a password user that no application accounts for: one application (ledger, alone on
sql-lab-2), its password user left out of the inventory, then accepted explicitly."""
from __future__ import annotations

import json
import shutil

import yaml

from labrunner import REPO


def ledger_inventory(tmp_path, **group_vars) -> str:
    inventory = tmp_path / "lab"
    shutil.copytree(REPO / "inventories" / "lab", inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    ledger = hosts["all"]["children"]["applications"]["hosts"]["ledger"]
    del ledger["mi_databases"][0]["password_users"]  # the operator forgot it
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    if group_vars:
        with open(inventory / "group_vars" / "all.yml", "a", encoding="utf-8") as all_vars:
            all_vars.write("\n" + yaml.safe_dump(group_vars))
    return str(inventory)


def ledger_report(lab) -> dict:
    report = json.loads((lab.state / "reports" / "migration-report.json").read_text())
    return {app["application"]: app for app in report}["ledger"]


def test_an_unaccounted_password_user_keeps_its_server_off_entra_only(lab, tmp_path):
    run = lab.playbook("playbooks/migrate.yml", "--limit", "ledger", inventory=ledger_inventory(tmp_path / "a"))
    assert run.returncode == 0, run.stdout[-4000:]
    assert "sql-lab-2 stays on SQL authentication: ledgerdb has the password user ledger-sql" in run.stdout
    [db] = ledger_report(lab)["databases"]
    assert db["login_verified_as"] == "mi-ledger"
    assert db["entra_only"] == "unchanged by this run" and db["unknown_password_users"] == ["ledger-sql"]
    assert db["password_login_probe"] == "accepted"
    assert "kept off        the server has password users no application accounts for: ledger-sql" in (
        lab.state / "reports" / "migration-report.txt").read_text()

    accepted = ledger_inventory(tmp_path / "b", mi_cutover_accept_password_users=["ledger-sql"])
    run = lab.playbook("playbooks/migrate.yml", "--limit", "ledger", inventory=accepted)
    assert run.returncode == 0, run.stdout[-4000:]
    [db] = ledger_report(lab)["databases"]
    assert db["entra_only"] is True and db["unknown_password_users"] == []
    assert db["password_login_probe"] == "refused"
