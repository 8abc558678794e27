"""Test support for physical backups: a real PostgreSQL server (as nobody) archiving through
barman-cloud into a fresh bucket of the session's moto S3 server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from stores_s3 import DUMMY_CREDENTIALS, REGION, S3Backend

from platform_orchestration.fleet.model import Cluster, PhysicalPolicy, S3StoreSpec
from platform_orchestration.physical.repository import Repository, repository_for
from platform_orchestration.physical.settings import apply_archiving
from platform_orchestration.physical.tools import BarmanTools, barman_tools
from platform_orchestration.postgres import LocalCluster, ephemeral_cluster
from platform_orchestration.storage.s3 import S3ObjectStore

POLICY = PhysicalPolicy(base_backup="1d", wal_max_lag="5m", pitr_window="7d")


@dataclass
class ArchivedCluster:
    cluster: LocalCluster
    repository: Repository
    store: S3ObjectStore
    tools: BarmanTools
    spec: S3StoreSpec


def repository_in(s3_backend: S3Backend, bucket: str, cluster_name: str, dsn: str) -> tuple[Repository, S3StoreSpec]:
    spec = S3StoreSpec(name="aws-s3", bucket=bucket, region=REGION, endpoint_url=s3_backend.endpoint)
    cluster = Cluster(name=cluster_name, cloud="aws", region=REGION,
                      physical={"store": "aws-s3", "policy": "gold", "dsn": dsn})
    return repository_for(cluster, spec, DUMMY_CREDENTIALS, POLICY), spec


@contextlib.contextmanager
def archived_cluster(s3_backend: S3Backend, major: int, name: str = "pg-a") -> Iterator[ArchivedCluster]:
    """A fresh cluster of `major` archiving into a fresh bucket, stopped and deleted on exit."""
    bucket = s3_backend.new_bucket()
    with ephemeral_cluster(major) as cluster:
        repository, spec = repository_in(s3_backend, bucket, name, cluster.connection().dsn)
        tools = barman_tools()
        apply_archiving(cluster, tools, repository)
        yield ArchivedCluster(cluster, repository, s3_backend.store(bucket), tools, spec)
