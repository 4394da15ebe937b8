"""The lab's App Service / Container Apps fronts (azurelab.webfront) running the demo app as the platform would.

Real parts: the fronts themselves over HTTPS (urllib with the lab CA), the demo app in its own process with
azure-identity's DefaultAzureCredential and psycopg, the lab PostgreSQL server behind its TLS front, OpenBao's
"before" state (conftest_pg's stacks).

Stand-ins, until the ARM double's workload parts are merged (issue 5, Helper A): ``StubArm`` plays
``ArmState.site_app_settings`` / ``container_app_env`` (the app settings a test sets), and ``AppServiceIdentity`` plays
the lab identity endpoint's App Service style paths ``/sites/<name>/msi/token`` and ``/containerapps/<name>/msi/token``
(azure-identity's protocol: ``X-IDENTITY-HEADER``, ``client_id`` selector, a refusal when several identities are
attached and none is selected). Once those are merged, the same checks against the real lab belong in the lab-level
tests.
"""
from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

# Fixtures are used by name; pytest no longer loads plugins from a nested conftest, so they are imported here.
from conftest_pg import DBA, DBA_ROLE, entra_and_passwords_on, openbao_stack, pg_stack  # noqa: F401 pylint: disable=unused-import
from labrunner import free_base

from azurelab import config, webfront

SITE, CONTAINER_APP = "app-storefront", "ca-notifier"
NO_DEFAULT = "No default managed identity is assigned to this app: select one with its client id"


class StubArm:
    """The two ArmState accessors the fronts read (stand-in, see the module docstring)."""

    def __init__(self):
        self.app_settings: dict[str, dict] = {SITE: {}}
        self.container_env: dict[str, dict] = {CONTAINER_APP: {}}

    def site_app_settings(self, name: str) -> dict:
        return dict(self.app_settings[name])

    def container_app_env(self, name: str) -> dict:
        return dict(self.container_env[name])


class AppServiceIdentity(BaseHTTPRequestHandler):
    """App Service style managed identity endpoint for ``/<kind>/<name>/msi/token`` (stand-in, see above)."""

    issuer = None  # the lab issuer
    attached: dict[str, list[dict]] = {}  # "<kind>/<name>" -> identities (object_id, client_id, type)
    headers_by_workload: dict[str, str] = {}
    requests: list[dict] = []

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        key = url.path.strip("/").removesuffix("/msi/token")
        type(self).requests.append({"workload": key, "client_id": query.get("client_id"),
                                    "header_ok": self.headers.get("X-IDENTITY-HEADER") == self.headers_by_workload.get(key)})
        if key not in self.attached or not self.headers_by_workload.get(key):
            return self.answer(404, {"error": "not found"})
        if self.headers.get("X-IDENTITY-HEADER") != self.headers_by_workload[key]:
            return self.answer(401, {"statusCode": 401, "message": "Unauthorized"})
        candidates = [i for i in self.attached[key] if query.get("client_id") in (None, i["client_id"])]
        if len(candidates) != 1:
            message = NO_DEFAULT if "client_id" not in query else "Identity not found"
            return self.answer(400, {"statusCode": 400, "message": message})
        token, expires_on = self.issuer.issue(candidates[0], query["resource"])
        return self.answer(200, {"access_token": token, "expires_on": str(expires_on), "resource": query["resource"],
                                 "token_type": "Bearer", "client_id": candidates[0]["client_id"]})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def identities(pg_stack):
    """Two managed identities, each a PostgreSQL principal (pgaadauth) allowed to read public.products."""
    made = []
    for role in ("mi-storefront", "mi-storefront-2"):
        identity = {"object_id": str(uuid.uuid4()), "client_id": str(uuid.uuid4()), "type": "ManagedIdentity",
                    "role": role}
        with pg_stack.connect(DBA_ROLE, pg_stack.token(DBA), dbname="postgres") as conn:
            conn.execute("SELECT pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)",
                         (role, identity["object_id"]))
        with pg_stack.connect(pg_stack.lab.admin_login, pg_stack.lab.admin_password()) as conn:
            conn.execute(f'GRANT SELECT ON public.products TO "{role}"')
        made.append(identity)
    return made


