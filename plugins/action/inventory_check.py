# Copyright: contributors to csa_inabox.managed_identity
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for the ``inventory_check`` module: runs on the control node, reads the play's applications' variables
(only those the schema names) and checks them all at once. See ``plugins/plugin_utils/inventory.py``."""
from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.csa_inabox.managed_identity.plugins.plugin_utils import inventory


# The options of plugins/modules/inventory_check.py (its documentation).
ARGUMENT_SPEC = dict(hosts=dict(type="list", elements="str"))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        hosts = args.get("hosts")
        if hosts is None:
            hosts = task_vars.get("ansible_play_hosts_all") or []
        hostvars = task_vars["hostvars"]
        schema = inventory.load_schema()
        names = inventory.variable_names(schema)
        variables_by_host, unreadable = {}, []
        for host in hosts:
            if host not in hostvars:
                return dict(result, failed=True, msg="hosts: %s is not a host of the inventory"
                            % inventory.shown(host))
            view = hostvars[host]
            variables = {}
            for name in names:
                if name not in view:
                    continue
                try:
                    variables[name] = view[name]
                except AnsibleError as err:
                    # The message names the variable and the undefined name it refers to, never a value.
                    unreadable.append({"host": host, "path": "$.%s" % name,
                                       "message": "cannot be templated: %s" % err.message})
            variables_by_host[host] = variables
        known_hosts = set(hostvars.keys()) if hasattr(hostvars, "keys") else set(hostvars)
        try:
            checked = inventory.check(variables_by_host, known_hosts, schema, unreadable)
        except ImportError as err:
            return dict(result, failed=True, msg=str(err))
        result.update(changed=False, applications=checked["applications"], problems=checked["problems"])
        if checked["problems"]:
            result.update(failed=True, msg=inventory.format_problems(checked["problems"]))
        else:
            result.update(servers=checked["servers"], write_scopes=checked["write_scopes"],
                          msg="%d application(s) checked" % checked["applications"])
        return result
