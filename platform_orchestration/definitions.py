"""The one place this code location's Definitions are assembled.

The fleet file (PLATFORM_FLEET, default deploy/fleet/demo.yaml) decides the database
partitions; jobs/*.yaml and schedules/*.yaml decide jobs and schedules. The executor is
in-process/multiprocess locally and Kubernetes (one pod per step) when
PLATFORM_EXECUTOR=k8s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from platform_orchestration.assets import build_assets, database_partitions
from platform_orchestration.assets.kubernetes import (
    build_kubernetes_assets,
    build_observation_job,
    build_observation_schedule,
    kubernetes_partitions,
)
from platform_orchestration.assets.physical import build_physical_assets, cluster_partitions
from platform_orchestration.assets.replication import build_replication_assets, standby_partitions
from platform_orchestration.checks import build_checks
from platform_orchestration.checks.physical import build_physical_checks
from platform_orchestration.checks.replication import build_replication_checks
from platform_orchestration.fleet import Fleet, fleet_path_from_env
from platform_orchestration.kube import (
    link_run_tags,
    per_cluster_step_k8s_config,
    per_step_k8s_config,
    sized_steps_k8s_config,
)
from platform_orchestration.ops import build_disaster_restore_job
from platform_orchestration.ops.batches import batch_executor, batch_run_config, build_batch_job
from platform_orchestration.ops.rollout import build_rollout_jobs
from platform_orchestration.resources import (
    AlertsResource,
    FleetResource,
    MetricsResource,
    SecretsResource,
    load_fleet_once,
)
from platform_orchestration.rollout.plans import load_plans, plans_path_from_env
from platform_orchestration.sensors import build_remedy_sensors, report_failed_runs, retry_undelivered_alerts
from platform_orchestration.specs import (
    AssetJobSpec,
    build_jobs,
    build_schedules,
    load_job_specs,
    load_schedule_specs,
)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def _spec_dir(env_name: str, default: str) -> Path:
    return Path(os.environ.get(env_name) or REPOSITORY_ROOT / default)


def select_executor(name: str) -> dg.ExecutorDefinition:
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    raise ValueError(f"PLATFORM_EXECUTOR: expected one of in_process, multiprocess, k8s, got {name!r}")


# Assets that send a database's data to stores in other clouds: runs selecting them carry one
# tag per cross-cloud link, which deploy/dagster.yaml limits (egress never saturates a link).
EGRESS_ASSETS = frozenset({"backups", "backup_copies"})


def _run_tags_for(fleet: Fleet) -> Callable[[Sequence[str], str], dict[str, str]]:
    def tags(assets: Sequence[str], database: str) -> dict[str, str]:
        return dict(link_run_tags(fleet, database)) if EGRESS_ASSETS.intersection(assets) else {}

    return tags


def _run_config_for(fleet: Fleet, executor: str) -> Callable[[str], dict[str, Any]] | None:
    """The k8s executor's per-step pod sizes for a run of one database (other executors take none)."""
    if executor != "k8s":
        return None
    return lambda database: {"execution": {"config": {"per_step_k8s_config": per_step_k8s_config(
        fleet.database(database))}}}


def _cluster_run_config_for(fleet: Fleet, executor: str) -> Callable[[str], dict[str, Any]] | None:
    """The same for a run of one cluster or standby: its drills' pods sized from the cluster."""
    if executor != "k8s":
        return None
    return lambda cluster: {"execution": {"config": {"per_step_k8s_config": per_cluster_step_k8s_config(
        fleet, cluster)}}}


def _kubernetes_definitions(fleet: Fleet) -> tuple[list[Any], list[Any], list[Any]]:
    """The fleet's Kubernetes clusters observed for drift (a partition each, a schedule) and one
    rollout job per plan of the plans file (PLATFORM_ROLLOUT_PLANS, default deploy/rollout/plans.yaml);
    nothing for a fleet without Kubernetes clusters."""
    names = [cluster.name for cluster in fleet.kubernetes]
    if not names:
        return [], [], []
    partitions = kubernetes_partitions(names)
    observe = build_observation_job()
    plans_file = plans_path_from_env()
    rollouts = build_rollout_jobs(load_plans(plans_file, fleet)) if plans_file.is_file() else []
    return build_kubernetes_assets(partitions), [observe, *rollouts], [build_observation_schedule(observe, names)]


