# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tutorial's validation checklist forbids in an application's tree, found line by line.

Two checklist items are judged from text (``CHECKLIST``): no connection strings, passwords or keys in the
application's configuration, and no Vault Agent sidecar or Vault SDK references in its code. Each rule is a regular
expression applied to one line; a rule whose pattern has a ``value`` group names the secret part of the line, which
:func:`mask` replaces before any excerpt leaves this file. Findings therefore never carry a secret value.

Decisions (documented in the module too):

* A placeholder in place of a password (``${DB_PASSWORD}``, ``$(PASSWORD)``, ``{{ password }}``, ``%(password)s``,
  ``<password>``) is still a finding, marked ``placeholder``: the application still signs in with a password, given
  to it at run time. Its excerpt shows the placeholder, which is a name, not a secret.
* A key that names a file or path (``password_file``, ``DB_PASSWORD_FILE``, ``secret_path``) or a setting about
  passwords (``password_auth: Disabled``, ``passwordPolicy``) is not a password. A path under ``/vault/secrets/`` is
  still found, as the Vault Agent injector's output.
* ``Authentication=Active Directory Default`` (and the other Entra keywords) is what the checklist wants.
* Key-value rules (``password: x``) apply to configuration files only (``CONFIG_SUFFIXES``), because in code
  ``password=token.token`` is how the tutorial's "after" code passes a token. Connection-string, URL, key and Vault
  rules apply to every text file.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import os
import re
import stat

CHECKLIST = {
    "no_secrets_in_config": "No connection strings, passwords, or keys exist in application configuration",
    "no_vault_references": "No Vault Agent sidecar or Vault SDK references remain in application code",
}

MASK = "********"
MAX_EXCERPT = 160
BINARY_SNIFF = 8192
DEFAULT_EXCLUDES = (".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".tox", "*.pyc")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".properties", ".env", ".ini", ".cfg", ".conf", ".toml", ".tfvars",
                   ".config")
CONFIG_NAMES = re.compile(r"^(\.env(\..*)?|.*\.env|application(-\w+)?\.properties)$", re.IGNORECASE)

# The secret part of a key-value pair ends at a quote, a separator or white space.
_VALUE = r"""(?P<value>\$\{[^}\s]{0,255}\}|\{\{[^}]{0,255}\}\}|\{[^}\s]{0,255}\}|<[^<>]{0,255}>|[^\s;'"`,}]+)"""
_SECRET_WORD = (r"password|passwd|pwd|passphrase|client[_-]?secret|secret[_-]?key|api[_-]?key|access[_-]?key|"
                r"account[_-]?key|primary[_-]?key|master[_-]?key|shared[_-]?key|connection[_-]?string|secret|token")
PLACEHOLDER = re.compile(r"^(\$\{[^}]*\}|\$\([^)]*\)|\$[A-Z_][A-Z0-9_]*|\{\{[^}]*\}\}|%\([a-z_]+\)s|<[^<>]+>|"
                         r"#\{[^}]*\}|\{[A-Za-z_]\w*\})$")
NOT_A_SECRET = re.compile(r"^(|null|none|nil|~|true|false|yes|no|enabled|disabled|required|optional|changeme\?)$",
                          re.IGNORECASE)


class Rule:
    """One pattern: ``rule`` id, the ``checklist`` item it breaks, what it ``finds``, and where it applies."""

    def __init__(self, rule, checklist, finds, pattern, config_only=False, flags=re.IGNORECASE):
        self.rule = rule
        self.checklist = checklist
        self.finds = finds
        self.regex = re.compile(pattern, flags)
        self.config_only = config_only


