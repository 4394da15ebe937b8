"""``make chaos`` (issue 7 item 4): ``migrate.yml`` on a lab fleet converges under the faults Azure really serves,
and after runs killed at random points.

The fleet is ``python -m azurelab fleet --apps 10``: PostgreSQL (three VMs and the App Service app), Azure SQL (three
VMs on two servers and the AKS Deployment) and Cosmos DB (two VMs). Two fresh labs, one after the other:

1. **Under faults.** Before the run, :data:`FAULTS` go to the ARM double's lab API (``POST /lab/faults``), each
   several times, on requests ``migrate.yml`` makes: 429 with ``Retry-After``, 500, 503, connection resets (no
   answer), the federated credentials' concurrent-write 409, Cosmos DB's 412 "another operation in progress" on a
   role assignment and on the account, and Cosmos DB's 400 for a principal not replicated yet. The run must exit 0
   and converge (:func:`assert_converged`), every fault must be used up (``GET /lab/faults`` has none pending) and
   every request a fault answered must have been sent again afterwards (``served[].retried``): a fault never hit, or
   absorbed without a retry, proves nothing.
2. **Killed.** ``migrate.yml`` is killed (SIGKILL of ansible-playbook and every process under it) :data:`KILLS` times,
   each in a new run, at a seeded-random point: after the K-th task header, K drawn from the run's headers, plus a
   random delay of up to 4 s, so that tasks are cut in the middle. Then a plain run must converge with the same checks.

Converged means: exit 0 and no failed host; every application verified by its identity and switched (the migration
report); every PostgreSQL grant in the real catalog, every Azure SQL role membership in the double's catalog, one Cosmos
DB role assignment per Cosmos DB application; each server and the account refuse passwords and keys exactly when all
their applications were verified; nobody is locked out: each VM application's demo app, run with its VM's identity
endpoint, and the App Service app's front sign in as their identities (the AKS application is verified inside the
cluster by the verify phase's Job).

``CHAOS_SEED`` (default 7) picks the kill points; ``CHAOS_KILLS`` (default 3) how many. The counts (faults injected,
served and retried per kind, ARM requests, kill points, runs and their wall times) go to ``tests/output/chaos.json``
and ``tests/output/chaos.md``.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from labrunner import (REPO, TASK, TENANT, arm_servers, assert_fleet_converged, entra_only, password_login, recap,
                       running_lab, watch_playbook)

APPS = 10
SEED = int(os.environ.get("CHAOS_SEED", "7"))
KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
OUTPUT = REPO / "tests" / "output"
COSMOS_BUSY = ("There is already an operation in progress which requires exclusive lock on this service. Please retry "
               "the operation after sometime.")
# (kind, fault spec): what Azure answers, on the requests migrate.yml makes (paths are regexes searched in the
# request path). Codes and messages: /work/shared/AZURE_FACTS.md, ARM_NOTES.md, lab/azurelab/arm.py.
FAULTS = [
    ("429 + Retry-After", {"method": "PUT", "path": r"/userAssignedIdentities/[^/]+$", "status": 429, "retry_after": 1,
                           "count": 3}),
    ("429 + Retry-After", {"method": "PATCH", "path": r"/virtualMachines/[^/]+$", "status": 429, "retry_after": 1,
                           "count": 2}),
    ("500", {"method": "PUT", "path": r"/flexibleServers/[^/]+/administrators/", "status": 500, "count": 2}),
    ("500", {"method": "GET", "path": r"/managedClusters/[^/]+$", "status": 500, "count": 2}),
    ("503", {"method": "PATCH", "path": r"/flexibleServers/[^/]+$", "status": 503, "count": 2}),
    ("503", {"method": "PUT", "path": r"/administrators/ActiveDirectory$", "status": 503, "count": 2}),
    ("connection reset", {"method": "GET", "path": r"/userAssignedIdentities/[^/]+$", "reset": True, "count": 3}),
    ("connection reset", {"method": "PATCH", "path": r"/virtualMachines/[^/]+$", "reset": True, "count": 2}),
    ("connection reset", {"method": "PUT", "path": r"/sqlRoleAssignments/", "reset": True, "count": 1}),
    ("409 concurrent FIC write", {
        "method": "PUT", "path": r"/federatedIdentityCredentials/", "status": 409, "count": 3,
        "code": "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
        "message": "Too many Federated Identity Credentials are written concurrently for the managed identity. "
                   "Please retry."}),
    ("412 Cosmos DB busy", {"method": "PUT", "path": r"/sqlRoleAssignments/", "status": 412, "count": 2,
                            "code": "PreconditionFailed", "message": COSMOS_BUSY}),
    ("412 Cosmos DB busy", {"method": "PATCH", "path": r"/databaseAccounts/[^/]+$", "status": 412, "count": 2,
                            "code": "PreconditionFailed", "message": COSMOS_BUSY}),
    ("400 principal not replicated", {
        "method": "PUT", "path": r"/sqlRoleAssignments/", "status": 400, "count": 2, "code": "BadRequest",
        "message": f"The provided principal ID [{{principal_id}}] was not found in the AAD tenant(s) [{TENANT}] which "
                   "are associated with the customer's subscription."}),
]
REPORT: dict = {"seed": SEED, "apps": APPS, "faults": {}, "runs": [], "kills": []}


@pytest.fixture(scope="module", autouse=True)
def report():
    """Write :data:`REPORT` as tests/output/chaos.json and chaos.md when the module ends, passed or not."""
    started = time.monotonic()
    yield REPORT
    REPORT["wall_seconds"] = round(time.monotonic() - started, 1)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "chaos.json").write_text(json.dumps(REPORT, indent=2) + "\n")
    (OUTPUT / "chaos.md").write_text(markdown(REPORT))


def markdown(data: dict) -> str:
    lines = [f"# make chaos: {data['apps']} applications, seed {data['seed']}, {data.get('wall_seconds', '?')} s", "",
             "| fault | injected | served | retried |", "|---|---:|---:|---:|"]
    for kind, counts in data["faults"].items():
        lines.append(f"| {kind} | {counts['injected']} | {counts['served']} | {counts['retried']} |")
    lines += ["", "| run | exit | wall s | ARM requests | faulted |", "|---|---:|---:|---:|---:|"]
    for run in data["runs"]:
        lines.append(f"| {run['name']} | {run['status']} | {run['seconds']} | {run.get('arm_requests', '')} | "
                     f"{run.get('faulted', '')} |")
    lines += ["", "| kill | after task header | task | + delay s | at s |", "|---:|---:|---|---:|---:|"]
    for number, kill in enumerate(data["kills"], 1):
        lines.append(f"| {number} | {kill['header']} | {kill['task']} | {kill['delay']} | {kill['at_seconds']} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> dict:
    """The generated fleet: ``{"topology", "inventory", "hosts", "apps"}``."""
    out = tmp_path_factory.mktemp("fleet")
    run = subprocess.run([sys.executable, "-m", "azurelab", "fleet", "--apps", str(APPS), "--out", str(out)],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO / "lab")), capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    hosts = yaml.safe_load((out / "inventory" / "hosts.yml").read_text())["all"]["children"]["applications"]["hosts"]
    topology = yaml.safe_load((out / "topology.yml").read_text())
    return {"topology": out / "topology.yml", "inventory": str(out / "inventory"), "hosts": hosts,
            "apps": {app["name"]: app for app in topology["applications"]}}


def run_migrate(lab, fleet, name: str, kill_when=None) -> tuple[int, str]:
    """``migrate.yml`` on the fleet, recorded in :data:`REPORT` (wall time, ARM requests and faulted ones)."""
    lab.lab_api("POST", "counters/reset")
    started = time.monotonic()
    status, output, killed = watch_playbook(lab, fleet["inventory"], kill_when=kill_when, sig=signal.SIGKILL)
    counters = lab.arm_counters()
    REPORT["runs"].append({"name": name, "status": status, "seconds": round(time.monotonic() - started, 1),
                           "arm_requests": counters["total"], "faulted": counters["faulted"], "killed": killed})
    if kill_when:
        assert killed, f"{name}: the kill point never came:\n{output[-3000:]}"
        assert status != 0
    return status, output


def workload_env(lab, fleet, app: str) -> dict:
    """The environment of a process on ``app``'s VM: its managed identity endpoint, the lab CA, the ODBC driver."""
    return dict(lab.env, AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{lab.base + 3}/vms/{fleet['apps'][app]['vm']}",
                PYTHONPATH=str(REPO / "lab"))


