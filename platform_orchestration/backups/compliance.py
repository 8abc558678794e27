"""Is each database protected as its policy says? Findings computed from the stores alone.

Five findings per database, the same ones the Dagster asset checks report:
- backup_within_rpo: the newest backup's snapshot is younger than the RPO target;
- copies_in_required_stores: that backup has a verified copy (a manifest) in every
  store the policy requires;
- drill_passed_within_cadence: the latest drill passed, under the RTO target, and is
  younger than the drill cadence;
- backups_encrypted: every stored copy is encrypted and names its key version;
- dynamic_credentials_used: where the fleet gives a database dynamic (Vault) credentials,
  its latest backup was taken with them, not with a static login.
The evidence also ties every listed backup to the drills that restored it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from platform_orchestration.backups.catalog import drill_history, list_backups
from platform_orchestration.storage import ObjectStore

BACKUP_WITHIN_RPO = "backup_within_rpo"
COPIES_IN_REQUIRED_STORES = "copies_in_required_stores"
DRILL_PASSED_WITHIN_CADENCE = "drill_passed_within_cadence"
BACKUPS_ENCRYPTED = "backups_encrypted"
DYNAMIC_CREDENTIALS_USED = "dynamic_credentials_used"


@dataclass(frozen=True)
class Finding:
    check: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class BackupEvidence:
    backup_id: str
    snapshot_at: str
    stores: list[str]
    restored_by_drills: list[str]


@dataclass(frozen=True)
class DatabaseCompliance:
    database: str
    policy: str
    findings: list[Finding]
    latest_backup_id: str | None = None
    latest_backup_age_seconds: float | None = None
    latest_drill_id: str | None = None
    latest_drill_rto_seconds: float | None = None
    backups: list[BackupEvidence] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.findings)

    def finding(self, check: str) -> Finding:
        return next(f for f in self.findings if f.check == check)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _age(now: datetime, then: datetime) -> timedelta:
    return now - then


def assess_database(
    *,
    database: str,
    policy: str,
    stores: Sequence[ObjectStore],
    rpo: timedelta,
    drill_every: timedelta,
    rto: timedelta,
    now: datetime,
    requires_dynamic_credentials: bool = False,
) -> DatabaseCompliance:
    held_by: dict[str, list[str]] = {}
    snapshot_of: dict[str, datetime] = {}
    unencrypted: list[str] = []
    credentials_of: dict[str, str | None] = {}
    for store in stores:
        for stored in list_backups(store, database):
            held_by.setdefault(stored.backup_id, []).append(store.name)
            snapshot_of[stored.backup_id] = stored.manifest.snapshot_at
            credentials_of[stored.backup_id] = stored.manifest.credentials
            encryption = stored.manifest.encryption
            if encryption is None or not encryption.key_version:
                unencrypted.append(f"{stored.backup_id} in {store.name}")
    drills = drill_history(stores, database)
    findings: list[Finding] = []

    latest_id = max(held_by) if held_by else None
    age: timedelta | None = None
    if latest_id is None:
        findings.append(Finding(BACKUP_WITHIN_RPO, False, f"{database} has no backup in any required store"))
        findings.append(Finding(COPIES_IN_REQUIRED_STORES, False, f"{database} has no backup to copy"))
    else:
        age = _age(now, snapshot_of[latest_id])
        within = age <= rpo
        findings.append(Finding(
            BACKUP_WITHIN_RPO, within,
            f"latest backup {latest_id} is {age.total_seconds():.0f}s old "
            f"({'within' if within else 'exceeds'} RPO {rpo.total_seconds():.0f}s)",
        ))
        missing = [s.name for s in stores if s.name not in held_by[latest_id]]
        findings.append(Finding(
            COPIES_IN_REQUIRED_STORES, not missing,
            f"backup {latest_id} verified in {', '.join(held_by[latest_id])}"
            + (f"; missing from {', '.join(missing)}" if missing else ""),
        ))

    latest_drill = drills[-1] if drills else None
    if latest_drill is None:
        findings.append(Finding(DRILL_PASSED_WITHIN_CADENCE, False, f"{database} has never been drilled"))
    else:
        drill_age = _age(now, latest_drill.finished_at)
        problems = []
        if not latest_drill.passed:
            problems.append(f"failed: {latest_drill.failure}")
        if drill_age > drill_every:
            problems.append(f"{drill_age.total_seconds():.0f}s old, cadence {drill_every.total_seconds():.0f}s")
        if latest_drill.rto_seconds is not None and latest_drill.rto_seconds > rto.total_seconds():
            problems.append(f"RTO {latest_drill.rto_seconds:.1f}s over target {rto.total_seconds():.0f}s")
        findings.append(Finding(
            DRILL_PASSED_WITHIN_CADENCE, not problems,
            f"drill {latest_drill.drill_id} from {latest_drill.source_store} of backup "
            f"{latest_drill.backup_id}: " + ("; ".join(problems) if problems else
                                            f"passed, RTO {latest_drill.rto_seconds:.1f}s"),
        ))

    copies = sum(len(names) for names in held_by.values())
    findings.append(Finding(
        BACKUPS_ENCRYPTED, not unencrypted,
        f"{copies - len(unencrypted)} of {copies} stored copies encrypted with a named key version"
        + (f"; not encrypted: {', '.join(unencrypted[:5])}" + (" ..." if len(unencrypted) > 5 else "")
           if unencrypted else ""),
    ))
    if not requires_dynamic_credentials:
        findings.append(Finding(DYNAMIC_CREDENTIALS_USED, True,
                                f"the fleet gives {database} static credentials"))
    elif latest_id is None:
        findings.append(Finding(DYNAMIC_CREDENTIALS_USED, False, f"{database} has no backup to judge"))
    else:
        used = credentials_of[latest_id]
        findings.append(Finding(
            DYNAMIC_CREDENTIALS_USED, used == "dynamic",
            f"latest backup {latest_id} connected with {used or 'unrecorded'} credentials; "
            "the fleet requires dynamic (Vault) credentials",
        ))

    restored_by: dict[str, list[str]] = {}
    for drill in drills:
        if drill.passed and drill.backup_id:
            restored_by.setdefault(drill.backup_id, []).append(drill.drill_id)
    evidence = [
        BackupEvidence(backup_id, snapshot_of[backup_id].isoformat(), sorted(held_by[backup_id]),
                       restored_by.get(backup_id, []))
        for backup_id in sorted(held_by, reverse=True)
    ]
    return DatabaseCompliance(
        database=database, policy=policy, findings=findings, latest_backup_id=latest_id,
        latest_backup_age_seconds=age.total_seconds() if age is not None else None,
        latest_drill_id=latest_drill.drill_id if latest_drill else None,
        latest_drill_rto_seconds=latest_drill.rto_seconds if latest_drill else None,
        backups=evidence,
    )
