"""The fleet's Kubernetes clusters observed, one partition per cluster, with the drift checks of
platform_orchestration.rollout.observe judged in the same step (one observation, six verdicts).
Thin: the observation and the rules live in the rollout package."""

import warnings
from typing import Any

import dagster as dg

from platform_orchestration.assets import OWNERS
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.kube.client import connect
from platform_orchestration.resources import FleetResource
from platform_orchestration.rollout.observe import DRIFT_CHECKS, observe_cluster

KUBERNETES_GROUP = "kubernetes_clusters"
OBSERVE_JOB = "observe_kubernetes_clusters"


def kubernetes_partitions(names: list[str]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(names)


def build_kubernetes_assets(partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetsDefinition]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset="kubernetes_clusters", description=description,
                                   partitions_def=partitions)
                 for name, description in DRIFT_CHECKS.items()]

    @dg.asset(group_name=KUBERNETES_GROUP, kinds={"kubernetes"}, owners=OWNERS, partitions_def=partitions,
              check_specs=specs, op_tags=k8s_op_tags("kubernetes_clusters"),
              description="One Kubernetes cluster as its API server reports it: version, nodes ready, the "
                          "declared workloads and their health; the drift checks judge it.")
    def kubernetes_clusters(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        cluster = fleet.load().kubernetes_cluster(context.partition_key)
        secrets, _ = fleet.secrets.providers()
        observation = observe_cluster(cluster, lambda c: connect(c, secrets))
        rows = ["| workload | present | healthy | revision | reason |", "|---|---|---|---|---|"]
        rows += [f"| {w.label} | {w.present} | {w.healthy} | {w.revision or '-'} | {w.reason or '-'} |"
                 for w in observation.workloads]
        return dg.MaterializeResult(
            metadata={"cloud": cluster.cloud, "reachable": observation.reachable,
                      "error": observation.error or "none", "server_version": observation.version or "unknown",
                      "nodes_ready": dg.MetadataValue.int(observation.nodes_ready),
                      "nodes_total": dg.MetadataValue.int(observation.nodes_total),
                      "workloads": dg.MetadataValue.md("\n".join(rows))},
            check_results=[dg.AssetCheckResult(check_name=f.check, passed=f.passed, description=f.detail,
                                               severity=dg.AssetCheckSeverity.ERROR if f.check in (
                                                   "cluster_reachable", "workloads_healthy")
                                               else dg.AssetCheckSeverity.WARN,
                                               metadata={"detail": f.detail})
                           for f in observation.findings])

    return [kubernetes_clusters]


def build_observation_job() -> Any:
    return dg.define_asset_job(OBSERVE_JOB, selection=dg.AssetSelection.assets("kubernetes_clusters"),
                               description="Observe one Kubernetes cluster and run its drift checks.")


def build_observation_schedule(job: Any, names: list[str]) -> dg.ScheduleDefinition:
    """Every cluster observed every 15 minutes, one run per cluster."""

    @dg.schedule(name="kubernetes_drift_every_15_minutes", cron_schedule="*/15 * * * *", job=job,
                 execution_timezone="UTC")
    def kubernetes_drift(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        return [dg.RunRequest(partition_key=name, run_key=f"{name}:{tick}") for name in names]

    return kubernetes_drift
