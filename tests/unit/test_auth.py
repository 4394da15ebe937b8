import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import auth


@pytest.mark.parametrize("name, arm, postgres", [
    ("AzureCloud", "https://management.azure.com", "https://ossrdbms-aad.database.windows.net/.default"),
    ("AzureUSGovernment", "https://management.usgovcloudapi.net",
     "https://ossrdbms-aad.database.usgovcloudapi.net/.default"),
    ("china", "https://management.chinacloudapi.cn", "https://ossrdbms-aad.database.chinacloudapi.cn/.default"),
])
def test_national_clouds_have_their_own_scopes(name, arm, postgres):
    cloud = auth.resolve_cloud(name)
    assert cloud.resource_manager == arm
    assert cloud.scope("postgres") == postgres
    assert cloud.scope("resource_manager") == arm + "/.default"


def test_default_cloud_follows_environment(monkeypatch):
    monkeypatch.setenv("AZURE_CLOUD_ENVIRONMENT", "AzureUSGovernment")
    assert auth.resolve_cloud(None).name == "AzureUSGovernment"
    monkeypatch.delenv("AZURE_CLOUD_ENVIRONMENT")
    assert auth.resolve_cloud(None).name == "AzureCloud"


def test_custom_cloud_from_endpoints():
    cloud = auth.resolve_cloud("custom", {"resource_manager": "https://127.0.0.1:47002/",
                                          "authority_host": "https://127.0.0.1:47001",
                                          "resource_manager_audience": "https://management.azure.com/"})
    assert cloud.resource_manager == "https://127.0.0.1:47002"
    assert cloud.scope("resource_manager") == "https://management.azure.com/.default"
    assert cloud.scope("sql") == "https://database.windows.net/.default"


@pytest.mark.parametrize("endpoints, message", [
    ({}, "cloud_endpoints.resource_manager"),
    ({"resource_manager": "http://127.0.0.1:1", "authority_host": "https://x"}, "must be an https:// URL"),
    ({"resource_manager": "https://a", "authority_host": "https://b", "typo": "x"}, "unknown key(s) typo"),
])
def test_custom_cloud_errors_name_the_field(endpoints, message):
    with pytest.raises(auth.AuthConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        auth.resolve_cloud("custom", endpoints)


def test_unknown_cloud_and_misplaced_endpoints():
    with pytest.raises(auth.AuthConfigError, match="unknown cloud"):
        auth.resolve_cloud("AzureGermanCloud")
    with pytest.raises(auth.AuthConfigError, match="only used with cloud_environment=custom"):
        auth.resolve_cloud("AzureCloud", {"resource_manager": "https://x"})


def test_awx_service_principal_names(monkeypatch):
    monkeypatch.delenv("AZURE_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("AZURE_SECRET", "not-a-real-secret")
    monkeypatch.setenv("AZURE_TENANT", "7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11")
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    credential = auth.build_credential(auth.resolve_cloud("AzureCloud"))
    assert type(credential).__name__ == "ClientSecretCredential"
    monkeypatch.delenv("AZURE_TENANT")
    with pytest.raises(auth.AuthConfigError, match="AZURE_TENANT"):
        auth.build_credential(auth.resolve_cloud("AzureCloud"))


def test_default_chain_without_awx_names(monkeypatch):
    monkeypatch.delenv("AZURE_SECRET", raising=False)
    credential = auth.build_credential(auth.resolve_cloud("AzureCloud"), client_id="abc")
    assert type(credential).__name__ == "DefaultAzureCredential"
    assert type(auth.build_credential(auth.resolve_cloud("AzureCloud"), "managed_identity")).__name__ == \
        "ManagedIdentityCredential"
