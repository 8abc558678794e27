"""What backups and drills exist, read from the stores themselves, and where evidence is written.

The stores are the only source of truth: no database or Dagster instance is needed to
answer "what is the latest good backup of orders, and where is it?", which is exactly
the question asked when everything else is down.

Nothing broken is passed over in silence. A manifest or drill record that cannot be read
(or that describes another key) is not a backup or a drill, but it is not dropped either:
every listing returns it as an :class:`UnreadableObject` beside what could be read, and a
choice of the latest backup (:func:`select_backup`) names the newer backups it passed over
and why. A broken object's key still says what it was (``backups/<db>/<id>/manifest.json``),
so "newer" is decidable without reading it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from platform_orchestration.backups.manifest import (
    BackupManifest,
    DrillRecord,
    ManifestError,
    backup_id_of_key,
    backups_prefix,
    database_of_key,
    drill_id_of_key,
    drills_prefix,
    first_problem,
    is_manifest_key,
)
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.storage import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    read_bytes,
    write_bytes,
)

log = logging.getLogger(__name__)


class BackupNotFound(PlatformError):
    """No backup matches what was asked (database, id, store)."""


class BackupUnreadable(BackupNotFound):
    """The backup asked for exists, but its manifest cannot be read in any store searched."""


@dataclass(frozen=True)
class StoredBackup:
    """One verified copy: a manifest in a store (its dump sits beside it)."""

    store: ObjectStore
    manifest: BackupManifest

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id


@dataclass(frozen=True)
class UnreadableObject:
    """A stored manifest or drill record that cannot be read, or that describes another key."""

    store: str
    key: str
    reason: str

    @property
    def database(self) -> str | None:
        return database_of_key(self.key)

    @property
    def backup_id(self) -> str | None:
        """The backup a broken manifest belongs to, from its key; None for other objects."""
        return backup_id_of_key(self.key)

    @property
    def drill_id(self) -> str | None:
        """The drill a broken record belongs to, from its key; None for other objects."""
        return drill_id_of_key(self.key)

    @property
    def unreachable(self) -> bool:
        """The store itself could not be listed (down, refused): the key is the prefix asked for."""
        return self.key.endswith("/")

    @property
    def what(self) -> str:
        """``backup <id>``, ``drill record <id>``, ``backups (if any)`` of a store that could
        not be listed, or the key of anything else."""
        if self.unreachable:
            return "backups (if any)"
        if self.backup_id is not None:
            return f"backup {self.backup_id}"
        if self.drill_id is not None:
            return f"drill record {self.drill_id}"
        return self.key

    def describe(self) -> str:
        """``backup <id> in store <store>: <reason>`` (``drill record <id> ...`` for drills)."""
        return f"{self.what} in store {self.store}: {self.reason}"


def describe_grouped(unreadable: Iterable[UnreadableObject]) -> list[str]:
    """One line per broken object and reason, its stores together:
    ``backup <id> in stores aws, gcp: <reason>``."""
    stores_of: dict[tuple[str, str], list[str]] = {}
    for broken in unreadable:
        stores_of.setdefault((broken.what, broken.reason), []).append(broken.store)
    return [f"{what} in store{'s' if len(stores) > 1 else ''} {', '.join(stores)}: {reason}"
            for (what, reason), stores in stores_of.items()]


def describe_all(unreadable: Iterable[UnreadableObject], limit: int = 5) -> str:
    """One line naming broken objects (:func:`describe_grouped`), the first `limit`; "" for none."""
    items = describe_grouped(unreadable)
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


@dataclass(frozen=True)
class BackupListing:
    """The backups found with a readable manifest (by database, then id: oldest first), and
    the manifests that could not be read."""

    backups: tuple[StoredBackup, ...] = ()
    unreadable: tuple[UnreadableObject, ...] = ()

    def __add__(self, other: BackupListing) -> BackupListing:
        return BackupListing(self.backups + other.backups, self.unreadable + other.unreadable)


@dataclass(frozen=True)
class DrillListing:
    """Drill records that could be read (oldest first), and those that could not."""

    records: tuple[DrillRecord, ...] = ()
    unreadable: tuple[UnreadableObject, ...] = ()


@dataclass(frozen=True)
class BackupChoice:
    """The backup chosen for a verify, restore, drill or copy, and what the choice stepped over.

    ``passed_over``: backups newer than the chosen one whose manifest could not be read (only
    when the latest was asked for); ``unreadable``: every manifest of the database that could
    not be read in the stores searched."""

    stored: StoredBackup
    passed_over: tuple[UnreadableObject, ...] = ()
    unreadable: tuple[UnreadableObject, ...] = ()


def read_backups(store: ObjectStore, database: str | None = None, *,
                 listed: Iterable[ObjectInfo] | None = None,
                 known: Mapping[str, Mapping[str, Any]] | None = None) -> BackupListing:
    """Backups with a readable manifest in `store` (of `database`, else of every database),
    oldest first, and the manifests that could not be read or describe another key: those
    cannot be restored from, so they are not backups, and they are reported, not dropped.
    `listed`: the store's listing of the database's backups prefix when the caller already
    took it (it is not listed again). `known`: manifests already read, by key, for listed
    keys whose listing matched (the catalog index, backups/index.py); each is used instead of
    a GET when it parses and describes its key, else the manifest is read from the store."""
    found: list[StoredBackup] = []
    unreadable: list[UnreadableObject] = []
    for info in (store.list(backups_prefix(database)) if listed is None else listed):
        if not is_manifest_key(info.key):
            continue
        manifest = _known_manifest(known, info.key)
        if manifest is None:
            try:
                manifest = BackupManifest.from_json(read_bytes(store, info.key), f"store {store.name}: {info.key}")
            except ObjectNotFound:
                continue  # pruned while we listed
            except ManifestError as exc:
                unreadable.append(UnreadableObject(store.name, info.key, exc.reason))
                continue
        if manifest.manifest_key != info.key:
            unreadable.append(UnreadableObject(store.name, info.key,
                                               f"manifest describes {manifest.manifest_key}"))
            continue
        found.append(StoredBackup(store, manifest))
    return BackupListing(tuple(sorted(found, key=lambda b: (b.manifest.database, b.backup_id))),
                         tuple(sorted(unreadable, key=lambda u: u.key)))


def _known_manifest(known: Mapping[str, Mapping[str, Any]] | None, key: str) -> BackupManifest | None:
    """The manifest `known` holds for `key`, if it parses and describes that key; else None
    (the caller reads the stored one: a bad cache entry is never taken for a bad manifest)."""
    document = known.get(key) if known else None
    if document is None:
        return None
    try:
        manifest = BackupManifest.model_validate(document)
    except ValidationError:
        return None
    return manifest if manifest.manifest_key == key else None


def read_backups_or_report(store: ObjectStore, database: str | None = None) -> BackupListing:
    """:func:`read_backups`, but a store that cannot be listed (a cloud that is down) is
    reported as one unreadable entry for its prefix instead of raising: with one cloud down,
    the others still answer, which is when a break-glass restore is needed most."""
    try:
        return read_backups(store, database)
    except StoreError as exc:
        return BackupListing(unreadable=(store_unreachable(store, database, exc),))


def store_unreachable(store: ObjectStore, database: str | None, exc: StoreError) -> UnreadableObject:
    """The entry that stands for a store that could not be listed at all (``unreachable``)."""
    return UnreadableObject(store.name, backups_prefix(database), f"the store could not be listed: {exc}")


def list_backups(store: ObjectStore, database: str | None = None, *,
                 listed: Iterable[ObjectInfo] | None = None,
                 known: Mapping[str, Mapping[str, Any]] | None = None) -> list[StoredBackup]:
    """The readable backups of :func:`read_backups`, for callers that act only on what can be
    read (retention, tests); each manifest that could not be read is logged as a warning.
    Whatever reports to an operator uses :func:`read_backups` and names them."""
    listing = read_backups(store, database, listed=listed, known=known)
    for broken in listing.unreadable:
        log.warning("skipping unreadable manifest: %s", broken.describe())
    return list(listing.backups)


def latest_backup(store: ObjectStore, database: str) -> StoredBackup | None:
    backups = list_backups(store, database)
    return backups[-1] if backups else None


def select_backup(stores: Iterable[ObjectStore], database: str, backup_id: str | None = None,
                  store_name: str | None = None) -> BackupChoice:
    """The requested backup (the latest readable one when `backup_id` is None), from
    `store_name` if given, else from the first store in order that holds it; with the newer
    backups passed over because their manifest could not be read.

    Raises BackupNotFound when nothing matches, BackupUnreadable when the backup asked for
    exists only with manifests that cannot be read (the message names them)."""
    stores = list(stores)
    if store_name is not None:
        stores = [s for s in stores if s.name == store_name]
        if not stores:
            raise BackupNotFound(f"store {store_name!r} is not one of the stores for {database}")
    # A store named by the caller must answer; among several, one that is down is
    # stepped over and named (it might hold a newer backup).
    listings = [(store, read_backups(store, database) if store_name else read_backups_or_report(store, database))
                for store in stores]
    return choose_backup(listings, database, backup_id)


def choose_backup(listings: Sequence[tuple[ObjectStore, BackupListing]], database: str,
                  backup_id: str | None = None) -> BackupChoice:
    """:func:`select_backup` over listings already read (one per store, in search order), for
    callers that go on to use the same listings: each store is listed once."""
    candidates: list[StoredBackup] = []
    unreadable: list[UnreadableObject] = []
    for _store, listing in listings:
        unreadable += listing.unreadable
        if backup_id is None:
            candidates += listing.backups[-1:]
        else:
            candidates += [b for b in listing.backups if b.backup_id == backup_id]
    where = ", ".join(store.name for store, _listing in listings)
    if not candidates:
        if backup_id is not None and (broken := [u for u in unreadable if u.backup_id == backup_id]):
            raise BackupUnreadable(f"backup {backup_id} of {database} cannot be read: {describe_all(broken)}")
        what = f"backup {backup_id}" if backup_id else "readable backup"
        found = f"no {what} of database {database} in store(s) {where}"
        raise BackupNotFound(found + (f"; unreadable: {describe_all(unreadable)}" if unreadable else ""))
    # Latest id wins; among equal ids the earlier store in the given order.
    best_id = max(c.backup_id for c in candidates)
    chosen = next(c for c in candidates if c.backup_id == best_id)
    passed_over = [u for u in unreadable
                   if backup_id is None and (u.unreachable or (u.backup_id or "") > best_id)]
    return BackupChoice(chosen, tuple(passed_over), tuple(unreadable))


def find_backup(stores: Iterable[ObjectStore], database: str, backup_id: str | None = None,
                store_name: str | None = None) -> StoredBackup:
    """The backup :func:`select_backup` chooses, for callers that need no account of what it
    stepped over."""
    return select_backup(stores, database, backup_id, store_name).stored


def read_drills(store: ObjectStore, database: str, *, listed: Iterable[ObjectInfo] | None = None,
                known: Mapping[str, Mapping[str, Any]] | None = None) -> DrillListing:
    """Drill records of `database` in `store`, oldest first, and those that cannot be read
    (or describe another key), reported rather than dropped. `listed` and `known` as for
    :func:`read_backups`."""
    records: list[DrillRecord] = []
    unreadable: list[UnreadableObject] = []
    for info in (store.list(drills_prefix(database)) if listed is None else listed):
        if not info.key.endswith(".json"):
            continue
        record = _known_record(known, info.key)
        if record is None:
            try:
                record = DrillRecord.model_validate_json(read_bytes(store, info.key))
            except ObjectNotFound:
                continue
            except ValidationError as exc:
                unreadable.append(UnreadableObject(store.name, info.key,
                                                   f"unreadable drill record: {first_problem(exc)}"))
                continue
        if record.key != info.key:
            unreadable.append(UnreadableObject(store.name, info.key, f"drill record describes {record.key}"))
            continue
        records.append(record)
    return DrillListing(tuple(sorted(records, key=lambda r: r.drill_id)),
                        tuple(sorted(unreadable, key=lambda u: u.key)))


def _known_record(known: Mapping[str, Mapping[str, Any]] | None, key: str) -> DrillRecord | None:
    document = known.get(key) if known else None
    if document is None:
        return None
    try:
        record = DrillRecord.model_validate(document)
    except ValidationError:
        return None
    return record if record.key == key else None


def list_drills(store: ObjectStore, database: str) -> list[DrillRecord]:
    """The readable records of :func:`read_drills`; each unreadable one logged as a warning."""
    listing = read_drills(store, database)
    for broken in listing.unreadable:
        log.warning("skipping unreadable drill record: %s", broken.describe())
    return list(listing.records)


def drill_history(stores: Iterable[ObjectStore], database: str) -> DrillListing:
    """Every drill of `database` recorded in any of `stores`, once each, oldest first; and
    every record, in any store, that could not be read."""
    return merge_drills(read_drills(store, database) for store in stores)


def merge_drills(listings: Iterable[DrillListing]) -> DrillListing:
    """The drill listings of several stores as one: each drill once (the first store's
    record), oldest first, and every record that could not be read, in any store."""
    by_id: dict[str, DrillRecord] = {}
    unreadable: list[UnreadableObject] = []
    for listing in listings:
        unreadable += listing.unreadable
        for record in listing.records:
            by_id.setdefault(record.drill_id, record)
    return DrillListing(tuple(sorted(by_id.values(), key=lambda r: r.drill_id)), tuple(unreadable))


@dataclass(frozen=True)
class Recorded:
    """Where a piece of evidence was written, and why the other stores got none."""

    key: str
    stored_in: tuple[str, ...]
    failed: dict[str, str]


class _Evidence(Protocol):
    @property
    def drill_id(self) -> str: ...

    @property
    def key(self) -> str: ...


_E = TypeVar("_E", bound=_Evidence)


def read_evidence(stores: Sequence[ObjectStore], prefix: str, model: Any) -> tuple[list[_E], list[str]]:
    """Every readable record under `prefix` (drill records written by `record_everywhere`) across
    `stores`, parsed as `model` (a pydantic model with `drill_id` and `key`): oldest first, one
    per drill id (the copy of the first store that has it); and what could not be read, as
    "<key> in store <store>: <reason>", never skipped in silence. A record that describes
    another key than the one it is stored under is one of those."""
    found: dict[str, _E] = {}
    unreadable: list[str] = []
    for store in stores:
        try:
            keys = [info.key for info in store.list(prefix) if info.key.endswith(".json")]
        except StoreError as exc:
            unreadable.append(f"{prefix} in store {store.name}: {one_line(exc)}")
            continue
        for key in keys:
            try:
                record = model.model_validate_json(read_bytes(store, key))
            except ObjectNotFound:
                continue  # pruned between the listing and the read
            except (StoreError, ValueError) as exc:
                unreadable.append(f"{key} in store {store.name}: {one_line(exc)[:200]}")
                continue
            if record.key != key:
                unreadable.append(f"{key} in store {store.name}: the record describes {record.key}")
                continue
            found.setdefault(record.drill_id, record)
    return sorted(found.values(), key=lambda r: r.drill_id), unreadable


def record_everywhere(stores: Sequence[ObjectStore], key: str, data: bytes, what: str) -> Recorded:
    """Write one piece of evidence (a drill record, a compliance report) to every store, so it
    survives the loss of any one; a store that fails is reported, and StoreError is raised
    only when no store got it. `what` names the evidence in messages."""
    written: list[str] = []
    failed: dict[str, str] = {}
    for store in stores:
        try:
            write_bytes(store, key, data)
            written.append(store.name)
        except StoreError as exc:
            failed[store.name] = str(exc)
            log.warning("%s: could not record evidence in %s: %s", what, store.name, exc)
    if not written:
        raise StoreError(f"{what}: evidence could not be written to any store: "
                         + "; ".join(f"{name}: {reason}" for name, reason in failed.items()))
    return Recorded(key, tuple(written), failed)
