"""Hostile values that once hung, leaked or escaped: each case fails without its fix.

* ``secrets_scan``: a 256 KB line of a repeated fragment is scanned in seconds, not hours (every quantifier that can
  run over a line is bounded or anchored); a FIFO or a device is skipped, not read (a read would block forever).
* ``inventory_check``: a bad value that looks like a secret, or is long or structured, is described, never repeated.
* ``azure_access_check``: a pattern of many ``*`` matches in time linear in its length (a regex backtracked).
* ``vault_db_role``: a role whose ``db_name`` is a path (from a tampered backup or from Vault) is refused before any
  file or Vault write.
"""
import os
import time

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import access, secretscan
from ansible_collections.csa_inabox.managed_identity.plugins.modules import vault_db_role
from ansible_collections.csa_inabox.managed_identity.plugins.plugin_utils import inventory

LINE = 262_144  # a quarter megabyte: linear scans take well under a second, quadratic ones minutes
FRAGMENTS = ["a.", "a:", "ab://", "host=x ", "password={{", "pwd=${", ";password={", "x://u:{{", "eyJa.b.",
             "A_PASSWORD", "<", "vault read "]


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_a_long_line_is_scanned_in_linear_time(fragment):
    line = "password=x " + fragment * (LINE // len(fragment))
    started = time.monotonic()
    findings = secretscan.scan_text(line, "settings.env")
    elapsed = time.monotonic() - started
    assert elapsed < 10, "%r took %.1f s" % (fragment, elapsed)
    assert findings and findings[0]["line"] == 1 and len(findings[0]["excerpt"]) <= secretscan.MAX_EXCERPT


def test_the_bounded_patterns_still_find_their_secrets():
    text = ("url = postgresql://app:hunter2@db.example/app\n"
            "DSN=host=db.example port=5432 dbname=app user=app password=hunter2\n"
            "conn = 'Server=tcp:x;Password={{ pw }};'\n")
    rules = [f["rule"] for f in secretscan.scan_text(text, "app.py")]
    assert rules == ["url-credentials", "libpq-password", "connection-string-password"]


def test_a_fifo_is_skipped_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "app.env").write_text("DB_PASSWORD=hunter2\n")
    entries = list(secretscan.walk([str(tmp_path)]))
    assert (str(tmp_path / "pipe"), None) in entries  # walk lists it, read_text refuses it without opening it
    assert secretscan.read_text(str(tmp_path / "pipe"), 1024) == (None, "not a regular file")
    assert secretscan.read_text("/dev/zero", 1024) == (None, "not a regular file")
    assert list(secretscan.walk([str(tmp_path / "pipe")])) == [(str(tmp_path / "pipe"), None)]


@pytest.mark.parametrize("value,shown", [
    ("hvs.CAESIJ0123456789abcdefghij", "a string of 30 characters (not shown: it may be a secret)"),
    ("Server=x;Password=hunter2;", "a string of 26 characters (not shown: it may be a secret)"),
    ("x" * 5000, "a string of 5000 characters"),
    ("line\nbreak", "a string of 10 characters"),
    ({"password": "hunter2"}, "a mapping of 1 key"),
    (["hunter2", "x"], "a list of 2 items"),
    ("pg-typo", "'pg-typo'"),
    (70000, "70000"),
])
def test_a_bad_value_is_described_when_it_is_not_safe_to_repeat(value, shown):
    assert inventory._shown(value) == shown  # pylint: disable=protected-access


@pytest.mark.parametrize("value", ["hvs.CAESIJ0123456789abcdefghij", {"password": "hunter2"}, "Password=hunter2;"])
def test_the_inventory_check_never_repeats_a_secret_looking_value(value):
    schema = inventory.load_schema()
    problems = inventory.schema_problems("orders", {"mi_subscription_id": value, "mi_location": value}, schema)
    assert {p["path"] for p in problems} >= {"$.mi_subscription_id", "$.mi_location"}
    text = inventory.format_problems(problems)
    assert "hunter2" not in text and "CAESIJ" not in text, text


def test_many_wildcards_match_in_linear_time():
    # 25 wildcards over 2,000 characters: a backtracking regex tries about C(2000, 25) splits and never finishes;
    # the automaton takes some 10^5 steps (a few hundredths of a second), so the bound holds on a loaded machine.
    started = time.monotonic()
    assert not access.action_matches("a*" * 25 + "b", "a" * 2000)
    assert access.action_matches("a*" * 25 + "b", "a" * 2000 + "b")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("db_name", ["../../../etc/passwd", "a/b", "..", ".", "", None, 7, "x\0y", "c" * 256,
                                     "..\\..\\x"])
def test_a_connection_name_that_is_a_path_is_refused(db_name):
    assert "db_name" in vault_db_role.connection_name_problem(db_name)


@pytest.mark.parametrize("db_name", ["pg-lab", "my_connection", "sql.lab", "ünïcode"])
def test_a_connection_name_of_one_segment_is_accepted(db_name):
    assert vault_db_role.connection_name_problem(db_name) is None
