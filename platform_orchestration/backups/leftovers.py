"""Sweeping what killed writers and prunes leave in a store, once it is old enough to be dead.

A backup, copy, rewrap or drill killed mid-write (``kill -9``, an evicted pod, an outage that
stopped an abort) leaves an *incomplete upload*: a ``.partial-*`` file in a local store, an open
S3 multipart upload, uncommitted Azure blocks, a GCS resumable session. None of them is ever
listed, restored or counted, but they hold space (and, on S3, cost money) for ever. A prune
killed between its deletes leaves empty directories in a local store. The retention sweep
removes both, under every prefix the product writes for a database:

- only what has been idle for longer than the sweep's age (:data:`LEFTOVER_GRACE` by default):
  an upload's age is its *last activity* (newest part, block or byte), so an upload still in
  flight, however long it has been running, is never touched. The age must exceed the longest
  pause a live writer can make, which is far below a day;
- never a committed object, so never a manifest: the stores discard incomplete uploads only,
  each by its own identity (upload id, partial file, session);
- a dry run lists what would go and removes nothing.

GCS cannot list resumable sessions: only sessions this process opened are seen; the others
expire after a week and are not billed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from platform_orchestration.ownership import ReapReport
from platform_orchestration.storage import HasDirectories, IncompleteUpload, ObjectStore, StoreError

__all__ = ["LEFTOVER_GRACE", "CleanupReport", "LeftoverSweep", "prefixes_written_for", "sweep_leftovers"]

LEFTOVER_GRACE = timedelta(days=1)
"""How long an incomplete upload or an empty directory must have been idle before a sweep removes it."""


def prefixes_written_for(database: str) -> tuple[str, ...]:
    """Every prefix the product writes to for `database` (see backups/manifest.py): its backups,
    its drill records, its catalog index, and the fleet's evidence, which every database's prune
    sweeps too."""
    return (f"backups/{database}/", f"drills/{database}/", f"catalog/{database}.json", "evidence/")


@dataclass(frozen=True)
class LeftoverSweep:
    """What a sweep removed (or, in a dry run, would remove) from one store."""

    uploads: tuple[IncompleteUpload, ...] = ()
    directories: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()


def sweep_leftovers(store: ObjectStore, prefixes: Sequence[str], *, older_than: datetime,
                    dry_run: bool = False) -> LeftoverSweep:
    """Discard the incomplete uploads idle since before `older_than` under each of `prefixes`,
    then (filesystem stores) the empty directories unchanged since then. A store error is
    reported in ``failures`` and the sweep goes on with the next prefix."""
    uploads: list[IncompleteUpload] = []
    directories: list[str] = []
    failures: list[str] = []
    for prefix in prefixes:
        try:
            if dry_run:
                uploads += store.incomplete_uploads(prefix, older_than=older_than)
            else:
                uploads += store.discard_incomplete(prefix, older_than=older_than)
        except StoreError as exc:
            failures.append(f"sweeping incomplete uploads under {prefix} failed: {exc}")
        if not isinstance(store, HasDirectories):
            continue
        try:
            if dry_run:
                directories += store.empty_directories(prefix, older_than=older_than)
            else:
                directories += store.remove_empty_directories(prefix, older_than=older_than)
        except OSError as exc:
            failures.append(f"sweeping empty directories under {prefix} failed: {exc}")
    return LeftoverSweep(tuple(uploads), tuple(directories), tuple(failures))


@dataclass(frozen=True)
class CleanupReport:
    """What ``platform-dr cleanup`` removed (or, dry run, would remove): on this machine, the
    servers and directories of dead drills and restores; in each store, the leftovers of
    killed writes (every one whose writer is known dead, the others once idle long enough)."""

    machine: ReapReport
    stores: tuple[tuple[str, LeftoverSweep], ...]
    dry_run: bool = False

    @property
    def failures(self) -> tuple[str, ...]:
        return self.machine.failures + tuple(f"store {name}: {failure}" for name, sweep in self.stores
                                             for failure in sweep.failures)

    def lines(self) -> list[str]:
        removed = "would remove" if self.dry_run else "removed"
        lines = [f"this machine: {self.machine.summary()}"]
        lines += [f"this machine: {removed} {path}" for path in self.machine.paths_removed]
        for name, sweep in self.stores:
            size = sum(upload.size or 0 for upload in sweep.uploads)
            lines.append(f"store {name}: {removed} {len(sweep.uploads)} incomplete upload(s) "
                         f"({size} bytes), {len(sweep.directories)} empty directory(ies)")
            lines += [f"store {name}: {removed} incomplete upload {upload.key}"
                      + (" (its writer is gone)" if upload.writer_gone else "") for upload in sweep.uploads]
            lines += [f"store {name}: {removed} empty directory {key}" for key in sweep.directories]
        return lines
