"""The one clock of the core: "now" is always the worker's UTC clock, injected.

Every core function that needs the time takes a ``clock`` (or a ``now`` read from one)
as a keyword, defaulting to :func:`utc_now`; :class:`~platform_orchestration.protection.FleetProtection`
passes its own ``clock`` to all of them, so a test (or a replay) injects one clock and
every id, timestamp and age follows it.

Which clock each figure uses:

- ids (backups, drills, evidence) and every ``*_at`` a worker records: the worker's clock;
- a backup's ``snapshot_at``: the database server's ``now()`` at the snapshot, kept as a
  fact about the server, never used to compute an age;
- a backup's ``snapshot_worker_at``: the worker's clock just before the snapshot was
  taken; RPO and every other backup age is *worker clock now* minus this, so a server
  whose clock is wrong cannot make a backup look fresher than it is.

The workers (Dagster pods, the machine running ``platform-dr``) are assumed to keep NTP
time among themselves; the database servers are not.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]
"""A source of timezone-aware UTC datetimes."""


def utc_now() -> datetime:
    """The worker's clock, in UTC (the default :data:`Clock`)."""
    return datetime.now(timezone.utc)
