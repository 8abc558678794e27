"""Retention: which backups a policy keeps (pure planning), and pruning the rest (the executor).

Planning (:func:`plan_retention`) follows ``restic forget --keep-*``. Backups are ordered newest
first by snapshot time, and a backup is kept if any rule selects it:

- ``keep_last N``: the N newest backups;
- ``daily N`` / ``weekly N`` / ``monthly N``: the newest backup of each of the N newest UTC
  calendar days / ISO weeks / months *that hold a backup*. Buckets are counted from the newest
  backup, not from "now", and an empty day does not use up a slot: if backups stop for a month,
  retention does not age the last good ones out while nobody is looking.

Every kept backup carries its reasons (``last 7``, ``daily 2026-11-24``, ``weekly 2026-W48``,
``monthly 2026-11``). ``keep_last`` is at least 1, so the plan always keeps the newest backup.

Pruning (:func:`prune_database`) applies one plan per database to every store of its policy.
The rules it enforces, whatever the plan says:

1. **One plan from the union.** The plan is computed once from the verified backups (those
   with a manifest) found in *any* of the policy's stores. A backup is deleted from a store only
   if the plan drops it; a backup the plan keeps is kept in every store that holds it. So no
   store deletes a copy that another store's view would keep, and a backup disappears from one
   store only when it is leaving all of them.
2. **The newest verified backup of the database is never deleted**, from any store. "Newest"
   is the catalog's: the greatest backup id, the one restores, drills and the RPO check use.
3. **Every store keeps its own newest verified backup**, even when the plan drops it (a store
   that missed the recent backups during an outage keeps the last copy it has).
4. **Manifest first, then dump.** A backup without a manifest is invisible to listing,
   restores and drills, so a half-pruned backup is never offered. A crash between the two
   deletions leaves an orphan dump, which the orphan sweep removes. The globals object beside
   the dump is deleted just before it and swept like it.
5. **Orphan sweep.** A dump under ``backups/<db>/`` whose manifest object is absent and whose
   ``modified_at`` is older than the grace period (default 1 day) is removed. The grace period
   keeps in-flight backups and copies safe (their manifest is written after the dump); it must
   exceed the longest backup or copy. A dump whose manifest exists but is unreadable is *not*
   an orphan: it is left for a person to look at. Just before removing one, the sweep lists the
   backup's prefix again, so a manifest written meanwhile saves the dump.
6. **Immutability is respected and reported.** A delete that raises
   :class:`~platform_orchestration.storage.base.ObjectLocked` is skipped and reported with its
   retain-until date. A locked manifest keeps the whole backup (nothing lost). The manifest is
   written after its dump under the same lock settings, so its lock normally outlives the
   dump's: a deletable manifest means a deletable dump. If it still happens (a legal hold, a
   changed retention), the backup is already invisible once its manifest is gone, and its dump
   stays as an orphan until the lock expires, then the orphan sweep removes it. The report says so.
7. **A store that cannot be listed is left alone and reported.** The others are still pruned.
   That is safe because the plan is monotone: dropping backups from the input never drops a
   backup a full-view plan would keep.
8. **``dry_run=True`` deletes nothing** and reports what would be deleted and swept. It
   cannot know about locks, which only a real delete reveals.
9. **Leftovers are swept.** Incomplete uploads (partial files, open multipart uploads,
   uncommitted blocks, upload sessions) and, in local stores, empty directories, under every
   prefix the product writes for the database (``backups/<db>/``, ``drills/<db>/``,
   ``evidence/``), are removed once idle for longer than ``sweep_older_than`` (default 1 day);
   see :mod:`platform_orchestration.backups.leftovers`. Committed objects are never touched.
10. **Drill records have retention** (with a :class:`DrillRetention`): each store keeps its
   newest ``keep_last`` records and every record younger than ``keep_younger_than`` (the
   policy's drill cadence times ``keep_cadences``); the newest passed drill of the database,
   and each store's own newest passed drill, are never deleted, however old. A record that
   cannot be read is left for a person. Without retention, every record would be listed and
   read by each compliance assessment forever.

Only the policy's stores are pruned. A store the policy no longer names keeps what it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Literal

from platform_orchestration.backups.catalog import DrillListing, StoredBackup, list_backups, read_drills
from platform_orchestration.backups.leftovers import (
    LEFTOVER_GRACE,
    LeftoverSweep,
    prefixes_written_for,
    sweep_leftovers,
)
from platform_orchestration.backups.index import indexed_documents, refresh_index_quietly
from platform_orchestration.backups.manifest import (
    DUMP_OBJECT,
    GLOBALS_OBJECT,
    MANIFEST_OBJECT,
    DrillRecord,
    backup_prefix,
    drill_key,
    drills_prefix,
    dump_key,
    globals_key,
    manifest_key,
)
from platform_orchestration.errors import PlatformError
from platform_orchestration.fleet.model import DrillPolicy, RetentionPolicy
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.storage import IncompleteUpload, ObjectInfo, ObjectStore, StoreError
from platform_orchestration.storage.base import ObjectLocked

__all__ = [
    "LEFTOVER_GRACE",
    "ORPHAN_GRACE",
    "BackupPoint",
    "KeptBackup",
    "LockedObject",
    "PruneReport",
    "RetentionError",
    "RetentionPlan",
    "StorePrune",
    "plan_retention",
    "prune_database",
]

ORPHAN_GRACE = timedelta(days=1)
"""How old a dump without a manifest must be before the sweep removes it."""


class RetentionError(PlatformError):
    """The backups given to the planner are inconsistent (naive times, one id with two times)."""


# --- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupPoint:
    """One backup as the planner sees it: its id and when its snapshot was taken (tz-aware)."""

    backup_id: str
    taken_at: datetime

    @classmethod
    def of(cls, stored: StoredBackup) -> BackupPoint:
        return cls(stored.backup_id, stored.manifest.snapshot_worker_time)  # the worker's clock


@dataclass(frozen=True)
class KeptBackup:
    """A backup that stays, and every reason it stays (a backup can be kept for several)."""

    backup_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RetentionPlan:
    """What :func:`plan_retention` decided. ``kept`` and ``dropped`` are newest first and
    together hold every backup given, once each. An id that is in neither was not planned
    for, and an executor must not delete it."""

    policy: RetentionPolicy
    planned_at: datetime
    kept: tuple[KeptBackup, ...]
    dropped: tuple[str, ...]

    def reasons_for(self, backup_id: str) -> tuple[str, ...]:
        """Why `backup_id` is kept; empty if the plan drops it or never saw it."""
        return next((k.reasons for k in self.kept if k.backup_id == backup_id), ())

    def drops(self, backup_id: str) -> bool:
        return backup_id in self.dropped

    @property
    def kept_ids(self) -> tuple[str, ...]:
        return tuple(k.backup_id for k in self.kept)


def _day(at: datetime) -> str:
    return at.strftime("%Y-%m-%d")


def _iso_week(at: datetime) -> str:
    year, week, _ = at.isocalendar()
    return f"{year}-W{week:02d}"


def _month(at: datetime) -> str:
    return at.strftime("%Y-%m")


def plan_retention(backups: Iterable[BackupPoint], policy: RetentionPolicy, now: datetime) -> RetentionPlan:
    """Choose the backups to keep under `policy`: the newest ``keep_last``, plus the newest of each
    of the newest ``daily`` UTC days, ``weekly`` ISO weeks and ``monthly`` months holding a backup.

    `backups` are one database's backups, from one store or several. The same id given twice
    (one per store) counts once. `now` is only recorded as ``planned_at``: buckets are counted
    from the newest backup, so a stalled backup schedule never ages the last backups out. Equal
    snapshot times are ordered by id. Raises :class:`RetentionError` for a naive time or an id
    given with two different times.

    >>> from datetime import datetime, timezone
    >>> at = lambda d, h: datetime(2026, 11, d, h, tzinfo=timezone.utc)
    >>> points = [BackupPoint(f"b{d}-{h}", at(d, h)) for d in (23, 24, 25) for h in (1, 13)]
    >>> plan = plan_retention(points, RetentionPolicy(keep_last=1, daily=2), at(25, 14))
    >>> [(k.backup_id, k.reasons) for k in plan.kept]
    [('b25-13', ('last 1', 'daily 2026-11-25')), ('b24-13', ('daily 2026-11-24',))]
    >>> plan.dropped
    ('b25-1', 'b24-1', 'b23-13', 'b23-1')
    """
    unique: dict[str, datetime] = {}
    for point in backups:
        if point.taken_at.tzinfo is None or point.taken_at.utcoffset() is None:
            raise RetentionError(f"backup {point.backup_id}: snapshot time {point.taken_at} has no time zone")
        taken_at = point.taken_at.astimezone(timezone.utc)
        seen = unique.setdefault(point.backup_id, taken_at)
        if seen != taken_at:
            raise RetentionError(f"backup {point.backup_id} is listed with two snapshot times, "
                                 f"{seen.isoformat()} and {taken_at.isoformat()}; not planning retention")
    newest_first = sorted(unique.items(), key=lambda item: (item[1], item[0]), reverse=True)

    # (label, count, bucket of a backup); "last" buckets each backup on its own.
    rules: list[tuple[str, int, Callable[[str, datetime], str]]] = [
        (f"last {policy.keep_last}", policy.keep_last, lambda backup_id, _at: backup_id),
        ("daily", policy.daily, lambda _id, at: _day(at)),
        ("weekly", policy.weekly, lambda _id, at: _iso_week(at)),
        ("monthly", policy.monthly, lambda _id, at: _month(at)),
    ]
    remaining = [count for _label, count, _bucket in rules]
    last_bucket: list[str | None] = [None] * len(rules)
    kept: list[KeptBackup] = []
    dropped: list[str] = []
    for backup_id, taken_at in newest_first:
        reasons: list[str] = []
        for index, (label, _count, bucket_of) in enumerate(rules):
            if remaining[index] == 0:
                continue
            bucket = bucket_of(backup_id, taken_at)
            # Newest first, so the first backup seen in a bucket is that bucket's newest.
            if bucket != last_bucket[index]:
                last_bucket[index] = bucket
                remaining[index] -= 1
                reasons.append(label if index == 0 else f"{label} {bucket}")
        if reasons:
            kept.append(KeptBackup(backup_id, tuple(reasons)))
        else:
            dropped.append(backup_id)
    return RetentionPlan(policy=policy, planned_at=now, kept=tuple(kept), dropped=tuple(dropped))


@dataclass(frozen=True)
class DrillRetention:
    """Which drill records a store keeps: its newest `keep_last`, and every record that
    finished less than `keep_younger_than` ago (rule 10)."""

    keep_last: int
    keep_younger_than: timedelta

    @classmethod
    def of(cls, drill: DrillPolicy) -> DrillRetention:
        return cls(drill.keep_last, drill.every * drill.keep_cadences)


@dataclass(frozen=True)
class KeptDrill:
    drill_id: str
    reasons: tuple[str, ...]


def plan_drill_retention(records: Sequence[DrillRecord], rule: DrillRetention, now: datetime,
                         never_delete: Iterable[str] = ()) -> tuple[tuple[KeptDrill, ...], tuple[str, ...]]:
    """(kept, dropped) of one store's readable drill records, both newest first: the newest
    ``keep_last``, those younger than ``keep_younger_than`` at `now`, the newest passed one,
    and the ids in `never_delete` (the database's newest passed drill) are kept."""
    newest_first = sorted(records, key=lambda record: record.drill_id, reverse=True)
    protected = set(never_delete)
    newest_passed = next((record.drill_id for record in newest_first if record.passed), None)
    cutoff = now - rule.keep_younger_than
    kept: list[KeptDrill] = []
    dropped: list[str] = []
    for index, record in enumerate(newest_first):
        reasons = []
        if index < rule.keep_last:
            reasons.append(f"last {rule.keep_last}")
        if record.finished_at > cutoff:
            reasons.append(f"younger than {format_duration(rule.keep_younger_than)}")
        if record.drill_id == newest_passed or record.drill_id in protected:
            reasons.append("newest passed drill")
        if reasons:
            kept.append(KeptDrill(record.drill_id, tuple(reasons)))
        else:
            dropped.append(record.drill_id)
    return tuple(kept), tuple(dropped)


# --- pruning ------------------------------------------------------------------------------------


LockedWhat = Literal["backup", "dump", "orphan dump"]


def _when(retain_until: datetime | None) -> str:
    if retain_until is None:
        return "locked (the store gave no retain-until date)"
    return "locked until " + retain_until.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LockedObject:
    """A delete the store's immutability refused.

    ``what`` says what stayed: ``backup`` (its manifest was locked, so the backup is whole and
    still listed), ``dump`` (the manifest went, the dump is locked: the backup is no longer
    listed and its dump is an orphan until the lock expires), or ``orphan dump`` (the sweep hit
    a lock)."""

    backup_id: str
    key: str
    what: LockedWhat
    retain_until: datetime | None

    def describe(self, store: str) -> str:
        if self.what == "backup":
            return f"backup {self.backup_id} in store {store} is {_when(self.retain_until)}; kept"
        if self.what == "dump":
            return (f"backup {self.backup_id} in store {store}: manifest removed, but its dump is "
                    f"{_when(self.retain_until)}; the dump stays until then and the orphan sweep "
                    "removes it afterwards")
        return f"orphan dump {self.key} in store {store} is {_when(self.retain_until)}; kept until then"


@dataclass(frozen=True)
class StorePrune:
    """What pruning did (or, in a dry run, would do) in one store.

    ``deleted``: backup ids whose manifest and dump are both gone. ``kept``: the verified backups
    that stay, with the plan's reasons and any safety rule's. ``locked``: deletes refused by
    immutability. ``orphans_removed``: dump keys the sweep removed. ``uploads_discarded`` and
    ``directories_removed``: the leftovers swept (rule 9). ``failures``: any other store error,
    one line each. A backup in ``failures`` or ``locked`` is in neither ``deleted`` nor ``kept``."""

    store: str
    dry_run: bool
    deleted: tuple[str, ...] = ()
    kept: tuple[KeptBackup, ...] = ()
    locked: tuple[LockedObject, ...] = ()
    orphans_removed: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    uploads_discarded: tuple[IncompleteUpload, ...] = ()
    directories_removed: tuple[str, ...] = ()
    drills_deleted: tuple[str, ...] = ()
    drills_kept: tuple[KeptDrill, ...] = ()

    @property
    def discarded_bytes(self) -> int:
        """Bytes of the discarded uploads whose size the store knows."""
        return sum(upload.size or 0 for upload in self.uploads_discarded)


@dataclass(frozen=True)
class PruneReport:
    """Retention applied to one database across its policy's stores. Counts are of copies:
    one backup deleted from three stores counts three."""

    database: str
    dry_run: bool
    plan: RetentionPlan
    stores: tuple[StorePrune, ...]
    sweep_older_than: timedelta = LEFTOVER_GRACE

    def store(self, name: str) -> StorePrune:
        return next(s for s in self.stores if s.store == name)

    @property
    def deleted_count(self) -> int:
        return sum(len(s.deleted) for s in self.stores)

    @property
    def kept_count(self) -> int:
        return sum(len(s.kept) for s in self.stores)

    @property
    def locked_count(self) -> int:
        return sum(len(s.locked) for s in self.stores)

    @property
    def orphans_removed_count(self) -> int:
        return sum(len(s.orphans_removed) for s in self.stores)

    @property
    def uploads_discarded_count(self) -> int:
        return sum(len(s.uploads_discarded) for s in self.stores)

    @property
    def discarded_bytes(self) -> int:
        """Bytes of the discarded uploads, where the stores know them."""
        return sum(s.discarded_bytes for s in self.stores)

    @property
    def directories_removed_count(self) -> int:
        return sum(len(s.directories_removed) for s in self.stores)

    @property
    def drills_deleted_count(self) -> int:
        return sum(len(s.drills_deleted) for s in self.stores)

    @property
    def drills_kept_count(self) -> int:
        return sum(len(s.drills_kept) for s in self.stores)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(f"store {s.store}: {f}" for s in self.stores for f in s.failures)

    def lines(self) -> list[str]:
        """The report for a person: one line per deleted, kept, locked, swept or failed item."""
        deleted = "would delete" if self.dry_run else "deleted"
        removed = "would remove" if self.dry_run else "removed"
        lines: list[str] = []
        for s in self.stores:
            lines += [f"{s.store}: {deleted} {backup_id}" for backup_id in s.deleted]
            lines += [f"{s.store}: kept {k.backup_id} ({'; '.join(k.reasons)})" for k in s.kept]
            lines += [f"{s.store}: {locked.describe(s.store)}" for locked in s.locked]
            lines += [f"{s.store}: {removed} orphan dump {key}" for key in s.orphans_removed]
            lines += [f"{s.store}: {removed} incomplete upload {upload.key} ({_describe_upload(upload)})"
                      for upload in s.uploads_discarded]
            lines += [f"{s.store}: {removed} empty directory {key}" for key in s.directories_removed]
            lines += [f"{s.store}: {deleted} drill record {drill_id}" for drill_id in s.drills_deleted]
            if s.uploads_discarded or s.directories_removed:
                lines.append(f"{s.store}: leftovers idle for over {format_duration(self.sweep_older_than)}: "
                             f"{removed} {len(s.uploads_discarded)} incomplete upload(s) "
                             f"({_mib(s.discarded_bytes)}), {len(s.directories_removed)} empty directory(ies)")
            lines += [f"{s.store}: error: {failure}" for failure in s.failures]
        return lines


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def _describe_upload(upload: IncompleteUpload) -> str:
    size = "size unknown" if upload.size is None else _mib(upload.size)
    idle = ("" if upload.last_active_at is None else
            ", idle since " + upload.last_active_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return size + idle


@dataclass
class _StoreView:
    store: ObjectStore
    verified: list[StoredBackup] = field(default_factory=list)
    objects: list[ObjectInfo] = field(default_factory=list)
    error: str | None = None


def _split_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(backup id, object name) of ``backups/<db>/<id>/<object>``; None for anything else."""
    parts = key[len(prefix):].split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _look(store: ObjectStore, database: str) -> _StoreView:
    view = _StoreView(store)
    try:
        view.objects = list(store.list(f"backups/{database}/"))
        # One listing, not two; the manifests the catalog index holds for it are not read again.
        view.verified = list_backups(store, database, listed=view.objects,
                                     known=indexed_documents(store, database, view.objects))
    except StoreError as exc:
        view.error = f"cannot list backups of {database}, nothing pruned here: {exc}"
    return view


def prune_database(database: str, stores: Sequence[ObjectStore], policy: RetentionPolicy, *,
                   now: datetime, dry_run: bool = False,
                   orphan_grace: timedelta = ORPHAN_GRACE,
                   sweep_older_than: timedelta = LEFTOVER_GRACE,
                   drills: DrillRetention | None = None) -> PruneReport:
    """Apply `policy` to `database` in `stores` (the policy's stores), under the rules of this
    module's docstring. `now` anchors the orphan grace period and the leftover sweep's age
    (`sweep_older_than`), and is recorded in the plan.

    With `drills`, drill records are pruned too (rule 10); without, they are left alone.

    Store errors never stop the run half-way: each is reported in its store's ``failures`` and
    the rest goes on. Raises :class:`RetentionError`, before deleting anything, if the stores
    disagree about a backup's snapshot time."""
    views = [_look(store, database) for store in stores]
    plan = plan_retention((BackupPoint.of(b) for v in views for b in v.verified), policy, now)
    all_ids = [b.backup_id for v in views for b in v.verified]
    newest_overall = max(all_ids) if all_ids else None
    results = [
        _with_leftovers_swept(
            _prune_store(view, database, plan, newest_overall, now=now, dry_run=dry_run, orphan_grace=orphan_grace),
            view, database, older_than=now - sweep_older_than, dry_run=dry_run)
        for view in views
    ]
    if drills is not None:
        results = _with_drills_pruned(results, views, database, drills, now=now, dry_run=dry_run)
    if not dry_run:
        for view in views:  # what was deleted leaves the index (it would be ignored anyway)
            if view.error is None:
                refresh_index_quietly(view.store, database)
    return PruneReport(database=database, dry_run=dry_run, plan=plan, stores=tuple(results),
                       sweep_older_than=sweep_older_than)


def _with_drills_pruned(results: list[StorePrune], views: list[_StoreView], database: str,
                        rule: DrillRetention, *, now: datetime, dry_run: bool) -> list[StorePrune]:
    """Rule 10 in every store that could be listed."""
    listings: dict[str, DrillListing | str] = {}
    for view in views:
        if view.error is None:
            try:
                listed = list(view.store.list(drills_prefix(database)))
                listings[view.store.name] = read_drills(
                    view.store, database, listed=listed, known=indexed_documents(view.store, database, listed))
            except StoreError as exc:
                listings[view.store.name] = f"cannot list drill records of {database}, none pruned here: {exc}"
    passed = [record.drill_id for listing in listings.values() if not isinstance(listing, str)
              for record in listing.records if record.passed]
    newest_passed = [max(passed)] if passed else []
    pruned = []
    for result, view in zip(results, views):
        listing = listings.get(view.store.name)
        if listing is None:
            pruned.append(result)
            continue
        if isinstance(listing, str):
            pruned.append(replace(result, failures=result.failures + (listing,)))
            continue
        kept, dropped = plan_drill_retention(listing.records, rule, now, newest_passed)
        deleted: list[str] = []
        failures: list[str] = []
        for drill_id in dropped:
            if not dry_run:
                try:
                    view.store.delete(drill_key(database, drill_id))
                except ObjectLocked as exc:
                    failures.append(f"drill record {drill_id} is {_when(exc.retain_until)}; kept")
                    continue
                except StoreError as exc:
                    failures.append(f"deleting drill record {drill_id} failed: {exc}")
                    continue
            deleted.append(drill_id)
        pruned.append(replace(result, drills_deleted=tuple(deleted), drills_kept=kept,
                              failures=result.failures + tuple(failures)))
    return pruned


def _with_leftovers_swept(result: StorePrune, view: _StoreView, database: str, *, older_than: datetime,
                          dry_run: bool) -> StorePrune:
    """Rule 9, after the prune (which can itself leave an empty directory to sweep). A store
    that could not be listed is left alone: its failure is already reported."""
    if view.error is not None:
        return result
    swept: LeftoverSweep = sweep_leftovers(view.store, prefixes_written_for(database),
                                           older_than=older_than, dry_run=dry_run)
    return replace(result, uploads_discarded=swept.uploads, directories_removed=swept.directories,
                   failures=result.failures + swept.failures)


def _prune_store(view: _StoreView, database: str, plan: RetentionPlan, newest_overall: str | None, *,
                 now: datetime, dry_run: bool, orphan_grace: timedelta) -> StorePrune:
    store = view.store
    if view.error is not None:
        return StorePrune(store.name, dry_run, failures=(view.error,))
    deleted: list[str] = []
    kept: list[KeptBackup] = []
    locked: list[LockedObject] = []
    failures: list[str] = []
    newest_here = max((b.backup_id for b in view.verified), default=None)

    for stored in view.verified:
        backup_id = stored.backup_id
        reasons = list(plan.reasons_for(backup_id))
        if backup_id == newest_overall:
            reasons.append(f"newest backup of {database}")
        if backup_id == newest_here:
            reasons.append(f"newest copy in {store.name}")
        if reasons or not plan.drops(backup_id):
            kept.append(KeptBackup(backup_id, tuple(reasons) or ("not planned",)))
            continue
        if dry_run:
            deleted.append(backup_id)
            continue
        try:
            store.delete(manifest_key(database, backup_id))
        except ObjectLocked as exc:
            locked.append(LockedObject(backup_id, manifest_key(database, backup_id), "backup", exc.retain_until))
            continue
        except StoreError as exc:
            failures.append(f"deleting backup {backup_id} failed, backup left whole: {exc}")
            continue
        object_key = globals_key(database, backup_id)  # beside the dump; absent in older backups
        try:
            store.delete(object_key)
            object_key = dump_key(database, backup_id)
            store.delete(object_key)
        except ObjectLocked as exc:
            locked.append(LockedObject(backup_id, object_key, "dump", exc.retain_until))
            continue
        except StoreError as exc:
            failures.append(f"backup {backup_id}: manifest removed but deleting its dump failed "
                            f"(the orphan sweep removes it later): {exc}")
            continue
        deleted.append(backup_id)

    orphans, orphan_locks, orphan_failures = _sweep_orphans(view, database, now - orphan_grace, dry_run)
    return StorePrune(store.name, dry_run, deleted=tuple(deleted), kept=tuple(kept),
                      locked=tuple(locked + orphan_locks), orphans_removed=tuple(orphans),
                      failures=tuple(failures + orphan_failures))


def _sweep_orphans(view: _StoreView, database: str, cutoff: datetime,
                   dry_run: bool) -> tuple[list[str], list[LockedObject], list[str]]:
    """Remove dumps with no manifest object older than `cutoff`, from the listing taken before
    pruning (so a dump that pruning just found locked is not tried twice in one run)."""
    store = view.store
    prefix = f"backups/{database}/"
    with_manifest = {parts[0] for info in view.objects
                     if (parts := _split_key(prefix, info.key)) and parts[1] == MANIFEST_OBJECT}
    removed: list[str] = []
    locked: list[LockedObject] = []
    failures: list[str] = []
    for info in view.objects:
        parts = _split_key(prefix, info.key)
        if (parts is None or parts[1] not in (DUMP_OBJECT, GLOBALS_OBJECT) or parts[0] in with_manifest
                or info.modified_at > cutoff):
            continue
        backup_id = parts[0]
        if dry_run:
            removed.append(info.key)
            continue
        try:
            # A copy may have rewritten the dump and its manifest since we listed.
            current = {i.key: i for i in store.list(backup_prefix(database, backup_id))}
            dump_now = current.get(info.key)
            if manifest_key(database, backup_id) in current or dump_now is None or dump_now.modified_at > cutoff:
                continue
            store.delete(info.key)
        except ObjectLocked as exc:
            locked.append(LockedObject(backup_id, info.key, "orphan dump", exc.retain_until))
            continue
        except StoreError as exc:
            failures.append(f"removing orphan dump {info.key} failed: {exc}")
            continue
        removed.append(info.key)
    return removed, locked, failures
