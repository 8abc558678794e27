"""Compliance findings computed from the stores alone, after real backups, copies and drills."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from broken import garble
from conftest import SOURCE_DB, STORE_NAMES, make_stores, utcnow

from platform_orchestration.backups.catalog import read_backups
from platform_orchestration.backups.compliance import (
    BACKUP_WITHIN_RPO,
    BACKUPS_ENCRYPTED,
    COPIES_IN_REQUIRED_STORES,
    DRILL_PASSED_WITHIN_CADENCE,
    DYNAMIC_CREDENTIALS_USED,
    assess_database,
)
from platform_orchestration.backups.copy import ensure_copies
from platform_orchestration.backups.drill import run_restore_drill
from platform_orchestration.backups.manifest import drill_key, new_drill_id
from platform_orchestration.backups.take import take_backup
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.storage import write_bytes

RPO = timedelta(hours=1)
RTO = timedelta(minutes=10)
DRILL_EVERY = timedelta(days=7)


@pytest.fixture(scope="module")
def protected_root(tmp_path_factory, source_db):
    """Stores holding a backup (taken into two, copied to the third) and a passing drill."""
    root = tmp_path_factory.mktemp("protected")
    stores = make_stores(root)
    keys = LocalDataKeyProvider()  # the session's test key file (PLATFORM_LOCAL_KEK)
    outcome = take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold",
                          connection=source_db, stores=stores[:2], keys=keys, credentials="static")
    assert ensure_copies(SOURCE_DB, stores).copied == (STORE_NAMES[2],)
    record = run_restore_drill(database=SOURCE_DB, stores=stores, rto_target=RTO, rpo_target=RPO,
                               keys=keys)
    assert record.passed, record.failure
    return root, outcome.manifest, record


@pytest.fixture
def protected(protected_root, tmp_path):
    """A private copy of the protected stores, free to damage."""
    root, manifest, record = protected_root
    shutil.copytree(root, tmp_path / "stores")
    return make_stores(tmp_path / "stores"), manifest, record


def assess(stores, now=None, **kwargs):
    options = {"rpo": RPO, "drill_every": DRILL_EVERY, "rto": RTO, **kwargs}
    return assess_database(database=SOURCE_DB, policy="gold", stores=stores,
                           now=now or utcnow(), **options)


def test_backup_copies_and_drill_pass_every_finding(protected):
    stores, manifest, record = protected

    result = assess(stores)

    assert result.passed, result.findings
    assert [f.check for f in result.findings] == [BACKUP_WITHIN_RPO, COPIES_IN_REQUIRED_STORES,
                                                  DRILL_PASSED_WITHIN_CADENCE, BACKUPS_ENCRYPTED,
                                                  DYNAMIC_CREDENTIALS_USED]
    assert result.latest_backup_id == manifest.backup_id and result.latest_drill_id == record.drill_id
    [evidence] = result.backups
    assert evidence.stores == sorted(STORE_NAMES) and evidence.restored_by_drills == [record.drill_id]


def test_missing_copy_fails_copies_finding_naming_the_store(protected):
    stores, manifest, _ = protected
    gcp = stores[2]
    gcp.delete(manifest.manifest_key)
    gcp.delete(manifest.dump_key)

    finding = assess(stores).finding(COPIES_IN_REQUIRED_STORES)

    assert not finding.passed and "missing from gcp" in finding.detail


def test_backup_older_than_rpo_fails_rpo_finding(protected):
    stores, manifest, _ = protected

    result = assess(stores, now=manifest.snapshot_at + RPO + timedelta(seconds=1))

    assert not result.finding(BACKUP_WITHIN_RPO).passed
    assert "exceeds RPO" in result.finding(BACKUP_WITHIN_RPO).detail
    assert result.finding(DRILL_PASSED_WITHIN_CADENCE).passed


def test_drill_older_than_cadence_fails_drill_finding(protected):
    stores, _, record = protected

    result = assess(stores, now=record.finished_at + DRILL_EVERY + timedelta(seconds=1),
                    rpo=timedelta(days=30))

    finding = result.finding(DRILL_PASSED_WITHIN_CADENCE)
    assert not finding.passed and f"cadence {DRILL_EVERY.total_seconds():.0f}s" in finding.detail
    assert result.finding(BACKUP_WITHIN_RPO).passed


def test_failed_latest_drill_fails_drill_finding(protected):
    stores, _, _ = protected
    failed = run_restore_drill(database=SOURCE_DB, stores=stores, rpo_target=RPO,
                               rto_target=timedelta(microseconds=1), keys=LocalDataKeyProvider())
    assert not failed.passed

    result = assess(stores)

    finding = result.finding(DRILL_PASSED_WITHIN_CADENCE)
    assert not finding.passed and "failed: RTO exceeded" in finding.detail
    assert result.latest_drill_id == failed.drill_id


def test_no_backup_and_no_drill_fail_every_protection_finding(stores):
    result = assess(stores)

    assert not result.passed
    failing = {f.check for f in result.findings if not f.passed}
    assert failing == {BACKUP_WITHIN_RPO, COPIES_IN_REQUIRED_STORES, DRILL_PASSED_WITHIN_CADENCE}


def test_an_unencrypted_copy_fails_the_encryption_finding_naming_it(protected, source_db):
    stores, _manifest, _record = protected
    plain = take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold",
                        connection=source_db, stores=stores[1:2]).manifest

    finding = assess(stores).finding(BACKUPS_ENCRYPTED)

    assert not finding.passed
    assert f"{plain.backup_id} in {STORE_NAMES[1]}" in finding.detail


def test_static_credentials_fail_when_the_fleet_requires_dynamic_ones(protected):
    stores, manifest, _record = protected

    finding = assess(stores, requires_dynamic_credentials=True).finding(DYNAMIC_CREDENTIALS_USED)

    assert not finding.passed
    assert manifest.backup_id in finding.detail and "static" in finding.detail


def test_garbage_over_a_newer_manifest_fails_the_copies_finding_and_is_named(protected, source_db):
    stores, manifest, _ = protected
    newer = take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold", connection=source_db,
                        stores=stores, keys=LocalDataKeyProvider(), credentials="static").manifest
    for store in stores:
        garble(store, newer.manifest_key)

    result = assess(stores)

    assert result.latest_backup_id == manifest.backup_id
    assert result.finding(BACKUP_WITHIN_RPO).passed
    assert (f"passed over newer backup {newer.backup_id} in stores aws, azure, gcp: unreadable manifest"
            in result.finding(BACKUP_WITHIN_RPO).detail)
    copies = result.finding(COPIES_IN_REQUIRED_STORES)
    assert not copies.passed
    assert f"newer backup unreadable: backup {newer.backup_id} in stores aws, azure, gcp: unreadable manifest" \
        in copies.detail
    assert [(u.store, u.backup_id) for u in result.unreadable] == [(s, newer.backup_id) for s in STORE_NAMES]
    assert result.to_dict()["unreadable"][0]["key"] == newer.manifest_key


def test_an_unreadable_copy_of_the_latest_backup_fails_the_copies_finding_naming_store_and_reason(protected):
    stores, manifest, _ = protected
    garble(stores[1], manifest.manifest_key)

    finding = assess(stores).finding(COPIES_IN_REQUIRED_STORES)

    assert not finding.passed and "missing from" not in finding.detail
    assert f"unreadable: backup {manifest.backup_id} in store azure: unreadable manifest" in finding.detail


def test_a_garbage_drill_record_newer_than_the_latest_drill_fails_the_drill_finding_and_is_named(protected):
    stores, _, record = protected
    garbage_id = new_drill_id(utcnow())
    garble(stores[2], drill_key(SOURCE_DB, garbage_id))

    result = assess(stores)

    finding = result.finding(DRILL_PASSED_WITHIN_CADENCE)
    assert not finding.passed and result.latest_drill_id == record.drill_id
    assert f"newer drill record unreadable: drill record {garbage_id} in store gcp" in finding.detail
    assert [(u.store, u.drill_id) for u in result.unreadable] == [("gcp", garbage_id)]


def test_a_garbage_drill_record_older_than_the_latest_drill_is_named_without_failing(protected):
    stores, _, record = protected
    garbage_id = new_drill_id(record.started_at - timedelta(days=1))
    garble(stores[0], drill_key(SOURCE_DB, garbage_id))

    finding = assess(stores).finding(DRILL_PASSED_WITHIN_CADENCE)

    assert finding.passed
    assert f"older drill record unreadable: drill record {garbage_id} in store aws" in finding.detail


def test_a_database_server_clock_ahead_cannot_make_a_backup_look_fresher(protected):
    """The server's now() said two hours later than the worker's clock at the snapshot: the age
    is still measured from the worker's clock, and the skew is named."""
    stores, manifest, _ = protected
    for store in stores:
        [stored] = read_backups(store, SOURCE_DB).backups
        skewed = stored.manifest.model_copy(update={"snapshot_at": stored.manifest.snapshot_at + timedelta(hours=2)})
        write_bytes(store, manifest.manifest_key, skewed.to_json())

    result = assess(stores, now=manifest.snapshot_worker_time + RPO + timedelta(seconds=1))

    finding = result.finding(BACKUP_WITHIN_RPO)
    assert not finding.passed and "exceeds RPO" in finding.detail
    assert result.latest_backup_age_seconds == (RPO + timedelta(seconds=1)).total_seconds()
    assert "the database server's clock was 7200s ahead of the worker's" in finding.detail


