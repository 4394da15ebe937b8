# -*- coding: utf-8 -*-
# Copyright: csa-inabox core team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks many options share (control characters, whole numbers in a range) and how an error message repeats the
value it refuses.

A message names the option and says what is expected; it repeats the bad value only in a bounded form (:func:`shown`),
so that a 10,000-character value, a value with line breaks or one with invisible characters (right-to-left marks,
zero-width spaces) is never printed as it is.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

SHOWN_MAX = 64  # characters of a bad value a message repeats; the rest is counted, not printed


def shown(value):
    """How a message repeats ``value``: its ``repr`` (control and invisible characters escaped) when short; else the
    start of it and its length."""
    if isinstance(value, str) and len(value) > SHOWN_MAX:
        return "%r... (%d characters)" % (value[:SHOWN_MAX - 16], len(value))
    text = repr(value)
    if len(text) > 2 * SHOWN_MAX:
        return "%s... (a %s of %d characters as text)" % (text[:SHOWN_MAX - 16], type(value).__name__, len(text))
    return text


def clipped(text, limit=200):
    """``text`` as it is when it is at most ``limit`` characters without control characters (a path or target built
    from options), else :func:`shown`."""
    if len(text) <= limit and not has_control(text):
        return text
    return shown(text)


def has_control(value):
    """True when ``value`` (a str) holds a control character: C0 (line breaks, NUL), DEL or C1."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value or "")


def range_problem(option, value, low, high, unit=""):
    """Why the whole number ``value`` of ``option`` is outside ``low`` .. ``high``, or ``None``."""
    if not low <= value <= high:
        return "%s must be between %d and %d%s, got %s" % (option, low, high, unit, shown(value))
    return None
