"""Baseline (issue 7, item 2(b)): the tutorial done with azure.azcollection on a lab fleet, measured like migrate.yml.

:func:`run` runs ``benchmarks/azcollection.yml`` (azure.azcollection and community.postgresql from the ``ansible``
package, in a venv of their own: ``benchmarks/.venv-azcollection``, pinned by ``requirements-azcollection.txt`` plus
the collection's own ``requirements.txt``) on a running lab of a fleet, with the fleet's inventory and the forks of
this repository's ansible.cfg, and returns what ``benchmarks/fleet.py`` records for migrate.yml: wall and CPU time,
ARM requests by method, Entra tokens issued by audience, and the tasks run. It then checks the end state (identities,
attachments, federated credentials, Cosmos DB assignments in ARM; a sign-in as each VM application's identity that
runs its verify query), so that a baseline that did less cannot look faster.

``python benchmarks/baseline_azcollection.py --apps N`` generates a fleet of N, starts a lab of it, runs the baseline
once, prints the result as JSON and stops the lab.

Module authentication is azcollection's own: ``auth_source: msi`` (azure-identity's ManagedIdentityCredential, through
the control node's identity endpoint in the lab's environment) and ``cloud_environment`` set to the lab ARM's URL,
from which azure-cli-core's cloud code reads ``GET {arm}/metadata/endpoints``. Nothing secret is printed: database
tokens are registered under ``no_log`` and passed to the SQL step in its environment.
"""
from __future__ import annotations

import argparse
import collections
import configparser
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv-azcollection"
VENV_PYTHON = VENV / "bin" / "python"
PINS = HERE / "requirements-azcollection.txt"
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "lab")]

from labrunner import run_module  # noqa: E402  (after the path set-up)


def bundled_collections() -> pathlib.Path:
    """The folder holding the ``ansible`` package's ``ansible_collections`` (the venv's site-packages)."""
    found = sorted(VENV.glob("lib/python*/site-packages/ansible_collections"))
    if not found:
        raise FileNotFoundError(f"no ansible_collections in {VENV}")
    return found[0].parent


def ensure_venv() -> None:
    """Create the venv, or reuse it when it already has what the pins and the collection's requirements ask for."""
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == PINS.read_text():
        install_cloud_shim()
        return
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(PINS)], check=True)
    requirements = bundled_collections() / "ansible_collections" / "azure" / "azcollection" / "requirements.txt"
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    install_cloud_shim()
    stamp.write_text(PINS.read_text())


def install_cloud_shim() -> None:
    """azc_cloud_shim.py (see its docstring: a function azcollection calls that its pinned azure-cli-core lacks) into
    the venv's site-packages, loaded by a .pth line."""
    site = bundled_collections()
    (site / "azc_cloud_shim.py").write_text((HERE / "azc_cloud_shim.py").read_text())
    (site / "azc_cloud_shim.pth").write_text("import azc_cloud_shim; azc_cloud_shim.install()\n")


def forks() -> str:
    """This repository's forks (ansible.cfg), so that both runs have the same parallelism."""
    config = configparser.ConfigParser()
    config.read(REPO / "ansible.cfg")
    return config.get("defaults", "forks", fallback="5")


def tokens_since(lab, after_line: int) -> dict[str, int]:
    lines = (lab.state / "issued.jsonl").read_text().splitlines()
    counts = collections.Counter(json.loads(line).get("audience", "?") for line in lines[after_line:]
                                 if '"kind": "entra-token"' in line)
    return dict(sorted(counts.items()))


def environment(lab) -> dict:
    """The lab's control-node environment, with this venv's Ansible and nothing of the project's collection."""
    env = {k: v for k, v in lab.env.items() if not k.startswith("ANSIBLE_")}
    env.update(PATH=f"{VENV / 'bin'}:{os.environ['PATH']}", ANSIBLE_COLLECTIONS_PATH=str(bundled_collections()),
               ANSIBLE_CONFIG=str(HERE / "azcollection.cfg"), ANSIBLE_FORKS=forks(), ANSIBLE_HOST_KEY_CHECKING="false",
               ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_PYTHON_INTERPRETER=str(VENV_PYTHON))
    return env


