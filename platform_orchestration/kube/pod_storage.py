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
anywhere but ``WORK_DIRECTORY`` looks like any other claim in mountinfo, so it is not seen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from platform_orchestration.errors import InvalidDeclaration
from platform_orchestration.kube import WORK_DIRECTORY

MOUNTINFO = Path("/proc/self/mountinfo")
POD_ENVIRONMENT = "KUBERNETES_SERVICE_HOST"
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


def deleted_with_the_pod(path: Path, *, environ: Mapping[str, str] | None = None,
                         mountinfo: str | None = None) -> str | None:
    """What deletes ``path`` with this process's pod ("the container's own file system", "an
    emptyDir volume"...), or None when it is kept or this process runs in no pod."""
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
    return None


def refuse_unless_kept(path: Path, what: str, step: str, *, environ: Mapping[str, str] | None = None,
                       mountinfo: str | None = None) -> None:
    """Raise EphemeralTarget when ``path`` (where ``what`` would bring up a cluster meant to be
    kept) is deleted with this pod; ``step`` is the op whose ``per_step_k8s_config`` can mount a
    claim there."""
    reason = deleted_with_the_pod(path, environ=environ, mountinfo=mountinfo)
    if reason is None:
        return
    environ = os.environ if environ is None else environ
    pod = environ.get("HOSTNAME", "")
    raise EphemeralTarget(
        f"{what}: target directory {path} is on {reason}, which Kubernetes deletes with this pod"
        f"{f' ({pod})' if pod else ''}: the cluster would be lost when the step ends. Mount a "
        f"PersistentVolumeClaim you keep at {path} (execution.config.per_step_k8s_config.{step}), or run it "
        "on the host that will keep the cluster")
