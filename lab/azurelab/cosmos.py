"""Cosmos DB for NoSQL data plane (HTTPS): a front that authorizes every request as Cosmos DB does, then relays it
to ``@vercel/cosmosdb-server`` (Node.js, in memory, no authorization of its own).

One account per front: the first of ``topology.yml``'s ``cosmos_accounts``, at ``https://localhost:<Ports.cosmos>/``
(the account's ``documentEndpoint`` in the ARM double). The backend is ``node lab/cosmos/server.js`` (installed by
``make venv``: ``npm ci`` in ``lab/cosmos``), a child process on a port of its own on 127.0.0.1, started by
:meth:`CosmosFront.start` and stopped by :meth:`CosmosFront.stop`; it also exits when its parent dies (its stdin
closes), so none outlives the lab. At start the front creates, in the backend, the account's databases and containers
as the ARM state holds them (with their partition key) and writes the topology's ``seed`` documents.

Requests are relayed as they come (keep-alive, one backend connection per client connection, ``Content-Length``
bodies), without their ``Authorization`` header. The account read (``GET /``) is rewritten so that the SDK never
learns the backend's address: ``id`` / ``_rid`` name the account, ``writableLocations`` / ``readableLocations``
point at the account endpoint; ``content-location`` keeps the host the client used.

Authorization, against the ARM double's *live* state (``ArmState.cosmos_account`` at every request, so a role
assignment, ``disableLocalAuth`` or a regenerated key applies at the next request, as in Cosmos DB):

* ``Authorization`` is URL-encoded ``type=aad&ver=1.0&sig=<JWT>`` or ``type=master&ver=1.0&sig=<base64 HMAC>``;
  missing or of another type: 401 ``Unauthorized``.
* Entra (``aad``): a lab token (signature, issuer, ``exp``) whose audience is the account endpoint's
  ``scheme://host`` (``https://localhost``: what azure-cosmos asks for) or ``https://cosmos.azure.com``; else 401
  ("Provided AAD token has been expired since [...]", "Provided AAD token is intended for [...]. This database
  account accepts tokens intended for [...]"). Then data-plane RBAC: the token's ``oid`` needs an assignment whose
  role grants the request's data action (``*`` at the end of a role's action is a wildcard) at a scope covering the
  resource: the account id (case-insensitive), optionally ``/dbs/<db>[/colls/<container>]`` (names
  case-sensitive). Else 403 ``Forbidden``, ``x-ms-substatus: 5301``, "Request blocked by Auth <account> : Request is
  blocked because principal [<oid>] does not have required RBAC permissions to perform action [<action>] on
  resource [<resource>]. Learn more: https://aka.ms/cosmos-native-rbac." The account read (``GET /``) needs
  ``readMetadata`` at *any* scope of the account: SDKs read it when a client starts, and a principal assigned on one
  database only works in Cosmos DB (without any assignment it is refused on resource ``[/]``, as in Cosmos DB).
  Requests no data-plane role can grant (creating, replacing or deleting databases and containers, offers, users,
  stored procedures...) are refused whatever the roles: 403, substatus 5300, "The given request [<METHOD> <path>]
  cannot be authorized by AAD token in data plane." (ARM creates those.)
* Master key (``master``): with ``disableLocalAuth`` on, 401 "Local Authorization is disabled. Use an AAD token to
  authorize all requests." (Cosmos DB answers 401 ``Unauthorized``, not 403). ``x-ms-date`` (or ``date``) more than
  15 minutes away from now: 403 "The authorization token is not valid at the current time...". The signature is
  HMAC-SHA256, keyed with the base64-decoded key, of ``verb\\nresourceType\\nresourceLink\\nx-ms-date\\ndate\\n``
  (verb, type and dates in lower case; the link as sent, unquoted), compared with the account's current primary and
  secondary keys, and the read-only keys for reads (GET, queries); else 401 "The input authorization token can't
  serve the request. ... Server used the following payload to sign: '...'". A master key may do anything.
  Source: https://learn.microsoft.com/rest/api/cosmos-db/access-control-on-cosmosdb-resources

Requests and their data actions (``Microsoft.DocumentDB/databaseAccounts/`` + ...; resource ``/``, ``dbs/<db>`` or
``dbs/<db>/colls/<container>``):

* ``GET /``, ``GET|query /dbs``, ``GET /dbs/<db>``, ``GET|query /dbs/<db>/colls``, ``GET .../colls/<c>``,
  ``GET .../pkranges``, ``GET .../udfs|sprocs|triggers[/<id>]``: ``readMetadata``
* ``POST .../docs`` query or query plan: ``sqlDatabases/containers/executeQuery``
* ``GET .../docs`` (read feed): ``.../items/read``; with an ``A-IM`` header (change feed): ``.../readChangeFeed``
* ``GET .../docs/<id>``: ``items/read``; ``POST .../docs``: ``items/create``, upsert: ``items/upsert``;
  ``PUT`` or ``PATCH .../docs/<id>``: ``items/replace``; ``DELETE .../docs/<id>``: ``items/delete``;
  a transactional batch: the action of each of its operations.

Errors are Cosmos-shaped: ``{"code", "message"}`` with an ``ActivityId`` line, headers ``x-ms-activity-id`` and
``x-ms-substatus`` where Cosmos sends one. The lab log gets method, path, principal and decision; never a token, a
signature or a key.

Not emulated: several accounts per front, regions and failover (one location), resource tokens, Entra groups (an
assignment to a group does not cover its members), custom role definitions and ``notDataActions``,
``disableKeyBasedMetadataWriteAccess``, network rules, throughput and 429s, persistence (documents live in the
backend's memory: every start re-seeds), keeping databases or containers that a master key creates in ARM. The
backend's own gaps stay (see @vercel/cosmosdb-server: no stored procedures, triggers, offers or users; its query
engine; its error bodies).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import pathlib
import select
import shutil
import subprocess
import uuid
from typing import Callable
from urllib.parse import unquote, urlsplit

from . import ca
from .arm import COSMOS, COSMOS_BUILT_IN_ROLES
from .config import HOST, REPO_ROOT, LabPaths
from .tokens import Issuer, TokenError
from .web import JsonHandler, LabHTTPServer

LOG = logging.getLogger("azurelab.cosmos")

BACKEND_DIR = REPO_ROOT / "lab" / "cosmos"
BACKEND_PACKAGE = BACKEND_DIR / "node_modules" / "@vercel" / "cosmosdb-server"
BACKEND_START_TIMEOUT_S = 10
BACKEND_STOP_TIMEOUT_S = 3
GLOBAL_AUDIENCE = "https://cosmos.azure.com"
DATE_WINDOW = datetime.timedelta(minutes=15)  # how far x-ms-date may be from the server's clock
RBAC_LINK = "Learn more: https://aka.ms/cosmos-native-rbac."
SERVICE_VERSION = "Microsoft.Azure.Documents.Common/2.14.0"
CHUNK = 64 * 1024
# Not relayed: they describe one hop, not the request (RFC 9110 section 7.6.1), or are the front's own business.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "authorization", "content-length", "date", "server"}
READ_METADATA = "readMetadata"
ITEMS = "sqlDatabases/containers/items/"
BATCH_ACTIONS = {"create": ITEMS + "create", "upsert": ITEMS + "upsert", "read": ITEMS + "read",
                 "replace": ITEMS + "replace", "patch": ITEMS + "replace", "delete": ITEMS + "delete"}


class CosmosBackendError(RuntimeError):
    """The Node.js backend cannot run (no Node.js >= 20, ``npm ci`` not run, or it failed to start)."""


@dataclasses.dataclass(frozen=True)
class Operation:
    """What one request is, for the master-key signature and for data-plane RBAC.

    ``resource_type`` / ``resource_link``: as the signature names them (``""`` / ``""`` for ``GET /``, ``docs`` /
    ``dbs/appdb/colls/items`` for a query, ``docs`` / ``dbs/appdb/colls/items/docs/1`` for one document).
    ``resource``: what an assignment's scope must cover (``/``, ``dbs/<db>`` or ``dbs/<db>/colls/<c>``).
    ``actions``: the data actions needed (short form, without ``Microsoft.DocumentDB/databaseAccounts/``); empty for
    a request no data-plane role can grant. ``read``: a read-only key may sign it. ``account_read``: ``GET /``.
    """

    resource_type: str
    resource_link: str
    resource: str
    actions: tuple[str, ...]
    read: bool
    account_read: bool = False


def _flag(headers, name: str) -> bool:
    return (headers.get(name) or "").strip().lower() == "true"


def classify(method: str, path: str, headers, body: bytes) -> Operation:
    """The :class:`Operation` of a request (``path`` without its query string, as sent: names URL-encoded)."""
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments:
        resource_type, link = "", ""
    elif len(segments) % 2:
        resource_type, link = segments[-1], "/".join(segments[:-1])
    else:
        resource_type, link = segments[-2], "/".join(segments)
    is_dbs = segments[:1] == ["dbs"] and (len(segments) < 3 or segments[2] == "colls")
    resource = "/".join(segments[:4 if len(segments) >= 4 else 2]) if is_dbs and len(segments) >= 2 else "/"
    query = method == "POST" and (_flag(headers, "x-ms-documentdb-isquery")
                                  or _flag(headers, "x-ms-cosmos-is-query-plan-request")
                                  or (headers.get("Content-Type") or "").startswith("application/query+json"))
    read = method in ("GET", "HEAD") or query
    account_read = not segments and method == "GET"
    actions: tuple[str, ...] = ()
    if not is_dbs:
        actions = (READ_METADATA,) if account_read else ()
    elif len(segments) <= 4 or segments[4] in ("pkranges", "udfs", "sprocs", "triggers"):
        # Databases, containers and their metadata: roles may read them; only ARM changes them.
        actions = (READ_METADATA,) if read else ()
    elif segments[4] == "docs" and len(segments) == 5:
        if method == "GET":
            actions = ("sqlDatabases/containers/readChangeFeed" if headers.get("A-IM") else ITEMS + "read",)
        elif query:
            actions = ("sqlDatabases/containers/executeQuery",)
        elif method == "POST" and _flag(headers, "x-ms-cosmos-is-batch-request"):
            actions = _batch_actions(body)
        elif method == "POST":
            actions = (ITEMS + ("upsert" if _flag(headers, "x-ms-documentdb-is-upsert") else "create"),)
    elif segments[4] == "docs" and len(segments) == 6:
        actions = {"GET": (ITEMS + "read",), "HEAD": (ITEMS + "read",), "PUT": (ITEMS + "replace",),
                   "PATCH": (ITEMS + "replace",), "DELETE": (ITEMS + "delete",)}.get(method, ())
    return Operation(resource_type, link, resource, actions, read, account_read)


def _batch_actions(body: bytes) -> tuple[str, ...]:
    """The data actions of a transactional batch's operations (``()`` when the body is not a list of them)."""
    try:
        operations = json.loads(body or b"null")
        kinds = {str(op.get("operationType", "")).lower() for op in operations}
    except (ValueError, TypeError, AttributeError):
        return ()
    if not kinds or not kinds <= set(BATCH_ACTIONS):
        return ()
    return tuple(sorted({BATCH_ACTIONS[kind] for kind in kinds}))


