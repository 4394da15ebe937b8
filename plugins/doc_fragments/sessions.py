# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The watch window of the *_sessions_info modules (evidence before anything is taken away)."""

    DOCUMENTATION = r"""
options:
  window_seconds:
    description:
      - Watch for this many seconds, looking every O(poll_seconds), and report every matching session seen.
        C(0) looks once.
    type: int
    default: 0
  poll_seconds:
    description: Seconds between looks while watching.
    type: int
    default: 2
"""
