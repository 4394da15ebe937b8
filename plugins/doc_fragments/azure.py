# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How every Azure-facing module of the collection authenticates, and to which cloud."""

    DOCUMENTATION = r"""
options:
  auth_source:
    description:
      - Which credential to use. No secret is ever passed as an option; secrets, when any, come from the
        environment, read by azure-identity.
      - C(auto) uses a service principal from C(AZURE_SECRET), C(AZURE_TENANT) and C(AZURE_CLIENT_ID) when they are
        set (the names AWX's Azure credential and azure.azcollection use), and otherwise azure-identity's
        C(DefaultAzureCredential) (environment, workload identity, managed identity, Azure CLI).
      - AWX's Azure credential with a username and password (C(AZURE_AD_USER)) is refused with C(auto), because
        user sign-in with a password is not supported.
      - C(managed_identity) uses the managed identity endpoint of the host the task runs on (IMDS on a VM).
      - C(environment), C(workload_identity) and C(cli) use that azure-identity credential alone.
    type: str
    default: auto
    choices: [auto, managed_identity, environment, workload_identity, cli]
  client_id:
    description:
      - Client id of the user-assigned managed identity (or the application of a workload identity) to
        authenticate as, when the host has several. Not a secret.
    type: str
  tenant_id:
    description:
      - Tenant id, when it cannot be taken from the environment (C(AZURE_TENANT_ID)).
    type: str
  subscription_id:
    description:
      - Subscription of the resources. Defaults to C(AZURE_SUBSCRIPTION_ID).
    type: str
  cloud_environment:
    description:
      - C(AzureCloud), C(AzureUSGovernment), C(AzureChinaCloud), or C(custom) with O(cloud_endpoints).
      - Defaults to C(AZURE_CLOUD_ENVIRONMENT), then C(AzureCloud).
    type: str
  cloud_endpoints:
    description:
      - Endpoints of a cloud that is not built in (C(cloud_environment=custom)), such as this collection's local lab.
      - Keys C(resource_manager) and C(authority_host) (https URLs, required), C(resource_manager_audience),
        C(sql_audience), C(postgres_audience) and C(aks_audience) (default to the public cloud's; AKS's is the
        Entra server application C(6dae42f8-4368-4678-94ff-3960e28e3630) that kubelogin also asks tokens for).
    type: dict
requirements:
  - azure-identity >= 1.19
notes:
  - Module defaults for all modules of the collection can be set once with the action group
    C(group/csa_inabox.managed_identity.azure).
"""