def _grants(role_definition_id: str, action: str) -> bool:
    """Whether a built-in role's dataActions include ``action`` (a trailing ``*`` matches any rest)."""
    role = COSMOS_BUILT_IN_ROLES.get(role_definition_id.rsplit("/", 1)[-1].lower())
    if role is None:
        return False
    wanted = f"{COSMOS}/{action}".lower()
    for granted in (f"{COSMOS}/{a}".lower() for a in role[1]):
        if granted == wanted or (granted.endswith("*") and wanted.startswith(granted[:-1])):
            return True
    return False


def _scope_path(scope: str, account_id: str) -> str | None:
    """``""``, ``dbs/<db>`` or ``dbs/<db>/colls/<c>`` of an assignment scope on this account; ``None`` otherwise."""
    rest = scope[len(account_id):]
    if not scope.lower().startswith(account_id.lower()) or rest[:1] not in ("", "/"):
        return None
    parts = [p for p in rest.split("/") if p]
    keywords = [p.lower() for p in parts[0::2]]
    if len(parts) % 2 or keywords != ["dbs", "colls"][:len(keywords)]:
        return None
    return "/".join(f"{keyword}/{name}" for keyword, name in zip(keywords, parts[1::2]))


def _covers(scope_path: str, resource: str) -> bool:
    return scope_path == "" or resource == scope_path or resource.startswith(scope_path + "/")