@pytest.fixture(scope="module")
def platform(pg_stack, openbao_stack, identities):
    """The fronts of topology.yml's two web workloads, with StubArm and AppServiceIdentity; both identities attached
    to app-storefront. Yields ``(arm, {workload: url}, identity endpoint class)``."""
    openbao_stack.seed()  # storefront's "before" state: its AppRole, secret id and vault-mode config
    AppServiceIdentity.issuer = pg_stack.issuer
    AppServiceIdentity.attached = {f"sites/{SITE}": list(identities), f"containerapps/{CONTAINER_APP}": []}
    headers = {f"sites/{SITE}": secrets.token_urlsafe(16), f"containerapps/{CONTAINER_APP}": secrets.token_urlsafe(16)}
    AppServiceIdentity.headers_by_workload = headers
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), AppServiceIdentity)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    base = free_base(2)
    ports = config.Ports(entra=0, arm=0, identity=endpoint.server_port, postgres=pg_stack.front.port,
                         openbao=openbao_stack.ports.openbao, web=(base + 1, base + 2))
    arm = StubArm()
    fronts = webfront.build(pg_stack.paths, pg_stack.topology, ports, arm, headers)
    for name, server in fronts.items():
        server.start(f"web {name}")
    try:
        yield arm, {name: f"https://localhost:{s.server_address[1]}" for name, s in fronts.items()}, AppServiceIdentity
    finally:
        for server in fronts.values():
            server.shutdown()
            server.server_close()
        endpoint.shutdown()
        endpoint.server_close()


def get(pg_stack, url: str) -> tuple[int, dict]:
    """GET over HTTPS, trusting the lab CA only; returns (status, JSON body)."""
    context = ssl.create_default_context(cafile=str(pg_stack.paths.ca_cert))
    try:
        with urllib.request.urlopen(url, context=context, timeout=90) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_fronts_follow_the_topology(pg_stack, platform):
    _arm, urls, _endpoint = platform
    assert list(urls) == [SITE, CONTAINER_APP]  # web_apps, then container_apps
    assert len({url.rsplit(":", 1)[1] for url in urls.values()}) == 2
    status, body = get(pg_stack, urls[SITE] + "/nothing-here")
    assert status == 404 and "/nothing-here" in body["error_description"]


def test_health_identity_connects_as_the_identity_azure_client_id_picks(pg_stack, platform, identities):
    arm, urls, endpoint = platform
    for chosen in (identities[1], identities[0]):  # the setting is read at every request, as after a restart
        arm.app_settings[SITE] = {"AZURE_CLIENT_ID": chosen["client_id"], "PGUSER": chosen["role"]}
        endpoint.requests.clear()
        status, body = get(pg_stack, urls[SITE] + "/health/identity")
        assert status == 200, body
        assert body == {"app": "storefront", "mode": "identity-check", "ok": True, "connected_as": chosen["role"],
                        "identity_client_id": chosen["client_id"], "identity_object_id": chosen["object_id"],
                        "rows": [[2]], "workload": {"type": "app_service", "name": SITE}}
        # The app asked its own workload's endpoint, with its platform secret, for the identity the setting names.
        assert endpoint.requests == [{"workload": f"sites/{SITE}", "client_id": chosen["client_id"], "header_ok": True}]


def test_health_identity_without_azure_client_id_is_refused_by_the_platform(pg_stack, platform, identities):
    arm, urls, endpoint = platform
    arm.app_settings[SITE] = {"PGUSER": identities[0]["role"]}
    endpoint.requests.clear()
    status, body = get(pg_stack, urls[SITE] + "/health/identity")
    assert status == 503 and body["ok"] is False and body["mode"] == "identity-check"
    assert NO_DEFAULT in body["error"], body["error"]
    assert endpoint.requests[0] == {"workload": f"sites/{SITE}", "client_id": None, "header_ok": True}
    assert not [line for line in body["error"].split() if line.startswith("eyJ")]  # no token in the report


