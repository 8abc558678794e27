"""Is each cluster physically protected as its policy says? Findings from the server and the
repository, in the same shape as the logical ones (:class:`~platform_orchestration.backups.compliance.Finding`).

- ``base_backup_within_cadence``: the newest complete base backup ended less than
  ``physical.base_backup`` ago;
- ``wal_archive_within_lag``: archiving keeps up (lag within ``physical.wal_max_lag``), is not
  failing, and no segment is missing from the repository since the oldest base backup;
- ``pitr_window_covered``: the oldest complete base backup, with whole WAL after it, reaches back
  at least ``physical.pitr_window``;
- ``pitr_drill_passed_within_cadence``: the latest PITR drill passed, within the policy's drill
  RTO, and is younger than the drill cadence.

Ages are the worker's ``now`` minus barman's recorded end time (the backup host's clock, which
runs beside the server) or the drill's ``finished_at`` (the drill worker's clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from platform_orchestration.backups.compliance import Finding
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import DrillPolicy, PhysicalPolicy
from platform_orchestration.physical.archiving import ArchiveStatus
from platform_orchestration.physical.base_backup import BaseBackup
from platform_orchestration.physical.drill import PitrDrillRecord

BASE_BACKUP_WITHIN_CADENCE = "base_backup_within_cadence"
WAL_ARCHIVE_WITHIN_LAG = "wal_archive_within_lag"
PITR_WINDOW_COVERED = "pitr_window_covered"
PITR_DRILL_PASSED_WITHIN_CADENCE = "pitr_drill_passed_within_cadence"
PHYSICAL_CHECKS = (BASE_BACKUP_WITHIN_CADENCE, WAL_ARCHIVE_WITHIN_LAG, PITR_WINDOW_COVERED,
                   PITR_DRILL_PASSED_WITHIN_CADENCE)


@dataclass(frozen=True)
class ClusterCompliance:
    cluster: str
    policy: str
    findings: list[Finding]
    latest_base_backup_id: str | None = None
    latest_drill_id: str | None = None
    unreadable: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(finding.passed for finding in self.findings)


def _age(now: datetime, then: datetime) -> str:
    return format_duration(max(timedelta(seconds=1), now - then))


def assess_cluster(*, cluster: str, policy: str, physical: PhysicalPolicy, drill: DrillPolicy,
                   backups: Sequence[BaseBackup], archive: ArchiveStatus | str,
                   drills: Sequence[PitrDrillRecord], now: datetime, unreadable: Sequence[str] = ()) -> ClusterCompliance:
    """The four physical findings of one cluster at ``now``. ``archive`` is the archive status,
    or why it could not be read (which fails the archive finding)."""
    done = sorted((b for b in backups if b.done), key=lambda b: b.end_time)
    findings = []
    if not done:
        findings.append(Finding(BASE_BACKUP_WITHIN_CADENCE, False, "no complete base backup in the repository"))
    else:
        newest = done[-1]
        fresh = now - newest.end_time <= physical.base_backup
        findings.append(Finding(BASE_BACKUP_WITHIN_CADENCE, fresh,
                                f"newest base backup {newest.backup_id} ended {_age(now, newest.end_time)} ago "
                                f"(cadence {format_duration(physical.base_backup)})"))
    if isinstance(archive, str):
        findings.append(Finding(WAL_ARCHIVE_WITHIN_LAG, False, f"archiving could not be observed: {archive}"))
    else:
        problems = archive.problems(physical.wal_max_lag)
        detail = "; ".join(problems) if problems else (
            f"lag {archive.lag_seconds:.0f}s (allowed {format_duration(physical.wal_max_lag)}), newest in the "
            f"repository {archive.newest_in_store}, {archive.segments_in_store} segment(s), none missing")
        findings.append(Finding(WAL_ARCHIVE_WITHIN_LAG, not problems, detail))
    gaps = isinstance(archive, str) or bool(archive.missing)
    if not done:
        findings.append(Finding(PITR_WINDOW_COVERED, False, "no base backup: no point in time can be restored"))
    else:
        reach = now - done[0].end_time
        covered = reach >= physical.pitr_window and not gaps
        detail = (f"restores reach back {format_duration(max(reach, timedelta(seconds=1)))} "
                  f"(to base backup {done[0].backup_id}), window {format_duration(physical.pitr_window)}")
        if gaps:
            detail += "; WAL is missing or unobserved, so the reach is not proven"
        findings.append(Finding(PITR_WINDOW_COVERED, covered, detail))
    if not drills:
        findings.append(Finding(PITR_DRILL_PASSED_WITHIN_CADENCE, False, "no PITR drill recorded"))
    else:
        latest = drills[-1]
        young = now - latest.finished_at <= drill.every
        if not latest.passed:
            detail = f"latest PITR drill {latest.drill_id} failed: {latest.failure}"
        else:
            detail = (f"latest PITR drill {latest.drill_id} passed {_age(now, latest.finished_at)} ago, RTO "
                      f"{latest.rto_seconds:.1f}s (target {drill.rto.total_seconds():.0f}s), cadence "
                      f"{format_duration(drill.every)}")
        findings.append(Finding(PITR_DRILL_PASSED_WITHIN_CADENCE, latest.passed and young, detail))
    if unreadable:
        findings[-1] = Finding(PITR_DRILL_PASSED_WITHIN_CADENCE, False,
                               findings[-1].detail + f"; {len(unreadable)} drill record(s) unreadable")
    return ClusterCompliance(cluster=cluster, policy=policy, findings=findings,
                             latest_base_backup_id=done[-1].backup_id if done else None,
                             latest_drill_id=drills[-1].drill_id if drills else None, unreadable=list(unreadable))
