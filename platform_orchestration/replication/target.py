"""One standby and its primary as plain values: who streams from whom, through which slot, and
how the platform logs in to each side (secrets already resolved; never log a password)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from platform_orchestration.postgres.connection import PgConnection


@dataclass(frozen=True)
class ReplicationObjectives:
    """A policy's ``replication`` section in plain numbers."""

    max_lag_bytes: int
    max_lag_seconds: float
    failover_rto_seconds: float
    max_slot_wal_bytes: int
    drill_every_seconds: float


@dataclass(frozen=True)
class StandbyTarget:
    """A standby cluster (``name``) replicating ``primary`` through ``slot``.

    ``standby`` and ``primary`` are the platform's own logins (superuser or pg_monitor plus
    pg_promote on the standby; slot creation and marker writes on the primary). ``stream`` is the
    replication login the standby's walreceiver uses (``primary_conninfo``), with its password
    kept apart in ``stream_password``: it goes to a password file only the server's user reads."""

    name: str
    primary_name: str
    slot: str
    standby: PgConnection
    primary: PgConnection
    stream_dsn: str
    stream_password: str | None = field(default=None, repr=False)
    directory: Path | None = None
    objectives: ReplicationObjectives | None = None

    @property
    def application_name(self) -> str:
        """How the standby names itself to its primary (``pg_stat_replication.application_name``)."""
        return self.name

    @property
    def standby_port(self) -> int:
        return int(conninfo_to_dict(self.standby.dsn).get("port") or 5432)

    def stream_display(self) -> str:
        parts = conninfo_to_dict(self.stream_dsn)
        return make_conninfo(**{k: parts[k] for k in ("host", "port", "user") if k in parts})
