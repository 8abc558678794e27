"""Copies of a physical repository in Azure Blob Storage and Google Cloud Storage, restored from
and pruned: a PostgreSQL 16 server (as nobody) archives with barman-cloud into a moto S3 bucket;
`copy_physical` copies the repository object by object into an Azurite container (the fleet's
SAS token) and a bucket of the GCS emulator. From each copy, barman-cloud-restore brings up a new
cluster with exactly the rows of the point asked for (an LSN between two inserts); retention
per the recovery window deletes, in each copy, the base backup the window no longer needs and
the WAL before the one it keeps, and what is left still restores. The emulators are real HTTP
servers the real SDKs talk to. Two servers, one per fixture: the pruning must not take the
restores' backup away, whatever order the tests run in."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from pg import execute
from physical_support import backdate_backup, stored_keys
from store_backends import unique_name
from stores_azure import ACCOUNT, ACCOUNT_KEY, AzureBackend
from stores_gcs import PROJECT
from stores_s3 import DUMMY_CREDENTIALS, REGION, S3Backend

from platform_orchestration.fleet import load_fleet
from platform_orchestration.physical.archiving import switch_and_wait_archived
from platform_orchestration.physical.pitr import RecoveryTarget, lsn_value, stop_restored
from platform_orchestration.physical.settings import apply_archiving
from platform_orchestration.physical.tools import barman_tools
from platform_orchestration.postgres import ephemeral_cluster
from platform_orchestration.protection import FleetProtection

pytestmark = pytest.mark.slow

_ENV = ("PCC_KEY_ID", "PCC_SECRET", "PCC_AZURE_SAS")


COPIES = ("azure-copy", "gcs-copy")


@dataclass
class Copied:
    protection: FleetProtection
    dsn: str  # the archiving server
    copied_to: dict[str, int]  # store -> objects copied into it
    lsn: str  # after row 2, before row 3


@contextlib.contextmanager
def _copied(moto_server, azurite, gcs_emulator, directory: Path) -> Iterator[Copied]:  # noqa: ANN001
    """A server archiving into S3, one base backup, rows 1-3 archived, copies made in both clouds."""
    s3 = S3Backend(*moto_server)
    bucket = s3.new_bucket()
    container = AzureBackend(azurite).create_container()
    gcs_bucket = unique_name("gcs-copy")
    gcs_emulator.admin.create_bucket(gcs_bucket)
    sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    create=True, add=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=2))
    saved = {name: os.environ.get(name) for name in _ENV}
    os.environ.update(PCC_KEY_ID=DUMMY_CREDENTIALS["access_key_id"],
                      PCC_SECRET=DUMMY_CREDENTIALS["secret_access_key"], PCC_AZURE_SAS=sas)
    try:
        with ephemeral_cluster(16) as cluster:
            fleet_file = directory / "fleet.yaml"
            fleet_file.write_text(f"""\
clusters:
  - name: pg-c
    cloud: aws
    region: {REGION}
    physical: {{store: aws-s3, policy: gold, dsn: "host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres"}}
stores:
  - name: aws-s3
    kind: s3
    bucket: {bucket}
    region: {REGION}
    endpoint_url: {s3.endpoint}
    credentials: {{access_key_id: {{env: PCC_KEY_ID}}, secret_access_key: {{env: PCC_SECRET}}}}
  - name: azure-copy
    kind: azure
    account_url: {azurite.account_url}
    container: {container}
    credentials: {{sas_token: {{env: PCC_AZURE_SAS}}}}
  - name: gcs-copy
    kind: gcs
    bucket: {gcs_bucket}
    project: {PROJECT}
    endpoint_url: {gcs_emulator.endpoint}
  - {{name: evidence, kind: local, path: {directory / "evidence"}}}
databases: []
policies:
  - name: gold
    rpo: 1h
    stores: [azure-copy, gcs-copy, evidence]
    drill: {{every: 1d, rto: 10m}}
    retention: {{keep_last: 3}}
    physical: {{base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d, copy_max_lag: 1h}}
