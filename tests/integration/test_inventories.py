"""The shipped inventories pass the inventory check as ansible-playbook runs it (the action plugin, hostvars
templating, group variables per environment); a malformed copy is refused with every problem named, before any
task that writes. No lab is needed: the check reads the inventory only."""
from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from labrunner import REPO, VENV_BIN

PLAYBOOK = """
- name: Check the inventory
  hosts: applications
  gather_facts: false
  tasks:
    - name: Check
      csa_inabox.managed_identity.inventory_check:
      run_once: true
      register: checked
    - name: Show
      ansible.builtin.debug:
        msg: "{{ checked.applications }} applications; {{ checked.servers.keys() | sort | join(',') }}"
      run_once: true
"""


def check(tmp_path, inventory, *args):
    playbook = tmp_path / "check.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_lab_inventory_passes(tmp_path):
    run = check(tmp_path, REPO / "inventories" / "lab")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "10 applications; cosmos,postgres,sql" in run.stdout


def test_the_example_inventory_parses_and_passes_per_environment(tmp_path):
    listed = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", "inventories/example", "--list"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr
    for environment, count in (("staging", 4), ("prod", 3)):
        run = check(tmp_path, REPO / "inventories" / "example", "--limit", environment)
        assert run.returncode == 0, run.stdout[-3000:]
        assert f"{count} applications" in run.stdout
    both = check(tmp_path, REPO / "inventories" / "example")
    assert both.returncode != 0
    assert "$.mi_cloud_environment: the applications of this run disagree" in both.stdout
    assert "one run covers one environment" in both.stdout


def test_a_malformed_inventory_is_refused_with_every_problem(tmp_path):
    inventory = tmp_path / "bad"
    shutil.copytree(REPO / "inventories" / "lab", inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    apps = hosts["all"]["children"]["applications"]["hosts"]
    apps["orders-api"]["mi_databases"][0]["server"] = "pg-typo"
    apps["reports"]["mi_workload"]["type"] = "vmm"
    apps["webapp"]["mi_workload"].pop("namespace")
    apps["ledger"]["mi_workload"]["undefined_here"] = "{{ no_such_variable }}"
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    run = check(tmp_path, inventory)
    assert run.returncode != 0
    assert "The inventory has 4 problem(s); nothing was changed" in run.stdout
    for line in ("orders-api: $.mi_databases[0].server: server 'pg-typo' is not in mi_postgres_servers; "
                 "expected one of ['pg-lab']",
                 "reports: $.mi_workload.type: 'vmm' is not one of",
                 "webapp: $.mi_workload: 'namespace' is a required property",
                 "ledger: $.mi_workload: cannot be templated"):
        assert line in run.stdout, run.stdout[-3000:]
    assert "TASK [Show]" not in run.stdout
