"""Prometheus metrics, named the way the field names them.

Like pgbackrest_exporter (``pgbackrest_backup_since_last_completion_seconds``), Velero
(``velero_backup_last_successful_timestamp``) and the CloudNativePG Barman Cloud plugin
(``barman_cloud_cloudnative_pg_io_last_available_backup_timestamp``), times are exported as
Unix timestamps in ``*_timestamp_seconds`` (an age is ``time() - x`` in PromQL, so a value
read late is never a wrong age), durations in ``*_duration_seconds``/``*_seconds`` and sizes in
``*_bytes``; a 0/1 outcome is ``*_success``. Every series is labelled with what it is about:
``database``, ``cluster``, ``policy``, ``store``, ``cloud``, ``check``.

Two sources, two sets of names (so Prometheus never sees one series from two places):

* :class:`RecoverabilityCollector` (the exporter, ``platform-dr exporter``) reads the stores,
  so backups taken by the break-glass CLI count as much as Dagster's: the truth that alert
  rules and the dashboard use (``platform_dr_backup_*``, ``platform_dr_copy_*``,
  ``platform_dr_drill_*``, ``platform_dr_check_success``...);
* :func:`push_run_metrics` pushes what one run just did to a Pushgateway
  (``platform_dr_run_*``), the batch-job pattern: seen at once, without waiting for a scrape.

Archive and replication lag are not exported: backups here are logical (pg_dump), there is no
WAL archive, and replication is the clusters' own business (their exporters have it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.observability.recoverability import DatabaseRecoverability

PREFIX = "platform_dr_"

# name -> (help, labels). The single list of what the exporter emits: the dashboard and rule
# tests check every metric they query against it.
EXPORTER_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "database_info": ("A database of the fleet, with its cluster and policy (always 1).",
                      ("database", "cluster", "policy")),
    "rpo_target_seconds": ("The RPO the database's policy sets.", ("database", "policy")),
    "rto_target_seconds": ("The RTO target of the database's drills.", ("database", "policy")),
    "drill_interval_seconds": ("How often the policy wants the database drilled.", ("database", "policy")),
    "backup_last_success_timestamp_seconds": (
        "Snapshot time (worker clock) of the newest readable backup in any required store.",
        ("database", "cluster")),
    "backup_last_duration_seconds": ("Wall time of the newest backup (start to manifest).", ("database", "cluster")),
    "backup_last_raw_bytes": ("Dump size of the newest backup before compression.", ("database", "cluster")),
    "backup_last_stored_bytes": ("Stored size of the newest backup (compressed, encrypted).", ("database", "cluster")),
    "backup_last_encrypted": ("1 when the newest backup is encrypted with a named key version.",
                              ("database", "cluster")),
    "copy_last_backup_timestamp_seconds": ("Snapshot time of the newest readable backup in this store.",
                                           ("database", "store", "cloud")),
    "copy_up_to_date": ("1 when this required store holds the database's newest backup.",
                        ("database", "store", "cloud")),
    "copy_backups": ("Readable backups of the database in this store.", ("database", "store", "cloud")),
    "copy_unreadable_objects": ("Manifests of the database in this store that cannot be read.",
                                ("database", "store", "cloud")),
    "store_up": ("1 when the store could be listed for this database.", ("database", "store", "cloud")),
    "drill_last_timestamp_seconds": ("When the last drill from this store finished.",
                                     ("database", "store", "cloud")),
    "drill_last_success": ("1 when the last drill from this store passed.", ("database", "store", "cloud")),
    "drill_last_rto_seconds": ("Measured RTO (fetch + restore) of the last drill from this store.",
                               ("database", "store", "cloud")),
    "drill_last_rpo_seconds": ("Data age at the start of the last drill from this store.",
                               ("database", "store", "cloud")),
    "drill_latest_success": ("1 when the database's latest drill (any store) passed.", ("database",)),
    "drill_last_passed_timestamp_seconds": ("When the database's last passing drill finished.", ("database",)),
    "drill_consecutive_failures": ("Drills failed since the last one that passed.", ("database",)),
    "check_success": ("1 when the compliance check passes for the database.", ("database", "check")),
    "compliant": ("1 when every compliance check of the database passes.", ("database", "policy")),
    "exporter_refresh_timestamp_seconds": ("When the exporter last read the stores successfully.", ()),
    "exporter_refresh_duration_seconds": ("How long the exporter's last read of the stores took.", ()),
    "exporter_refresh_success": ("1 when the exporter's last read of the stores succeeded.", ()),
}

RUN_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "run_last_success_timestamp_seconds": ("When a run's step last succeeded for the database.",
                                           ("database", "step")),
    "run_duration_seconds": ("How long the step took in its last successful run.", ("database", "step")),
    "run_bytes": ("Bytes the step stored (backups) in its last successful run.", ("database", "step")),
}


def metric_names() -> set[str]:
    """Every metric name the exporter and the run pushes emit, as Prometheus stores them."""
    return {PREFIX + name for name in (*EXPORTER_METRICS, *RUN_METRICS)}


def _ts(moment) -> float:  # noqa: ANN001 - a datetime
    return moment.timestamp()


class _Families:
    def __init__(self) -> None:
        self.families = {name: GaugeMetricFamily(PREFIX + name, help_, labels=list(labels))
                         for name, (help_, labels) in EXPORTER_METRICS.items()}

    def add(self, name: str, labels: Sequence[str], value: float | None) -> None:
        if value is not None:
            self.families[name].add_metric(list(labels), float(value))


def recoverability_families(views: Iterable[DatabaseRecoverability], *, refreshed_at: float | None,
                            refresh_seconds: float | None, refresh_ok: bool) -> list[Metric]:
    f = _Families()
    for r in views:
        db = r.database
        f.add("database_info", (db, r.cluster, r.policy), 1)
        f.add("rpo_target_seconds", (db, r.policy), r.rpo_target_seconds)
        f.add("rto_target_seconds", (db, r.policy), r.rto_target_seconds)
        f.add("drill_interval_seconds", (db, r.policy), r.drill_every_seconds)
        if r.latest is not None:
            f.add("backup_last_success_timestamp_seconds", (db, r.cluster), _ts(r.latest.snapshot_at))
            f.add("backup_last_duration_seconds", (db, r.cluster), r.latest.duration_seconds)
            f.add("backup_last_raw_bytes", (db, r.cluster), r.latest.raw_bytes)
            f.add("backup_last_stored_bytes", (db, r.cluster), r.latest.stored_bytes)
            f.add("backup_last_encrypted", (db, r.cluster), 1 if r.latest.key_version else 0)
        for c in r.copies:
            where = (db, c.store, c.cloud)
            f.add("store_up", where, 0 if c.unreachable else 1)
            if c.unreachable:
                continue  # unknown is not "missing": absent series, and store_up says why
            f.add("copy_up_to_date", where, 1 if c.holds_latest else 0)
            f.add("copy_backups", where, c.backups)
            f.add("copy_unreadable_objects", where, c.unreadable)
            if c.newest is not None:
                f.add("copy_last_backup_timestamp_seconds", where, _ts(c.newest.snapshot_at))
            drill = r.last_drill_from(c.store)
            if drill is not None:
                f.add("drill_last_timestamp_seconds", where, _ts(drill.finished_at))
                f.add("drill_last_success", where, 1 if drill.passed else 0)
                f.add("drill_last_rto_seconds", where, drill.rto_seconds)
                f.add("drill_last_rpo_seconds", where, drill.rpo_seconds)
        if r.last_drill is not None:
            f.add("drill_latest_success", (db,), 1 if r.last_drill.passed else 0)
        if r.last_passed_drill is not None:
            f.add("drill_last_passed_timestamp_seconds", (db,), _ts(r.last_passed_drill.finished_at))
        f.add("drill_consecutive_failures", (db,), len(r.failing_drills))
        for finding in r.assessment.findings:
            f.add("check_success", (db, finding.check), 1 if finding.passed else 0)
        f.add("compliant", (db, r.policy), 1 if r.verdict else 0)
    f.add("exporter_refresh_timestamp_seconds", (), refreshed_at)
    f.add("exporter_refresh_duration_seconds", (), refresh_seconds)
    f.add("exporter_refresh_success", (), 1 if refresh_ok else 0)
    return list(f.families.values())


@dataclass(eq=False)  # registered in a set: hashed by identity
class RecoverabilityCollector(Collector):
    """Collects by reading the stores through `observe` (``FleetProtection.recoverability``),
    at most once per `min_interval` seconds (scrapes in between get the last reading: a fleet
    of cloud stores costs LIST and GET calls). A failed read keeps the last good figures and
    sets ``platform_dr_exporter_refresh_success`` to 0, so an alert can say the figures are old."""

    observe: Callable[[], list[DatabaseRecoverability]]
    min_interval: float = 30.0
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._views: list[DatabaseRecoverability] = []
        self._refreshed_at: float | None = None
        self._tried_at: float | None = None
        self._duration: float | None = None
        self._ok = False
        self.last_error: str | None = None

    def refresh(self) -> None:
        started = self.clock()
        self._tried_at = started
        try:
            views = self.observe()
        except PlatformError as exc:
            self._ok, self.last_error = False, one_line(exc)
            return
        self._views, self._ok, self.last_error = views, True, None
        self._refreshed_at = self.clock()
        self._duration = self._refreshed_at - started

    def collect(self) -> Iterable[Metric]:
        if self._tried_at is None or self.clock() - self._tried_at >= self.min_interval:
            self.refresh()
        return recoverability_families(self._views, refreshed_at=self._refreshed_at,
                                       refresh_seconds=self._duration, refresh_ok=self._ok)

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand: registering must not read the stores


def push_run_metrics(gateway: str, *, database: str, step: str, duration_seconds: float,
                     stored_bytes: int | None = None, at: float | None = None, timeout: float = 10.0) -> None:
    """Push one successful step of a run (``step``: backup, copies, drill) to the Pushgateway at
    `gateway`, grouped by job ``platform_dr_runs``, database and step, so each database's last
    run of each step replaces the one before. Raises PushFailed."""
    registry = CollectorRegistry()
    values = {"run_last_success_timestamp_seconds": at if at is not None else time.time(),
              "run_duration_seconds": duration_seconds, "run_bytes": stored_bytes}
    for name, value in values.items():
        if value is not None:
            Gauge(PREFIX + name, RUN_METRICS[name][0], registry=registry).set(value)
    try:
        push_to_gateway(gateway, job="platform_dr_runs", registry=registry,
                        grouping_key={"database": database, "step": step}, timeout=timeout)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise PushFailed(f"push of {step} metrics of {database} to the Pushgateway at {gateway} failed: "
                         f"{one_line(exc)}") from None


class PushFailed(PlatformError):
    """The Pushgateway could not be reached or refused the push."""
