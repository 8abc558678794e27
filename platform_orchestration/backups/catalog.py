"""What backups and drills exist, read from the stores themselves.

The stores are the only source of truth: no database or Dagster instance is needed to
answer "what is the latest good backup of orders, and where is it?", which is exactly
the question asked when everything else is down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from platform_orchestration.backups.manifest import (
    MANIFEST_OBJECT,
    BackupManifest,
    DrillRecord,
    ManifestError,
)
from platform_orchestration.errors import PlatformError
from platform_orchestration.storage import ObjectNotFound, ObjectStore, read_bytes

log = logging.getLogger(__name__)


class BackupNotFound(PlatformError):
    """No backup matches what was asked (database, id, store)."""


@dataclass(frozen=True)
class StoredBackup:
    """One verified copy: a manifest in a store (its dump sits beside it)."""

    store: ObjectStore
    manifest: BackupManifest

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id


def list_backups(store: ObjectStore, database: str | None = None) -> list[StoredBackup]:
    """Backups with a manifest in `store`, oldest first. Unreadable manifests are skipped
    with a warning: they cannot be restored from, so they must not count as backups."""
    prefix = f"backups/{database}/" if database else "backups/"
    found: list[StoredBackup] = []
    for info in store.list(prefix):
        if not info.key.endswith("/" + MANIFEST_OBJECT):
            continue
        where = f"store {store.name}: {info.key}"
        try:
            manifest = BackupManifest.from_json(read_bytes(store, info.key), where)
        except ObjectNotFound:
            continue  # pruned while we listed
        except ManifestError as exc:
            log.warning("%s", exc)
            continue
        if manifest.manifest_key != info.key:
            log.warning("%s: manifest describes %s, ignoring it", where, manifest.manifest_key)
            continue
        found.append(StoredBackup(store, manifest))
    return sorted(found, key=lambda b: (b.manifest.database, b.backup_id))


def latest_backup(store: ObjectStore, database: str) -> StoredBackup | None:
    backups = list_backups(store, database)
    return backups[-1] if backups else None


def find_backup(stores: Iterable[ObjectStore], database: str, backup_id: str | None = None,
                store_name: str | None = None) -> StoredBackup:
    """The requested backup (the latest when `backup_id` is None), from `store_name` if given,
    else from the first store in order that holds it."""
    stores = list(stores)
    if store_name is not None:
        stores = [s for s in stores if s.name == store_name]
        if not stores:
            raise BackupNotFound(f"store {store_name!r} is not one of the stores for {database}")
    candidates: list[StoredBackup] = []
    for store in stores:
        backups = list_backups(store, database)
        if backup_id is None:
            if backups:
                candidates.append(backups[-1])
        else:
            candidates += [b for b in backups if b.backup_id == backup_id]
    if not candidates:
        where = ", ".join(s.name for s in stores)
        what = f"backup {backup_id}" if backup_id else "backup"
        raise BackupNotFound(f"no {what} of database {database} in store(s) {where}")
    # Latest id wins; among equal ids the earlier store in the given order.
    best_id = max(c.backup_id for c in candidates)
    return next(c for c in candidates if c.backup_id == best_id)


def list_drills(store: ObjectStore, database: str) -> list[DrillRecord]:
    records: list[DrillRecord] = []
    for info in store.list(f"drills/{database}/"):
        if not info.key.endswith(".json"):
            continue
        try:
            records.append(DrillRecord.model_validate_json(read_bytes(store, info.key)))
        except (ObjectNotFound, ValueError) as exc:
            log.warning("store %s: skipping unreadable drill record %s: %s", store.name, info.key, exc)
    return records


def drill_history(stores: Iterable[ObjectStore], database: str) -> list[DrillRecord]:
    """Every drill of `database` recorded in any of `stores`, once each, oldest first."""
    by_id: dict[str, DrillRecord] = {}
    for store in stores:
        for record in list_drills(store, database):
            by_id.setdefault(record.drill_id, record)
    return sorted(by_id.values(), key=lambda r: r.drill_id)
