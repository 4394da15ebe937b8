import multiprocessing
import time

import pytest

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import cosmos

ACCOUNT = ("/subscriptions/2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23/resourceGroups/rg-data/providers/"
           "Microsoft.DocumentDB/databaseAccounts/cosmos-prod")
PRINCIPAL = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"


def test_account_id_is_arms_resource_id():
    assert cosmos.account_id("2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23", "rg-data", "cosmos-prod") == ACCOUNT


@pytest.mark.parametrize("scope, relative", [
    ("/", ""),
    ("", ""),
    ("/dbs/appdb", "/dbs/appdb"),
    ("/dbs/appdb/", "/dbs/appdb"),
    ("/dbs/appdb/colls/items", "/dbs/appdb/colls/items"),
    (ACCOUNT, ""),
    (ACCOUNT + "/", ""),
    (ACCOUNT + "/dbs/appdb", "/dbs/appdb"),
    (ACCOUNT.lower() + "/dbs/AppDB/colls/Items", "/dbs/AppDB/colls/Items"),  # account part: any case; names: kept
    ("/dbs/app db/colls/ünï", "/dbs/app db/colls/ünï"),
])
def test_relative_and_full_scopes_normalise_to_one(scope, relative):
    assert cosmos.normalise_scope(scope, ACCOUNT) == (ACCOUNT + relative, relative)


@pytest.mark.parametrize("scope", [
    ACCOUNT + ACCOUNT,  # what the Azure CLI makes of a full id (azure-cli#31422)
    ACCOUNT + "-2/dbs/appdb",  # another account whose name starts the same
    ACCOUNT.replace("cosmos-prod", "cosmos-test") + "/dbs/appdb",
    "/dbs",
    "/dbs/",
    "/dbs//colls/items",
    "/dbs/appdb/colls",
    "/dbs/appdb/colls/items/docs/1",
    "/colls/items",
    "dbs/appdb",
    "appdb",
    "/dbs/a?b",
    "/dbs/a#b",
    "/dbs/a\\b",
    "/dbs/trailing /colls/items",
    "/dbs/" + "x" * 256,
])
def test_bad_scopes_are_refused(scope):
    with pytest.raises(cosmos.ScopeError):
        cosmos.normalise_scope(scope, ACCOUNT)


@pytest.mark.parametrize("role, guid", [
    ("Data Reader", "00000000-0000-0000-0000-000000000001"),
    ("cosmos db built-in data reader", "00000000-0000-0000-0000-000000000001"),
    ("Cosmos DB Built-in Data Contributor", "00000000-0000-0000-0000-000000000002"),
    ("00000000-0000-0000-0000-000000000002", "00000000-0000-0000-0000-000000000002"),
    ("AABBCCDD-0000-0000-0000-000000000009", "aabbccdd-0000-0000-0000-000000000009"),
    (ACCOUNT + "/sqlRoleDefinitions/00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000001"),
])
def test_role_by_name_guid_or_id(role, guid):
    assert cosmos.role_definition_guid(role, ACCOUNT) == guid


@pytest.mark.parametrize("role", ["Contributor", "Reader", "Data Owner", "", "1", ACCOUNT + "/sqlRoleDefinitions/x",
                                  ACCOUNT.replace("cosmos-prod", "other") + "/sqlRoleDefinitions/"
                                  "00000000-0000-0000-0000-000000000001"])
def test_unknown_roles_are_refused(role):
    with pytest.raises(cosmos.ScopeError):
        cosmos.role_definition_guid(role, ACCOUNT)


def test_assignment_name_is_deterministic_and_tells_triples_apart():
    name = cosmos.assignment_name(ACCOUNT, PRINCIPAL, "00000000-0000-0000-0000-000000000001", "/dbs/appdb")
    assert name == cosmos.assignment_name(ACCOUNT.upper(), PRINCIPAL.upper(), "00000000-0000-0000-0000-000000000001",
                                          "/dbs/appdb")
    others = {cosmos.assignment_name(ACCOUNT, PRINCIPAL, "00000000-0000-0000-0000-000000000002", "/dbs/appdb"),
              cosmos.assignment_name(ACCOUNT, PRINCIPAL, "00000000-0000-0000-0000-000000000001", "/dbs/AppDB"),
              cosmos.assignment_name(ACCOUNT, PRINCIPAL, "00000000-0000-0000-0000-000000000001", "")}
    assert name not in others and len(others) == 3


