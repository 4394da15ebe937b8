"""A whole lab (``python -m azurelab up``) on its own ports and state folder, and a way to run playbooks against it.

(A plain module rather than conftest.py: tests/integration/lab has a conftest of its own, and two modules named
``conftest`` cannot both be imported by name.)

Used by the playbook-level tests: they run ``ansible-playbook`` exactly as an operator would, with the lab's
environment file, against ``inventories/lab`` (which follows ``LAB_PORT_BASE`` / ``LAB_STATE_DIR``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import tempfile
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent
COLLECTIONS = VENV_BIN.parent / "collections"  # where `make venv` links this working tree as the collection
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
TASK = re.compile(r"^TASK \[(?:[\w-]+\.[\w-]+\.)?([\w-]+) : ")  # the role a TASK header names
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+")
# The default lab (LAB_PORT_BASE 47000) and the shared ones: never taken by a test lab, even while they are down.
RESERVED_PORTS = range(46000, 47100)


def _ephemeral_ports() -> range:
    """The ports the kernel hands out to outgoing connections: a lab there can lose a port to a client between the
    check and the bind."""
    try:
        low, high = map(int, pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_base(span: int = 13) -> int:
    """A port base whose ports base+1 .. base+span are all free (a whole lab: 13, OpenBao's cluster port, the two
    Azure SQL servers, the Cosmos DB front, the Kubernetes API server and the two web workloads included), below the
    kernel's ephemeral range and outside the ports other labs on this machine use."""
    ephemeral, rng = _ephemeral_ports(), random.SystemRandom()
    for _attempt in range(200):
        base = rng.randrange(10000, 32000)
        ports = range(base + 1, base + span + 1)
        if any(p in RESERVED_PORTS or p in ephemeral for p in ports):
            continue
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for a lab")