def test_a_token_for_the_wrong_role_is_refused(pg_stack, platform, identities):
    """PGUSER names one identity's role, AZURE_CLIENT_ID the other: the database refuses the token."""
    arm, urls, _endpoint = platform
    arm.app_settings[SITE] = {"AZURE_CLIENT_ID": identities[0]["client_id"], "PGUSER": identities[1]["role"]}
    status, body = get(pg_stack, urls[SITE] + "/health/identity")
    assert status == 503 and "password authentication failed" in body["error"], body


def test_root_runs_the_app_in_vault_mode_before_the_migration(pg_stack, platform):
    arm, urls, _endpoint = platform
    arm.app_settings[SITE] = {}
    stored = json.loads((pg_stack.paths.apps / "storefront.json").read_text())
    assert stored["mode"] == "vault" and stored["workload"] == {"type": "app_service", "name": SITE}
    assert "vm" not in stored
    status, body = get(pg_stack, urls[SITE] + "/")
    assert status == 200, body
    assert body["mode"] == "vault" and body["rows"] == [[2]]
    assert body["connected_as"].startswith("v-approle-storefro")  # Vault's name template truncates the role
    assert body["workload"] == {"type": "app_service", "name": SITE}


def test_a_workload_without_an_application(pg_stack, platform):
    _arm, urls, _endpoint = platform
    status, body = get(pg_stack, urls[CONTAINER_APP] + "/health/identity")
    assert status == 503 and body["app"] is None
    assert body["error"] == f"no application is deployed on containerapps/{CONTAINER_APP}"


def test_container_app_environment(pg_stack):
    """A Container App's process gets its container env, the platform's identity variables and CONTAINER_APP_NAME;
    a setting cannot override what the platform sets."""
    arm = StubArm()
    arm.container_env[CONTAINER_APP] = {"QUEUE": "orders", "IDENTITY_ENDPOINT": "http://elsewhere/"}
    workload = webfront.Workload("container_app", CONTAINER_APP, 1)
    platform = webfront.Platform(pg_stack.paths, pg_stack.topology, workload,
                                 lambda: arm.container_app_env(CONTAINER_APP),
                                 f"http://127.0.0.1:9/containerapps/{CONTAINER_APP}/msi/token", "the-header")
    env = platform.environment()
    assert env["QUEUE"] == "orders" and env["CONTAINER_APP_NAME"] == CONTAINER_APP
    assert env["IDENTITY_ENDPOINT"] == f"http://127.0.0.1:9/containerapps/{CONTAINER_APP}/msi/token"
    assert env["IDENTITY_HEADER"] == "the-header"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == str(pg_stack.paths.ca_bundle)
    assert env["ODBCSYSINI"] == str(pg_stack.paths.root / "odbc")
    assert env["HOME"] == str(pg_stack.paths.root / "web" / CONTAINER_APP)
    assert "AZURE_POD_IDENTITY_AUTHORITY_HOST" not in env and "VAULT_ADDR" not in env  # nothing of the caller's

    def unreadable():
        raise LookupError("The Resource 'Microsoft.App/containerApps/ca-notifier' was not found.")

    platform.settings = unreadable
    platform.application = {"name": "some-app"}
    started = time.monotonic()
    status, body = platform.run(identity_check=True)
    assert status == 503 and body["error"].startswith("platform: LookupError: The Resource")
    assert time.monotonic() - started < 5  # reported without starting the app


def test_workload_of_an_application():
    assert config.workload({"name": "a", "vm": "vm-a"}) == {"type": "vm", "name": "vm-a"}
    aks = {"type": "aks", "name": "aks-prod", "namespace": "app-namespace"}
    assert config.workload({"name": "b", "workload": aks}) == aks
    for broken in ({"name": "c"}, {"name": "d", "workload": {"type": "function_app", "name": "f"}},
                   {"name": "e", "workload": {"type": "aks"}}):
        with pytest.raises(ValueError):
            config.workload(broken)
    topology = config.topology()
    assert config.application_on(topology, "app_service", SITE)["name"] == "storefront"
    assert config.application_on(topology, "aks", "aks-prod")["name"] == "webapp"
    assert config.application_on(topology, "container_app", CONTAINER_APP) is None