VAULT = "no_vault_references"
SECRETS = "no_secrets_in_config"
RULES = (
    Rule("vault-sdk-python", VAULT, "HashiCorp Vault Python client (hvac)",
         r"^\s*(import\s+hvac\b|from\s+hvac\b)|\bhvac\.Client\(|^\s*hvac\s*([=<>~!]=|$)|[\"']hvac[\"']\s*[,:\]]"),
    Rule("vault-sdk-node", VAULT, "HashiCorp Vault Node.js client (node-vault, hashi-vault-js)",
         r"""(require\(\s*|from\s+|import\s+)['"](node-vault|hashi-vault-js)['"]|"(node-vault|hashi-vault-js)"\s*:"""),
    Rule("vault-sdk-dotnet", VAULT, "HashiCorp Vault .NET client (VaultSharp)",
         r"\busing\s+VaultSharp\b|Include\s*=\s*\"VaultSharp\b|\bnew\s+VaultClient(Settings)?\s*\("),
    Rule("vault-sdk-java", VAULT, "Spring Cloud Vault or a Java Vault client",
         r"spring-cloud-(starter-)?vault|org\.springframework\.(cloud\.)?vault|com\.bettercloud[.:]vault|"
         r"io\.github\.jopenlibs[.:]vault"),
    Rule("vault-sdk-go", VAULT, "HashiCorp Vault Go client",
         r"github\.com/hashicorp/vault/api\b|github\.com/hashicorp/vault-client-go"),
    Rule("vault-agent-annotation", VAULT, "Vault Agent injector annotation",
         r"\bvault\.hashicorp\.com/[a-z0-9-]+"),
    Rule("vault-agent-template", VAULT, "Vault Agent / consul-template secret template",
         r"\{\{-?\s*with\s+secret\s+\""),
    Rule("vault-agent-secret-path", VAULT, "file written by the Vault Agent injector",
         r"/vault/secrets/"),
    Rule("vault-env", VAULT, "Vault address, token or AppRole variable",
         r"\b(VAULT|BAO)_(ADDR|TOKEN|ROLE_ID|SECRET_ID|NAMESPACE|CACERT)\b(\s*[=:]\s*['\"]?" + _VALUE + ")?",
         flags=0),
    Rule("vault-config", VAULT, "Vault address, token or AppRole setting in configuration",
         r"""^\s*["']?[\w.-]*\bvault[_.-]?(addr|address|url|uri|token|approle[_.-]?mount|role[_.-]?id|"""
         r"""secret[_.-]?id(_file)?)["']?\s*[:=]\s*["']?""" + _VALUE, config_only=True),
    Rule("vault-approle-credential", VAULT, "Vault AppRole role id or secret id",
         r"""\b(role_id|secret_id|secret_id_file|roleId|secretId)["']?\s*[:=]\s*["']?""" + _VALUE, flags=0),
    Rule("vault-cli", VAULT, "Vault (or OpenBao) CLI reading secrets",
         r"(^|[\s;&|(`])(vault|bao)\s+(kv\s+get|read|login|agent)\b", flags=0),
    Rule("connection-string-password", SECRETS, "password in a connection string (ADO.NET, ODBC, JDBC)",
         r"[;\"'{](password|pwd)\s*=\s*" + _VALUE),
    Rule("libpq-password", SECRETS, "password in a libpq connection string",
         r"\b(host|hostaddr|dbname|user)\s*=\s*[^\s;'\"]{1,255}[^\n]{0,512}?\spassword\s*=\s*" + _VALUE),
    Rule("url-credentials", SECRETS, "user and password in a URL",
         r"\b[a-z][a-z0-9+.-]{0,31}://[^:/@\s'\"]{1,255}:(?P<value>\{\{[^}]{0,255}\}\}|\$\{[^}]{0,255}\}|"
         r"[^@/\s'\"`]{1,255})@"),
    Rule("azure-account-key", SECRETS, "account key in a connection string (Cosmos DB, Storage, Service Bus)",
         r"\b(AccountKey|SharedAccessKey|SharedAccessSignature)\s*=\s*" + _VALUE),
    Rule("azure-key-literal", SECRETS, "literal that looks like an Azure account key (base64, 64 bytes)",
         r"(?<![A-Za-z0-9+/])(?P<value>[A-Za-z0-9+/]{86}==)", flags=0),
    Rule("password-env", SECRETS, "password or key passed as an environment variable",
         r"""(^|[\s"'-])(name:\s*|ENV\s+|export\s+|-e\s+)?["']?(?P<key>[A-Z0-9_]*(PASSWORD|PASSWD|PWD|SECRET|"""
         r"""ACCOUNT_KEY|PRIMARY_KEY|MASTER_KEY|CONNECTION_STRING|CONNSTR))["']?(\s*$|\s*[=:]\s*["']?""" + _VALUE + ")",
         flags=0),
    Rule("config-password", SECRETS, "password, secret or key in configuration",
         r"""^\s*["']?(?P<key>[\w.-]*(""" + _SECRET_WORD + r"""))["']?\s*[:=]\s*["']?""" + _VALUE,
         config_only=True),
)
# Masked in every excerpt even where no rule reports them (a token passed in code to a Vault client, a JWT): the
# excerpt of a finding on the same line must not carry them.
MASK_ONLY = (
    re.compile(r"(?P<value>\bhv[sbr]\.[A-Za-z0-9_-]{8,}|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)"),
    re.compile(r"""(?i)(""" + _SECRET_WORD + r""")["']?\s*[:=]\s*["']?""" + _VALUE),
)
# Keys that name a file, a path or a setting about the secret, not the secret itself.
NOT_A_SECRET_KEY = re.compile(r"(_|-|\.|\b)?(file|path|dir|env|name|id|ref|source|policy|auth|type|mode|length|"
                              r"encryption)$|_(FILE|PATH|DIR|NAME|ID|REF)$", re.IGNORECASE)


def is_config(path):
    """Whether key-value rules apply to ``path`` (by its suffix or name)."""
    base = os.path.basename(path)
    return base.lower().endswith(CONFIG_SUFFIXES) or bool(CONFIG_NAMES.match(base))


