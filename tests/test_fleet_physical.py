"""The fleet's physical fields: a policy's `physical` objectives and a cluster's repository, each
mistake one located message (as in test_fleet.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_fleet import load_errors, write_fleet

from platform_orchestration.fleet import load_fleet

# Lines 1-7: two stores (an S3 one and a local one), a policy with physical objectives, one without.
HEAD = """\
stores:
  - {name: aws-s3, kind: s3, bucket: pg-physical, endpoint_url: "http://127.0.0.1:9000"}
  - {name: local-eu, kind: local, path: stores/local}
policies:
  - {name: gold, rpo: 1h, stores: [aws-s3], drill: {every: 1d, rto: 15m}, retention: {keep_last: 7}, physical: {base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d}}
  - {name: plain, rpo: 1h, stores: [local-eu], drill: {every: 1d, rto: 15m}, retention: {keep_last: 7}}
databases: []
"""


def test_a_cluster_names_its_repository_and_the_policy_its_objectives(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
            physical: {store: aws-s3, policy: gold, dsn: "host=127.0.0.1 port=5432 user=postgres"}
          - {name: pg-b, cloud: aws, region: eu-west-1}
        """)
    fleet = load_fleet(path, environ={})
    cluster = fleet.cluster("pg-a")
    assert [c.name for c in fleet.physical_clusters()] == ["pg-a"]
    assert cluster.physical_server_name == "pg-a"
    assert (cluster.physical.path, cluster.physical.wal_compression, cluster.physical.backup_compression) == (
        "physical", "zstd", "lz4")
    physical = fleet.policy("gold").physical
    assert (physical.base_backup, physical.wal_max_lag, physical.pitr_window) == (
        timedelta(days=1), timedelta(minutes=5), timedelta(days=7))
    assert fleet.policy("plain").physical is None


def test_a_physical_repository_must_be_an_object_store(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
            physical:
              store: local-eu
              policy: gold
              dsn: host=127.0.0.1 user=postgres
        """)
    assert load_errors(path) == [
        f"{path}:13: clusters[0].physical.store: expected an s3, azure or gcs store "
        "(barman-cloud writes to object stores only), got local store 'local-eu'"]


def test_unknown_store_and_a_policy_without_physical_objectives(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
            physical:
              store: gcs-eu
              policy: plain
              dsn: host=127.0.0.1 user=postgres
        """)
    assert load_errors(path) == [
        f"{path}:13: clusters[0].physical.store: unknown store 'gcs-eu' (known: aws-s3, local-eu)",
        f"{path}:14: clusters[0].physical.policy: policy 'plain' has no physical section "
        "(base_backup, wal_max_lag, pitr_window)"]


def test_two_clusters_may_not_archive_into_one_repository(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
            physical: {store: aws-s3, policy: gold, dsn: host=a user=postgres, server_name: shop}
          - name: pg-b
            cloud: aws
            region: eu-west-1
            physical: {store: aws-s3, policy: gold, dsn: host=b user=postgres, server_name: shop}
        """)
    assert load_errors(path) == [
        f"{path}:16: clusters[1].physical: repository aws-s3:physical/shop is already another cluster's "
        "(two servers archiving into one repository would corrupt it) (first used at line 12)"]


def test_physical_fields_are_checked_like_every_other(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD.replace("pitr_window: 7d", "pitr_window: 1h"), """\
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
            physical:
              store: aws-s3
              policy: gold
              dsn: postgresql://postgres:hunter2@127.0.0.1/postgres
              wal_compression: brotli
              retries: 3
        """)
    errors = load_errors(path)
    assert errors == [
        f"{path}:5: policies[0].physical: pitr_window (1h) must be at least base_backup (1d): "
        "a window shorter than the backup cadence has no base backup to restore from",
        f"{path}:15: clusters[0].physical.dsn: a password must not be written in the fleet file; "
        "use `password: {env: ...}` or a Vault reference",
        f"{path}:16: clusters[0].physical.wal_compression: expected one of none, gzip, bzip2, xz, snappy, "
        "zstd, lz4, got 'brotli'",
        f"{path}:17: clusters[0].physical.retries: unknown field 'retries' (allowed: store, policy, dsn, "
        "password, server_name, path, endpoint_url, server_credentials, wal_compression, backup_compression)"]
    assert "hunter2" not in str(errors)
