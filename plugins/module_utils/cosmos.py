# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Azure Cosmos DB for NoSQL: data-plane role definitions, assignment scopes, and writes that wait their turn.

Facts (AZURE_FACTS.md "Cosmos SQL role assignment", ARM_NOTES.md; REST spec
``specification/cosmos-db/resource-manager/Microsoft.DocumentDB/.../rbac.json``):

* ``roleDefinitionId`` and ``scope`` of an assignment are **fully qualified**: the account id, then optionally
  ``/dbs/{database}`` and ``/colls/{container}``. The Azure CLI takes ``/dbs/appdb`` and prepends the account id;
  given a full id it doubles it (azure-cli#31422). :func:`normalise_scope` accepts both forms and returns one.
* Built-in roles: ``00000000-0000-0000-0000-000000000001`` Cosmos DB Built-in Data Reader and ``...0002`` Cosmos DB
  Built-in Data Contributor. They are not Azure RBAC roles (``Microsoft.Authorization``): an Azure "Reader" or
  "Contributor" role gives no data access.
* Writes on one account collide (412 "another operation in progress", azurerm#15842): :class:`AccountLock` serialises
  the control node's own writes, :func:`retry` absorbs the others'.
* A fresh identity may not be replicated yet: "principal ID [...] was not found" is retried for a while
  (azurerm#28070).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import uuid

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import as_dict, resource_group_problem, resource_name_problem
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.locks import (  # noqa: F401 pylint: disable=unused-import
    WriteLock, retry, status_of)
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

BUILT_IN_ROLES = {
    "00000000-0000-0000-0000-000000000001": "Cosmos DB Built-in Data Reader",
    "00000000-0000-0000-0000-000000000002": "Cosmos DB Built-in Data Contributor",
}
# Names an operator may write for the built-in roles (compared case-insensitively).
ROLE_ALIASES = {
    "cosmos db built-in data reader": "00000000-0000-0000-0000-000000000001",
    "data reader": "00000000-0000-0000-0000-000000000001",
    "cosmos db built-in data contributor": "00000000-0000-0000-0000-000000000002",
    "data contributor": "00000000-0000-0000-0000-000000000002",
}

# Every assignment name this collection makes is uuid5(NAMESPACE, "<account id>|<principal>|<role>|<scope>").
ASSIGNMENT_NAMESPACE = uuid.UUID("6f1d4b3e-2a9c-5e7f-8b0d-c4a2e6f8b1d3")

# Database and container ids: 1 to 255 characters, none of / \ ? # and no trailing space (Cosmos DB resource ids).
_NAME = r"[^/\\?#]{1,255}"
_RELATIVE_SCOPE = re.compile(r"(?:/dbs/(?P<database>%s)(?:/colls/(?P<container>%s))?)?" % (_NAME, _NAME))
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

# Where each built-in cloud's Cosmos DB accounts live: the SDK asks for a token for https://<endpoint host>/.default.
ENDPOINT_SUFFIXES = {
    "AzureCloud": ".documents.azure.com",
    "AzureUSGovernment": ".documents.azure.us",
    "AzureChinaCloud": ".documents.azure.cn",
}


def name_problem(name):
    """Why ``name`` cannot be a Cosmos DB database or container id, or ``None``: 1 to 255 characters, none of
    ``/ \\ ? #`` or a control character, no trailing space, not ``.`` or ``..``."""
    if not name or len(name) > 255:
        return "must be 1 to 255 characters"
    if any(c in "/\\?#" or ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not contain / \\ ? # or control characters"
    if name != name.rstrip() or name in (".", ".."):
        return "must not end with a space or be . or .."
    return None


# The options of the doc fragment csa_inabox.managed_identity.cosmos.
ACCOUNT_ARGUMENT_SPEC = dict(
    account_name=dict(type="str", required=True),
    resource_group=dict(type="str", required=True),
)


def account_problem(params):
    """Why ``account_name`` or ``resource_group`` cannot name an account, or ``None``."""
    return resource_name_problem("account_name", params["account_name"]) or \
        resource_group_problem("resource_group", params["resource_group"])


def read_account(mod):
    """The module's account (``account_name`` in ``resource_group``) as ARM returns it, in REST shape; fails the
    module, with a remedy, when it cannot be read (or its names cannot name one)."""
    from azure.core.exceptions import ResourceNotFoundError  # pylint: disable=import-outside-toplevel

    problem = account_problem(mod.params)
    if problem:
        mod.fail(problem)
    rg, name = mod.params["resource_group"], mod.params["account_name"]
    try:
        return as_dict(mod.clients.cosmos.database_accounts.get(rg, name))
    except ResourceNotFoundError as exc:
        mod.fail("Cosmos DB account %s was not found in resource group %s" % (name, rg), exc)
    except Exception as exc:  # the SDK's HttpResponseError family
        mod.fail("could not read Cosmos DB account %s" % name, exc)


class ScopeError(ValueError):
    """A scope or role definition that cannot name something in this account; the message says what to write."""


def account_id(subscription_id, resource_group, account_name):
    """The account's ARM id, ``/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/
    databaseAccounts/{a}``."""
    return "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.DocumentDB/databaseAccounts/%s" % (
        subscription_id, resource_group, account_name)


def normalise_scope(scope, account):
    """``(full scope, relative part)`` for ``scope`` given relative (``/``, ``/dbs/appdb``,
    ``/dbs/appdb/colls/items``) or fully qualified (``<account id>[/dbs/...]``), on the account whose id is
    ``account``.

    The account part is returned as ``account`` spells it (ARM compares it case-insensitively); database and
    container names keep their case (Cosmos DB compares them exactly). A trailing ``/`` is dropped.
    Raises :class:`ScopeError` for another account's id, a malformed path or a name Cosmos DB cannot have.
    """
    text = (scope or "").strip()
    if text in ("", "/"):
        return account, ""
    if text.lower().startswith("/subscriptions/"):
        if not text.lower().startswith(account.lower()) or text[len(account):len(account) + 1] not in ("", "/"):
            raise ScopeError("scope %s is not in Cosmos DB account %s: give it relative (/dbs/<database>[/colls/"
                             "<container>]) or as this account's id followed by that" % (shown(scope), account))
        relative = text[len(account):]
    elif text.startswith("/dbs/"):
        relative = text
    else:
        raise ScopeError("scope %s is neither relative (/, /dbs/<database>, /dbs/<database>/colls/<container>) nor "
                         "a fully qualified scope of account %s" % (shown(scope), account))
    relative = relative.rstrip("/") if relative != "/" else ""
    match = _RELATIVE_SCOPE.fullmatch(relative)
    if match is None or any(name is not None and name_problem(name) for name in match.groups()):
        raise ScopeError("scope %s: after the account, only /dbs/<database> and then /colls/<container> may follow; "
                         "names are 1 to 255 characters without / \\ ? #, control characters or a trailing space, and "
                         "not . or .." % (shown(scope),))
    return account + relative, relative


def role_definition_guid(role, account):
    """The role definition's GUID (lower case) for ``role`` given as a built-in name (``Data Reader``,
    ``Cosmos DB Built-in Data Contributor``, any case), a GUID, or this account's full
    ``.../sqlRoleDefinitions/{guid}`` id. Raises :class:`ScopeError` naming the accepted forms."""
    text = (role or "").strip()
    alias = ROLE_ALIASES.get(text.lower())
    if alias:
        return alias
    if re.fullmatch(_GUID, text):
        return text.lower()
    found = re.fullmatch(re.escape(account) + r"/sqlRoleDefinitions/(%s)" % _GUID, text, re.IGNORECASE)
    if found:
        return found.group(1).lower()
    if text.lower().startswith("/subscriptions/"):
        raise ScopeError("role %s is not a role definition of Cosmos DB account %s (expected %s/sqlRoleDefinitions/"
                         "<guid>)" % (shown(role), account, account))
    raise ScopeError("role %s is unknown: use Data Reader, Data Contributor (or their full names %s), a role "
                     "definition GUID, or a full role definition id" % (shown(role), " / ".join(sorted(BUILT_IN_ROLES.values()))))


def role_definition_id(account, guid):
    return "%s/sqlRoleDefinitions/%s" % (account, guid)


def assignment_name(account, principal_id, role_guid, relative_scope):
    """The deterministic assignment name (a GUID) of (principal, role, scope) on ``account``: a re-run, or another
    control node, computes the same name, so a lost answer never leaves a duplicate behind."""
    key = "|".join((account.lower(), principal_id.lower(), role_guid.lower(), relative_scope))
    return str(uuid.uuid5(ASSIGNMENT_NAMESPACE, key))


def describe(assignment, account):
    """An SDK or REST role assignment as ``{name, id, principal_id, role_definition_id, role, scope}``, with the
    scope normalised (an unparsable one is kept as Azure returned it)."""
    props = assignment.get("properties") or assignment
    role_id = props.get("roleDefinitionId") or ""
    guid = role_id.rsplit("/", 1)[-1].lower()
    try:
        scope = normalise_scope(props.get("scope"), account)[0]
    except ScopeError:
        scope = props.get("scope")
    return {"name": assignment.get("name"), "id": assignment.get("id"),
            "principal_id": (props.get("principalId") or "").lower(), "role_definition_id": role_id,
            "role": BUILT_IN_ROLES.get(guid, guid), "scope": scope}


def equivalent(assignments, principal_id, role_guid, full_scope):
    """The assignments (:func:`describe` shape, so scopes normalised on the same account id) that give
    ``principal_id`` the role ``role_guid`` on exactly ``full_scope``, whatever their names (other tools name them
    with random GUIDs)."""
    return [a for a in assignments
            if a["principal_id"] == principal_id.lower()
            and a["role_definition_id"].rsplit("/", 1)[-1].lower() == role_guid
            and a["scope"] == full_scope]


class AccountLock(WriteLock):
    """:class:`WriteLock` on one Cosmos DB account (its resource id): ``with AccountLock(id, timeout):``."""

    KIND = "cosmos"


def is_busy(exc):
    """Another write on the account is in progress: 412 / 409 / AnotherOperationInProgress."""
    code = getattr(getattr(exc, "error", None), "code", None) or ""
    return status_of(exc) in (409, 412) or "AnotherOperationInProgress" in code or "PreconditionFailed" in code


def is_principal_not_replicated(exc):
    """Cosmos DB does not see the principal yet (a fresh identity: Entra replication takes seconds to minutes)."""
    return status_of(exc) == 400 and bool(re.search(r"principal ID \[[^\]]*\] was not found", str(exc)))
