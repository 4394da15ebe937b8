"""playbooks/migrate.yml against a fresh lab, as an operator runs it: plan, audit, apply, audit again, re-run.

``playbooks/audit.yml`` runs before the migration (check mode) and after it; its HTML page is loaded in headless
Chromium, which keeps a screenshot in tests/output/artifacts/. One application (catalog-api) is put in a second
environment, "staging", through an extra inventory source, so that the page has a table per environment.

The tests of this module run in order on one lab (pytest keeps a file's tests in order; `--dist loadfile` keeps
them on one worker).
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest

from auditpage import ARTIFACTS, ITEMS, UNOBSERVABLE, ChecklistDom, audit, by_app, chromium, run_chromium
from labrunner import REPO, kube_client, run_module

RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
PG_APPS = {"orders-api": "mi-orders-api", "reports": "mi-reports", "billing-worker": "mi-billing-worker",
           "storefront": "mi-storefront"}
SQL_APPS = {"inventory-api": "mi-inventory-api", "audit-reader": "mi-audit-reader", "ledger": "mi-ledger",
            "webapp": "mi-webapp"}
COSMOS_APPS = {"catalog-api": "mi-catalog-api", "search-indexer": "mi-search-indexer"}
APPS = {**PG_APPS, **SQL_APPS, **COSMOS_APPS}
# The cutover play's hosts, one per server (roles/cutover/tasks/servers.yml); a limited run names their group too.
SERVER_HOSTS = {"postgres/pg-lab", "sql/sql-lab", "sql/sql-lab-2", "cosmos/cosmos-lab"}
VMS = {"orders-api": "vm-orders", "reports": "vm-reports", "billing-worker": "vm-billing",
       "inventory-api": "vm-inventory", "audit-reader": "vm-audit", "ledger": "vm-ledger",
       "catalog-api": "vm-catalog", "search-indexer": "vm-search"}
COSMOS_ROLES = {"mi-catalog-api": ("Cosmos DB Built-in Data Contributor", "/dbs/appdb"),
                "mi-search-indexer": ("Cosmos DB Built-in Data Reader", "/dbs/appdb/colls/items")}
COSMOS_ACCOUNT = ("/subscriptions/2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23/resourceGroups/rg-lab-data/providers/"
                  "Microsoft.DocumentDB/databaseAccounts/cosmos-lab")
SQL_DATABASES = {"sql-lab": ("appdb", 7), "sql-lab-2": ("ledgerdb", 8)}  # database, port offset
SQL_ROLES = {"mi-inventory-api": ["db_datareader", "db_datawriter"], "mi-audit-reader": ["db_datareader"],
             "mi-ledger": ["db_datareader", "ledger_writer"], "mi-webapp": ["db_datareader"]}
CLIENT_ID_ANNOTATION, USE_LABEL = "azure.workload.identity/client-id", "azure.workload.identity/use"


def recap(output: str) -> dict:
    return {host: {"changed": int(c), "failed": int(f), "unreachable": int(u)}
            for host, _ok, c, u, f in RECAP.findall(output)}


def superuser(lab, dbname="postgres"):
    """The lab's own maintenance session (peer auth over the private socket), to look at the real catalog."""
    return psycopg.connect(host=str(lab.state / "pg" / "run"), dbname=dbname, user="postgres")


