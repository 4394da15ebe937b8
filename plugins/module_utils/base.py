# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base every module of this collection uses: auth options, lazy clients, errors with remedies, and diff.

A module builds one :class:`MIModule`, reads the current state, computes :func:`differences` against the
desired state, writes only when there are differences and check mode is off, and calls :meth:`MIModule.exit`.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.errors import NoLogError

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import auth, diagnose
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.arm import ArmClients
from ansible_collections.csa_inabox.managed_identity.plugins.module_utils.values import shown

# Shown in check mode and diff for values Azure assigns when the change is applied (a new identity's ids).
KNOWN_AFTER_APPLY = "(known after apply)"

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NIL_GUID = "00000000-0000-0000-0000-000000000000"
# ARM's words for a resource group that does not exist (code ResourceGroupNotFound).
MISSING_GROUP = re.compile(r"Resource group '([^']*)' could not be found")

AZURE_ARGUMENT_SPEC = dict(
    auth_source=dict(type="str", default="auto", choices=list(auth.AUTH_SOURCES)),
    client_id=dict(type="str"),
    tenant_id=dict(type="str"),
    subscription_id=dict(type="str"),
    cloud_environment=dict(type="str"),
    cloud_endpoints=dict(type="dict"),
)


def differences(current, desired):
    """Keys of ``desired`` whose value differs from ``current``: ``{key: {"before": c, "after": d}}``.

    ``None`` in ``desired`` means "not managed" and is skipped; dicts compare recursively, lists as given.
    This is the one idempotence rule of the collection: a re-run whose result is empty writes nothing.
    """
    current = current or {}
    changes = {}
    for key, want in desired.items():
        if want is None:
            continue
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            nested = differences(have, want)
            if nested:
                changes[key] = {"before": dict((k, have.get(k)) for k in nested),
                                "after": dict((k, want[k]) for k in nested)}
        elif have != want:
            changes[key] = {"before": have, "after": want}
    return changes


def is_guid(value):
    return bool(value) and bool(GUID.fullmatch(str(value)))


def guid_problem(option, value, what="a GUID"):
    """Why ``value`` of ``option`` cannot be the id of an Entra principal, an application or a subscription (not a
    GUID, or the nil GUID, which nothing has), or ``None``. ``what`` says which id is expected."""
    if not is_guid(value):
        return "%s %s is not a GUID: give %s as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" % (option, shown(value), what)
    if str(value) == NIL_GUID:
        return "%s is the nil GUID, which no Entra principal has: give %s" % (option, what)
    return None


def argument_error(errors, msg):
    """The message of an argument spec failure that names its option. ansible-core reports a value that cannot be
    converted (a string where a list of dicts is expected) first through its no_log scan, in words without the option
    ("dictionary requested, could not parse JSON or key=value"); the error that names the option follows it."""
    named = [str(error) for error in (errors or []) if not isinstance(error, NoLogError)]
    if named and errors and isinstance(errors[0], NoLogError):
        return "; ".join(named)
    return msg


class _Module(AnsibleModule):
    """``AnsibleModule`` whose argument spec failures name the option (see :func:`argument_error`)."""

    def fail_json(self, msg, **kwargs):  # pylint: disable=arguments-differ
        if not getattr(self, "_mi_validated", False):
            result = getattr(self, "validation_result", None)
            msg = argument_error(result.errors if result is not None else None, msg)
        AnsibleModule.fail_json(self, msg=msg, **kwargs)


