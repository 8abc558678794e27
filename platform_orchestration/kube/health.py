"""Is a workload healthy, and is it running the revision a rollout applied? Computed from the
object as the API serves it, the way ``kubectl rollout status`` does for Deployments and
StatefulSets, and from a CloudNativePG Cluster's ``status.phase``.

A workload whose controller has not yet seen its newest spec (``status.observedGeneration``
below ``metadata.generation``) is never healthy: its status describes an older spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CNPG_HEALTHY_PHASE",
    "REVISION_ANNOTATION",
    "Health",
    "running_revision",
    "workload_health",
]

CNPG_HEALTHY_PHASE = "Cluster in healthy state"
REVISION_ANNOTATION = "platform-dr/revision"
"""Set by the rollout on every object it applies and on each pod template: the revision the
object (and the pods made from it) came from."""


@dataclass(frozen=True)
class Health:
    """``healthy`` and, when not, why (one line, kubectl's words where it has some)."""

    healthy: bool
    reason: str = ""


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def _generation_seen(obj: Mapping[str, Any]) -> Health | None:
    generation = _int((obj.get("metadata") or {}).get("generation"))
    observed = _int((obj.get("status") or {}).get("observedGeneration"))
    if generation > observed:
        return Health(False, f"waiting for the controller to observe generation {generation} (observed {observed})")
    return None


def deployment_health(obj: Mapping[str, Any]) -> Health:
    """kubectl's DeploymentStatusViewer: observed generation, ProgressDeadlineExceeded, updated,
    old replicas gone, available."""
    if (stale := _generation_seen(obj)) is not None:
        return stale
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return Health(False, f"rollout exceeded its progress deadline: {condition.get('message', '')}".rstrip(": "))
    replicas = _int(spec.get("replicas"), 1)
    updated, total = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
    available = _int(status.get("availableReplicas"))
    if updated < replicas:
        return Health(False, f"{updated} of {replicas} updated replicas")
    if total > updated:
        return Health(False, f"{total - updated} old replicas pending termination")
    if available < updated:
        return Health(False, f"{available} of {updated} updated replicas available")
    return Health(True)


def statefulset_health(obj: Mapping[str, Any]) -> Health:
    """kubectl's StatefulSetStatusViewer: observed generation, ready replicas, and (rolling
    update) currentRevision caught up with updateRevision."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not _int(status.get("observedGeneration")):
        return Health(False, "waiting for the controller to observe the StatefulSet")
    if (stale := _generation_seen(obj)) is not None:
        return stale
    replicas = _int(spec.get("replicas"), 1)
    ready = _int(status.get("readyReplicas"))
    if ready < replicas:
        return Health(False, f"{ready} of {replicas} pods ready")
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy != "RollingUpdate":
        return Health(True)  # OnDelete: kubectl cannot tell either
    partition = _int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition"))
    if partition:
        updated = _int(status.get("updatedReplicas"))
        if updated < replicas - partition:
            return Health(False, f"{updated} of {replicas - partition} partitioned pods updated")
        return Health(True)
    if status.get("updateRevision") != status.get("currentRevision"):
        return Health(False, f"{_int(status.get('updatedReplicas'))} of {replicas} pods at revision "
                             f"{status.get('updateRevision')}")
    return Health(True)


def cnpg_cluster_health(obj: Mapping[str, Any]) -> Health:
    """A CloudNativePG Cluster: its operator reports ``status.phase``."""
    phase = (obj.get("status") or {}).get("phase")
    if phase == CNPG_HEALTHY_PHASE:
        return Health(True)
    return Health(False, f"phase {phase!r}" if phase else "no phase reported yet")


def workload_health(kind: str, obj: Mapping[str, Any]) -> Health:
    """The health of a Deployment, a StatefulSet or a CloudNativePG Cluster."""
    if kind == "Deployment":
        return deployment_health(obj)
    if kind == "StatefulSet":
        return statefulset_health(obj)
    if kind == "Cluster":
        return cnpg_cluster_health(obj)
    raise ValueError(f"no health rule for kind {kind!r}")


def running_revision(obj: Mapping[str, Any]) -> str | None:
    """The revision a workload runs: its pod template's revision annotation (a Deployment or
    StatefulSet), or its own (a CloudNativePG Cluster, whose pods its operator makes)."""
    template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    if "template" in (obj.get("spec") or {}):
        return (template.get("annotations") or {}).get(REVISION_ANNOTATION)
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