def catalog_snapshot(lab) -> dict:
    with superuser(lab) as conn:
        roles = sorted(r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'"))
        principals = sorted(conn.execute("SELECT rolname, \"objectId\" FROM pgaadauth_list_principals(false)"))
    with superuser(lab, "appdb") as conn:
        acls = sorted(conn.execute("SELECT relname, relacl::text FROM pg_class WHERE relacl IS NOT NULL"))
    return {"roles": roles, "principals": principals, "acls": acls}


def sql_catalog_snapshot(lab) -> dict:
    """Every principal and role membership of the lab's SQL servers, read from the double's catalog files (SQL
    logins, the other way in, are refused once a server is Entra-only)."""
    import sqlite3

    snapshot = {}
    for server in SQL_DATABASES:
        uri = (lab.state / "sql" / f"{server}.sqlite").as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            principals = sorted(conn.execute("SELECT database_id, principal_id, name, type, sid FROM principals"))
            members = sorted(conn.execute("SELECT * FROM role_members"))
        snapshot[server] = (principals, members)
    return snapshot


def workload_env(lab, app: str) -> dict:
    """The environment of a process on ``app``'s VM: its managed identity endpoint, the lab CA, the ODBC driver."""
    return dict(lab.env, AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{lab.base + 3}/vms/{VMS[app]}",
                PYTHONPATH=str(REPO / "lab"))


def tutorial_step6(lab) -> str:
    """The tutorial's Part 1 Step 6 script, run on the inventory API's VM against sql-lab; its output."""
    code = (REPO / "tests" / "integration" / "tutorial" / "part1_step6.py").read_text()
    published = 'SERVER = "sql-prod.database.windows.net"'
    assert published in code
    code = code.replace(published, f'SERVER = "tcp:localhost,{lab.base + 7}"')
    run = subprocess.run([sys.executable, "-c", code], env=workload_env(lab, "inventory-api"), capture_output=True,
                         text=True, timeout=60, check=False)
    lab.assert_no_secret_in(run.stdout + run.stderr)
    return run.stdout + run.stderr


def demo_app(lab, app: str) -> dict:
    """Run the demo app on ``app``'s VM; its one-line JSON result (no secret in its output)."""
    run = subprocess.run([sys.executable, "-m", "azurelab.demo_app", app], env=workload_env(lab, app),
                         capture_output=True, text=True, timeout=60, check=False)
    lab.assert_no_secret_in(run.stdout + run.stderr)
    return json.loads(run.stdout)


def attach_new_identity(lab, app: str) -> dict:
    """The application's identity, created and attached to its VM, with no database access yet."""
    identity = run_module(lab, "azure_mi", name=APPS[app], resource_group="rg-lab-apps", location="eastus2",
                          tags={"application": app})["identity"]
    attached = run_module(lab, "azure_mi_assignment", name=VMS[app], resource_group="rg-lab-apps",
                          identity_ids=[identity["id"]])
    assert not attached["failed"], attached
    return identity


def assert_reads_with_its_key(result: dict) -> None:
    """The Cosmos demo app in vault mode: the tutorial's "before" code found the electronics items with the key."""
    assert result["ok"] and result["mode"] == "vault" and result["connected_as"] == "key", result
    assert sorted(row[0] for row in result["rows"]) == ["1", "2", "3"]


def cosmos_endpoint(lab) -> str:
    return f"https://localhost:{lab.base + 9}/"


def tutorial_part3(lab) -> subprocess.CompletedProcess:
    """The tutorial's Part 3 Step 2 "after" code, run on the catalog API's VM against the lab account."""
    code = (REPO / "tests" / "integration" / "tutorial" / "part3_step2_after.py").read_text()
    published = "url='https://cosmos-prod.documents.azure.com:443/'"
    assert published in code
    code = code.replace(published, f"url='{cosmos_endpoint(lab)}'")
    env = dict(workload_env(lab, "catalog-api"), AZURE_COSMOS_HEALTH_CHECK_MAX_RETRIES="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    lab.assert_no_secret_in(run.stdout + run.stderr)
    return run


def cosmos_key_works(lab, key: str) -> str:
    """``accepted``, or Cosmos DB's status and message when it refuses a client signing with ``key``."""
    from azure.cosmos import CosmosClient
    from azure.cosmos.exceptions import CosmosHttpResponseError

    try:
        list(CosmosClient(cosmos_endpoint(lab), credential=key, retry_total=0).list_databases())
    except CosmosHttpResponseError as exc:
        return f"{exc.status_code} {exc.message}"
    return "accepted"


def independent_sid_literal(guid: str) -> str:
    """SQL Server's uniqueidentifier bytes of ``guid`` (first three groups byte-reversed), as 0x... hex."""
    groups = guid.split("-")
    raw = b"".join(bytes.fromhex(g)[::-1] for g in groups[:3]) + bytes.fromhex(groups[3] + groups[4])
    return "0x" + raw.hex().upper()


def vault_roles(lab) -> list:
    import hvac

    client = hvac.Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())
    return sorted(client.secrets.database.list_roles(mount_point="database")["data"]["keys"])


def test_check_mode_on_a_fresh_lab_writes_nothing_and_shows_the_plan(lab):
    before = (lab.arm_counters()["writes"], catalog_snapshot(lab), vault_roles(lab), sql_catalog_snapshot(lab))
    run = lab.playbook("playbooks/migrate.yml", "--check", "--diff", "-vvvv")
    assert run.returncode == 0, run.stdout[-4000:]
    after = (lab.arm_counters()["writes"], catalog_snapshot(lab), vault_roles(lab), sql_catalog_snapshot(lab))
    assert after == before
    assert before[2] == ["billing-worker", "orders-api", "reports", "storefront"]
    for planned in ("PATCH authConfig activeDirectoryAuth=Enabled", "pgaadauth_create_principal_with_oid",
                    'GRANT DELETE, INSERT, SELECT, UPDATE ON ALL TABLES IN SCHEMA "orders" TO "mi-orders-api"',
                    "(known after apply)", "DELETE database/roles/orders-api", "would set passwordAuth=Disabled",
                    "CREATE USER [mi-ledger] WITH SID = (known after apply), TYPE = E",
                    "ALTER ROLE [ledger_writer] ADD MEMBER [mi-ledger]",
                    "would turn on Entra-only authentication",
                    "PUT sqlRoleAssignments/(known after apply) (Cosmos DB Built-in Data Reader on /dbs/appdb/colls/items)",
                    "would switch keys off (disableLocalAuth)",
                    "would log in to sql-lab/appdb from a Job in aks-prod/app-namespace as service account webapp-sa",
                    "would ask https://localhost:"):
        assert planned in " ".join(run.stdout.split()), planned  # the callback may wrap long lines
    lab.assert_no_secret_in(run.stdout + run.stderr)


@pytest.fixture(scope="module")
def environments(tmp_path_factory):
    """An extra inventory source: catalog-api belongs to environment "staging"."""
    extra = tmp_path_factory.mktemp("inventory") / "environments.yml"
    extra.write_text(json.dumps({"all": {"children": {"applications": {"hosts": {
        "catalog-api": {"mi_environment": "staging"}}}}}}))
    return str(extra)


def test_before_the_migration_every_application_fails_and_the_scan_finds_vault(lab, environments):
    """In check mode (nothing to log in as yet, and check mode is how an operator looks before a run)."""
    writes = lab.arm_counters()["writes"]
    report, _page = audit(lab, environments, "--check")
    assert lab.arm_counters()["writes"] == writes
    assert report["check_mode"] is True
    assert [env["name"] for env in report["environments"]] == ["lab", "staging"]
    assert [a["application"] for a in report["environments"][1]["applications"]] == ["catalog-api"]
    apps = by_app(report)
    assert sorted(apps) == sorted(APPS)
    for name, items in apps.items():
        assert list(items) == ITEMS
        assert items["identity_assigned"]["status"] == "fail", name
        assert items["password_auth_disabled"]["status"] == "fail", name
        assert items["connects_with_identity"]["status"] == "unknown", name  # no login is tried in check mode
        # The demo apps' configs hold their AppRole ids; webapp's live Deployment has the Vault Agent annotations.
        scan = items["no_vault_references"]
        assert scan["status"] == "fail", name
        rules = {finding["rule"] for finding in scan["findings"]}
        assert rules == ({"vault-agent-annotation", "vault-agent-secret-path"} if name == "webapp"
                         else {"vault-approle-credential"}), (name, rules)
        assert all("********" in f["excerpt"] for f in scan["findings"] if f["rule"] == "vault-approle-credential")
    # PostgreSQL apps: a Vault database role; the others: a readable KV secret.
    assert apps["orders-api"]["vault_role_decommissioned"]["status"] == "fail"
    assert apps["catalog-api"]["vault_role_decommissioned"]["status"] == "fail"


def test_the_tutorial_test_script_fails_with_18456_before_the_migration(lab):
    """The identity exists and is on the VM, but the database has no user for it yet."""
    attach_new_identity(lab, "inventory-api")
    output = tutorial_step6(lab)
    assert "Token acquired" in output and "FAILED:" in output, output
    assert "Login failed for user '<token-identified principal>'. (18456)" in output, output


def test_the_tutorial_cosmos_code_is_forbidden_before_the_role_assignment(lab):
    """The identity exists and is on the VM, with no data-plane role yet; the key from Vault still works."""
    identity = attach_new_identity(lab, "catalog-api")
    run = tutorial_part3(lab)
    assert run.returncode != 0 and "Found" not in run.stdout
    assert "Forbidden" in run.stderr and "5301" in run.stderr, run.stderr[-3000:]
    assert f"principal [{identity['principal_id']}] does not have required RBAC permissions" in run.stderr
    assert_reads_with_its_key(demo_app(lab, "catalog-api"))


@pytest.fixture(scope="module")
def old_cosmos_key(lab):
    """The account key the applications read from Vault before the migration (taken before the migration runs)."""
    return json.loads((lab.state / "secrets.json").read_text())["cosmos_accounts"]["cosmos-lab"]["primaryMasterKey"]


MIGRATION = {}  # what the tests after the migration read of its run: when it started, its output


@pytest.mark.usefixtures("old_cosmos_key")
def test_migrate_moves_every_application_to_its_identity(lab):
    # ARM throttles and has a bad moment during the run: the one retry policy absorbs both.
    lab.lab_api("POST", "faults", {"method": "PUT", "path": "userAssignedIdentities", "status": 429, "count": 2,
                                   "retry_after": 1})
    lab.lab_api("POST", "faults", {"method": "PATCH", "path": "virtualMachines", "status": 503, "count": 1})
    faulted = lab.arm_counters()["faulted"]
    MIGRATION["started"] = time.time() - 1  # file times are rounded on some filesystems
    run = lab.playbook("playbooks/migrate.yml", "-vvvv")
    MIGRATION["output"] = run.stdout + run.stderr
    assert lab.arm_counters()["faulted"] == faulted + 3
    assert run.returncode == 0, run.stdout[-4000:]
    lab.assert_no_secret_in(run.stdout + run.stderr)
    report = json.loads((lab.state / "reports" / "migration-report.json").read_text())
    lab.assert_no_secret_in(json.dumps(report) + (lab.state / "reports" / "migration-report.txt").read_text())
    assert {app["application"] for app in report} == set(APPS)
    for app in report:
        role = APPS[app["application"]]
        assert app["identity"]["attached"] is True
        [db] = app["databases"]
        assert db["password_login_probe"] == "refused"
        assert app["switched"] is True
        if app["application"] in COSMOS_APPS:
            principal = app["identity"]["principal_id"]
            assert db["principal"] == principal and db["login_verified_as"] == principal
            assert (db["role"], db["scope"]) == (COSMOS_ROLES[role][0], COSMOS_ACCOUNT + COSMOS_ROLES[role][1])
            assert db["local_auth_disabled"] is True and db["keys_regenerated_at"]
            assert app["vault"]["kv_retired"] is True and app["vault"]["kv_secret"] == \
                f"secret/apps/{app['application']}/cosmos"
            continue
        assert db["principal"] == role
        assert db["login_verified_as"] == role
        if app["application"] in SQL_APPS:
            assert db["sid"] == independent_sid_literal(app["identity"]["client_id"]) and db["sid_source"] == "client_id"
            assert db["roles"] == SQL_ROLES[role] and db["entra_only"] is True
            assert app["vault"]["kv_retired"] is True and app["vault"]["role"] is None
        else:
            assert db["password_auth"] == "Disabled"
            assert app["vault"]["decommissioned"] is True and app["vault"]["backup"]
    assert vault_roles_or_none(lab) is None  # every role gone, and the mount lists nothing
    # pg-lab's read replica and sql-lab's failover partner, found through ARM, were switched with their servers.
    replica = run_module(lab, "pg_server_entra", name="pg-lab-replica", resource_group="rg-lab-data")
    assert replica["auth_config"]["activeDirectoryAuth"] == "Enabled" and replica["auth_config"]["passwordAuth"] == \
        "Disabled" and replica["source_server_id"].endswith("/flexibleServers/pg-lab")
    partner = run_module(lab, "sql_server_entra", name="sql-lab-dr", resource_group="rg-lab-data")
    assert partner["azure_ad_only_authentication"] is True and partner["administrator"]["login"] == "mi-operator"
    text = (lab.state / "reports" / "migration-report.txt").read_text()
    assert 'user "mi-ledger"' in text and "roles           db_datareader, ledger_writer" in text
    assert 'CURRENT_USER = "mi-audit-reader"' in text and "(from the identity's client id)" in text


@pytest.fixture(scope="module")
def after(lab, environments):
    writes = lab.arm_counters()["writes"]
    result = audit(lab, environments)
    assert lab.arm_counters()["writes"] == writes  # read-only: the modules that could write ran in check mode
    return result


def test_after_the_migration_every_observable_item_passes(after):
    report, _page = after
    apps = by_app(report)
    assert sorted(apps) == sorted(APPS)
    for name, items in apps.items():
        for item_id, item in items.items():
            expected = "unknown" if item_id in UNOBSERVABLE else "pass"
            assert item["status"] == expected, (name, item_id, item["evidence"])
    # The demo app's Vault address stays for rollback.yml, accepted with its reason; webapp's Deployment is clean.
    accepted = apps["orders-api"]["no_vault_references"]["accepted"]
    assert {a["rule"] for a in accepted} == {"vault-config"} and all("rollback" in a["reason"] for a in accepted)
    assert "2 Kubernetes object(s) scanned: 0 finding(s)" in apps["webapp"]["no_vault_references"]["evidence"][0]
    assert any('connected as "mi-webapp"' in line for line in apps["webapp"]["connects_with_identity"]["evidence"])
    assert report["summary"] == {"applications": 10, "pass": 90, "fail": 0, "unknown": 30}


def test_the_html_page_in_headless_chromium_shows_every_application_and_item(after):
    binary = chromium()
    report, page = after
    dom = run_chromium(binary, "--dump-dom", page.as_uri()).stdout
    parsed = ChecklistDom()
    parsed.feed(dom)
    expected = {env["name"]: {app["application"]: {item["id"]: item["status"] for item in app["items"]}
                              for app in env["applications"]} for env in report["environments"]}
    assert parsed.tables == expected
    assert sorted(app for env in parsed.tables.values() for app in env) == sorted(APPS)
    for (_env, _app, item_id), text in parsed.cell_text.items():
        assert expected[_env][_app][item_id].upper() in text  # a readable status, not only a colour
    for title in (i["title"] for i in report["checklist"]):
        assert title in dom or title.replace("'", "&#39;") in dom
    assert "<script" not in page.read_text() and "http://" not in page.read_text().split("<body>")[0]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "audit-checklist.png"
    shot.unlink(missing_ok=True)
    run_chromium(binary, "--window-size=1600,1500", "--hide-scrollbars", "--screenshot=" + str(shot), page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
    shutil.copy(page, ARTIFACTS / "audit-checklist.html")


def test_no_secret_the_lab_issued_is_in_the_output_the_reports_or_any_file_written(lab, after):
    """The secret-leak check: every token, password, key and Vault token the lab issued (its Entra and AKS tokens,
    OpenBao's audit log of every secret it handed out, the Cosmos keys before and after their regeneration, the admin
    passwords), looked for in the -vvvv output of the migration (its module results included), the migration and
    audit reports, and every file written anywhere since the migration started, outside the labs' state folders."""
    secrets = lab.secrets()
    assert len(secrets) >= 20 and len(issued_tokens(lab)) >= 50  # the record is there: the check can fail
    lab.assert_no_secret_in(MIGRATION["output"])
    assert "<<< " in MIGRATION["output"] or "ESTABLISH LOCAL CONNECTION" in MIGRATION["output"]  # -vvvv it was
    reports = sorted((lab.state / "reports").iterdir())
    assert {p.name for p in reports} >= {"migration-report.json", "migration-report.txt", "audit-checklist.json",
                                         "audit-checklist.html"}
    for report in reports:
        lab.assert_no_secret_in(report.read_text())
    assert lab.assert_no_secret_written_since(MIGRATION["started"]) > 0


def test_the_file_check_finds_a_planted_secret_and_a_planted_token(lab, tmp_path):
    """The leak check's control: one of the lab's passwords, then one of its tokens, written to a file are found."""
    planted = tmp_path / "planted.log"
    tokens = issued_tokens(lab)
    assert tokens, "run after the migration (the lab has issued no token yet)"
    token = json.loads(tokens[-1])["value"]
    for secret in (lab.secrets()[0], token):
        planted.write_text(f"some output\n{secret}\nmore output\n")
        with pytest.raises(AssertionError, match="a secret of the lab was written to .*planted.log"):
            lab.assert_no_secret_written_since(time.time() - 60, top=str(tmp_path))
    planted.write_text("nothing secret\n")
    assert lab.assert_no_secret_written_since(time.time() - 60, top=str(tmp_path)) == 1


def issued_tokens(lab) -> list[str]:
    return [line for line in (lab.state / "issued.jsonl").read_text().splitlines() if '"entra-token"' in line]


def test_the_tutorial_cosmos_code_finds_the_items_after_the_migration_and_keys_are_refused(lab, old_cosmos_key):
    run = tutorial_part3(lab)
    assert run.returncode == 0 and run.stdout.strip() == "Found 3 items", run.stdout + run.stderr[-3000:]
    refused = cosmos_key_works(lab, old_cosmos_key)
    assert refused.startswith("401 ") and "Local Authorization is disabled" in refused, refused
    current = json.loads((lab.state / "secrets.json").read_text())["cosmos_accounts"]["cosmos-lab"]
    assert current["primaryMasterKey"] != old_cosmos_key  # regenerated at decommission
    assert "Local Authorization is disabled" in cosmos_key_works(lab, current["primaryMasterKey"])


def test_the_tutorial_test_script_prints_the_identity_after_the_migration(lab):
    output = tutorial_step6(lab)
    assert "Connected as: mi-inventory-api" in output and "SUCCESS" in output, output
    assert "SQL Server: Microsoft SQL Azure" in output


def vault_roles_or_none(lab):
    import hvac

    try:
        return vault_roles(lab)
    except hvac.exceptions.InvalidPath:
        return None


def test_principals_have_exactly_their_grants(lab):
    with superuser(lab, "appdb") as conn:
        def privileges(role):
            return sorted(conn.execute(
                "SELECT table_schema || '.' || table_name, privilege_type FROM information_schema.role_table_grants"
                " WHERE grantee = %s", (role,)).fetchall())

        assert privileges("mi-reports") == [("orders.orders", "SELECT"), ("public.products", "SELECT")]
        assert privileges("mi-billing-worker") == [("billing.invoices", "INSERT"), ("billing.invoices", "SELECT")]
        assert [p for _table, p in privileges("mi-orders-api")] == ["DELETE", "INSERT", "SELECT", "UPDATE"]
        assert conn.execute("SELECT has_sequence_privilege('mi-billing-worker', 'billing.invoice_number', 'USAGE'),"
                            " has_table_privilege('mi-reports', 'orders.orders', 'INSERT')").fetchone() == (True, False)


def test_backups_hold_definitions_and_no_secret(lab):
    backups = sorted((lab.state / "backups").rglob("*.json"))
    names = [p.relative_to(lab.state / "backups").as_posix() for p in backups]
    assert names == ["database/connections/pg-lab-appdb.json", "database/roles/billing-worker.json",
                     "database/roles/orders-api.json", "database/roles/reports.json",
                     "database/roles/storefront.json"]
    role = json.loads((lab.state / "backups" / "database" / "roles" / "orders-api.json").read_text())
    assert role["db_name"] == "pg-lab-appdb" and role["creation_statements"]
    lab.assert_no_secret_in("".join(p.read_text() for p in backups))


def test_a_second_run_changes_nothing_and_writes_nothing_to_arm(lab):
    writes, sql_catalog = lab.arm_counters()["writes"], sql_catalog_snapshot(lab)
    run = lab.playbook("playbooks/migrate.yml")
    assert run.returncode == 0, run.stdout[-4000:]
    summary = recap(run.stdout)
    assert set(summary) == set(APPS) | SERVER_HOSTS
    assert all(host["changed"] == 0 and host["failed"] == 0 for host in summary.values()), summary
    assert lab.arm_counters()["writes"] == writes
    assert sql_catalog_snapshot(lab) == sql_catalog


@pytest.mark.parametrize("app", sorted(VMS))
def test_the_demo_app_runs_as_its_identity_from_its_vm(lab, app):
    result = demo_app(lab, app)
    assert result["ok"] and result["mode"] == "identity", result
    if app in COSMOS_APPS:  # Cosmos DB has no current user: the app reports its token's principal
        principal = run_module(lab, "azure_mi", name=APPS[app], resource_group="rg-lab-apps")["identity"]["principal_id"]
        assert result["connected_as"] == principal
    else:
        assert result["connected_as"] == APPS[app]
    config = json.loads((lab.state / "apps" / f"{app}.json").read_text())
    assert "secret_id_file" not in config and "role_id" not in config


def test_the_app_service_app_runs_as_its_identity_picked_by_its_app_setting(lab):
    """The lab front runs the demo app with App Service's environment: its app settings (AZURE_CLIENT_ID set by the
    identity phase), IDENTITY_ENDPOINT and IDENTITY_HEADER."""
    identity = run_module(lab, "azure_mi", name="mi-storefront", resource_group="rg-lab-apps")["identity"]
    context = ssl.create_default_context(cafile=str(lab.state / "tls" / "ca-bundle.pem"))
    for path in ("", "health/identity"):
        with urllib.request.urlopen(f"https://localhost:{lab.base + 11}/{path}", context=context, timeout=60) as answer:
            result = json.loads(answer.read())
        assert result["ok"] and result["connected_as"] == "mi-storefront", result
    assert result["identity_client_id"] == identity["client_id"]
    lab.assert_no_secret_in(json.dumps(result))


def test_the_tutorials_service_account_and_deployment_carry_exactly_what_part_4_lists(lab):
    import kubernetes

    identity = run_module(lab, "azure_mi", name="mi-webapp", resource_group="rg-lab-apps")["identity"]
    core = kubernetes.client.CoreV1Api(kube_client(lab))
    apps = kubernetes.client.AppsV1Api(kube_client(lab))
    account = core.read_namespaced_service_account("webapp-sa", "app-namespace")
    assert account.metadata.annotations == {CLIENT_ID_ANNOTATION: identity["client_id"]}
    assert account.metadata.labels == {USE_LABEL: "true"}
    template = apps.read_namespaced_deployment("webapp", "app-namespace").spec.template
    assert template.metadata.labels == {"app": "webapp", USE_LABEL: "true"}
    assert not template.metadata.annotations  # the Vault Agent injector's annotations are gone (switch)
    assert template.spec.service_account_name == "webapp-sa"
    assert [(e.name, e.value) for e in template.spec.containers[0].env] == [
        ("DATABASE_HOST", "sql-prod.database.windows.net"), ("DATABASE_NAME", "appdb")]


def test_an_application_that_fails_is_reported_and_keeps_its_server_out_of_cutover(lab, tmp_path):
    import shutil

    import yaml

    inventory = tmp_path / "lab"
    shutil.copytree(REPO / "inventories" / "lab", inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    reports = hosts["all"]["children"]["applications"]["hosts"]["reports"]
    reports["mi_databases"][0]["grants"][1]["schema"] = "analytics"  # an operator's typo
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    # Only the PostgreSQL server's applications: the others are migrated already, and not in play they count as not
    # passed, which keeps their servers as they are.
    run = lab.playbook("playbooks/migrate.yml", "--limit", ",".join([*PG_APPS, "mi_cutover_servers"]),
                       inventory=str(inventory))
    assert run.returncode != 0
    assert "grants[1].schema: schema 'analytics' does not exist in database appdb" in run.stdout
    assert recap(run.stdout)["reports"]["failed"] == 1
    report = {app["application"]: app for app in
              json.loads((lab.state / "reports" / "migration-report.json").read_text())}
    assert report["reports"]["failed"] is True and "orders-api" in report
    assert "reports: FAILED" in (lab.state / "reports" / "migration-report.txt").read_text()
    assert "pg-lab stays on passwords: applications of it did not pass verify and evidence in this run (or were not " \
        "in it): reports" in " ".join(run.stdout.split())


def test_rollback_gives_a_cosmos_application_its_key_back_and_migrate_converges_again(lab):
    run = lab.playbook("playbooks/rollback.yml", "--limit", "catalog-api")
    assert run.returncode == 0, run.stdout[-4000:]
    lab.assert_no_secret_in(run.stdout + run.stderr)
    assert "keys are on again for all of cosmos-lab: its applications search-indexer are not rolled back" in \
        " ".join(run.stdout.split())
    assert_reads_with_its_key(demo_app(lab, "catalog-api"))
    account = run_module(lab, "cosmos_account_entra", account_name="cosmos-lab", resource_group="rg-lab-data")
    assert account["disable_local_auth"] is False and account["keys_regenerated_at"] is None
    again = lab.playbook("playbooks/rollback.yml", "--limit", "catalog-api")
    assert again.returncode == 0 and recap(again.stdout)["catalog-api"]["changed"] == 0, again.stdout[-3000:]

    migrate = lab.playbook("playbooks/migrate.yml", "--limit", ",".join([*COSMOS_APPS, "mi_cutover_servers"]))
    assert migrate.returncode == 0, migrate.stdout[-4000:]
    report = {app["application"]: app for app in
              json.loads((lab.state / "reports" / "migration-report.json").read_text())}
    [db] = report["catalog-api"]["databases"]
    assert report["catalog-api"]["switched"] is True and db["local_auth_disabled"] is True
    assert db["keys_regenerated_at"] and db["password_login_probe"] == "refused"
