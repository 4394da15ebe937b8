"""Which password users cutover may lock out (module_utils/password_users.py, pg_users_info, pg_server_entra)."""
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import password_users
from ansible_collections.csa_inabox.managed_identity.plugins.modules import pg_server_entra, pg_users_info

VAULT_ORDERS = "^v-.*-orders\\-a-"  # what preflight builds for the Vault role orders-api (first 8 characters)


def test_vault_issued_users_of_a_migrating_role_are_known_others_are_not():
    users = password_users.classify(
        ["v-token-orders-a-x1Yz2-1700000000", "v-token-billing-q9-1700000000", "bi_reader", "ledger-sql"],
        known_users=["ledger-sql"], known_user_regex=[VAULT_ORDERS])
    assert users == [
        {"name": "bi_reader", "known": False, "reason": "unknown"},
        {"name": "ledger-sql", "known": True, "reason": "listed"},
        {"name": "v-token-billing-q9-1700000000", "known": False, "reason": "unknown"},
        {"name": "v-token-orders-a-x1Yz2-1700000000", "known": True, "reason": "pattern " + VAULT_ORDERS},
    ]


def test_an_accepted_user_is_known_as_accepted_and_a_listed_one_wins():
    users = password_users.classify(["etl", "dba"], known_users=["dba"], accepted_users=["etl", "dba"])
    assert [(u["name"], u["reason"]) for u in users] == [("dba", "listed"), ("etl", "accepted")]


def test_a_name_that_only_contains_the_role_elsewhere_does_not_match():
    # The role's 8 characters must sit between dashes after v-<display name>-, as Vault writes them.
    [user] = password_users.classify(["orders-a-report"], known_user_regex=[VAULT_ORDERS])
    assert user["known"] is False


def test_bad_patterns_are_named():
    assert password_users.bad_patterns(["^v-.*-ok-", "v-(unclosed"]) == [
        ("v-(unclosed", "missing ), unterminated subpattern at position 2")]


def test_azure_roles_entra_principals_and_the_administrator_are_not_password_users():
    logins = {"azuresu": None, "replication": None, "pg_monitor": None, "pgadmin": None, "mi-operator": None,
              "bi_reader": None, "nopass": None}
    assert pg_users_info.password_user_names(logins, {"mi-operator"}, None, "pgadmin") == ["bi_reader", "nopass"]
    # When pg_authid can be read, a login role without a password is left out.
    assert pg_users_info.password_user_names(logins, {"mi-operator"}, {"bi_reader", "pgadmin"}, "pgadmin") == [
        "bi_reader"]


def test_a_replica_is_named_with_its_resource_group():
    replica = {"id": "/subscriptions/s/resourceGroups/rg-dr/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg-r",
               "name": "pg-r", "properties": {"replicationRole": "AsyncReplica"}}
    assert pg_server_entra.replica_summary(replica) == {"name": "pg-r", "resource_group": "rg-dr", "id": replica["id"],
                                                        "replication_role": "AsyncReplica"}


def test_failover_partners_are_listed_once_with_their_group():
    from ansible_collections.csa_inabox.managed_identity.plugins.modules import sql_server_entra

    dr = "/subscriptions/s/resourceGroups/rg-dr/providers/Microsoft.Sql/servers/sql-dr"
    groups = [{"name": "fg-a", "properties": {"partnerServers": [{"id": dr, "replicationRole": "Secondary"}]}},
              {"name": "fg-b", "properties": {"partnerServers": [{"id": dr.upper(), "replicationRole": "Secondary"}]}},
              {"name": "fg-empty", "properties": {}}]
    assert sql_server_entra.failover_partners(groups) == [
        {"name": "sql-dr", "resource_group": "rg-dr", "id": dr, "replication_role": "Secondary",
         "failover_group": "fg-a"}]
