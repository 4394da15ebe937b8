"""Gives azure-cli-core's ``azure.cli.core.cloud`` the ``get_cloud_from_metadata_endpoint`` that azure.azcollection 3.12.0
calls for a ``cloud_environment`` given as a URL (``azure_rm_common.py``), and that azure-cli-core 2.75.0, the version
the collection's own requirements.txt pins, no longer has: without it every azcollection module fails against any
custom cloud ("module 'azure.cli.core.cloud' has no attribute 'get_cloud_from_metadata_endpoint'").

Installed into benchmarks/.venv-azcollection only (with a ``.pth`` line) by baseline_azcollection.py. It reads
``GET {url}/metadata/endpoints?api-version=2022-09-01`` (the request azure-cli makes for ``az cloud register
--endpoint-resource-manager``) and maps it with azure-cli-core's own ``_arm_to_cli_mapper``. The function is added
when ``azure.cli.core.cloud`` is first imported, so processes that never import it pay nothing.
"""
import importlib.abc
import sys

TARGET = "azure.cli.core.cloud"


def get_cloud_from_metadata_endpoint(arm_endpoint, name=None, session=None):
    import requests

    module = sys.modules[TARGET]
    answer = (session or requests).get(arm_endpoint.rstrip("/") + "/metadata/endpoints?api-version=2022-09-01",
                                       timeout=30)
    answer.raise_for_status()
    metadata = answer.json()
    if name:
        metadata["name"] = name
    return module._arm_to_cli_mapper(metadata)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            if not hasattr(module, "get_cloud_from_metadata_endpoint"):
                module.get_cloud_from_metadata_endpoint = get_cloud_from_metadata_endpoint

        spec.loader.exec_module = patched
        return spec


def install():
    import importlib.util  # noqa: F401  (used by _Finder)

    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
