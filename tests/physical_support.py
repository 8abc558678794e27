"""Test support for physical backups: a real PostgreSQL server (as nobody) archiving through
barman-cloud into a fresh bucket of the session's moto S3 server, or a fresh container of the
session's Azurite, or a fresh bucket of the session's GCS emulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from stores_s3 import DUMMY_CREDENTIALS, REGION, S3Backend

from platform_orchestration.fleet.model import Cluster, PhysicalPolicy, S3StoreSpec
from platform_orchestration.fleet.model import Store as StoreSpec
from platform_orchestration.physical.repository import Repository, repository_for
from platform_orchestration.physical.settings import apply_archiving
from platform_orchestration.physical.tools import BarmanTools, barman_tools
from platform_orchestration.postgres import LocalCluster, ephemeral_cluster
from platform_orchestration.storage import ObjectStore, write_bytes

POLICY = PhysicalPolicy(base_backup="1d", wal_max_lag="5m", pitr_window="7d")


@dataclass
class ArchivedCluster:
    cluster: LocalCluster
    repository: Repository
    store: ObjectStore
    tools: BarmanTools
    spec: StoreSpec


def repository_on(spec: StoreSpec, credentials: Mapping[str, str], cluster_name: str, dsn: str,
                  **physical: str) -> Repository:
    cluster = Cluster(name=cluster_name, cloud=spec.cloud, region=REGION,
                      physical={"store": spec.name, "policy": "gold", "dsn": dsn, **physical})
    return repository_for(cluster, spec, credentials, POLICY)


def repository_in(s3_backend: S3Backend, bucket: str, cluster_name: str, dsn: str) -> tuple[Repository, S3StoreSpec]:
    spec = S3StoreSpec(name="aws-s3", bucket=bucket, region=REGION, endpoint_url=s3_backend.endpoint)
    return repository_on(spec, DUMMY_CREDENTIALS, cluster_name, dsn), spec


@contextlib.contextmanager
def archived_cluster_on(spec: StoreSpec, credentials: Mapping[str, str], store: ObjectStore, major: int,
                        name: str = "pg-a") -> Iterator[ArchivedCluster]:
    """A fresh cluster of `major` archiving into the store `spec` (our own client for it:
    `store`), stopped and deleted on exit."""
    with ephemeral_cluster(major) as cluster:
        repository = repository_on(spec, credentials, name, cluster.connection().dsn)
        tools = barman_tools()
        apply_archiving(cluster, tools, repository)
        yield ArchivedCluster(cluster, repository, store, tools, spec)


@contextlib.contextmanager
def archived_cluster(s3_backend: S3Backend, major: int, name: str = "pg-a") -> Iterator[ArchivedCluster]:
    """A fresh cluster of `major` archiving into a fresh bucket, stopped and deleted on exit."""
    bucket = s3_backend.new_bucket()
    spec = S3StoreSpec(name="aws-s3", bucket=bucket, region=REGION, endpoint_url=s3_backend.endpoint)
    with archived_cluster_on(spec, DUMMY_CREDENTIALS, s3_backend.store(bucket), major, name) as archived:
        yield archived


def backdate_backup(store: ObjectStore, repository: Repository, backup_id: str, days: int) -> None:
    """Make a base backup look `days` older: its begin and end times in barman's backup.info
    (what barman's retention and ours read), the rest of the record as it was."""
    key = f"{repository.base_prefix}{backup_id}/backup.info"
    lines = []
    for line in b"".join(store.read(key)).decode().splitlines():
        name, _, value = line.partition("=")
        if name in ("begin_time", "end_time") and value and value != "None":
            value = str(datetime.fromisoformat(value) - timedelta(days=days))
        lines.append(f"{name}={value}" if _ else line)
    write_bytes(store, key, ("\n".join(lines) + "\n").encode())


def stored_keys(store: ObjectStore, prefix: str) -> set[str]:
    """Every key under `prefix` in `store`."""
    return {info.key for info in store.list(prefix)}