def missing_action(account: dict, principal_id: str, operation: Operation) -> str | None:
    """The first data action of ``operation`` that ``principal_id``'s assignments do not grant, or ``None``.

    ``account`` is ``ArmState.cosmos_account(name)``. For the account read any scope of the account will do.
    """
    scopes = [(a["roleDefinitionId"], _scope_path(a["scope"], account["id"])) for a in account["assignments"]
              if a["principalId"].lower() == principal_id.lower()]
    for action in operation.actions:
        if not any(path is not None and (operation.account_read or _covers(path, operation.resource))
                   and _grants(role, action) for role, path in scopes):
            return action
    return None


def _parse_authorization(value: str) -> dict[str, str]:
    """``type=aad&ver=1.0&sig=...`` (URL-encoded) -> ``{"type", "ver", "sig"}``; the sig may hold ``=`` padding."""
    fields = {}
    for part in unquote(value).split("&"):
        key, _equals, rest = part.partition("=")
        fields[key.strip().lower()] = rest.strip()
    return fields


def string_to_sign(verb: str, resource_type: str, resource_link: str, x_date: str, date: str) -> str:
    """The master-key payload: ``verb\\ntype\\nlink\\nx-ms-date\\ndate\\n``, all but the link in lower case."""
    return f"{verb.lower()}\n{resource_type.lower()}\n{resource_link}\n{x_date.lower()}\n{date.lower()}\n"


