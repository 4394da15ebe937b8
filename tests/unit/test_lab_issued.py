"""azurelab.issued: the record of what the lab hands out, which the secret-leak checks look for."""
import json

from azurelab import issued


def test_values_reads_the_record_the_audit_log_and_the_secrets_file(tmp_path):
    issued.record(tmp_path, "entra-token", "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl")
    issued.record(tmp_path, "cosmos-key", "a" * 88)
    (tmp_path / "openbao").mkdir()
    entries = [
        {"type": "request", "auth": {"client_token": "s.roottoken1234", "accessor": "accessor-not-a-secret",
                                     "token_type": "service", "token_issue_time": "2026-12-02T08:29:12Z"},
         "request": {"path": "database/creds/orders-api", "data": None}},
        {"type": "response", "response": {"data": {"username": "v-approle-orders-a-1234", "password": "dyn-pass-5678"},
                                          "auth": {"client_token": "s.apptoken9876", "policies": ["orders-api"]}}},
        {"type": "response", "response": {"data": {"secret_id": "7a0c3c4e-secret-id", "secret_id_ttl": 0,
                                                   "secret_id_accessor": "acc-0123456789"}}},
    ]
    (tmp_path / "openbao" / "audit.log").write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"truncated')
    (tmp_path / "secrets.json").write_text(json.dumps({"postgres": {"administrator_login": "labadmin",
                                                                    "administrator_password": "pg-admin-pass"}}))
    (tmp_path / "openbao" / "token").write_text("root-token-file\n")
    assert issued.values(tmp_path) == {
        "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2lnbmF0dXJl", "a" * 88, "s.roottoken1234", "dyn-pass-5678",
        "s.apptoken9876", "7a0c3c4e-secret-id", "pg-admin-pass", "root-token-file"}
    assert oct((tmp_path / "issued.jsonl").stat().st_mode & 0o777) == "0o600"


def test_values_of_a_lab_that_never_started_is_empty(tmp_path):
    assert issued.values(tmp_path) == set()
