"""Restoring stored backups into real PostgreSQL 16 and 18, into every kind of target a DBA
gives, and refusing to restore what is unsafe before anything is fetched or touched."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from broken import newest_manifest_garbled
from conftest import SOURCE_DB, make_stores
from fleetfiles import write_fleet
from peak_rss import run_measuring_peak_rss
from pg import both_majors, create_database, fingerprint, flip_byte, row_counts

from platform_orchestration.backups.catalog import find_backup
from platform_orchestration.backups.integrity import BackupCorrupt, verify_stored_backup
from platform_orchestration.backups.restore import RestoreRefused, restore_backup
from platform_orchestration.backups.take import take_backup
from platform_orchestration.fleet import load_fleet
from platform_orchestration.postgres import ephemeral_cluster
from platform_orchestration.protection import FleetProtection


def _put_stale_content(target) -> None:
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE stale (id int, what text)")
        conn.execute("INSERT INTO stale SELECT i, 'old ' || i FROM generate_series(1, 100) i")


def _database_facts(target) -> tuple | None:
    """(oid, owner, settings) of the target database, or None if it does not exist."""
    with psycopg.connect(target.for_database("template1").dsn, autocommit=True) as conn:
        return conn.execute(
            """SELECT d.oid, pg_get_userbyid(d.datdba),
                      (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)
               FROM pg_database d WHERE d.datname = %s""", (target.dbname,)).fetchone()


def _ensure_role(cluster, role: str) -> None:
    with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f'CREATE ROLE "{role}" NOLOGIN')


class Stages:
    """A progress listener remembering the stages it saw: "fetch" means the backup was read."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, stage: str, done: int) -> None:
        if stage not in self.seen:
            self.seen.append(stage)


@both_majors
def test_round_trip_into_a_missing_database_creates_it_and_preserves_content_exactly(
        backup, stores, source_db, target_db):
    backup(stores)

    result = restore_backup(find_backup(stores, SOURCE_DB), target_db)

    assert result.target_action == "created"
    assert fingerprint(target_db) == fingerprint(source_db)
    counts = row_counts(source_db)
    assert result.tables_verified == len(counts) and result.rows_verified == sum(counts.values())


def test_round_trip_from_every_store(backup, stores, source_db, target_cluster, fresh_name):
    manifest = backup(stores).manifest
    expected = fingerprint(source_db)
    for store in stores:
        target = target_cluster.connection(fresh_name(f"from_{store.name}"))
        result = restore_backup(find_backup(stores, SOURCE_DB, store_name=store.name), target)
        assert (result.store, result.backup_id) == (store.name, manifest.backup_id)
        assert fingerprint(target) == expected


def test_the_fingerprint_notices_each_kind_of_object_lost(scratch_source_db):
    """The content comparison every round trip relies on: losing any one kind of object the
    seed holds (one statement each) changes the fingerprint."""
    losses = {
        "views": "DROP VIEW public.order_totals",
        "materialized_view_rows": "TRUNCATE public.orders CASCADE; REFRESH MATERIALIZED VIEW public.customer_spend",
        "functions": "DROP PROCEDURE audit.note(text)",
        "triggers": "DROP TRIGGER shipments_touch ON public.shipments",
        "constraints": "ALTER TABLE public.shipments DROP CONSTRAINT shipments_windows_disjoint",
        "indexes": "DROP INDEX public.shipments_city_idx",
        "types": "ALTER TYPE public.shipment_status ADD VALUE 'returned'",
        "relations": "ALTER TABLE audit.readings DETACH PARTITION audit.readings_other",
        "large_objects": "SELECT lo_unlink(min(oid)) FROM pg_largeobject_metadata",
        "sequences": "SELECT setval('audit.ticket_seq', 97)",
        "comments": "COMMENT ON COLUMN public.customers.note IS NULL",
        "policies": "DROP POLICY shipments_sane ON public.shipments",
        "columns": "ALTER TABLE public.shipments ALTER COLUMN updated_at SET DEFAULT now()",
        "schemas": "CREATE SCHEMA extra",
    }
    before = fingerprint(scratch_source_db)["schema"]
    assert set(losses) == set(before), "every kind the fingerprint compares has a loss here"
    assert all(before[kind] for kind in before), "the seed holds every kind of object"
    for kind, statement in losses.items():
        with psycopg.connect(scratch_source_db.dsn, autocommit=True) as conn:
            conn.execute(statement)
        after = fingerprint(scratch_source_db)["schema"]
        assert after[kind] != before[kind], f"losing {kind} went unnoticed"
        before = after


