"""Whether a directory outlives the Kubernetes pod this process runs in.

A point-in-time restore and a seeded standby bring up a cluster that is meant to be kept.
Brought up on a step pod, that cluster is kept only if its directory is on a volume that
outlives the pod: a PersistentVolumeClaim (or a host path) mounted there. Kubernetes deletes the
rest with the pod: the container's own file system (its writable layer), an ``emptyDir``, a
memory-backed volume, and the work volume the step pods get at ``WORK_DIRECTORY`` (a generic
ephemeral volume, a claim made for the pod and deleted with it). This tells which of these a
directory lies on, from ``/proc/self/mountinfo``, so that such a restore is refused before it
starts rather than lost when the step ends.

Outside a pod nothing is refused. The kubelet sets ``KUBERNETES_SERVICE_HOST`` in every container
it starts, whatever the pod's ``enableServiceLinks``. A generic ephemeral volume mounted
anywhere but ``WORK_DIRECTORY`` looks like any other claim in mountinfo (a CSI device under the
kubelet's pod directory), so where mountinfo sees a claim, the pod's own object decides: read
from the API server with the pod's service-account token (deploy/'s ``platform-dr`` account may
get pods in its namespace), it names the volume mounted at that path and whether it is an
``ephemeral`` one. When the object cannot be read (no token mounted, no permission, no answer),
mountinfo alone decides: what cannot be told is not refused.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platform_orchestration.errors import InvalidDeclaration
from platform_orchestration.kube import WORK_DIRECTORY

MOUNTINFO = Path("/proc/self/mountinfo")
POD_ENVIRONMENT = "KUBERNETES_SERVICE_HOST"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where the kubelet mounts the pod's token, the API server's CA and the pod's namespace."""
API_TIMEOUT_SECONDS = 5.0
_READ_IT = object()  # deleted_with_the_pod's default: read this pod's object when it is needed
_MEMORY_FILE_SYSTEMS = ("tmpfs", "ramfs")


class EphemeralTarget(InvalidDeclaration):
    """A cluster meant to be kept would be brought up on storage deleted with this pod."""


@dataclass(frozen=True)
class Mount:
    root: str         # the directory of the mounted file system that appears here
    mount_point: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo writes a space, tab, newline or backslash in a path as an octal escape.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` document, in its order (later ones on top)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) < separator + 3:
            continue
        mounts.append(Mount(root=_unescape(fields[3]), mount_point=_unescape(fields[4]),
                            fs_type=fields[separator + 1], source=_unescape(fields[separator + 2])))
    return mounts


def _existing(path: Path) -> Path:
    """``path`` with symlinks resolved, through its nearest existing ancestor (a restore's
    target directory need not exist yet)."""
    path = Path(os.path.abspath(path))
    missing: list[str] = []
    while not path.exists() and path != path.parent:
        missing.append(path.name)
        path = path.parent
    return Path(os.path.realpath(path)).joinpath(*reversed(missing))


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` lies on: the one with the longest mount point above it, the last
    mounted of those that share it."""
    best: Mount | None = None
    for mount in mounts:
        point = Path(mount.mount_point)
        if (path == point or point in path.parents) and (
                best is None or len(point.parts) >= len(Path(best.mount_point).parts)):
            best = mount
    return best


def read_own_pod(environ: Mapping[str, str], *, service_account: Path | None = None,
                 timeout: float = API_TIMEOUT_SECONDS) -> dict[str, Any] | None:
    """This pod's object (``GET /api/v1/namespaces/NS/pods/NAME``, NAME the pod's ``HOSTNAME``),
    or None when it cannot be read: no token mounted, no permission, no answer in ``timeout``.
    The token goes in the request's header and nowhere else."""
    host, name = environ.get(POD_ENVIRONMENT, ""), environ.get("HOSTNAME", "")
    service_account = service_account or SERVICE_ACCOUNT
    try:
        token = (service_account / "token").read_text().strip()
        namespace = (service_account / "namespace").read_text().strip()
        context = ssl.create_default_context(cafile=str(service_account / "ca.crt"))
    except (OSError, ssl.SSLError):
        return None
    if not (host and name and token and namespace):
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    url = (f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}/api/v1/namespaces/"
           f"{urllib.parse.quote(namespace, safe='')}/pods/{urllib.parse.quote(name, safe='')}")
    # No proxy: the API server is the cluster's own service, and a proxy would see the token.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as answer:
            pod = json.load(answer)
    except (OSError, ValueError):  # URLError and HTTPError (403, 404) are OSErrors
        return None
    return pod if isinstance(pod, dict) else None


