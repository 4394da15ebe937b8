"""The pure parts of the Vault rollback: where the connection's admin password comes from, and how a connection is
rebuilt from its backup."""
import json

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import diagnose
from ansible_collections.csa_inabox.managed_identity.plugins.modules import vault_db_role

# What Vault (OpenBao 2) answers to GET database/config/<name>, as decommission backs it up.
BACKUP = {
    "allowed_roles": ["orders-api", "reports"],
    "connection_details": {"connection_url": "postgresql://{{username}}:{{password}}@pg:5432/appdb?sslmode=verify-full",
                           "username": "pgadmin", "max_open_connections": 4},
    "password_policy": "",
    "plugin_name": "postgresql-database-plugin",
    "plugin_version": "",
    "root_credentials_rotate_statements": [],
    "name": "pg-appdb",
    "mount": "database",
}


def test_the_password_comes_from_the_file_stripped(tmp_path):
    path = tmp_path / "pw"
    path.write_text("  s3cret-Value \n")
    assert vault_db_role.read_password(str(path), None, environ={}) == "s3cret-Value"


def test_the_password_comes_from_the_named_environment_variable():
    assert vault_db_role.read_password(None, "MI_PW", environ={"MI_PW": "from-env"}) == "from-env"


@pytest.mark.parametrize("password_file, env_name, environ, words", [
    (None, None, {}, "give the database administrator's password in connection_password_file"),
    ("/nonexistent/pw", None, {}, "cannot read the connection password file /nonexistent/pw (No such file"),
    (None, "MI_PW", {}, "the environment variable MI_PW is empty or not set"),
    (None, "MI_PW", {"MI_PW": "   "}, "the environment variable MI_PW is empty or not set"),
    (None, "MI_PW", {"MI_PW": "two\nvalues"}, "holds line breaks or control characters"),
])
def test_a_missing_or_odd_password_is_refused_without_showing_it(password_file, env_name, environ, words):
    with pytest.raises(ValueError) as failure:
        vault_db_role.read_password(password_file, env_name, environ=environ)
    assert words in str(failure.value)
    for value in environ.values():
        assert not value.strip() or value.split()[0] not in str(failure.value)


def test_an_empty_password_file_is_refused(tmp_path):
    path = tmp_path / "pw"
    path.write_text("\n")
    with pytest.raises(ValueError, match="is empty or not set"):
        vault_db_role.read_password(str(path), None, environ={})


def test_the_connection_is_rebuilt_from_its_backup_with_vaults_write_names():
    arguments = vault_db_role.connection_arguments(BACKUP)
    assert arguments == {
        "connection_url": BACKUP["connection_details"]["connection_url"], "username": "pgadmin",
        "max_open_connections": 4, "plugin_name": "postgresql-database-plugin",
        "allowed_roles": ["orders-api", "reports"], "verify_connection": True,
    }
    rotated = vault_db_role.connection_arguments(dict(BACKUP, root_credentials_rotate_statements=["ALTER ROLE x"],
                                                      password_policy="pg", plugin_version="v1.0.0"))
    assert rotated["root_rotation_statements"] == ["ALTER ROLE x"]
    assert (rotated["password_policy"], rotated["plugin_version"]) == ("pg", "v1.0.0")


def test_a_backup_holding_a_secret_does_not_send_it_back():
    details = dict(BACKUP["connection_details"], password="old", private_key="pem")
    arguments = vault_db_role.connection_arguments(dict(BACKUP, connection_details=details))
    assert "password" not in arguments and "private_key" not in arguments


def test_connection_drift_names_the_fields_that_differ():
    current = {k: v for k, v in BACKUP.items() if k not in ("name", "mount")}
    assert vault_db_role.connection_drift(BACKUP, current) == []
    assert vault_db_role.connection_drift(BACKUP, dict(current, allowed_roles=["reports", "orders-api"])) == []
    moved = dict(current, allowed_roles=["reports"],
                 connection_details=dict(current["connection_details"], username="other"))
    assert vault_db_role.connection_drift(BACKUP, moved) == ["allowed_roles", "connection_details"]


def test_backups_that_cannot_be_used_say_why(tmp_path):
    with pytest.raises(ValueError, match="no readable backup at"):
        vault_db_role.read_backup(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        vault_db_role.read_backup(str(tmp_path / "broken.json"))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        vault_db_role.read_backup(str(tmp_path / "list.json"))
    (tmp_path / "ok.json").write_text(json.dumps(BACKUP))
    assert vault_db_role.read_backup(str(tmp_path / "ok.json")) == BACKUP


def test_vault_refusing_the_connection_points_at_the_password_and_password_auth():
    text = ('error creating database object: error verifying connection: failed to connect to `user=pgadmin`: '
            'FATAL: password authentication failed for user "pgadmin" (SQLSTATE 28P01)')
    advice = diagnose.remedy(text)
    assert "connection_password_file" in advice and "password_auth=true" in advice
