"""AWX / Automation Controller readiness without a container engine: `ansible-builder create` turns
execution-environment.yml into a build context that installs our Python requirements, unixODBC and Microsoft ODBC
Driver 18 (from Microsoft's repository, added before any system package is installed), and the AWX project's
collections/requirements.yml installs the checkout itself as the collection, offline.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from bindep.depends import Depends

from labrunner import REPO, VENV_BIN

MS_REPO = "https://packages.microsoft.com/config/rhel/9/prod.repo"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    out = tmp_path_factory.mktemp("ee") / "context"
    run = subprocess.run([str(VENV_BIN / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", str(out),
                          "--output-filename", "Containerfile"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def stages(containerfile: str) -> dict:
    """{stage name: its lines} of a multi-stage Containerfile."""
    result, name = {}, None
    for line in containerfile.splitlines():
        match = re.match(r"FROM \S+ AS (\w+)$", line)
        if match:
            name = match.group(1)
        if name:
            result.setdefault(name, []).append(line)
    return result


def test_build_context_carries_our_requirements_and_bindep(context):
    assert (context / "_build" / "requirements.txt").read_bytes() == (REPO / "requirements.txt").read_bytes()
    assert (context / "_build" / "bindep.txt").read_bytes() == (REPO / "bindep.txt").read_bytes()
    text = (context / "Containerfile").read_text()
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert f'ARG EE_BASE_IMAGE="{definition["images"]["base_image"]["name"]}"' in text
    assert 'ARG PYCMD="/usr/bin/python3.11"' in text
    parts = stages(text)
    assert set(parts) == {"base", "builder", "final"}
    base = parts["base"]
    # Microsoft's repository and the EULA come before the base stage installs anything, so that the builder stage
    # (FROM base) and the final image (FROM base) can install msodbcsql18 from bindep.txt.
    repo_line = next(i for i, line in enumerate(base) if MS_REPO in line and "/etc/yum.repos.d/" in line)
    eula_line = base.index("ENV ACCEPT_EULA=Y")
    first_install = next(i for i, line in enumerate(base) if "$PKGMGR install" in line)
    assert repo_line < first_install and eula_line < first_install
    assert any("COPY _build/requirements.txt" in line for line in parts["builder"])
    assert any("COPY _build/bindep.txt" in line for line in parts["builder"])
    assert any("install-from-bindep" in line for line in parts["final"])


def test_build_context_resolves_what_the_image_installs(context, tmp_path):
    """The context's own introspect step (what the builder stage runs) lists our Python and system packages."""
    empty = tmp_path / "collections"
    empty.mkdir()
    pip_out, bindep_out = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    run = subprocess.run([sys.executable, str(context / "_build" / "scripts" / "introspect.py"), "introspect",
                          f"--user-pip={context / '_build' / 'requirements.txt'}",
                          f"--user-bindep={context / '_build' / 'bindep.txt'}", f"--write-pip={pip_out}",
                          f"--write-bindep={bindep_out}", str(empty)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stderr
    python = {re.split(r"[<>=\[ ]", line)[0] for line in pip_out.read_text().splitlines() if line.strip()}
    assert {"azure-identity", "azure-mgmt-sql", "azure-mgmt-postgresqlflexibleservers", "azure-cosmos", "psycopg",
            "pyodbc", "kubernetes", "hvac"} <= python
    system = {line.split()[0] for line in bindep_out.read_text().splitlines() if line.strip()}
    assert {"unixODBC", "msodbcsql18"} <= system


@pytest.mark.parametrize("platform, expected", [
    (["platform:rpm", "platform:redhat", "platform:centos"], {"unixODBC", "msodbcsql18"}),
    (["platform:dpkg", "platform:debian"], {"unixodbc", "msodbcsql18"}),
])
def test_bindep_names_the_driver_on_each_platform(platform, expected):
    depends = Depends((REPO / "bindep.txt").read_text())
    rules = depends.active_rules(["default", *platform])
    assert {rule[0] for rule in rules} == expected


def test_ee_ansible_core_matches_requirements():
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    spec = definition["dependencies"]["ansible_core"]["package_pip"]
    requirement = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                       if line.startswith("ansible-core"))
    assert spec == requirement


def test_awx_project_installs_the_checkout_as_the_collection(tmp_path):
    """What an AWX project sync runs in the checkout (awx/playbooks/project_update.yml): offline, no dependency."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path))
    env.pop("ANSIBLE_CONFIG", None)
    run = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "-r",
                          "collections/requirements.yml", "--collections-path", str(tmp_path), "--offline"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    installed = tmp_path / "ansible_collections" / "csa_inabox" / "managed_identity"
    manifest = json.loads((installed / "MANIFEST.json").read_text())["collection_info"]
    assert manifest["version"] == yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    modules = {p.name for p in (REPO / "plugins" / "modules").glob("*.py")}
    assert modules == {p.name for p in (installed / "plugins" / "modules").glob("*.py")}
    assert (installed / "playbooks" / "migrate.yml").is_file() and (installed / "roles" / "verify").is_dir()
    assert not (installed / ".venv").exists() and not (installed / ".git").exists()