def test_partitions_are_counted_one_by_one_and_their_parent_is_not(backup, stores, source_db):
    manifest = backup(stores).manifest

    partitions = {t for t in manifest.row_counts if t.startswith("audit.readings")}
    assert partitions == {"audit.readings_2024", "audit.readings_2025", "audit.readings_other"}
    assert all(manifest.row_counts[t] > 0 for t in partitions)
    with psycopg.connect(source_db.dsn) as conn:
        assert sum(manifest.row_counts[t] for t in partitions) == conn.execute(
            "SELECT count(*) FROM audit.readings").fetchone()[0]


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


@both_majors
def test_restore_refuses_a_non_empty_target_before_fetching(backup, stores, empty_db):
    backup(stores)
    _put_stale_content(empty_db)
    stages = Stages()

    with pytest.raises(RestoreRefused) as refused:
        restore_backup(find_backup(stores, SOURCE_DB), empty_db, progress=stages)

    assert f"target database {empty_db.dbname} " in str(refused.value)
    assert "is not empty (1 objects: table public.stale)" in str(refused.value)
    assert stages.seen == []
    assert row_counts(empty_db) == {"public.stale": 100}


@both_majors
def test_restore_with_replace_drops_and_recreates_a_non_empty_target(backup, stores, source_db, empty_db):
    backup(stores)
    _put_stale_content(empty_db)
    oid_before = _database_facts(empty_db)[0]

    result = restore_backup(find_backup(stores, SOURCE_DB), empty_db, replace=True)

    assert result.target_action == "dropped and recreated"
    assert _database_facts(empty_db)[0] != oid_before
    assert fingerprint(empty_db) == fingerprint(source_db)


@both_majors
def test_restore_into_an_existing_empty_database_is_in_place_keeping_its_owner_and_settings(
        backup, stores, source_db, target_cluster, fresh_name):
    _ensure_role(target_cluster, "dba_owner")
    target = target_cluster.connection(fresh_name("prepared"))
    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target.dbname}" OWNER dba_owner')
        conn.execute(f'ALTER DATABASE "{target.dbname}" SET work_mem = \'7MB\'')
    before = _database_facts(target)
    backup(stores)

    result = restore_backup(find_backup(stores, SOURCE_DB), target, replace=True)  # empty: never dropped

    assert result.target_action == "restored in place"
    assert _database_facts(target) == before  # same database (oid), owner and settings
    assert before[1:] == ("dba_owner", ["work_mem=7MB"])
    assert fingerprint(target) == fingerprint(source_db)


@both_majors
def test_restore_as_a_role_in_place_gives_it_the_objects_and_keeps_the_database_owner(
        backup, stores, source_db, target_cluster, fresh_name):
    _ensure_role(target_cluster, "app_owner")
    target = target_cluster.connection(fresh_name("owned"))
    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target.dbname}" OWNER app_owner')
    backup(stores)

    result = restore_backup(find_backup(stores, SOURCE_DB), target, restore_as="app_owner")

    assert result.target_action == "restored in place"
    assert _database_facts(target)[1] == "app_owner"
    with psycopg.connect(target.dsn) as conn:
        owners = {r[0] for r in conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'audit')").fetchall()}
    assert owners == {"app_owner"}
    assert fingerprint(target) == fingerprint(source_db)


def test_restore_as_a_role_that_may_not_create_in_the_existing_database_is_refused_before_fetching(
        backup, stores, target_cluster, empty_db):
    _ensure_role(target_cluster, "outsider")
    backup(stores)
    stages = Stages()

    with pytest.raises(RestoreRefused, match=f"role outsider may not create objects in database "
                                             f"{empty_db.dbname} and its public schema"):
        restore_backup(find_backup(stores, SOURCE_DB), empty_db, restore_as="outsider", progress=stages)

    assert stages.seen == []
    assert row_counts(empty_db) == {}


def test_restore_into_a_template_database_is_refused(backup, stores, target_cluster):
    backup(stores)

    with pytest.raises(RestoreRefused, match="template1 .* is a template database"):
        restore_backup(find_backup(stores, SOURCE_DB), target_cluster.connection("template1"))


