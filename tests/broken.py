"""Test support: stored objects that cannot be read, as a bad disk, a bug or a hand leaves them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from platform_orchestration.backups.manifest import BackupManifest
from platform_orchestration.storage import LocalObjectStore

GARBAGE = b"\x00\xff\x13 not json at all {"


def garble(store: LocalObjectStore, key: str) -> None:
    """Write garbage bytes over a stored object (it is created when missing)."""
    path = store.path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)


def newest_manifest_garbled(take: Callable[[], BackupManifest],
                            stores: Sequence[LocalObjectStore]) -> tuple[BackupManifest, BackupManifest]:
    """Two real backups made by `take`, then garbage over the newer one's manifest in every
    one of `stores`; returns (older, newer)."""
    older, newer = take(), take()
    for store in stores:
        garble(store, newer.manifest_key)
    return older, newer
