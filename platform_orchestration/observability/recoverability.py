"""How recoverable one database is, per store and per cloud, read from the stores alone.

The compliance assessment (:mod:`platform_orchestration.backups.compliance`) answers "is the
database protected as its policy says?" with five findings; this module keeps the figures
behind them, per store: which backup each store holds and how old it is, the last drill from
each store with its measured RTO, and the whole drill history (for the report's charts and the
drill-failure escalation). The metrics, the sensors and the recoverability report all read
this one view, so they cannot disagree.

Ages are the worker's clock at `now` minus the backup's snapshot time on the worker's clock,
as everywhere in the core (:mod:`platform_orchestration.clock`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from platform_orchestration.backups.catalog import StoredBackup, UnreadableObject, merge_drills
from platform_orchestration.backups.compliance import DatabaseCompliance
from platform_orchestration.backups.index import read_catalog_or_report
from platform_orchestration.backups.manifest import DrillRecord
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import Policy
from platform_orchestration.storage import ObjectStore


@dataclass(frozen=True)
class StoreFacts:
    """What the fleet declares about a store: its cloud and its write-once retention."""

    name: str
    cloud: str
    kind: str
    immutability: str | None = None  # "compliance 30d", or None when the store has none


@dataclass(frozen=True)
class BackupFigures:
    """One backup, as its manifest in one store describes it."""

    backup_id: str
    store: str
    snapshot_at: datetime  # the worker's clock at the snapshot: what ages are measured from
    finished_at: datetime
    duration_seconds: float
    raw_bytes: int
    stored_bytes: int
    encryption: str | None  # "tink-streaming-aead, local key file v1"; None: not encrypted
    key_version: int | None
    verified_at: datetime | None  # when this store's copy was verified (its manifest written)
    copied_from: str | None

    @classmethod
    def of(cls, stored: StoredBackup) -> BackupFigures:
        m = stored.manifest
        enc = m.encryption
        return cls(
            backup_id=m.backup_id, store=stored.store.name, snapshot_at=m.snapshot_worker_time,
            finished_at=m.finished_at, duration_seconds=(m.finished_at - m.started_at).total_seconds(),
            raw_bytes=m.dump.raw_bytes, stored_bytes=m.dump.stored_bytes,
            encryption=f"{enc.scheme}, data key wrapped by {enc.key_service} v{enc.key_version}" if enc else None,
            key_version=enc.key_version if enc else None,
            verified_at=m.copy_info.verified_at if m.copy_info else None,
            copied_from=m.copy_info.copied_from if m.copy_info else None,
        )


@dataclass(frozen=True)
class StoreCopy:
    """One required store's view of the database: its newest readable backup and whether that
    is the database's latest."""

    store: str
    cloud: str
    newest: BackupFigures | None
    holds_latest: bool
    age_seconds: float | None  # of the store's newest backup, at the assessment's `now`
    backups: int  # readable backups of the database in this store
    unreadable: int  # manifests that could not be read (or the store itself, when unreachable)
    unreachable: str | None = None  # why the store could not be listed
    immutability: str | None = None


@dataclass(frozen=True)
class DrillFigures:
    drill_id: str
    backup_id: str | None
    store: str
    cloud: str
    finished_at: datetime
    passed: bool
    rto_seconds: float | None
    rto_target_seconds: float
    rpo_seconds: float | None
    failure: str | None

    @classmethod
    def of(cls, record: DrillRecord, cloud: str) -> DrillFigures:
        return cls(record.drill_id, record.backup_id, record.source_store, cloud, record.finished_at,
                   record.passed, record.rto_seconds, record.rto_target_seconds, record.rpo_seconds,
                   record.failure)


