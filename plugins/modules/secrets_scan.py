#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: secrets_scan
short_description: Find Vault use and stored passwords or keys in an application's tree and Kubernetes objects
version_added: 0.1.0
description:
  - Reads an application's source tree, configuration files and Kubernetes manifests (files under O(paths)), and
    optionally its live Kubernetes objects (O(kubernetes_objects)), line by line, for what two items of the tutorial's
    validation checklist forbid.
  - C(no_vault_references) ("No Vault Agent sidecar or Vault SDK references remain in application code") - Vault SDK
    imports and dependencies (C(hvac), C(node-vault), C(hashi-vault-js), C(VaultSharp), Spring Cloud Vault,
    C(org.springframework.vault), C(com.bettercloud.vault), the Go C(vault/api) and C(vault-client-go)), Vault Agent
    injector annotations (C(vault.hashicorp.com/*)), Vault Agent templates and their C(/vault/secrets/) files,
    C(VAULT_ADDR), C(VAULT_TOKEN) and AppRole variables, Vault settings in configuration, AppRole role and secret ids,
    and the C(vault) / C(bao) CLI reading secrets.
  - C(no_secrets_in_config) ("No connection strings, passwords, or keys exist in application configuration") -
    C(Password=) / C(Pwd=) in ADO.NET, ODBC and JDBC connection strings and C(password=) in libpq ones, user and
    password in URLs (C(postgresql://user:pass@host)), C(AccountKey=) / C(SharedAccessKey=) in Cosmos DB and Storage
    connection strings, literals shaped like an Azure account key, password variables (C(DB_PASSWORD)) in
    environments and manifests, and C(password), C(secret), C(client_secret), C(api_key), C(token) keys in YAML, JSON,
    properties, INI, TOML and C(.env) files.
  - Not findings - a key naming a file or path (C(password_file), C(DB_PASSWORD_FILE); a path under
    C(/vault/secrets/) is a Vault finding though), a setting about passwords (C(password_auth), C(passwordAuth)),
    empty, boolean and null values, C(Authentication=Active Directory Default) (what the checklist wants), and
    C(password=token.token) in code (how the tutorial's "after" code passes a token; key-value rules apply to
    configuration files only).
  - A placeholder where a password would be (C(${DB_PASSWORD}), C($(PASSWORD)), C({{ password }}), C(%(password\)s),
    C(<password>), C({password})) is still a finding, with RV(findings[].placeholder=true) - the application still
    signs in with a password, only given to it at run time. Its excerpt shows the placeholder, which is a name.
  - Findings give the file (or C(kubernetes:<namespace>/<kind>/<name>)), the line, the rule, the checklist item and
    an excerpt in which every secret value is replaced by C(********). The values themselves never appear in the
    results, the diff or the log.
  - Binary files, files over O(max_file_size) and symbolic links (unless O(follow_symlinks)) are skipped and listed
    in RV(skipped). Kubernetes Secrets are never read. Read-only; runs in check mode too.
author: csa-inabox core team (@csa-inabox)
options:
  paths:
    description: Files and folders to scan (folders recursively). Paths that do not exist are listed in RV(skipped).
    type: list
    elements: path
    default: []
  exclude:
    description:
      - Glob patterns of files and folders not to scan, matched against the path relative to the scanned folder and
        against each of its parts (V(node_modules) excludes every folder of that name, V(tests/*) one subtree).
    type: list
    elements: str
    default: [.git, .hg, .svn, node_modules, .venv, venv, __pycache__, .tox, "*.pyc"]
  max_file_size:
    description: Files larger than this many bytes are skipped (generated bundles, data files, images).
    type: int
    default: 1048576
  max_files:
    description: Stop after reading this many files; the result then has a warning and RV(truncated=true).
    type: int
    default: 20000
  follow_symlinks:
    description:
      - Follow symbolic links to files and folders. Off by default, so that a link out of the tree (to C(/etc), to a
        mounted secret) is not read. Each folder is entered once when on.
    type: bool
    default: false
  kubernetes_objects:
    description:
      - Live objects to scan, read from the cluster given by the Kubernetes options; each is dumped as YAML (without
        C(status), C(metadata.managedFields) and the C(kubectl.kubernetes.io/last-applied-configuration) annotation,
        which holds an earlier manifest, not what runs) and scanned as a file named C(kubernetes:<namespace>/<kind>/<name>).
      - An object that does not exist is listed in RV(skipped).
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description: Object kind. Secrets are never read.
        type: str
        required: true
        choices: [Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod, ServiceAccount, ConfigMap]
      namespace:
        description: Namespace of the object.
        type: str
        required: true
      name:
        description: Name of the object.
        type: str
        required: true
  ignore:
    description:
      - Findings accepted on purpose, for example a Vault address kept in a configuration so that a rollback can use it
        again. Accepted findings are returned in RV(ignored) with their reason, and do not count in RV(checklist).
    type: list
    elements: dict
    default: []
    suboptions:
      rule:
        description: Rule id (see RV(findings[].rule)), or V(*) for any.
        type: str
        default: "*"
      path:
        description: Glob matched against the finding's path (V(*) for any).
        type: str
        default: "*"
      reason:
        description: Why it is accepted; returned with each accepted finding.
        type: str
        required: true
extends_documentation_fragment:
  - csa_inabox.managed_identity.azure
  - csa_inabox.managed_identity.kubernetes
  - csa_inabox.managed_identity.attributes.read_only
notes:
  - The rules are lines read one by one. A secret split over several lines, or built in code from pieces, is not
    found; what is found is the usual shapes of the checklist's examples.
  - The Azure and Kubernetes options are needed only with O(kubernetes_objects).
"""

EXAMPLES = r"""
- name: Does the application's tree still use Vault or hold a password?
  csa_inabox.managed_identity.secrets_scan:
    paths: [/srv/apps/orders-api]
    exclude: [node_modules, "*.min.js", tests]
  register: scan

- name: Scan the Deployment and service account as they run on AKS
  csa_inabox.managed_identity.secrets_scan:
    cluster_name: aks-prod
    cluster_resource_group: rg-aks
    kubernetes_objects:
      - {kind: Deployment, namespace: app-namespace, name: webapp}
      - {kind: ServiceAccount, namespace: app-namespace, name: webapp-sa}
  register: live

- name: Keep the Vault address in the configuration for rollback, on purpose
  csa_inabox.managed_identity.secrets_scan:
    paths: [/etc/orders-api/config.json]
    ignore:
      - {rule: vault-config, reason: kept so that rollback.yml can point the application at Vault again}
"""

RETURN = r"""
findings:
  description: What was found, in file and line order. Never holds a secret value.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: File path, or C(kubernetes:<namespace>/<kind>/<name>) for a live object.
      type: str
    line:
      description: Line number (1-based; for a live object, in its YAML dump).
      type: int
    rule:
      description: Rule id, for example C(vault-sdk-python), C(vault-agent-annotation), C(connection-string-password).
      type: str
    checklist:
      description: The checklist item the finding breaks, C(no_vault_references) or C(no_secrets_in_config).
      type: str
    finds:
      description: What the rule finds, in words.
      type: str
    excerpt:
      description: The line, at most 160 characters, with every secret value replaced by C(********).
      type: str
    placeholder:
      description: The password is a placeholder filled in at run time (C(${DB_PASSWORD})), not a literal.
      type: bool
  sample:
    - {path: /srv/app/db.py, line: 1, rule: vault-sdk-python, checklist: no_vault_references,
       finds: HashiCorp Vault Python client (hvac), excerpt: import hvac, placeholder: false}
    - {path: /srv/app/appsettings.json, line: 3, rule: connection-string-password, checklist: no_secrets_in_config,
       finds: "password in a connection string (ADO.NET, ODBC, JDBC)",
       excerpt: "\"Db\": \"Server=tcp:sql-prod.database.windows.net;User ID=app;Password=********;\"", placeholder: false}
ignored:
  description: Findings accepted by O(ignore), each with the C(reason) it was accepted for.
  returned: always
  type: list
  elements: dict
checklist:
  description: Per checklist item, C(status) (V(pass) when nothing was found) and the number of C(findings).
  returned: always
  type: dict
  sample: {no_vault_references: {status: fail, findings: 2, item: "No Vault Agent sidecar or Vault SDK references remain in application code"},
           no_secrets_in_config: {status: pass, findings: 0, item: "No connection strings, passwords, or keys exist in application configuration"}}
files_scanned:
  description: Number of files read.
  returned: always
  type: int
objects_scanned:
  description: Number of live Kubernetes objects read.
  returned: always
  type: int
skipped:
  description: Files and objects not read, each with C(path) and C(reason).
  returned: always
  type: list
  elements: dict
truncated:
  description: O(max_files) was reached before the end of the tree.
  returned: always
  type: bool
"""

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import kube
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import secretscan
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.base import MIModule
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

KINDS = ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ServiceAccount", "ConfigMap"]


def object_text(obj):
    """The live object as YAML, without what is not the running spec (status, managedFields, last-applied)."""
    import yaml  # pylint: disable=import-outside-toplevel

    obj = dict(obj)
    obj.pop("status", None)
    metadata = dict(obj.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = dict(metadata.get("annotations") or {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    obj["metadata"] = metadata
    return yaml.safe_dump(obj, default_flow_style=False, sort_keys=False, width=1 << 20)


def scan_files(params, warnings):
    """Findings, skipped entries, files read and whether ``max_files`` stopped the walk."""
    findings, skipped, read = [], [], 0
    for path, why in secretscan.walk(params["paths"], params["exclude"], params["follow_symlinks"]):
        if why is None:
            if read >= params["max_files"]:
                warnings.append("stopped after max_files=%d files: the rest of the tree was not scanned"
                                % params["max_files"])
                return findings, skipped, read, True
            text, why = secretscan.read_text(path, params["max_file_size"])
        if why is not None:
            skipped.append(dict(path=path, reason=why))
            continue
        read += 1
        findings.extend(secretscan.scan_text(text, path))
    return findings, skipped, read, False


def scan_objects(mod):
    """Findings and skipped entries of the live objects, and how many were read."""
    findings, skipped = [], []
    objects = kube.Objects(kube.api_client(mod))
    read = 0
    for wanted in mod.params["kubernetes_objects"]:
        label = "kubernetes:%s/%s/%s" % (wanted["namespace"], wanted["kind"], wanted["name"])
        try:
            obj = objects.get(wanted["kind"], wanted["namespace"], wanted["name"])
        except kube.KubeError as exc:
            mod.fail("could not read %s" % label, exc)
        if obj is None:
            skipped.append(dict(path=label, reason="does not exist"))
            continue
        read += 1
        findings.extend(secretscan.scan_text(object_text(obj), label, config=True))
    return findings, skipped, read


def checklist(findings):
    result = {}
    for item, words in secretscan.CHECKLIST.items():
        count = sum(1 for finding in findings if finding["checklist"] == item)
        result[item] = dict(item=words, status="fail" if count else "pass", findings=count)
    return result


def main():
    spec = dict(
        paths=dict(type="list", elements="path", default=[]),
        exclude=dict(type="list", elements="str", default=list(secretscan.DEFAULT_EXCLUDES)),
        max_file_size=dict(type="int", default=1048576),
        max_files=dict(type="int", default=20000),
        follow_symlinks=dict(type="bool", default=False),
        kubernetes_objects=dict(type="list", elements="dict", default=[], options=dict(
            kind=dict(type="str", required=True, choices=KINDS),
            namespace=dict(type="str", required=True),
            name=dict(type="str", required=True),
        )),
        ignore=dict(type="list", elements="dict", default=[], options=dict(
            rule=dict(type="str", default="*"),
            path=dict(type="str", default="*"),
            reason=dict(type="str", required=True),
        )),
    )
    spec.update(kube.KUBERNETES_ARGUMENT_SPEC)
    mod = MIModule(spec, mutually_exclusive=kube.KUBERNETES_MUTUALLY_EXCLUSIVE,
                   required_together=kube.KUBERNETES_REQUIRED_TOGETHER)
    params = mod.params
    if not params["paths"] and not params["kubernetes_objects"]:
        mod.fail("nothing to scan: give paths, kubernetes_objects, or both")
    if params["max_file_size"] < 1 or params["max_files"] < 1:
        mod.fail("max_file_size and max_files must be positive")
    for index, path in enumerate(params["paths"]):
        if not path or "\x00" in path:
            mod.fail("paths[%d] %s is not a path: a file or folder name cannot be empty or hold a NUL character"
                     % (index, shown(path)))
    rules = set(rule.rule for rule in secretscan.RULES) | {"*"}
    unknown = sorted(set(entry["rule"] for entry in params["ignore"]) - rules)
    if unknown:
        mod.fail("ignore names unknown rule(s) %s; the rules are %s"
                 % (", ".join(shown(rule) for rule in unknown), ", ".join(sorted(rules))))
    for index, wanted in enumerate(params["kubernetes_objects"]):
        for key, label in (("namespace", True), ("name", False)):
            problem = kube.name_problem("kubernetes_objects[%d].%s" % (index, key), wanted[key], label=label)
            if problem:
                mod.fail(problem)

    warnings = []
    findings, skipped, files_read, truncated = scan_files(params, warnings)
    objects_read = 0
    if params["kubernetes_objects"]:
        live, live_skipped, objects_read = scan_objects(mod)
        findings.extend(live)
        skipped.extend(live_skipped)
    kept, ignored = [], []
    for finding in findings:
        entry = secretscan.ignored_by(finding, params["ignore"])
        if entry is None:
            kept.append(finding)
        else:
            ignored.append(dict(finding, reason=entry["reason"]))
    for warning in warnings:
        mod.module.warn(warning)
    mod.exit(False, findings=kept, ignored=ignored, checklist=checklist(kept), files_scanned=files_read,
             objects_scanned=objects_read, skipped=skipped, truncated=truncated)


if __name__ == "__main__":
    main()
