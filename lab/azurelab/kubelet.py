"""The node side of the lab's Kubernetes double (:mod:`azurelab.kube`): the Azure Workload Identity mutating webhook,
and a "kubelet" that runs a pod's first container as a local process.

Webhook (:func:`mutate_pod`), as azure-workload-identity's ``podMutator`` does for a pod labelled
``azure.workload.identity/use: "true"`` when the cluster has workload identity enabled (on AKS the webhook only exists
then): every container (and init container) not named in the pod annotation ``azure.workload.identity/skip-containers``
(``;``-separated) gets, unless it already sets them, ``AZURE_CLIENT_ID`` (the service account's
``azure.workload.identity/client-id`` annotation; not added when absent), ``AZURE_TENANT_ID`` (annotation
``azure.workload.identity/tenant-id``, else the cluster's tenant), ``AZURE_FEDERATED_TOKEN_FILE``
(``/var/run/secrets/azure/tokens/azure-identity-token``) and ``AZURE_AUTHORITY_HOST``, a read-only volume mount of
``/var/run/secrets/azure/tokens``, and the pod a projected volume ``azure-identity-token`` with a service-account token
for audience ``api://AzureADTokenExchange``, expiring after ``azure.workload.identity/service-account-token-expiration``
seconds (pod annotation, else service account annotation, else 3600; 3600..86400, else the pod is refused).
A pod without the label is left alone. Sources: https://azure.github.io/azure-workload-identity/docs/installation/
mutating-admission-webhook.html, .../topics/service-account-labels-and-annotations.html, pkg/webhook/webhook.go.

Kubelet (:class:`PodProcess`): runs the first container's ``command`` + ``args`` (exec, no shell unless the command is
one; a container without ``command`` cannot run here since the image's entrypoint is unknown: the pod fails) in a
fresh temporary directory (also ``HOME``), with env = the lab's base (``PATH`` with the lab venv's ``bin`` first,
``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` = the lab CA bundle, standing in for the image's trust store), then
``HOSTNAME`` = the pod name, then the container's plain ``value`` env in order. Each projected service-account token
volume mounted in the container is written under ``<tmp>/<mountPath>`` (mode 0600), and env values naming a path
below such a mount path are rewritten to the local file: ``AZURE_FEDERATED_TOKEN_FILE`` points at
``<tmp>/var/run/secrets/azure/tokens/azure-identity-token``, not at the real absolute path. stdout and stderr are
kept together, the last :data:`LOG_LIMIT` bytes. The process (its whole process group) is killed at its deadline or by
:meth:`PodProcess.kill`.

Not emulated: the image (ignored), other containers of the pod, ``valueFrom`` / ``envFrom`` env, other volumes,
token refresh (the kubelet renews a projected token at 80 % of its life: a lab pod gets one token), restarts
(``restartPolicy`` is never applied), the proxy sidecar (``inject-proxy-sidecar``), resource limits, isolation (the
process runs as the lab's user, on its network).
"""
from __future__ import annotations

import copy
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable

USE_LABEL = "azure.workload.identity/use"
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"
SKIP_CONTAINERS_ANNOTATION = "azure.workload.identity/skip-containers"
EXPIRATION_ANNOTATION = "azure.workload.identity/service-account-token-expiration"
TOKEN_VOLUME = "azure-identity-token"
TOKEN_MOUNT_PATH = "/var/run/secrets/azure/tokens"
TOKEN_FILE = "azure-identity-token"
TOKEN_AUDIENCE = "api://AzureADTokenExchange"
EXPIRATION_DEFAULT_S, EXPIRATION_MIN_S, EXPIRATION_MAX_S = 3600, 3600, 86400
LOG_LIMIT = 1 << 20


class AdmissionError(Exception):
    """The webhook refused the pod (the API server answers 400 with this message)."""


def mutate_pod(pod: dict, service_account: dict, cluster_tenant_id: str, authority_host: str) -> dict:
    """The pod as the workload identity webhook returns it (a copy; ``pod`` is not modified).

    ``pod`` has ``metadata`` and ``spec``; ``service_account`` is the pod's ServiceAccount object; ``authority_host``
    ends with ``/`` (Azure public cloud: ``https://login.microsoftonline.com/``). Raises :class:`AdmissionError`
    for an expiration annotation that is not an integer in 3600..86400.
    """
    if (pod["metadata"].get("labels") or {}).get(USE_LABEL) != "true":
        return pod
    pod = copy.deepcopy(pod)
    pod_annotations = pod["metadata"].get("annotations") or {}
    sa_annotations = service_account["metadata"].get("annotations") or {}
    raw = pod_annotations.get(EXPIRATION_ANNOTATION) or sa_annotations.get(EXPIRATION_ANNOTATION) \
        or str(EXPIRATION_DEFAULT_S)
    try:
        expiration = int(raw)
    except ValueError:
        raise AdmissionError(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from None
    if not EXPIRATION_MIN_S <= expiration <= EXPIRATION_MAX_S:
        raise AdmissionError(f"token expiration {expiration} not valid. Expected value to be between 3600 and 86400")
    skip = {name.strip() for name in pod_annotations.get(SKIP_CONTAINERS_ANNOTATION, "").split(";") if name.strip()}
    desired = [("AZURE_CLIENT_ID", sa_annotations.get(CLIENT_ID_ANNOTATION, "")),
               ("AZURE_TENANT_ID", sa_annotations.get(TENANT_ID_ANNOTATION, cluster_tenant_id)),
               ("AZURE_FEDERATED_TOKEN_FILE", f"{TOKEN_MOUNT_PATH}/{TOKEN_FILE}"),
               ("AZURE_AUTHORITY_HOST", authority_host)]
    mount = {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": True}
    for field in ("initContainers", "containers"):
        for container in pod["spec"].get(field) or []:
            if container.get("name") in skip:
                continue
            present = {env.get("name") for env in container.get("env") or []}
            container.setdefault("env", []).extend({"name": name, "value": value} for name, value in desired
                                                   if name not in present and value)
            mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != TOKEN_VOLUME]
            container["volumeMounts"] = mounts + [dict(mount)]
    volume = {"name": TOKEN_VOLUME, "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {
        "audience": TOKEN_AUDIENCE, "expirationSeconds": expiration, "path": TOKEN_FILE}}]}}
    pod["spec"]["volumes"] = [v for v in pod["spec"].get("volumes") or [] if v.get("name") != TOKEN_VOLUME] + [volume]
    return pod


