"""Replication of one standby, observed on both sides.

- On the primary: ``pg_stat_replication`` (the standby's walsender, by its application_name: state,
  sent/flush/replay LSNs, replay_lag) and ``pg_replication_slots`` (the slot: active, wal_status,
  and the WAL it keeps, ``pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)``);
- on the standby: ``pg_is_in_recovery()``, ``pg_last_wal_receive_lsn()``, ``pg_last_wal_replay_lsn()``,
  ``pg_last_xact_replay_timestamp()`` and the walreceiver's status.

The standby is read first, then the primary, so the lag in bytes is never under-stated by a write
between the two reads. Lag in seconds: 0 when nothing is left to replay; else the primary's
``replay_lag`` for the standby; else (no walsender) the age of the standby's last replayed commit
on the primary's clock; unknown when neither side can say (which fails the lag check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.fleet.sizes import format_size
from platform_orchestration.physical.pitr import lsn_value
from platform_orchestration.replication.target import ReplicationObjectives, StandbyTarget

REPLICATION_WITHIN_LAG = "replication_within_lag"
STANDBY_STREAMING = "standby_streaming"
SLOT_WAL_WITHIN_LIMIT = "slot_wal_within_limit"
FAILOVER_DRILL_PASSED_WITHIN_CADENCE = "failover_drill_passed_within_cadence"
STATUS_CHECKS = (REPLICATION_WITHIN_LAG, STANDBY_STREAMING, SLOT_WAL_WITHIN_LIMIT)
REPLICATION_CHECKS = (*STATUS_CHECKS, FAILOVER_DRILL_PASSED_WITHIN_CADENCE)

_PRIMARY_QUERY = """
SELECT now(), pg_current_wal_lsn()::text,
       r.state, r.sent_lsn::text, r.flush_lsn::text, r.replay_lsn::text,
       extract(epoch FROM r.replay_lag)::float8, r.sync_state,
       s.slot_name IS NOT NULL, s.active, s.wal_status, s.restart_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_replication r ON r.application_name = %(app)s
LEFT JOIN pg_replication_slots s ON s.slot_name = %(slot)s
LIMIT 1
"""

_STANDBY_QUERY = """
SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       pg_last_xact_replay_timestamp(), (SELECT status FROM pg_stat_wal_receiver),
       current_setting('server_version'), (SELECT timeline_id FROM pg_control_checkpoint())
