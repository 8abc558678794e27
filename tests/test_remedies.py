"""The remedy decisions on their own (observability/remedies.py), over recoverability views
built by hand: the escalation ladder, which store a retry drills, the keys that dedupe."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from platform_orchestration.backups.compliance import DatabaseCompliance
from platform_orchestration.observability.recoverability import (
    BackupFigures,
    DatabaseRecoverability,
    DrillFigures,
    StoreCopy,
)
from platform_orchestration.observability.remedies import plan_copy_repairs, plan_drill_escalation, plan_staleness

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _backup(backup_id: str, age: timedelta, store: str = "aws") -> BackupFigures:
    return BackupFigures(backup_id, store, NOW - age, NOW - age, 1.0, 100, 10, "tink", 1, NOW - age, None)


def _view(drills=(), holding=("aws", "azure", "gcp"), age=timedelta(minutes=10)) -> DatabaseRecoverability:
    latest = _backup("B2", age)
    copies = tuple(StoreCopy(s, s, latest if s in holding else _backup("B1", age + timedelta(hours=1), s),
                             s in holding, 0.0, 2, 0) for s in ("aws", "azure", "gcp"))
    return DatabaseRecoverability("orders", "pg", "critical", NOW, 3600, 600, 86400, "keep last 3",
                                  DatabaseCompliance("orders", "critical", []), latest, copies, tuple(drills))


def _drill(drill_id: str, store: str, passed: bool) -> DrillFigures:
    return DrillFigures(drill_id, "B2", store, store, NOW, passed, 1.0, 600, 60, None if passed else "broken")


def test_the_escalation_ladder_retry_elsewhere_then_rebackup_and_page_then_page():
    assert plan_drill_escalation(_view([_drill("D1", "aws", True)])) == []
    [retry] = plan_drill_escalation(_view([_drill("D1", "aws", True), _drill("D2", "gcp", False)]))
    assert (retry.kind, retry.store, retry.key) == ("drill_elsewhere", "aws", "drill-elsewhere:orders:D2")
    fresh, page = plan_drill_escalation(_view([_drill("D2", "gcp", False), _drill("D3", "aws", False)]))
    assert (fresh.kind, page.kind, page.severity) == ("backup_and_drill", "page", "page")
    [again] = plan_drill_escalation(_view([_drill(f"D{i}", "aws", False) for i in range(3)]))
    assert (again.kind, again.key) == ("page", "page:orders:D2")


def test_a_retry_drills_a_store_holding_the_latest_backup():
    [retry] = plan_drill_escalation(_view([_drill("D1", "aws", False)], holding=("aws", "gcp")))
    assert retry.store == "gcp"  # azure holds only an older backup


def test_copy_repair_names_the_backup_and_the_stores_and_staleness_the_rpo():
    [copy] = plan_copy_repairs(_view(holding=("aws",)))
    assert copy.key == "copy:orders:B2:azure+gcp"
    assert plan_copy_repairs(_view()) == []
    assert plan_staleness(_view()) == []
    [stale] = plan_staleness(_view(age=timedelta(hours=2)))
    assert stale.key == "backup:orders:B2" and "over its RPO of 3600s" in stale.reason


def test_a_drill_from_another_store_keeps_the_pod_sizes_of_its_database_on_kubernetes(tmp_path, monkeypatch):
    """A run request's run config replaces its partition's in Dagster 1.13: the drill-elsewhere
    request must carry the database's per-step pod sizes (k8s executor) under the store it names."""
    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.observability.remedies import Remedy
    from platform_orchestration.sensors.remedies import _run_request

    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")  # the executor is only built, never started here
    repository = build_definitions().get_repository_def()
    database = repository.get_job("run_restore_drills").partitions_def.get_partition_keys()[0]
    request = _run_request(Remedy(kind="drill_elsewhere", database=database, key="k", reason="r", store="azure-eu"),
                           repository)
    sized = repository.get_job("run_restore_drills").get_run_config_for_partition_key(database)
    assert sized["execution"]["config"]["per_step_k8s_config"]["restore_drills"]
    assert request.run_config["execution"] == sized["execution"]
    assert request.run_config["ops"]["restore_drills"]["config"] == {"source_store": "azure-eu"}
