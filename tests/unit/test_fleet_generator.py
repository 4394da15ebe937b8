"""The lab fleet generator (``python -m azurelab fleet``): a topology and an inventory that agree, on every part."""
from __future__ import annotations

import pathlib

import pytest
import yaml
from azurelab import config, fleet


def load(path) -> dict:
    return yaml.safe_load(pathlib.Path(path).read_text())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fleet")
    result = fleet.generate(24, out, sql_server_count=4)
    hosts = load(out / "inventory" / "hosts.yml")["all"]["children"]["applications"]["hosts"]
    return dict(result, out=out, topology_dict=load(result["topology"]), hosts=hosts,
                group_vars=load(out / "inventory" / "group_vars" / "all.yml"))


def test_the_fleet_extends_the_default_lab(written):
    default = load(config.TOPOLOGY_FILE)
    topology = written["topology_dict"]
    assert len(topology["applications"]) == len(written["hosts"]) == 24
    assert topology["applications"][:10] == default["applications"]
    assert topology["identities"] == default["identities"] and topology["cosmos_accounts"] == default["cosmos_accounts"]
    assert [s["name"] for s in topology["sql_servers"]] == ["sql-lab", "sql-lab-2", "sql-fleet-3", "sql-fleet-4"]
    assert topology["aks_clusters"][0]["manifests"][:3] == default["aks_clusters"][0]["manifests"]
    assert list(written["applications"].values()).count("default") == 10
    assert {kind: list(written["applications"].values()).count(kind) for kind in fleet.KINDS} == \
        {"pg": 4, "sql": 4, "cosmos": 3, "aks": 3}


def test_every_application_has_its_before_state_and_its_host(written):
    topology, hosts = written["topology_dict"], written["hosts"]
    vms = {vm["name"] for vm in topology["virtual_machines"]}
    manifests = topology["aks_clusters"][0]["manifests"]
    for app in topology["applications"]:
        host = hosts[app["name"]]
        workload = config.workload(app)
        db = host["mi_databases"][0]
        assert db["type"] == {"postgres": "postgres", "sql": "sql", "cosmos": "cosmos"}[config.database_type(app)]
        if workload["type"] == "vm":
            assert workload["name"] in vms and host["mi_workload"]["name"] == workload["name"]
        if config.database_type(app) == "postgres":
            assert host["mi_vault_database_role"] == app["vault_role"] and app["creation_statements"]
        else:
            assert host["mi_vault_kv_secret"] == app["vault_kv_path"]
        if config.is_sql_application(app):
            assert db["password_users"] == [app["database"]["user"]] and db["server"] == app["database"]["server"]
            assert db["database"] == next(iter(next(s for s in topology["sql_servers"]
                                                    if s["name"] == db["server"])["databases"]))
        if workload["type"] == "aks" and app["name"].startswith("fleet-"):
            files = [m for m in manifests if f"/{app['name']}/" in m]
            assert len(files) == 3 and all(pathlib.Path(m).is_absolute() and pathlib.Path(m).exists() for m in files)
            account = next(load(m) for m in files if m.endswith("serviceaccount.yaml"))
            assert account["metadata"] == {"name": workload["service_account"], "namespace": workload["namespace"]}
            assert host["mi_workload"]["namespace"] == workload["namespace"]


def test_ports_follow_the_topology(written):
    ports = config.Ports.from_base(0, 4, len(config.web_workloads(written["topology_dict"])))
    servers = written["group_vars"]["mi_sql_servers"]
    assert [servers[name]["port"] for name in ("sql-lab", "sql-lab-2", "sql-fleet-3", "sql-fleet-4")] == [
        "{{ mi_lab_port_base | int + %d }}" % offset for offset in (7, 8, 9, 10)]
    assert written["group_vars"]["mi_cosmos_accounts"]["cosmos-lab"]["endpoint"] == \
        "https://localhost:{{ mi_lab_port_base | int + 11 }}/" and ports.cosmos == 11
    storefront = written["hosts"]["storefront"]["mi_workload"]
    assert storefront["health_url"] == "https://localhost:{{ mi_lab_port_base | int + 13 }}/health/identity"
    assert fleet.port_span(written["topology_dict"]) == ports.last == 14


def test_the_output_depends_on_the_arguments_only(written, tmp_path):
    again = fleet.generate(24, tmp_path, sql_server_count=4)
    assert load(again["inventory"] + "/hosts.yml") == load(written["inventory"] + "/hosts.yml")
    assert load(again["topology"])["applications"] == written["topology_dict"]["applications"]


def test_too_small_a_fleet_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least the default lab's 10 applications"):
        fleet.generate(9, tmp_path)
    with pytest.raises(ValueError, match="at least 2 Azure SQL servers"):
        fleet.generate(20, tmp_path, sql_server_count=1)
    assert fleet.main(["--apps", "3", "--out", str(tmp_path)]) == 2


def test_lab_topology_names_the_topology_the_lab_seeds(written, monkeypatch):
    monkeypatch.setenv("LAB_TOPOLOGY", written["topology"])
    monkeypatch.delenv("LAB_PORT_BASE", raising=False)
    assert len(config.topology()["applications"]) == 24
    assert config.ports().sql == tuple(47000 + offset for offset in (7, 8, 9, 10))
    monkeypatch.delenv("LAB_TOPOLOGY")
    assert len(config.topology()["applications"]) == 10


def test_vault_role_names_differ_in_the_part_vault_puts_in_user_names(tmp_path):
    """Vault's PostgreSQL plugin names a user v-<display>-<role, first 8 characters>-<random>-<time>, and evidence
    matches an application's users by that part: two roles alike there would see each other's sessions."""
    fleet.generate(60, tmp_path)
    hosts = load(tmp_path / "inventory" / "hosts.yml")["all"]["children"]["applications"]["hosts"]
    roles = [host["mi_vault_database_role"] for host in hosts.values() if "mi_vault_database_role" in host]
    assert len(roles) > 15
    assert len({role[:8] for role in roles}) == len(roles), sorted(roles)
