"""PITR drills: prove a cluster can be brought back to a chosen instant, and keep the evidence.

A drill writes a marker row on the source (``platform_pitr.drill_markers``, a table the
platform owns in the physical connection's database), notes the server's time just after it,
writes a second row ("after") that must *not* come back, switches WAL and waits until that
segment is in the repository; then restores a new cluster to the noted time, checks that the
marker is there and the "after" row is not, and records RTO (the restore's wall time), RPO (the
archive lag when the drill began) and the point reached (LSN, last replayed commit) as a
:class:`PitrDrillRecord`, in every given store, beside the logical drills (``physical-drills/``
instead of ``drills/``, the same field names where they mean the same thing).

Drills rotate across the stores that hold the repository or a copy of it
(:func:`next_drill_store`): a drill from a copy first brings that copy up to date
(:func:`~platform_orchestration.physical.copy.copy_repository`, incremental) and checks that the
marker's segment is in it, then restores from the copy alone; ``source_store`` records where
it restored from, ``repository_store`` where the repository is.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import psycopg
from pydantic import BaseModel, ConfigDict

from platform_orchestration.backups.catalog import read_evidence, record_everywhere
from platform_orchestration.backups.manifest import FORMAT_VERSION, new_drill_id
from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.ownership import Lease, reap_abandoned
from platform_orchestration.physical.archiving import (
    Segment,
    archive_status,
    segments_in_store,
    switch_and_wait_archived,
)
from platform_orchestration.physical.base_backup import list_base_backups
from platform_orchestration.physical.copy import copy_repository
from platform_orchestration.physical.pitr import RecoveryTarget, restore_to_point, stop_restored
from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.postgres.binaries import PostgresToolsMissing
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.storage import ObjectStore

PHYSICAL_DRILLS_PREFIX = "physical-drills/"
MARKER_TABLE = "platform_pitr.drill_markers"
_MARKER_DDL = (
    "CREATE SCHEMA IF NOT EXISTS platform_pitr",
    "CREATE TABLE IF NOT EXISTS platform_pitr.drill_markers (drill_id text NOT NULL, phase text NOT NULL, "
    "written_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (drill_id, phase))",
    "COMMENT ON TABLE platform_pitr.drill_markers IS 'written by PITR drills (platform-orchestration); "
    "safe to truncate'",
)
# Between the marker and the target time, and the target time and the "after" row: a server
# clock's resolution is far finer, this only keeps the three apart on any clock.
GAP_SECONDS = 0.5


def physical_drills_prefix(cluster: str) -> str:
    return f"{PHYSICAL_DRILLS_PREFIX}{cluster}/"


def physical_drill_key(cluster: str, drill_id: str) -> str:
    return f"{physical_drills_prefix(cluster)}{drill_id}.json"


class PitrDrillRecord(BaseModel):
    """Evidence of one PITR drill. Times are the drill worker's clock except ``target_time``
    and ``last_replayed_commit`` (the source server's, which recovery targets are in)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: int = FORMAT_VERSION
    kind: Literal["physical"] = "physical"
    drill_id: str
    cluster: str
    source_store: str
    backup_id: str | None = None
    started_at: datetime
    finished_at: datetime
    passed: bool
    failure: str | None = None
    rto_seconds: float | None = None
    rto_target_seconds: float
    rpo_seconds: float | None = None
    rpo_target_seconds: float
    target_time: datetime | None = None
    reached_lsn: str | None = None
    last_replayed_commit: datetime | None = None
    stopped_at: str | None = None
    archive_wait_seconds: float | None = None
    restored_on: str | None = None
    repository_store: str | None = None
    copy_seconds: float | None = None

    @property
    def key(self) -> str:
        return physical_drill_key(self.cluster, self.drill_id)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


class PitrDrillFailed(PlatformError):
    """A PITR drill could not prove the point: WAL missing, or the restored rows are not the source's at the target."""


# What makes a drill fail (recorded), as opposed to a bug (raised).
_DRILL_FAILURES = (PlatformError, psycopg.Error, PostgresToolsMissing)


def _write_markers(connection: PgConnection, drill_id: str) -> datetime:
    """Marker, then the target time, then the "after" row; returns the target time (server clock)."""
    with connection.connect(autocommit=True) as conn:
        for statement in _MARKER_DDL:
            conn.execute(statement)
        conn.execute(f"INSERT INTO {MARKER_TABLE} (drill_id, phase) VALUES (%s, 'marker')", (drill_id,))
        time.sleep(GAP_SECONDS)
        (target,) = conn.execute("SELECT clock_timestamp()").fetchone()
        time.sleep(GAP_SECONDS)
        conn.execute(f"INSERT INTO {MARKER_TABLE} (drill_id, phase) VALUES (%s, 'after')", (drill_id,))
    return target


def _phases_restored(port: int, dbname: str, drill_id: str) -> list[str]:
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname={dbname}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            f"SELECT phase FROM {MARKER_TABLE} WHERE drill_id = %s ORDER BY written_at", (drill_id,))]


