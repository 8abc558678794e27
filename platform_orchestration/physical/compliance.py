"""Is each cluster physically protected as its policy says? Findings from the server and the
repository, in the same shape as the logical ones (:class:`~platform_orchestration.backups.compliance.Finding`).

- ``base_backup_within_cadence``: the newest complete base backup ended less than
  ``physical.base_backup`` ago;
- ``wal_archive_within_lag``: archiving keeps up (lag within ``physical.wal_max_lag``), is not
  failing, and no segment is missing from the repository since the oldest base backup;
- ``pitr_window_covered``: the oldest complete base backup, with whole WAL after it, reaches back
  at least ``physical.pitr_window``;
- ``pitr_drill_passed_within_cadence``: the latest PITR drill passed, within the policy's drill
  RTO, and is younger than the drill cadence;
- ``physical_copies_within_lag``: every copy of the repository in the policy's other object
  stores is at most ``physical.copy_max_lag`` behind it (segments and base backups not copied);
- ``backups_encrypted``: every store holding the repository or a copy encrypts it at rest,
  provider-side (S3 SSE read back per object; Azure/GCS keys as declared).

Ages are the worker's ``now`` minus barman's recorded end time (the backup host's clock, which
runs beside the server) or the drill's ``finished_at`` (the drill worker's clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from platform_orchestration.backups.compliance import Finding
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import DrillPolicy, PhysicalPolicy
from platform_orchestration.physical.archiving import ArchiveStatus
from platform_orchestration.physical.base_backup import BaseBackup
from platform_orchestration.physical.copy import CopyLag
from platform_orchestration.physical.drill import PitrDrillRecord
from platform_orchestration.physical.encryption import StoreEncryption

BASE_BACKUP_WITHIN_CADENCE = "base_backup_within_cadence"
WAL_ARCHIVE_WITHIN_LAG = "wal_archive_within_lag"
PITR_WINDOW_COVERED = "pitr_window_covered"
PITR_DRILL_PASSED_WITHIN_CADENCE = "pitr_drill_passed_within_cadence"
PHYSICAL_COPIES_WITHIN_LAG = "physical_copies_within_lag"
BACKUPS_ENCRYPTED = "backups_encrypted"  # the logical finding's name: one question, two answers
PHYSICAL_CHECKS = (BASE_BACKUP_WITHIN_CADENCE, WAL_ARCHIVE_WITHIN_LAG, PITR_WINDOW_COVERED,
                   PITR_DRILL_PASSED_WITHIN_CADENCE, PHYSICAL_COPIES_WITHIN_LAG, BACKUPS_ENCRYPTED)


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


def _copies_finding(copies: Mapping[str, CopyLag | str], allowed: timedelta, not_copied: Sequence[str]) -> Finding:
    note = (f"; not a copy target (barman-cloud reads object stores only): {', '.join(not_copied)}"
            if not_copied else "")
    if not copies:
        return Finding(PHYSICAL_COPIES_WITHIN_LAG, True, "the policy names no other object store to copy the "
                                                         "repository to" + note)
    problems, fine = [], []
    for store, lag in copies.items():
        if isinstance(lag, str):
            problems.append(f"copy in {store} could not be measured: {lag}")
        elif lag.problems(allowed):
            problems += lag.problems(allowed)
        else:
            fine.append(f"{store} {lag.lag_seconds:.0f}s behind ({lag.segments_behind} segment(s), "
                        f"{lag.backups_behind} base backup(s) to copy; newest WAL {lag.newest_wal_copy or 'none'})")
    detail = "; ".join(problems + fine) + f" (allowed {format_duration(allowed)})" + note
    return Finding(PHYSICAL_COPIES_WITHIN_LAG, not problems, detail)


def _age(now: datetime, then: datetime) -> str:
    return format_duration(max(timedelta(seconds=1), now - then))


def assess_cluster(*, cluster: str, policy: str, physical: PhysicalPolicy, drill: DrillPolicy,
                   backups: Sequence[BaseBackup], archive: ArchiveStatus | str,
                   drills: Sequence[PitrDrillRecord], now: datetime, unreadable: Sequence[str] = (),
                   copies: Mapping[str, CopyLag | str] | None = None, not_copied: Sequence[str] = (),
                   encryption: Sequence[StoreEncryption] = ()) -> ClusterCompliance:
    """The physical findings of one cluster at ``now``. ``archive`` is the archive status,
    or why it could not be read (which fails the archive finding); ``copies`` each copy's lag
    (or why it could not be measured), ``not_copied`` the policy's stores that cannot hold a copy
    (local ones: barman-cloud reads object stores only); ``encryption`` each store's."""
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
    if copies is not None:
        findings.append(_copies_finding(copies, physical.allowed_copy_lag, not_copied))
    if encryption:
        failing = [e for e in encryption if not e.passed]
        findings.append(Finding(BACKUPS_ENCRYPTED, not failing,
                                f"{len(encryption) - len(failing)} of {len(encryption)} store(s) encrypt the physical "
                                "repository at rest (barman-cloud: provider-side only): "
                                + "; ".join(e.describe() for e in encryption)))
    return ClusterCompliance(cluster=cluster, policy=policy, findings=findings,
                             latest_base_backup_id=done[-1].backup_id if done else None,
                             latest_drill_id=drills[-1].drill_id if drills else None, unreadable=list(unreadable))
