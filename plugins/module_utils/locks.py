# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serialising writes to one Azure resource across the forks of a run on this control node.

Some Azure resources refuse concurrent writes instead of queueing them: a Cosmos DB account answers 412 "another
operation in progress" (azurerm#15842), a managed identity's federated credentials answer 409
``ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`` (pulumi-azure-native#4343). Ansible runs one
process per host, so applications sharing such a resource take turns through this lock; retries on the service's own
error remain for writers elsewhere (another control node, a pipeline, the portal).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import os
import tempfile
import time


class WriteLock:
    """An exclusive lock on one resource for this control node's processes: ``fcntl.flock`` on a file in the temp
    folder named after the resource id (compared case-insensitively, as ARM does).

    ``with WriteLock(resource_id, timeout):`` raises ``TimeoutError`` after ``timeout`` seconds. Subclasses set
    ``KIND`` so that lock files say what they guard.
    """

    KIND = "resource"

    def __init__(self, resource, timeout):
        digest = hashlib.sha256(resource.lower().encode("utf-8")).hexdigest()[:24]
        self.path = os.path.join(tempfile.gettempdir(), "csa-inabox-%s-%s.lock" % (self.KIND, digest))
        self.timeout = timeout
        self._handle = None

    def __enter__(self):
        import fcntl  # pylint: disable=import-outside-toplevel

        self._handle = open(self.path, "a")  # pylint: disable=consider-using-with
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    self._handle.close()
                    raise TimeoutError("another process held the write lock of %s for %s s" % (self.path, self.timeout))
                time.sleep(0.05)

    def __exit__(self, *exc_info):
        self._handle.close()  # closing releases the lock
        return False


def status_of(exc):
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)


def retry(call, retryable, timeout, on_retry=None, first_wait=1.0, max_wait=15.0, sleep=time.sleep,
          clock=time.monotonic):
    """``call()``'s result, repeating the call while it raises an exception that ``retryable(exc)`` accepts and
    ``timeout`` seconds have not passed, waiting ``first_wait`` seconds, doubling up to ``max_wait``, in between.
    ``on_retry(exc)`` is called before each wait. The last exception propagates."""
    deadline = clock() + timeout
    wait = first_wait
    while True:
        try:
            return call()
        except Exception as exc:  # the SDK's HttpResponseError family; anything else is not retryable
            if not retryable(exc) or clock() + wait > deadline:
                raise
            if on_retry is not None:
                on_retry(exc)
        sleep(wait)
        wait = min(wait * 2, max_wait)