def next_drill_store(stores: Sequence[str], history: Sequence[PitrDrillRecord]) -> str:
    """The store the next drill restores from: the one after the latest drill's, in ``stores``
    order (the repository's first, then its copies), wrapping round.

    >>> next_drill_store(["aws", "azure", "gcp"], [])
    'aws'
    """
    latest = history[-1].source_store if history else None
    if latest not in stores:
        return stores[0]
    return stores[(list(stores).index(latest) + 1) % len(stores)]


def run_pitr_drill(*, tools: BarmanTools, repository: Repository, store: ObjectStore, connection: PgConnection,
                   record_stores: Sequence[ObjectStore], rto_target: timedelta, rpo_target: timedelta,
                   clock: Clock = utc_now, workdir: Path | None = None,
                   restore_from: tuple[Repository, ObjectStore] | None = None) -> PitrDrillRecord:
    """Run one PITR drill of ``repository``'s cluster and record it in ``record_stores``; returns
    the record, passed or not. With ``restore_from`` (a copy's repository and its store), the copy
    is brought up to date and the restore reads it alone."""
    source_repository, source_store = restore_from or (repository, store)
    started_at = clock()
    drill_id = new_drill_id(started_at)
    fields: dict = {"passed": False}
    # The restored cluster is a throwaway, leased like an ephemeral cluster: named before it is
    # made, its server and barman-cloud-restore die with us, and the reaper removes what a
    # killed drill left (the scratch directory and, as root, its stand-in under /var/tmp); it
    # runs first here, as before every logical drill's throwaway cluster.
    reap_abandoned()
    scratch = Path(workdir or tempfile.gettempdir()) / f"pg-ephemeral-pitr-{drill_id.lower()}"
    lease = Lease.take("pitr-drill", [scratch])
    scratch.mkdir(mode=0o700)
    try:
        fields["rpo_seconds"] = archive_status(connection, store, repository).lag_seconds
        target = _write_markers(connection, drill_id)
        fields["target_time"] = target
        waited = time.monotonic()
        marker_wal = switch_and_wait_archived(connection, store, repository)
        fields["archive_wait_seconds"] = time.monotonic() - waited
        backups = list_base_backups(tools, repository)
        gaps = archive_status(connection, store, repository, backups).missing
        if gaps:
            raise PitrDrillFailed(f"{len(gaps)} WAL segment(s) missing from the repository: {', '.join(gaps[:5])}; "
                                    "a restore past them cannot be proven")
        if restore_from is not None:
            copying = time.monotonic()
            copy_repository(store, source_store, repository, clock=clock)
            fields["copy_seconds"] = time.monotonic() - copying
            segment = Segment.parse(marker_wal)
            if segment not in set(segments_in_store(source_store, source_repository)):
                raise PitrDrillFailed(f"the marker's segment {marker_wal} is not in the copy in {source_store.name} "
                                      "after copying it there")
            backups = list_base_backups(tools, source_repository)
        result = restore_to_point(tools, source_repository, RecoveryTarget(time=target),
                                  scratch / "pg-ephemeral-cluster", backups=backups, store=source_store, lease=lease)
        try:
            fields.update(backup_id=result.backup_id, rto_seconds=result.rto_seconds, reached_lsn=result.reached_lsn,
                          last_replayed_commit=result.last_replayed_commit, stopped_at=result.stopped_at,
                          restored_on=f"PostgreSQL {result.server_version}")
            phases = _phases_restored(result.port, connection.dbname or "postgres", drill_id)
        finally:
            stop_restored(result, remove=True)
        if phases != ["marker"]:
            raise PitrDrillFailed(f"restored to {target.isoformat()}, the drill's rows are {phases or 'none'}, "
                                    "expected exactly ['marker']")
        if result.rto_seconds > rto_target.total_seconds():
            fields["failure"] = (f"RTO exceeded: restore took {result.rto_seconds:.1f}s, "
                                 f"target {rto_target.total_seconds():.0f}s")
        elif fields["rpo_seconds"] > rpo_target.total_seconds():
            fields["failure"] = (f"RPO exceeded: archive lag {fields['rpo_seconds']:.0f}s at the drill, "
                                 f"target {rpo_target.total_seconds():.0f}s")
        else:
            fields["passed"] = True
    except _DRILL_FAILURES as exc:
        fields["failure"] = one_line(exc)
    finally:
        # A failed restore stopped its own server; its directory (a stand-in, as root) goes too.
        for path in [scratch, *(Path(p) for p in lease.paths)]:
            shutil.rmtree(path, ignore_errors=True)
        lease.release()
    record = PitrDrillRecord(
        drill_id=drill_id, cluster=repository.cluster, source_store=source_repository.store,
        repository_store=repository.store, started_at=started_at,
        finished_at=clock(), rto_target_seconds=rto_target.total_seconds(),
        rpo_target_seconds=rpo_target.total_seconds(), **fields)
    record_everywhere(record_stores, record.key, record.to_json(), f"PITR drill {drill_id} of {repository.cluster}")
    return record


def pitr_drill_history(stores: Sequence[ObjectStore], cluster: str) -> tuple[list[PitrDrillRecord], list[str]]:
    """Every readable PITR drill record of ``cluster`` across ``stores``, oldest first, one per id;
    and what could not be read ("<key> in store <store>: <reason>"), never skipped in silence."""
    return read_evidence(stores, physical_drills_prefix(cluster), PitrDrillRecord)
