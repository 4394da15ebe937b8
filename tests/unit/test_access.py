"""Azure RBAC action matching (actions minus notActions per role, wildcards, case) and lock evaluation."""
import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import access

CONTRIBUTOR = {"actions": ["*"], "notActions": ["Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write",
                                                "Microsoft.Authorization/elevateAccess/Action"]}
SQL_SERVER_CONTRIBUTOR = {"actions": ["Microsoft.Sql/servers/*"],
                          "notActions": ["Microsoft.Sql/servers/azureADOnlyAuthentications/write",
                                         "Microsoft.Sql/servers/auditingSettings/*"]}
SQL_SECURITY_MANAGER = {"actions": ["Microsoft.Sql/servers/azureADOnlyAuthentications/*"], "notActions": []}
MI_OPERATOR = {"actions": ["Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
                           "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action"], "notActions": []}


@pytest.mark.parametrize("pattern,action,expected", [
    ("*", "Microsoft.Sql/servers/write", True),
    ("*/read", "Microsoft.Sql/servers/read", True),
    ("*/read", "Microsoft.Sql/servers/write", False),
    ("Microsoft.Sql/servers/*", "Microsoft.Sql/servers/administrators/write", True),
    ("Microsoft.Sql/servers/*", "Microsoft.Sql/serversX/write", False),
    ("microsoft.sql/SERVERS/Administrators/WRITE", "Microsoft.Sql/servers/administrators/write", True),
    ("Microsoft.DocumentDb/databaseAccounts/*", "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments/write", True),
    ("Microsoft.Authorization/*/Write", "Microsoft.Authorization/roleAssignments/write", True),
    ("Microsoft.Authorization/*/Write", "Microsoft.Authorization/locks/read", False),
    ("Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
     "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action", True),
    ("Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
     "Microsoft.ManagedIdentity/userAssignedIdentities/write", False),
    ("Microsoft.Web/sites/write", "Microsoft.Web/sites/config/write", False),
    ("Microsoft.Web/sites.write", "Microsoft.Web/sites/write", False),  # '.' is literal, not a regex wildcard
])
def test_action_matches(pattern, action, expected):
    assert access.action_matches(pattern, action) is expected


def test_not_actions_narrow_only_their_own_role():
    wanted = "Microsoft.Sql/servers/azureADOnlyAuthentications/write"
    assert not access.allowed([SQL_SERVER_CONTRIBUTOR], wanted)
    assert access.allowed([SQL_SERVER_CONTRIBUTOR], "Microsoft.Sql/servers/administrators/write")
    assert access.allowed([SQL_SERVER_CONTRIBUTOR, SQL_SECURITY_MANAGER], wanted)
    assert access.allowed([CONTRIBUTOR], wanted)
    assert not access.allowed([CONTRIBUTOR], "Microsoft.Authorization/roleAssignments/write")


def test_missing_actions_keep_their_order_and_snake_case_is_read():
    permissions = [{"actions": ["Microsoft.Compute/virtualMachines/*"], "not_actions": ["*/delete"]}]
    assert access.missing_actions(permissions, [
        "Microsoft.Compute/virtualMachines/delete", "Microsoft.Compute/virtualMachines/write",
        "Microsoft.Web/sites/write"]) == ["Microsoft.Compute/virtualMachines/delete", "Microsoft.Web/sites/write"]
    assert access.missing_actions([], ["x/y/write"]) == ["x/y/write"]


def test_role_hints_name_the_built_in_role():
    assert access.role_hint("Microsoft.ManagedIdentity/userAssignedIdentities/assign/action") == \
        "Managed Identity Operator"
    assert access.role_hint("microsoft.sql/servers/azureadonlyauthentications/write").startswith("SQL Security Manager")
    assert "built-in roles" in access.role_hint("Microsoft.Unknown/things/write")


def test_locks():
    locks = [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/locks/keep",
              "name": "keep", "level": "CanNotDelete"},
             {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Sql/servers/a/providers/"
                    "Microsoft.Authorization/locks/frozen", "name": "frozen", "level": "ReadOnly"},
             {"id": "/x/providers/Microsoft.Authorization/locks/n", "name": "n", "level": "NotSpecified"}]
    assert [lock["name"] for lock in access.blocking_locks(locks)] == ["frozen"]
    assert [lock["name"] for lock in access.blocking_locks(locks, deletes=True)] == ["keep", "frozen"]
    assert access.lock_scope(locks[1]["id"]) == "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Sql/servers/a"
    group = "/subscriptions/s/resourceGroups/rg"
    assert access.lock_applies(group, group + "/providers/Microsoft.Sql/servers/a")
    assert access.lock_applies("/SUBSCRIPTIONS/s/resourcegroups/RG", group)
    assert not access.lock_applies(group + "/providers/Microsoft.Sql/servers/a", group)
    assert not access.lock_applies(group, "/subscriptions/s/resourceGroups/rg2")
