"""FleetProtection, the one API of the core: one injected clock for every id, time and age, and
the compliance evidence document built, written and returned by it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from broken import garble
from conftest import SOURCE_DB, STORE_NAMES, make_stores, utcnow
from fleetfiles import write_fleet

from platform_orchestration.backups.compliance import (
    BACKUP_WITHIN_RPO,
    COPIES_IN_REQUIRED_STORES,
)
from platform_orchestration.backups.manifest import (
    evidence_key,
    new_backup_id,
    new_drill_id,
    new_evidence_id,
)
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.fleet import load_fleet
from platform_orchestration.protection import FleetProtection
from platform_orchestration.storage import read_bytes

RPO = timedelta(hours=1)  # fleetfiles' critical policy
SKEW = timedelta(hours=2)


class OffsetClock:
    """The worker's clock, off by `offset` from the real one (and from the database server's)."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def _stamp(make_id, at: datetime) -> str:
    return make_id(at)[:19]


def _protection(directory, cluster, clock: OffsetClock) -> FleetProtection:
    return FleetProtection(load_fleet(write_fleet(directory, cluster, SOURCE_DB)), clock=clock,
                           keys=LocalDataKeyProvider())


@pytest.fixture(scope="module")
def ahead(tmp_path_factory, source_cluster, source_db):
    """A worker whose clock runs two hours ahead of the database server's: a backup, a drill
    and a compliance report, all through FleetProtection."""
    protection = _protection(tmp_path_factory.mktemp("ahead"), source_cluster, OffsetClock(SKEW))
    before = utcnow()
    manifest = protection.backup(SOURCE_DB).manifest
    record = protection.drill(SOURCE_DB)
    evidence = protection.record_compliance()
    return protection, before, manifest, record, evidence


def test_ids_and_times_of_backups_drills_and_evidence_come_from_the_injected_clock(ahead):
    _, before, manifest, record, evidence = ahead

    for moment in (manifest.started_at, manifest.snapshot_worker_at, manifest.finished_at,
                   record.started_at, record.finished_at, evidence.generated_at):
        assert SKEW <= moment - before < SKEW + timedelta(minutes=1)
    assert manifest.backup_id.startswith(_stamp(new_backup_id, manifest.started_at))
    assert record.drill_id.startswith(_stamp(new_drill_id, record.started_at))
    assert evidence.evidence_id.startswith(_stamp(new_evidence_id, evidence.generated_at))
    assert evidence.key == evidence_key(evidence.evidence_id)


def test_rpo_is_measured_on_the_workers_clock_so_a_server_clock_behind_it_does_not_age_backups(ahead):
    protection, _, manifest, record, _ = ahead

    finding = protection.assess(SOURCE_DB).finding(BACKUP_WITHIN_RPO)

    assert finding.passed, finding.detail
    assert "the database server's clock was 7200s behind the worker's" in finding.detail
    assert 0 <= record.rpo_seconds < 60
    assert abs(manifest.server_clock_skew + SKEW) < timedelta(minutes=1)


def test_a_worker_clock_behind_the_server_cannot_make_a_backup_look_fresher(tmp_path, source_cluster, source_db):
    clock = OffsetClock(-SKEW)
    protection = _protection(tmp_path, source_cluster, clock)
    protection.backup(SOURCE_DB)

    clock.offset += RPO + timedelta(seconds=5)  # RPO later: by the server's clock, still an hour to go
    finding = protection.assess(SOURCE_DB).finding(BACKUP_WITHIN_RPO)

    assert not finding.passed and "exceeds RPO 3600s" in finding.detail


def test_compliance_evidence_is_written_to_every_store_and_names_unreadable_manifests(
        tmp_path, source_cluster, source_db):
    clock = OffsetClock(timedelta(0))
    protection = _protection(tmp_path, source_cluster, clock)
    manifest = protection.backup(SOURCE_DB).manifest
    garble(make_stores(tmp_path / "stores")[2], manifest.manifest_key)

    evidence = protection.record_compliance()

    assert evidence.stored_in == STORE_NAMES and evidence.failed_stores == {}
    [assessment] = evidence.assessments
    assert not assessment.finding(COPIES_IN_REQUIRED_STORES).passed
    [broken] = assessment.unreadable
    assert broken.reason.startswith("unreadable manifest")
    for store in protection.all_stores():
        document = json.loads(read_bytes(store, evidence.key))
        assert document["generated_at"] == evidence.generated_at.isoformat()
        [database] = document["databases"]
        assert database["unreadable"] == [{"store": "gcp", "key": manifest.manifest_key, "reason": broken.reason}]
