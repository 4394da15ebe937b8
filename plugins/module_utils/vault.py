# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A HashiCorp Vault / OpenBao client whose token never passes through Ansible.

The token is read inside the module from ``VAULT_TOKEN`` or from a token file (``token_file``, default
``~/.vault-token``, what ``vault login`` / ``bao login`` write). Both servers share the HTTP API (hvac works unchanged).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import has_control, shown

try:
    from urllib.parse import quote, urlparse
except ImportError:  # Python 2 controllers are not supported, but sanity imports this file there
    from urllib import quote  # type: ignore  # pylint: disable=ungrouped-imports
    from urlparse import urlparse  # type: ignore

VAULT_ARGUMENT_SPEC = dict(
    url=dict(type="str", fallback=(lambda: os.environ.get("VAULT_ADDR"), [])),
    token_file=dict(type="path", default="~/.vault-token"),
    ca_cert=dict(type="path"),
    namespace=dict(type="str"),
)


class VaultConfigError(ValueError):
    """The Vault address or token cannot be found; the message says where they are looked for."""


def _checked(token, source):
    """``token``, unless it holds whitespace or control characters (two tokens, or not a token file at all): the
    HTTP library would echo such a header value in its error, so it is refused here, without showing it."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in token):
        raise VaultConfigError("%s does not hold one Vault token: it has whitespace or control characters inside "
                               "(the value is not shown)" % source)
    return token


def read_token(token_file):
    token = os.environ.get("VAULT_TOKEN")
    if token:
        return _checked(token.strip(), "VAULT_TOKEN")
    path = os.path.expanduser(token_file or "~/.vault-token")
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise VaultConfigError("no Vault token: set VAULT_TOKEN in the environment or write it to %s (%s)"
                               % (path, exc.strerror))
    if not token:
        raise VaultConfigError("the token file %s is empty" % path)
    return _checked(token, "the token file %s" % path)


def kv_version(hvac_client, mount):
    """The KV version (``"1"``, ``"2"``) of ``mount``, or ``None`` when it is no KV mount. Asked the way the ``vault kv``
    CLI does (``sys/internal/ui/mounts/<mount>``), which any token with a capability on the mount may read."""
    answer = hvac_client.adapter.get("/v1/sys/internal/ui/mounts/%s" % quote(mount))
    data = (answer.get("data") if isinstance(answer, dict) else None) or {}
    if data.get("type") not in ("kv", "generic"):
        return None
    return str((data.get("options") or {}).get("version") or "1")


def path_problem(field, value):
    """Why ``value`` cannot be a mount or secret path (empty, ``.``/``..`` or empty segments, control characters),
    or ``None``."""
    text = (value or "").strip("/")
    segments = text.split("/")
    if not text.strip() or any(not s.strip() or s in (".", "..") for s in segments):
        return "%s %s must be a path of non-empty segments, without '.' or '..'" % (field, shown(value))
    if has_control(text):
        return "%s %s has control characters" % (field, shown(value))
    return None


# Vault's names of roles and connections in a database secrets engine (framework.GenericNameRegex): word characters,
# '-' and '.', starting and ending with a word character.
NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
NAME_MAX = 255


def name_problem(field, value):
    """Why ``value`` cannot be the name of a database secrets engine role (or connection), or ``None``: Vault routes
    ``roles/<name>`` only for letters, digits, '_', '-' and '.', starting and ending with a letter, digit or '_'."""
    if not isinstance(value, str) or len(value) > NAME_MAX or not NAME.fullmatch(value):
        return ("%s %s is not a Vault role name: 1 to %d letters, digits, '_', '-' or '.', starting and ending with a "
                "letter, digit or '_'" % (field, shown(value), NAME_MAX))
    return None


def client(params, warn=None):
    """An authenticated ``hvac.Client`` for the module's ``url``/``token_file``/``ca_cert``/``namespace`` params."""
    import hvac  # pylint: disable=import-outside-toplevel

    url = params.get("url") or os.environ.get("VAULT_ADDR")
    if not url:
        raise VaultConfigError("url is required (option, or VAULT_ADDR)")
    if warn and url.startswith("http://") and urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        warn("Vault is reached over plain http at %s: its token crosses the network in clear text" % url)
    verify = params.get("ca_cert") or os.environ.get("VAULT_CACERT") or True
    return hvac.Client(url=url, token=read_token(params.get("token_file")), verify=verify,
                       namespace=params.get("namespace") or os.environ.get("VAULT_NAMESPACE"))
