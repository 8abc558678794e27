"""Copies of a physical repository in other stores, retention per the recovery window, and
server-side encryption, on real servers: a PostgreSQL 16 server (as nobody) archives with
barman-cloud into one moto S3 bucket (SSE AES256); copies go object by object through our own
store classes to a second moto bucket (SSE aws:kms, a barman-cloud repository PITR restores
from) and to an Azurite container. Time is not faked except where a test says so: retention's
"older than the window" comes from backdating barman's own backup.info records."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pg import execute
from physical_support import backdate_backup, stored_keys
from stores_azure import Azurite, AzureBackend
from stores_s3 import DUMMY_CREDENTIALS, REGION, S3Backend

from platform_orchestration.backups.catalog import record_everywhere
from platform_orchestration.errors import InvalidDeclaration
from platform_orchestration.fleet import load_fleet
from platform_orchestration.physical.archiving import switch_and_wait_archived
from platform_orchestration.physical.base_backup import BaseBackup
from platform_orchestration.physical.copy import copy_lag, copy_repository, verify_copy
from platform_orchestration.physical.drill import PitrDrillRecord
from platform_orchestration.physical.encryption import observe_encryption
from platform_orchestration.physical.pitr import RecoveryTarget, stop_restored
from platform_orchestration.physical.retention import plan_retention
from platform_orchestration.physical.settings import apply_archiving
from platform_orchestration.physical.tools import barman_tools
from platform_orchestration.postgres import ephemeral_cluster
from platform_orchestration.protection import FleetProtection
from platform_orchestration.storage import write_bytes

pytestmark = pytest.mark.slow

KMS_KEY = "alias/physical-copies"


def _fleet_text(port: int, endpoint: str, primary: str, west: str, evidence: Path) -> str:
    credentials = "{access_key_id: {env: PCOPY_KEY_ID}, secret_access_key: {env: PCOPY_SECRET}}"
    return f"""\
clusters:
  - name: pg-c
    cloud: aws
    region: {REGION}
    physical: {{store: aws-s3, policy: gold, dsn: "host=127.0.0.1 port={port} user=postgres dbname=postgres"}}
stores:
  - name: aws-s3
    kind: s3
    bucket: {primary}
    region: {REGION}
    endpoint_url: {endpoint}
    credentials: {credentials}
    server_side_encryption: {{algorithm: AES256}}
  - name: aws-west
    kind: s3
    bucket: {west}
    region: {REGION}
    endpoint_url: {endpoint}
    credentials: {credentials}
    server_side_encryption: {{algorithm: "aws:kms", kms_key_id: {KMS_KEY}}}
  - {{name: evidence, kind: local, path: {evidence}}}
databases: []
policies:
  - name: gold
    rpo: 1h
    stores: [aws-west, evidence]
    drill: {{every: 1d, rto: 10m}}
    retention: {{keep_last: 3}}
    physical: {{base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d, copy_max_lag: 1h}}
