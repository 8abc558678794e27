"""Restoring stored backups into real PostgreSQL, and refusing to restore what is unsafe."""

from __future__ import annotations

import psycopg
import pytest
from broken import newest_manifest_garbled
from conftest import SOURCE_DB, make_stores
from fleetfiles import write_fleet
from pg import fingerprint, flip_byte, row_counts

from platform_orchestration.backups.catalog import find_backup
from platform_orchestration.backups.integrity import BackupCorrupt, verify_stored_backup
from platform_orchestration.backups.restore import RestoreRefused, restore_backup
from platform_orchestration.fleet import load_fleet
from platform_orchestration.protection import FleetProtection


def _put_stale_content(target) -> None:
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE stale (id int, what text)")
        conn.execute("INSERT INTO stale SELECT i, 'old ' || i FROM generate_series(1, 100) i")


def test_round_trip_preserves_content_exactly(backup, stores, source_db, target_db):
    backup(stores)

    result = restore_backup(find_backup(stores, SOURCE_DB), target_db)

    assert fingerprint(target_db) == fingerprint(source_db)
    assert result.tables_verified == 5 and result.rows_verified == sum(row_counts(source_db).values())


def test_round_trip_from_every_store(backup, stores, source_db, target_cluster, fresh_name):
    manifest = backup(stores).manifest
    expected = fingerprint(source_db)
    for store in stores:
        target = target_cluster.connection(fresh_name(f"from_{store.name}"))
        result = restore_backup(find_backup(stores, SOURCE_DB, store_name=store.name), target)
        assert (result.store, result.backup_id) == (store.name, manifest.backup_id)
        assert fingerprint(target) == expected


def test_corrupt_dump_fails_verification_naming_backup_store_and_checksum(backup, stores):
    manifest = backup(stores).manifest
    azure = stores[1]
    flip_byte(azure.path_for(manifest.dump_key))

    with pytest.raises(BackupCorrupt) as failure:
        verify_stored_backup(azure, manifest)

    message = str(failure.value)
    assert manifest.backup_id in message and "store azure" in message
    assert "checksum mismatch" in message
    verify_stored_backup(stores[0], manifest)  # the other copies are intact


def test_corrupt_dump_is_not_restored_and_target_is_untouched(backup, stores, source_db, empty_db):
    manifest = backup(stores).manifest
    aws = stores[0]
    flip_byte(aws.path_for(manifest.dump_key))
    _put_stale_content(empty_db)
    before = fingerprint(empty_db)

    with pytest.raises(BackupCorrupt, match=f"{manifest.backup_id}.*store aws: checksum mismatch"):
        restore_backup(find_backup(stores, SOURCE_DB, store_name="aws"), empty_db, replace=True)

    assert fingerprint(empty_db) == before


def test_restore_refuses_a_non_empty_target(backup, stores, empty_db):
    backup(stores)
    _put_stale_content(empty_db)

    with pytest.raises(RestoreRefused) as refused:
        restore_backup(find_backup(stores, SOURCE_DB), empty_db)

    assert f"target database {empty_db.dbname} " in str(refused.value)
    assert "is not empty" in str(refused.value)
    assert row_counts(empty_db) == {"public.stale": 100}


def test_restore_with_replace_replaces_content(backup, stores, source_db, empty_db):
    backup(stores)
    _put_stale_content(empty_db)

    restore_backup(find_backup(stores, SOURCE_DB), empty_db, replace=True)

    assert fingerprint(empty_db) == fingerprint(source_db)


def test_restore_into_an_existing_empty_database(backup, stores, source_db, empty_db):
    backup(stores)

    restore_backup(find_backup(stores, SOURCE_DB), empty_db)

    assert fingerprint(empty_db) == fingerprint(source_db)


def test_restore_of_latest_restores_the_previous_backup_and_names_the_newer_one_whose_manifest_is_garbage(
        tmp_path, backup, source_cluster, source_db, target_db):
    protection = FleetProtection(load_fleet(write_fleet(tmp_path, source_cluster, SOURCE_DB)))
    stores = make_stores(tmp_path / "stores")
    older, newer = newest_manifest_garbled(lambda: backup(stores).manifest, stores)

    result = protection.restore(SOURCE_DB, target_db)

    assert result.backup_id == older.backup_id and result.store == "aws"
    assert fingerprint(target_db) == fingerprint(source_db)
    [passed_over] = result.passed_over
    assert passed_over.startswith(f"backup {newer.backup_id} in stores aws, azure, gcp: unreadable manifest: "
                                  "(document): Invalid JSON")


def test_restore_of_a_backup_asked_for_by_id_passes_nothing_over(tmp_path, backup, source_cluster, target_db):
    protection = FleetProtection(load_fleet(write_fleet(tmp_path, source_cluster, SOURCE_DB)))
    stores = make_stores(tmp_path / "stores")
    older, _newer = newest_manifest_garbled(lambda: backup(stores).manifest, stores)

    result = protection.restore(SOURCE_DB, target_db, backup_id=older.backup_id)

    assert result.backup_id == older.backup_id and result.passed_over == ()
