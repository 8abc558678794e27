"""The catalog index: one small object per database per store that saves reading every
manifest and drill record, checked against the store's own listing every time it is used.

    catalog/<database>.json   {"format_version": 1, "database": ..., "objects": {
                                 "<manifest or drill record key>": {
                                     "size": ..., "modified_at": ..., "etag": ...,
                                     "document": {the manifest or record, as stored}}}}

The manifests and drill records stay the truth; the index is a cache of them:

- A reader (:func:`read_catalog`) LISTs ``backups/<db>/`` and ``drills/<db>/`` as before and
  GETs the index: one GET per database per store instead of one per manifest and record. An
  index entry is used only for a key the listing shows with the same size, modification
  time and etag (ETag, generation, inode and nanosecond mtime: what changes with every
  rewrite) as when the entry was made. Whatever the listing shows that the index lacks or
  describes differently is read from the store exactly as without an index, and named as
  unreadable when broken; whatever the index holds that the listing does not show (a pruned
  backup) is not there. So a stale, partial, missing or corrupt index costs GETs, never a
  wrong answer, and no index can make a backup look better than its manifest says: broken
  manifests are never entered, and an entry for an object rewritten since no longer matches.
- Every writer (backup commit, copy, prune, rewrap, drill) calls :func:`refresh_index` after
  its own manifest or record is in place: it reads the index with its version, lists, reads
  what the index lacks and writes the new index with a compare-and-swap (If-Match, or
  If-None-Match for a new one; storage.ConditionalWrites). A writer that lost the race reads
  again and retries, so concurrent writers do not lose each other's entries; against a store
  without enforced conditions (the GCS emulator) the last writer wins, which costs the next
  reader a GET per lost entry until the next write. A missing or corrupt index is rebuilt
  by that same refresh. A refresh that fails is logged and never fails the writer: the
  backup or drill it follows is already complete without it.
- Readers never write the index (a break-glass `status` changes nothing in the stores).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from platform_orchestration.backups.catalog import (
    BackupListing,
    DrillListing,
    read_backups,
    read_drills,
    store_unreachable,
)
from platform_orchestration.backups.manifest import backups_prefix, drills_prefix, is_manifest_key
from platform_orchestration.errors import PlatformError
from platform_orchestration.storage import (
    ConditionalWrites,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    read_bytes,
    write_bytes,
)

log = logging.getLogger(__name__)

INDEX_PREFIX = "catalog/"
INDEX_FORMAT = 1
# Compare-and-swap attempts before a refresh gives up (each one re-reads and re-lists).
REFRESH_ATTEMPTS = 8


def index_key(database: str) -> str:
    return f"{INDEX_PREFIX}{database}.json"


@dataclass(frozen=True)
class CatalogView:
    """What one store holds of one database (backups and drill records, each as
    :func:`read_backups` / :func:`read_drills` would report them), and how the index served:
    `index` is ``current``, ``missing`` or ``unreadable: <why>``; `read_directly` counts the
    manifests and records read from the store because the index lacked them or was stale."""

    backups: BackupListing
    drills: DrillListing
    index: str
    read_directly: int

    @property
    def listed(self) -> int:
        return len(self.backups.backups) + len(self.backups.unreadable) + len(self.drills.records) + \
            len(self.drills.unreadable)


def _parse_index(data: bytes, database: str) -> dict[str, dict[str, Any]]:
    """The index's entries by key; ValueError (with why) when it is not an index of `database`."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format_version") != INDEX_FORMAT:
        raise ValueError(f"not a format {INDEX_FORMAT} catalog index")
    if document.get("database") != database:
        raise ValueError(f"describes database {document.get('database')!r}")
    objects = document.get("objects")
    if not isinstance(objects, dict):
        raise ValueError("no objects")
    return {key: entry for key, entry in objects.items() if isinstance(entry, dict)}


def _load(store: ObjectStore, database: str, *, versioned: bool) -> tuple[str | None, dict[str, dict[str, Any]], str]:
    """(version, entries, state) of the stored index; a missing or corrupt one has no entries
    (and a corrupt one keeps its version, so the next refresh replaces exactly it)."""
    key = index_key(database)
    version: str | None = None
    try:
        if versioned:
            data, version = store.read_versioned(key)  # type: ignore[attr-defined]
        else:
            data = read_bytes(store, key)
    except ObjectNotFound:
        return None, {}, "missing"
    except StoreError as exc:
        if versioned:
            raise  # a writer cannot compare-and-swap what it could not read
        # A reader goes on without it: the manifests answer, as they would with no index.
        log.warning("store %s: catalog index %s could not be read (%s): reading every manifest instead",
                    store.name, key, exc)
        return None, {}, f"unreadable: {exc}"
    try:
        return version, _parse_index(data, database), "current"
    except ValueError as exc:
        log.warning("store %s: catalog index %s is unreadable (%s): reading every manifest instead",
                    store.name, key, exc)
        return version, {}, f"unreadable: {exc}"


