"""Drill records have retention: prune keeps, per store, the newest `keep_last` and every record
younger than `keep_cadences` drill cadences, and never the newest passed drill; unreadable
records are left for a person, as unreadable manifests are."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from benchmarks.synthetic import FIXTURES, write_fleet_file
from platform_orchestration.backups.catalog import read_drills
from platform_orchestration.backups.manifest import drill_key
from platform_orchestration.backups.retention import DrillRetention, prune_database
from platform_orchestration.fleet import FleetError, load_fleet
from platform_orchestration.fleet.model import DrillPolicy, RetentionPolicy
from platform_orchestration.storage import CountingStore, LocalObjectStore, write_bytes

DATABASE = "orders"
NOW = datetime(2026, 11, 29, 12, tzinfo=timezone.utc)
KEEP = RetentionPolicy(keep_last=3)


def _drill(store, days_ago: float, *, passed: bool = True, tail: str = "aaaaaa") -> str:  # noqa: ANN001
    finished = NOW - timedelta(days=days_ago)
    drill_id = finished.strftime("%Y%m%dT%H%M%S") + f"{finished.microsecond // 1000:03d}Z-{tail}"
    record = {**json.loads((FIXTURES / "drill_record.json").read_text()), "drill_id": drill_id,
              "database": DATABASE, "source_store": store.name, "passed": passed,
              "failure": None if passed else "restore failed",
              "started_at": (finished - timedelta(minutes=5)).isoformat(), "finished_at": finished.isoformat()}
    write_bytes(store, drill_key(DATABASE, drill_id), json.dumps(record).encode())
    return drill_id


def _remaining(store) -> list[str]:  # noqa: ANN001
    return [record.drill_id for record in read_drills(store, DATABASE).records]


@pytest.fixture
def stores(tmp_path: Path) -> list[LocalObjectStore]:
    return [LocalObjectStore(name, tmp_path / name) for name in ("aws", "gcp")]


def test_prune_keeps_the_newest_records_and_those_within_the_cadence_window_in_every_store(stores):
    ids = [_drill(store, days) for store in stores for days in (30, 20, 10, 6, 3, 2, 1)]
    rule = DrillRetention(keep_last=2, keep_younger_than=timedelta(days=4))
    report = prune_database(DATABASE, stores, KEEP, now=NOW, drills=rule)
    for store in stores:
        # the newest 2 (1, 2 days), younger than 4 days (3 days): kept; 6, 10, 20, 30 days: deleted
        assert _remaining(store) == sorted(ids[4:7])
        assert sorted(report.store(store.name).drills_deleted) == sorted(ids[:4])
    assert report.drills_deleted_count == 8
    assert any(line.endswith(f"deleted drill record {ids[0]}") for line in report.lines())


def test_the_newest_passed_drill_is_never_deleted_however_old(stores):
    [store] = stores[:1]
    passed = _drill(store, 40)
    failed = [_drill(store, days, passed=False, tail="bbbbbb") for days in (30, 20, 1)]
    rule = DrillRetention(keep_last=1, keep_younger_than=timedelta(days=2))
    report = prune_database(DATABASE, [store], KEEP, now=NOW, drills=rule)
    assert _remaining(store) == [passed, failed[-1]]
    assert [kept.reasons for kept in report.store(store.name).drills_kept] == [
        ("last 1", "younger than 2d"), ("newest passed drill",)]


def test_a_dry_run_deletes_no_drill_record_and_says_which_it_would(stores):
    [store] = stores[:1]
    old = _drill(store, 30)
    newest = _drill(store, 1)
    report = prune_database(DATABASE, [store], KEEP, now=NOW, dry_run=True,
                            drills=DrillRetention(keep_last=1, keep_younger_than=timedelta(days=2)))
    assert _remaining(store) == [old, newest]
    assert report.store(store.name).drills_deleted == (old,)
    assert f"{store.name}: would delete drill record {old}" in report.lines()


def test_an_unreadable_drill_record_is_left_for_a_person(stores):
    [store] = stores[:1]
    _drill(store, 1)
    broken = drill_key(DATABASE, "20251001T000000000Z-cccccc")
    write_bytes(store, broken, b"not json")
    prune_database(DATABASE, [store], KEEP, now=NOW,
                   drills=DrillRetention(keep_last=1, keep_younger_than=timedelta(days=1)))
    assert [info.key for info in store.list(broken)] == [broken]


def test_without_a_drill_rule_prune_leaves_drill_records_alone(stores):
    [store] = stores[:1]
    ids = [_drill(store, days) for days in (300, 200, 1)]
    counted = CountingStore(store)
    prune_database(DATABASE, [counted], KEEP, now=NOW)
    assert _remaining(store) == ids and counted.calls["delete"] == 0


def test_drill_retention_defaults_and_limits_in_the_fleet_model(tmp_path: Path):
    policy = DrillPolicy(every="1d", rto="10m")
    assert (policy.keep_last, policy.keep_cadences) == (10, 4)
    assert DrillRetention.of(policy) == DrillRetention(keep_last=10, keep_younger_than=timedelta(days=4))
    path = write_fleet_file(tmp_path, 1)
    path.write_text(path.read_text().replace("drill: {every: 7d, rto: 10m}", "drill: {every: 7d, rto: 10m, keep_last: 0}"))
    with pytest.raises(FleetError) as raised:
        load_fleet(path)
    [error] = raised.value.errors
    assert error.startswith(f"{path}:") and error.endswith(
        "policies[0].drill.keep_last: expected a number of at least 1, got 0")
