"""Copies of a cluster's physical repository in the policy's other object stores.

The repository is copied object by object, in barman-cloud's own layout and under the same
``<path>/<server_name>/`` keys, so each copy is itself a barman-cloud repository (barman-cloud-restore,
barman-cloud-wal-restore and a CloudNativePG ``barmanObjectStore`` read it as they read the
repository). Everything goes through our :class:`~platform_orchestration.storage.ObjectStore`
API, so a copy can live in any cloud whatever the repository's.

- **Incremental.** WAL segments and finished base backups are immutable: each run lists both
  sides and copies only what the copy does not hold (or holds with another size: a broken
  object, copied again).
- **Only finished base backups.** A backup whose ``backup.info`` does not say ``status=DONE`` is
  not copied (barman is still writing it, or it failed); its ``backup.info`` is copied last, after
  every other object of the backup, so a copy cut short never lists a backup as complete.
- **Verified.** Each object's SHA-256 is computed while it streams through us and compared with
  the SHA-256 of what the destination gives back; a mismatch deletes the object and fails. The
  checksums are kept in the copy's state (``physical-copies/<cluster>.json`` in the destination
  store, outside the repository), so :func:`verify_copy` can later re-read a copy and find an
  object that changed since (bit rot, a bad hand): that object is reported and copied again.
- **Bounded memory**: one object streams at a time per worker, in the store's chunks.

:func:`copy_lag` measures how far a copy is behind: segments and base backups the repository
holds and the copy does not, and for how long (the age of the oldest of them, by the
repository store's clock).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.physical.archiving import Segment
from platform_orchestration.physical.repository import Repository
from platform_orchestration.storage import ObjectInfo, ObjectNotFound, ObjectStore, StoreError

COPY_STATE_PREFIX = "physical-copies/"
COPY_WORKERS = 4
BACKUP_INFO = "backup.info"


class PhysicalCopyFailed(PlatformError):
    """Objects of a physical repository could not be copied (or verified) into another store."""


def copy_state_key(cluster: str) -> str:
    return f"{COPY_STATE_PREFIX}{cluster}.json"


def backup_status(info_text: str) -> str | None:
    """The ``status`` a barman ``backup.info`` records.

    >>> backup_status("backup_id=20261201T220000\\nstatus=DONE\\n")
    'DONE'
    """
    for line in info_text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "status":
            return value.strip()
    return None


@dataclass(frozen=True)
class _Listing:
    """A repository's objects in one store, split the way a copy needs them."""

    objects: dict[str, ObjectInfo]
    wals: dict[str, ObjectInfo]
    backups: dict[str, dict[str, ObjectInfo]]  # backup id -> its objects

    @staticmethod
    def of(store: ObjectStore, repository: Repository) -> _Listing:
        objects = {info.key: info for info in store.list(repository.key_prefix)}
        wals = {key: info for key, info in objects.items() if key.startswith(repository.wals_prefix)}
        backups: dict[str, dict[str, ObjectInfo]] = {}
        for key, info in objects.items():
            if key.startswith(repository.base_prefix):
                backup_id = key[len(repository.base_prefix):].split("/", 1)[0]
                backups.setdefault(backup_id, {})[key] = info
        return _Listing(objects, wals, backups)

    def complete_backups(self, repository: Repository) -> list[str]:
        """Backups whose backup.info is here (in a copy: copied last, so all of it is here)."""
        return sorted(b for b, keys in self.backups.items() if f"{repository.base_prefix}{b}/{BACKUP_INFO}" in keys)


