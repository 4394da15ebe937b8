"""Every module's EXAMPLES are valid YAML tasks whose arguments the module's own argument spec accepts.

The spec is the one the module builds at run time (its own options plus the shared Azure/PostgreSQL/Vault options),
so an example that names an option the module does not have, misses a required one, or uses a wrong choice fails here.
"""
import importlib
import pathlib

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.csa_inabox.managed_identity.plugins.module_utils import base

MODULES = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[2] / "plugins" / "modules").glob("*.py"))
PREFIX = "csa_inabox.managed_identity."


def module_spec(name, monkeypatch):
    """Capture the argument spec the module passes to MIModule, without running it."""
    captured = {}

    class Stop(Exception):
        pass

    def fake_init(self, argument_spec, azure=True, **kwargs):
        spec = dict(argument_spec)
        if azure:
            spec.update(base.AZURE_ARGUMENT_SPEC)
        captured.update(spec=spec, kwargs=kwargs)
        raise Stop

    monkeypatch.setattr(base.MIModule, "__init__", fake_init)
    module = importlib.import_module("ansible_collections.csa_inabox.managed_identity.plugins.modules." + name)
    if not hasattr(module, "main"):  # a module run by its action plugin (controller side): the plugin's spec
        action = importlib.import_module("ansible_collections.csa_inabox.managed_identity.plugins.action." + name)
        return module, {"spec": action.ARGUMENT_SPEC, "kwargs": {}}
    with pytest.raises(Stop):
        module.main()
    return module, captured


@pytest.mark.parametrize("name", MODULES)
def test_examples_are_accepted_by_the_argument_spec(name, monkeypatch):
    module, captured = module_spec(name, monkeypatch)
    tasks = yaml.safe_load(module.EXAMPLES)
    used = [t for t in tasks if PREFIX + name in t]
    assert used, "EXAMPLES never calls %s" % name
    rules = dict((k, v) for k, v in captured["kwargs"].items() if k in ("required_if", "mutually_exclusive"))
    validator = ArgumentSpecValidator(captured["spec"], **rules)
    for task in used:
        result = validator.validate(task[PREFIX + name] or {})
        assert not result.error_messages, "%s example %r: %s" % (name, task.get("name"), result.error_messages)


@pytest.mark.parametrize("name", MODULES)
def test_documentation_lists_exactly_the_module_options(name, monkeypatch):
    module, captured = module_spec(name, monkeypatch)
    documented = set(yaml.safe_load(module.DOCUMENTATION).get("options", {}))
    fragments = yaml.safe_load(module.DOCUMENTATION).get("extends_documentation_fragment", [])
    for fragment in fragments:  # csa_inabox.managed_identity.<file>[.<variable>]
        parts = fragment[len(PREFIX):].split(".")
        doc = importlib.import_module("ansible_collections.csa_inabox.managed_identity.plugins.doc_fragments."
                                      + parts[0])
        text = getattr(doc.ModuleDocFragment, parts[1].upper() if len(parts) > 1 else "DOCUMENTATION")
        documented |= set(yaml.safe_load(text).get("options", {}))
    assert documented == set(captured["spec"])
