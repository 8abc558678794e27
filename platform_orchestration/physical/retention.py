"""Retention of base backups and WAL per the policy's recovery window, in every store that holds
the repository or a copy of it.

The decision is barman's own rule for ``RECOVERY WINDOW OF N DAYS`` (``pitr_window`` rounded up
to whole days, so never less than the policy asks): going from the newest complete base backup
back, every one is kept until the first that ended before the window began, which is kept too
(a restore to the window's first instant starts from it); older ones are deleted, and with them
the WAL before the oldest kept backup's first segment. Backups not DONE are left alone. Two
things are never deleted whatever their age: the newest kept base backup (and the WAL it needs,
which barman keeps), and in each store the base backup that the latest passed PITR drill restored
from that store (the last copy proven to restore).

The repository is pruned by ``barman-cloud-backup-delete --retention-policy "RECOVERY WINDOW OF N
DAYS"`` when barman's own dry run deletes exactly what the plan does, else backup by backup
(``-b``, oldest first: a drill-verified backup the window would drop, or a clock between the
two at the window's edge). Copies apply the same rule to the backups they hold, backup by backup,
with barman-cloud-backup-delete against the copy (it is a barman-cloud repository), which also
removes the WAL no remaining backup needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from platform_orchestration.errors import PlatformError
from platform_orchestration.physical.archiving import Segment
from platform_orchestration.physical.base_backup import BaseBackup, run_tool
from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.storage import ObjectStore

DELETE_TIMEOUT_SECONDS = 3600
_DRY_RUN_BACKUP = re.compile(r"base/([0-9]{8}T[0-9]{6})/backup\.info")


class PhysicalRetentionFailed(PlatformError):
    """Base backups or WAL could not be pruned from a physical repository or copy."""


def recovery_window_days(window: timedelta) -> int:
    """``window`` in whole days, rounded up: barman's recovery window is in days.

    >>> recovery_window_days(timedelta(days=7)), recovery_window_days(timedelta(hours=36))
    (7, 2)
    """
    return max(1, math.ceil(window / timedelta(days=1)))


def retention_policy_text(window: timedelta) -> str:
    return f"RECOVERY WINDOW OF {recovery_window_days(window)} DAYS"


@dataclass(frozen=True)
class RetentionPlan:
    """What the recovery window keeps and deletes in one store."""

    store: str
    window_start: datetime
    keep: tuple[str, ...]
    delete: tuple[str, ...]
    protected: str | None = None
    kept_for_drill: bool = False
    unfinished: tuple[str, ...] = ()
    wal_to_delete: tuple[str, ...] = ()
    deleted: bool = False
    method: str = "dry run"
    notes: tuple[str, ...] = field(default_factory=tuple)


def plan_retention(backups: Sequence[BaseBackup], *, window: timedelta, now: datetime, store: str,
                   protected: str | None = None) -> RetentionPlan:
    """Barman's recovery-window rule over ``backups`` (see the module docstring), never deleting
    ``protected`` (the backup the latest passed drill restored from this store)."""
    start = now - timedelta(days=recovery_window_days(window))
    done = sorted((b for b in backups if b.done), key=lambda b: b.backup_id, reverse=True)
    keep, delete = [], []
    found = False
    for backup in done:
        if found:
            delete.append(backup.backup_id)
            continue
        keep.append(backup.backup_id)
        if backup.end_time < start:
            found = True
    kept_for_drill = protected in delete
    if kept_for_drill:
        delete.remove(protected)  # type: ignore[arg-type]
        keep.append(protected)  # type: ignore[arg-type]
    return RetentionPlan(store=store, window_start=start, keep=tuple(sorted(keep)), delete=tuple(sorted(delete)),
                         protected=protected, kept_for_drill=kept_for_drill,
                         unfinished=tuple(sorted(b.backup_id for b in backups if not b.done)))


def wal_before(store: ObjectStore, repository: Repository, plan: RetentionPlan,
               backups: Sequence[BaseBackup]) -> tuple[str, ...]:
    """The WAL segments the plan's deletions leave no backup for: before the oldest kept backup's
    first segment, on its timeline (what barman removes with the oldest backup)."""
    kept = [b for b in backups if b.backup_id in plan.keep]
    if not plan.delete or not kept:
        return ()
    oldest = min(kept, key=lambda b: b.backup_id)
    first = Segment.parse(oldest.begin_wal, oldest.segment_bytes)
    if first is None:
        return ()
    names = []
    for info in store.list(repository.wals_prefix):
        name = info.key.rsplit("/", 1)[-1]
        segment = Segment.parse(name[:24], oldest.segment_bytes) if len(name) >= 24 else None
        if segment is not None and segment.timeline == first.timeline and segment < first:
            names.append(name)
    return tuple(sorted(names))


def _delete_one(tools: BarmanTools, repository: Repository, backup_id: str) -> None:
    run_tool(tools, repository, "backup-delete", ["-b", backup_id, repository.url, repository.server_name],
             what=f"deleting base backup {backup_id} of cluster {repository.cluster} from {repository.describe()}",
             timeout=DELETE_TIMEOUT_SECONDS)


def barman_would_delete(tools: BarmanTools, repository: Repository, window: timedelta) -> tuple[str, ...]:
    """The base backups barman-cloud-backup-delete's own recovery-window rule deletes (its dry run)."""
    output = run_tool(tools, repository, "backup-delete",
                      ["--retention-policy", retention_policy_text(window), "--dry-run",
                       repository.url, repository.server_name],
                      what=f"dry run of the retention of cluster {repository.cluster} in {repository.describe()}",
                      timeout=DELETE_TIMEOUT_SECONDS)
    return tuple(sorted(set(_DRY_RUN_BACKUP.findall(output))))


def apply_retention(tools: BarmanTools, repository: Repository, plan: RetentionPlan, *, window: timedelta,
                    is_repository: bool) -> RetentionPlan:
    """Delete what ``plan`` deletes from ``repository`` (the repository itself or a copy);
    returns the plan marked deleted, with the method used."""
    if not plan.delete:
        return replace(plan, deleted=True, method="nothing to delete")
    if is_repository:
        barman = barman_would_delete(tools, repository, window)
        if barman == plan.delete:
            run_tool(tools, repository, "backup-delete",
                     ["--retention-policy", retention_policy_text(window), repository.url, repository.server_name],
                     what=f"retention of cluster {repository.cluster} in {repository.describe()}",
                     timeout=DELETE_TIMEOUT_SECONDS)
            return replace(plan, deleted=True, method=f"barman-cloud-backup-delete --retention-policy "
                                                      f"'{retention_policy_text(window)}'")
        note = (f"barman's own rule would delete {', '.join(barman) or 'nothing'}; deleting the plan's "
                f"backups one by one")
        notes = (*plan.notes, note)
    else:
        notes = plan.notes
    for backup_id in plan.delete:  # oldest first: barman removes the WAL each leaves unneeded
        _delete_one(tools, repository, backup_id)
    return replace(plan, deleted=True, method="barman-cloud-backup-delete -b, oldest first", notes=notes)