"""


@dataclass(frozen=True)
class ReplicationStatus:
    standby: str
    primary: str
    slot: str
    checked_at: datetime | None = None
    primary_lsn: str | None = None
    state: str = "not connected"
    sent_lsn: str | None = None
    flush_lsn: str | None = None
    replay_lsn: str | None = None
    replay_lag_seconds: float | None = None
    sync_state: str | None = None
    slot_exists: bool = False
    slot_active: bool = False
    slot_wal_status: str | None = None
    slot_restart_lsn: str | None = None
    slot_kept_bytes: int | None = None
    in_recovery: bool | None = None
    receive_lsn: str | None = None
    standby_replay_lsn: str | None = None
    last_replayed_commit: datetime | None = None
    receiver_status: str | None = None
    standby_version: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    standby_unreachable: str | None = None
    primary_unreachable: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def streaming(self) -> bool:
        return self.state == "streaming" and self.receiver_status == "streaming" and bool(self.in_recovery)

    def problems(self, objectives: ReplicationObjectives) -> dict[str, list[str]]:
        """What is wrong, per check, against ``objectives``; every list empty when replication is healthy."""
        found: dict[str, list[str]] = {name: [] for name in STATUS_CHECKS}
        if self.primary_unreachable:
            for name in STATUS_CHECKS:
                found[name].append(f"the primary {self.primary} could not be observed: {self.primary_unreachable}")
            return found
        lag = found[REPLICATION_WITHIN_LAG]
        if self.lag_bytes is None:
            lag.append("lag in bytes unknown (neither the standby nor its walsender nor its slot says where it is)")
        elif self.lag_bytes > objectives.max_lag_bytes:
            lag.append(f"lag {format_size(self.lag_bytes)} exceeds max_lag_bytes {format_size(objectives.max_lag_bytes)}")
        if self.lag_seconds is None:
            lag.append("lag in seconds unknown (no walsender for the standby, no replayed commit)")
        elif self.lag_seconds > objectives.max_lag_seconds:
            lag.append(f"lag {self.lag_seconds:.1f}s exceeds max_lag {objectives.max_lag_seconds:.0f}s")
        streaming = found[STANDBY_STREAMING]
        if self.standby_unreachable:
            streaming.append(f"the standby could not be observed: {self.standby_unreachable}")
        elif self.in_recovery is False:
            streaming.append("the standby is not in recovery: it was promoted (or is not a standby)")
        elif self.receiver_status != "streaming":
            streaming.append(f"the standby's walreceiver is {self.receiver_status or 'not running'}")
        if self.state != "streaming" and not streaming:
            streaming.append(f"the primary's walsender for {self.standby} is {self.state}")
        elif self.state != "streaming":
            streaming.append(f"the primary sees it as {self.state}")
        slot = found[SLOT_WAL_WITHIN_LIMIT]
        if not self.slot_exists:
            slot.append(f"replication slot {self.slot} does not exist on the primary: WAL the standby needs may be "
                        "removed before it streams it")
        else:
            if self.slot_wal_status == "lost":
                slot.append(f"slot {self.slot} lost WAL the standby needs (wal_status lost): re-seed the standby")
            if self.slot_kept_bytes is not None and self.slot_kept_bytes > objectives.max_slot_wal_bytes:
                slot.append(f"slot {self.slot} keeps {format_size(self.slot_kept_bytes)} of WAL on the primary, more "
                            f"than max_slot_wal {format_size(objectives.max_slot_wal_bytes)}")
        return found

    def describe(self) -> str:
        lag_b = "unknown" if self.lag_bytes is None else format_size(self.lag_bytes)
        lag_s = "unknown" if self.lag_seconds is None else f"{self.lag_seconds:.1f}s"
        kept = "unknown" if self.slot_kept_bytes is None else format_size(self.slot_kept_bytes)
        return (f"{self.standby} <- {self.primary}: {self.state}, lag {lag_b} / {lag_s}, slot {self.slot} "
                f"{'active' if self.slot_active else 'inactive' if self.slot_exists else 'missing'} keeping {kept}")


def _diff(newer: str | None, older: str | None) -> int | None:
    if newer is None or older is None:
        return None
    return max(0, lsn_value(newer) - lsn_value(older))


def observe_replication(target: StandbyTarget) -> ReplicationStatus:
    """Both sides of ``target``'s replication now. An unreachable side is reported in the status,
    not raised: a standby that is down is exactly what this must show."""
    standby: dict = {}
    try:
        with target.standby.connect(autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(_STANDBY_QUERY).fetchone()
        standby = dict(in_recovery=bool(row[0]), receive_lsn=row[1], standby_replay_lsn=row[2],
                       last_replayed_commit=row[3], receiver_status=row[4], standby_version=row[5])
    except (psycopg.Error, PlatformError) as exc:
        standby = dict(standby_unreachable=one_line(exc))
    base = dict(standby=target.name, primary=target.primary_name, slot=target.slot, **standby)
    try:
        with target.primary.connect(autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(_PRIMARY_QUERY, {"app": target.application_name, "slot": target.slot}).fetchone()
    except (psycopg.Error, PlatformError) as exc:
        return ReplicationStatus(**base, primary_unreachable=one_line(exc))
    (now, primary_lsn, state, sent, flush, replay, replay_lag, sync_state, slot_exists, slot_active,
     wal_status, restart_lsn, kept) = row
    # Where the standby is: its own word, else its walsender's, else its slot's (an upper bound of the lag).
    position = standby.get("standby_replay_lsn") or replay or restart_lsn
    lag_bytes = _diff(primary_lsn, position)
    if lag_bytes == 0:
        lag_seconds: float | None = 0.0
    elif state == "streaming":
        # NULL once a streaming standby has caught up and the primary is idle.
        lag_seconds = float(replay_lag) if replay_lag is not None else 0.0
    elif standby.get("last_replayed_commit") is not None:
        lag_seconds = max(0.0, (now - standby["last_replayed_commit"]).total_seconds())
    else:
        lag_seconds = None
    return ReplicationStatus(
        **base, checked_at=now, primary_lsn=primary_lsn, state=state or "not connected", sent_lsn=sent,
        flush_lsn=flush, replay_lsn=replay, replay_lag_seconds=replay_lag, sync_state=sync_state,
        slot_exists=bool(slot_exists), slot_active=bool(slot_active), slot_wal_status=wal_status,
        slot_restart_lsn=restart_lsn, slot_kept_bytes=int(kept) if kept is not None else None,
        lag_bytes=lag_bytes, lag_seconds=lag_seconds)
