"""Test support for standby clusters: a real primary (as nobody) with a password-protected
replication role and pg_rewind-ready data (wal_log_hints), a fleet file declaring a standby of it
in another cloud, and teardown that stops and removes whatever the tests started."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from platform_orchestration.fleet import load_fleet
from platform_orchestration.postgres import LocalCluster, ephemeral_cluster
from platform_orchestration.postgres.cluster import free_port, local_cluster
from platform_orchestration.protection import FleetProtection
from platform_orchestration.secrets import LocalSecretProvider

REPLICATION_PASSWORD = "repl-pw-7f3a9c1e55"
PASSWORD_ENV = "TEST_REPLICATION_PASSWORD"
STANDBY = "pg-standby"
PRIMARY = "pg-primary"
# Small enough that a few MB of writes with the standby down break every objective.
POLICY = "{max_lag_bytes: 512KiB, max_lag: 2s, failover_rto: 1m, max_slot_wal: 1MiB}"


def execute(dsn: str, *statements: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        rows: list[tuple] = []
        for statement in statements:
            cursor = conn.execute(statement, params or None)
            rows = cursor.fetchall() if cursor.description else []
        return rows


def wait_for(probe: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll ``probe`` until it returns something true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def prepare_primary(cluster: LocalCluster) -> None:
    """A replication role that must give its password (scram), and wal_log_hints for pg_rewind."""
    dsn = cluster.connection().dsn
    execute(dsn, "ALTER SYSTEM SET wal_log_hints = on",
            f"CREATE ROLE replicator REPLICATION LOGIN PASSWORD '{REPLICATION_PASSWORD}'",
            "CREATE TABLE probe (id bigserial PRIMARY KEY, payload text)")
    hba = cluster.data_dir / "pg_hba.conf"
    hba.write_text("host replication replicator 127.0.0.1/32 scram-sha-256\n"
                   "host all replicator 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cluster.stop()
    cluster.start()


def write_fleet(root: Path, primary_port: int, standby_port: int, *, physical: str = "", stores: str = "",
                seed: str = "basebackup", policy_stores: tuple[str, ...] = ("aws", "azure")) -> Path:
    path = root / "fleet.yaml"
    path.write_text(f"""\
clusters:
  - name: {PRIMARY}
    cloud: aws
    region: eu-west-1{physical}
  - name: {STANDBY}
    cloud: azure
    region: westeurope
    role: standby
    replicates: {PRIMARY}
    standby:
      policy: gold
      dsn: host=127.0.0.1 port={standby_port} user=postgres dbname=postgres
      primary_conninfo: host=127.0.0.1 port={primary_port} user=replicator
      replication_password: {{env: {PASSWORD_ENV}}}
      primary_dsn: host=127.0.0.1 port={primary_port} user=postgres dbname=postgres
      directory: standby
      seed: {seed}
stores:
  - {{name: aws, kind: local, cloud: aws, path: stores/aws}}
  - {{name: azure, kind: local, cloud: azure, path: stores/azure}}{stores}
databases: []
policies:
  - name: gold
    rpo: 1h
    stores: [{", ".join(policy_stores)}]
    drill: {{every: 1d, rto: 10m}}
    retention: {{keep_last: 3}}
    replication: {POLICY}{'''
    physical: {base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d}''' if physical else ''}
""")
    return path


@dataclass
class ReplicaPair:
    primary: LocalCluster
    fleet_file: Path
    protection: FleetProtection
    standby_dir: Path

    @property
    def standby(self) -> LocalCluster:
        """The standby's local cluster (its stand-in directory when ours is private)."""
        port = int(self.protection.standby_target(STANDBY).standby_port)
        cluster = local_cluster(self.standby_dir, port, self.primary.install.major)
        return LocalCluster(cluster.base_dir, port, cluster.install)


@contextlib.contextmanager
def password_in_environment() -> Iterator[None]:
    previous = os.environ.get(PASSWORD_ENV)
    os.environ[PASSWORD_ENV] = REPLICATION_PASSWORD
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = previous


def stop_and_remove(cluster: LocalCluster) -> None:
    with contextlib.suppress(Exception):
        cluster.stop()
    shutil.rmtree(cluster.base_dir, ignore_errors=True)


@contextlib.contextmanager
def replica_pair(major: int, root: Path, *, primary: LocalCluster | None = None, physical: str = "",
                 stores: str = "", seed: str = "basebackup",
                 policy_stores: tuple[str, ...] = ("aws", "azure")) -> Iterator[ReplicaPair]:
    """A primary of ``major`` (a new one, or ``primary``) and a fleet declaring a standby of it; the
    standby is not seeded yet. Everything is stopped and removed on exit."""
    root.mkdir(parents=True, exist_ok=True)
    with password_in_environment(), contextlib.ExitStack() as stack:
        if primary is None:
            primary = stack.enter_context(ephemeral_cluster(major))
        prepare_primary(primary)
        fleet_file = write_fleet(root, primary.port, free_port(), physical=physical, stores=stores, seed=seed,
                                 policy_stores=policy_stores)
        protection = FleetProtection(load_fleet(fleet_file, environ=dict(os.environ)), secrets=LocalSecretProvider())
        pair = ReplicaPair(primary, fleet_file, protection, root / "standby")
        try:
            yield pair
        finally:
            stop_and_remove(pair.standby)
            shutil.rmtree(pair.standby_dir, ignore_errors=True)