@dataclass(frozen=True)
class DatabaseRecoverability:
    """One database at `now`: targets, the latest backup, each required store's copy, every
    drill (oldest first), and the compliance assessment made at the same `now`."""

    database: str
    cluster: str
    policy: str
    now: datetime
    rpo_target_seconds: float
    rto_target_seconds: float
    drill_every_seconds: float
    retention: str
    assessment: DatabaseCompliance
    latest: BackupFigures | None
    copies: tuple[StoreCopy, ...]
    drills: tuple[DrillFigures, ...] = ()
    unreadable: tuple[UnreadableObject, ...] = field(default=())

    @property
    def latest_age_seconds(self) -> float | None:
        return None if self.latest is None else (self.now - self.latest.snapshot_at).total_seconds()

    @property
    def stale(self) -> bool:
        """No readable backup, or the newest one is older than the RPO."""
        age = self.latest_age_seconds
        return age is None or age > self.rpo_target_seconds

    @property
    def missing_copies(self) -> tuple[str, ...]:
        """Required stores that do not hold the latest backup (it is missing there, or the store
        holds only older ones). Empty when there is no backup at all: nothing to copy."""
        if self.latest is None:
            return ()
        return tuple(c.store for c in self.copies if not c.holds_latest)

    @property
    def last_drill(self) -> DrillFigures | None:
        return self.drills[-1] if self.drills else None

    @property
    def last_passed_drill(self) -> DrillFigures | None:
        return next((d for d in reversed(self.drills) if d.passed), None)

    def last_drill_from(self, store: str) -> DrillFigures | None:
        return next((d for d in reversed(self.drills) if d.store == store), None)

    @property
    def failing_drills(self) -> tuple[DrillFigures, ...]:
        """The drills that failed since the last one that passed, oldest first."""
        run: list[DrillFigures] = []
        for drill in reversed(self.drills):
            if drill.passed:
                break
            run.append(drill)
        return tuple(reversed(run))

    @property
    def verdict(self) -> bool:
        return self.assessment.passed

    def to_dict(self) -> dict:
        document = asdict(self)
        document["assessment"] = self.assessment.to_dict()
        document.update(latest_age_seconds=self.latest_age_seconds, stale=self.stale,
                        missing_copies=list(self.missing_copies), verdict=self.verdict)
        return document


def describe_retention(policy: Policy) -> str:
    r = policy.retention
    parts = [f"keep last {r.keep_last}"] + [f"{n} {what}" for n, what in
                                          ((r.daily, "daily"), (r.weekly, "weekly"), (r.monthly, "monthly")) if n]
    return ", ".join(parts)


def describe_immutability(spec) -> str | None:  # noqa: ANN001 - a fleet ImmutabilitySpec or None
    """``compliance, retain 30d`` for a store's write-once retention; None without one."""
    if spec is None:
        return None
    return f"{spec.mode}, retain {format_duration(spec.retain)}"


def observe_recoverability(*, database: str, cluster: str, policy: Policy, stores: Sequence[ObjectStore],
                           facts: Sequence[StoreFacts], assessment: DatabaseCompliance,
                           now: datetime) -> DatabaseRecoverability:
    """The database's recoverability in its policy's `stores` (in policy order; `facts` says
    each one's cloud and immutability), beside an `assessment` made at the same `now`.
    A store that cannot be listed is reported in its copy (``unreachable``), never raised."""
    cloud_of = {f.name: f.cloud for f in facts}
    immutability_of = {f.name: f.immutability for f in facts}
    per_store: list[tuple[ObjectStore, tuple[StoredBackup, ...], int, str | None]] = []
    unreadable: list[UnreadableObject] = []
    drill_listings = []
    for store in stores:  # through the catalog index: 2 LIST + 1 GET per store when it is current
        view = read_catalog_or_report(store, database)
        listing = view.backups
        unreadable += listing.unreadable
        down = next((u.reason for u in listing.unreadable if u.unreachable), None)
        per_store.append((store, listing.backups, len(listing.unreadable), down))
        drill_listings.append(view.drills)
    newest = [backups[-1] for _store, backups, _n, _down in per_store if backups]
    latest_stored = max(newest, key=lambda b: b.backup_id, default=None)
    latest = BackupFigures.of(latest_stored) if latest_stored else None
    copies = []
    for store, backups, broken, down in per_store:
        figures = BackupFigures.of(backups[-1]) if backups else None
        copies.append(StoreCopy(
            store=store.name, cloud=cloud_of.get(store.name, "?"), newest=figures,
            holds_latest=latest is not None and any(b.backup_id == latest.backup_id for b in backups),
            age_seconds=(now - figures.snapshot_at).total_seconds() if figures else None,
            backups=len(backups), unreadable=broken, unreachable=down,
            immutability=immutability_of.get(store.name)))
    history = merge_drills(drill_listings)  # a store that is down adds none, the others still count
    drills = tuple(DrillFigures.of(r, cloud_of.get(r.source_store, "?")) for r in history.records)
    unreadable += history.unreadable
    return DatabaseRecoverability(
        database=database, cluster=cluster, policy=policy.name, now=now,
        rpo_target_seconds=policy.rpo.total_seconds(), rto_target_seconds=policy.drill.rto.total_seconds(),
        drill_every_seconds=policy.drill.every.total_seconds(), retention=describe_retention(policy),
        assessment=assessment, latest=latest, copies=tuple(copies), drills=drills, unreadable=tuple(unreadable))
