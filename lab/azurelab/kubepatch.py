"""Patch and selector semantics of the Kubernetes API server, for the lab's Kubernetes double (:mod:`azurelab.kube`).

* :func:`merge_patch`: JSON Merge Patch (RFC 7386, ``application/merge-patch+json``): objects merge, ``null`` deletes
  a key, anything else (lists included) replaces.
* :func:`json_patch`: JSON Patch (RFC 6902, ``application/json-patch+json``): ``add``, ``remove``, ``replace``,
  ``move``, ``copy``, ``test`` with JSON Pointers (RFC 6901, ``-`` appends to a list).
* :func:`strategic_merge_patch`: ``application/strategic-merge-patch+json`` for the built-in types the double serves.
  As merge patch, except the lists Kubernetes declares ``patchStrategy: merge`` (see :data:`MERGE_KEYS`): elements
  are matched by their merge key and merged, new ones appended; an element ``{"<key>": ..., "$patch": "delete"}``
  removes the match; a map or list element ``{"$patch": "replace"}`` replaces instead of merging; ``{"$patch":
  "delete"}`` as a map deletes it; ``$deleteFromPrimitiveList/<field>`` removes values from a primitive merge list
  (``finalizers``). Source: https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/
  strategic-merge-patch.md and the ``patchMergeKey`` tags of k8s.io/api core/v1, apps/v1, batch/v1.
* :func:`parse_label_selector` / :func:`parse_field_selector`: the ``labelSelector`` / ``fieldSelector`` query
  grammars (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``, ``!a``; fields: ``=``, ``==``,
  ``!=`` on dotted paths). Source: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/

Errors raise :class:`PatchError` (``status`` 400 for a malformed patch, 422 for a ``test`` that fails or a path that
does not exist, like the API server).

Not emulated: ``$setElementOrder`` and ``$retainKeys`` directives (accepted and dropped: order is original elements
first, then new ones), merge keys of types the double does not serve, set-based selector ``exists`` on fields.
"""
from __future__ import annotations

import copy
import re

# Field name -> merge key, for the lists with patchStrategy "merge" in the types served (Pod spec, containers,
# object metadata, conditions). A field listed with None is a primitive list merged as a set.
MERGE_KEYS: dict[str, str | None] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath", "ports": "containerPort",
    "imagePullSecrets": "name", "hostAliases": "ip", "ownerReferences": "uid", "conditions": "type",
    "finalizers": None, "topologySpreadConstraints": "topologyKey", "resourceClaims": "name",
}
_DIRECTIVE = "$patch"


class PatchError(Exception):
    """A patch that cannot be applied; ``status`` is the HTTP status the API server answers (400 or 422)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def merge_patch(target, patch):
    """RFC 7386: the patched copy of ``target`` (neither argument is modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON Pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(document, parts: list[str], path: str):
    node = document
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path!r}", 422)
    return node


def _index(container: list, part: str, path: str, adding: bool) -> int:
    if adding and part == "-":
        return len(container)
    if not part.isdigit() or int(part) > len(container) - (0 if adding else 1):
        raise PatchError(f"doc is missing path: {path!r}: index out of range", 422)
    return int(part)


def _add(document, path: str, value):
    parts = _pointer(path)
    if not parts:
        return value
    parent = _walk(document, parts[:-1], path)
    if isinstance(parent, dict):
        parent[parts[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, parts[-1], path, True), value)
    else:
        raise PatchError(f"doc is missing path: {path!r}", 422)
    return document


def _remove(document, path: str):
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _walk(document, parts[:-1], path)
    if isinstance(parent, dict) and parts[-1] in parent:
        return parent.pop(parts[-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, parts[-1], path, False))
    raise PatchError(f"doc is missing path: {path!r}", 422)


