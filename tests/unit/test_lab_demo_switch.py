"""azurelab.demo_app --switch-to-identity: the lab switch phase's one process (secret id first, then the config)."""
import json
import stat
import subprocess
import sys

from azurelab import demo_app
from azurelab.config import REPO_ROOT

VAULT_CONFIG = {"app": "orders-api", "vm": "vm-orders", "mode": "vault", "db_host": "127.0.0.1", "db_port": 5432,
                "role_id": "role-id-not-secret", "vault_role": "orders-api"}


def vault_app(tmp_path):
    secret = tmp_path / "orders-api.secret-id"
    secret.write_text("lab-secret-id\n")
    config = tmp_path / "orders-api.json"
    config.write_text(json.dumps(dict(VAULT_CONFIG, secret_id_file=str(secret))))
    return config, secret


def test_the_switch_removes_the_secret_id_and_rewrites_the_config_once(tmp_path):
    config, secret = vault_app(tmp_path)
    assert demo_app.switch_to_identity(config, "client-1", "mi-orders") is True
    written = json.loads(config.read_text())
    assert not secret.exists()
    assert "role_id" not in written and "secret_id_file" not in written
    assert written["mode"] == "identity"
    assert (written["managed_identity_client_id"], written["db_user"]) == ("client-1", "mi-orders")
    assert written["vault_role"] == "orders-api"  # the rest is kept: rollback.yml reads it
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert demo_app.switch_to_identity(config, "client-1", "mi-orders") is False
    assert demo_app.switch_to_identity(config, "client-2", "mi-orders") is True  # another identity is a change


def test_check_changes_nothing(tmp_path):
    config, secret = vault_app(tmp_path)
    before = config.read_text()
    assert demo_app.switch_to_identity(config, "client-1", "mi-orders", check=True) is True
    assert config.read_text() == before and secret.exists()


def test_a_secret_id_left_by_a_killed_switch_is_removed(tmp_path):
    config, secret = vault_app(tmp_path)
    switched = dict(VAULT_CONFIG, mode="identity", managed_identity_client_id="client-1", db_user="mi-orders")
    del switched["role_id"]
    config.write_text(json.dumps(dict(switched, secret_id_file=str(secret))))
    assert demo_app.switch_to_identity(config, "client-1", "mi-orders") is True
    assert not secret.exists() and "secret_id_file" not in json.loads(config.read_text())


def test_the_command_line_reports_changed_without_running_in_check_mode(tmp_path):
    config, _secret = vault_app(tmp_path)
    args = [sys.executable, "-m", "azurelab.demo_app", "orders-api", "--switch-to-identity", "--client-id", "c",
            "--db-user", "u", "--config", str(config)]
    env = {"PYTHONPATH": str(REPO_ROOT / "lab"), "PATH": "/usr/bin:/bin"}
    checked = subprocess.run(args + ["--check"], capture_output=True, text=True, env=env, check=False)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"app": "orders-api", "mode": "identity", "changed": True, "ran": False}
    refused = subprocess.run(args[:5], capture_output=True, text=True, env=env, check=False)
    assert refused.returncode == 2 and "--client-id" in refused.stderr
