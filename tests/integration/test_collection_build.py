"""The Galaxy artifact: `ansible-galaxy collection build` makes a tarball that holds the collection and what the demo
needs, and nothing a working tree accumulates; installed with `ansible-galaxy collection install`, it runs the demo
(`ansible-playbook csa_inabox.managed_identity.migrate -i inventories/lab`) against a fresh lab, with Ansible finding
the collection in the install directory only.

The tests of this module run in order on one build, one install and one lab.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile

import pytest
import yaml

from labrunner import REPO, VENV_BIN

NAMESPACE, NAME = "csa_inabox", "managed_identity"
APPS = {"orders-api", "reports", "billing-worker", "storefront", "inventory-api", "audit-reader", "ledger", "webapp",
        "catalog-api", "search-indexer"}
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
# ansible-playbook -vvv names the file of every module it runs and of every task it runs.
MODULE_FILE = re.compile(r"^Using module file (\S+)$", re.MULTILINE)
TASK_PATH = re.compile(r"^task path: (\S+):\d+$", re.MULTILINE)


def galaxy(*args, env=None, cwd=REPO):
    run = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact")
    galaxy("build", "--output-path", str(out))
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    path = out / f"{NAMESPACE}-{NAME}-{version}.tar.gz"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory):
    """The collections path the artifact was installed into (offline, no dependencies)."""
    root = tmp_path_factory.mktemp("collections")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(root))
    env.pop("ANSIBLE_CONFIG", None)
    galaxy("install", str(tarball), "-p", str(root), "--offline", "--no-deps", env=env, cwd=root)
    return root


def test_artifact_holds_the_collection_and_nothing_else(tarball):
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["namespace"] == NAMESPACE and manifest["collection_info"]["name"] == NAME
    wanted = {"README.md", "CHANGELOG.rst", "changelogs/changelog.yaml", "meta/runtime.yml", "requirements.txt",
              "inventories/lab/hosts.yml", "inventories/lab/group_vars/all.yml", "lab/azurelab/__main__.py",
              "lab/topology.yml", "lab/cosmos/package-lock.json"}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "plugins").rglob("*.py")
               if "__pycache__" not in p.parts}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "roles").rglob("*") if p.is_file()}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "playbooks").glob("*.yml")}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "changelogs" / "fragments").iterdir()}
    assert not wanted - names, "missing from the artifact"
    unwanted = [n for n in names if re.search(
        r"(^|/)(\.venv|\.lab|\.lab-molecule|\.git|node_modules|__pycache__|\.pytest_cache)(/|$)|\.pyc$|\.tar\.gz$"
        r"|^tests/output(/|$)|plugin-cache", n)]
    assert not unwanted, f"working-tree files in the artifact: {unwanted[:10]}"


def test_installed_collection_is_listed_from_its_install_path(installed):
    run = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", f"{NAMESPACE}.{NAME}",
                          "--format", "json"], env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(installed)),
                         cwd=installed, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    listing = json.loads(run.stdout)
    assert list(listing) == [str(installed / "ansible_collections")], listing
    assert listing[str(installed / "ansible_collections")][f"{NAMESPACE}.{NAME}"]["version"]


def test_installed_collection_runs_the_demo(installed, lab):
    """The demo, as a user of the artifact runs it: from the installed collection's directory, with its lab
    inventory, the playbook by its FQCN, and ANSIBLE_COLLECTIONS_PATH naming the install directory only."""
    collection = installed / "ansible_collections" / NAMESPACE / NAME
    env = dict(lab.env, ANSIBLE_COLLECTIONS_PATH=str(installed))
    for variable in ("ANSIBLE_CONFIG", "PYTHONPATH"):  # the working tree's ansible.cfg and link are not used
        env.pop(variable, None)
    run = subprocess.run([str(VENV_BIN / "ansible-playbook"), f"{NAMESPACE}.{NAME}.migrate", "-i", "inventories/lab",
                          "-vvv"], cwd=collection, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    lab.assert_no_secret_in(run.stdout + run.stderr)
    recap = {host: (int(unreachable), int(failed)) for host, unreachable, failed in RECAP.findall(run.stdout)}
    assert APPS <= set(recap) and all(v == (0, 0) for v in recap.values()), recap

    # Every module and task came from the installed collection, none from the working tree.
    modules = set(MODULE_FILE.findall(run.stdout))
    # ansible.builtin's modules live in the venv, which may sit inside the working tree (a fresh clone's .venv).
    ours = {m for m in modules if "/ansible_collections/csa_inabox/" in m
            or (m.startswith(str(REPO) + "/") and not m.startswith(str(REPO / ".venv") + "/"))}
    assert ours and all(m.startswith(str(collection) + "/plugins/modules/") for m in ours), sorted(ours)
    assert {os.path.basename(m)[:-3] for m in ours} >= {"azure_mi", "azure_mi_assignment", "pg_entra_principal",
                                                        "sql_entra_user", "cosmos_rbac", "mi_login_check",
                                                        "k8s_login_check", "aks_federation"}
    task_files = set(TASK_PATH.findall(run.stdout))
    assert task_files and all(t.startswith(str(collection) + "/") for t in task_files), \
        sorted(t for t in task_files if not t.startswith(str(collection)))

    report = json.loads((lab.state / "reports" / "migration-report.json").read_text())
    assert {app["application"] for app in report} == APPS
    for app in report:
        assert not app.get("failed"), app
        assert app["switched"] is True and all(db["login_verified_as"] for db in app["databases"]), app
