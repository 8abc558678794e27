"""Failover drills: prove a standby could take over, without touching it or its primary's service.

1. A marker row is written on the primary (table ``platform_replication.failover_markers``, owned by
   the platform, in the primary login's database), and its commit's LSN noted.
2. Wait, up to the policy's ``max_lag``, until the standby has replayed past it: how long that took
   is the drill's RPO (a failover at the marker's commit would have lost that much time of writes).
3. A throwaway copy of the standby is made from the standby itself (pg_basebackup; it never
   connects to the primary nor uses the standby's slot) and started, still a standby.
4. The copy is promoted (``pg_promote``) and written to until a write commits: RTO is promote to
   first accepted write. What the primary had written beyond the copy's last replayed LSN at that
   moment is recorded as ``rpo_bytes``.
5. The marker must be on the promoted copy. The copy is stopped and deleted.

A drill passes when the marker is there, RTO is within ``failover_rto`` and RPO within ``max_lag``.
The record is written as ``failover-drills/STANDBY/ID.json`` into every store of the standby's
policy, beside ``drills/`` and ``physical-drills/``, with the same field names where they mean the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import psycopg
from pydantic import BaseModel, ConfigDict

from platform_orchestration.backups.catalog import read_evidence, record_everywhere
from platform_orchestration.backups.manifest import FORMAT_VERSION, new_drill_id
from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.physical.pitr import lsn_value
from platform_orchestration.postgres.binaries import PostgresToolsMissing
from platform_orchestration.replication.copy import throwaway_copy
from platform_orchestration.replication.server import ReplicationFailed, wait_until
from platform_orchestration.replication.target import StandbyTarget
from platform_orchestration.storage import ObjectStore

FAILOVER_DRILLS_PREFIX = "failover-drills/"
MARKER_TABLE = "platform_replication.failover_markers"
_MARKER_DDL = (
    "CREATE SCHEMA IF NOT EXISTS platform_replication",
    "CREATE TABLE IF NOT EXISTS platform_replication.failover_markers (drill_id text PRIMARY KEY, "
    "written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "COMMENT ON TABLE platform_replication.failover_markers IS 'written by failover drills "
    "(platform-orchestration); safe to truncate'",
)
PROMOTE_TIMEOUT_SECONDS = 300


def failover_drills_prefix(standby: str) -> str:
    return f"{FAILOVER_DRILLS_PREFIX}{standby}/"


class FailoverDrillRecord(BaseModel):
    """Evidence of one failover drill. Times are the drill worker's clock except ``marker_written_at``
    (the primary's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: int = FORMAT_VERSION
    kind: Literal["failover"] = "failover"
    drill_id: str
    standby: str
    primary: str
    started_at: datetime
    finished_at: datetime
    passed: bool
    failure: str | None = None
    marker_lsn: str | None = None
    marker_written_at: datetime | None = None
    marker_replayed: bool | None = None
    marker_on_copy: bool | None = None
    copy_seconds: float | None = None
    rto_seconds: float | None = None
    rto_target_seconds: float
    rpo_seconds: float | None = None
    rpo_target_seconds: float
    rpo_bytes: int | None = None
    promoted_timeline: int | None = None
    restored_on: str | None = None

    @property
    def key(self) -> str:
        return f"{failover_drills_prefix(self.standby)}{self.drill_id}.json"

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


class FailoverDrillFailed(PlatformError):
    """A failover drill could not prove the standby: the marker is not on the promoted copy."""


_DRILL_FAILURES = (PlatformError, psycopg.Error, PostgresToolsMissing)


def write_marker(primary, drill_id: str) -> tuple[str, datetime]:
    """The marker's commit LSN (at or past it) and time, on the primary."""
    with primary.connect(autocommit=True) as conn:
        for statement in _MARKER_DDL:
            conn.execute(statement)
        (written_at,) = conn.execute(f"INSERT INTO {MARKER_TABLE} (drill_id) VALUES (%s) RETURNING written_at",
                                     (drill_id,)).fetchone()
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(lsn), written_at


def _replayed_past(standby, lsn: str) -> bool:
    with standby.connect(autocommit=True, connect_timeout=5) as conn:
        (replayed,) = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
    return replayed is not None and lsn_value(replayed) >= lsn_value(lsn)


def _wait_replayed(standby, lsn: str, timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        wait_until(lambda: _replayed_past(standby, lsn), timeout=timeout, what="the marker's replay", interval=0.05)
    except ReplicationFailed:
        return False, time.monotonic() - started
    return True, time.monotonic() - started


def _first_write(conn: psycopg.Connection) -> bool:
    try:
        with conn.transaction():
            conn.execute("SELECT pg_current_xact_id()")  # refused in recovery: an xid is a write
        return True
    except psycopg.Error:
        return False


def promote_and_write(connection, *, timeout: float = PROMOTE_TIMEOUT_SECONDS) -> tuple[float, int, str]:
    """Promote the standby behind ``connection``; (seconds from the promote call to the first
    committed write, the new timeline, the last LSN it replayed before promotion)."""
    with connection.connect(autocommit=True) as conn:
        (replayed,) = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
        started = time.monotonic()
        (promoted,) = conn.execute("SELECT pg_promote(true, %s)", (int(timeout),)).fetchone()
        if not promoted:
            raise ReplicationFailed(f"pg_promote did not finish within {timeout:.0f}s")
        deadline = started + timeout
        while not _first_write(conn):
            if time.monotonic() > deadline:
                raise ReplicationFailed(f"promoted, but no write was accepted within {timeout:.0f}s")
            time.sleep(0.01)
        seconds = time.monotonic() - started
        (timeline,) = conn.execute("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetchone()
    return seconds, int(timeline, 16), str(replayed or "0/0")


def _marker_on(connection, drill_id: str) -> bool:
    with connection.connect(autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MARKER_TABLE,)).fetchone()[0]
        if not exists:
            return False
        return conn.execute(f"SELECT count(*) FROM {MARKER_TABLE} WHERE drill_id = %s", (drill_id,)).fetchone()[0] == 1


def _primary_lsn(primary) -> str | None:
    try:
        with primary.connect(autocommit=True, connect_timeout=5) as conn:
            return str(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    except (psycopg.Error, PlatformError):
        return None


def run_failover_drill(target: StandbyTarget, *, record_stores: Sequence[ObjectStore], clock: Clock = utc_now,
                       workdir: Path | None = None) -> FailoverDrillRecord:
    """One failover drill of ``target`` (see the module docstring), recorded in ``record_stores``;
    returns the record, passed or not."""
    objectives = target.objectives
    if objectives is None:
        raise ReplicationFailed(f"failover drill of {target.name}: its policy states no replication objectives")
    started_at = clock()
    drill_id = new_drill_id(started_at)
    fields: dict = {"passed": False}
    what = f"failover drill of {target.name}"
    try:
        lsn, written_at = write_marker(target.primary, drill_id)
        fields.update(marker_lsn=lsn, marker_written_at=written_at)
        replayed, waited = _wait_replayed(target.standby, lsn, objectives.max_lag_seconds)
        fields.update(marker_replayed=replayed, rpo_seconds=waited)
        with throwaway_copy(target.standby, what=what, parent_dir=workdir) as (copy, copy_seconds):
            fields["copy_seconds"] = copy_seconds
            connection = copy.connection()
            with connection.connect(autocommit=True) as conn:
                fields["restored_on"] = "PostgreSQL " + conn.execute("SHOW server_version").fetchone()[0]
            rto, timeline, copy_lsn = promote_and_write(connection)
            primary_lsn = _primary_lsn(target.primary)
            fields.update(rto_seconds=rto, promoted_timeline=timeline,
                          rpo_bytes=max(0, lsn_value(primary_lsn) - lsn_value(copy_lsn)) if primary_lsn else None)
            fields["marker_on_copy"] = _marker_on(connection, drill_id)
        if not fields["marker_on_copy"]:
            raise FailoverDrillFailed(
                f"the marker written on {target.primary_name} at {lsn} is not on the promoted copy of {target.name} "
                f"(the standby had {'replayed' if replayed else 'not replayed'} it after {waited:.1f}s): "
                "a failover now would lose committed data")
        if rto > objectives.failover_rto_seconds:
            fields["failure"] = (f"RTO exceeded: promotion to first write took {rto:.2f}s, "
                                 f"target {objectives.failover_rto_seconds:.0f}s")
        elif waited > objectives.max_lag_seconds:
            fields["failure"] = f"RPO exceeded: the marker took {waited:.1f}s to reach the standby"
        else:
            fields["passed"] = True
    except _DRILL_FAILURES as exc:
        fields["failure"] = one_line(exc)
    record = FailoverDrillRecord(
        drill_id=drill_id, standby=target.name, primary=target.primary_name, started_at=started_at,
        finished_at=clock(), rto_target_seconds=objectives.failover_rto_seconds,
        rpo_target_seconds=objectives.max_lag_seconds, **fields)
    record_everywhere(record_stores, record.key, record.to_json(), f"failover drill {drill_id} of {target.name}")
    return record


def failover_drill_history(stores: Sequence[ObjectStore], standby: str) -> tuple[list[FailoverDrillRecord], list[str]]:
    """Every readable failover drill record of ``standby`` across ``stores``, oldest first, one per id;
    and what could not be read, never skipped in silence."""
    return read_evidence(stores, failover_drills_prefix(standby), FailoverDrillRecord)
