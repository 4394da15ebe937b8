"""playbooks/audit.yml on a lab fleet before and after playbooks/migrate.yml, and its HTML page in headless Chromium.

The tests of this module run in order on one lab (pytest keeps a file's tests in order; `--dist loadfile` keeps
them on one worker). One application (catalog-api) is put in a second environment, "staging", through an extra
inventory source, so that the page has a table per environment.
"""
from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from labrunner import REPO

ARTIFACTS = REPO / "tests" / "output" / "artifacts"
APPS = ["audit-reader", "billing-worker", "catalog-api", "inventory-api", "ledger", "orders-api", "reports",
        "search-indexer", "storefront", "webapp"]
ITEMS = ["identity_assigned", "entra_admin", "database_principal", "password_auth_disabled", "connects_with_identity",
         "no_secrets_in_config", "no_vault_references", "vault_role_decommissioned", "local_development",
         "staging_production", "entra_sign_in_logs", "database_audit_logs"]
# What no playbook can observe (a developer's machine, Entra's and the databases' logs) stays "unknown".
UNOBSERVABLE = {"local_development", "entra_sign_in_logs", "database_audit_logs"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def environments(tmp_path_factory):
    """An extra inventory source: catalog-api belongs to environment "staging"."""
    extra = tmp_path_factory.mktemp("inventory") / "environments.yml"
    extra.write_text(json.dumps({"all": {"children": {"applications": {"hosts": {
        "catalog-api": {"mi_environment": "staging"}}}}}}))
    return str(extra)


def audit(lab, environments, *args):
    done = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "inventories/lab", "-i",
                           environments, "playbooks/audit.yml", *args], cwd=REPO, env=lab.env, capture_output=True,
                          text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = lab.state / "reports" / "audit-checklist.json"
    page = lab.state / "reports" / "audit-checklist.html"
    for text in (done.stdout, done.stderr, report.read_text(), page.read_text()):
        lab.assert_no_secret_in(text)
    return json.loads(report.read_text()), page


def by_app(report) -> dict:
    return {app["application"]: {item["id"]: item for item in app["items"]}
            for env in report["environments"] for app in env["applications"]}


def test_before_the_migration_every_application_fails_and_the_scan_finds_vault(lab, environments):
    """In check mode (nothing to log in as yet, and check mode is how an operator looks before a run)."""
    writes = lab.arm_counters()["writes"]
    report, _page = audit(lab, environments, "--check")
    assert lab.arm_counters()["writes"] == writes
    assert report["check_mode"] is True
    assert [env["name"] for env in report["environments"]] == ["lab", "staging"]
    assert [a["application"] for a in report["environments"][1]["applications"]] == ["catalog-api"]
    apps = by_app(report)
    assert sorted(apps) == APPS
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


def test_migrate(lab):
    """The whole lab fleet (with a longer timeout than lab.playbook's: on a busy two-core machine it can take more
    than ten minutes)."""
    done = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "inventories/lab",
                           "playbooks/migrate.yml"], cwd=REPO, env=lab.env, capture_output=True, text=True,
                          timeout=2400, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def after(lab, environments):
    writes = lab.arm_counters()["writes"]
    result = audit(lab, environments)
    assert lab.arm_counters()["writes"] == writes  # read-only: the modules that could write ran in check mode
    return result


def test_after_the_migration_every_observable_item_passes(after):
    report, _page = after
    apps = by_app(report)
    assert sorted(apps) == APPS
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


class ChecklistDom(html.parser.HTMLParser):
    """The rows of the page's checklist tables: {environment: {application: {item: status}}}, and the text of each
    status cell."""

    def __init__(self):
        super().__init__()
        self.tables, self.environment, self.application, self.cell = {}, None, None, None
        self.cell_text = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "checklist" in (attrs.get("class") or ""):
            self.environment = attrs["data-environment"]
            self.tables[self.environment] = {}
        elif tag == "tr" and self.environment and "data-application" in attrs:
            self.application = attrs["data-application"]
            self.tables[self.environment][self.application] = {}
        elif tag == "td" and self.application and "data-item" in attrs:
            self.cell = (self.environment, self.application, attrs["data-item"])
            self.tables[self.environment][self.application][attrs["data-item"]] = attrs["data-status"]
            self.cell_text[self.cell] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.environment = self.application = None
        elif tag == "tr":
            self.application = None
        elif tag == "td":
            self.cell = None

    def handle_data(self, data):
        if self.cell:
            self.cell_text[self.cell] += data


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but chromium is not installed: .ci/run installs Debian's chromium (apt-get install -y chromium)")
    pytest.skip("SKIPPED LOUDLY: chromium is not installed, so the audit page is not checked in a browser; "
                "install it with `apt-get install -y chromium` (CI does, and fails without it)")
    return ""


def run_chromium(binary, *args):
    profile = tempfile.mkdtemp(prefix="mi-chromium-")
    try:
        return subprocess.run([binary, *CHROMIUM_FLAGS, "--user-data-dir=" + profile, *args], capture_output=True,
                              text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_the_html_page_in_headless_chromium_shows_every_application_and_item(after):
    binary = chromium()
    report, page = after
    dom = run_chromium(binary, "--dump-dom", page.as_uri()).stdout
    parsed = ChecklistDom()
    parsed.feed(dom)
    expected = {env["name"]: {app["application"]: {item["id"]: item["status"] for item in app["items"]}
                              for app in env["applications"]} for env in report["environments"]}
    assert parsed.tables == expected
    assert sorted(app for env in parsed.tables.values() for app in env) == APPS
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
