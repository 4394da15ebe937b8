# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which password users of a database server the inventory accounts for, before passwords are switched off.

Cutover locks out every user that signs in with a password. The ones the inventory knows (the Vault-issued users of
the applications being migrated, Vault's own connection user, users listed by the operator) are expected to go; any
other (a DBA's, a BI tool's, an ETL job's, a backup tool's) keeps its server out of cutover until it is listed.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import range_problem

# Roles Azure Database for PostgreSQL flexible server keeps for itself (it manages them; nobody signs in as them with a
# password of the customer's): https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-create-users
AZURE_POSTGRES_ROLES = ("azuresu", "azure_pg_admin", "azure_superuser", "replication")


def is_azure_postgres_role(name):
    """True for Azure's own roles and PostgreSQL's predefined ``pg_*`` roles."""
    return name in AZURE_POSTGRES_ROLES or name.startswith("pg_")


WINDOW_MAX = 86400  # the sessions modules watch for at most a day


def window_problem(params):
    """What is wrong with the watch window of the ``*_sessions_info`` modules (``window_seconds``, ``poll_seconds``),
    or ``None``: a window beyond a day would keep the task (and the run) waiting for it."""
    return range_problem("window_seconds", params["window_seconds"], 0, WINDOW_MAX, " seconds") or \
        range_problem("poll_seconds", params["poll_seconds"], 1, 3600, " seconds")


def bad_patterns(patterns):
    """The ``(pattern, error)`` pairs of ``patterns`` that are not valid Python regular expressions."""
    problems = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append((pattern, str(exc)))
    return problems


def classify(names, known_users=(), known_user_regex=(), accepted_users=()):
    """Split password users into known and unknown.

    ``names``: user names; ``known_users``: exact names the inventory accounts for; ``known_user_regex``: patterns
    searched in the name (``re.search``; Vault's dynamic users are ``v-<display name>-<role, 8 chars>-...``);
    ``accepted_users``: names the operator accepted to lock out (``mi_cutover_accept_password_users``).
    Returns a list of ``{name, known, reason}`` in name order; ``reason`` is ``listed``, ``pattern <p>``, ``accepted``
    or ``unknown``.
    """
    compiled = [(p, re.compile(p)) for p in known_user_regex]
    out = []
    for name in sorted(set(names)):
        if name in known_users:
            reason = "listed"
        else:
            reason = next(("pattern %s" % p for p, regex in compiled if regex.search(name)), None)
            if reason is None:
                reason = "accepted" if name in accepted_users else "unknown"
        out.append({"name": name, "known": reason != "unknown", "reason": reason})
    return out