@dataclasses.dataclass
class RunningLab:
    state: pathlib.Path
    base: int

    @property
    def env(self) -> dict:
        """The process environment of the lab's control node (what `source .lab/env.sh` gives a shell)."""
        env = dict(os.environ, LAB_STATE_DIR=str(self.state), LAB_PORT_BASE=str(self.base),
                   ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        for line in (self.state / "env.sh").read_text().splitlines():
            if line.startswith("export "):
                key, _equals, value = line[len("export "):].partition("=")
                env[key] = shlex.split(value)[0] if value else ""
        return env

    def lab(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=dict(self.env, PYTHONPATH=str(REPO / "lab")),
                              capture_output=True, text=True, timeout=120, check=False)

    def playbook(self, playbook: str, *args: str, inventory: str = "inventories/lab") -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", inventory, playbook, *args], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=600, check=False)

    def lab_api(self, method: str, path: str, body: dict | None = None):
        """Call the ARM double's lab API (``/lab/counters``, ``/lab/faults``)."""
        context = ssl.create_default_context(cafile=str(self.state / "tls" / "ca.pem"))
        request = urllib.request.Request(f"https://127.0.0.1:{self.base + 2}/lab/{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return json.loads(answer.read() or b"null")

    def arm_counters(self) -> dict:
        return self.lab_api("GET", "counters")

    def secrets(self) -> list[str]:
        """Every secret the lab issued or holds (azurelab.issued: admin passwords, the client secret, OpenBao's root
        token and everything OpenBao handed out, Cosmos keys old and new, tokens): none may leak. Tokens are left to
        the JWT pattern of :meth:`assert_no_secret_in`, which finds any token, the lab's or not."""
        from azurelab import issued  # tests/conftest.py puts lab/ on the path

        return sorted(value for value in issued.values(self.state) if not JWT.fullmatch(value))

    def assert_no_secret_in(self, text: str) -> None:
        for secret in self.secrets():
            assert secret not in text, "a lab secret leaked"
        assert not JWT.search(text), "a token leaked"

    def assert_no_secret_written_since(self, since: float, top: str = "/") -> int:
        """No secret this lab issued (its tokens included, matched exactly) is in a regular file modified at or after
        ``since`` (epoch seconds) below ``top`` (the whole root filesystem by default), outside the labs' state folders
        (``mi-lab-*`` in the temporary folder: this lab's and any other running lab's) and the kernel's
        pseudo-filesystems. Returns the number of files read."""
        from azurelab import issued  # tests/conftest.py puts lab/ on the path

        issued_values = issued.values(self.state)
        tokens = {value.encode() for value in issued_values if JWT.fullmatch(value)}
        others = [value.encode() for value in issued_values if not JWT.fullmatch(value)]
        jwt_bytes = re.compile(JWT.pattern.encode())
        root_device, labs = os.stat("/").st_dev, pathlib.Path(tempfile.gettempdir()).resolve()
        read = 0
        for folder, dirs, files in os.walk(top):
            here = pathlib.Path(folder)
            dirs[:] = [d for d in dirs if not (folder == "/" and d in ("proc", "sys", "dev", "run"))
                       and not (here == labs and d.startswith("mi-lab-"))]
            for name in files:
                path = here / name
                try:
                    info = path.lstat()
                    if not stat.S_ISREG(info.st_mode) or info.st_mtime < since or info.st_dev != root_device \
                            or info.st_size > 256 * 1024 * 1024:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue  # gone since the listing, or not ours to read
                read += 1
                leaked = any(value in data for value in others) or any(
                    found.group(0) in tokens for found in jwt_bytes.finditer(data))
                assert not leaked, f"a secret of the lab was written to {path}"
        return read


def running_lab(topology: pathlib.Path | None = None):
    """Start a fresh lab (of ``lab/topology.yml``, or of ``topology`` through ``LAB_TOPOLOGY``), yield it as a
    :class:`RunningLab`, stop and remove it."""
    state = pathlib.Path(tempfile.mkdtemp(prefix="mi-lab-"))
    span = 13
    extra = {}
    if topology is not None:
        import yaml
        from azurelab import fleet  # tests/conftest.py puts lab/ on the path

        span = fleet.port_span(yaml.safe_load(topology.read_text()))
        extra["LAB_TOPOLOGY"] = str(topology)
    running = RunningLab(state, free_base(span))
    lab_env = dict(os.environ, LAB_STATE_DIR=str(state), LAB_PORT_BASE=str(running.base),
                   PYTHONPATH=str(REPO / "lab"), **extra)
    started = subprocess.run([sys.executable, "-m", "azurelab", "up"], cwd=REPO, capture_output=True, text=True,
                             env=lab_env, timeout=180, check=False)
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        yield running
    finally:
        subprocess.run([sys.executable, "-m", "azurelab", "down"], cwd=REPO, capture_output=True, timeout=60,
                       env=lab_env, check=False)
        shutil.rmtree(state, ignore_errors=True)


# ----- watching and killing playbook runs, and reading outcomes in the lab (test_fleet.py, tests/chaos) -----


def recap(output: str) -> dict:
    return {host: {"changed": int(c), "failed": int(f), "unreachable": int(u)}
            for host, _ok, c, u, f in RECAP.findall(output)}


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (Ansible's workers start sessions of their own: a process group is not enough)."""
    children: dict[int, list[int]] = {}
    for proc_stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = proc_stat.read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(proc_stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def kill_tree(pids: list[int], sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def watch_playbook(lab: RunningLab, inventory: str, playbook: str = "playbooks/migrate.yml", kill_when=None,
                   sig=signal.SIGKILL, timeout: float = 900) -> tuple[int, str, bool]:
    """Run ``playbook`` on ``inventory`` with the lab's environment, watching its output line by line;
    ``kill_when(role, line, state)`` returning True kills ansible-playbook and every process under it with ``sig``
    (``state``: ``{"role": the role of the current TASK header, "changed": {role: changed results so far}}``).
    Returns the exit status, the whole output and whether it was killed. Fails if a secret of the lab was printed."""
    env = dict(lab.env, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", inventory, playbook], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, state, killed, tree = [], {"role": None, "changed": {}}, False, []
    try:
        for line in process.stdout:
            lines.append(line)
            header = TASK.match(line)
            if header:
                state["role"] = header.group(1)
            elif line.startswith("changed: [") and state["role"]:
                state["changed"][state["role"]] = state["changed"].get(state["role"], 0) + 1
            if kill_when and not killed and kill_when(state["role"], line, state):
                tree = process_tree(process.pid)
                kill_tree(tree, sig)
                killed = True
        status = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            tree = process_tree(process.pid)
            kill_tree(tree, signal.SIGKILL)
            process.wait()
        kill_tree(tree[1:], signal.SIGKILL)  # a worker that outlived its controller would wait forever
    output = "".join(lines)
    lab.assert_no_secret_in(output)
    return status, output, killed


def kinds(fleet, *wanted: str) -> list[str]:
    """The fleet's applications of these database types (``postgres``, ``sql``, ``cosmos``)."""
    return [name for name, host in fleet["hosts"].items() if host["mi_databases"][0]["type"] in wanted]


def arm_servers(lab) -> dict:
    """Resource name -> properties, for the servers and accounts of the ARM double."""
    types = ("Microsoft.DBforPostgreSQL/flexibleServers", "Microsoft.Sql/servers",
             "Microsoft.DocumentDB/databaseAccounts")
    return {r["name"]: r["properties"] for r in lab.lab_api("GET", "state")["resources"] if r["type"] in types}


def entra_only(properties: dict) -> bool:
    return bool((properties.get("administrators") or {}).get("azureADOnlyAuthentication"))


def password_login(lab, server: str) -> str:
    """``accepted`` or ``refused``: the lab probe tries the server admin's password (the account key for Cosmos DB)."""
    run = lab.lab("azurelab.probe", "password-login", server)
    lab.assert_no_secret_in(run.stdout + run.stderr)
    return json.loads(run.stdout)["password_login"]


def superuser(lab, dbname="appdb"):
    import psycopg

    return psycopg.connect(host=str(lab.state / "pg" / "run"), dbname=dbname, user="postgres")


def pg_privileges_missing(conn, database: str, role: str, grants: list[dict]) -> list[str]:
    """``"<role>: no <privilege> on <object>"`` for each privilege in ``grants`` (the inventory's ``mi_databases[].grants``
    shape) that ``role`` lacks in ``database``, read from the real catalog over ``conn`` (a superuser's psycopg connection
    to that database). Tables and sequences with no ``objects`` listed mean every one in the schema."""
    missing = []
    for grant in grants:
        kind = grant["object_type"]
        if kind == "database":
            objects, check = [database], "has_database_privilege"
        elif kind == "schema":
            objects, check = [grant["schema"]], "has_schema_privilege"
        else:
            relkind = "r" if kind == "table" else "S"
            objects = [f"{grant['schema']}.{name}" for name in grant.get("objects") or [row[0] for row in
                       conn.execute("SELECT relname FROM pg_class WHERE relkind = %s AND relnamespace = "
                                    "%s::regnamespace", (relkind, grant["schema"]))]]
            check = "has_table_privilege" if kind == "table" else "has_sequence_privilege"
        for name in objects:
            for privilege in grant["privileges"]:
                if not conn.execute(f"SELECT {check}(%s, %s, %s)", (role, name, privilege)).fetchone()[0]:
                    missing.append(f"{role}: no {privilege} on {name}")
    return missing


def missing_pg_grants(lab, fleet) -> list[str]:
    """Every privilege the fleet's inventory lists that a PostgreSQL principal lacks in the real catalog."""
    missing = []
    for app in kinds(fleet, "postgres"):
        database = fleet["hosts"][app]["mi_databases"][0]
        with superuser(lab, database["database"]) as conn:
            missing += pg_privileges_missing(conn, database["database"], fleet["hosts"][app]["mi_identity"]["name"],
                                             database["grants"])
    return missing


def assert_fleet_converged(lab, fleet) -> dict:
    """Every application of ``fleet`` is in the migration report, verified as its identity and switched; every
    PostgreSQL privilege, Azure SQL role and Cosmos DB assignment the inventory lists is in place. Returns the report,
    by application."""
    report = {entry["application"]: entry for entry in
              json.loads((lab.state / "reports" / "migration-report.json").read_text())}
    assert set(report) == set(fleet["hosts"])
    for app, entry in report.items():
        [db] = entry["databases"]
        cosmos = fleet["hosts"][app]["mi_databases"][0]["type"] == "cosmos"  # no users: the token's principal
        expected = entry["identity"]["principal_id"] if cosmos else fleet["hosts"][app]["mi_identity"]["name"]
        assert db["login_verified_as"] == expected, (app, db)
        assert entry["switched"] is True, app
    assert missing_pg_grants(lab, fleet) == []
    for app in kinds(fleet, "sql"):
        db = fleet["hosts"][app]["mi_databases"][0]
        assert sql_roles(lab, db["server"], db["database"], fleet["hosts"][app]["mi_identity"]["name"]) == \
            sorted(db["roles"]), app
    assignments = [r["properties"]["principalId"] for r in lab.lab_api("GET", "state")["resources"]
                   if r["type"] == "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"]
    assert sorted(assignments) == sorted(report[app]["identity"]["principal_id"] for app in kinds(fleet, "cosmos"))
    return report


def sql_roles(lab, server: str, database: str, user: str) -> list[str] | None:
    """The roles ``user`` is a member of in the Azure SQL double's catalog (None: no such user)."""
    from azurelab import sqlcatalog  # tests/conftest.py puts lab/ on the path

    uri = (lab.state / "sql" / f"{server}.sqlite").as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        conn.create_collation(sqlcatalog.COLLATION, sqlcatalog.collate)  # names compare as SQL Server's do
        found = conn.execute("SELECT p.database_id, p.principal_id FROM principals p JOIN databases d USING "
                             "(database_id) WHERE d.name = ? AND p.name = ?", (database, user)).fetchone()
        if found is None:
            return None
        return sorted(row[0] for row in conn.execute(
            "SELECT r.name FROM role_members m JOIN principals r ON r.database_id = m.database_id AND "
            "r.principal_id = m.role_principal_id WHERE m.database_id = ? AND m.member_principal_id = ?", found))


def vault():
    import hvac

    return hvac


def vault_client(lab):
    return vault().Client(url=lab.env["VAULT_ADDR"], token=(lab.state / "openbao" / "token").read_text().strip())


def vault_roles(lab) -> list[str]:
    try:
        return sorted(vault_client(lab).secrets.database.list_roles(mount_point="database")["data"]["keys"])
    except vault().exceptions.InvalidPath:
        return []


def demo_app_mode(lab, app: str) -> str:
    return json.loads((lab.state / "apps" / f"{app}.json").read_text())["mode"]


SUBSCRIPTION = "2b6e3f4a-8c1d-4e9f-b7a2-5c0d9e8f1a23"
TENANT = "7f0c6a9e-3b1d-4c55-9a8e-2d6f1b0c4e11"


def azure_modules() -> set[str]:
    """The modules that take the shared Azure auth options (meta/runtime.yml's action group ``azure``)."""
    import yaml

    return set(yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["action_groups"]["azure"])


def run_module(lab: RunningLab, module: str, check: bool = False, env: dict | None = None, wrapper: tuple = (),
               **args) -> dict:
    """Run one module as Ansible runs it on its target, with the lab's control-node environment updated with
    ``env``; returns its result dict (``failed`` always set; ``diff`` too in check mode). Azure modules get the lab
    cloud; nothing secret is passed or printed.

    The module runs as ``python -m ansible_collections...<module> <args file>``, the arguments file carrying
    ``_ansible_check_mode`` / ``_ansible_diff`` as the controller would: the module code is the same, without the
    ~4 s of an ``ansible`` controller start per call (``wrapper``: a command to run it under, e.g. ``/usr/bin/time``).
    The controller side (module_defaults, action groups, the
    collection's installation) is exercised by the playbook and Molecule tests.
    """
    if module in azure_modules():
        args = dict(dict(cloud_environment="custom", subscription_id=SUBSCRIPTION, tenant_id=TENANT,
                         cloud_endpoints={"resource_manager": f"https://127.0.0.1:{lab.base + 2}",
                                          "authority_host": f"https://127.0.0.1:{lab.base + 1}",
                                          "resource_manager_audience": "https://management.azure.com/"}), **args)
    payload = {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check, _ansible_diff=check)}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(payload, handle)
        handle.flush()
        command = [*wrapper, sys.executable, "-m",
                   f"ansible_collections.csa_inabox.managed_identity.plugins.modules.{module}", handle.name]
        run_env = dict(lab.env, PYTHONPATH=str(COLLECTIONS), **(env or {}))
        run = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=120, check=False)
    lab.assert_no_secret_in(run.stdout + run.stderr)
    lines = run.stdout.strip().splitlines()
    assert lines, f"{module} printed no result: {run.stderr[-2000:]}"
    result = json.loads(lines[-1])
    result.setdefault("failed", run.returncode != 0)
    return result


def automation_credential(lab: RunningLab):
    """azure-identity's ClientSecretCredential for the lab's automation service principal: the independent reader
    (and "the other tool") of the tests, never the identity a module runs as."""
    from azure.identity import ClientSecretCredential

    sp = json.loads((lab.state / "secrets.json").read_text())["sp-lab-automation"]
    return ClientSecretCredential(TENANT, sp["client_id"], sp["client_secret"],
                                  connection_verify=str(lab.state / "tls" / "ca-bundle.pem"),
                                  authority=f"https://127.0.0.1:{lab.base + 1}", disable_instance_discovery=True)


def kube_client(lab: RunningLab):
    """A ``kubernetes`` ApiClient for the lab's AKS cluster, as the automation service principal (an Entra token for
    the AKS server application)."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = lab.env["LAB_KUBE_SERVER"]
    configuration.ssl_ca_cert = str(lab.state / "tls" / "ca-bundle.pem")
    token = automation_credential(lab).get_token("6dae42f8-4368-4678-94ff-3960e28e3630/.default").token
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return kubernetes.client.ApiClient(configuration)