def json_patch(target, operations) -> dict:
    """RFC 6902: the patched copy of ``target``; ``operations`` is the decoded list of operation objects."""
    if not isinstance(operations, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "path" not in operation:
            raise PatchError("invalid JSON Patch operation (an object with op and path)")
        op, path = operation.get("op"), operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"missing value for {op} at {path!r}")
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            _remove(document, path)
        elif op == "replace":
            _remove(document, path)
            document = _add(document, path, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            source = operation.get("from")
            if source is None:
                raise PatchError(f"missing from for {op} at {path!r}")
            if op == "move":
                value = _remove(document, source)
            else:
                value = copy.deepcopy(_walk(document, _pointer(source), source))
            document = _add(document, path, value)
        elif op == "test":
            if _walk(document, _pointer(path), path) != operation["value"]:
                raise PatchError(f"testing value {path} failed: test failed", 422)
        else:
            raise PatchError(f"Unexpected kind: {op}")
    return document


def _strip_directives(value):
    """A patch value as it lands in the object when there is nothing to merge it with."""
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if k != _DIRECTIVE and not k.startswith(("$setElementOrder/", "$retainKeys", "$deleteFromPrimitiveList/"))
                and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and v.get(_DIRECTIVE))]
    return copy.deepcopy(value)


def _merge_list(original: list, patch: list, key: str | None, field: str) -> list:
    if any(isinstance(item, dict) and item.get(_DIRECTIVE) == "replace" for item in patch):
        return [_strip_directives(item) for item in patch if not (isinstance(item, dict) and _DIRECTIVE in item)]
    if key is None:  # a primitive list merged as a set
        return list(original) + [item for item in patch if item not in original]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key} (in {field})")
        match = next((i for i, existing in enumerate(result)
                      if isinstance(existing, dict) and existing.get(key) == item[key]), None)
        if item.get(_DIRECTIVE) == "delete":
            if match is not None:
                result.pop(match)
        elif match is None:
            result.append(_strip_directives(item))
        else:
            result[match] = _strategic(result[match], item)
    return result


def _strategic(original, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get(_DIRECTIVE)
    if directive == "replace":
        return _strip_directives(patch)
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive!r}" if directive != "delete"
                         else "$patch: delete is only valid on a map inside a field")
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for name, value in patch.items():
        if name.startswith("$deleteFromPrimitiveList/"):
            field = name.split("/", 1)[1]
            result[field] = [item for item in result.get(field, []) if item not in (value or [])]
    for name, value in patch.items():
        if name == _DIRECTIVE or name.startswith("$"):
            continue
        if value is None:
            result.pop(name, None)
        elif isinstance(value, dict) and value.get(_DIRECTIVE) == "delete":
            result.pop(name, None)
        elif isinstance(value, list) and name in MERGE_KEYS and isinstance(result.get(name), list):
            result[name] = _merge_list(result[name], value, MERGE_KEYS[name], name)
        elif isinstance(value, dict):
            result[name] = _strategic(result.get(name), value)
        else:
            result[name] = _strip_directives(value)
    return result


def strategic_merge_patch(target: dict, patch) -> dict:
    """The patched copy of ``target`` (a served built-in object), by the strategic merge rules above."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    return _strategic(target, patch)


_LABEL_TERM = re.compile(r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
                         r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [term for term in terms + [current] if term.strip()]


def parse_label_selector(selector: str):
    """``labelSelector`` -> a predicate over a labels dict; raises :class:`PatchError` (400) when it does not parse."""
    checks = []
    for term in _split_terms(selector or ""):
        match = _LABEL_TERM.match(term)
        if not match or (match["neg"] and (match["op"] or match["setop"])):
            raise PatchError(f"unable to parse requirement: {term.strip()!r}")
        key, op = match["key"], match["op"] or match["setop"]
        if match["neg"]:
            checks.append(lambda labels, k=key: k not in labels)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=match["value"]: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=match["value"]: labels.get(k) != v)
        elif op in ("in", "notin"):
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels or {}) for check in checks)


def parse_field_selector(selector: str):
    """``fieldSelector`` -> a predicate over an object (``metadata.name=x``, ``status.phase!=Running``...)."""
    checks = []
    for term in _split_terms(selector or ""):
        match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise PatchError(f"invalid selector: {term.strip()!r}; can't understand")
        path, op, value = match.groups()

        def field(obj, parts=path.split(".")):
            for part in parts:
                obj = obj.get(part) if isinstance(obj, dict) else None
            return "" if obj is None else str(obj)
        checks.append((lambda obj, f=field, v=value: f(obj) == v) if op != "!=" else
                      (lambda obj, f=field, v=value: f(obj) != v))
    return lambda obj: all(check(obj) for check in checks)