""")
            protection = FleetProtection(load_fleet(fleet_file), workdir=directory)
            apply_archiving(cluster, barman_tools(), protection.physical_repository("pg-c"))
            dsn = cluster.connection().dsn
            execute(dsn, "CREATE TABLE copy_probe (id int PRIMARY KEY)", "INSERT INTO copy_probe VALUES (1)")
            protection.base_backup("pg-c", jobs=1)
            (lsn,), = execute(dsn, "INSERT INTO copy_probe VALUES (2)", "SELECT pg_current_wal_lsn()::text")
            execute(dsn, "INSERT INTO copy_probe VALUES (3)")
            switch_and_wait_archived(protection.physical_connection("pg-c"), protection.store("aws-s3"),
                                     protection.physical_repository("pg-c"))
            outcomes, failures = protection.copy_physical("pg-c")
            assert failures == {}, failures
            yield Copied(protection, dsn, {o.destination_store: len(o.copied) for o in outcomes}, lsn)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture(scope="module")
def copied(moto_server, azurite, gcs_emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copied]:
    with _copied(moto_server, azurite, gcs_emulator, tmp_path_factory.mktemp("pcopy-clouds")) as made:
        yield made


@pytest.fixture(scope="module")
def to_prune(moto_server, azurite, gcs_emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copied]:
    with _copied(moto_server, azurite, gcs_emulator, tmp_path_factory.mktemp("pcopy-prune")) as made:
        yield made


@pytest.mark.parametrize("store", COPIES)
def test_a_point_in_time_restore_from_a_copy_brings_back_exactly_that_point(copied: Copied, store: str,
                                                                            tmp_path: Path) -> None:
    assert copied.copied_to.get(store, 0) > 0, copied.copied_to
    restored = copied.protection.restore_pitr("pg-c", RecoveryTarget.parse(copied.lsn), tmp_path / "restored",
                                              store_name=store)
    try:
        rows = execute(f"host=127.0.0.1 port={restored.port} user=postgres dbname=postgres",
                        "SELECT id FROM copy_probe ORDER BY id")
        assert rows == [(1,), (2,)], f"restored from {store}: {rows}"
        assert lsn_value(restored.reached_lsn) >= lsn_value(copied.lsn)
        assert restored.repository.endswith(f"(store {store})"), restored.repository  # from the copy itself
    finally:
        stop_restored(restored, remove=True)


def test_retention_of_each_copy_keeps_the_window_and_what_is_left_restores(to_prune: Copied, tmp_path: Path) -> None:
    protection = to_prune.protection
    [older] = [b.backup_id for b in protection.list_base_backups("pg-c")["pg-c"]]
    newer = protection.base_backup("pg-c", jobs=1).backup.backup_id
    execute(to_prune.dsn, "INSERT INTO copy_probe VALUES (4)")
    switch_and_wait_archived(protection.physical_connection("pg-c"), protection.store("aws-s3"),
                             protection.physical_repository("pg-c"))
    assert protection.copy_physical("pg-c")[1] == {}
    # The older base backup looks 20 days old, the newer 10: with a 7-day window the newer one is
    # the one a restore to the window's start needs; the older one and the WAL before the newer go.
    for name in ("aws-s3", *COPIES):
        repository = protection.physical_store_repository("pg-c", name)
        backdate_backup(protection.store(name), repository, older, 20)
        backdate_backup(protection.store(name), repository, newer, 10)
    prefix = protection.physical_repository("pg-c").key_prefix
    before = {name: stored_keys(protection.store(name), prefix) for name in COPIES}

    plans = {plan.store: plan for plan in protection.prune_physical("pg-c")}

    for name in COPIES:
        plan, left = plans[name], stored_keys(protection.store(name), prefix)
        assert plan.delete == (older,) and plan.keep == (newer,) and plan.wal_to_delete, (name, plan)
        assert not any(f"/{older}/" in key for key in left), name
        assert any(f"/{newer}/" in key for key in left), name
        gone = before[name] - left
        assert gone and all(f"/{older}/" in key or any(w in key for w in plan.wal_to_delete) for key in gone), name
        restored = protection.restore_pitr("pg-c", RecoveryTarget(), tmp_path / name, store_name=name)
        try:
            rows = execute(f"host=127.0.0.1 port={restored.port} user=postgres dbname=postgres",
                            "SELECT id FROM copy_probe ORDER BY id")
            assert rows == [(1,), (2,), (3,), (4,)] and restored.backup_id == newer, (name, rows)
        finally:
            stop_restored(restored, remove=True)