def _done_backups(store: ObjectStore, repository: Repository, listing: _Listing,
                  among: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(DONE backups, the others) of the repository, by reading their backup.info."""
    done, unfinished = [], []
    for backup_id in sorted(among if among is not None else listing.backups):
        info_key = f"{repository.base_prefix}{backup_id}/{BACKUP_INFO}"
        status = None
        if info_key in listing.backups.get(backup_id, {}):
            try:
                status = backup_status(b"".join(store.read(info_key)).decode(errors="replace"))
            except ObjectNotFound:
                status = None  # deleted meanwhile (retention)
        (done if status == "DONE" else unfinished).append(backup_id)
    return done, unfinished


@dataclass(frozen=True)
class CopyState:
    """What a copy holds, as we copied it: ``{key: (size, sha256)}``."""

    cluster: str
    source_store: str
    objects: Mapping[str, tuple[int, str]]
    updated_at: datetime | None = None

    def to_json(self) -> bytes:
        return json.dumps({"format_version": 1, "cluster": self.cluster, "source_store": self.source_store,
                           "updated_at": self.updated_at.isoformat() if self.updated_at else None,
                           "objects": {k: list(v) for k, v in sorted(self.objects.items())}},
                          indent=1).encode()

    @staticmethod
    def read(store: ObjectStore, cluster: str) -> CopyState | None:
        try:
            document = json.loads(b"".join(store.read(copy_state_key(cluster))))
        except ObjectNotFound:
            return None
        except ValueError as exc:
            raise PhysicalCopyFailed(f"the copy state {copy_state_key(cluster)} in store {store.name} is not "
                                     f"readable JSON ({one_line(exc)})") from None
        return CopyState(cluster=document["cluster"], source_store=document["source_store"],
                         objects={k: (int(v[0]), str(v[1])) for k, v in document["objects"].items()},
                         updated_at=datetime.fromisoformat(document["updated_at"]) if document.get("updated_at")
                         else None)

    def write(self, store: ObjectStore) -> None:
        with store.open_writer(copy_state_key(self.cluster)) as writer:
            writer.write(self.to_json())
            writer.commit()


@dataclass(frozen=True)
class CopyLag:
    """How far the copy of a repository in ``store`` is behind the repository at ``measured_at``."""

    store: str
    measured_at: datetime
    segments_behind: int
    backups_behind: int
    objects_behind: int
    lag_seconds: float
    newest_wal_repository: str | None
    newest_wal_copy: str | None
    newest_backup_repository: str | None
    newest_backup_copy: str | None

    def problems(self, max_lag: timedelta) -> list[str]:
        if self.lag_seconds <= max_lag.total_seconds():
            return []
        return [f"copy in {self.store} is {self.lag_seconds:.0f}s behind the repository (allowed "
                f"{max_lag.total_seconds():.0f}s): {self.segments_behind} WAL segment(s) and {self.backups_behind} "
                f"base backup(s) not copied, newest WAL {self.newest_wal_copy or 'none'} vs "
                f"{self.newest_wal_repository or 'none'}"]


@dataclass(frozen=True)
class CopyOutcome:
    """One copy run into one store: what was copied, what was already there, what was left out."""

    cluster: str
    source_store: str
    destination_store: str
    copied: tuple[str, ...]
    copied_bytes: int
    already_present: int
    skipped_unfinished: tuple[str, ...]
    recopied_broken: tuple[str, ...]
    seconds: float
    lag: CopyLag
    failures: tuple[str, ...] = field(default_factory=tuple)
    corrupted: tuple[str, ...] = field(default_factory=tuple)


def _newest_segment(wals: Iterable[str], repository: Repository) -> str | None:
    names = [key.rsplit("/", 1)[-1] for key in wals]
    segments = sorted(s for s in (Segment.parse(n) for n in names) if s is not None)
    return segments[-1].name() if segments else None


def _copy_object(source: ObjectStore, destination: ObjectStore, key: str, expected_size: int) -> tuple[int, str]:
    """Stream ``key`` from source to destination; the SHA-256 of what was read must be the one
    of what the destination gives back. Returns (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    with destination.open_writer(key) as writer:
        for chunk in source.read(key):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        if size != expected_size:
            writer.abort()
            raise PhysicalCopyFailed(f"{key}: read {size} bytes from {source.name}, its listing said {expected_size}")
        writer.commit()
    back = hashlib.sha256()
    for chunk in destination.read(key):
        back.update(chunk)
    if back.hexdigest() != digest.hexdigest():
        destination.delete(key)
        raise PhysicalCopyFailed(f"{key}: SHA-256 of the copy in {destination.name} ({back.hexdigest()[:16]}...) "
                                 f"is not the one read from {source.name} ({digest.hexdigest()[:16]}...); removed")
    return size, digest.hexdigest()


def _lag(source_listing: _Listing, copy_listing_keys: set[str], done: Sequence[str], repository: Repository,
         destination: str, now: datetime) -> CopyLag:
    missing: list[ObjectInfo] = [info for key, info in source_listing.wals.items() if key not in copy_listing_keys]
    missing_segments = [info for info in missing if Segment.parse(info.key.rsplit("/", 1)[-1]) is not None]
    backups_behind = 0
    for backup_id in done:
        absent = [info for info in source_listing.backups[backup_id].values() if info.key not in copy_listing_keys]
        if absent:
            backups_behind += 1
            missing += absent
    oldest = min((info.modified_at for info in missing), default=None)
    copy_wals = [k for k in copy_listing_keys if k.startswith(repository.wals_prefix)]
    copy_backups = sorted(b for b in done if f"{repository.base_prefix}{b}/{BACKUP_INFO}" in copy_listing_keys)
    return CopyLag(
        store=destination, measured_at=now, segments_behind=len(missing_segments), backups_behind=backups_behind,
        objects_behind=len(missing), lag_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        newest_wal_repository=_newest_segment(source_listing.wals, repository),
        newest_wal_copy=_newest_segment(copy_wals, repository),
        newest_backup_repository=done[-1] if done else None,
        newest_backup_copy=copy_backups[-1] if copy_backups else None)


def copy_lag(source: ObjectStore, destination: ObjectStore, repository: Repository, *,
             clock: Clock = utc_now) -> CopyLag:
    """How far the copy in ``destination`` is behind ``repository`` (in ``source``), now."""
    source_listing = _Listing.of(source, repository)
    copy_keys = {info.key for info in destination.list(repository.key_prefix)}
    done, _ = _done_backups(source, repository, source_listing)
    return _lag(source_listing, copy_keys, done, repository, destination.name, clock())


def copy_repository(source: ObjectStore, destination: ObjectStore, repository: Repository, *,
                    clock: Clock = utc_now, workers: int = COPY_WORKERS, verify: bool = False,
                    progress: Callable[[str], None] | None = None) -> CopyOutcome:
    """Bring the copy of ``repository`` (in ``source``) in ``destination`` up to date; see the
    module docstring. With ``verify``, first re-read the whole copy against its recorded
    checksums (:func:`verify_copy`) and copy again what changed. Raises PhysicalCopyFailed,
    after recording what was copied, if any object failed (the backups it belongs to keep no
    backup.info in the copy)."""
    if destination.name == source.name:
        raise PhysicalCopyFailed(f"cluster {repository.cluster}: store {source.name} holds the repository itself")
    started = time.monotonic()
    corrupted: tuple[str, ...] = ()
    try:
        if verify:
            corrupted = verify_copy(destination, repository, workers=workers).corrupted
            for problem in corrupted:
                destination.delete(problem.split(": ", 1)[0])
        source_listing = _Listing.of(source, repository)
        copy_listing = _Listing.of(destination, repository)
        state = CopyState.read(destination, repository.cluster)
    except StoreError as exc:
        raise PhysicalCopyFailed(f"copying the physical repository of cluster {repository.cluster} to "
                                 f"{destination.name}: {one_line(exc)}") from exc
    done, unfinished = _done_backups(source, repository, source_listing)
    known = dict(state.objects) if state else {}
    # Entries of objects gone from the copy (retention) are dropped.
    known = {k: v for k, v in known.items() if k in copy_listing.objects}

    def wanted(info: ObjectInfo) -> bool:
        held = copy_listing.objects.get(info.key)
        return held is None or held.size != info.size

    broken = [key for key, info in source_listing.objects.items()
              if key in copy_listing.objects and copy_listing.objects[key].size != info.size]
    wal_jobs = [info for info in source_listing.wals.values() if wanted(info)]
    backup_jobs: list[tuple[str, list[ObjectInfo], ObjectInfo | None]] = []
    for backup_id in done:
        objects = source_listing.backups[backup_id]
        info_key = f"{repository.base_prefix}{backup_id}/{BACKUP_INFO}"
        data = [info for key, info in objects.items() if key != info_key and wanted(info)]
        label = objects[info_key] if wanted(objects[info_key]) else None
        if data or label is not None:
            backup_jobs.append((backup_id, data, label))
    copied: list[str] = []
    failures: list[str] = []
    copied_bytes = 0

    def run(info: ObjectInfo) -> tuple[ObjectInfo, tuple[int, str] | str]:
        try:
            return info, _copy_object(source, destination, info.key, info.size)
        except (PlatformError, OSError) as exc:
            return info, one_line(exc)

    def collect(results: Iterable[tuple[ObjectInfo, tuple[int, str] | str]]) -> bool:
        nonlocal copied_bytes
        ok = True
        for info, result in results:
            if isinstance(result, str):
                failures.append(f"{info.key}: {result}")
                ok = False
            else:
                known[info.key] = result
                copied.append(info.key)
                copied_bytes += result[0]
                if progress:
                    progress(info.key)
        return ok

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="physical-copy") as pool:
        collect(pool.map(run, sorted(wal_jobs, key=lambda i: i.key)))
        for backup_id, data, label in backup_jobs:
            if collect(pool.map(run, data)) and label is not None:
                collect([run(label)])
            elif label is not None:
                failures.append(f"base backup {backup_id}: backup.info not copied, the backup is incomplete in "
                                f"{destination.name}")
    copy_keys = set(copy_listing.objects) | set(copied)
    present = sum(1 for info in source_listing.objects.values() if not wanted(info))
    now = clock()
    try:
        CopyState(repository.cluster, source.name, known, now).write(destination)
    except StoreError as exc:
        failures.append(f"{copy_state_key(repository.cluster)}: {one_line(exc)}")
    outcome = CopyOutcome(
        cluster=repository.cluster, source_store=source.name, destination_store=destination.name,
        copied=tuple(copied), copied_bytes=copied_bytes, already_present=present,
        skipped_unfinished=tuple(unfinished), recopied_broken=tuple(k for k in broken if k in copied),
        seconds=time.monotonic() - started,
        lag=_lag(source_listing, copy_keys, done, repository, destination.name, now), failures=tuple(failures),
        corrupted=corrupted)
    if failures:
        shown = "; ".join(failures[:3]) + (f" and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise PhysicalCopyFailed(f"copying the physical repository of cluster {repository.cluster} to "
                                 f"{destination.name}: {len(failures)} object(s) failed ({len(copied)} copied): "
                                 f"{shown}")
    return outcome


@dataclass(frozen=True)
class CopyVerification:
    """A copy re-read against the checksums recorded when its objects were copied."""

    store: str
    verified: int
    corrupted: tuple[str, ...]
    unrecorded: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.corrupted


def verify_copy(destination: ObjectStore, repository: Repository, *, workers: int = COPY_WORKERS) -> CopyVerification:
    """Read every object of the copy in ``destination`` back and compare its size and SHA-256 with
    what was recorded when it was copied. ``corrupted`` lists what differs (or is recorded and
    gone); ``unrecorded`` what the copy holds that no copy run wrote (not ours to judge)."""
    state = CopyState.read(destination, repository.cluster)
    recorded = dict(state.objects) if state else {}
    present = {info.key: info for info in destination.list(repository.key_prefix)}

    def check(key: str) -> str | None:
        size, sha = recorded[key]
        info = present.get(key)
        if info is None:
            return f"{key}: recorded but missing"
        digest, read = hashlib.sha256(), 0
        try:
            for chunk in destination.read(key):
                digest.update(chunk)
                read += len(chunk)
        except ObjectNotFound:
            return f"{key}: recorded but missing"
        if read != size or digest.hexdigest() != sha:
            return f"{key}: {read} bytes, SHA-256 {digest.hexdigest()[:16]}..., recorded {size} bytes {sha[:16]}..."
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="physical-verify") as pool:
        problems = [p for p in pool.map(check, sorted(recorded)) if p is not None]
    return CopyVerification(store=destination.name, verified=len(recorded) - len(problems),
                            corrupted=tuple(problems),
                            unrecorded=tuple(sorted(k for k in present if k not in recorded)))
