"""The Kubernetes API server of the lab's first AKS cluster (HTTPS, ``https://localhost:<Ports.kube>``): enough of the
API for the ``kubernetes`` Python client and kubernetes.core's dynamic client, with Jobs that really run.

Authentication, as an AKS cluster with Entra ID integration: ``Authorization: Bearer <Entra access token>`` from the
lab issuer for the AKS server application (``topology["audiences"]["aks"]``, what kubelogin asks for), checked with
:meth:`azurelab.tokens.Issuer.verify`; anything else (no token, a bad, expired or foreign-audience token) is 401 with a
``Status`` ``Unauthorized``, except anonymous ``/version``, ``/healthz``, ``/livez``, ``/readyz`` (public info).
Authorization: any principal of the directory may do anything (Azure RBAC for Kubernetes is not emulated).

Lab fault switch (no auth, loopback only, like the ARM double's ``/lab`` API): ``POST /lab/concurrent-writes``
``{"path", "labels", "count"?}`` - the next PUTs of that object path find another writer added those labels just
before them, so a PUT of what was read earlier is a stale 409 ``Conflict``, as with a real concurrent controller.

Discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/{apps,batch}``, ``/apis/apps/v1``,
``/apis/batch/v1``. Objects (in memory, seeded at every start from the cluster's ``manifests``, YAML relative to
``lab/``; ``default``, ``kube-system``, ``kube-public`` and ``kube-node-lease`` namespaces exist, each namespace has a
``default`` ServiceAccount):

* Namespaces (create, get, list), ServiceAccounts, Deployments and Jobs (create, get, list, replace, patch, delete),
  Pods (get, list, delete, ``GET .../pods/{name}/log`` with ``tailLines`` / ``limitBytes``), all-namespace lists
  (``/api/v1/pods``...), ``GET .../{deployments,jobs}/{name}/status``.
* ``labelSelector`` and ``fieldSelector`` on lists; ``dryRun=All`` on every write (validated, answered, not stored;
  a dry-run create gets no ``resourceVersion``); replace and patch refuse a stale ``metadata.resourceVersion`` with 409
  ``Conflict``; patch types ``application/merge-patch+json``, ``application/json-patch+json`` and
  ``application/strategic-merge-patch+json`` (:mod:`azurelab.kubepatch`), others 415.
* Metadata as the API server sets it: ``uid``, ``resourceVersion`` (one increasing counter), ``creationTimestamp``,
  ``generation`` for Deployments and Jobs (bumped when ``spec`` changes only); ``status`` is ignored on writes to the
  main resource; common defaults (replicas, strategy, restartPolicy, imagePullPolicy...). Errors are ``Status`` objects
  with the API server's reasons and wording: 404 ``NotFound``, 409 ``AlreadyExists`` / ``Conflict``, 422 ``Invalid``
  (with ``details.causes``), 400 ``BadRequest``, 405 ``MethodNotAllowed``.
* Delete: ``propagationPolicy`` (query or ``DeleteOptions`` body), ``preconditions.resourceVersion``. Jobs default to
  ``Orphan`` as batch/v1 does (pods stay, with the same warning header); ``Background`` and ``Foreground`` delete
  their pods at once (Foreground is not staged with a finalizer).

Jobs run (see :mod:`azurelab.kubelet`): a created Job gets one Pod ``<job>-<5 chars>`` with the template's labels plus
``batch.kubernetes.io/controller-uid``, ``batch.kubernetes.io/job-name``, ``controller-uid``, ``job-name`` and a
controller ``ownerReference``; the Azure Workload Identity webhook mutates it when the cluster has workload identity
enabled (``workload_identity_enabled()``) and the pod is labelled for it; a pod whose ServiceAccount does not exist
is refused (the Job gets no pod, as the ServiceAccount admission plugin refuses it; the job controller's retries and
events are not emulated). Projected service-account tokens are signed by :class:`azurelab.aks.ClusterIssuer` with the
issuer URL ``issuer_url()`` returns at pod start (the cluster's ``oidcIssuerProfile.issuerURL``), or
:data:`azurelab.aks.DEFAULT_ISSUER` when it returns ``None``. Pod phase Pending -> Running -> Succeeded / Failed by
exit code; Job ``status.active`` / ``succeeded`` / ``failed``, ``startTime``, ``completionTime``, conditions
``SuccessCriteriaMet`` + ``Complete`` or ``FailureTarget`` + ``Failed`` (``BackoffLimitExceeded``, or
``DeadlineExceeded`` past ``activeDeadlineSeconds``: default :data:`DEFAULT_DEADLINE_S` here, none in Kubernetes).
Processes still running at :meth:`KubeCluster.shutdown` are killed.

Deployments are stored, never run: no ReplicaSets or Pods; their ``status`` echoes ``spec.replicas`` as ready and
available with ``observedGeneration`` = ``generation``.

Not emulated: watches (``watch=true`` is 400), server-side apply (415), ``limit`` / ``continue`` paging (everything in
one page), ``managedFields``, admission other than the webhook above and ServiceAccount existence, namespace deletion,
Job retries (``backoffLimit``: one pod, its failure fails the Job), ``suspend``, parallelism and completions above 1,
other kinds (ConfigMaps, Secrets, Services...), protobuf and CBOR (JSON only), Table output for kubectl.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import re
import secrets
import sys
import threading
import uuid
from typing import Callable

import yaml

from . import aks, config, kubelet
from .kubepatch import PatchError, json_patch, merge_patch, parse_field_selector, parse_label_selector, \
    strategic_merge_patch
from .tokens import Issuer, TokenError
from .web import JsonHandler

log = logging.getLogger("azurelab")

DEFAULT_DEADLINE_S = 300
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PUBLIC_PATHS = ("/version", "/healthz", "/livez", "/readyz")
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery utilrand: no vowels, no confusable digits
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Kind:
    """A served resource type."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    has_generation: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``deployments.apps`` or ``pods``: how the API server names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


