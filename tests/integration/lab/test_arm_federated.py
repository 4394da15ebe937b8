"""Federated identity credentials of user-assigned identities in the ARM double (issue 5, first part), driven by the
real azure-mgmt-msi client (fixtures in conftest.py)."""
from __future__ import annotations

import concurrent.futures
import time

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.msi import ManagedServiceIdentityClient

pytestmark = pytest.mark.usefixtures("no_ambient_azure_env")

RG = "rg-lab-apps"
ISSUER = "https://eastus2.oic.prod-aks.azure.com/7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11/5f1c2d3e-aaaa-4bbb-8ccc-0d1e2f3a4b5c/"
SUBJECT = "system:serviceaccount:app-ns:app-sa"
AUDIENCE = "api://AzureADTokenExchange"
WINDOW_S = 0.35  # a little more than the double's FIC_WRITE_WINDOW_S: the next write is no longer concurrent


@pytest.fixture
def msi(control_plane):
    return control_plane.client(ManagedServiceIdentityClient)


def credential(issuer=ISSUER, subject=SUBJECT, audiences=(AUDIENCE,)) -> dict:
    return {"properties": {"issuer": issuer, "subject": subject, "audiences": list(audiences)}}


def new_identity(msi, name):
    return msi.user_assigned_identities.create_or_update(RG, name, {"location": "eastus2"})


def test_create_get_list_replace_delete(control_plane, msi):
    identity = new_identity(msi, "mi-fic-crud")
    created = msi.federated_identity_credentials.create_or_update(RG, "mi-fic-crud", "app-sa", credential())
    assert created.name == "app-sa" and created.id == f"{identity.id}/federatedIdentityCredentials/app-sa"
    assert (created.issuer, created.subject, created.audiences) == (ISSUER, SUBJECT, [AUDIENCE])  # kept exactly
    assert msi.federated_identity_credentials.get(RG, "mi-fic-crud", "app-sa").subject == SUBJECT
    time.sleep(WINDOW_S)
    replaced = msi.federated_identity_credentials.create_or_update(
        RG, "mi-fic-crud", "app-sa", credential(subject="system:serviceaccount:app-ns:other"))
    assert replaced.subject == "system:serviceaccount:app-ns:other"
    assert [c.name for c in msi.federated_identity_credentials.list(RG, "mi-fic-crud")] == ["app-sa"]
    assert control_plane.lab.arm.federated_credentials(identity.client_id.upper()) == [
        {"issuer": ISSUER, "subject": "system:serviceaccount:app-ns:other", "audiences": [AUDIENCE]}]
    time.sleep(WINDOW_S)
    msi.federated_identity_credentials.delete(RG, "mi-fic-crud", "app-sa")
    with pytest.raises(ResourceNotFoundError):
        msi.federated_identity_credentials.get(RG, "mi-fic-crud", "app-sa")
    msi.federated_identity_credentials.delete(RG, "mi-fic-crud", "app-sa")  # 204: already gone


@pytest.mark.parametrize("name, body, words", [
    ("ab", credential(), "name 'ab' is invalid"),
    ("-app", credential(), "is invalid"),
    ("app sa", credential(), "is invalid"),
    ("app-sa", credential(issuer="http://issuer.example/"), "must be an https URL"),
    ("app-sa", credential(subject=""), "subject of a federated identity credential is required"),
    ("app-sa", credential(audiences=()), "exactly one audience"),
    ("app-sa", credential(audiences=(AUDIENCE, "api://other")), "exactly one audience"),
])
def test_invalid_credentials_are_refused(msi, name, body, words):
    new_identity(msi, "mi-fic-bad")
    with pytest.raises(HttpResponseError) as refused:
        msi.federated_identity_credentials.create_or_update(RG, "mi-fic-bad", name, body)
    assert refused.value.status_code == 400 and words in refused.value.error.message
    assert not list(msi.federated_identity_credentials.list(RG, "mi-fic-bad"))


def test_the_21st_credential_is_refused(msi):
    new_identity(msi, "mi-fic-many")
    for number in range(20):
        msi.federated_identity_credentials.create_or_update(
            RG, "mi-fic-many", f"sa-{number:02d}", credential(subject=f"system:serviceaccount:ns:sa-{number}"))
        time.sleep(WINDOW_S)
    with pytest.raises(HttpResponseError) as refused:
        msi.federated_identity_credentials.create_or_update(RG, "mi-fic-many", "sa-20", credential())
    assert refused.value.error.code == "FederatedIdentityCredentialsLimitExceeded" and "20" in refused.value.message
    assert len(list(msi.federated_identity_credentials.list(RG, "mi-fic-many"))) == 20  # paged: 5 per page
    time.sleep(WINDOW_S)
    msi.federated_identity_credentials.create_or_update(  # replacing one of the 20 is not a 21st
        RG, "mi-fic-many", "sa-00", credential(subject="system:serviceaccount:ns:renamed"))


def test_concurrent_writes_on_one_identity_get_409(msi):
    new_identity(msi, "mi-fic-race")
    time.sleep(WINDOW_S)

    def write(number):
        try:
            msi.federated_identity_credentials.create_or_update(
                RG, "mi-fic-race", f"race-{number}", credential(subject=f"system:serviceaccount:ns:race-{number}"))
            return "ok"
        except ResourceExistsError as exc:  # azure-core maps 409 to ResourceExistsError, whatever the body
            assert exc.error.code == "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"
            assert "written concurrently" in exc.error.message
            return "409"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(write, range(4)))
    assert outcomes.count("ok") >= 1 and outcomes.count("409") >= 1, outcomes
    assert len(list(msi.federated_identity_credentials.list(RG, "mi-fic-race"))) == outcomes.count("ok")


def test_deleting_the_identity_deletes_its_credentials(control_plane, msi):
    identity = new_identity(msi, "mi-fic-gone")
    msi.federated_identity_credentials.create_or_update(RG, "mi-fic-gone", "app-sa", credential())
    msi.user_assigned_identities.delete(RG, "mi-fic-gone")
    assert control_plane.lab.arm.federated_credentials(identity.client_id) == []
    new_identity(msi, "mi-fic-gone")
    assert not list(msi.federated_identity_credentials.list(RG, "mi-fic-gone"))
