"""A standby seeded from its primary's physical repository, as CloudNativePG replica clusters start:
a real PostgreSQL 16 primary archiving through barman-cloud into moto S3, a base backup, the
standby restored from it (barman-cloud-restore) and replaying the archive until it streams; when
streaming breaks, it keeps up from the archive (restore_command), and streams again after."""

from __future__ import annotations

from pathlib import Path

import pytest
from physical_support import archived_cluster
from replication_support import PRIMARY, STANDBY, execute, replica_pair, wait_for

from platform_orchestration.physical.archiving import switch_and_wait_archived
from platform_orchestration.physical.base_backup import take_base_backup

pytestmark = pytest.mark.slow
SECRET = "not-a-real-secret-key-0123456789"


def test_a_standby_seeded_from_the_repository_falls_back_to_the_archive_when_streaming_breaks(
        s3_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_S3_KEY_ID", "testing")
    monkeypatch.setenv("TEST_S3_SECRET", SECRET)
    with archived_cluster(s3_backend, 16) as archived:
        port = archived.cluster.port
        physical = (f"\n    physical: {{store: aws-s3, policy: gold, server_name: pg-a, "
                    f"dsn: \"host=127.0.0.1 port={port} user=postgres dbname=postgres\"}}")
        stores = (f"\n  - {{name: aws-s3, kind: s3, bucket: {archived.spec.bucket}, region: us-east-1, "
                  f"endpoint_url: \"{s3_backend.endpoint}\", credentials: {{access_key_id: {{env: TEST_S3_KEY_ID}}, "
                  "secret_access_key: {env: TEST_S3_SECRET}}}")
        with replica_pair(16, tmp_path, primary=archived.cluster, physical=physical, stores=stores,
                          seed="auto") as pair:
            primary_dsn = archived.cluster.connection().dsn
            execute(primary_dsn, "INSERT INTO probe (payload) SELECT 'in the base backup' FROM generate_series(1, 100)")
            backup = take_base_backup(archived.tools, archived.repository, archived.cluster.connection(),
                                      store=archived.store).backup
            execute(primary_dsn, "INSERT INTO probe (payload) SELECT 'after it' FROM generate_series(1, 100)")
            seeded = pair.protection.seed_standby(STANDBY)
            assert seeded.method == "repository" and seeded.backup_id == backup.backup_id and seeded.archive_fallback
            standby_dsn = pair.standby.connection().dsn
            wait_for(lambda: execute(standby_dsn, "SELECT count(*) FROM probe")[0][0] == 200, what="rows on the standby")
            [(restore, conninfo)] = execute(standby_dsn, "SELECT current_setting('restore_command'), "
                                                         "current_setting('primary_conninfo')")
            assert "barman.clients.cloud_walrestore" in restore and SECRET not in restore + conninfo
            for path in pair.standby.data_dir.rglob("*.conf"):
                assert SECRET not in path.read_text(errors="replace")
            assert pair.protection.replication_status(STANDBY).streaming

            # Streaming breaks: the standby keeps up from the archive.
            execute(standby_dsn, "ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'",
                    "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=replicator'",
                    "SELECT pg_reload_conf()")
            wait_for(lambda: not pair.protection.replication_status(STANDBY).streaming, what="streaming to stop")
            execute(primary_dsn, "INSERT INTO probe (payload) SELECT 'through the archive' FROM generate_series(1, 50)")
            switch_and_wait_archived(archived.cluster.connection(), archived.store, archived.repository)
            wait_for(lambda: execute(standby_dsn, "SELECT count(*) FROM probe")[0][0] == 250, timeout=60,
                     what="the archived rows replayed without streaming")
            status = pair.protection.replication_status(STANDBY)
            assert not status.streaming and status.state == "not connected"

            execute(standby_dsn, f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'", "SELECT pg_reload_conf()")
            wait_for(lambda: pair.protection.replication_status(STANDBY).streaming, what="streaming again")


def test_a_standby_in_another_cloud_seeds_from_the_copy_in_its_own_cloud(
        s3_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The primary's repository is in aws; its policy keeps a copy in an S3-compatible store in
    azure, the standby's cloud: the seed restores the copy's base backup and the standby's
    restore_command reads the copy, never the primary's cloud (as a CloudNativePG replica
    cluster bootstraps from its own cloud's object store)."""
    monkeypatch.setenv("TEST_S3_KEY_ID", "testing")
    monkeypatch.setenv("TEST_S3_SECRET", SECRET)
    with archived_cluster(s3_backend, 16) as archived:
        port = archived.cluster.port
        copy_bucket = s3_backend.new_bucket()
        physical = (f"\n    physical: {{store: aws-s3, policy: gold, server_name: pg-a, "
                    f"dsn: \"host=127.0.0.1 port={port} user=postgres dbname=postgres\"}}")
        credentials = "credentials: {access_key_id: {env: TEST_S3_KEY_ID}, secret_access_key: {env: TEST_S3_SECRET}}"
        stores = (f"\n  - {{name: aws-s3, kind: s3, bucket: {archived.spec.bucket}, region: us-east-1, "
                  f"endpoint_url: \"{s3_backend.endpoint}\", {credentials}}}"
                  f"\n  - {{name: azure-s3, kind: s3, cloud: azure, bucket: {copy_bucket}, region: us-east-1, "
                  f"endpoint_url: \"{s3_backend.endpoint}\", {credentials}}}")
        with replica_pair(16, tmp_path, primary=archived.cluster, physical=physical, stores=stores,
                          seed="repository", policy_stores=("aws", "azure", "azure-s3")) as pair:
            primary_dsn = archived.cluster.connection().dsn
            execute(primary_dsn, "INSERT INTO probe (payload) SELECT 'in the base backup' FROM generate_series(1, 100)")
            backup = take_base_backup(archived.tools, archived.repository, archived.cluster.connection(),
                                      store=archived.store).backup
            assert pair.protection.archive_fallback(STANDBY).repository.store == "azure-s3"
            _outcomes, failures = pair.protection.copy_physical(PRIMARY)
            assert not failures
            seeded = pair.protection.seed_standby(STANDBY)
            assert seeded.method == "repository" and seeded.backup_id == backup.backup_id
            standby_dsn = pair.standby.connection().dsn
            wait_for(lambda: execute(standby_dsn, "SELECT count(*) FROM probe")[0][0] == 100, what="rows on the standby")
            [(restore,)] = execute(standby_dsn, "SELECT current_setting('restore_command')")
            assert copy_bucket in restore and archived.spec.bucket not in restore
