"""Issue 6's "Done when" on a lab fleet of 20 applications across the four parts (``python -m azurelab fleet``):
one application whose grant the database takes away keeps its server out of cutover while the other servers are cut
over, a password user the inventory does not know keeps its server on passwords with a message naming it, and
``migrate.yml`` killed at three points (identity, grant, cutover) converges with a plain re-run.

The tests of this module run in order on one lab (pytest keeps a file's tests in order; ``--dist loadfile`` keeps
them on one worker), each one continuing the story of the one before:

1. run 1, killed (SIGKILL of ansible-playbook and every process under it) in the identity phase, some attachments
   done;
2. run 2, killed (SIGTERM) in the grant phase, some PostgreSQL principals made and others on their way;
3. run 3, killed (SIGKILL) in cutover, one server switched and the others not yet;
4. run 4 runs to the end: ``fleet-005-pg``'s verify fails with PostgreSQL's "permission denied" (its grant is taken
   away at its login by the lab's grant fault, on during runs 1-4), ``pg-lab`` keeps its passwords and its Vault
   roles; ``sql-fleet-3`` keeps SQL authentication because its password user is missing from the inventory (the
   generated inventory lists it; the test forgets it, as an operator might); the other two Azure SQL servers are
   Entra-only and the Cosmos DB account refuses keys;
5. the grant fault cleared and the password user accepted (``mi_cutover_accept_password_users``), run 5 converges:
   every application verified and switched, every grant in place, the Vault roles' backups all there, ``pg-lab`` and
   ``sql-fleet-3`` refuse passwords.

(That a re-run changes nothing and writes nothing to ARM is checked on the lab inventory, in
test_migrate_playbook.py.) Outcomes are read in the lab (ARM state, the PostgreSQL and Azure SQL catalogs, OpenBao,
the password probe), not from task names: the run is only watched to know when to kill it. The kill points are found
by the role each TASK header names. The wall time of every run is printed (``-s``) and recorded as a test property.
A rollback step (``playbooks/rollback.yml``, then the demo apps' "before" code working again) is the last test.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from labrunner import (REPO, VENV_BIN, arm_servers, assert_fleet_converged, demo_app_mode, entra_only, kinds,
                       password_login, recap, running_lab, vault_client, vault_roles, watch_playbook)

FLEET_APPS = 20
FAULTED_APP, FAULTED_ROLE = "fleet-005-pg", "mi-fleet-005-pg"  # read-write on schema orders
TIMINGS: dict[str, float] = {}
SERVER_HOSTS = {"postgres/pg-lab", "sql/sql-lab", "sql/sql-lab-2", "sql/sql-fleet-3", "cosmos/cosmos-lab"}
UNKNOWN_USER_SERVER = "sql-fleet-3"  # its one application's password user is taken out of the inventory


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> dict:
    """The generated fleet: ``{"topology", "inventory", "applications": {name: kind}}`` plus the inventory's hosts."""
    out = tmp_path_factory.mktemp("fleet")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "azurelab", "fleet", "--apps", str(FLEET_APPS), "--out", str(out)],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO / "lab")), capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    TIMINGS["generate"] = time.monotonic() - started
    inventory = yaml.safe_load((out / "inventory" / "hosts.yml").read_text())
    hosts = inventory["all"]["children"]["applications"]["hosts"]
    [(forgotten_by, database)] = [(app, db) for app, host in hosts.items() for db in host["mi_databases"]
                                  if db.get("server") == UNKNOWN_USER_SERVER]
    unknown_user = database.pop("password_users")[0]  # the operator forgot it
    (out / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    topology = yaml.safe_load((out / "topology.yml").read_text())
    return {"topology": out / "topology.yml", "inventory": str(out / "inventory"), "hosts": hosts,
            "apps": {app["name"]: app for app in topology["applications"]},
            "unknown_user": (forgotten_by, database["database"], unknown_user)}


@pytest.fixture(scope="module")
def lab(fleet):
    """A fresh lab of the fleet's topology (``LAB_TOPOLOGY``), for this module."""
    yield from running_lab(fleet["topology"])


def migrate(lab, fleet, name: str, kill_when=None, sig=signal.SIGKILL) -> tuple[int, str]:
    """Run ``migrate.yml`` on the fleet (:func:`labrunner.watch_playbook`), killing it with ``sig`` when
    ``kill_when(role, line, state)`` is True. Returns the exit status and the output; records the wall time as
    ``name``."""
    started = time.monotonic()
    status, output, killed = watch_playbook(lab, fleet["inventory"], kill_when=kill_when, sig=sig)
    TIMINGS[name] = time.monotonic() - started
    if kill_when:
        assert killed, f"{name}: the kill point never came:\n{output[-3000:]}"
        assert status != 0
    return status, output


def test_the_fleet_spans_the_four_parts(lab, fleet):
    workloads = {host["mi_workload"]["type"] for host in fleet["hosts"].values()}
    assert len(fleet["hosts"]) == FLEET_APPS and workloads == {"vm", "app_service", "aks"}
    assert {db["type"] for host in fleet["hosts"].values() for db in host["mi_databases"]} == {"postgres", "sql",
                                                                                               "cosmos"}
    assert sorted({db["server"] for app in kinds(fleet, "sql") for db in fleet["hosts"][app]["mi_databases"]}) == [
        "sql-fleet-3", "sql-lab", "sql-lab-2"]
    assert sum(host["mi_workload"]["type"] == "aks" for host in fleet["hosts"].values()) >= 3
    assert vault_roles(lab) == sorted(fleet["hosts"][app]["mi_vault_database_role"] for app in kinds(fleet, "postgres"))
    fault = lab.lab_api("POST", "grant-faults", {"server": "pg-lab", "role": FAULTED_ROLE, "schema": "orders"})
    assert fault["role"] == FAULTED_ROLE


def test_a_run_killed_during_identity(lab, fleet):
    created = len(fleet["hosts"])  # the first identity task makes one identity per application

    def attaching(role, line, state):
        return role == "identity" and state["changed"].get("identity", 0) >= created + 2

    migrate(lab, fleet, "run 1 (killed in identity)", attaching, signal.SIGKILL)


def test_a_run_killed_during_grant(lab, fleet):
    def granting(role, line, state):  # the first principal made, the others on their way (20 forks)
        return role == "grant" and state["changed"].get("grant", 0) >= 1

    migrate(lab, fleet, "run 2 (killed in grant)", granting, signal.SIGTERM)


def test_a_run_killed_during_cutover(lab, fleet):
    def switching(role, line, state):
        return role == "cutover" and state["changed"].get("cutover", 0) >= 1

    migrate(lab, fleet, "run 3 (killed in cutover)", switching, signal.SIGKILL)
    servers = arm_servers(lab)
    assert servers["pg-lab"]["authConfig"]["passwordAuth"] == "Enabled"


def test_an_application_whose_grant_is_gone_keeps_its_server_out_of_cutover(lab, fleet):
    status, output = migrate(lab, fleet, "run 4 (grant fault on)")
    assert status != 0
    summary = recap(output)
    assert set(summary) == set(fleet["hosts"]) | SERVER_HOSTS  # the cutover play's one host per server or account
    assert summary[FAULTED_APP]["failed"] == 1, summary[FAULTED_APP]
    assert re.search(rf"pg-lab stays on passwords: [^\n]*{FAULTED_APP}", " ".join(output.split())), output[-4000:]
    assert all(host["failed"] == 0 and host["unreachable"] == 0 for app, host in summary.items()
               if app != FAULTED_APP), summary
    assert "permission denied for table orders" in output
    servers = arm_servers(lab)
    assert servers["pg-lab"]["authConfig"]["passwordAuth"] == "Enabled"
    assert password_login(lab, "pg-lab") == "accepted"
    for server in ("sql-lab", "sql-lab-2"):
        assert entra_only(servers[server]), server
        assert password_login(lab, server) == "refused", server
    assert servers["cosmos-lab"]["disableLocalAuth"] is True
    # The password user the inventory does not know keeps its server on SQL authentication, named in the output.
    app, database, user = fleet["unknown_user"]
    assert f"{UNKNOWN_USER_SERVER} stays on SQL authentication: {database} has the password user {user}" in " ".join(
        output.split()), output[-4000:]
    assert not entra_only(servers[UNKNOWN_USER_SERVER]) and password_login(lab, UNKNOWN_USER_SERVER) == "accepted"
    assert summary[app]["failed"] == 0  # its application is verified and switched all the same
    # The failed application is left as it was: its Vault role, its "before" code.
    assert fleet["hosts"][FAULTED_APP]["mi_vault_database_role"] in vault_roles(lab)
    assert demo_app_mode(lab, FAULTED_APP) == "vault"
    before = lab.lab("azurelab.demo_app", FAULTED_APP)
    lab.assert_no_secret_in(before.stdout + before.stderr)
    result = json.loads(before.stdout)
    assert result["ok"] and result["mode"] == "vault" and result["connected_as"] != FAULTED_ROLE, result
    others = [app for app in fleet["hosts"] if app != FAULTED_APP]
    assert all(demo_app_mode(lab, app) == "identity" for app in others if fleet["hosts"][app]["mi_workload"]["type"]
               != "aks")


def test_a_plain_rerun_converges_with_every_application_verified(lab, fleet):
    assert lab.lab_api("DELETE", "grant-faults") == {"value": []}
    _app, _database, user = fleet["unknown_user"]
    with open(pathlib.Path(fleet["inventory"]) / "group_vars" / "all.yml", "a", encoding="utf-8") as group_vars:
        group_vars.write("\n" + yaml.safe_dump({"mi_cutover_accept_password_users": [user]}))
    status, output = migrate(lab, fleet, "run 5 (converge)")
    assert status == 0, output[-4000:]
    assert all(host["failed"] == 0 for host in recap(output).values())
    assert_fleet_converged(lab, fleet)
    servers = arm_servers(lab)
    assert servers["pg-lab"]["authConfig"]["passwordAuth"] == "Disabled" and password_login(lab, "pg-lab") == "refused"
    assert all(entra_only(servers[s]) for s in ("sql-lab", "sql-lab-2", "sql-fleet-3"))
    assert password_login(lab, UNKNOWN_USER_SERVER) == "refused"
    assert servers["cosmos-lab"]["disableLocalAuth"] is True
    # Nothing lost: every Vault role retired has its backup, every KV secret is soft-deleted (undelete brings it back).
    assert vault_roles(lab) == []
    backups = sorted(p.stem for p in (lab.state / "backups" / "database" / "roles").glob("*.json"))
    assert backups == sorted(fleet["hosts"][app]["mi_vault_database_role"] for app in kinds(fleet, "postgres"))
    kv = vault_client(lab).secrets.kv.v2
    for app in kinds(fleet, "sql", "cosmos"):
        versions = kv.read_secret_metadata(path=fleet["hosts"][app]["mi_vault_kv_secret"], mount_point="secret")
        current = versions["data"]["versions"][str(versions["data"]["current_version"])]
        assert current["deletion_time"] and not current["destroyed"], app


def test_rollback_restores_password_and_key_login_and_the_vault_roles(lab, fleet, record_property):
    """``rollback.yml`` on the whole fleet: passwords and keys back on, the Vault roles back from their backups, and
    every demo app's "before" code (vault mode) signs in again (the rollback role runs it on its VM or App Service app
    and fails unless it works; AKS applications redeploy their previous manifest, docs/rollback.md)."""
    started = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", fleet["inventory"], "playbooks/rollback.yml"],
                         cwd=REPO, env=lab.env, capture_output=True, text=True, timeout=1200, check=False)
    TIMINGS["rollback"] = time.monotonic() - started
    lab.assert_no_secret_in(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-4000:]
    assert all(host["failed"] == 0 for host in recap(run.stdout).values())
    servers = arm_servers(lab)
    assert servers["pg-lab"]["authConfig"]["passwordAuth"] == "Enabled" and password_login(lab, "pg-lab") == "accepted"
    assert not any(entra_only(servers[s]) for s in ("sql-lab", "sql-lab-2", "sql-fleet-3"))
    assert servers["cosmos-lab"]["disableLocalAuth"] is False
    assert vault_roles(lab) == sorted(fleet["hosts"][app]["mi_vault_database_role"] for app in kinds(fleet, "postgres"))
    assert all(demo_app_mode(lab, app) == "vault" for app in fleet["hosts"]
               if fleet["hosts"][app]["mi_workload"]["type"] != "aks")
    for name, seconds in TIMINGS.items():
        record_property(name, round(seconds, 1))
    print("\nfleet of", FLEET_APPS, "applications, wall times:",
          ", ".join(f"{name} {seconds:.0f} s" for name, seconds in TIMINGS.items()))