"""


@dataclass
class Copied:
    protection: FleetProtection
    dsn: str
    fleet_file: Path

    @property
    def repository(self):  # noqa: ANN201
        return self.protection.physical_repository("pg-c")

    def store(self, name: str):  # noqa: ANN201
        return self.protection.store(name)


@pytest.fixture(scope="module")
def copied(moto_server: tuple[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copied]:
    """A cluster archiving into aws-s3 with one base backup taken, and its fleet."""
    s3 = S3Backend(*moto_server)
    primary, west = s3.new_bucket(), s3.new_bucket()
    directory = tmp_path_factory.mktemp("pcopy")
    saved = {name: os.environ.get(name) for name in ("PCOPY_KEY_ID", "PCOPY_SECRET")}
    os.environ.update(PCOPY_KEY_ID=DUMMY_CREDENTIALS["access_key_id"],
                      PCOPY_SECRET=DUMMY_CREDENTIALS["secret_access_key"])
    try:
        with ephemeral_cluster(16) as cluster:
            fleet_file = directory / "fleet.yaml"
            fleet_file.write_text(_fleet_text(cluster.port, s3.endpoint, primary, west, directory / "evidence"))
            protection = FleetProtection(load_fleet(fleet_file), workdir=directory)
            apply_archiving(cluster, barman_tools(), protection.physical_repository("pg-c"))
            dsn = cluster.connection().dsn
            execute(dsn, "CREATE TABLE copy_probe (id int PRIMARY KEY)", "INSERT INTO copy_probe VALUES (1)")
            protection.base_backup("pg-c", jobs=1)
            yield Copied(protection, dsn, fleet_file)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _archive_more(copied: Copied, value: int) -> str:
    execute(copied.dsn, f"INSERT INTO copy_probe VALUES ({value})")
    connection = copied.protection.physical_connection("pg-c")
    return switch_and_wait_archived(connection, copied.store("aws-s3"), copied.repository)


def test_copies_are_incremental_verified_and_a_changed_object_is_found(copied: Copied, azurite: Azurite) -> None:
    repository, source = copied.repository, copied.store("aws-s3")
    azure = AzureBackend(azurite).new_store(name="azure-copy")
    # A base backup barman has not finished: never copied.
    unfinished = f"{repository.base_prefix}20200101T000000/"
    write_bytes(source, unfinished + "backup.info", b"backup_id=20200101T000000\nstatus=STARTED\n")
    write_bytes(source, unfinished + "data.tar", b"half a backup")
    try:
        first = copy_repository(source, azure, repository)
        held = stored_keys(source, repository.key_prefix) - {unfinished + "backup.info", unfinished + "data.tar"}
        assert set(first.copied) == held and first.skipped_unfinished == ("20200101T000000",)
        assert stored_keys(azure, repository.key_prefix) == held
        assert first.lag.segments_behind == 0 and first.lag.backups_behind == 0 and first.lag.lag_seconds == 0

        again = copy_repository(source, azure, repository)
        assert again.copied == () and again.already_present == len(held)

        segment = _archive_more(copied, 2)
        third = copy_repository(source, azure, repository)
        assert third.copied and all(key.startswith(repository.wals_prefix) for key in third.copied)
        assert any(key.rsplit("/", 1)[-1].startswith(segment) for key in third.copied)
    finally:
        source.delete(unfinished + "backup.info")
        source.delete(unfinished + "data.tar")

    # An object changed in the copy after it was copied (same size, other bytes) is found by
    # re-reading the copy against the SHA-256 recorded at copy time, and copied again.
    victim = sorted(k for k in third.copied)[0]
    size = len(b"".join(azure.read(victim)))
    write_bytes(azure, victim, b"\0" * size)
    found = verify_copy(azure, repository)
    assert not found.passed and [p.split(": ")[0] for p in found.corrupted] == [victim]
    repaired = copy_repository(source, azure, repository, verify=True)
    assert [p.split(": ")[0] for p in repaired.corrupted] == [victim] and repaired.copied == (victim,)
    assert verify_copy(azure, repository).passed
    assert b"".join(azure.read(victim)) == b"".join(source.read(victim))


def test_the_copy_lag_check_fails_when_a_copy_falls_behind_and_passes_once_caught_up(copied: Copied) -> None:
    repository, source, west = copied.repository, copied.store("aws-s3"), copied.store("aws-west")
    copy_repository(source, west, repository)
    _archive_more(copied, 3)
    allowed = repository.policy.allowed_copy_lag
    two_hours_on = datetime.now(timezone.utc) + timedelta(hours=2)
    behind = copy_lag(source, west, repository, clock=lambda: two_hours_on)
    assert behind.segments_behind >= 1 and behind.newest_wal_copy < behind.newest_wal_repository
    [problem] = behind.problems(allowed)
    assert "copy in aws-west is" in problem and "(allowed 3600s)" in problem
    assert copy_lag(source, west, repository).problems(allowed) == []  # seconds behind: within 1h

    outcomes, failures = copied.protection.copy_physical("pg-c")
    assert failures == {} and [o.destination_store for o in outcomes] == ["aws-west"]
    caught_up = copy_lag(source, west, repository, clock=lambda: two_hours_on)
    assert caught_up.problems(allowed) == [] and caught_up.newest_wal_copy == caught_up.newest_wal_repository
    finding = {f.check: f for f in copied.protection.assess_cluster("pg-c").findings}["physical_copies_within_lag"]
    assert finding.passed and "aws-west 0s behind" in finding.detail and "evidence" in finding.detail


def test_server_side_encryption_is_asked_for_and_visible_on_every_object(copied: Copied, moto_server) -> None:
    repository = copied.repository
    copied.protection.copy_physical("pg-c")
    primary, west = copied.store("aws-s3"), copied.store("aws-west")
    # Written by barman-cloud (archive_command and backup) and by our copy: each as its store declares.
    assert {primary.object_encryption(k) for k in stored_keys(primary, repository.key_prefix)} == {("AES256", None)}
    assert {west.object_encryption(k)[0] for k in stored_keys(west, repository.key_prefix)} == {"aws:kms"}
    assert all(west.object_encryption(k)[1].endswith(KMS_KEY) for k in stored_keys(west, repository.key_prefix))
    finding = {f.check: f for f in copied.protection.assess_cluster("pg-c").findings}["backups_encrypted"]
    assert finding.passed and "2 of 2 store(s)" in finding.detail and "S3 SSE aws:kms" in finding.detail

    # A copy in a store that asks for nothing is reported, not assumed encrypted.
    plain = S3Backend(*moto_server).new_store(name="plain")
    copy_repository(primary, plain, repository)
    observed = observe_encryption(plain, repository, "copy")
    assert not observed.passed and "not encrypted at rest" in observed.problem


def test_pitr_from_a_copy_drills_rotate_and_retention_keeps_the_window_and_the_verified_copy(
        copied: Copied, tmp_path: Path) -> None:
    protection, repository = copied.protection, copied.repository
    with pytest.raises(InvalidDeclaration, match="store evidence holds no copy of cluster pg-c's physical repository"):
        protection.restore_pitr("pg-c", RecoveryTarget(), tmp_path / "x", store_name="evidence")

    # Rotation: after a drill from the repository's store, the next one restores from the copy in
    # the other store, after copying the marker's WAL there; it proves the exact content at the
    # point (the marker, nothing after it).
    earlier = PitrDrillRecord(drill_id="20200101T000000000Z-000000", cluster="pg-c", source_store="aws-s3",
                              started_at=datetime(2020, 1, 1, tzinfo=timezone.utc),
                              finished_at=datetime(2020, 1, 1, tzinfo=timezone.utc), passed=True,
                              rto_target_seconds=600, rpo_target_seconds=300)
    record_everywhere([protection.store("evidence")], earlier.key, earlier.to_json(), "a drill record")
    drill = protection.pitr_drill("pg-c")
    assert drill.passed, drill.failure
    assert (drill.source_store, drill.repository_store) == ("aws-west", "aws-s3") and drill.copy_seconds >= 0
    verified = drill.backup_id

    # Another base backup; the drill-verified one then looks 20 days old, the newer one 10: with a
    # 7-day window the newer one is the one a restore to the window's start needs.
    newer = protection.base_backup("pg-c", jobs=1).backup.backup_id
    _archive_more(copied, 12)
    protection.copy_physical("pg-c")
    assert [b.backup_id for b in protection.list_base_backups("pg-c")["pg-c"]] == [verified, newer]
    for name in ("aws-s3", "aws-west"):
        backdate_backup(protection.store(name), protection.physical_store_repository("pg-c", name), verified, 20)
        backdate_backup(protection.store(name), protection.physical_store_repository("pg-c", name), newer, 10)
    keys_before = {name: stored_keys(protection.store(name), repository.key_prefix) for name in ("aws-s3", "aws-west")}

    dry = {plan.store: plan for plan in protection.prune_physical("pg-c", dry_run=True)}
    assert keys_before == {name: stored_keys(protection.store(name), repository.key_prefix) for name in keys_before}
    # The repository: the 10-day-old backup covers the window's start, the 20-day-old one goes,
    # with the WAL before the kept one; barman's own dry run agrees.
    assert dry["aws-s3"].delete == (verified,) and dry["aws-s3"].keep == (newer,)
    assert dry["aws-s3"].wal_to_delete and not dry["aws-s3"].kept_for_drill
    # The copy: the same rule, but the drill restored that backup from aws-west: it stays.
    assert dry["aws-west"].delete == () and dry["aws-west"].kept_for_drill and dry["aws-west"].protected == verified

    done = {plan.store: plan for plan in protection.prune_physical("pg-c")}
    assert done["aws-s3"].method.startswith("barman-cloud-backup-delete --retention-policy 'RECOVERY WINDOW OF 7 DAYS'")
    assert [b.backup_id for b in protection.list_base_backups("pg-c")["pg-c"]] == [newer]
    left = stored_keys(protection.store("aws-s3"), repository.key_prefix)
    assert not any(name in key for name in dry["aws-s3"].wal_to_delete for key in left)
    assert stored_keys(protection.store("aws-west"), repository.key_prefix) == keys_before["aws-west"]
    # What remains still restores: the newest kept backup and its WAL.
    latest = protection.restore_pitr("pg-c", RecoveryTarget(), tmp_path / "after-prune")
    try:
        assert (12,) in execute(f"host=127.0.0.1 port={latest.port} user=postgres", "SELECT id FROM copy_probe")
    finally:
        stop_restored(latest, remove=True)


@pytest.mark.parametrize("physical, message", [
    ("{base_backup: 1d, wal_max_lag: 5m, pitr_window: 2d, copy_max_lag: 3d}", "copy_max_lag \\(3d\\) must be at most"),
    ("{base_backup: 1d, wal_max_lag: 5m, pitr_window: 2d, copy_max_lag: soon}", "copy_max_lag"),
])
def test_copy_max_lag_is_checked_like_every_other_field(tmp_path: Path, physical: str, message: str) -> None:
    text = _fleet_text(5432, "http://127.0.0.1:1", "bucket-a", "bucket-b", tmp_path / "evidence")
    path = tmp_path / "fleet.yaml"
    path.write_text(text.replace("{base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d, copy_max_lag: 1h}", physical))
    with pytest.raises(InvalidDeclaration, match=message):
        load_fleet(path)


def test_a_kms_key_needs_aws_kms(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(_fleet_text(5432, "http://127.0.0.1:1", "bucket-a", "bucket-b", tmp_path / "evidence")
                    .replace('{algorithm: "aws:kms", kms_key_id', '{algorithm: AES256, kms_key_id'))
    with pytest.raises(InvalidDeclaration, match="kms_key_id is only allowed with algorithm aws:kms"):
        load_fleet(path)


def _backup(backup_id: str, ended: datetime, status: str = "DONE") -> BaseBackup:
    return BaseBackup(backup_id=backup_id, backup_name=None, status=status, begin_lsn="0/2000028",
                      end_lsn="0/2000100", begin_wal="000000010000000000000002", end_wal="000000010000000000000002",
                      timeline=1, begin_time=ended, end_time=ended, cluster_bytes=1, server_version=160000,
                      system_id="1")


def test_the_recovery_window_keeps_the_backup_that_covers_its_start_and_never_the_drill_verified_one() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    backups = [_backup(f"202611{day:02d}T000000", now - timedelta(days=31 - day)) for day in (1, 10, 20, 25, 30)]
    backups.append(_backup("20261129T000000", now - timedelta(days=2), status="FAILED"))
    # 36h rounds up to 2 days: the 30th (1.5 days old) is in it, the 25th covers its start.
    plan = plan_retention(backups, window=timedelta(hours=36), now=now, store="s")
    assert plan.keep == ("20261125T000000", "20261130T000000")
    assert plan.delete == ("20261101T000000", "20261110T000000", "20261120T000000")
    assert plan.unfinished == ("20261129T000000",) and not plan.kept_for_drill
    protected = plan_retention(backups, window=timedelta(hours=36), now=now, store="s", protected="20261110T000000")
    assert protected.delete == ("20261101T000000", "20261120T000000") and protected.kept_for_drill
    # Nothing in the window: the newest backup is kept all the same.
    assert plan_retention(backups[:1], window=timedelta(days=1), now=now, store="s").keep == ("20261101T000000",)
