"""Is a cluster's WAL reaching its repository, and is the archive whole?

Two sources, compared: the server's own ``pg_stat_archiver`` (last archived segment and when,
failures) and the repository itself (the segments actually in the store, listed through our
own store client). From them: how many finished segments wait to be archived, the archive lag
(how long the archiver has been behind, on the server's clock), and every segment missing
between the oldest one a restore needs (the oldest base backup's first WAL) and the newest.

barman-cloud-check-wal-archive answers another question (is the archive *empty* enough for a
new server to archive into it), which :func:`check_archive_usable_for_new_server` asks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.physical.base_backup import BaseBackup, PhysicalBackupFailed, run_tool
from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.storage import ObjectStore

_SEGMENT = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(?:\.[a-z0-9]+)?")
DEFAULT_SEGMENT_BYTES = 16 * 2**20


class ArchivingUnavailable(PlatformError):
    """The server or the repository could not be asked about archiving."""


@dataclass(frozen=True, order=True)
class Segment:
    """A WAL segment: its timeline and its number (log * segments-per-log + segment)."""

    timeline: int
    number: int

    @staticmethod
    def parse(name: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> Segment | None:
        """The segment a WAL file name (``000000010000000000000002``, maybe ``.zst``) names;
        None for history files, backup labels and partial segments.

        >>> Segment.parse("0000000100000001000000FF.zst")
        Segment(timeline=1, number=511)
        >>> Segment.parse("000000010000000000000002.00000028.backup.zst") is None
        True
        """
        match = _SEGMENT.fullmatch(name)
        if match is None:
            return None
        timeline, log, segment = (int(part, 16) for part in match.groups())
        return Segment(timeline, log * (0x100000000 // segment_bytes) + segment)

    def name(self, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> str:
        per_log = 0x100000000 // segment_bytes
        return f"{self.timeline:08X}{self.number // per_log:08X}{self.number % per_log:08X}"


@dataclass(frozen=True)
class ArchiveStatus:
    """Archiving of one cluster at ``checked_at`` (the server's clock)."""

    cluster: str
    repository: str
    checked_at: datetime
    current_wal: str
    archived_count: int
    last_archived_wal: str | None
    last_archived_at: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_at: datetime | None
    newest_in_store: str | None
    oldest_in_store: str | None
    segments_in_store: int
    pending_segments: int
    lag_seconds: float
    missing: tuple[str, ...] = field(default_factory=tuple)
    archive_mode: str = "on"

    @property
    def failing(self) -> bool:
        """The archiver's latest attempt failed (a failure newer than the last success)."""
        return self.last_failed_at is not None and (
            self.last_archived_at is None or self.last_failed_at > self.last_archived_at)

    def problems(self, max_lag: timedelta) -> list[str]:
        """What is wrong against a policy allowing ``max_lag``; empty when archiving is healthy."""
        found = []
        if self.archive_mode == "off":
            found.append("archive_mode is off: no WAL is archived")
        if self.lag_seconds > max_lag.total_seconds():
            found.append(f"archive lag {self.lag_seconds:.0f}s exceeds {max_lag.total_seconds():.0f}s "
                         f"({self.pending_segments} finished segment(s) not in the repository)")
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else "")
            found.append(f"{len(self.missing)} segment(s) missing from the repository: {shown}")
        if self.failing:
            found.append(f"archiving is failing: {self.last_failed_wal} failed at {self.last_failed_at:%Y-%m-%d %H:%M:%S}")
        return found


_ARCHIVER_QUERY = """
SELECT pg_walfile_name(pg_current_wal_lsn()), now(), (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') * (CASE (SELECT unit FROM pg_settings WHERE name = 'wal_segment_size') WHEN 'B' THEN 1 WHEN '8kB' THEN 8192 ELSE 1 END),
       current_setting('archive_mode'), archived_count, last_archived_wal, last_archived_time,
       failed_count, last_failed_wal, last_failed_time,
       extract(epoch FROM now() - last_archived_time)::float8, extract(epoch FROM now() - stats_reset)::float8
FROM pg_stat_archiver
"""


