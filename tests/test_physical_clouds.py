"""Physical repositories in Azure Blob Storage and Google Cloud Storage, end to end against
their emulators (the session's Azurite and gcp-storage-emulator, real HTTP servers that the
real SDKs barman-cloud uses talk to): a PostgreSQL server (as nobody) archives its WAL with
barman-cloud-wal-archive, barman-cloud-backup takes a base backup, and point-in-time restores
to a time and to an LSN bring up new clusters with exactly the rows of that point.

One server, one base backup and one pair of points per cloud (module-scoped): PostgreSQL 16
archives to Azurite through a SAS token, PostgreSQL 18 to the GCS emulator anonymously."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from pg import execute
from physical_support import ArchivedCluster, archived_cluster_on, repository_on
from store_backends import unique_name
from stores_azure import ACCOUNT, ACCOUNT_KEY, AzureBackend
from stores_gcs import PROJECT

from platform_orchestration.fleet.model import AzureStoreSpec, GcsStoreSpec
from platform_orchestration.physical.archiving import archive_status, switch_and_wait_archived
from platform_orchestration.physical.base_backup import BaseBackup, list_base_backups, take_base_backup
from platform_orchestration.physical.pitr import RecoveryTarget, restore_to_point, stop_restored
from platform_orchestration.stores import store_from_spec

pytestmark = pytest.mark.slow


@dataclass
class Prepared:
    cloud: str
    archived: ArchivedCluster
    backup: BaseBackup
    point_in_time: datetime
    lsn_point: str


def _azure(request: pytest.FixtureRequest) -> tuple[AzureStoreSpec, dict, object, int]:
    azurite = request.getfixturevalue("azurite")
    backend = AzureBackend(azurite)
    container = backend.create_container()
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    create=True, add=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=2))
    spec = AzureStoreSpec(name="azure-blob", account_url=azurite.account_url, container=container)
    return spec, {"sas_token": sas}, backend.new_store(name="azure-blob", container=container), 16


def _gcs(request: pytest.FixtureRequest) -> tuple[GcsStoreSpec, dict, object, int]:
    emulator = request.getfixturevalue("gcs_emulator")
    bucket = unique_name("gcs-physical")
    emulator.admin.create_bucket(bucket)
    spec = GcsStoreSpec(name="gcs", bucket=bucket, project=PROJECT, endpoint_url=emulator.endpoint)
    return spec, {}, store_from_spec(spec, {}), 18


@pytest.fixture(scope="module", params=["azure", "gcs"])
def prepared(request: pytest.FixtureRequest) -> Iterator[Prepared]:
    spec, credentials, store, major = (_azure if request.param == "azure" else _gcs)(request)
    with archived_cluster_on(spec, credentials, store, major) as archived:
        dsn = archived.cluster.connection().dsn
        execute(dsn, "CREATE TABLE pitr_probe (id int PRIMARY KEY)",
                 "INSERT INTO pitr_probe SELECT generate_series(1, 1000)")
        backup = take_base_backup(archived.tools, archived.repository, archived.cluster.connection(),
                                  store=archived.store).backup
        execute(dsn, "INSERT INTO pitr_probe VALUES (1001)")
        time.sleep(0.3)
        (point_in_time,), = execute(dsn, "SELECT clock_timestamp()")
        time.sleep(0.3)
        (lsn_point,), = execute(dsn, "INSERT INTO pitr_probe VALUES (1002)", "SELECT pg_current_wal_lsn()::text")
        execute(dsn, "INSERT INTO pitr_probe VALUES (1003)")
        switch_and_wait_archived(archived.cluster.connection(), archived.store, archived.repository)
        yield Prepared(request.param, archived, backup, point_in_time, lsn_point)


def test_wal_is_archived_and_a_base_backup_taken(prepared: Prepared) -> None:
    archived, backup = prepared.archived, prepared.backup
    assert backup.done and backup.begin_lsn and backup.end_lsn and backup.begin_wal <= backup.end_wal
    assert backup.server_major == (16 if prepared.cloud == "azure" else 18)
    assert 0 < backup.stored_bytes < backup.cluster_bytes
    backups = list_base_backups(archived.tools, archived.repository)
    status = archive_status(archived.cluster.connection(), archived.store, archived.repository, backups)
    assert status.problems(timedelta(minutes=5)) == [] and status.failed_count == 0
    assert status.missing == () and status.newest_in_store >= backup.end_wal


@pytest.mark.parametrize("by", ["time", "lsn"])
def test_a_point_in_time_restore_brings_back_exactly_that_point(prepared: Prepared, by: str,
                                                                tmp_path: Path) -> None:
    archived = prepared.archived
    target = RecoveryTarget(time=prepared.point_in_time) if by == "time" else RecoveryTarget.parse(prepared.lsn_point)
    result = restore_to_point(archived.tools, archived.repository, target, tmp_path / "restored",
                              store=archived.store)
    try:
        restored = f"host=127.0.0.1 port={result.port} user=postgres dbname=postgres"
        rows = [r for (r,) in execute(restored, "SELECT id FROM pitr_probe ORDER BY id")]
        assert rows == list(range(1, 1002 if by == "time" else 1003))
        assert result.backup_id == prepared.backup.backup_id and result.stopped_at.startswith("recovery stopping")
    finally:
        stop_restored(result, remove=True)


def test_an_azure_account_key_reaches_the_emulator_through_a_connection_string(azurite) -> None:
    """barman-cloud takes a non-windows.net account URL for "emulated storage", reachable only
    through AZURE_STORAGE_CONNECTION_STRING: the account key becomes one (listing an empty
    container with barman-cloud-backup-list proves Azurite accepts it)."""
    from platform_orchestration.physical.tools import barman_tools

    container = AzureBackend(azurite).create_container()
    spec = AzureStoreSpec(name="azure-blob", account_url=azurite.account_url, container=container)
    repository = repository_on(spec, {"account_key": ACCOUNT_KEY}, "pg-k", "host=127.0.0.1 dbname=postgres")
    assert set(repository.environment) == {"AZURE_STORAGE_CONNECTION_STRING"}
    assert f"BlobEndpoint={azurite.account_url};" in repository.environment["AZURE_STORAGE_CONNECTION_STRING"]
    assert list_base_backups(barman_tools(), repository) == []
