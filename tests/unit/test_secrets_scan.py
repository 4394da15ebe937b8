"""secrets_scan: the rules on a fixture tree of true positives and near misses, the tutorial's own code, masking,
and the module run through Ansible (what reaches results and logs)."""
import json
import os
import pathlib
import subprocess

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import secretscan
from ansible_collections.csa_inabox.managed_identity.plugins.modules import secrets_scan

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "unit" / "fixtures" / "secrets_scan"
TUTORIAL = REPO / "tests" / "integration" / "tutorial"
FAKE_SECRETS = ("Fake-Sql-Pass-1", "Fake-Odbc-Pass-2", "Fake-Yaml-Pass-3", "Fake-Url-Pass-4", "Fake-Spring-Pass-5",
                "Fake-Env-Pass-6", "hvs.FakeVaultTokenForTests7", "Fake-Libpq-Pass-8", "Fake-Binary-Pass-9",
                "FakeCosmosKeyForSecretsScanTestsOnly", "xxx", "yyy")


def scan(path):
    text, why = secretscan.read_text(str(path), 1 << 20)
    assert why is None, why
    return secretscan.scan_text(text, str(path))


def rules_by_line(path):
    return {(f["line"], f["rule"]) for f in scan(path)}


# (file under positive/, the (line, rule) pairs it must give, exactly)
POSITIVES = [
    ("appsettings.json", {(3, "connection-string-password"), (4, "azure-account-key")}),
    ("odbc.txt", {(1, "connection-string-password")}),
    ("config.yaml", {(4, "config-password"), (5, "url-credentials")}),
    ("application.properties", {(2, "config-password"), (3, "vault-config")}),
    (".env", {(2, "password-env"), (3, "vault-env"), (4, "vault-env"), (4, "config-password")}),
    ("libpq.conf", {(1, "libpq-password")}),
    ("package.json", {(4, "vault-sdk-node")}),
    ("server.js", {(1, "vault-sdk-node")}),
    ("Program.cs", {(1, "vault-sdk-dotnet"), (2, "vault-sdk-dotnet"), (4, "vault-sdk-dotnet")}),
    ("pom.xml", {(5, "vault-sdk-java")}),
    ("main.go", {(4, "vault-sdk-go")}),
    ("deployment.yaml", {(9, "vault-agent-annotation"), (10, "vault-agent-annotation"), (15, "password-env")}),
    ("compose.yaml", {(4, "config-password")}),
    ("fetch-secret.sh", {(2, "vault-cli"), (2, "password-env"), (3, "password-env")}),
]


@pytest.mark.parametrize("name, expected", POSITIVES)
def test_true_positives_are_found_on_their_line(name, expected):
    assert rules_by_line(FIXTURES / "positive" / name) == expected


def test_every_positive_fixture_is_covered():
    assert sorted(p.name for p in (FIXTURES / "positive").iterdir()) == sorted(name for name, _expected in POSITIVES)


@pytest.mark.parametrize("name", ["settings.yaml", "appsettings.json", "serviceaccount.yaml", "NOTES.md"])
def test_near_misses_are_not_findings(name):
    """password_file, passwordAuth: Disabled, an empty password, Authentication=Active Directory Default, the
    workload identity annotation, the word Vault in prose."""
    assert scan(FIXTURES / "negative" / name) == []


def test_the_tutorials_before_code_breaks_both_items():
    sql = scan(TUTORIAL / "part1_step5_before.py")
    assert {(f["line"], f["rule"]) for f in sql} == {
        (4, "vault-sdk-python"), (8, "vault-sdk-python"), (9, "vault-approle-credential"),
        (22, "connection-string-password")}
    pwd = next(f for f in sql if f["line"] == 22)
    assert pwd["placeholder"] and pwd["excerpt"] == 'f"PWD={password};"'  # an f-string field: a name, shown
    cosmos = scan(TUTORIAL / "part3_step2_before.py")
    assert {f["rule"] for f in cosmos} == {"vault-sdk-python", "vault-approle-credential"}


@pytest.mark.parametrize("name", ["part1_step6.py", "part2_step3_after.py", "part3_step2_after.py"])
def test_the_tutorials_after_code_is_clean(name):
    """password=token.token (Part 2) is how a token is passed: key-value rules are for configuration files only."""
    assert scan(TUTORIAL / name) == []


@pytest.mark.parametrize("line, excerpt", [
    ("Server=x;Password=S3cr;et", "Server=x;Password=********;et"),
    ("url: redis://default:pa55@cache:6380", "url: redis://default:********@cache:6380"),
    ("VAULT_TOKEN=hvs.CAESIabc", "VAULT_TOKEN=********"),
    ("vault.auth.approle.login(role_id='r', secret_id='s')", "vault.auth.approle.login(role_id='********', secret_id='********')"),
    ("password: ${DB_PASSWORD}", "password: ${DB_PASSWORD}"),
    ("password: <your password here>", "password: <your password here>"),
    ("import hvac", "import hvac"),
    ("client = hvac.Client(url=VAULT, token='hvs.CAESIFakeToken')", "client = hvac.Client(url=VAULT, token='********')"),
    ("headers = {'Authorization': 'Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0'}", "headers = {'Authorization': 'Bearer ********'}"),
    ("password=token.token,", "password=********,"),
])
def test_excerpts_mask_values_and_keep_placeholders(line, excerpt):
    assert secretscan.mask(line) == excerpt