def signs_in(lab, fleet, app: str) -> dict:
    """The application's own sign-in, where it runs: the demo app on its VM, or the App Service front's identity
    check. Its JSON result (``ok``, ``mode``, ``connected_as``)."""
    workload = fleet["apps"][app].get("workload") or {"type": "vm"}
    if workload["type"] == "app_service":
        url = json.loads((lab.state / "endpoints.json").read_text())["web_workloads"][workload["name"]]
        context = ssl.create_default_context(cafile=str(lab.state / "tls" / "ca-bundle.pem"))
        try:
            with urllib.request.urlopen(url + "health/identity", context=context, timeout=60) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as refused:  # 503 with the app's JSON line when it failed
            text = refused.read().decode()
        result = dict(json.loads(text), mode="identity")
    else:
        run = subprocess.run([sys.executable, "-m", "azurelab.demo_app", app], env=workload_env(lab, fleet, app),
                             capture_output=True, text=True, timeout=60, check=False)
        text = run.stdout + run.stderr
        result = json.loads(run.stdout or "{}")
    lab.assert_no_secret_in(text)
    return result


def assert_converged(lab, fleet, status: int, output: str) -> None:
    assert status == 0, output[-4000:]
    summary = recap(output)
    assert set(fleet["hosts"]) <= set(summary)
    assert all(host["failed"] == 0 and host["unreachable"] == 0 for host in summary.values()), summary
    assert_fleet_converged(lab, fleet)  # every application verified as its identity: every server it uses is closed
    servers = arm_servers(lab)
    for server in {db.get("server") or db.get("account") for host in fleet["hosts"].values()
                   for db in host["mi_databases"]}:
        properties = servers[server]
        if "authConfig" in properties:
            assert properties["authConfig"]["passwordAuth"] == "Disabled", server
        elif "disableLocalAuth" in properties:
            assert properties["disableLocalAuth"] is True, server
        else:
            assert entra_only(properties), server
        assert password_login(lab, server) == "refused", server
    for app in fleet["hosts"]:
        if (fleet["apps"][app].get("workload") or {}).get("type") == "aks":
            continue  # verified in the cluster by the verify phase's Job (login_verified_as above)
        result = signs_in(lab, fleet, app)
        assert result.get("ok") and result.get("mode") == "identity", (app, result)


