"""What one Kubernetes cluster runs, observed through its API server, and the drift checks that
judge it. Every check looks at the cluster's *declared* workloads (the fleet's ``workloads``),
not at everything the cluster runs (kube-system and other teams' namespaces are not ours):

* ``cluster_reachable``: the API server answered;
* ``version_supported``: its minor version is inside the cluster's ``versions`` window;
* ``workloads_healthy``: every declared workload exists and is healthy (kubectl's rules);
* ``deployments_autoscaled``: every declared Deployment not marked ``scalable: false`` is the
  ``scaleTargetRef`` of a HorizontalPodAutoscaler in its namespace;
* ``containers_sized``: every container and init container of the declared Deployments and
  StatefulSets has requests *and* limits for both cpu and memory;
* ``secrets_from_vault``: every Secret their pod templates use (secret volumes, projected
  secrets, ``secretKeyRef``, ``envFrom.secretRef``) exists and comes from Vault: it is owned
  (``ownerReferences``) by a Vault Secrets Operator resource (``secrets.hashicorp.com``:
  VaultStaticSecret, VaultDynamicSecret, VaultPKISecret) or by an External Secrets
  ``ExternalSecret`` (``external-secrets.io``; its store's provider is not checked), or carries
  the operator's label ``app.kubernetes.io/managed-by: hashicorp-vso``. A Secret made by hand,
  by a Helm chart or by another operator fails.

An unreachable cluster fails ``cluster_reachable``, and every other check with "not observed".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from platform_orchestration.fleet.model import KubernetesCluster
from platform_orchestration.kube.client import WORKLOAD_API, KubeApi, KubeError
from platform_orchestration.kube.health import running_revision, workload_health

__all__ = [
    "DRIFT_CHECKS",
    "VAULT_MANAGED_BY",
    "VAULT_OWNER_GROUPS",
    "ClusterObservation",
    "DriftFinding",
    "WorkloadState",
    "observe_cluster",
]

CLUSTER_REACHABLE = "cluster_reachable"
VERSION_SUPPORTED = "version_supported"
WORKLOADS_HEALTHY = "workloads_healthy"
DEPLOYMENTS_AUTOSCALED = "deployments_autoscaled"
CONTAINERS_SIZED = "containers_sized"
SECRETS_FROM_VAULT = "secrets_from_vault"
DRIFT_CHECKS: dict[str, str] = {
    CLUSTER_REACHABLE: "The cluster's API server answers.",
    VERSION_SUPPORTED: "The cluster's Kubernetes minor version is inside its supported window.",
    WORKLOADS_HEALTHY: "Every declared workload exists and is healthy (kubectl's rollout rules, "
                       "a CloudNativePG Cluster's phase).",
    DEPLOYMENTS_AUTOSCALED: "Every scalable declared Deployment has a HorizontalPodAutoscaler.",
    CONTAINERS_SIZED: "Every container of the declared workloads has cpu and memory requests and limits.",
    SECRETS_FROM_VAULT: "Every Secret the declared workloads use exists and comes from Vault "
                        "(Vault Secrets Operator or External Secrets).",
}
VAULT_OWNER_GROUPS = ("secrets.hashicorp.com", "external-secrets.io")
VAULT_MANAGED_BY = ("hashicorp-vso",)


@dataclass(frozen=True)
class WorkloadState:
    kind: str
    namespace: str
    name: str
    present: bool
    healthy: bool
    reason: str = ""
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class DriftFinding:
    check: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ClusterObservation:
    cluster: str
    reachable: bool
    error: str = ""
    version: str | None = None
    nodes_total: int = 0
    nodes_ready: int = 0
    workloads: tuple[WorkloadState, ...] = ()
    findings: tuple[DriftFinding, ...] = field(default=())

    def finding(self, check: str) -> DriftFinding:
        return next(f for f in self.findings if f.check == check)


def _minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _node_ready(node: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def _pod_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}


def _containers(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    spec = _pod_spec(obj)
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def _unsized(container: Mapping[str, Any]) -> list[str]:
    resources = container.get("resources") or {}
    return [f"{kind}.{what}" for kind in ("requests", "limits") for what in ("cpu", "memory")
            if not (resources.get(kind) or {}).get(what)]


def secrets_used(obj: Mapping[str, Any]) -> set[str]:
    """Names of the Secrets a workload's pod template uses (volumes, projections, env)."""
    spec = _pod_spec(obj)
    names: set[str] = set()
    for volume in spec.get("volumes") or []:
        if (secret := volume.get("secret")) and secret.get("secretName"):
            names.add(secret["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (secret := source.get("secret")) and secret.get("name"):
                names.add(secret["name"])
    for container in _containers(obj):
        for env in container.get("env") or []:
            if (ref := (env.get("valueFrom") or {}).get("secretKeyRef")) and ref.get("name"):
                names.add(ref["name"])
        for source in container.get("envFrom") or []:
            if (ref := source.get("secretRef")) and ref.get("name"):
                names.add(ref["name"])
    return names


def from_vault(secret: Mapping[str, Any]) -> bool:
    """Whether a Secret comes from Vault, by the rule in the module's docstring."""
    meta = secret.get("metadata") or {}
    if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") in VAULT_MANAGED_BY:
        return True
    return any(str(owner.get("apiVersion", "")).split("/")[0] in VAULT_OWNER_GROUPS
               for owner in meta.get("ownerReferences") or [])


def _failed(detail: list[str], passed_detail: str) -> tuple[bool, str]:
    return (not detail, "; ".join(detail) if detail else passed_detail)


def observe_cluster(cluster: KubernetesCluster, connect: Callable[[KubernetesCluster], KubeApi]
                    ) -> ClusterObservation:
    """Observe ``cluster`` and judge it; an unreachable one is an observation too, never an error."""
    try:
        with connect(cluster) as api:
            return _observe(cluster, api)
    except KubeError as exc:
        findings = [DriftFinding(CLUSTER_REACHABLE, False, str(exc))]
        findings += [DriftFinding(check, False, f"not observed: cluster {cluster.name} is unreachable")
                     for check in DRIFT_CHECKS if check != CLUSTER_REACHABLE]
        return ClusterObservation(cluster.name, False, str(exc), findings=tuple(findings))


def _observe(cluster: KubernetesCluster, api: KubeApi) -> ClusterObservation:
    version = str(api.version().get("gitVersion") or "")
    nodes = api.list("v1", "Node")
    live: dict[tuple[str, str, str], dict[str, Any] | None] = {}
    states: list[WorkloadState] = []
    for workload in cluster.workloads:
        api_version = WORKLOAD_API[workload.kind].rsplit("/", 1)[0]
        obj = api.get_or_none(api_version, workload.kind, workload.namespace, workload.name)
        live[(workload.kind, workload.namespace, workload.name)] = obj
        if obj is None:
            states.append(WorkloadState(workload.kind, workload.namespace, workload.name, False, False, "missing"))
            continue
        health = workload_health(workload.kind, obj)
        states.append(WorkloadState(workload.kind, workload.namespace, workload.name, True, health.healthy,
                                    health.reason, running_revision(obj)))

    findings = [DriftFinding(CLUSTER_REACHABLE, True, f"{version}, {sum(map(_node_ready, nodes))} of "
                                                      f"{len(nodes)} nodes ready")]
    minor = _minor(version)
    low, high = _version_tuple(cluster.versions.min), _version_tuple(cluster.versions.max)
    window = f"supported {cluster.versions.min} to {cluster.versions.max}"
    findings.append(DriftFinding(VERSION_SUPPORTED, minor is not None and low <= minor <= high,
                                 f"{version or 'unknown version'} ({window})"))
    findings.append(DriftFinding(WORKLOADS_HEALTHY, *_failed(
        [f"{s.label}: {s.reason}" for s in states if not s.healthy],
        f"{len(states)} declared workloads healthy")))

    autoscaled: dict[str, set[str]] = {}
    unscaled = []
    for workload in cluster.workloads:
        if workload.kind != "Deployment" or not workload.scalable or live[("Deployment", workload.namespace,
                                                                            workload.name)] is None:
            continue
        if workload.namespace not in autoscaled:
            autoscaled[workload.namespace] = {
                (hpa.get("spec") or {}).get("scaleTargetRef", {}).get("name")
                for hpa in api.list("autoscaling/v2", "HorizontalPodAutoscaler", workload.namespace)
                if (hpa.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == "Deployment"}
        if workload.name not in autoscaled[workload.namespace]:
            unscaled.append(f"Deployment {workload.namespace}/{workload.name} has no HorizontalPodAutoscaler")
    findings.append(DriftFinding(DEPLOYMENTS_AUTOSCALED, *_failed(unscaled, "every scalable Deployment autoscaled")))

    unsized, bad_secrets = [], []
    secrets_seen: dict[tuple[str, str], dict[str, Any] | None] = {}
    for (kind, namespace, name), obj in live.items():
        if obj is None or kind == "Cluster":
            continue
        for container in _containers(obj):
            if missing := _unsized(container):
                unsized.append(f"{kind} {namespace}/{name} container {container.get('name')}: "
                               f"no {', '.join(missing)}")
        for secret_name in sorted(secrets_used(obj)):
            key = (namespace, secret_name)
            if key not in secrets_seen:
                secrets_seen[key] = api.get_or_none("v1", "Secret", namespace, secret_name)
            secret = secrets_seen[key]
            if secret is None:
                bad_secrets.append(f"{kind} {namespace}/{name} uses Secret {secret_name}, which does not exist")
            elif not from_vault(secret):
                bad_secrets.append(f"{kind} {namespace}/{name} uses Secret {secret_name}, not from Vault "
                                   "(no Vault Secrets Operator or ExternalSecret owner)")
    findings.append(DriftFinding(CONTAINERS_SIZED, *_failed(unsized, "every container has requests and limits")))
    findings.append(DriftFinding(SECRETS_FROM_VAULT, *_failed(
        bad_secrets, f"{len(secrets_seen)} Secrets used, all from Vault")))
    return ClusterObservation(cluster.name, True, "", version, len(nodes), sum(map(_node_ready, nodes)),
                              tuple(states), tuple(findings))