_WRITE = ("create", "delete", "get", "list", "patch", "update")
KINDS = {
    "namespaces": Kind("", "v1", "namespaces", "Namespace", False, ("create", "get", "list"), ("ns",)),
    "serviceaccounts": Kind("", "v1", "serviceaccounts", "ServiceAccount", True, _WRITE, ("sa",)),
    "pods": Kind("", "v1", "pods", "Pod", True, ("delete", "get", "list"), ("po",)),
    "deployments": Kind("apps", "v1", "deployments", "Deployment", True, _WRITE, ("deploy",), True),
    "jobs": Kind("batch", "v1", "jobs", "Job", True, _WRITE, (), True),
}
SUBRESOURCES = {("pods", "log"): ("get",), ("deployments", "status"): ("get",), ("jobs", "status"): ("get",)}


class ApiError(Exception):
    """An answer other than success: becomes a ``Status`` object."""

    REASONS = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict",
               415: "UnsupportedMediaType", 422: "Invalid"}

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or self.REASONS.get(code, "InternalError")
        self.details = details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, f'{kind.qualified} "{name}" not found', details={"name": name, "group": kind.group,
                                                                          "kind": kind.plural})


def invalid(kind: Kind, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 ``Invalid``; ``causes`` are ``(field, reason, message)``, e.g. ``("spec.selector", "FieldValueRequired",
    "Required value")``."""
    text = ", ".join(f"{field}: {message}" for field, _reason, message in causes)
    label = f"[{text}]" if len(causes) > 1 else text
    return ApiError(422, f'{kind.qualified_kind} "{name}" is invalid: {label}', details={
        "name": name, "group": kind.group, "kind": kind.kind,
        "causes": [{"reason": reason, "message": message, "field": field} for field, reason, message in causes]})


def random_suffix() -> str:
    """Five characters, as ``generateName`` appends."""
    return "".join(secrets.choice(_NAME_CHARS) for _position in range(5))


def now() -> str:
    """RFC 3339 UTC, second precision, as Kubernetes writes timestamps."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers") or []:
        image = str(container.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
        container.setdefault("imagePullPolicy", "IfNotPresent" if tagged or "@" in image else "Always")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})


def _check_pod_template(template: dict, field: str, causes: list) -> None:
    spec = template.get("spec") if isinstance(template, dict) else None
    containers = (spec or {}).get("containers")
    if not containers:
        causes.append((f"{field}.spec.containers", "FieldValueRequired", f"{field}.spec.containers: Required value"))
        return
    for index, container in enumerate(containers):
        for key in ("name", "image"):
            if not container.get(key):
                path = f"{field}.spec.containers[{index}].{key}"
                causes.append((path, "FieldValueRequired", f"{path}: Required value"))


