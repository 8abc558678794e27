"""Sensors that act: they read each database's recoverability from the stores (through
FleetProtection, as the CLI would) and request the run that repairs what they find.

* ``repair_missing_copies``: a required store lacks the latest backup -> a copy run;
* ``escalate_failed_drills``: a failed drill -> a drill from another store; that failing too ->
  a fresh backup and a drill of it, and a page; more failures -> a page each;
* ``notice_stale_backups``: the newest verified backup is older than the RPO (or there is none),
  whether or not a run failed -> a backup run and an alert.

Why a sensor reading the stores, not Dagster's freshness policies: the per-database assets are
partitioned by database (a static partition set), and Dagster 1.13's freshness machinery judges
an asset by its last materialization of any partition (``FreshnessPolicy.time_window``,
``build_last_update_freshness_checks``) or only time-window partitions
(``build_time_partition_freshness_checks``); it would also miss backups the break-glass CLI
took, which never materialize an asset. Where it fits, the whole-fleet ``compliance_report``
asset (not partitioned, refreshed hourly), it is used: see assets/__init__.py.

No duplicates: each remedy's key (from the backup or drill id that called for it) is its run
key, so Dagster never launches it twice, and it is kept in the sensor's cursor, so a later tick
does not request it again; a page is kept there only once it was delivered, so one that could
not be sent is tried again next tick. Nothing missed: every tick decides from the stores' current
state, not from events it might have slept through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import dagster as dg

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.observability.notify import Notification
from platform_orchestration.observability.recoverability import DatabaseRecoverability
from platform_orchestration.observability.remedies import (
    Remedy,
    plan_copy_repairs,
    plan_drill_escalation,
    plan_staleness,
)
from platform_orchestration.resources import AlertsResource, FleetResource

REMEDY_TAG = "platform/remedy"
# The job each kind of remedy runs (declared in jobs/protection.yaml).
REMEDY_JOBS = {"copy": "repair_copies", "drill_elsewhere": "run_restore_drills",
               "backup_and_drill": "backup_and_drill", "backup": "take_backups"}
ALERT_NAMES = {"page": "PlatformDRDrillFailing", "backup": "PlatformDRBackupStale"}
CURSOR_KEYS_KEPT = 2000
DEFAULT_INTERVAL_SECONDS = 300


def handled_keys(cursor: str | None) -> list[str]:
    """The remedy keys a sensor already acted on, oldest first, from its cursor."""
    if not cursor:
        return []
    try:
        keys = json.loads(cursor).get("handled", [])
    except (ValueError, AttributeError):
        return []  # a cursor of another shape (reset by hand): start over; run keys still dedupe
    return [k for k in keys if isinstance(k, str)]


def cursor_of(keys: Sequence[str]) -> str:
    return json.dumps({"handled": list(keys)[-CURSOR_KEYS_KEPT:]})


def _merged(base: Mapping, extra: Mapping) -> dict:
    """`base` with `extra` laid over it, mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (_merged(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
                       else value)
    return merged


def _run_request(remedy: Remedy, repository: dg.RepositoryDefinition | None = None) -> dg.RunRequest:
    job_name = REMEDY_JOBS[remedy.kind]
    run_config: dict = {}
    if remedy.kind == "drill_elsewhere":
        # A request's run config replaces its partition's (Dagster 1.13), so the partition's own
        # (the k8s executor's per-step pod sizes of this database) is laid under the store chosen.
        partition = (repository.get_job(job_name).get_run_config_for_partition_key(remedy.database)
                     if repository is not None and repository.has_job(job_name) else {})
        run_config = _merged(partition, {"ops": {"restore_drills": {"config": {"source_store": remedy.store}}}})
    return dg.RunRequest(run_key=remedy.key, job_name=job_name, partition_key=remedy.database,
                         run_config=run_config, tags={REMEDY_TAG: remedy.kind})


def _notification(remedy: Remedy) -> Notification:
    return Notification(key=remedy.key, alertname=ALERT_NAMES.get(remedy.kind, "PlatformDRRemedy"),
                        summary=remedy.reason.split(";")[0], description=remedy.reason,
                        severity=remedy.severity, labels={"database": remedy.database, "remedy": remedy.kind})


def evaluate_remedies(context: dg.SensorEvaluationContext, views: Sequence[DatabaseRecoverability],
                      planner: Callable[[DatabaseRecoverability], list[Remedy]], alerts: AlertsResource,
                      notify_kinds: frozenset[str]) -> dg.SensorResult:
    handled = handled_keys(context.cursor)
    seen = set(handled)
    requests: list[dg.RunRequest] = []
    told: list[str] = []
    for view in views:
        for remedy in planner(view):
            if remedy.key in seen:
                continue
            if remedy.kind in notify_kinds:
                try:
                    reached = alerts.notify(_notification(remedy))
                except PlatformError as exc:
                    context.log.error(f"{remedy.key}: alert not delivered, will retry next tick: {one_line(exc)}")
                    if remedy.kind == "page":
                        continue  # not marked handled: the next tick sends it again
                    reached = []
                told.append(f"{remedy.key} -> {', '.join(reached) or 'log only'}")
                context.log.warning(remedy.reason)
            if remedy.kind in REMEDY_JOBS:
                requests.append(_run_request(remedy, context.repository_def))
                context.log.info(f"requesting {REMEDY_JOBS[remedy.kind]} for {remedy.database}: {remedy.reason}")
            handled.append(remedy.key)
            seen.add(remedy.key)
    skip = None if requests or told else "every database is as its policy requires, or already being repaired"
    return dg.SensorResult(run_requests=requests, cursor=cursor_of(handled), skip_reason=skip)


def _remedy_sensor(name: str, description: str, planner: Callable[[DatabaseRecoverability], list[Remedy]],
                   jobs: Sequence[object], notify_kinds: frozenset[str], interval: int) -> dg.SensorDefinition:
    @dg.sensor(name=name, jobs=list(jobs), minimum_interval_seconds=interval, description=description,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def _sensor(context: dg.SensorEvaluationContext, fleet: FleetResource, alerts: AlertsResource) -> dg.SensorResult:
        with fleet.protection() as protection:
            views = protection.recoverability()
        return evaluate_remedies(context, views, planner, alerts, notify_kinds)

    return _sensor


def build_remedy_sensors(jobs_by_name: Mapping[str, object],
                         interval: int = DEFAULT_INTERVAL_SECONDS) -> list[dg.SensorDefinition]:
    """The three acting sensors, targeting the jobs of REMEDY_JOBS (which must exist)."""
    def jobs(*names: str) -> list[object]:
        return [jobs_by_name[n] for n in names]

    return [
        _remedy_sensor("repair_missing_copies",
                       "A required store lacks the latest backup (missing or only older ones): request a copy run.",
                       plan_copy_repairs, jobs("repair_copies"), frozenset(), interval),
        _remedy_sensor("escalate_failed_drills",
                       "A failed drill: drill from another store; failing again: a fresh backup and its drill, "
                       "and page; more failures page again.",
                       plan_drill_escalation, jobs("run_restore_drills", "backup_and_drill"),
                       frozenset({"page"}), interval),
        _remedy_sensor("notice_stale_backups",
                       "The newest verified backup is older than the RPO (or there is none), whatever the cause: "
                       "request a backup and alert.",
                       plan_staleness, jobs("take_backups"), frozenset({"backup"}), interval),
    ]
