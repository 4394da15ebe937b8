# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Check mode and diff support, the same for every module that changes something."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Reads everything and returns what would change, without writing anything.
    support: full
  diff_mode:
    description: Returns the state before and after the change in RV(ignore:diff).
    support: full
"""

    # For the modules that only read.
    READ_ONLY = r"""
attributes:
  check_mode:
    description: Runs as usual, because the module only reads.
    support: full
  diff_mode:
    description: Nothing changes, so there is nothing to diff.
    support: none
"""