def _secret_spans(line):
    """Spans of ``line`` that hold a secret value (every rule's ``value`` group), placeholders included."""
    spans = []
    for regex in [rule.regex for rule in RULES] + list(MASK_ONLY):
        if "value" not in regex.groupindex:
            continue
        for match in regex.finditer(line):
            if match.group("value") is not None:
                spans.append(match.span("value"))
    return spans


def mask(line):
    """``line`` with every secret value replaced by ``********`` (placeholders kept: they are names), cut to 160."""
    out, last = [], 0
    for start, end in sorted(_secret_spans(line)):
        if start < last:
            continue
        value = line[start:end]
        out.append(line[last:start])
        out.append(value if PLACEHOLDER.match(value) else MASK)
        last = end
    out.append(line[last:])
    text = "".join(out).strip()
    return text if len(text) <= MAX_EXCERPT else text[:MAX_EXCERPT - 3] + "..."


def _finding(rule, match):
    """``(placeholder,)`` for a match that is a finding, ``None`` for a negative."""
    groups = rule.regex.groupindex
    value = match.group("value") if "value" in groups else None
    key = match.group("key") if "key" in groups else None
    if key and NOT_A_SECRET_KEY.search(key):
        return None
    if rule.rule in ("config-password", "connection-string-password", "libpq-password", "url-credentials",
                     "azure-account-key"):
        if value is None or NOT_A_SECRET.match(value.strip("'\"")):
            return None
    if rule.rule == "password-env" and value is not None and NOT_A_SECRET.match(value):
        return None
    return (bool(value and PLACEHOLDER.match(value)),)


def scan_text(text, path, config=None):
    """Findings in ``text`` (the content of ``path``): dicts ``path, line, rule, checklist, finds, excerpt,
    placeholder``, at most one per line and checklist item, in line order. ``config`` overrides :func:`is_config`."""
    config = is_config(path) if config is None else config
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        broken = set()  # one finding per line and checklist item: the first (most specific) rule that matches
        for rule in RULES:
            if (rule.config_only and not config) or rule.checklist in broken:
                continue
            match = rule.regex.search(line)
            if not match:
                continue
            verdict = _finding(rule, match)
            if verdict is None:
                continue
            broken.add(rule.checklist)
            findings.append(dict(path=path, line=number, rule=rule.rule, checklist=rule.checklist, finds=rule.finds,
                                 excerpt=mask(line), placeholder=verdict[0]))
    return findings


def excluded(relative, patterns):
    """Whether ``relative`` (a path under a scanned folder) or one of its parts matches a glob of ``patterns``."""
    parts = relative.replace(os.sep, "/").split("/")
    for pattern in patterns:
        if fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def walk(roots, excludes=DEFAULT_EXCLUDES, follow_symlinks=False):
    """``(path, skip_reason)`` for every file under ``roots`` (files or folders), sorted; ``skip_reason`` is
    ``None`` for a file to read. Symbolic links are skipped unless ``follow_symlinks``; a followed folder is entered
    once (loops)."""
    seen = set()
    for root in roots:
        if os.path.islink(root) and not follow_symlinks:
            yield root, "symbolic link (follow_symlinks is false)"
            continue
        if not os.path.exists(root):
            yield root, "does not exist"
            continue
        if not os.path.isdir(root):
            yield root, None  # read_text says why a FIFO, socket or device is not read
            continue
        for folder, dirs, files in os.walk(root, followlinks=follow_symlinks):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            kept = []
            for name, is_dir in [(d, True) for d in sorted(dirs)] + [(f, False) for f in sorted(files)]:
                full = os.path.join(folder, name)
                if excluded(os.path.relpath(full, root), excludes):
                    continue
                if os.path.islink(full) and not follow_symlinks:
                    yield full, "symbolic link (follow_symlinks is false)"
                elif is_dir:
                    kept.append(name)
                else:
                    yield full, None
            dirs[:] = kept


def read_text(path, max_bytes):
    """``(text, None)`` for a text file of at most ``max_bytes``, else ``(None, why it was skipped)``."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"  # a FIFO or a device would block the read or never end
        size = info.st_size
        if size > max_bytes:
            return None, "larger than max_file_size (%d > %d bytes)" % (size, max_bytes)
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except (IOError, OSError) as exc:
        return None, "unreadable (%s)" % exc.strerror
    if b"\0" in data[:BINARY_SNIFF]:
        return None, "binary"
    return data.decode("utf-8", "replace"), None


def ignored_by(finding, ignores):
    """The first entry of ``ignores`` (dicts ``rule``, ``path`` glob, ``reason``) that accepts ``finding``."""
    for entry in ignores:
        if entry.get("rule", "*") not in ("*", finding["rule"]):
            continue
        if fnmatch.fnmatch(finding["path"], entry.get("path") or "*"):
            return entry
    return None
