"""Copying a verified backup into another store, and repairing missing copies.

The copy streams from source to target (no local file), or is made by the provider
itself when both stores live in one (server-side copy); it is checked against the
manifest's SHA-256 and read back once written; only then does the target get its
manifest. A target that already holds the backup is left alone. The globals object, when
the backup has one, is copied and checked the same way. An encrypted backup is
copied as the ciphertext it is, its manifest carrying the same wrapped data key: copies
need no key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from platform_orchestration.backups.catalog import (
    StoredBackup,
    choose_backup,
    read_backups_or_report,
)
from platform_orchestration.backups.integrity import (
    BackupCorrupt,
    checked_globals_chunks,
    checked_stored_chunks,
    stored_checksum_matches,
)
from platform_orchestration.backups.index import refresh_index_quietly
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.errors import PlatformError
from platform_orchestration.storage import (
    ObjectNotFound,
    ObjectStore,
    StoreError,
    write_bytes,
)


class CopyFailed(PlatformError):
    pass


def copy_backup(source: StoredBackup, target: ObjectStore, *,
                progress: ProgressListener = no_progress,
                clock: Clock = utc_now) -> StoredBackup:
    """Copy `source` into `target` and give it its manifest there, verified at `clock()`."""
    manifest = source.manifest
    copied = manifest.in_store(target.name, clock(), copied_from=source.store.name)
    what = f"copy of backup {manifest.backup_id} of {manifest.database} from {source.store.name} to {target.name}"
    try:
        # Inside one provider the bytes need not pass through us; either way the target's
        # copy is read back and checked against the manifest before it gets a manifest.
        if not target.server_side_copy(source.store, manifest.dump_key):
            with target.open_writer(manifest.dump_key) as writer:
                for chunk in checked_stored_chunks(source.store, manifest, progress, "copy"):
                    writer.write(chunk)
                writer.commit()
        if manifest.globals is not None and not target.server_side_copy(source.store, manifest.globals_key):
            with target.open_writer(manifest.globals_key) as writer:
                for chunk in checked_globals_chunks(source.store, manifest, progress, "copy"):
                    writer.write(chunk)
                writer.commit()
        stored_checksum_matches(target, manifest)  # the dump, and the globals when present
        write_bytes(target, manifest.manifest_key, copied.to_json())
    except (BackupCorrupt, StoreError, ObjectNotFound) as exc:
        raise CopyFailed(f"{what} failed: {exc}") from exc
    refresh_index_quietly(target, manifest.database)
    return StoredBackup(target, copied)


@dataclass(frozen=True)
class CopyReport:
    backup_id: str
    already_present: tuple[str, ...]
    copied: tuple[str, ...]
    failed: dict[str, str]


def ensure_copies(database: str, stores: Sequence[ObjectStore], *,
                  progress: ProgressListener = no_progress, clock: Clock = utc_now) -> CopyReport:
    """Make sure the latest backup of `database` has a verified copy in every store,
    copying it from a store that holds it where it is missing (a store whose manifest of it
    cannot be read counts as missing it, and gets a fresh copy). Each store is listed once:
    the listing that finds the latest backup also says who holds it; a store that cannot be
    listed is reported as failed, the others still get their copies."""
    listings = [(store, read_backups_or_report(store, database)) for store in stores]
    latest = choose_backup(listings, database).stored
    present: list[str] = []
    missing: list[ObjectStore] = []
    sources: list[StoredBackup] = []
    failed: dict[str, str] = {}
    for store, listing in listings:
        held = [b for b in listing.backups if b.backup_id == latest.backup_id]
        if held:
            present.append(store.name)
            sources.append(held[0])
        elif down := [u for u in listing.unreadable if u.unreachable]:
            failed[store.name] = down[0].reason
        else:
            missing.append(store)
    copied: list[str] = []
    for target in missing:
        errors = []
        for source in sources:  # a corrupt source copy is skipped for the next one
            try:
                copy_backup(source, target, progress=progress, clock=clock)
                copied.append(target.name)
                break
            except CopyFailed as exc:
                errors.append(str(exc))
        else:
            failed[target.name] = "; ".join(errors) or "no source copy"
    return CopyReport(latest.backup_id, tuple(present), tuple(copied), failed)