def run(lab, topology: pathlib.Path, work: pathlib.Path) -> dict:
    """Run the baseline once on ``lab`` (a running lab of ``topology``); returns ``{"status", "wall_s", "cpu_s",
    "arm", "tokens", "tasks", "changed", "failed"}`` (seconds; ARM counters as ``GET /lab/counters`` gives them;
    tokens by audience). Raises AssertionError when the end state was not reached."""
    ensure_venv()
    work.mkdir(parents=True, exist_ok=True)
    inventory = topology.parent / "inventory"
    arm = f"https://127.0.0.1:{lab.base + 2}"
    log = work / "azcollection.log"
    lab.lab_api("POST", "counters/reset")
    seen = len((lab.state / "issued.jsonl").read_text().splitlines())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as output:
        status = subprocess.run([str(VENV / "bin" / "ansible-playbook"), "-i", str(inventory), str(HERE / "azcollection.yml"),
                                 "-e", f"azc_arm={arm}"], cwd=REPO, env=environment(lab), stdout=output,
                                stderr=subprocess.STDOUT, timeout=6 * 3600, check=False).returncode
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text()
    lab.assert_no_secret_in(text)
    recap = [line.split(":", 1)[1].split() for line in text.splitlines() if " : ok=" in line]
    totals = collections.Counter()
    for fields in recap:
        for field in fields:
            key, _eq, value = field.partition("=")
            totals[key] += int(value)
    result = {"status": status, "wall_s": round(wall, 1),
              "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
              "arm": lab.arm_counters(), "tokens": tokens_since(lab, seen),
              "tasks": totals["ok"] + totals["failed"] + totals["skipped"], "changed": totals["changed"],
              "failed": totals["failed"]}
    assert status == 0, f"azcollection.yml failed (status {status}); see {log}"
    check_end_state(lab, inventory)
    return result


def check_end_state(lab, inventory: pathlib.Path) -> None:
    """What the tutorial's steps leave behind, for every application of the inventory."""
    import yaml

    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["children"]["applications"]["hosts"]
    group = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())
    resources = {r["id"].lower(): r for r in lab.lab_api("GET", "state")["resources"]}
    sub = f"/subscriptions/{group['mi_subscription_id']}"
    for name, host in hosts.items():
        identity_id = (f"{sub}/resourcegroups/{host['mi_identity']['resource_group']}/providers/"
                       f"microsoft.managedidentity/userassignedidentities/{host['mi_identity']['name']}").lower()
        identity = resources.get(identity_id)
        assert identity, f"{name}: no identity"
        principal = identity["properties"]["principalId"]
        workload = host["mi_workload"]
        if workload["type"] in ("vm", "app_service"):
            kind = "microsoft.compute/virtualmachines" if workload["type"] == "vm" else "microsoft.web/sites"
            attached = resources[f"{sub}/resourcegroups/{workload['resource_group']}/providers/{kind}/"
                                 f"{workload['name']}".lower()]["identity"]["userAssignedIdentities"]
            assert identity_id in {key.lower() for key in attached}, f"{name}: identity not attached"
        if workload["type"] == "aks":
            credentials = [fic["properties"] for fic in identity.get("_lab", {}).get("federatedCredentials", [])] or \
                [r["properties"] for key, r in resources.items() if key.startswith(identity_id + "/federatedidentity")]
            subject = f"system:serviceaccount:{workload['namespace']}:{workload['service_account']}"
            assert any(c["subject"] == subject for c in credentials), f"{name}: no federated credential"
        for database in host.get("mi_databases", []):
            if database["type"] == "cosmos":
                assignments = [r for r in resources.values() if r["type"].lower().endswith("sqlroleassignments")]
                assert any(a["properties"]["principalId"] == principal for a in assignments), f"{name}: no Cosmos role"
            if workload["type"] == "vm":
                login_check(lab, name, host, group, database)


def login_check(lab, name: str, host: dict, group: dict, database: dict) -> None:
    """Sign in as the application's identity, on its VM's identity endpoint, and run its verify query."""
    env = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{lab.base + 3}/vms/{host['mi_workload']['name']}"}
    if database["type"] == "postgres":
        server = group["mi_postgres_servers"][database["server"]]
        args = dict(database_type="postgres", host="localhost", port=lab.base + 4, database=database["database"],
                    user=host["mi_identity"]["name"], query=database.get("verify_query"), ssl_mode="verify-full",
                    ssl_root_cert=str(lab.state / "tls" / "ca-bundle.pem"))
        assert server["host"] == "localhost"
    elif database["type"] == "sql":
        port = int(lab.env[f"LAB_SQL_PORT_{database['server'].upper().replace('-', '_')}"])
        args = dict(database_type="sql", host="localhost", port=port, database=database["database"],
                    expected_user=host["mi_identity"]["name"])
    else:
        args = dict(database_type="cosmos", host=lab.env[f"LAB_COSMOS_ENDPOINT_{database['account'].upper().replace('-', '_')}"],
                    database=database["database"], container=database["container"],
                    query=database.get("verify_query"), parameters=database.get("verify_parameters"))
    result = run_module(lab, "mi_login_check", env=env, **{k: v for k, v in args.items() if v is not None})
    assert not result["failed"], f"{name}: {database['type']} sign-in as its identity failed: {result.get('msg')}"


def main() -> int:
    from labrunner import running_lab

    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--apps", type=int, default=10, help="fleet size (at least 10)")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="azc-bench-"))
    subprocess.run([sys.executable, "-m", "azurelab", "fleet", "--apps", str(args.apps), "--out", str(work / "fleet")],
                   cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO / "lab")), check=True, capture_output=True)
    topology = work / "fleet" / "topology.yml"
    lab_run = running_lab(topology)
    lab = next(lab_run)
    try:
        result = run(lab, topology, work)
    finally:
        next(lab_run, None)
    print(json.dumps(dict(result, applications=args.apps, log=str(work / "azcollection.log")), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
