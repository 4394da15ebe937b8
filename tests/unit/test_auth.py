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


# What AWX's "Microsoft Azure Resource Manager" credential injects (awx/main/models/credential/injectors.py,
# azure_rm) and what azure-identity reads itself: each name must reach the credential it is meant for. The
# credentials below are azure-identity's own objects; their attributes are read, no token is requested.
AZURE_NAMES = ("AZURE_SUBSCRIPTION_ID", "AZURE_CLIENT_ID", "AZURE_SECRET", "AZURE_TENANT", "AZURE_CLOUD_ENVIRONMENT",
               "AZURE_AD_USER", "AZURE_PASSWORD", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_USERNAME",
               "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_CLIENT_CERTIFICATE_PATH")
TENANT, CLIENT, SUBSCRIPTION = "7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11", "11111111-2222-3333-4444-555555555555", \
    "2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23"
FAKE_SECRET = "fake-secret-for-a-unit-test"


@pytest.fixture
def azure_env(monkeypatch):
    """A clean slate of Azure variables; returns a setter."""
    for name in AZURE_NAMES:
        monkeypatch.delenv(name, raising=False)
    return lambda **values: [monkeypatch.setenv(k, v) for k, v in values.items()]


@pytest.mark.parametrize("cloud_environment, authority", [
    (None, "https://login.microsoftonline.com"),
    ("AzureCloud", "https://login.microsoftonline.com"),
    ("AzureUSGovernment", "https://login.microsoftonline.us"),
    ("AzureChinaCloud", "https://login.chinacloudapi.cn"),
])
def test_awx_azure_credential_maps_to_a_service_principal(azure_env, cloud_environment, authority):
    """AWX injects AZURE_SUBSCRIPTION_ID, AZURE_CLIENT_ID, AZURE_SECRET, AZURE_TENANT and AZURE_CLOUD_ENVIRONMENT."""
    azure_env(AZURE_SUBSCRIPTION_ID=SUBSCRIPTION, AZURE_CLIENT_ID=CLIENT, AZURE_SECRET=FAKE_SECRET, AZURE_TENANT=TENANT,
              **({"AZURE_CLOUD_ENVIRONMENT": cloud_environment} if cloud_environment else {}))
    cloud = auth.resolve_cloud(None)  # the module's cloud_environment option left unset
    credential = auth.build_credential(cloud)
    assert type(credential).__name__ == "ClientSecretCredential"
    assert (credential._tenant_id, credential._client_id) == (TENANT, CLIENT)  # pylint: disable=protected-access
    assert credential._client_credential == FAKE_SECRET  # pylint: disable=protected-access
    assert credential._authority.rstrip("/") == authority  # pylint: disable=protected-access
    assert auth.subscription_id_from(None) == SUBSCRIPTION
    assert auth.subscription_id_from("00000000-0000-0000-0000-000000000000") != SUBSCRIPTION  # the option wins


def test_tenant_option_wins_over_awx_tenant(azure_env):
    azure_env(AZURE_CLIENT_ID=CLIENT, AZURE_SECRET=FAKE_SECRET, AZURE_TENANT=TENANT)
    other = "22222222-3333-4444-5555-666666666666"
    credential = auth.build_credential(auth.resolve_cloud("AzureCloud"), tenant_id=other)
    assert credential._tenant_id == other  # pylint: disable=protected-access


def test_awx_secret_with_azure_identity_tenant_name(azure_env):
    """AZURE_SECRET with azure-identity's AZURE_TENANT_ID (a mix some pipelines set) is the same service principal."""
    azure_env(AZURE_CLIENT_ID=CLIENT, AZURE_SECRET=FAKE_SECRET, AZURE_TENANT_ID=TENANT)
    credential = auth.build_credential(auth.resolve_cloud("AzureCloud"))
    assert (type(credential).__name__, credential._tenant_id) == ("ClientSecretCredential", TENANT)  # pylint: disable=protected-access


def test_azure_identity_names_go_to_its_environment_credential(azure_env):
    """azure-identity's own names (AZURE_CLIENT_SECRET, AZURE_TENANT_ID) win over AWX's and are read by azure-identity
    itself, through DefaultAzureCredential's EnvironmentCredential, with the cloud's authority."""
    azure_env(AZURE_CLIENT_ID=CLIENT, AZURE_CLIENT_SECRET=FAKE_SECRET, AZURE_TENANT_ID=TENANT,
              AZURE_SECRET="another-fake-secret", AZURE_TENANT="33333333-4444-5555-6666-777777777777")
    credential = auth.build_credential(auth.resolve_cloud("AzureUSGovernment"))
    assert type(credential).__name__ == "DefaultAzureCredential"
    environment = credential.credentials[0]
    assert type(environment).__name__ == "EnvironmentCredential"
    inner = environment._credential  # pylint: disable=protected-access
    assert (type(inner).__name__, inner._tenant_id, inner._client_id) == ("ClientSecretCredential", TENANT, CLIENT)  # pylint: disable=protected-access
    assert inner._client_credential == FAKE_SECRET  # pylint: disable=protected-access
    assert inner._authority.rstrip("/") == "https://login.microsoftonline.us"  # pylint: disable=protected-access


def test_workload_identity_names_reach_the_default_chain(azure_env, tmp_path):
    """AKS's webhook injects AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE."""
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token")
    azure_env(AZURE_CLIENT_ID=CLIENT, AZURE_TENANT_ID=TENANT, AZURE_FEDERATED_TOKEN_FILE=str(token_file))
    credential = auth.build_credential(auth.resolve_cloud("AzureCloud"))
    names = [type(c).__name__ for c in credential.credentials]
    assert "WorkloadIdentityCredential" in names
    workload = credential.credentials[names.index("WorkloadIdentityCredential")]
    client = workload._client  # pylint: disable=protected-access
    assert (client._tenant_id, client._client_id) == (TENANT, CLIENT)  # pylint: disable=protected-access
    assert workload._token_file_path == str(token_file)  # pylint: disable=protected-access


def test_awx_username_password_form_is_refused_without_its_password(azure_env):
    """AWX injects AZURE_AD_USER / AZURE_PASSWORD when its credential has no client and tenant: refused by name."""
    azure_env(AZURE_SUBSCRIPTION_ID=SUBSCRIPTION, AZURE_AD_USER="ops@example.com", AZURE_PASSWORD=FAKE_SECRET)
    with pytest.raises(auth.AuthConfigError, match="AZURE_AD_USER") as error:
        auth.build_credential(auth.resolve_cloud("AzureCloud"))
    assert FAKE_SECRET not in str(error.value)
    # an explicit managed identity does not look at those variables
    assert type(auth.build_credential(auth.resolve_cloud("AzureCloud"), "managed_identity")).__name__ == \
        "ManagedIdentityCredential"


def test_incomplete_awx_names_say_what_is_missing_without_the_secret(azure_env):
    azure_env(AZURE_SECRET=FAKE_SECRET, AZURE_TENANT=TENANT)
    with pytest.raises(auth.AuthConfigError, match="AZURE_CLIENT_ID") as error:
        auth.build_credential(auth.resolve_cloud("AzureCloud"))
    assert FAKE_SECRET not in str(error.value)


@pytest.mark.parametrize("value, name", [("AzureUSGovernment", "AzureUSGovernment"), ("usgovernment", "AzureUSGovernment"),
                                         ("AzureChinaCloud", "AzureChinaCloud"), ("AzureCloud", "AzureCloud")])
def test_awx_cloud_environment_values(azure_env, value, name):
    azure_env(AZURE_CLOUD_ENVIRONMENT=value)
    assert auth.resolve_cloud(None).name == name