def _unverified_claims(token: str) -> dict:
    """A JWT's claims, unchecked: only to word a refusal once the issuer has checked the signature."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _dotnet_time(moment: datetime.datetime) -> str:
    """``7/17/2022 5:09:09 PM (UTC)``: how Cosmos DB writes times in its AAD messages."""
    hour = moment.hour % 12 or 12
    return (f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} "
            f"{'AM' if moment.hour < 12 else 'PM'} (UTC)")


class Refusal(Exception):
    """An answer in Cosmos DB's error shape; ``log_reason`` goes to the lab log (never a secret)."""

    def __init__(self, status: int, code: str, message: str, log_reason: str, substatus: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.log_reason, self.substatus = log_reason, substatus


class Backend:
    """``node lab/cosmos/server.js``: @vercel/cosmosdb-server over plain HTTP on 127.0.0.1:``port``.

    ``start()`` raises :class:`CosmosBackendError` when Node.js >= 20 or the installed package is missing, or when
    the process does not report its port within ``BACKEND_START_TIMEOUT_S``. Its stderr goes to ``log_file``.
    """

    def __init__(self, log_file: pathlib.Path):
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> int:
        node = shutil.which("node")
        if node is None:
            raise CosmosBackendError("the lab's Cosmos DB data plane needs Node.js >= 20 (`node` on PATH)")
        if not BACKEND_PACKAGE.is_dir():
            raise CosmosBackendError(f"@vercel/cosmosdb-server is not installed in {BACKEND_DIR}: run `make venv` "
                                     "(it runs `npm ci` there)")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as errors:
            self.process = subprocess.Popen([node, "server.js"], cwd=BACKEND_DIR, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors)
        ready, _w, _x = select.select([self.process.stdout], [], [], BACKEND_START_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else b""
        try:
            self.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-2000:].strip()
            raise CosmosBackendError(f"the Cosmos DB backend did not start ({self.log_file}): {tail}") from None
        LOG.info("Cosmos DB backend pid %d on 127.0.0.1:%d", self.process.pid, self.port)
        return self.port

    def stop(self) -> None:
        """Close its stdin (it exits), SIGKILL it if it has not within ``BACKEND_STOP_TIMEOUT_S``; always reaps it."""
        process, self.process = self.process, None
        if process is None:
            return
        process.stdin.close()
        try:
            process.wait(BACKEND_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        LOG.info("Cosmos DB backend pid %d stopped (%s)", process.pid, process.returncode)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=60)


class CosmosFront:
    """The front for the first account of ``topology["cosmos_accounts"]`` on ``port`` (HTTPS, lab certificate).

    ``account_state(name)`` is ``ArmState.cosmos_account``, read at every request. Accepted token audiences: the
    account endpoint's ``scheme://host`` (``https://localhost``) and ``https://cosmos.azure.com``; ``issuer`` checks
    them. ``start()`` raises :class:`CosmosBackendError` when the backend cannot run or be seeded, ``OSError`` when
    ``port`` is taken (the backend is stopped again in both cases).
    """

    def __init__(self, paths: LabPaths, topology: dict, port: int, issuer: Issuer,
                 account_state: Callable[[str], dict]):
        self.paths = paths
        self.port = port
        self.issuer = issuer
        self.account_state = account_state
        self.spec = topology["cosmos_accounts"][0]
        self.name = self.spec["name"]
        endpoint = urlsplit(account_state(self.name)["endpoint"])
        self.audiences = [f"{endpoint.scheme}://{endpoint.hostname}", GLOBAL_AUDIENCE]
        self.backend = Backend(paths.logs / "cosmos-backend.log")
        self.server: LabHTTPServer | None = None

    # ----- life cycle -----

    def start(self) -> None:
        """Start the backend, create the account's databases, containers and seed documents, then serve."""
        self.backend.start()
        try:
            self.seed()
            self.server = LabHTTPServer(self.port, CosmosHandler, self, ca.server_context(self.paths))
        except BaseException:
            self.backend.stop()
            raise
        self.server.start("cosmos")
        LOG.info("Cosmos DB account %s served on https://localhost:%d/", self.name, self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.backend.stop()

    def seed(self) -> None:
        """Databases and containers as ARM holds them (partition keys included), then the topology's documents."""
        account = self.account_state(self.name)
        connection = self.backend.connection()
        try:
            for database, containers in account["databases"].items():
                self._backend_post(connection, "/dbs", {"id": database})
                for container in containers:
                    self._backend_post(connection, f"/dbs/{database}/colls",
                                       {"id": container, "partitionKey": account["partitionKeys"][database][container]})
            for database, spec in (self.spec.get("databases") or {}).items():
                for container, documents in ((spec or {}).get("seed") or {}).items():
                    for document in documents:
                        self._backend_post(connection, f"/dbs/{database}/colls/{container}/docs", document)
        finally:
            connection.close()

    @staticmethod
    def _backend_post(connection: http.client.HTTPConnection, path: str, body: dict) -> None:
        connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        answer = connection.getresponse()
        text = answer.read()
        if answer.status != 201:
            raise CosmosBackendError(f"seeding POST {path} answered {answer.status}: {text[:300]!r}")

    # ----- authorization -----

    def authorize(self, method: str, path: str, headers, body: bytes) -> str:
        """Return who the request is from (``oid`` or ``master key``) when allowed; raise :class:`Refusal`."""
        operation = classify(method, path, headers, body)
        account = self.account_state(self.name)
        fields = _parse_authorization(headers.get("Authorization") or "")
        if fields.get("type") == "aad" and fields.get("sig"):
            return self._authorize_aad(account, fields["sig"], method, path, operation)
        if fields.get("type") == "master" and fields.get("sig"):
            return self._authorize_master(account, fields["sig"], method, headers, operation)
        raise Refusal(401, "Unauthorized", "Required Header authorization is missing. Ensure a valid Authorization "
                      "token is passed.", "no usable Authorization header")

    def _blocked(self, text: str) -> str:
        return f"Request blocked by Auth {self.name} : {text}"

    def _authorize_aad(self, account: dict, token: str, method: str, path: str, operation: Operation) -> str:
        try:
            claims = self.issuer.verify(token, self.audiences)
        except TokenError as exc:
            raise Refusal(401, "Unauthorized", self._token_message(exc, token),
                          f"token refused: {exc.reason}") from None
        principal = claims["oid"]
        if not operation.actions:
            raise Refusal(403, "Forbidden", self._blocked(
                f"The given request [{method} {path.rstrip('/') or '/'}] cannot be authorized by AAD token in data "
                f"plane. {RBAC_LINK}"), f"principal {principal}: not a data-plane operation", substatus=5300)
        action = missing_action(account, principal, operation)
        if action is not None:
            raise Refusal(403, "Forbidden", self._blocked(
                f"Request is blocked because principal [{principal}] does not have required RBAC permissions to "
                f"perform action [{COSMOS}/{action}] on resource [{operation.resource}]. {RBAC_LINK}"),
                f"principal {principal}: no {action} on {operation.resource}", substatus=5301)
        return principal

    def _token_message(self, error: TokenError, token: str) -> str:
        """Cosmos DB's words for a refused token. The claims are read unverified only to word the message, and
        only after the issuer found the signature good and the token expired or for another audience."""
        if error.kind in ("expired", "audience"):
            claims = _unverified_claims(token)
            now = datetime.datetime.now(datetime.timezone.utc)
            if error.kind == "expired":
                expired = datetime.datetime.fromtimestamp(int(claims.get("exp", 0)), datetime.timezone.utc)
                return self._blocked(f"Provided AAD token has been expired since [{_dotnet_time(expired)}]. Current "
                                     f"server time is [{_dotnet_time(now)}]. Please refresh the AAD token.")
            return self._blocked(f"Provided AAD token is intended for [{claims.get('aud')}]. This database account "
                                 f"accepts tokens intended for [{', '.join(self.audiences)}].")
        return self._blocked(f"Provided AAD token is not valid: {error.reason}.")

    def _authorize_master(self, account: dict, signature: str, method: str, headers, operation: Operation) -> str:
        if account["disableLocalAuth"]:
            raise Refusal(401, "Unauthorized", "Local Authorization is disabled. Use an AAD token to authorize all "
                          "requests.", "master key while disableLocalAuth is true")
        x_date, date = headers.get("x-ms-date") or "", headers.get("date") or ""
        self._check_date(x_date or date)
        keys = [account["keys"]["primaryMasterKey"], account["keys"]["secondaryMasterKey"]]
        if operation.read:
            keys += [account["keys"]["primaryReadonlyMasterKey"], account["keys"]["secondaryReadonlyMasterKey"]]
        # Name-based links are signed as sent; links made of resource ids (_rid) are signed in lower case.
        for link in dict.fromkeys((operation.resource_link, operation.resource_link.lower())):
            text = string_to_sign(method, operation.resource_type, link, x_date, date).encode()
            for key in keys:
                expected = base64.b64encode(hmac.new(base64.b64decode(key), text, hashlib.sha256).digest()).decode()
                if hmac.compare_digest(expected, signature):
                    return "master key"
        payload = string_to_sign(method, operation.resource_type, operation.resource_link, x_date, date)
        raise Refusal(401, "Unauthorized", "The input authorization token can't serve the request. The wrong key is "
                      "being used or the expected payload is not built as per the protocol. For more info: "
                      "https://aka.ms/cosmosdb-tsg-mac-token. Server used the following payload to sign: "
                      f"'{payload}'", "master-key signature does not match")

    @staticmethod
    def _check_date(value: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            sent = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            sent = None
        if sent is None or sent.tzinfo is None or abs(now - sent) > DATE_WINDOW:
            start = sent or now
            raise Refusal(403, "Forbidden", "The authorization token is not valid at the current time. Please create "
                          f"another token and retry (token start time: {email.utils.format_datetime(start, True)}, "
                          f"token expiry time: {email.utils.format_datetime(start + DATE_WINDOW, True)}, current "
                          f"server time: {email.utils.format_datetime(now, True)}).", "x-ms-date missing or skewed")

    # ----- the account read, as the SDK must see it -----

    def rewrite_account(self, body: bytes) -> bytes:
        """``GET /``'s body with the account's name and endpoint instead of the backend's address."""
        document = json.loads(body)
        endpoint = self.account_state(self.name)["endpoint"]
        document.update(id=self.name, _rid=f"{self.name}.documents.azure.com")
        for key in ("writableLocations", "readableLocations"):
            for location in document.get(key) or []:
                location["databaseAccountEndpoint"] = endpoint
        return json.dumps(document).encode()


class CosmosHandler(JsonHandler):
    """Authorizes, then relays one client connection's requests over one backend connection."""

    _backend_connection: http.client.HTTPConnection | None = None

    def do_GET(self):
        self.handle_any()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def finish(self):
        try:
            super().finish()
        finally:
            if self._backend_connection is not None:
                self._backend_connection.close()

    def handle_any(self) -> None:
        front: CosmosFront = self.app
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            return self.send_error_body(Refusal(411, "LengthRequired", "The lab's Cosmos DB front needs a "
                                                "Content-Length body.", "chunked request body"))
        body = self.read_body()
        try:
            principal = front.authorize(self.command, self.route, self.headers, body)
        except Refusal as refusal:
            LOG.info("cosmos %s %s refused (%d): %s", self.command, self.route, refusal.status, refusal.log_reason)
            return self.send_error_body(refusal)
        LOG.info("cosmos %s %s allowed for %s", self.command, self.route, principal)
        self.relay(front, body)

    def send_error_body(self, refusal: Refusal) -> None:
        activity = str(uuid.uuid4())
        headers = {"x-ms-activity-id": activity}
        if refusal.substatus is not None:
            headers["x-ms-substatus"] = str(refusal.substatus)
        message = f"{refusal.message}\r\nActivityId: {activity}, {SERVICE_VERSION}"
        self.send_json(refusal.status, {"code": refusal.code, "message": message}, headers)

    def _send_to_backend(self, front: CosmosFront, body: bytes) -> http.client.HTTPResponse:
        """Send the request; a kept connection the backend has closed meanwhile is opened again, once."""
        for attempt in (1, 2):
            reused = self._backend_connection is not None
            if not reused:
                self._backend_connection = front.backend.connection()
            connection = self._backend_connection
            try:
                connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        connection.putheader(name, value)
                if body or self.command in ("POST", "PUT", "PATCH"):
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body or None)
                return connection.getresponse()
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                self._backend_connection = None
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def relay(self, front: CosmosFront, body: bytes) -> None:
        try:
            answer = self._send_to_backend(front, body)
        except (OSError, http.client.HTTPException) as exc:
            LOG.warning("cosmos %s %s: backend unreachable: %r", self.command, self.route, exc)
            return self.send_error_body(Refusal(503, "ServiceUnavailable", "The lab's Cosmos DB backend is not "
                                                "answering; see logs/cosmos-backend.log.", "backend down"))
        headers = [(name, value) for name, value in answer.getheaders() if name.lower() not in HOP_BY_HOP]
        no_body = self.command == "HEAD" or answer.status in (204, 304) or 100 <= answer.status < 200
        length = answer.getheader("Content-Length")
        content = None
        if not no_body and (self.route.strip("/") == "" and self.command == "GET" and answer.status == 200):
            content = front.rewrite_account(answer.read())
        elif not no_body and length is None:
            content = answer.read()
        self.send_response(answer.status, answer.reason)
        for name, value in headers:
            if name.lower() == "content-location":
                value = self._client_location(value)
            self.send_header(name, value)
        if content is not None:
            self.send_header("Content-Length", str(len(content)))
        elif no_body:
            self.send_header("Content-Length", "0")
            answer.read()
        else:
            self.send_header("Content-Length", length)
        self.end_headers()
        if content is not None:
            self.wfile.write(content)
        elif not no_body:
            while chunk := answer.read(CHUNK):
                self.wfile.write(chunk)
        if answer.will_close:
            self._backend_connection.close()
            self._backend_connection = None

    def _client_location(self, value: str) -> str:
        """The backend's ``content-location`` with the host the client used instead of the backend's address."""
        parts = urlsplit(value)
        host = self.headers.get("Host") or urlsplit(self.app.account_state(self.app.name)["endpoint"]).netloc
        return parts._replace(scheme="https", netloc=host).geturl()