def kill_after(kill: dict):
    """A ``kill_when`` for :func:`labrunner.watch_playbook`: True at the first output line ``kill["delay"]`` seconds or
    more after the ``kill["header"]``-th task header. Records that task and the moment (``at_seconds`` after the
    start) in ``kill``."""
    seen = {"headers": 0, "since": None, "started": time.monotonic()}

    def kill_when(_role, line, _state):
        if TASK.match(line):
            seen["headers"] += 1
            if seen["headers"] == kill["header"]:
                seen["since"] = time.monotonic()
                kill["task"] = line.strip().strip("*").strip()[len("TASK ["):].rstrip("]")[:90]
        if seen["since"] is not None and time.monotonic() - seen["since"] >= kill["delay"]:
            kill["at_seconds"] = round(time.monotonic() - seen["started"], 1)
            return True
        return False

    return kill_when


def test_the_fleet_covers_postgresql_azure_sql_cosmos_db_and_aks(fleet):
    assert {host["mi_databases"][0]["type"] for host in fleet["hosts"].values()} == {"postgres", "sql", "cosmos"}
    assert {host["mi_workload"]["type"] for host in fleet["hosts"].values()} >= {"vm", "app_service", "aks"}


def test_a_run_under_faults_converges_and_serves_every_fault(fleet):
    with contextlib.contextmanager(running_lab)(fleet["topology"]) as lab:
        for kind, spec in FAULTS:
            fault = lab.lab_api("POST", "faults", spec)
            REPORT["faults"].setdefault(kind, {"injected": 0, "served": 0, "retried": 0, "ids": []})
            REPORT["faults"][kind]["injected"] += spec["count"]
            REPORT["faults"][kind]["ids"].append(fault["id"])
        status, output = run_migrate(lab, fleet, "under faults")
        faults = lab.lab_api("GET", "faults")
        for kind, counts in REPORT["faults"].items():
            served = [s for s in faults["served"] if s["id"] in counts["ids"]]
            counts["served"], counts["retried"] = len(served), sum(s["retried"] for s in served)
            counts["paths"] = sorted({f"{s['method']} {s['path'].rsplit('/providers/', 1)[-1]}" for s in served})
        REPORT["headers_per_run"] = sum(1 for line in output.splitlines() if TASK.match(line))
        assert faults["value"] == [], f"faults never served: {faults['value']}"
        unretried = [s for s in faults["served"] if not s["retried"]]
        assert unretried == [], f"requests a fault answered that were never sent again: {unretried}"
        assert all(c["served"] == c["injected"] for c in REPORT["faults"].values()), REPORT["faults"]
        assert_converged(lab, fleet, status, output)


def test_runs_killed_at_random_points_then_a_plain_rerun_converges(fleet):
    rng = random.Random(SEED)
    headers = REPORT.get("headers_per_run") or 100
    with contextlib.contextmanager(running_lab)(fleet["topology"]) as lab:
        for number in range(1, KILLS + 1):
            kill = {"header": rng.randrange(3, headers - 5), "delay": round(rng.uniform(0.0, 4.0), 1)}
            REPORT["kills"].append(kill)
            run_migrate(lab, fleet, f"killed {number}", kill_after(kill))
        status, output = run_migrate(lab, fleet, "plain re-run")
        assert_converged(lab, fleet, status, output)