def build_definitions(fleet_file: Path | None = None) -> dg.Definitions:
    fleet_file = fleet_file or fleet_path_from_env()
    fleet = load_fleet_once(fleet_file)
    partitions = database_partitions([db.name for db in fleet.databases])
    physical_partitions = cluster_partitions([cluster.name for cluster in fleet.physical_clusters()])
    physical_assets = build_physical_assets(physical_partitions)
    replica_partitions = standby_partitions([cluster.name for cluster in fleet.standby_clusters()])
    replication_assets = build_replication_assets(replica_partitions)
    assets = [*build_assets(partitions), *physical_assets, *replication_assets]
    assets_by_name = {a.key.to_user_string(): a for a in assets}
    checks = [*build_checks(assets_by_name, partitions), *build_physical_checks(assets_by_name, physical_partitions),
              *build_replication_checks(assets_by_name, replica_partitions)]
    job_specs = load_job_specs(_spec_dir("PLATFORM_JOBS_DIR", "jobs"))
    per_cluster_assets = {a.key.to_user_string() for a in physical_assets}
    per_standby_assets = {a.key.to_user_string() for a in replication_assets if a.partitions_def is not None}
    partitioned_assets = {name for name, asset in assets_by_name.items()
                          if asset.partitions_def is not None and name not in per_cluster_assets | per_standby_assets}
    executor = os.environ.get("PLATFORM_EXECUTOR", "multiprocess")
    jobs = build_jobs(job_specs, set(assets_by_name), build_disaster_restore_job,
                      database_partitions=partitions, partitioned_assets=partitioned_assets,
                      run_tags_for=_run_tags_for(fleet), run_config_for=_run_config_for(fleet, executor),
                      cluster_partitions=physical_partitions, cluster_partitioned_assets=per_cluster_assets,
                      standby_partitions=replica_partitions, standby_partitioned_assets=per_standby_assets,
                      cluster_run_config_for=_cluster_run_config_for(fleet, executor))
    asset_jobs = [spec for spec in job_specs if isinstance(spec, AssetJobSpec)]
    partitioned = {spec.name for spec in asset_jobs if any(name in partitioned_assets for name in spec.assets)}
    per_cluster = {spec.name for spec in asset_jobs if any(name in per_cluster_assets for name in spec.assets)}
    per_standby = {spec.name for spec in asset_jobs if any(name in per_standby_assets for name in spec.assets)}
    # A per-cluster schedule keeps within its clusters' policy: base backups within base_backup,
    # archive observations within wal_max_lag,
    # copies within copy_max_lag.
    cadences = {spec.name: "base_backup" if "physical_base_backups" in spec.assets
                else "wal_max_lag" if "wal_archiving" in spec.assets else "copy_max_lag"
                for spec in asset_jobs if spec.name in per_cluster and set(spec.assets) & {
                    "physical_base_backups", "wal_archiving", "physical_copies"}}
    asset_job_specs = {spec.name: spec for spec in asset_jobs}
    batch_jobs: dict[str, dg.JobDefinition] = {}

    def batch_job_for(name: str) -> dg.JobDefinition:
        if name not in batch_jobs:
            spec = asset_job_specs[name]
            # Multiprocess runs fork their steps from a preloaded server; in_process and k8s as chosen.
            batch_jobs[name] = build_batch_job(name, spec.assets, spec.description,
                                               batch_executor() if executor == "multiprocess" else None)
        return batch_jobs[name]

    run_tags_for = _run_tags_for(fleet)

    def batch_run_tags_for(name: str, members: Sequence[str]) -> dict[str, str]:
        # A batch sends data over every link any of its databases does (the queue's egress limits).
        tags: dict[str, str] = {}
        for database in members:
            tags.update(run_tags_for(asset_job_specs[name].assets, database))
        return tags

    def batch_run_config_for(members: Sequence[str]) -> dict[str, Any]:
        # On Kubernetes one op's pods serve every database of the batch: sized for the largest.
        if executor != "k8s":
            return batch_run_config(members)
        return batch_run_config(members, sized_steps_k8s_config(fleet.database(name) for name in members))

    schedules = build_schedules(load_schedule_specs(_spec_dir("PLATFORM_SCHEDULES_DIR", "schedules")),
                                jobs, fleet, partitioned, batch_job_for=batch_job_for,
                                batch_run_tags_for=batch_run_tags_for, batch_run_config_for=batch_run_config_for,
                                cluster_partitioned_jobs=per_cluster, cluster_job_cadences=cadences,
                                standby_partitioned_jobs=per_standby)
    secrets = SecretsResource.from_environment()
    kubernetes_assets, kubernetes_jobs, kubernetes_schedules = _kubernetes_definitions(fleet)
    alerts_file = os.environ.get("PLATFORM_ALERTS_FILE") or str(REPOSITORY_ROOT / "var" / "alerts.jsonl")
    return dg.Definitions(
        assets=[*assets, *kubernetes_assets],
        asset_checks=checks,
        jobs=[*jobs, *kubernetes_jobs],
        schedules=[*schedules, *kubernetes_schedules],
        sensors=[report_failed_runs, retry_undelivered_alerts, *build_remedy_sensors({job.name: job for job in jobs})],
        resources={
            "fleet": FleetResource(fleet_file=str(Path(fleet_file).resolve()), secrets=secrets),
            "secrets": secrets,
            "alerts": AlertsResource(alerts_file=alerts_file,
                                     alertmanager_url=os.environ.get("PLATFORM_ALERTMANAGER_URL", ""),
                                     webhook_url_secret=os.environ.get("PLATFORM_ALERT_WEBHOOK", "")),
            "metrics": MetricsResource(pushgateway_url=os.environ.get("PLATFORM_PUSHGATEWAY_URL", "")),
        },
        executor=select_executor(executor),
    )


defs = build_definitions()
