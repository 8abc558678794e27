"""Restore drills: rotation across stores, RTO/RPO evidence, failures recorded everywhere;
on PostgreSQL 16 and 18."""

from __future__ import annotations

from datetime import timedelta

import pytest
from broken import garble, newest_manifest_garbled
from conftest import SOURCE_DB, make_stores
from pg import both_majors, flip_byte

from platform_orchestration.backups.catalog import list_drills, read_drills
from platform_orchestration.backups.drill import run_restore_drill
from platform_orchestration.backups.take import take_backup
from platform_orchestration.storage import write_bytes

HOUR = timedelta(hours=1)


def drill(stores, **kwargs):
    options = {"rto_target": HOUR, "rpo_target": HOUR, **kwargs}
    return run_restore_drill(database=SOURCE_DB, stores=stores, **options)


@pytest.fixture(scope="module")
def three_drills(tmp_path_factory, source_db, pg_major):
    """One backup in three stores, then three drills with nothing chosen by hand."""
    stores = make_stores(tmp_path_factory.mktemp("drills"))
    manifest = take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold",
                           connection=source_db, stores=stores).manifest
    return stores, manifest, [drill(stores) for _ in range(3)]


@pytest.mark.slow
@both_majors
def test_drills_rotate_across_stores_in_policy_order(three_drills):
    stores, _, records = three_drills
    assert [r.source_store for r in records] == [s.name for s in stores]


@pytest.mark.slow
@both_majors
def test_drill_passes_under_the_rto_target_on_a_cluster_of_the_backups_major(three_drills, pg_major):
    _, manifest, records = three_drills
    assert manifest.server.major == pg_major
    for record in records:
        assert record.passed and record.failure is None
        assert record.backup_id == manifest.backup_id
        assert record.rows_verified == sum(manifest.row_counts.values())
        assert record.restored_on.startswith(f"PostgreSQL {pg_major}.")


@pytest.mark.slow
@both_majors
def test_drill_records_rto_and_rpo(three_drills):
    _, manifest, records = three_drills
    for record in records:
        assert 0 < record.rto_seconds < HOUR.total_seconds()
        assert record.rpo_seconds > 0
        assert record.rpo_seconds >= (record.started_at - manifest.snapshot_at).total_seconds() - 1


@pytest.mark.slow
@both_majors
def test_drill_records_are_written_to_every_store(three_drills):
    stores, _, records = three_drills
    for store in stores:
        assert sorted(r.drill_id for r in list_drills(store, SOURCE_DB)) == sorted(r.drill_id for r in records)


def test_drill_fails_when_rto_exceeded(backup, stores):
    backup(stores)

    record = drill(stores, rto_target=timedelta(microseconds=1))

    assert not record.passed
    assert record.failure.startswith("RTO exceeded")
    assert record.rto_seconds > 0


def test_drill_of_a_corrupt_copy_fails_and_is_recorded_everywhere(backup, stores):
    manifest = backup(stores).manifest
    flip_byte(stores[1].path_for(manifest.dump_key))

    record = drill(stores, store_name="azure")

    assert not record.passed and record.source_store == "azure"
    assert manifest.backup_id in record.failure and "store azure" in record.failure
    assert "checksum mismatch" in record.failure
    for store in stores:
        assert [(r.drill_id, r.passed) for r in list_drills(store, SOURCE_DB)] == [(record.drill_id, False)]


def test_drill_without_any_backup_fails(stores):
    record = drill(stores)

    assert not record.passed and record.backup_id is None
    assert SOURCE_DB in record.failure and "aws" in record.failure


def test_drill_of_latest_passes_over_a_newer_backup_whose_manifest_is_garbage_and_records_it(backup, stores):
    older, newer = newest_manifest_garbled(lambda: backup(stores).manifest, stores)

    record = drill(stores, store_name="azure")

    assert record.passed and record.backup_id == older.backup_id
    [passed_over] = record.passed_over
    assert passed_over.startswith(f"backup {newer.backup_id} in store azure: unreadable manifest")
    for store in stores:
        assert [r.passed_over for r in list_drills(store, SOURCE_DB)] == [record.passed_over]


def test_drill_records_that_cannot_be_read_or_describe_another_key_are_listed_as_unreadable(
        three_drills, stores):
    _, _, records = three_drills
    aws = stores[0]
    garble(aws, records[0].key)
    write_bytes(aws, records[1].key, records[2].to_json())

    listing = read_drills(aws, SOURCE_DB)

    assert listing.records == ()
    assert [(u.key, u.reason.split(":")[0]) for u in listing.unreadable] == [
        (records[0].key, "unreadable drill record"), (records[1].key, "drill record describes " + records[2].key)]