def test_a_long_line_is_cut_after_masking():
    line = "x = 'Server=s;Password=" + "p" * 300 + ";'  # " + "why " * 60
    masked = secretscan.mask(line)
    assert len(masked) == secretscan.MAX_EXCERPT and "ppp" not in masked and masked.endswith("...")


def test_walk_skips_symlinks_binaries_big_files_and_excludes(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "config.yaml").write_text("password: Fake-Walk-1\n")
    (tmp_path / "app" / "big.yaml").write_text("password: Fake-Walk-2\n" + "#" * 5000)
    (tmp_path / "app" / "node_modules").mkdir()
    (tmp_path / "app" / "node_modules" / "x.js").write_text("require('node-vault')\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.env").write_text("DB_PASSWORD=Fake-Walk-3\n")
    os.symlink(tmp_path / "outside", tmp_path / "app" / "linked")
    os.symlink(tmp_path / "outside" / "secret.env", tmp_path / "app" / "linked.env")
    params = dict(paths=[str(tmp_path / "app")], exclude=list(secretscan.DEFAULT_EXCLUDES), follow_symlinks=False,
                  max_file_size=1000, max_files=100)
    findings, skipped, read, truncated = secrets_scan.scan_files(params, [])
    assert [(pathlib.Path(f["path"]).name, f["rule"]) for f in findings] == [("config.yaml", "config-password")]
    assert {pathlib.Path(s["path"]).name: s["reason"].split(" (")[0] for s in skipped} == {
        "big.yaml": "larger than max_file_size", "linked": "symbolic link", "linked.env": "symbolic link"}
    assert (read, truncated) == (1, False)

    params["follow_symlinks"] = True
    findings, skipped, read, truncated = secrets_scan.scan_files(params, [])
    assert sorted(pathlib.Path(f["path"]).name for f in findings) == ["config.yaml", "linked.env", "secret.env"]

    params["max_files"] = 1
    warnings = []
    findings, skipped, read, truncated = secrets_scan.scan_files(params, warnings)
    assert (read, truncated) == (1, True) and "max_files=1" in warnings[0]


def test_ignore_entries_match_rule_and_path_glob():
    finding = {"rule": "vault-config", "path": "/state/apps/orders.json"}
    keep = {"rule": "vault-config", "path": "*/apps/*.json", "reason": "kept for rollback"}
    assert secretscan.ignored_by(finding, [{"rule": "vault-env", "path": "*", "reason": "x"}, keep]) is keep
    assert secretscan.ignored_by(finding, [{"rule": "*", "path": "/other/*", "reason": "x"}]) is None


def test_a_live_object_is_scanned_without_status_managed_fields_or_last_applied():
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "webapp", "namespace": "app-namespace", "managedFields": [{"manager": "kubectl"}],
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                     '{"metadata": {"annotations": {"vault.hashicorp.com/agent-inject": "true"}}}'}},
        "spec": {"template": {"metadata": {"annotations": {"vault.hashicorp.com/role": "webapp"}},
                              "spec": {"containers": [{"name": "webapp", "env": [
                                  {"name": "DB_PASSWORD_FILE", "value": "/vault/secrets/db"}]}]}}},
        "status": {"replicas": 3},
    }
    text = secrets_scan.object_text(deployment)
    assert "managedFields" not in text and "last-applied" not in text and "replicas" not in text
    found = secretscan.scan_text(text, "kubernetes:app-namespace/Deployment/webapp", config=True)
    assert sorted(f["rule"] for f in found) == ["vault-agent-annotation", "vault-agent-secret-path"]


def run_module(args, tmp_path):
    """The module run by ansible-playbook -vvv (argument spec, a real result, what a log would hold): its result and
    the whole output."""
    playbook, saved = tmp_path / "scan.yml", tmp_path / "result.json"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"csa_inabox.managed_identity.secrets_scan": args, "register": "scan", "ignore_errors": True},
        {"ansible.builtin.copy": {"content": "{{ scan | to_json }}", "dest": str(saved), "mode": "0600"}}]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-vvv", "-c", "local", "-i", "localhost,",
                           "-e", "ansible_python_interpreter=" + str(REPO / ".venv" / "bin" / "python"), str(playbook)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert saved.exists(), done.stdout + done.stderr
    return json.loads(saved.read_text()), done.stdout + done.stderr


def test_the_module_reports_the_fixture_tree_without_a_secret_value_anywhere(tmp_path):
    result, output = run_module({"paths": [str(FIXTURES), str(TUTORIAL)],
                                 "ignore": [{"rule": "vault-config", "path": "*.properties", "reason": "demo"}]},
                                tmp_path)
    assert result["changed"] is False and not result.get("failed")
    assert result["checklist"]["no_vault_references"]["status"] == "fail"
    assert result["checklist"]["no_secrets_in_config"]["status"] == "fail"
    assert [(i["rule"], i["reason"]) for i in result["ignored"]] == [("vault-config", "demo")]
    assert not any(f["path"].startswith(str(FIXTURES / "negative")) for f in result["findings"])
    assert [pathlib.Path(s["path"]).name for s in result["skipped"]] == ["logo.bin"]
    for secret in FAKE_SECRETS:
        assert secret not in output, secret


def test_the_module_refuses_nothing_to_scan_and_unknown_rules(tmp_path):
    result, _output = run_module({}, tmp_path)
    assert result["failed"] and "nothing to scan" in result["msg"]
    result, _output = run_module({"paths": [str(FIXTURES)], "ignore": [{"rule": "vault-sdk-rust", "reason": "x"}]}, tmp_path)
    assert result["failed"] and "vault-sdk-rust" in result["msg"] and "vault-sdk-python" in result["msg"]
