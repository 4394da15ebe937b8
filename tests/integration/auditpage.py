"""The audit page's helpers for the playbook tests: run ``playbooks/audit.yml`` on a lab, read its report, and load
its HTML page in headless Chromium (Debian's ``chromium``)."""
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
ITEMS = ["identity_assigned", "entra_admin", "database_principal", "password_auth_disabled", "connects_with_identity",
         "no_secrets_in_config", "no_vault_references", "vault_role_decommissioned", "local_development",
         "staging_production", "entra_sign_in_logs", "database_audit_logs"]
# What no playbook can observe (a developer's machine, Entra's and the databases' logs) stays "unknown".
UNOBSERVABLE = {"local_development", "entra_sign_in_logs", "database_audit_logs"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def audit(lab, environments, *args):
    """``audit.yml`` on the lab inventory plus ``environments``: the JSON report and the HTML page's path, checked for
    secrets."""
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
