"""The lab's App Service and Container Apps: one HTTPS front per web workload, playing the platform for its app.

``topology.yml``'s ``web_apps`` (App Service apps, ARM ``Microsoft.Web/sites``) and ``container_apps`` (ARM
``Microsoft.App/containerApps``) get a port each, in that order (:meth:`azurelab.config.Ports.web_workloads`), served
with the lab's server certificate (valid for ``localhost`` and ``127.0.0.1``). The application deployed on a workload
is the one of ``topology["applications"]`` whose ``workload`` names it (:func:`azurelab.config.application_on`).

Each request runs that application, the demo app (:mod:`azurelab.demo_app`), as a new process whose environment is
what the platform gives a running app, read from the ARM double at that moment:

* App Service: the site's app settings as environment variables (``ArmState.site_app_settings(name)``), and
  ``WEBSITE_SITE_NAME``; Container Apps: the first container's env (``ArmState.container_app_env(name)``), and
  ``CONTAINER_APP_NAME``;
* ``IDENTITY_ENDPOINT`` = ``http://127.0.0.1:<Ports.identity>/sites/<name>/msi/token`` (``/containerapps/<name>/...``
  for a Container App) and ``IDENTITY_HEADER`` = the workload's secret (lab secrets ``identity_headers``, key
  ``sites/<name>`` or ``containerapps/<name>``): the App Service style managed identity endpoint, which both platforms
  use (https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference,
  https://learn.microsoft.com/azure/container-apps/managed-identity#rest-endpoint-reference);
* lab plumbing, what the app's image would carry: ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` (system CAs + lab CA),
  the ODBC driver registration (:func:`azurelab.odbc.environment`), ``PATH`` (this venv first), ``PYTHONPATH`` and
  ``LAB_STATE_DIR`` (where the app's code and config are), and ``HOME`` = ``<state>/web/<name>`` (also its working
  folder), so that nothing of the lab operator's own Azure login is in reach.

Routes (anything else is 404):

* ``GET /``: the app in its configured mode (vault before the migration, identity after); its JSON result line;
* ``GET /health/identity``: ``python -m azurelab.demo_app <app> --identity-check``: the app's database signed in
  with ``DefaultAzureCredential()`` and no client id, so ``AZURE_CLIENT_ID`` (an app setting) picks the identity when
  several are attached, and the endpoint's own refusal is what the app reports when none is picked.

Both answer the app's JSON (``{"app", "ok", "connected_as", ...}``, see :mod:`azurelab.demo_app`) plus ``workload``
(``{"type", "name"}``), with 200 when ``ok`` and 503 otherwise (also when no application is deployed on the workload,
the app printed no result, or the platform could not be read from ARM). The app's stderr is never relayed or logged.

Not emulated: the platform's HTTP routing (one port per app instead of host names, no ``*.azurewebsites.net``), the
app running as a long-lived process (each request starts it), deployment slots, revisions, scaling, Key Vault
references and ``secretref:`` values in settings (passed through as text), App Service's renaming of setting names
(e.g. ``:`` to ``__`` on Linux), the legacy ``MSI_ENDPOINT`` / ``MSI_SECRET`` variables, system-assigned identities.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
from typing import Callable, Mapping

from . import ca, config, odbc
from .web import JsonHandler, LabHTTPServer

log = logging.getLogger("azurelab.webfront")

APP_TIMEOUT_S = 60
# workload type -> the ARM resource path segment, which is also its prefix on the managed identity endpoint
KINDS = {"app_service": "sites", "container_app": "containerapps"}
# workload type -> the ArmState accessor of what the app gets as its environment
SETTINGS_ACCESSORS = {"app_service": "site_app_settings", "container_app": "container_app_env"}
PLATFORM_NAME_VARIABLE = {"app_service": "WEBSITE_SITE_NAME", "container_app": "CONTAINER_APP_NAME"}


@dataclasses.dataclass(frozen=True)
class Workload:
    """An App Service app (``type: app_service``) or a Container App (``type: container_app``) and its front's port."""

    type: str
    name: str
    port: int

    @property
    def kind(self) -> str:
        """``sites`` or ``containerapps``: its ARM resource type's last segment, and its identity endpoint prefix."""
        return KINDS[self.type]


def workloads(topology: dict, ports: config.Ports) -> list[Workload]:
    """The web workloads these ports serve, in port order (``web_apps`` then ``container_apps``)."""
    types = {app["name"]: "app_service" for app in topology.get("web_apps", [])}
    types.update({app["name"]: "container_app" for app in topology.get("container_apps", [])})
    return [Workload(types[name], name, port) for name, port in ports.web_workloads(topology).items()]


