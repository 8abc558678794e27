"""What to do about a database that is not recoverable as its policy says: the decisions the
sensors act on, made here so the CLI, a test or another orchestrator would make the same ones.

Each :class:`Remedy` carries a ``key`` built from the evidence that called for it (the backup
id whose copy is missing, the drill id that failed), so the same evidence always gives the
same key: used as a Dagster run key and in the sensors' cursors, a remedy is requested once,
however many ticks see the same state; new evidence (a newer backup, another failed drill)
gives a new key.

The drill escalation ladder, counted in drills failed since the last one that passed:

1. one failed drill: drill again from another store (the copy drilled may be the broken one);
2. that one failed too: take a fresh backup and drill it, and page the on-call;
3. more: page again for each new failure (no further automatic runs: a human is needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from platform_orchestration.observability.recoverability import DatabaseRecoverability

RemedyKind = Literal["copy", "drill_elsewhere", "backup_and_drill", "backup", "page"]


@dataclass(frozen=True)
class Remedy:
    kind: RemedyKind
    database: str
    key: str
    reason: str
    store: str | None = None  # the store to drill from (drill_elsewhere)
    severity: Literal["page", "warning"] = "warning"


def plan_copy_repairs(r: DatabaseRecoverability) -> list[Remedy]:
    """One copy run when any required store lacks the latest backup (missing, or holding only
    older ones); none when there is no backup to copy (that is staleness)."""
    missing = r.missing_copies
    if not missing or r.latest is None:
        return []
    return [Remedy("copy", r.database, f"copy:{r.database}:{r.latest.backup_id}:{'+'.join(missing)}",
                   f"backup {r.latest.backup_id} of {r.database} is missing from {', '.join(missing)}")]


def _other_store(r: DatabaseRecoverability, failed_store: str) -> str | None:
    """The next required store after `failed_store` (policy order, wrapping) that holds the
    latest backup; else any other required store; None when the policy has one store."""
    names = [c.store for c in r.copies]
    if failed_store in names:
        start = names.index(failed_store) + 1
        names = names[start:] + names[:start]
    others = [c for name in names for c in r.copies if c.store == name and name != failed_store]
    holding = [c.store for c in others if c.holds_latest]
    return (holding or [c.store for c in others] or [None])[0]


def plan_drill_escalation(r: DatabaseRecoverability) -> list[Remedy]:
    failing = r.failing_drills
    if not failing:
        return []
    last = failing[-1]
    why = f"drill {last.drill_id} of {r.database} from {last.store} failed: {last.failure or 'unknown'}"
    if len(failing) == 1:
        other = _other_store(r, last.store)
        if other is None:  # nothing else to drill from: straight to a fresh backup
            return [Remedy("backup_and_drill", r.database, f"backup-and-drill:{r.database}:{last.drill_id}", why)]
        return [Remedy("drill_elsewhere", r.database, f"drill-elsewhere:{r.database}:{last.drill_id}",
                       why + f"; drilling from {other}", store=other)]
    page = Remedy("page", r.database, f"page:{r.database}:{last.drill_id}",
                  f"{len(failing)} drills of {r.database} failed in a row; latest: {why}", severity="page")
    if len(failing) == 2:
        return [Remedy("backup_and_drill", r.database, f"backup-and-drill:{r.database}:{last.drill_id}", why), page]
    return [page]


def plan_staleness(r: DatabaseRecoverability) -> list[Remedy]:
    """A backup is requested (and people told) when the newest verified backup is older than
    the RPO or there is none, whatever the reason: a schedule turned off, a job never
    launched, backups taken only by the CLI and then stopped."""
    if not r.stale:
        return []
    if r.latest is None:
        reason = f"{r.database} has no readable backup in any required store"
    else:
        reason = (f"newest backup {r.latest.backup_id} of {r.database} is {r.latest_age_seconds:.0f}s old, "
                  f"over its RPO of {r.rpo_target_seconds:.0f}s")
    return [Remedy("backup", r.database, f"backup:{r.database}:{r.latest.backup_id if r.latest else 'none'}",
                   reason)]
