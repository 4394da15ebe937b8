import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import arm, diagnose
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import differences, is_guid


def test_differences_skips_unmanaged_and_recurses():
    current = {"location": "eastus2", "tags": {"a": "1", "b": "2"}, "x": 1}
    assert differences(current, {"location": None, "tags": {"a": "1", "b": "2"}}) == {}
    assert differences(current, {"tags": {"a": "9"}}) == {"tags": {"before": {"a": "1"}, "after": {"a": "9"}}}
    assert differences(None, {"x": 2}) == {"x": {"before": None, "after": 2}}


@pytest.mark.parametrize("value, ok", [
    ("5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a", True), ("5A1E7C3D-2B4F-4A6E-8D9C-0F1E2D3C4B5A", True),
    ("5a1e7c3d2b4f4a6e8d9c0f1e2d3c4b5a", False), ("'; DROP ROLE x; --", False), ("", False), (None, False),
    ("5a1e7c3d-2b4f-4a6e-8d9c-0f1e2d3c4b5a\n", False),
])
def test_is_guid(value, ok):
    assert is_guid(value) is ok


def test_resource_ids_parse_in_any_casing():
    b = "/subscriptions/s/resourceGroups/rg/providers/microsoft.managedidentity/userassignedidentities/MI/"
    parts = arm.parse_resource_id(b)
    assert (parts["group"], parts["type"], parts["name"], parts["rest"]) == ("rg", "userassignedidentities", "MI", "/")
    assert arm.parse_resource_id("/subscriptions/s/resourceGroups/rg") is None


@pytest.mark.parametrize("text, expected", [
    ("AADSTS700024: Client assertion is not within its valid time range", "NTP"),
    ('FATAL: password authentication failed for user "mi-app"', "pgaadauth_create_principal_with_oid"),
    ("ERROR: function pgaadauth_create_principal(unknown, boolean, boolean) does not exist", "authConfig"),
    ("Multiple user assigned identities exist, please specify the clientId", "client_id"),
    ("ScopeLocked: The scope is locked", "lock"),
])
def test_known_failures_have_remedies(text, expected):
    assert expected in diagnose.remedy(text)


def test_unknown_failure_has_no_remedy():
    assert diagnose.remedy("something nobody has seen") is None


def test_error_text_uses_arm_code():
    class Error:
        code = "ResourceGroupNotFound"
        message = "Resource group 'rg-x' could not be found."

    class Exc(Exception):
        error = Error()

    assert diagnose.error_text(Exc("ignored")) == "ResourceGroupNotFound: Resource group 'rg-x' could not be found."


@pytest.mark.parametrize("text, words", [
    ("[28000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed for user "
     "'<token-identified principal>'. (18456) (SQLDriverConnect)", "client id"),
    ("Login failed for user '<token-identified principal>'. The server is not currently configured to accept this "
     "token.", "UTF-16-LE"),
    ("Login failed for user 'app'. Reason: Azure Active Directory only authentication is enabled.", "Entra-only"),
    ("Principal 'x' could not be resolved. Error message: 'Server identity does not have Azure Active Directory "
     "Readers permission.' (33134)", "Directory Readers"),
    ("[08001] [Microsoft][ODBC Driver 18 for SQL Server]SSL Provider: certificate verify failed", "SSL_CERT_FILE"),
    ("user 'mi-403-app' in x: something unknown", None),
])
def test_sql_failures_have_their_own_remedies(text, words):
    advice = diagnose.remedy(text)
    assert (advice is None) if words is None else (words in advice), advice
