"""Preflight stops a run before its first write when the control identity lacks a permission or a lock refuses a
write: azure_access_check against the ARM double's permissions and locks endpoints (the real azure-mgmt-authorization
and azure-mgmt-resource-locks clients), and migrate.yml stopped in preflight with zero ARM writes."""
from __future__ import annotations

import pytest

from labrunner import SUBSCRIPTION, run_module

SQL_SERVER = {"resource_group": "rg-lab-data", "provider_namespace": "Microsoft.Sql", "resource_type": "servers",
              "name": "sql-lab", "purpose": "database servers",
              "actions": ["Microsoft.Sql/servers/administrators/write",
                          "Microsoft.Sql/servers/azureADOnlyAuthentications/write"]}
IDENTITIES = {"resource_group": "rg-lab-apps", "purpose": "identities",
              "actions": ["Microsoft.ManagedIdentity/userAssignedIdentities/write",
                          "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"]}
DATA_RG = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-lab-data"


@pytest.fixture(autouse=True)
def default_access(lab):
    """Every test starts from the lab's default: its role assignments, no lock."""
    before = lab.lab_api("GET", "role-assignments")["value"]
    yield
    lab.lab_api("DELETE", "locks")
    now = lab.lab_api("GET", "role-assignments")["value"]
    for assignment in before:
        if assignment not in now:
            lab.lab_api("POST", "role-assignments", {**assignment, "scope": assignment["scope"]})


def test_the_default_lab_grants_what_the_run_needs(lab):
    result = run_module(lab, "azure_access_check", scopes=[SQL_SERVER, IDENTITIES])
    assert not result["failed"], result.get("msg")
    assert result["problems"] == []
    assert [s["missing_actions"] for s in result["scopes"]] == [[], []]


def test_not_actions_remove_only_their_own_roles_grant(lab):
    """SQL Server Contributor grants Microsoft.Sql/servers/* but lists azureADOnlyAuthentications/write in its
    notActions: without SQL Security Manager the Entra-only switch is missing, the admin write is not."""
    removed = lab.lab_api("DELETE", "role-assignments", {"role": "SQL Security Manager"})["value"]
    assert removed
    result = run_module(lab, "azure_access_check", check=True, scopes=[SQL_SERVER])
    assert result["failed"]
    [scope] = result["scopes"]
    assert scope["missing_actions"] == [{"action": "Microsoft.Sql/servers/azureADOnlyAuthentications/write",
                                         "role": "SQL Security Manager (SQL Server Contributor excludes it in its "
                                                 "notActions)"}]
    assert f"{DATA_RG}/providers/Microsoft.Sql/servers/sql-lab (database servers)" in result["msg"]


def test_locks_read_only_blocks_writes_can_not_delete_only_deletes(lab):
    lab.lab_api("POST", "locks", {"scope": "/resourceGroups/rg-lab-data", "level": "CanNotDelete", "name": "keep"})
    result = run_module(lab, "azure_access_check", scopes=[SQL_SERVER])
    assert not result["failed"], result.get("msg")
    assert [lock["name"] for lock in result["scopes"][0]["locks"]] == ["keep"]
    result = run_module(lab, "azure_access_check", scopes=[dict(SQL_SERVER, deletes=True)])
    assert result["failed"] and result["scopes"][0]["blocking_locks"] == ["keep"]

    lab.lab_api("POST", "locks", {"scope": "/resourceGroups/rg-lab-data/providers/Microsoft.Sql/servers/sql-lab-2",
                                  "level": "ReadOnly", "name": "frozen"})
    result = run_module(lab, "azure_access_check", scopes=[SQL_SERVER, dict(SQL_SERVER, name="sql-lab-2")])
    assert result["failed"]
    assert [s["blocking_locks"] for s in result["scopes"]] == [[], ["frozen"]]
    assert ("the ReadOnly lock 'frozen' on %s/providers/Microsoft.Sql/servers/sql-lab-2 refuses the run's writes"
            % DATA_RG) in result["msg"]


def test_the_arm_double_enforces_a_read_only_lock(lab):
    """What the preflight check spares a run from: ARM's 409 ScopeLocked in the middle of it."""
    lab.lab_api("POST", "locks", {"scope": "/resourceGroups/rg-lab-data", "level": "ReadOnly", "name": "frozen"})
    result = run_module(lab, "azure_mi", name="mi-lock-probe", resource_group="rg-lab-data", location="eastus2")
    assert result["failed"] and "ScopeLocked" in result["msg"], result
    assert "rg-lab-data" in result["msg"]


def _stopped_in_preflight(lab, run):
    assert run.returncode != 0
    assert "TASK [csa_inabox.managed_identity.identity" not in run.stdout
    assert lab.arm_counters()["writes"] == 0
    lab.assert_no_secret_in(run.stdout + run.stderr)


def test_a_locked_database_resource_group_stops_migrate_in_preflight(lab):
    lab.lab_api("POST", "locks", {"scope": "/resourceGroups/rg-lab-data", "level": "ReadOnly", "name": "data-freeze"})
    lab.lab_api("POST", "counters/reset")
    run = lab.playbook("playbooks/migrate.yml")
    _stopped_in_preflight(lab, run)
    assert "the ReadOnly lock 'data-freeze' on %s refuses the run's writes" % DATA_RG in run.stdout
    for server in ("pg-lab", "sql-lab", "sql-lab-2", "cosmos-lab"):
        assert "/%s (database " % server in run.stdout


def test_a_missing_permission_stops_migrate_in_preflight(lab):
    lab.lab_api("DELETE", "role-assignments", {"role": "Managed Identity Operator"})
    lab.lab_api("POST", "counters/reset")
    run = lab.playbook("playbooks/migrate.yml")
    _stopped_in_preflight(lab, run)
    assert ("/resourceGroups/rg-lab-apps (identities): the control identity may not perform "
            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action; it needs a role that grants it, e.g. "
            "Managed Identity Operator") in run.stdout