def test_a_store_that_is_down_fails_the_copies_finding_naming_it_and_the_others_are_still_judged(protected):
    """One cloud down is when the platform's view is needed most: the assessment (and the
    recoverability view the sensors, the exporter and the report read) must still judge the
    database from the stores that answer. The down store is a real S3 client against a port
    where nothing listens (connection refused)."""
    from platform_orchestration.observability.recoverability import StoreFacts, observe_recoverability
    from platform_orchestration.storage.s3 import S3ObjectStore

    stores, manifest, record = protected
    down = S3ObjectStore("s3-down", "bucket-down", region="eu-west-1", endpoint_url="http://127.0.0.1:9",
                         credentials={"access_key_id": "test", "secret_access_key": "test"}, max_attempts=1)
    judged = [*stores[:2], down]

    result = assess(judged)

    findings = {f.check: f for f in result.findings}
    assert findings[BACKUP_WITHIN_RPO].passed  # from the stores that answer
    assert findings[DRILL_PASSED_WITHIN_CADENCE].passed and result.latest_drill_id == record.drill_id
    copies = findings[COPIES_IN_REQUIRED_STORES]
    assert not copies.passed
    assert f"backup {manifest.backup_id} verified in {STORE_NAMES[0]}, {STORE_NAMES[1]}" in copies.detail
    assert "unreachable: backups (if any) in store s3-down: the store could not be listed" in copies.detail
    assert "missing from" not in copies.detail  # not said to lack a copy it may well hold

    view = observe_recoverability(database=SOURCE_DB, cluster="test-cluster", policy=_policy([s.name for s in judged]),
                                  stores=judged,
                                  facts=[StoreFacts(s.name, "local", "local") for s in judged], assessment=result,
                                  now=utcnow())
    by_store = {c.store: c for c in view.copies}
    assert by_store["s3-down"].unreachable and by_store["s3-down"].newest is None
    assert by_store[STORE_NAMES[0]].holds_latest and not by_store[STORE_NAMES[0]].unreachable
    assert [d.drill_id for d in view.drills] == [record.drill_id]  # still read from the stores that answer


def _policy(stores: list[str]):
    from platform_orchestration.fleet.model import Policy

    return Policy.model_validate({"name": "gold", "rpo": "1h", "stores": stores, "drill": {"every": "7d", "rto": "10m"},
                                  "retention": {"keep_last": 3}})