class Platform:
    """One workload's platform: the environment it gives its app, and running the app.

    ``settings()`` returns the app settings (App Service) or the container env (Container Apps) as ARM holds them now,
    ``{name: value}``; it may raise (an unknown workload), which :meth:`run` reports as a 503.
    """

    def __init__(self, paths: config.LabPaths, topology: dict, workload: Workload, settings: Callable[[], dict],
                 identity_endpoint: str, identity_header: str):
        self.paths = paths
        self.workload = workload
        self.settings = settings
        self.identity_endpoint = identity_endpoint
        self.identity_header = identity_header
        self.application = config.application_on(topology, workload.type, workload.name)
        self.home = paths.root / "web" / workload.name

    def environment(self) -> dict[str, str]:
        """The app process's whole environment: lab plumbing, then the app's settings, then the platform's own
        variables (which a setting cannot override)."""
        venv_bin = os.path.dirname(sys.executable)
        env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home),
               "PYTHONPATH": str(config.REPO_ROOT / "lab"), "LAB_STATE_DIR": str(self.paths.root),
               "REQUESTS_CA_BUNDLE": str(self.paths.ca_bundle), "SSL_CERT_FILE": str(self.paths.ca_bundle),
               **odbc.environment(self.paths)}
        env.update({str(key): str(value) for key, value in (self.settings() or {}).items()})
        env.update({"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header,
                    PLATFORM_NAME_VARIABLE[self.workload.type]: self.workload.name})
        return env

    def run(self, identity_check: bool) -> tuple[int, dict]:
        """Run the app once (``--identity-check`` when asked); returns ``(HTTP status, JSON body)``."""
        workload = {"type": self.workload.type, "name": self.workload.name}
        if self.application is None:
            return 503, {"app": None, "ok": False, "workload": workload,
                         "error": f"no application is deployed on {self.workload.kind}/{self.workload.name}"}
        app = self.application["name"]
        try:
            env = self.environment()
        except Exception as exc:  # the platform's one failure report: ARM could not say what the app gets
            log.warning("%s: cannot read its settings from ARM", self.workload.name, exc_info=True)
            return 503, {"app": app, "ok": False, "workload": workload,
                         "error": f"platform: {type(exc).__name__}: {exc}"}
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "azurelab.demo_app", app, *(["--identity-check"] if identity_check else [])]
        try:
            done = subprocess.run(command, env=env, cwd=self.home, capture_output=True, text=True,
                                  timeout=APP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return 503, {"app": app, "ok": False, "workload": workload,
                         "error": f"the app did not answer within {APP_TIMEOUT_S} s"}
        lines = done.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            result = None
        if not isinstance(result, dict):
            log.warning("%s: %s printed no result (exit %s)", self.workload.name, app, done.returncode)
            return 503, {"app": app, "ok": False, "workload": workload,
                         "error": f"the app printed no result (exit status {done.returncode})"}
        result["workload"] = workload
        return (200 if result.get("ok") is True and done.returncode == 0 else 503), result


class WebFrontHandler(JsonHandler):
    """``GET /`` and ``GET /health/identity`` of one workload (the server's ``app`` is its :class:`Platform`)."""

    ROUTES = {"/": False, "/health/identity": True}

    def do_GET(self):
        if self.route not in self.ROUTES:
            return self.send_json(404, {"error": "not_found", "error_description": f"No route for {self.route}"})
        platform: Platform = self.app
        return self.send_json(*platform.run(identity_check=self.ROUTES[self.route]))


def build(paths: config.LabPaths, topology: dict, ports: config.Ports, arm, identity_headers: Mapping[str, str]
          ) -> dict[str, LabHTTPServer]:
    """One bound, not yet serving front per web workload of ``ports.web``: workload name -> server.

    ``arm`` is the ARM double's state (``site_app_settings(name) -> dict``, ``container_app_env(name) -> dict``);
    ``identity_headers`` the lab secrets' ``identity_headers`` (a missing key gives the app an empty
    ``IDENTITY_HEADER``, which the identity endpoint refuses).
    """
    tls = ca.server_context(paths)
    servers = {}
    for workload in workloads(topology, ports):
        key = f"{workload.kind}/{workload.name}"
        settings = functools.partial(read_settings, arm, SETTINGS_ACCESSORS[workload.type], workload.name)
        platform = Platform(paths, topology, workload, settings,
                            f"http://{config.HOST}:{ports.identity}/{key}/msi/token", identity_headers.get(key, ""))
        servers[workload.name] = LabHTTPServer(workload.port, WebFrontHandler, platform, tls)
    return servers


def read_settings(arm, accessor: str, name: str) -> dict:
    """``arm.<accessor>(name)``, looked up at call time (so a failure is one request's 503, not the lab's start)."""
    return getattr(arm, accessor)(name)