class KubeCluster:
    """The API server's state and operations for one cluster (the HTTP layer is :class:`KubeHandler`).

    ``cluster`` is an entry of ``topology["aks_clusters"]``; ``authority_host`` is the lab Entra URL
    (``https://127.0.0.1:<entra port>``) the webhook hands to pods (with a trailing ``/``); ``issuer_url()`` returns
    the cluster's current ``oidcIssuerProfile.issuerURL`` or ``None``; ``workload_identity_enabled()`` says whether
    the cluster runs the workload identity webhook (``securityProfile.workloadIdentity.enabled``).
    """

    def __init__(self, paths: config.LabPaths, topology: dict, cluster: dict, issuer: Issuer, authority_host: str,
                 issuer_url: Callable[[], str | None], workload_identity_enabled: Callable[[], bool] = lambda: True):
        self.name = cluster["name"]
        self.tenant_id = topology["tenant_id"]
        self.audience = topology["audiences"]["aks"]
        self.version = cluster.get("kubernetes_version", "1.31.2")
        self.issuer = issuer
        self.authority_host = authority_host.rstrip("/") + "/"
        self.issuer_url = issuer_url
        self.workload_identity_enabled = workload_identity_enabled
        self.signer = aks.ClusterIssuer(paths, self.name)
        self.base_env = {"PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                         "REQUESTS_CA_BUNDLE": str(paths.ca_bundle), "SSL_CERT_FILE": str(paths.ca_bundle)}
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._revision = 0
        self._concurrent_writers: dict[str, list[dict[str, str]]] = {}  # request path -> labels, one per PUT
        self._processes: dict[str, kubelet.PodProcess] = {}  # pod uid -> its process
        self._stopping = False
        for namespace in SYSTEM_NAMESPACES:
            self.create(KINDS["namespaces"], "", {"metadata": {"name": namespace}})
        for manifest in cluster.get("manifests", []):
            with open(config.REPO_ROOT / "lab" / manifest, encoding="utf-8") as handle:
                for document in yaml.safe_load_all(handle):
                    if document:
                        kind = next(k for k in KINDS.values() if k.kind == document["kind"])
                        self.create(kind, document["metadata"].get("namespace", "default"), document)

    # -- authentication ---------------------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None, path: str) -> str:
        """The caller's name (``oid``, or ``upn`` for users) for an ``Authorization`` header value, ``system:anonymous``
        for no header on a public path; raises :class:`ApiError` 401 otherwise."""
        if not authorization:
            if path in PUBLIC_PATHS:
                return "system:anonymous"
            raise ApiError(401, "Unauthorized")
        scheme, _space, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Unauthorized")
        try:
            claims = self.issuer.verify(token.strip(), self.audience)
        except TokenError as error:
            log.info("kube %s: token refused (%s)", self.name, error.reason)
            raise ApiError(401, "Unauthorized") from None
        return claims.get("upn") or claims["oid"]

    # -- store ------------------------------------------------------------------------------------------------------

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _current(self, kind: Kind, namespace: str, name: str) -> dict:
        found = self._objects.get((kind.plural, namespace, name))
        if found is None:
            raise not_found(kind, name)
        return found

    def _require_namespace(self, kind: Kind, namespace: str) -> None:
        if kind.namespaced and ("namespaces", "", namespace) not in self._objects:
            raise not_found(KINDS["namespaces"], namespace)

    def _shape(self, kind: Kind, namespace: str, body: dict, url_name: str | None) -> dict:
        """A written object checked and defaulted (not yet stored); raises :class:`ApiError`."""
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request is not a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("kind", kind.kind) != kind.kind or obj.get("apiVersion", kind.api_version) != kind.api_version:
            raise ApiError(400, f"the API version in the data ({obj.get('apiVersion')}) does not match the expected "
                                f"API version ({kind.api_version})" if obj.get("kind", kind.kind) == kind.kind else
                           f"{obj.get('kind')} in version \"{kind.version}\" cannot be handled as a {kind.kind}")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if url_name is None and not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        name = meta.get("name") or ""
        if url_name is not None and name != url_name:
            raise ApiError(400, f"the name of the object ({name}) does not match the name on the URL ({url_name})")
        if kind.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the "
                                    "request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not name:
            raise invalid(kind, name, [("metadata.name", "FieldValueRequired",
                                        "metadata.name: Required value: name or generateName is required")])
        pattern = _DNS1123_LABEL if kind.plural in ("namespaces", "jobs") else _DNS1123_SUBDOMAIN
        if not pattern.match(name) or len(name) > (63 if pattern is _DNS1123_LABEL else 253):
            what = "RFC 1123 label" if pattern is _DNS1123_LABEL else "RFC 1123 subdomain"
            raise invalid(kind, name, [("metadata.name", "FieldValueInvalid",
                                        f'metadata.name: Invalid value: "{name}": a lowercase {what} must consist of '
                                        f"lower case alphanumeric characters, '-' or '.', and must start and end with "
                                        f"an alphanumeric character")])
        for key in ("labels", "annotations"):
            if meta.get(key) is not None and not all(isinstance(v, str) for v in meta[key].values()):
                raise ApiError(400, f"json: cannot unmarshal number into Go struct field ObjectMeta.metadata.{key} "
                                    f"of type string")
        getattr(self, f"_shape_{kind.plural}", lambda _obj: None)(obj)
        return obj

    def _shape_namespaces(self, obj: dict) -> None:
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        obj["spec"] = {"finalizers": ["kubernetes"]}

    def _shape_deployments(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        name, causes = obj["metadata"]["name"], []
        selector = (spec.get("selector") or {}).get("matchLabels")
        if not spec.get("selector"):
            causes.append(("spec.selector", "FieldValueRequired", "spec.selector: Required value"))
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if selector and any(labels.get(k) != v for k, v in selector.items()):
            causes.append(("spec.template.metadata.labels", "FieldValueInvalid",
                           f"spec.template.metadata.labels: Invalid value: {json.dumps(labels)}: `selector` does not "
                           f"match template `labels`"))
        _check_pod_template(template, "spec.template", causes)
        if causes:
            raise invalid(KINDS["deployments"], name, causes)
        spec.setdefault("replicas", 1)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        _default_pod_spec(template["spec"])

    def _shape_jobs(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        name, causes = obj["metadata"]["name"], []
        template = spec.get("template") or {}
        _check_pod_template(template, "spec.template", causes)
        policy = (template.get("spec") or {}).get("restartPolicy")
        if template.get("spec") and policy not in ("Never", "OnFailure"):
            causes.append(("spec.template.spec.restartPolicy",
                           "FieldValueRequired" if policy is None else "FieldValueNotSupported",
                           'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"'
                           if policy is None else f'spec.template.spec.restartPolicy: Unsupported value: "{policy}": '
                                                  f'supported values: "OnFailure", "Never"'))
        if causes:
            raise invalid(KINDS["jobs"], name, causes)
        for key, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6),
                           ("completionMode", "NonIndexed"), ("suspend", False),
                           ("podReplacementPolicy", "TerminatingOrFailed"), ("manualSelector", None)):
            if value is not None:
                spec.setdefault(key, value)
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        _default_pod_spec(template["spec"])

    # -- operations -------------------------------------------------------------------------------------------------

    def create(self, kind: Kind, namespace: str, body: dict, dry_run: bool = False) -> dict:
        """POST: the stored object (with metadata); raises :class:`ApiError` (404 namespace, 409, 422, 400)."""
        with self._lock:
            self._require_namespace(kind, namespace)
            obj = self._shape(kind, namespace, body, None)
            meta = obj["metadata"]
            key = (kind.plural, namespace if kind.namespaced else "", meta["name"])
            if key in self._objects:
                raise ApiError(409, f'{kind.qualified} "{meta["name"]}" already exists', "AlreadyExists",
                               {"name": meta["name"], "group": kind.group, "kind": kind.plural})
            for field in ("resourceVersion", "deletionTimestamp", "selfLink"):
                meta.pop(field, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
            if kind.has_generation:
                meta["generation"] = 1
            obj.pop("status", None)
            if kind.plural == "jobs":
                self._select_job_pods(obj)
            self._set_status(kind, obj)
            if dry_run:
                return obj
            meta["resourceVersion"] = self._next_revision()
            self._objects[key] = obj
            if kind.plural == "namespaces":
                self.create(KINDS["serviceaccounts"], meta["name"], {"metadata": {"name": "default"}})
            elif kind.plural == "jobs":
                self._start_job(obj)
            return copy.deepcopy(obj)

    def get(self, kind: Kind, namespace: str, name: str) -> dict:
        with self._lock:
            return copy.deepcopy(self._current(kind, namespace, name))

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "", field_selector: str = "") -> dict:
        """A ``<Kind>List`` of the objects in ``namespace`` (``None``: all), sorted by namespace and name."""
        try:
            labels_match = parse_label_selector(label_selector)
            fields_match = parse_field_selector(field_selector)
        except PatchError as error:
            raise ApiError(400, error.message) from None
        with self._lock:
            if namespace:
                self._require_namespace(kind, namespace)
            items = [copy.deepcopy(obj) for (plural, ns, _name), obj in sorted(self._objects.items())
                     if plural == kind.plural and (not namespace or ns == namespace)
                     and labels_match(obj["metadata"].get("labels")) and fields_match(obj)]
            revision = str(self._revision)
        for item in items:  # the API server leaves kind and apiVersion out of list items
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": {"resourceVersion": revision},
                "items": items}

    def add_concurrent_writer(self, path: str, labels: dict[str, str], count: int = 1) -> None:
        """Lab fault (``POST /lab/concurrent-writes``): the next ``count`` PUTs of ``path`` find that another writer
        added ``labels`` to the object just before them (so a PUT of what was read before is a stale 409 Conflict)."""
        with self._lock:
            self._concurrent_writers.setdefault(path, []).extend([dict(labels)] * count)

    def _other_writer(self, kind: Kind, namespace: str, name: str, path: str) -> None:
        writers = self._concurrent_writers.get(path)
        if writers:
            labels = writers.pop(0)
            current = self._current(kind, namespace, name)
            self._update(kind, current, self._shape(
                kind, namespace, merge_patch(current, {"metadata": {"labels": labels}}), name), False)

    def replace(self, kind: Kind, namespace: str, name: str, body: dict, dry_run: bool = False,
                path: str = "") -> dict:
        """PUT: the whole object; a ``metadata.resourceVersion`` other than the current one is 409 ``Conflict``."""
        with self._lock:
            self._other_writer(kind, namespace, name, path)
            current = self._current(kind, namespace, name)
            return self._update(kind, current, self._shape(kind, namespace, body, name), dry_run)

    def patch(self, kind: Kind, namespace: str, name: str, content_type: str, patch, dry_run: bool = False) -> dict:
        """PATCH with one of :data:`PATCH_TYPES`; raises :class:`ApiError` (415 for another type, 400/422 for a
        patch that cannot apply, 409 when it names a stale ``resourceVersion``)."""
        media = (content_type or "").split(";")[0].strip().lower()
        if media not in PATCH_TYPES:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types include: "
                                f"{', '.join(PATCH_TYPES)}")
        with self._lock:
            current = self._current(kind, namespace, name)
            try:
                if media == "application/json-patch+json":
                    patched = json_patch(current, patch)
                elif media == "application/merge-patch+json":
                    patched = merge_patch(current, patch)
                else:
                    patched = strategic_merge_patch(current, patch)
            except PatchError as error:
                raise ApiError(error.status, error.message) from None
            return self._update(kind, current, self._shape(kind, namespace, patched, name), dry_run)

    def _update(self, kind: Kind, current: dict, obj: dict, dry_run: bool) -> dict:
        meta, old = obj["metadata"], current["metadata"]
        if meta.get("resourceVersion") not in (None, "", old["resourceVersion"]):
            raise ApiError(409, f'Operation cannot be fulfilled on {kind.qualified} "{old["name"]}": the object has '
                                f'been modified; please apply your changes to the latest version and try again',
                           details={"name": old["name"], "group": kind.group, "kind": kind.plural})
        if kind.plural == "jobs" and obj["spec"].get("template") != current["spec"].get("template"):
            raise invalid(kind, old["name"], [("spec.template", "FieldValueInvalid",
                                               "spec.template: Invalid value: ...: field is immutable")])
        if kind.plural == "jobs" and obj["spec"].get("selector") != current["spec"].get("selector"):
            raise invalid(kind, old["name"], [("spec.selector", "FieldValueInvalid",
                                               "spec.selector: Invalid value: ...: field is immutable")])
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if field in old:
                meta[field] = old[field]
        if "status" in current:
            obj["status"] = copy.deepcopy(current["status"])
        else:
            obj.pop("status", None)
        if kind.has_generation and obj.get("spec") != current.get("spec"):
            meta["generation"] = old["generation"] + 1
        self._set_status(kind, obj)
        meta["resourceVersion"] = old["resourceVersion"]
        if obj == current or dry_run:
            return copy.deepcopy(obj)  # a no-op write keeps its resourceVersion, as the API server does
        meta["resourceVersion"] = self._next_revision()
        self._objects[(kind.plural, meta.get("namespace", ""), meta["name"])] = obj
        return copy.deepcopy(obj)

    def delete(self, kind: Kind, namespace: str, name: str, options: dict,
               dry_run: bool = False) -> tuple[dict, dict[str, str]]:
        """DELETE: ``(answer, extra headers)``; ``options`` is a ``DeleteOptions`` (``propagationPolicy``,
        ``preconditions``). Pods answer with the pod, other kinds with a ``Status`` ``Success``."""
        policy = options.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(400, f'Unsupported value: "{policy}": supported values: "Foreground", "Background", '
                                f'"Orphan"')
        headers = {}
        with self._lock:
            current = self._current(kind, namespace, name)
            expected = (options.get("preconditions") or {}).get("resourceVersion")
            if expected and expected != current["metadata"]["resourceVersion"]:
                raise ApiError(409, f'Operation cannot be fulfilled on {kind.qualified} "{name}": Precondition failed: '
                                    f'ResourceVersion in precondition: {expected}, ResourceVersion in object meta: '
                                    f'{current["metadata"]["resourceVersion"]}',
                               details={"name": name, "group": kind.group, "kind": kind.plural})
            if kind.plural == "jobs" and policy is None:
                policy = "Orphan"
                headers["Warning"] = ('299 - "child pods are preserved by default when jobs are deleted; set '
                                      'propagationPolicy=Background to remove them or set propagationPolicy=Orphan to '
                                      'suppress this warning"')
            dependents = [key for key, obj in self._objects.items() if key[0] == "pods" and any(
                ref.get("uid") == current["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences", []))]
            answer = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                      "details": {"name": name, "group": kind.group, "kind": kind.plural,
                                  "uid": current["metadata"]["uid"]}}
            if kind.plural == "pods":
                answer = copy.deepcopy(current)
            if dry_run:
                return answer, headers
            del self._objects[(kind.plural, namespace, name)]
            self._revision += 1
            for key in dependents:
                if policy == "Orphan":
                    self._objects[key]["metadata"]["ownerReferences"] = [
                        ref for ref in self._objects[key]["metadata"]["ownerReferences"]
                        if ref.get("uid") != current["metadata"]["uid"]]
                    self._objects[key]["metadata"]["resourceVersion"] = self._next_revision()
                else:
                    self._end_pod(self._objects.pop(key))
            if kind.plural == "pods":
                self._end_pod(current)
        return answer, headers

    def pod_log(self, namespace: str, name: str, query: dict[str, str]) -> bytes:
        """``GET .../pods/{name}/log``: stdout + stderr, ``tailLines`` / ``limitBytes`` applied."""
        with self._lock:
            pod = self._current(KINDS["pods"], namespace, name)
            process = self._processes.get(pod["metadata"]["uid"])
            container = query.get("container")
            names = [c["name"] for c in pod["spec"]["containers"]]
            if container and container not in names:
                raise ApiError(400, f"container {container} is not valid for pod {name}")
            data = process.logs() if process else b""
        if container and container != names[0]:
            data = b""  # only the first container runs
        if query.get("tailLines", "").isdigit():
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) else b""
        if query.get("limitBytes", "").isdigit():
            data = data[:int(query["limitBytes"])]
        return data

    # -- status and jobs --------------------------------------------------------------------------------------------

    def _set_status(self, kind: Kind, obj: dict) -> None:
        if kind.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        elif kind.plural == "deployments":
            replicas = obj["spec"]["replicas"]
            status = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                      "updatedReplicas": replicas}
            if replicas:
                status.update(readyReplicas=replicas, availableReplicas=replicas)
            previous = (obj.get("status") or {}).get("conditions")
            status["conditions"] = previous or [
                {"type": "Available", "status": "True", "lastUpdateTime": now(), "lastTransitionTime": now(),
                 "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "lastUpdateTime": now(), "lastTransitionTime": now(),
                 "reason": "NewReplicaSetAvailable",
                 "message": f'ReplicaSet "{obj["metadata"]["name"]}-lab" has successfully progressed.'}]
            obj["status"] = status
        elif kind.plural == "jobs":
            obj.setdefault("status", {})

    @staticmethod
    def _select_job_pods(job: dict) -> None:
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        template = job["spec"]["template"]
        template["metadata"]["labels"] = {**(template["metadata"].get("labels") or {}), **labels}
        job["spec"].setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})

    def _start_job(self, job: dict) -> None:
        """The job controller and the scheduler: one pod for a new Job, admitted, stored and started."""
        meta, template = job["metadata"], job["spec"]["template"]
        namespace = meta["namespace"]
        spec = copy.deepcopy(template["spec"])
        account_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec.update(serviceAccountName=account_name, serviceAccount=account_name, nodeName="aks-nodepool1-lab-vmss0")
        pod = {"kind": "Pod", "apiVersion": "v1", "metadata": {
            "name": meta["name"] + "-" + random_suffix(),
            "generateName": meta["name"] + "-", "namespace": namespace,
            "labels": copy.deepcopy(template["metadata"].get("labels") or {}),
            "annotations": copy.deepcopy(template["metadata"].get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}]}, "spec": spec}
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        account = self._objects.get(("serviceaccounts", namespace, account_name))
        if account is None:
            log.info("kube %s: job %s/%s gets no pod: serviceaccount %r not found", self.name, namespace, meta["name"],
                     account_name)
            return
        if self.workload_identity_enabled():
            try:
                pod = kubelet.mutate_pod(pod, account, self.tenant_id, self.authority_host)
            except kubelet.AdmissionError as error:
                log.info("kube %s: job %s/%s gets no pod: admission webhook "
                         '"mutation.azure-workload-identity.io" denied the request: %s', self.name, namespace,
                         meta["name"], error)
                return
        pod["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=now(), resourceVersion=self._next_revision())
        pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        self._objects[("pods", namespace, pod["metadata"]["name"])] = pod
        job["status"] = {"startTime": now(), "active": 1, "ready": 0, "terminating": 0,
                         "uncountedTerminatedPods": {}}
        job["metadata"]["resourceVersion"] = self._next_revision()
        container = pod["spec"]["containers"][0]
        issuer_url = self.issuer_url() or aks.DEFAULT_ISSUER
        files = {f"{mount_path.rstrip('/')}/{projection['path']}": self.signer.service_account_token(
            issuer_url, namespace, account_name, audience=projection.get("audience") or issuer_url,
            lifetime_s=int(projection.get("expirationSeconds", 3600)),
            pod={"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            service_account_uid=account["metadata"]["uid"])
            for mount_path, projection in kubelet.token_projections(pod, container)}
        deadline = job["spec"].get("activeDeadlineSeconds") or DEFAULT_DEADLINE_S
        pod_key, job_key = ("pods", namespace, pod["metadata"]["name"]), ("jobs", namespace, meta["name"])
        process = kubelet.PodProcess(pod["metadata"]["name"], container, self.base_env, files, deadline,
                                     lambda code, reason: self._pod_exited(pod_key, job_key, meta["uid"], code, reason))
        self._processes[pod["metadata"]["uid"]] = process
        process.start()
        started = now()
        pod["status"] = {"phase": "Running", "qosClass": "BestEffort", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                         "startTime": started, "conditions": [
                             {"type": t, "status": "True", "lastTransitionTime": started}
                             for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                         "containerStatuses": [{"name": container["name"], "image": container.get("image", ""),
                                                "imageID": "", "ready": True, "restartCount": 0, "started": True,
                                                "state": {"running": {"startedAt": started}}}]}
        pod["metadata"]["resourceVersion"] = self._next_revision()
        log.info("kube %s: job %s/%s runs pod %s (workload identity %s)", self.name, namespace, meta["name"],
                 pod["metadata"]["name"], "injected" if files else "not injected")

    def _pod_exited(self, pod_key, job_key, job_uid: str, code: int, reason: str) -> None:
        """The kubelet's report: the pod (if still there) terminates; its Job (if still there and still its
        controller, i.e. not deleted with Orphan) completes or fails. A deleted pod fails its Job: no replacement."""
        with self._lock:
            pod = self._objects.get(pod_key)
            finished = now()
            if pod is not None:
                status = pod["status"]
                started = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("running", {}).get(
                    "startedAt", finished)
                status["phase"] = "Succeeded" if code == 0 else "Failed"
                for condition in status.get("conditions", []):
                    if condition["type"] in ("Ready", "ContainersReady"):
                        condition.update(status="False", reason="PodCompleted", lastTransitionTime=finished)
                for container in status.get("containerStatuses", []):
                    container.update(ready=False, started=False, state={"terminated": {
                        "exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished}})
                pod["metadata"]["resourceVersion"] = self._next_revision()
            job = self._objects.get(job_key)
            if job is not None and job["metadata"]["uid"] == job_uid and job["status"].get("active") \
                    and not self._stopping:
                self._finish_job(job, code, reason, finished)

    def _finish_job(self, job: dict, code: int, reason: str, finished: str) -> None:
        status = {k: v for k, v in job["status"].items() if k != "active"}
        if code == 0:
            status.update(succeeded=1, completionTime=finished, conditions=[
                {"type": t, "status": "True", "lastProbeTime": finished, "lastTransitionTime": finished,
                 "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"}
                for t in ("SuccessCriteriaMet", "Complete")])
        else:
            why, message = (("DeadlineExceeded", "Job was active longer than specified deadline")
                            if reason == "DeadlineExceeded" else
                            ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            status.update(failed=1, conditions=[
                {"type": t, "status": "True", "lastProbeTime": finished, "lastTransitionTime": finished,
                 "reason": why, "message": message} for t in ("FailureTarget", "Failed")])
        job["status"] = status
        job["metadata"]["resourceVersion"] = self._next_revision()

    def _end_pod(self, pod: dict) -> None:
        process = self._processes.pop(pod["metadata"]["uid"], None)
        if process is not None:
            process.kill()

    def shutdown(self) -> None:
        """Kill every pod process still running and wait briefly for them."""
        with self._lock:
            self._stopping = True
            processes = list(self._processes.values())
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(2.0)


def _discovery_resources(group: str, version: str) -> dict:
    resources = []
    for kind in KINDS.values():
        if (kind.group, kind.version) != (group, version):
            continue
        resources.append({"name": kind.plural, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                          "kind": kind.kind, "verbs": list(kind.verbs), "shortNames": list(kind.short_names)})
        for (plural, sub), verbs in SUBRESOURCES.items():
            if plural == kind.plural:
                resources.append({"name": f"{plural}/{sub}", "singularName": "", "namespaced": kind.namespaced,
                                  "kind": "Pod" if sub == "log" else kind.kind, "verbs": list(verbs)})
    for entry in resources:
        if not entry.get("shortNames"):
            entry.pop("shortNames", None)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def _group(name: str) -> dict:
    version = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [version], "preferredVersion": version}


class KubeHandler(JsonHandler):
    """HTTP routing for :class:`KubeCluster`."""

    def do_GET(self):  # noqa: N802 - the base class's naming
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def dispatch(self) -> None:
        cluster: KubeCluster = self.app
        body = self.read_body()
        if self.route.rstrip("/") == "/lab/concurrent-writes" and self.command == "POST":
            # The lab's fault switch (no auth; loopback only, like the ARM double's /lab API).
            fault = json.loads(body or b"{}")
            cluster.add_concurrent_writer(fault["path"], fault["labels"], int(fault.get("count", 1)))
            return self.send_json(204, None)
        try:
            user = cluster.authenticate(self.headers.get("Authorization"), "/" + self.route.strip("/"))
            status, answer, headers = self.handle_api(cluster, body)
            log.info("kube %s: %s %s by %s: %s", cluster.name, self.command, self.route, user, status)
        except ApiError as error:
            status, answer, headers = error.code, error.status(), {}
        if isinstance(answer, bytes):
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        else:
            self.send_json(status, answer, headers)

    def _decode(self, body: bytes):
        content_type = (self.headers.get("Content-Type") or "").lower()
        try:
            return yaml.safe_load(body) if "yaml" in content_type else json.loads(body or b"null")
        except (ValueError, yaml.YAMLError) as error:
            raise ApiError(400, f"the body of the request could not be decoded: {type(error).__name__}") from None

    def handle_api(self, cluster: KubeCluster, body: bytes) -> tuple[int, object, dict]:
        parts = [p for p in self.route.split("/") if p]
        route = "/" + "/".join(parts)  # the client asks for /version/
        query = self.query
        if route == "/version":
            major, minor, _patch = cluster.version.split(".")
            return 200, {"major": major, "minor": minor, "gitVersion": f"v{cluster.version}",
                         "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                         "buildDate": "2024-10-22T20:35:25Z", "goVersion": "go1.22.8", "compiler": "gc",
                         "platform": "linux/amd64"}, {}
        if route in ("/healthz", "/livez", "/readyz"):
            return 200, b"ok", {}
        if parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"localhost:{self.server.server_address[1]}"}]}, {}
        if parts == ["apis"]:
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group("apps"), _group("batch")]}, {}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in ("apps", "batch"):
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1])}, {}
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and parts[1] in ("apps", "batch") and parts[2] == "v1":
            group, version, rest = parts[1], "v1", parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource", details={})
        if not rest:
            if self.command != "GET":
                raise ApiError(405, "the server does not allow this method on the requested resource")
            return 200, _discovery_resources(group, version), {}
        return self.handle_resource(cluster, group, rest, query, body)

    def handle_resource(self, cluster: KubeCluster, group: str, rest: list[str], query: dict,
                        body: bytes) -> tuple[int, object, dict]:
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:  # /namespaces/{ns}/{plural}[/{name}[/{subresource}]]
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        kind = KINDS.get(plural)
        if kind is None or kind.group != group or len(rest) > 3 or (namespace is not None and not kind.namespaced):
            raise ApiError(404, "the server could not find the requested resource", details={})
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (plural, sub) not in SUBRESOURCES:
            raise ApiError(404, "the server could not find the requested resource", details={})
        if query.get("watch") in ("true", "1"):
            raise ApiError(400, "watch is not emulated by the lab's Kubernetes API server")
        dry_run = query.get("dryRun")
        if dry_run not in (None, "All"):
            raise ApiError(400, f'Invalid dry run value: "{dry_run}"' if dry_run else "dryRun: Unsupported value: \"\"")
        dry_run = dry_run == "All"
        namespace = namespace or ""
        verb = {"GET": "list" if name is None else "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}[self.command]
        allowed = SUBRESOURCES[(plural, sub)] if sub else kind.verbs
        if verb not in allowed or (self.command == "POST" and name is not None) or \
                (verb == "create" and kind.namespaced and not namespace):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if verb == "list":
            scope = namespace if kind.namespaced and namespace else None
            return 200, cluster.list(kind, scope, query.get("labelSelector", ""), query.get("fieldSelector", "")), {}
        if verb == "get" and sub == "log":
            return 200, cluster.pod_log(namespace, name, query), {}
        if verb == "get":
            return 200, cluster.get(kind, namespace, name), {}
        if verb == "create":
            return 201, cluster.create(kind, namespace, self._decode(body), dry_run), {}
        if verb == "update":
            return 200, cluster.replace(kind, namespace, name, self._decode(body), dry_run, "/" + self.route.strip("/")), {}
        if verb == "patch":
            return 200, cluster.patch(kind, namespace, name, self.headers.get("Content-Type", ""),
                                      self._decode(body), dry_run), {}
        options = self._decode(body) if body else {}
        options = options if isinstance(options, dict) else {}
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        answer, headers = cluster.delete(kind, namespace, name, options, dry_run)
        return 200, answer, headers