def token_projections(pod: dict, container: dict) -> list[tuple[str, dict]]:
    """``(mountPath, serviceAccountToken projection)`` for each projected token volume the container mounts."""
    volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
    found = []
    for mount in container.get("volumeMounts") or []:
        for source in ((volumes.get(mount.get("name")) or {}).get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                found.append((mount["mountPath"], source["serviceAccountToken"]))
    return found


class PodProcess:
    """One pod's first container as a local process.

    ``files`` maps absolute in-container paths to contents (the projected tokens), written below the work directory
    (mode 0600). ``on_exit(exit_code, reason)`` is called once, from the watcher thread, with ``reason`` ``Completed``,
    ``Error``, ``DeadlineExceeded`` or ``StartError`` (exit code 128 for a command that cannot start).
    """

    def __init__(self, pod_name: str, container: dict, base_env: dict[str, str], files: dict[str, str],
                 deadline_s: float, on_exit: Callable[[int, str], None]):
        self.pod_name = pod_name
        self.container = container
        self.base_env = base_env
        self.files = files
        self.deadline_s = deadline_s
        self.on_exit = on_exit
        self._log = bytearray()
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._killed_for: str | None = None
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"lab-pod-{pod_name}-"))

    def _local(self, path: str) -> pathlib.Path:
        return self.workdir / path.lstrip("/")

    def environment(self) -> dict[str, str]:
        """The process environment (see the module docstring)."""
        env = dict(self.base_env, HOME=str(self.workdir), HOSTNAME=self.pod_name)
        mounts = sorted({str(pathlib.PurePosixPath(path).parent) for path in self.files}, key=len, reverse=True)
        for item in self.container.get("env") or []:
            if "value" not in item:
                continue
            value = str(item["value"])
            mount = next((m for m in mounts if value == m or value.startswith(m + "/")), None)
            env[item["name"]] = str(self._local(value)) if mount else value
        return env

    def start(self) -> None:
        """Write the files and start the process and its watcher thread (which reports the exit)."""
        for path, content in self.files.items():
            target = self._local(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
        argv = [str(part) for part in (self.container.get("command") or []) + (self.container.get("args") or [])]
        if not self.container.get("command"):
            self._append(b"the lab runs only containers that give a command (the image's entrypoint is unknown)\n")
            threading.Thread(target=self._finish, args=(128, "StartError"), daemon=True).start()
            return
        try:
            self._process = subprocess.Popen(argv, cwd=self.workdir, env=self.environment(), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            self._append(f"failed to start {argv[0]}: {error.strerror}\n".encode())
            threading.Thread(target=self._finish, args=(128, "StartError"), daemon=True).start()
            return
        threading.Thread(target=self._watch, name=f"pod {self.pod_name}", daemon=True).start()

    def _append(self, data: bytes) -> None:
        with self._lock:
            self._log += data
            if len(self._log) > LOG_LIMIT:
                del self._log[:len(self._log) - LOG_LIMIT]

    def _watch(self) -> None:
        timer = threading.Timer(self.deadline_s, self.kill, args=("DeadlineExceeded",))
        timer.daemon = True
        timer.start()
        for chunk in iter(lambda: self._process.stdout.read1(65536), b""):
            self._append(chunk)
        code = self._process.wait()
        timer.cancel()
        self._finish(code if code >= 0 else 128 - code, self._killed_for or ("Completed" if code == 0 else "Error"))

    def _finish(self, code: int, reason: str) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)  # the token goes with it
        self.on_exit(code, reason)

    def kill(self, reason: str = "Killed") -> None:
        """Kill the process group (SIGKILL: a pod past its deadline or being deleted); no-op once it has ended."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._killed_for = self._killed_for or reason
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the process to end (used at shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._process is not None and self._process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)

    def logs(self) -> bytes:
        """stdout + stderr so far (the last :data:`LOG_LIMIT` bytes)."""
        with self._lock:
            return bytes(self._log)
