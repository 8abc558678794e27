"""Retention: the planner on synthetic timelines (no database), the pruning rules on real backups.

The rules under test are the ones written in the docstring of
platform_orchestration.backups.retention; each executor test names the rule it holds to.
"""

from __future__ import annotations

import doctest
import os
import random
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import SOURCE_DB, STORE_NAMES, utcnow

from platform_orchestration.backups import retention as retention_module
from platform_orchestration.backups.catalog import list_backups
from platform_orchestration.backups.integrity import verify_stored_backup
from platform_orchestration.backups.manifest import (
    backup_prefix,
    dump_key,
    globals_key,
    manifest_key,
    new_backup_id,
)
from platform_orchestration.backups.retention import (
    BackupPoint,
    PruneReport,
    RetentionError,
    RetentionPlan,
    plan_retention,
    prune_database,
)
from platform_orchestration.fleet.model import RetentionPolicy
from platform_orchestration.storage import (
    LocalObjectStore,
    ObjectInfo,
    StoreError,
    read_bytes,
    write_bytes,
)
from platform_orchestration.storage.base import ObjectLocked

UTC = timezone.utc
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def at(month: int, day: int, hour: int = 12, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def points(*times: datetime) -> list[BackupPoint]:
    """Synthetic backups named by their UTC time, e.g. ``2026-11-24T13``."""
    return [BackupPoint(t.astimezone(UTC).strftime("%Y-%m-%dT%H"), t) for t in times]


def kept(plan: RetentionPlan) -> dict[str, tuple[str, ...]]:
    return {k.backup_id: k.reasons for k in plan.kept}


# --- planning on synthetic timelines ------------------------------------------------------------


def test_doctests_of_the_module_pass() -> None:
    result = doctest.testmod(retention_module)
    assert result.attempted > 0 and result.failed == 0


def test_keep_last_keeps_the_newest_n_and_drops_the_rest_newest_first() -> None:
    timeline = points(*(at(11, 20) + timedelta(hours=h) for h in range(5)))
    plan = plan_retention(timeline, RetentionPolicy(keep_last=2), NOW)

    assert kept(plan) == {"2026-11-20T16": ("last 2",), "2026-11-20T15": ("last 2",)}
    assert plan.dropped == ("2026-11-20T14", "2026-11-20T13", "2026-11-20T12")
    assert plan.planned_at == NOW


def test_daily_keeps_the_newest_of_each_day_and_empty_days_use_no_slot() -> None:
    # 11-22 holds no backup: it does not use up one of the three daily slots (restic semantics).
    timeline = points(at(11, 25, 1), at(11, 25, 9), at(11, 24, 8), at(11, 24, 20), at(11, 23, 5),
                      at(11, 21, 6), at(11, 21, 7), at(11, 20, 3))
    plan = plan_retention(timeline, RetentionPolicy(keep_last=1, daily=3), NOW)

    assert kept(plan) == {
        "2026-11-25T09": ("last 1", "daily 2026-11-25"),
        "2026-11-24T20": ("daily 2026-11-24",),
        "2026-11-23T05": ("daily 2026-11-23",),
    }
    assert set(plan.dropped) == {"2026-11-25T01", "2026-11-24T08", "2026-11-21T07", "2026-11-21T06",
                                 "2026-11-20T03"}


def test_weekly_buckets_are_iso_weeks_across_the_year_end() -> None:
    # 2026 has 53 ISO weeks: Fri 2027-01-01 shares 2026-W53 with Mon 2026-12-28, and
    # Sun 2026-12-27 shares 2026-W52 with Mon 2026-12-21.
    timeline = points(at(1, 1, 10, year=2027), at(12, 28, 10), at(12, 27, 23), at(12, 21, 9), at(12, 14, 9))
    plan = plan_retention(timeline, RetentionPolicy(keep_last=1, weekly=3), NOW)

    assert kept(plan) == {
        "2027-01-01T10": ("last 1", "weekly 2026-W53"),
        "2026-12-27T23": ("weekly 2026-W52",),
        "2026-12-14T09": ("weekly 2026-W51",),
    }
    assert plan.dropped == ("2026-12-28T10", "2026-12-21T09")


def test_monthly_keeps_the_newest_of_each_month() -> None:
    timeline = points(at(11, 3), at(10, 31, 23), at(10, 1), at(9, 15), at(8, 30), at(7, 1))
    plan = plan_retention(timeline, RetentionPolicy(keep_last=1, monthly=3), NOW)

    assert kept(plan) == {
        "2026-11-03T12": ("last 1", "monthly 2026-11"),
        "2026-10-31T23": ("monthly 2026-10",),
        "2026-09-15T12": ("monthly 2026-09",),
    }


def test_a_backup_kept_by_several_rules_carries_every_reason() -> None:
    timeline = points(at(11, 30, 20), at(11, 30, 8), at(11, 29, 8))
    plan = plan_retention(timeline, RetentionPolicy(keep_last=2, daily=2, weekly=2, monthly=2), NOW)

    # 11-29 is a Sunday (W48), 11-30 a Monday (W49).
    assert kept(plan) == {
        "2026-11-30T20": ("last 2", "daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11"),
        "2026-11-30T08": ("last 2",),
        "2026-11-29T08": ("daily 2026-11-29", "weekly 2026-W48"),
    }
    assert plan.dropped == ()


def test_buckets_are_utc_calendar_days_whatever_the_time_zone_of_the_snapshot() -> None:
    new_york = timezone(timedelta(hours=-5))
    late_evening_in_new_york = datetime(2026, 11, 24, 21, 30, tzinfo=new_york)  # 11-25 02:30 UTC
    earlier_that_day_utc = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
    plan = plan_retention([BackupPoint("ny", late_evening_in_new_york), BackupPoint("utc", earlier_that_day_utc)],
                          RetentionPolicy(keep_last=1, daily=2), NOW)

    # Both fall on 2026-11-25 UTC: one daily bucket, so only the newest is kept.
    assert kept(plan) == {"ny": ("last 1", "daily 2026-11-25")}
    assert plan.dropped == ("utc",)


def test_buckets_count_from_the_newest_backup_so_a_stalled_schedule_ages_nothing_out() -> None:
    timeline = points(at(1, 10), at(1, 9), at(1, 8), at(1, 7))
    a_year_later = at(1, 10, year=2027)
    plan = plan_retention(timeline, RetentionPolicy(keep_last=1, daily=3), a_year_later)

    assert set(kept(plan)) == {"2026-01-10T12", "2026-01-09T12", "2026-01-08T12"}


def test_the_newest_backup_is_always_kept_and_equal_times_are_ordered_by_id() -> None:
    same_time = at(11, 20)
    plan = plan_retention([BackupPoint("b", same_time), BackupPoint("a", same_time),
                           BackupPoint("c", same_time - timedelta(days=30))],
                          RetentionPolicy(keep_last=1), NOW)
    assert plan.kept_ids == ("b",) and plan.dropped == ("a", "c")


def test_the_same_backup_from_several_stores_counts_once() -> None:
    timeline = points(at(11, 25), at(11, 24), at(11, 23))
    plan = plan_retention(timeline + timeline[:2] + timeline, RetentionPolicy(keep_last=2), NOW)

    assert plan.kept_ids == ("2026-11-25T12", "2026-11-24T12")
    assert plan.dropped == ("2026-11-23T12",)


def test_no_backups_gives_an_empty_plan() -> None:
    plan = plan_retention([], RetentionPolicy(keep_last=3, daily=7), NOW)
    assert plan.kept == () and plan.dropped == ()


def test_inconsistent_input_is_refused_before_anything_is_planned() -> None:
    with pytest.raises(RetentionError, match="has no time zone"):
        plan_retention([BackupPoint("naive", datetime(2026, 11, 25, 12))], RetentionPolicy(keep_last=1), NOW)
    with pytest.raises(RetentionError, match="two snapshot times"):
        plan_retention([BackupPoint("x", at(11, 25)), BackupPoint("x", at(11, 24))],
                       RetentionPolicy(keep_last=1), NOW)


def _reference_kept(timeline: Iterable[BackupPoint], policy: RetentionPolicy) -> set[str]:
    """The same semantics written the other way round: group into buckets first, then take
    the newest backup of each of the newest N buckets."""
    ordered = sorted({p.backup_id: p.taken_at.astimezone(UTC) for p in timeline}.items(),
                     key=lambda item: (item[1], item[0]), reverse=True)
    keep = {backup_id for backup_id, _ in ordered[:policy.keep_last]}
    bucketings: list[tuple[int, Callable[[datetime], object]]] = [
        (policy.daily, lambda t: t.date()),
        (policy.weekly, lambda t: tuple(t.isocalendar())[:2]),
        (policy.monthly, lambda t: (t.year, t.month)),
    ]
    for count, bucket_of in bucketings:
        newest_in: dict[object, str] = {}
        for backup_id, taken_at in ordered:
            newest_in.setdefault(bucket_of(taken_at), backup_id)
        keep |= {newest_in[bucket] for bucket in sorted(newest_in, reverse=True)[:count]}  # type: ignore[type-var]
    return keep


def test_plan_matches_a_reference_implementation_on_random_timelines() -> None:
    rng = random.Random(20261125)
    for _ in range(300):
        zones = [timezone(timedelta(hours=h)) for h in (-8, -5, 0, 1, 9)]
        timeline = [BackupPoint(f"id{i:03d}", (NOW - timedelta(minutes=rng.randrange(0, 500 * 24 * 60)))
                                .astimezone(rng.choice(zones)))
                    for i in range(rng.randrange(0, 80))]
        policy = RetentionPolicy(keep_last=rng.randrange(1, 6), daily=rng.randrange(0, 8),
                                 weekly=rng.randrange(0, 6), monthly=rng.randrange(0, 8))
        plan = plan_retention(timeline, policy, NOW)

        assert set(plan.kept_ids) == _reference_kept(timeline, policy)
        assert set(plan.kept_ids).isdisjoint(plan.dropped)
        assert set(plan.kept_ids) | set(plan.dropped) == {p.backup_id for p in timeline}
        assert all(k.reasons for k in plan.kept)


# --- pruning real backups in local stores -------------------------------------------------------


class GuardedStore(LocalObjectStore):
    """A LocalObjectStore with immutability and failures on chosen keys, recording every delete.

    ``locks`` stands for S3 Object Lock (and Azure immutability policies, GCS object retention):
    deleting a locked key raises ObjectLocked with its retain-until date, as those backends do;
    the S3 backend's own tests cover the real Object Lock against moto. ``failing`` makes a
    delete fail like a dropped connection (or a crash between two deletes); ``unlistable``
    makes the store unreachable."""

    def __init__(self, name: str, root: Path) -> None:
        super().__init__(name, root)
        self.locks: dict[str, datetime] = {}
        self.failing: set[str] = set()
        self.unlistable = False
        self.deletes: list[str] = []

    def delete(self, key: str) -> None:
        self.deletes.append(key)
        if key in self.locks:
            raise ObjectLocked(f"store {self.name}: {key} is under retention", self.locks[key])
        if key in self.failing:
            raise StoreError(f"store {self.name}: deleting {key} failed: connection reset")
        super().delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if self.unlistable:
            raise StoreError(f"store {self.name}: listing {prefix} timed out")
        return super().list(prefix)


@pytest.fixture
def stores(tmp_path: Path) -> list[GuardedStore]:
    """Three fresh stores standing for three clouds, in policy order (aws, azure, gcp)."""
    return [GuardedStore(name, tmp_path / "stores" / name) for name in STORE_NAMES]


@pytest.fixture
def take(backup) -> Callable[[list[GuardedStore]], str]:  # noqa: ANN001 - conftest's backup fixture
    """A real backup of the seeded database into `stores`; returns its id."""
    def run(into: list[GuardedStore]) -> str:
        return backup(into).manifest.backup_id
    return run


def backdated(source_id: str, stores: list[GuardedStore], *, snapshot_at: datetime,
              id_at: datetime | None = None) -> str:
    """A copy of a real backup made to look taken at `snapshot_at` (id from `id_at`, default the
    same time): a real dump and a manifest that verifies against it, in every one of `stores`."""
    source = next(b for b in list_backups(stores[0], SOURCE_DB) if b.backup_id == source_id).manifest
    manifest = source.model_copy(update={"backup_id": new_backup_id(id_at or snapshot_at),
                                         "started_at": snapshot_at, "finished_at": snapshot_at,
                                         "snapshot_at": snapshot_at, "snapshot_worker_at": snapshot_at})
    data = read_bytes(stores[0], source.dump_key)
    for store in stores:
        write_bytes(store, manifest.dump_key, data)
        write_bytes(store, manifest.manifest_key, manifest.in_store(store.name, snapshot_at).to_json())
    return manifest.backup_id


def listed(store: LocalObjectStore) -> list[str]:
    return [b.backup_id for b in list_backups(store, SOURCE_DB)]


def objects_of(store: LocalObjectStore, backup_id: str) -> list[str]:
    return [info.key for info in store.list(backup_prefix(SOURCE_DB, backup_id))]


def make_old(store: LocalObjectStore, key: str, age: timedelta) -> None:
    then = (utcnow() - age).timestamp()
    os.utime(store.path_for(key), (then, then))


def prune(stores: list[GuardedStore], keep_last: int, *, now: datetime | None = None,
          dry_run: bool = False, **policy: int) -> PruneReport:
    return prune_database(SOURCE_DB, stores, RetentionPolicy(keep_last=keep_last, **policy),
                          now=now or utcnow(), dry_run=dry_run)


def test_prune_deletes_what_the_plan_drops_from_every_store_and_leaves_the_rest_restorable(stores, take):
    ids = [take(stores) for _ in range(4)]

    report = prune(stores, keep_last=2)

    for store in stores:
        assert listed(store) == ids[2:]
        for old in ids[:2]:
            assert objects_of(store, old) == []  # manifest and dump both gone
        for survivor in list_backups(store, SOURCE_DB):
            verify_stored_backup(store, survivor.manifest)
        result = report.store(store.name)
        assert result.deleted == tuple(ids[:2]) and not result.dry_run
        assert {k.backup_id: k.reasons[0] for k in result.kept} == {ids[2]: "last 2", ids[3]: "last 2"}
        assert result.locked == () and result.failures == ()
    assert (report.deleted_count, report.kept_count, report.locked_count) == (6, 6, 0)
    assert f"aws: deleted {ids[0]}" in report.lines()


def test_dry_run_deletes_nothing_and_reports_what_would_go(stores, take):
    ids = [take(stores) for _ in range(3)]
    before = {s.name: sorted(i.key for i in s.list()) for s in stores}

    report = prune(stores, keep_last=1, dry_run=True)

    assert {s.name: sorted(i.key for i in s.list()) for s in stores} == before
    assert all(s.deletes == [] for s in stores)
    assert report.dry_run and report.store("gcp").deleted == tuple(ids[:2])
    assert f"gcp: would delete {ids[0]}" in report.lines()


def test_rule_1_one_plan_from_the_union_of_stores_not_one_per_store(stores, take):
    aws, azure, gcp = stores
    b1, b2, b3 = (take([aws, azure, gcp]) for _ in range(3))
    b4 = take([aws, gcp])  # azure missed the newest

    report = prune(stores, keep_last=2)

    # Planned per store, azure would keep b2 and b3; planned on the union it keeps b3 only.
    assert report.plan.kept_ids == (b4, b3)
    assert listed(azure) == [b3] and report.store("azure").deleted == (b1, b2)
    assert listed(aws) == listed(gcp) == [b3, b4]


def test_rule_2_the_newest_backup_by_id_is_never_deleted_even_if_the_plan_drops_it(stores, take):
    real = take(stores)
    # Its id is the newest (what restores and drills pick), its snapshot time the oldest.
    newest_id = backdated(real, stores, snapshot_at=utcnow() - timedelta(days=1),
                          id_at=utcnow() + timedelta(hours=1))

    report = prune(stores, keep_last=1)

    assert report.plan.dropped == (newest_id,)
    for store in stores:
        assert newest_id in listed(store)
        reasons = next(k.reasons for k in report.store(store.name).kept if k.backup_id == newest_id)
        assert f"newest backup of {SOURCE_DB}" in reasons


def test_rule_3_a_store_that_missed_the_recent_backups_keeps_its_newest_copy(stores, take):
    aws, azure, gcp = stores
    b1, b2 = take(stores), take(stores)
    b3, b4 = take([aws, azure]), take([aws, azure])  # gcp was down

    report = prune(stores, keep_last=2)

    assert report.plan.dropped == (b2, b1)
    assert listed(gcp) == [b2]
    assert report.store("gcp").deleted == (b1,)
    assert report.store("gcp").kept[0].reasons == ("newest copy in gcp",)
    assert listed(aws) == listed(azure) == [b3, b4]


def test_rule_4_the_manifest_is_deleted_before_the_dump(stores, take):
    old, _new = take(stores), take(stores)

    prune(stores, keep_last=1)

    for store in stores:
        assert store.deletes == [manifest_key(SOURCE_DB, old), globals_key(SOURCE_DB, old), dump_key(SOURCE_DB, old)]


def test_rule_4_and_5_a_crash_between_the_deletes_leaves_an_orphan_swept_after_the_grace(stores, take):
    aws = stores[0]
    old, new = take(stores), take(stores)
    aws.failing.add(dump_key(SOURCE_DB, old))

    first = prune(stores, keep_last=1)

    assert listed(aws) == [new]  # the half-pruned backup is not offered to anybody
    assert objects_of(aws, old) == [dump_key(SOURCE_DB, old)]
    assert "orphan sweep removes it later" in first.store("aws").failures[0]
    assert first.store("aws").deleted == ()

    aws.failing.clear()
    assert prune(stores, keep_last=1).store("aws").orphans_removed == ()  # younger than the grace
    later = prune(stores, keep_last=1, now=utcnow() + timedelta(days=2))
    assert later.store("aws").orphans_removed == (dump_key(SOURCE_DB, old),)
    assert objects_of(aws, old) == [] and listed(aws) == [new]


def test_rule_5_the_sweep_spares_young_dumps_and_dumps_with_an_unreadable_manifest(stores, take):
    aws = stores[0]
    kept_id = take(stores)
    in_flight = dump_key(SOURCE_DB, new_backup_id(utcnow()))
    write_bytes(aws, in_flight, b"still being written")
    crashed = dump_key(SOURCE_DB, new_backup_id(utcnow() - timedelta(days=3)))
    write_bytes(aws, crashed, b"left by a crash")
    make_old(aws, crashed, timedelta(days=3))
    damaged_id = new_backup_id(utcnow() - timedelta(days=4))
    write_bytes(aws, dump_key(SOURCE_DB, damaged_id), b"dump")
    write_bytes(aws, manifest_key(SOURCE_DB, damaged_id), b"{not json")
    make_old(aws, dump_key(SOURCE_DB, damaged_id), timedelta(days=4))

    dry = prune(stores, keep_last=1, dry_run=True)
    assert dry.store("aws").orphans_removed == (crashed,) and aws.deletes == []

    report = prune(stores, keep_last=1)

    assert report.store("aws").orphans_removed == (crashed,)
    remaining = {info.key for info in aws.list()}
    assert in_flight in remaining and crashed not in remaining
    assert {dump_key(SOURCE_DB, damaged_id), manifest_key(SOURCE_DB, damaged_id)} <= remaining
    assert listed(aws) == [kept_id]


def test_rule_6_a_locked_manifest_keeps_the_backup_and_is_reported(stores, take):
    aws, azure, gcp = stores
    old, new = take(stores), take(stores)
    until = datetime(2027, 2, 1, tzinfo=UTC)
    azure.locks[manifest_key(SOURCE_DB, old)] = until
    azure.locks[dump_key(SOURCE_DB, old)] = until

    report = prune(stores, keep_last=1)

    assert listed(azure) == [old, new]
    verify_stored_backup(azure, next(b for b in list_backups(azure, SOURCE_DB) if b.backup_id == old).manifest)
    assert dump_key(SOURCE_DB, old) not in azure.deletes  # nothing is tried after a locked manifest
    [locked] = report.store("azure").locked
    assert (locked.backup_id, locked.what, locked.retain_until) == (old, "backup", until)
    assert f"azure: backup {old} in store azure is locked until 2027-02-01T00:00:00Z; kept" in report.lines()
    assert report.store("azure").deleted == () and report.locked_count == 1
    assert listed(aws) == listed(gcp) == [new]


def test_rule_6_a_locked_dump_stays_as_an_orphan_until_its_lock_expires(stores, take):
    gcp = stores[2]
    old, new = take(stores), take(stores)
    gcp.locks[dump_key(SOURCE_DB, old)] = utcnow() + timedelta(days=1)

    report = prune(stores, keep_last=1)

    [locked] = report.store("gcp").locked
    assert (locked.backup_id, locked.what) == (old, "dump")
    assert "manifest removed" in locked.describe("gcp") and "orphan sweep" in locked.describe("gcp")
    assert listed(gcp) == [new] and objects_of(gcp, old) == [dump_key(SOURCE_DB, old)]

    make_old(gcp, dump_key(SOURCE_DB, old), timedelta(days=2))
    still_locked = prune(stores, keep_last=1)
    assert [lock.what for lock in still_locked.store("gcp").locked] == ["orphan dump"]
    assert objects_of(gcp, old) == [dump_key(SOURCE_DB, old)]

    gcp.locks.clear()  # the retention period has passed
    swept = prune(stores, keep_last=1)
    assert swept.store("gcp").orphans_removed == (dump_key(SOURCE_DB, old),)
    assert objects_of(gcp, old) == []


def test_rule_7_a_store_that_cannot_be_listed_is_reported_and_the_others_are_pruned(stores, take):
    aws, azure, gcp = stores
    old, new = take(stores), take(stores)
    azure.unlistable = True

    report = prune(stores, keep_last=1)

    assert "cannot list backups" in report.store("azure").failures[0]
    assert azure.deletes == []
    azure.unlistable = False
    assert listed(azure) == [old, new]
    assert listed(aws) == listed(gcp) == [new]
    assert report.failures == (f"store azure: {report.store('azure').failures[0]}",)


def abandoned_write(store: LocalObjectStore, key: str, size: int, *, idle: timedelta) -> None:
    """A writer killed after writing `size` bytes to `key`, idle for `idle`: its partial file stays."""
    writer = store.open_writer(key)
    writer.write(b"x" * size)  # at least a file buffer's worth (8 KiB), so it reaches the disk
    [partial] = store.path_for(key).parent.glob(f".partial-{store.path_for(key).name}.*")
    then = (utcnow() - idle).timestamp()
    os.utime(partial, (then, then))


def test_rule_9_leftovers_idle_past_the_sweep_age_are_removed_and_reported_with_their_bytes(stores, take):
    aws = stores[0]
    kept_id = take(stores)
    killed_backup = backup_prefix(SOURCE_DB, new_backup_id(utcnow() - timedelta(days=3))) + "dump.pgdump.zst"
    abandoned_write(aws, killed_backup, 300_000, idle=timedelta(days=3))
    abandoned_write(aws, f"drills/{SOURCE_DB}/killed.json", 10_000, idle=timedelta(days=2))
    abandoned_write(aws, "evidence/compliance/killed.json", 20_000, idle=timedelta(days=2))
    in_flight = backup_prefix(SOURCE_DB, new_backup_id(utcnow())) + "dump.pgdump.zst"
    abandoned_write(aws, in_flight, 10_000, idle=timedelta(minutes=5))
    pruned_dir = aws.root / "backups" / SOURCE_DB / new_backup_id(utcnow() - timedelta(days=5))
    pruned_dir.mkdir()  # what a prune killed between its deletes and the rmdir leaves
    then = (utcnow() - timedelta(days=5)).timestamp()
    os.utime(pruned_dir, (then, then))

    report = prune(stores, keep_last=1)

    result = report.store("aws")
    assert sorted(u.key for u in result.uploads_discarded) == sorted(
        [killed_backup, f"drills/{SOURCE_DB}/killed.json", "evidence/compliance/killed.json"])
    assert result.discarded_bytes == report.discarded_bytes == 330_000
    assert result.directories_removed == (f"backups/{SOURCE_DB}/{pruned_dir.name}/",)
    assert [u.key for u in aws.incomplete_uploads()] == [in_flight]  # five minutes idle: alive
    assert not pruned_dir.exists() and not aws.path_for(killed_backup).parent.exists()
    assert listed(aws) == [kept_id] and result.failures == ()
    assert (report.uploads_discarded_count, report.directories_removed_count) == (3, 1)
    assert f"aws: removed incomplete upload {killed_backup} (0.3 MiB, idle since " in "\n".join(report.lines())
    assert ("aws: leftovers idle for over 1d: removed 3 incomplete upload(s) (0.3 MiB), "
            "1 empty directory(ies)") in report.lines()
    assert report.store("azure").uploads_discarded == ()


def test_rule_9_a_dry_run_reports_the_leftovers_it_would_remove_and_removes_none(stores, take):
    aws = stores[0]
    take(stores)
    killed = backup_prefix(SOURCE_DB, new_backup_id(utcnow() - timedelta(days=3))) + "dump.pgdump.zst"
    abandoned_write(aws, killed, 10_000, idle=timedelta(days=3))

    dry = prune(stores, keep_last=1, dry_run=True)

    assert [u.key for u in dry.store("aws").uploads_discarded] == [killed]
    assert f"aws: would remove incomplete upload {killed}" in "\n".join(dry.lines())
    assert [u.key for u in aws.incomplete_uploads()] == [killed]


def test_rule_9_the_sweep_age_is_a_prune_keyword_and_the_clock_decides_what_is_old(stores, take):
    aws = stores[0]
    take(stores)
    abandoned_write(aws, "evidence/compliance/slow.json", 10_000, idle=timedelta(hours=3))

    kept = prune_database(SOURCE_DB, stores, RetentionPolicy(keep_last=1), now=utcnow(),
                          sweep_older_than=timedelta(hours=4))
    swept = prune_database(SOURCE_DB, stores, RetentionPolicy(keep_last=1), now=utcnow() + timedelta(hours=2),
                           sweep_older_than=timedelta(hours=4))

    assert kept.uploads_discarded_count == 0
    assert [u.key for u in swept.store("aws").uploads_discarded] == ["evidence/compliance/slow.json"]


def test_daily_and_monthly_retention_across_real_backups_taken_on_different_days(stores, take):
    real = take(stores)
    day_late = backdated(real, stores, snapshot_at=datetime(2025, 3, 10, 20, tzinfo=UTC))
    day_early = backdated(real, stores, snapshot_at=datetime(2025, 3, 10, 8, tzinfo=UTC))
    day_before = backdated(real, stores, snapshot_at=datetime(2025, 3, 9, 12, tzinfo=UTC))
    february = backdated(real, stores, snapshot_at=datetime(2025, 2, 20, 12, tzinfo=UTC))
    january = backdated(real, stores, snapshot_at=datetime(2025, 1, 5, 12, tzinfo=UTC))

    report = prune(stores, keep_last=1, daily=3, monthly=2)

    assert kept(report.plan)[day_late] == ("daily 2025-03-10", "monthly 2025-03")
    assert kept(report.plan)[day_before] == ("daily 2025-03-09",)
    for store in stores:
        assert sorted(listed(store)) == sorted([real, day_late, day_before])
        assert set(report.store(store.name).deleted) == {day_early, february, january}
