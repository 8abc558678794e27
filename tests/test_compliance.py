"""Compliance findings computed from the stores alone, after real backups, copies and drills."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from conftest import SOURCE_DB, STORE_NAMES, make_stores, utcnow

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
from platform_orchestration.backups.take import take_backup
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider

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