def _pod_volume_at(pod: Mapping[str, Any], mount_point: str) -> str | None:
    """What deletes the volume the pod mounts at ``mount_point``, from its spec, or None. Every
    container's mounts are looked at: a step pod has one container, and a sidecar mounting
    something else at the very same path is not a case worth telling apart."""
    spec = pod.get("spec") or {}
    volumes = {volume.get("name"): volume for volume in spec.get("volumes") or []}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for mount in container.get("volumeMounts") or []:
            if (mount.get("mountPath") or "").rstrip("/") != mount_point.rstrip("/"):
                continue
            volume = volumes.get(mount.get("name")) or {}
            if "ephemeral" in volume:
                return (f"the generic ephemeral volume {mount.get('name')!r} at {mount_point} (a claim made for the "
                        "pod and deleted with it)")
            if "emptyDir" in volume:
                return f"the emptyDir volume {mount.get('name')!r} at {mount_point}"
    return None


def deleted_with_the_pod(path: Path, *, environ: Mapping[str, str] | None = None,
                         mountinfo: str | None = None, pod: Any = _READ_IT) -> str | None:
    """What deletes ``path`` with this process's pod ("the container's own file system", "an
    emptyDir volume"...), or None when it is kept or this process runs in no pod. ``pod`` is
    this pod's object, None when it is not known; by default it is read from the API server,
    only when mountinfo alone cannot tell (see the module)."""
    environ = os.environ if environ is None else environ
    if not environ.get(POD_ENVIRONMENT):
        return None
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None  # no procfs: nothing to tell by
    where = _existing(path)
    mount = mount_of(where, parse_mountinfo(mountinfo))
    if mount is None:
        return None
    work = {WORK_DIRECTORY, environ.get("TMPDIR", "").rstrip("/") or WORK_DIRECTORY}
    if mount.mount_point in work:
        return f"the step's work volume at {mount.mount_point} (a claim made for the pod and deleted with it)"
    if mount.mount_point == "/" or mount.fs_type == "overlay":
        return "the container's own file system (its writable layer)"
    if mount.fs_type in _MEMORY_FILE_SYSTEMS:
        return f"a memory-backed {mount.fs_type} at {mount.mount_point}"
    if "/kubernetes.io~empty-dir/" in f"{mount.root}/" or "/kubernetes.io~empty-dir/" in f"{mount.source}/":
        return f"an emptyDir volume at {mount.mount_point}"
    if pod is _READ_IT:
        pod = read_own_pod(environ)
    return _pod_volume_at(pod, mount.mount_point) if pod else None


def refuse_unless_kept(path: Path, what: str, step: str, *, environ: Mapping[str, str] | None = None,
                       mountinfo: str | None = None, pod: Any = _READ_IT) -> None:
    """Raise EphemeralTarget when ``path`` (where ``what`` would bring up a cluster meant to be
    kept) is deleted with this pod; ``step`` is the op whose ``per_step_k8s_config`` can mount a
    claim there."""
    reason = deleted_with_the_pod(path, environ=environ, mountinfo=mountinfo, pod=pod)
    if reason is None:
        return
    environ = os.environ if environ is None else environ
    pod = environ.get("HOSTNAME", "")
    raise EphemeralTarget(
        f"{what}: target directory {path} is on {reason}, which Kubernetes deletes with this pod"
        f"{f' ({pod})' if pod else ''}: the cluster would be lost when the step ends. Mount a "
        f"PersistentVolumeClaim you keep at {path} (execution.config.per_step_k8s_config.{step}), or run it "
        "on the host that will keep the cluster")