def test_equivalent_matches_principal_role_and_exact_scope():
    def rest(name, principal, role, scope):
        return cosmos.describe({"name": name, "properties": {
            "principalId": principal, "roleDefinitionId": ACCOUNT + "/sqlRoleDefinitions/" + role, "scope": scope}},
            ACCOUNT)
    listed = [rest("a", PRINCIPAL.upper(), "00000000-0000-0000-0000-000000000001", ACCOUNT.lower() + "/dbs/appdb/"),
              rest("b", PRINCIPAL, "00000000-0000-0000-0000-000000000001", ACCOUNT + "/dbs/AppDB"),
              rest("c", PRINCIPAL, "00000000-0000-0000-0000-000000000002", ACCOUNT + "/dbs/appdb"),
              rest("d", "11111111-2222-3333-4444-555555555555", "00000000-0000-0000-0000-000000000001",
                   ACCOUNT + "/dbs/appdb")]
    assert listed[0]["role"] == "Cosmos DB Built-in Data Reader" and listed[0]["scope"] == ACCOUNT + "/dbs/appdb"
    found = cosmos.equivalent(listed, PRINCIPAL, "00000000-0000-0000-0000-000000000001", ACCOUNT + "/dbs/appdb")
    assert [a["name"] for a in found] == ["a"]


class Busy(Exception):
    status_code = 412


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.waits = []

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.now += seconds


def test_retry_waits_doubling_then_succeeds():
    clock, calls, seen = FakeClock(), [], []

    def call():
        calls.append(1)
        if len(calls) < 4:
            raise Busy()
        return "done"
    assert cosmos.retry(call, cosmos.is_busy, 60, on_retry=seen.append, sleep=clock.sleep,
                        clock=lambda: clock.now) == "done"
    assert clock.waits == [1.0, 2.0, 4.0] and len(seen) == 3


def test_retry_gives_up_at_the_timeout_and_never_retries_other_errors():
    clock = FakeClock()

    def busy():
        raise Busy()

    with pytest.raises(Busy):
        cosmos.retry(busy, cosmos.is_busy, 5, sleep=clock.sleep, clock=lambda: clock.now)
    assert sum(clock.waits) <= 5 and clock.waits == [1.0, 2.0]
    calls = []

    def boom():
        calls.append(1)
        raise ValueError("not an Azure answer")
    with pytest.raises(ValueError):
        cosmos.retry(boom, cosmos.is_busy, 60, sleep=clock.sleep, clock=lambda: clock.now)
    assert len(calls) == 1


def test_principal_not_replicated_is_recognised():
    class BadRequest(Exception):
        status_code = 400
    exc = BadRequest("(BadRequest) The provided principal ID [%s] was not found in the AAD tenant(s) [x] which are "
                     "associated with the customer's subscription." % PRINCIPAL)
    assert cosmos.is_principal_not_replicated(exc)
    assert not cosmos.is_principal_not_replicated(BadRequest("The provided scope [x] is not valid"))
    assert not cosmos.is_busy(exc)


def _hold(account, ready, release):
    with cosmos.AccountLock(account, 5):
        ready.set()
        release.wait(10)


def test_account_lock_excludes_other_processes_and_times_out():
    account = ACCOUNT + "/lock-test-%s" % time.time()
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(account, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with cosmos.AccountLock(account, 0.3):
                pass
        assert 0.3 <= time.monotonic() - started < 3
        with cosmos.AccountLock(ACCOUNT + "/another-account", 0.3):  # other accounts are not blocked
            pass
    finally:
        release.set()
        holder.join(10)
    with cosmos.AccountLock(account, 1):  # free again once the holder is gone
        pass


@pytest.mark.parametrize("name", ["..", ".", "a\x00b", "tab\there", "trailing ", "a/b", "a#b", "x" * 256, ""])
def test_names_cosmos_cannot_have(name):
    assert cosmos.name_problem(name)
    with pytest.raises(cosmos.ScopeError):
        cosmos.normalise_scope("/dbs/%s/colls/x" % name, ACCOUNT)


@pytest.mark.parametrize("name", ["appdb", "App DB", "ünï", "a]b", 'a"b', "a;b", "x" * 255])
def test_names_cosmos_can_have(name):
    assert cosmos.name_problem(name) is None


def test_cosmos_account_entra_writes_wait_while_the_account_is_busy():
    """A 412 "another operation in progress" on the account PATCH (or regenerateKey) is retried under the account's
    lock; it failed the module before (make chaos found it)."""
    from azure.core.exceptions import HttpResponseError

    from ansible_collections.csa_inabox.managed_identity.plugins.modules import cosmos_account_entra

    class Module:
        params = {"busy_timeout": 10}

    answers = []

    def patch():
        answers.append(time.monotonic())
        if len(answers) <= 2:
            busy = HttpResponseError(message="PreconditionFailed: There is already an operation in progress which "
                                             "requires exclusive lock on this service.")
            busy.status_code = 412
            raise busy
        return "done"

    assert cosmos_account_entra.write(Module(), {"id": ACCOUNT}, patch) == "done"
    assert len(answers) == 3 and answers[2] - answers[0] >= 2.5  # waited 1 s, then 2 s

    def refused():
        error = HttpResponseError(message="BadRequest: disableLocalAuth is not a boolean")
        error.status_code = 400
        raise error

    with pytest.raises(HttpResponseError):
        cosmos_account_entra.write(Module(), {"id": ACCOUNT}, refused)
