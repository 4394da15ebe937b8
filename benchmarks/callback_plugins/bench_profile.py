# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A callback for ``make bench`` only (not part of the collection): where a playbook run's time goes, per task.

Enabled by benchmarks/fleet.py with ``ANSIBLE_CALLBACK_PLUGINS=benchmarks/callback_plugins`` and
``ANSIBLE_CALLBACKS_ENABLED=bench_profile``; writes ``BENCH_PROFILE_OUT`` (JSON) at the end of the run:
``{"<role> : <task name>": {"executions", "changed", "failed", "skipped", "wall_s"}}``. An execution is a task run on
one host (or one loop item), whatever its module; ``wall_s`` is the time from the task's start to the next task's
start, over all its hosts (they run in parallel up to ``forks``). Task names and counts only: no results are kept.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: bench_profile
type: aggregate
short_description: per-task execution counts and wall time, for make bench
description: Writes a JSON file named by BENCH_PROFILE_OUT at the end of the run.
requirements: [enabled in ANSIBLE_CALLBACKS_ENABLED]
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._tasks = {}
        self._current = None
        self._started = None

    def _entry(self):
        return self._tasks.setdefault(self._current, {"executions": 0, "changed": 0, "failed": 0, "skipped": 0,
                                                      "wall_s": 0.0})

    def _close(self):
        if self._current is not None:
            self._entry()["wall_s"] += time.monotonic() - self._started

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = task.get_name()
        self._started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _count(self, result, key=None):
        entry = self._entry()
        entry["executions" if key != "skipped" else "skipped"] += 1
        if key == "failed":
            entry["failed"] += 1
        if result._result.get("changed"):
            entry["changed"] += 1

    def v2_runner_on_ok(self, result):
        if not result._result.get("results"):  # a loop's items were counted one by one
            self._count(result)

    def v2_runner_item_on_ok(self, result):
        self._count(result)

    def v2_runner_item_on_failed(self, result):
        self._count(result, "failed")

    def v2_runner_item_on_skipped(self, result):
        self._count(result, "skipped")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not result._result.get("results"):
            self._count(result, "failed")

    def v2_runner_on_skipped(self, result):
        if not result._result.get("results"):
            self._count(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._count(result, "failed")

    def v2_playbook_on_stats(self, stats):
        self._close()
        self._current = None
        target = os.environ.get("BENCH_PROFILE_OUT")
        if target:
            for entry in self._tasks.values():
                entry["wall_s"] = round(entry["wall_s"], 2)
            with open(target, "w") as out:
                json.dump(self._tasks, out, indent=1, sort_keys=True)
