"""A module run as an AWX job runs it: the "Microsoft Azure Resource Manager" credential's environment
(AZURE_SUBSCRIPTION_ID, AZURE_CLIENT_ID, AZURE_SECRET, AZURE_TENANT) and no subscription, tenant or auth option, against
the lab's Entra double and ARM double, with the lab's automation service principal. The host's managed identity
endpoint is made unreachable, so the service principal is the only way in.
"""
from __future__ import annotations

import json

import pytest

from labrunner import SUBSCRIPTION, TENANT, run_module

DEAD_ENDPOINT = "http://127.0.0.1:9/unreachable"  # nothing listens on the discard port


@pytest.fixture(scope="module")
def service_principal(lab):
    return json.loads((lab.state / "secrets.json").read_text())["sp-lab-automation"]


def awx_env(lab, service_principal, secret=None):
    """What AWX injects for an Azure credential with a client, secret and tenant (azure_rm injector)."""
    return {"AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZURE_CLIENT_ID": service_principal["client_id"],
            "AZURE_SECRET": secret or service_principal["client_secret"], "AZURE_TENANT": TENANT,
            # not AWX's: azure-identity's own names would win over AWX's, and the host's identity must not answer
            "AZURE_TENANT_ID": "", "AZURE_CLIENT_SECRET": "", "AZURE_POD_IDENTITY_AUTHORITY_HOST": DEAD_ENDPOINT,
            "IDENTITY_ENDPOINT": "", "MSI_ENDPOINT": ""}


def test_awx_credential_environment_reads_arm(lab, service_principal):
    result = run_module(lab, "azure_mi", check=True, env=awx_env(lab, service_principal), subscription_id=None,
                        tenant_id=None, name="mi-operator", resource_group="rg-lab-ops")
    assert not result["failed"], result.get("msg")
    assert result["changed"] is False
    assert result["identity"]["id"].startswith(f"/subscriptions/{SUBSCRIPTION}/")  # AZURE_SUBSCRIPTION_ID was used
    assert result["identity"]["client_id"]


def test_awx_credential_secret_is_the_one_used(lab, service_principal):
    """A wrong AZURE_SECRET is refused by Entra: the secret does reach the token request (and is never printed)."""
    wrong = "wrong-" + service_principal["client_secret"][::-1]
    result = run_module(lab, "azure_mi", check=True, env=awx_env(lab, service_principal, secret=wrong),
                        subscription_id=None, tenant_id=None, name="mi-operator", resource_group="rg-lab-ops")
    assert result["failed"]
    assert wrong not in json.dumps(result)
    assert "AADSTS7000215" in result["msg"], result["msg"]  # Entra: invalid client secret
