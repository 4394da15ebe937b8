# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """How a module reaches a Kubernetes API server: an AKS cluster through ARM and Entra, or a kubeconfig."""

    DOCUMENTATION = r"""
options:
  cluster_name:
    description:
      - Name of the AKS cluster. The module asks ARM for the cluster's user kubeconfig (C(listClusterUserCredential)),
        takes the API server URL and CA from it, and signs in with its own credential, with a token for the AKS
        Entra server application (what kubelogin does). Nothing secret is stored or passed.
      - Needs a cluster with Entra ID integration, and a credential allowed to do what the module does (with Azure
        RBAC for Kubernetes, for example the Azure Kubernetes Service RBAC Writer role on the namespace).
      - Mutually exclusive with O(kubeconfig).
    type: str
  cluster_resource_group:
    description: Resource group of the AKS cluster. Required with O(cluster_name).
    type: str
  kubeconfig:
    description:
      - Path of a kubeconfig file, for a cluster reached otherwise (another distribution, a local-accounts AKS).
        Whatever credential it holds stays in the file; it is never read into a result.
    type: path
  context:
    description: Context of O(kubeconfig) to use (default, its current context).
    type: str
requirements:
  - kubernetes >= 29 (the Python client)
  - azure-mgmt-containerservice >= 30 (with O(cluster_name))
"""