def segments_in_store(store: ObjectStore, repository: Repository,
                      segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> list[Segment]:
    """Every WAL segment the repository holds, in order."""
    found = set()
    for info in store.list(repository.wals_prefix):
        segment = Segment.parse(info.key.rsplit("/", 1)[-1], segment_bytes)
        if segment is not None:
            found.add(segment)
    return sorted(found)


def missing_segments(present: Sequence[Segment], since: Segment | None = None) -> list[Segment]:
    """Segments absent between ``since`` (or the oldest present) and the newest, per timeline.

    >>> missing_segments([Segment(1, 2), Segment(1, 3), Segment(1, 6)])
    [Segment(timeline=1, number=4), Segment(timeline=1, number=5)]
    >>> missing_segments([Segment(1, 5)], since=Segment(1, 3))
    [Segment(timeline=1, number=3), Segment(timeline=1, number=4)]
    """
    gaps: list[Segment] = []
    for timeline in sorted({s.timeline for s in present}):
        numbers = {s.number for s in present if s.timeline == timeline}
        start = min(numbers)
        if since is not None and since.timeline == timeline:
            start = min(start, since.number)
        gaps += [Segment(timeline, n) for n in range(start, max(numbers)) if n not in numbers]
    return gaps


def archive_status(connection: PgConnection, store: ObjectStore, repository: Repository,
                   backups: Sequence[BaseBackup] = ()) -> ArchiveStatus:
    """Archiving of ``repository``'s cluster, from its server (``connection``) and its store."""
    try:
        with connection.connect(autocommit=True) as conn:
            row = conn.execute(_ARCHIVER_QUERY).fetchone()
    except (psycopg.Error, PlatformError) as exc:
        raise ArchivingUnavailable(f"archiving of cluster {repository.cluster}: cannot read pg_stat_archiver "
                                   f"({one_line(exc)})") from None
    (current_wal, now, segment_bytes, archive_mode, archived_count, last_archived_wal, last_archived_at,
     failed_count, last_failed_wal, last_failed_at, archived_ago, reset_ago) = row
    present = segments_in_store(store, repository, segment_bytes)
    current = Segment.parse(current_wal, segment_bytes)
    newest = present[-1] if present else None
    done = [b for b in backups if b.done and b.begin_wal]
    since = Segment.parse(done[0].begin_wal, segment_bytes) if done else None
    missing = missing_segments(present, since) if present else []
    if newest is None or current is None or newest.timeline != current.timeline:
        pending = current.number if current is not None else 0
    else:
        pending = max(0, current.number - newest.number - 1)
    # Behind since the last success (or, never archived, since the statistics began).
    behind_for = archived_ago if archived_ago is not None else (reset_ago or 0.0)
    lag = float(behind_for) if pending > 0 else 0.0
    return ArchiveStatus(
        cluster=repository.cluster, repository=repository.describe(), checked_at=now, current_wal=current_wal,
        archived_count=archived_count, last_archived_wal=last_archived_wal, last_archived_at=last_archived_at,
        failed_count=failed_count, last_failed_wal=last_failed_wal, last_failed_at=last_failed_at,
        newest_in_store=newest.name(segment_bytes) if newest else None,
        oldest_in_store=present[0].name(segment_bytes) if present else None,
        segments_in_store=len(present), pending_segments=pending, lag_seconds=lag,
        missing=tuple(s.name(segment_bytes) for s in missing), archive_mode=archive_mode,
    )


def switch_and_wait_archived(connection: PgConnection, store: ObjectStore, repository: Repository, *,
                             timeout: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> str:
    """Close the current WAL segment (pg_switch_wal) and wait until it is in the repository;
    returns its name. ArchivingUnavailable if it is not there within ``timeout`` seconds."""
    with connection.connect(autocommit=True) as conn:
        name, segment_bytes = conn.execute(
            "SELECT pg_walfile_name(pg_switch_wal()), (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') * (CASE (SELECT unit FROM pg_settings WHERE name = 'wal_segment_size') WHEN 'B' THEN 1 WHEN '8kB' THEN 8192 ELSE 1 END)").fetchone()
    wanted = Segment.parse(name, segment_bytes)
    deadline = time.monotonic() + timeout
    while True:
        if wanted in set(segments_in_store(store, repository, segment_bytes)):
            return name
        if time.monotonic() > deadline:
            raise ArchivingUnavailable(f"archiving of cluster {repository.cluster}: segment {name} did not reach "
                                       f"{repository.describe()} within {timeout:.0f}s")
        sleep(0.25)


def check_archive_usable_for_new_server(tools: BarmanTools, repository: Repository) -> None:
    """barman-cloud-check-wal-archive: PhysicalBackupFailed if the repository already holds WAL
    (a new server archiving there would mix its WAL with another's)."""
    run_tool(tools, repository, "check-wal-archive", [repository.url, repository.server_name],
             what=f"checking that {repository.describe()} is empty for a new server", timeout=300)


__all__ = ["ArchiveStatus", "ArchivingUnavailable", "PhysicalBackupFailed", "Segment", "archive_status",
           "check_archive_usable_for_new_server", "missing_segments", "segments_in_store", "switch_and_wait_archived"]
