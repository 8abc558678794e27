"""Rewrapping backups' data keys after a key rotation: every manifest moves to the newest
key version; the dumps, and the data keys themselves, stay as they are."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Literal

from platform_orchestration.backups.index import refresh_index_quietly
from platform_orchestration.backups.manifest import BackupManifest, ManifestError
from platform_orchestration.crypto import DataKeyProvider, KeyServiceError
from platform_orchestration.errors import PlatformError
from platform_orchestration.storage import (
    ObjectNotFound,
    ObjectStore,
    StoreError,
    read_bytes,
    write_bytes,
)


class RewrapFailed(PlatformError):
    """A manifest could not be moved to the newest key version; it was left as it was
    (or removed, if its backup was pruned meanwhile). The message names backup and store."""


def _where(store: ObjectStore, manifest: BackupManifest) -> str:
    return f"backup {manifest.backup_id} of {manifest.database} in store {store.name}"


def _stored_manifest(store: ObjectStore, manifest: BackupManifest, what: str) -> BackupManifest:
    try:
        return BackupManifest.from_json(read_bytes(store, manifest.manifest_key), what)
    except ObjectNotFound:
        raise RewrapFailed(f"{what} failed: the backup is gone from the store (pruned?)") from None


def rewrap_backup(store: ObjectStore, manifest: BackupManifest, keys: DataKeyProvider) -> BackupManifest:
    """Wrap the data key of `manifest`'s backup under the newest version of its key and
    rewrite that backup's manifest in `store` (one atomic object write); the dump is
    neither read nor written, since the data key itself stays the same. The manifest as
    stored in `store` is the one rewrapped (its `copy` section kept); `manifest` only names
    the backup. Returns the manifest as stored afterwards; if its key is already at the
    newest version, nothing is written.

    The new wrapping must unwrap to the same data key before anything is written, and the
    stored manifest must not have changed since it was read; a backup whose dump vanished
    meanwhile (pruned) gets no manifest back. Raises ValueError for an unencrypted backup,
    RewrapFailed (naming backup, store and cause) for anything else."""
    if manifest.encryption is None:
        raise ValueError(f"{_where(store, manifest)} is not encrypted: there is no key to rewrap")
    what = f"rewrap of {_where(store, manifest)}"
    try:
        current = _stored_manifest(store, manifest, what)
        info = current.encryption
        if info is None:
            raise ValueError(f"{_where(store, manifest)} is not encrypted: there is no key to rewrap")
        try:
            wrapped, version = keys.rewrap(info.wrapped_key)
            if version == info.key_version:
                return current
            # A rewrap that lost the data key would make the backup unreadable for good.
            if not hmac.compare_digest(keys.unwrap(wrapped), keys.unwrap(info.wrapped_key)):
                raise RewrapFailed(f"{what} failed: {keys.describe()} returned a rewrapped key that "
                                   "does not unwrap to the same data key; the manifest was left unchanged")
        except KeyServiceError as exc:
            raise RewrapFailed(f"{what} failed: key service {keys.describe()}: {exc}") from None
        updated = current.model_copy(update={"encryption": info.model_copy(
            update={"wrapped_key": wrapped, "key_version": version, "key_service": keys.describe()})})
        if _stored_manifest(store, manifest, what) != current:
            raise RewrapFailed(f"{what} failed: the stored manifest changed while its key was being "
                               "rewrapped (another rewrap?); it was left as it is")
        write_bytes(store, manifest.manifest_key, updated.to_json())
        if not any(o.key == manifest.dump_key for o in store.list(manifest.dump_key)):
            # Pruned between our read and our write: never leave a manifest without its dump.
            store.delete(manifest.manifest_key)
            raise RewrapFailed(f"{what} failed: the dump disappeared meanwhile (pruned?); the "
                               "manifest was removed with it")
        refresh_index_quietly(store, manifest.database)
    except ManifestError as exc:
        raise RewrapFailed(f"{what} failed: {exc}") from None
    except StoreError as exc:
        raise RewrapFailed(f"{what} failed: {exc}") from None
    return updated


RewrapOutcome = Literal["rewrapped", "current", "unencrypted", "failed"]


@dataclass(frozen=True)
class RewrapEntry:
    """What a rewrap did to one backup's manifest in one store."""

    database: str | None
    backup_id: str | None
    store: str
    outcome: RewrapOutcome
    from_version: int | None = None
    to_version: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class RewrapReport:
    """Every backup copy a rewrap looked at, one entry per manifest per store (a store
    that could not be listed gives one failed entry without a backup)."""

    key_service: str
    entries: tuple[RewrapEntry, ...] = field(default_factory=tuple)

    def with_outcome(self, outcome: RewrapOutcome) -> list[RewrapEntry]:
        return [e for e in self.entries if e.outcome == outcome]

    @property
    def ok(self) -> bool:
        return not self.with_outcome("failed")

    def summary(self) -> str:
        counts = {o: len(self.with_outcome(o)) for o in ("rewrapped", "current", "unencrypted", "failed")}
        return (f"rewrap under {self.key_service}: {counts['rewrapped']} rewrapped, {counts['current']} "
                f"already current, {counts['unencrypted']} not encrypted, {counts['failed']} failed")