@pytest.fixture(scope="module")
def restored_into_postgres(tmp_path_factory, pg_major, source_db):
    """A backup restored into the `postgres` database of a fresh throwaway cluster."""
    stores = make_stores(tmp_path_factory.mktemp("into-postgres"))
    take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold", connection=source_db, stores=stores)
    with ephemeral_cluster(pg_major) as cluster:
        result = restore_backup(find_backup(stores, SOURCE_DB), cluster.connection("postgres"))
        yield stores, cluster, result


@pytest.mark.slow
@both_majors
def test_restore_into_the_postgres_database_of_a_fresh_cluster_is_in_place(restored_into_postgres, source_db):
    _, cluster, result = restored_into_postgres

    assert result.target_action == "restored in place"
    assert fingerprint(cluster.connection("postgres")) == fingerprint(source_db)


@pytest.mark.slow
@both_majors
def test_replace_refuses_to_drop_or_empty_a_non_empty_postgres_database(restored_into_postgres):
    stores, cluster, _ = restored_into_postgres
    target = cluster.connection("postgres")
    before = fingerprint(target)
    stages = Stages()

    with pytest.raises(RestoreRefused, match="postgres .* is the server's maintenance database and is not "
                                             "empty .*replace will not drop or empty it"):
        restore_backup(find_backup(stores, SOURCE_DB), target, replace=True, progress=stages)

    assert stages.seen == [] and fingerprint(target) == before


def test_a_16_backup_restores_into_an_18_server(stores, seeded_sources, pg_clusters, fresh_name):
    source = seeded_sources(16)
    manifest = take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold", connection=source,
                           stores=stores).manifest
    target = pg_clusters("target", 18).connection(fresh_name("upgraded"))

    result = restore_backup(find_backup(stores, SOURCE_DB), target)

    assert manifest.server.major == 16 and result.target_action == "created"
    assert fingerprint(target) == fingerprint(source)


def test_an_18_backup_is_refused_by_a_16_server_before_anything_is_fetched_or_touched(
        stores, seeded_sources, pg_clusters, fresh_name):
    take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold", connection=seeded_sources(18),
                stores=stores)
    old_server = pg_clusters("target", 16)
    missing = old_server.connection(fresh_name("never_created"))
    occupied = create_database(old_server, fresh_name("occupied"))
    _put_stale_content(occupied)
    stages = Stages()

    for target in (missing, occupied):
        with pytest.raises(RestoreRefused, match="the target server is PostgreSQL 16, older than the "
                                                 "backup's source PostgreSQL 18"):
            restore_backup(find_backup(stores, SOURCE_DB), target, replace=True, progress=stages)

    assert stages.seen == []
    assert _database_facts(missing) is None
    assert row_counts(occupied) == {"public.stale": 100}


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


PEAK_RSS_BOUND = 200 * 1024 * 1024


@pytest.mark.slow
def test_verify_and_restore_of_a_highly_compressible_backup_stay_in_bounded_memory(
        tmp_path, source_cluster, target_cluster, fresh_name):
    """Hundreds of MiB of repeated rows compress about a thousandfold: one stored chunk then
    stands for hundreds of MiB. The CLI's verify and restore, each a process of its own,
    must still peak under a fixed bound (pg_restore, a child of the restore, included)."""
    name = fresh_name("compressible")
    source = create_database(source_cluster, name)
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE repeated (id int, body text)")
        conn.execute("INSERT INTO repeated SELECT i, repeat('x', 1000) FROM generate_series(1, 300000) i")
    fleet = write_fleet(tmp_path, source_cluster, name)
    cli = [sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet)]
    backup = subprocess.run([*cli, "backup", name], capture_output=True, text=True, timeout=300)
    assert backup.returncode == 0, backup.stderr
    target = target_cluster.connection(fresh_name("decompressed"))

    verified, verify_peak = run_measuring_peak_rss([*cli, "verify", name, "--store", "aws"])
    restored, restore_peak = run_measuring_peak_rss([*cli, "restore", name, "--target-dsn", target.dsn])

    assert verified.returncode == 0, verified.stderr
    assert restored.returncode == 0, restored.stderr
    assert row_counts(target) == {"public.repeated": 300000}
    peaks = f"verify peaked at {verify_peak / 2**20:.0f} MiB, restore at {restore_peak / 2**20:.0f} MiB"
    assert max(verify_peak, restore_peak) < PEAK_RSS_BOUND, peaks