class MIModule:
    """An ``AnsibleModule`` with this collection's shared auth options and helpers.

    ``argument_spec`` is the module's own spec; ``azure=False`` leaves out the Azure auth options (Vault-only
    modules). Every module supports check mode.
    """

    def __init__(self, argument_spec, azure=True, **kwargs):
        spec = dict(argument_spec)
        if azure:
            clash = sorted(set(spec) & set(AZURE_ARGUMENT_SPEC))
            if clash:  # a module option must never silently become an auth option (or the reverse)
                raise ValueError("options %s clash with the shared Azure auth options" % ", ".join(clash))
            spec.update(AZURE_ARGUMENT_SPEC)
        self.module = _Module(argument_spec=spec, supports_check_mode=True, **kwargs)
        self.module._mi_validated = True  # pylint: disable=protected-access
        self.params = self.module.params
        self._cloud = None
        self._credential = None
        self._clients = None

    @property
    def check_mode(self):
        return self.module.check_mode

    @property
    def diff_mode(self):
        return self.module._diff  # pylint: disable=protected-access

    @property
    def cloud(self):
        if self._cloud is None:
            try:
                self._cloud = auth.resolve_cloud(self.params.get("cloud_environment"),
                                                 self.params.get("cloud_endpoints"))
            except auth.AuthConfigError as exc:
                self.module.fail_json(msg=str(exc))
        return self._cloud

    @property
    def credential(self):
        if self._credential is None:
            try:
                self._credential = auth.build_credential(self.cloud, self.params.get("auth_source") or "auto",
                                                         self.params.get("client_id"), self.params.get("tenant_id"))
            except ImportError as exc:
                self.module.fail_json(msg=missing_required_lib("azure-identity"), exception=str(exc))
            except auth.AuthConfigError as exc:
                self.module.fail_json(msg=str(exc))
        return self._credential

    @property
    def clients(self):
        """Lazily built ARM clients (see :class:`ArmClients`); fails the module without a subscription id."""
        if self._clients is None:
            subscription = auth.subscription_id_from(self.params.get("subscription_id"))
            if not subscription:
                self.module.fail_json(msg="subscription_id is required (option, or AZURE_SUBSCRIPTION_ID)")
            if not is_guid(subscription):
                self.module.fail_json(msg="subscription_id must be a GUID, got %r" % subscription)
            self._clients = ArmClients(self.credential, self.cloud, subscription)
        return self._clients

    @property
    def subscription_id(self):
        return self.clients._subscription_id  # pylint: disable=protected-access

    def token(self, service):
        """An access token (str) for ``service`` (``postgres``, ``sql``) from the module's credential.

        The token never leaves the module: it is used as a password and dropped.
        """
        try:
            return self.credential.get_token(self.cloud.scope(service)).token
        except Exception as exc:  # azure-identity raises several unrelated types; all end the module here
            self.fail("could not get a %s token with auth_source=%s" % (service, self.params.get("auth_source")), exc)

    def fail(self, msg, exc=None, **result):
        """Fail with ``msg`` (+ the exception's secret-free text, bounded in length) and, when known, a ``remedy``.

        A resource group or subscription ARM does not know is named by the option that holds it, first."""
        text = diagnose.error_text(exc) if exc is not None else ""
        full = "%s: %s" % (msg, text) if text else msg
        advice = diagnose.remedy("%s: %s" % (msg, diagnose.error_text(exc, limit=None)) if text else msg)
        if advice:
            result["remedy"] = advice
        self.module.fail_json(msg=self._named(text, full), **result)

    def _named(self, text, msg):
        """``msg``, led by the option that holds what ARM says does not exist: a resource group (``*resource_group``
        options) or the subscription (``subscription_id``)."""
        subscription = auth.subscription_id_from(self.params.get("subscription_id"))
        missing = MISSING_GROUP.search(text)
        options = sorted(key for key, value in self.params.items() if missing and key.endswith("resource_group")
                         and isinstance(value, str) and value.lower() == missing.group(1).lower())
        if options:
            return "%s %s does not exist in subscription %s: %s" % (
                " and ".join(options), shown(missing.group(1)), subscription, msg)
        if "SubscriptionNotFound" in text:
            return ("subscription_id %s is not a subscription the credential can see (SubscriptionNotFound): %s"
                    % (shown(subscription), msg))
        return msg

    def apply_steps(self, steps, target):
        """Run ``steps`` - ``(label, call)`` pairs, writes in the order given - unless in check mode.

        Returns the labels (the ``operations`` a module reports). A failing step fails the module with its label and
        the steps applied before it, so a partial change is never silent.
        """
        if not self.check_mode:
            for done, (label, call) in enumerate(steps):
                try:
                    call()
                except Exception as exc:  # any SDK/ARM failure ends the module, with its remedy
                    applied = ", ".join(step[0] for step in steps[:done]) or "nothing"
                    self.fail("%s on %s failed; applied before it: %s" % (label, target, applied), exc)
        return [label for label, _call in steps]

    def exit(self, changed, before=None, after=None, **result):
        """Exit with ``changed``, and the ``diff`` (before/after) when diff mode is on."""
        if self.diff_mode:
            result["diff"] = {"before": before if before is not None else {},
                              "after": after if after is not None else {}}
        self.module.exit_json(changed=changed, **result)