def _matches(entry: Mapping[str, Any], info: ObjectInfo) -> bool:
    return (entry.get("size") == info.size and entry.get("etag") == info.etag
            and entry.get("modified_at") == info.modified_at.isoformat())


def _known(entries: Mapping[str, Mapping[str, Any]], listed: Iterable[ObjectInfo]) -> dict[str, Mapping[str, Any]]:
    return {info.key: entry["document"] for info in listed
            if (entry := entries.get(info.key)) is not None and _matches(entry, info)
            and isinstance(entry.get("document"), dict)}


def indexed_documents(store: ObjectStore, database: str, listed: Iterable[ObjectInfo]) -> dict[str, Mapping[str, Any]]:
    """The index's manifests and records for the `listed` objects whose listing they match
    (one GET; none when the index is missing or corrupt): `known` for read_backups/read_drills."""
    _version, entries, _state = _load(store, database, versioned=False)
    return _known(entries, listed)


def _view(store: ObjectStore, database: str, entries: Mapping[str, Mapping[str, Any]], state: str
          ) -> tuple[CatalogView, list[ObjectInfo]]:
    """List both prefixes, use the entries that match, read the rest: the view and the listing."""
    backups_listed = [info for info in store.list(backups_prefix(database)) if is_manifest_key(info.key)]
    drills_listed = [info for info in store.list(drills_prefix(database)) if info.key.endswith(".json")]
    listed = backups_listed + drills_listed
    known = _known(entries, listed)
    backups = read_backups(store, database, listed=backups_listed, known=known)
    drills = read_drills(store, database, listed=drills_listed, known=known)
    used = sum(1 for b in backups.backups if b.manifest.manifest_key in known) + \
        sum(1 for r in drills.records if r.key in known)
    if state == "current" and used < len(listed):
        state = "stale"
    view = CatalogView(backups, drills, state, read_directly=len(listed) - used)
    return view, listed


def read_catalog(store: ObjectStore, database: str) -> CatalogView:
    """The backups and drill records of `database` in `store`, through the index where its
    entries match the listing (2 LIST + 1 GET when it is current), read from the store where
    not. Raises StoreError when the store cannot be listed, as read_backups does."""
    _version, entries, state = _load(store, database, versioned=False)
    view, _listed = _view(store, database, entries, state)
    return view


def read_catalog_or_report(store: ObjectStore, database: str) -> CatalogView:
    """:func:`read_catalog`, but a store that cannot be listed (its cloud is down, the
    credentials refused) is one unreadable entry for the database's prefix (``unreachable``)
    instead of an exception: with one cloud down, the others still answer, and whoever judges
    the database must still see them (as :func:`read_backups_or_report` for listings)."""
    try:
        return read_catalog(store, database)
    except StoreError as exc:
        return CatalogView(backups=BackupListing(unreadable=(store_unreachable(store, database, exc),)),
                           drills=DrillListing(), index="unreachable", read_directly=0)


def _document(database: str, view: CatalogView, listed: list[ObjectInfo]) -> bytes:
    by_key: dict[str, Any] = {b.manifest.manifest_key: b.manifest for b in view.backups.backups}
    by_key.update({r.key: r for r in view.drills.records})
    objects = {info.key: {"size": info.size, "modified_at": info.modified_at.isoformat(), "etag": info.etag,
                          "document": json.loads(by_key[info.key].to_json())}
               for info in listed if info.key in by_key}
    return json.dumps({"format_version": INDEX_FORMAT, "database": database, "objects": objects},
                      separators=(",", ":")).encode()


def refresh_index(store: ObjectStore, database: str) -> CatalogView:
    """Bring the index of `database` in `store` up to date with the listing, with a
    compare-and-swap where the store has one (retried when another writer got there first);
    returns the view it was built from. Raises StoreError when it cannot."""
    conditional = isinstance(store, ConditionalWrites)
    for _attempt in range(REFRESH_ATTEMPTS):
        version, entries, state = _load(store, database, versioned=conditional)
        view, listed = _view(store, database, entries, state)
        data = _document(database, view, listed)
        try:
            if conditional:
                store.write_if(index_key(database), data, version)  # type: ignore[attr-defined]
            else:
                write_bytes(store, index_key(database), data)
        except PreconditionFailed:
            continue  # another writer updated it meanwhile: read theirs and merge again
        return view
    raise StoreError(f"store {store.name}: the catalog index of {database} changed under every one of "
                     f"{REFRESH_ATTEMPTS} attempts to update it")


def refresh_index_quietly(store: ObjectStore, database: str) -> None:
    """:func:`refresh_index` for writers: a failure is logged, never raised (the manifest or
    record the writer just wrote is complete without the index; readers fall back to it)."""
    try:
        refresh_index(store, database)
    except PlatformError as exc:
        log.warning("store %s: the catalog index of %s was not updated (readers read the manifests "
                    "instead until the next write): %s", store.name, database, exc)
