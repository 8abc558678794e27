"""Is each database protected as its policy says? Findings computed from the stores alone.

Five findings per database, the same ones the Dagster asset checks report:
- backup_within_rpo: the newest readable backup is younger than the RPO target;
- copies_in_required_stores: that backup has a verified copy (a manifest) in every
  store the policy requires, and no newer backup has a manifest that cannot be read;
- drill_passed_within_cadence: the latest drill passed, under the RTO target, and is
  younger than the drill cadence, and no newer drill record is unreadable;
- backups_encrypted: every stored copy is encrypted and names its key version;
- dynamic_credentials_used: where the fleet gives a database dynamic (Vault) credentials,
  its latest backup was taken with them, not with a static login.
The evidence also ties every listed backup to the drills that restored it, and names every
manifest and drill record that could not be read (a broken object fails the finding it
could have changed, and is named wherever it is found).

Clocks: `now` is the worker's clock at assessment. A backup's age (RPO) is `now` minus its
snapshot time on the worker's clock (:attr:`BackupManifest.snapshot_worker_time`), never the
database server's `now()`; a drill's age is `now` minus its `finished_at` (the drill worker's
clock). A server clock found skewed at the snapshot is named in the RPO finding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from platform_orchestration.backups.catalog import (
    UnreadableObject,
    describe_all,
    merge_drills,
    record_everywhere,
)
from platform_orchestration.backups.index import read_catalog_or_report
from platform_orchestration.backups.manifest import (
    BackupManifest,
    evidence_key,
    new_evidence_id,
)
from platform_orchestration.storage import ObjectStore

BACKUP_WITHIN_RPO = "backup_within_rpo"
COPIES_IN_REQUIRED_STORES = "copies_in_required_stores"
DRILL_PASSED_WITHIN_CADENCE = "drill_passed_within_cadence"
BACKUPS_ENCRYPTED = "backups_encrypted"
DYNAMIC_CREDENTIALS_USED = "dynamic_credentials_used"

# A server clock this far from the worker's at the snapshot is named in the RPO finding.
SKEW_WORTH_NAMING = timedelta(minutes=1)


@dataclass(frozen=True)
class Finding:
    check: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class BackupEvidence:
    backup_id: str
    snapshot_at: str  # the database server's clock, as recorded
    stores: list[str]
    restored_by_drills: list[str]
    snapshot_worker_at: str  # the worker's clock: what the ages are measured from


@dataclass(frozen=True)
class DatabaseCompliance:
    database: str
    policy: str
    findings: list[Finding]
    latest_backup_id: str | None = None
    latest_backup_age_seconds: float | None = None  # worker clock at assessment - snapshot_worker_time
    latest_drill_id: str | None = None
    latest_drill_rto_seconds: float | None = None
    backups: list[BackupEvidence] = field(default_factory=list)
    # Manifests and drill records of this database that could not be read, in any store.
    unreadable: list[UnreadableObject] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.findings)

    def finding(self, check: str) -> Finding:
        return next(f for f in self.findings if f.check == check)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"


def _skew_note(manifest: BackupManifest) -> str:
    skew = manifest.server_clock_skew
    if skew is None or abs(skew) < SKEW_WORTH_NAMING:
        return ""
    return (f"; the database server's clock was {_seconds(abs(skew))} "
            f"{'ahead of' if skew > timedelta(0) else 'behind'} the worker's at the snapshot "
            "(ages use the worker's clock)")


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
    stores_at_once: bool = False,
) -> DatabaseCompliance:
    """The five findings for `database` in its policy's `stores`, at `now` (the worker's clock).
    `stores_at_once`: read the stores in parallel (one thread each), for cloud stores where the
    work is waiting on round trips."""
    held_by: dict[str, list[str]] = {}
    manifest_of: dict[str, BackupManifest] = {}
    unencrypted: list[str] = []
    key_versions: dict[str, int] = {}
    broken_manifests: list[UnreadableObject] = []
    # 2 LIST + 1 GET per store with a current index; a store that cannot be listed is judged as
    # unreachable (the copies finding fails naming it), the others as usual.
    if stores_at_once and len(stores) > 1:
        with ThreadPoolExecutor(max_workers=len(stores), thread_name_prefix="assess-store") as pool:
            views = list(pool.map(lambda store: read_catalog_or_report(store, database), stores))
    else:
        views = [read_catalog_or_report(store, database) for store in stores]
    unreachable: list[UnreadableObject] = []
    for store, view in zip(stores, views):
        listing = view.backups
        unreachable += [u for u in listing.unreadable if u.unreachable]
        broken_manifests += [u for u in listing.unreadable if not u.unreachable]
        for stored in listing.backups:
            held_by.setdefault(stored.backup_id, []).append(store.name)
            manifest_of.setdefault(stored.backup_id, stored.manifest)
            encryption = stored.manifest.encryption
            if encryption is None or not encryption.key_version:
                unencrypted.append(f"{stored.backup_id} in {store.name}")
            else:
                version = f"{encryption.key_name} v{encryption.key_version}"
                key_versions[version] = key_versions.get(version, 0) + 1
    drills = merge_drills(view.drills for view in views)
    findings: list[Finding] = []

    latest_id = max(held_by) if held_by else None
    # Broken manifests of backups newer than the latest readable one: those were passed over.
    newer_broken = [u for u in broken_manifests if (u.backup_id or "") > (latest_id or "")]
    age: timedelta | None = None
    down = {u.store for u in unreachable}
    down_note = f"; unreachable: {describe_all(unreachable)}" if unreachable else ""
    if latest_id is None:
        broken = (f"; unreadable: {describe_all(broken_manifests)}" if broken_manifests else "") + down_note
        findings.append(Finding(BACKUP_WITHIN_RPO, False,
                                f"{database} has no readable backup in any required store{broken}"))
        findings.append(Finding(COPIES_IN_REQUIRED_STORES, False, f"{database} has no backup to copy{broken}"))
    else:
        latest = manifest_of[latest_id]
        age = latest.age_at(now)
        within = age <= rpo
        findings.append(Finding(
            BACKUP_WITHIN_RPO, within,
            f"latest backup {latest_id} is {_seconds(age)} old "
            f"({'within' if within else 'exceeds'} RPO {_seconds(rpo)})" + _skew_note(latest)
            + (f"; passed over newer {describe_all(newer_broken)}" if newer_broken else ""),
        ))
        broken_copies = {u.store: u for u in broken_manifests if u.backup_id == latest_id}
        missing = [s.name for s in stores
                   if s.name not in held_by[latest_id] and s.name not in broken_copies and s.name not in down]
        older_broken = [u for u in broken_manifests if (u.backup_id or "") < latest_id]
        findings.append(Finding(
            COPIES_IN_REQUIRED_STORES, not missing and not broken_copies and not newer_broken and not down,
            f"backup {latest_id} verified in {', '.join(held_by[latest_id])}"
            + (f"; missing from {', '.join(missing)}" if missing else "")
            + down_note
            + (f"; unreadable: {describe_all(broken_copies.values())}" if broken_copies else "")
            + (f"; newer backup unreadable: {describe_all(newer_broken)}" if newer_broken else "")
            + (f"; older backup unreadable: {describe_all(older_broken)}" if older_broken else ""),
        ))

    latest_drill = drills.records[-1] if drills.records else None
    latest_drill_id = latest_drill.drill_id if latest_drill else ""
    newer_broken_drills = [u for u in drills.unreadable if (u.drill_id or "") > latest_drill_id]
    older_broken_drills = [u for u in drills.unreadable if (u.drill_id or "") <= latest_drill_id]
    if latest_drill is None:
        findings.append(Finding(
            DRILL_PASSED_WITHIN_CADENCE, False,
            f"{database} has never been drilled" if not drills.unreadable else
            f"{database} has no readable drill record; unreadable: {describe_all(drills.unreadable)}"))
    else:
        drill_age = now - latest_drill.finished_at
        problems = []
        if not latest_drill.passed:
            problems.append(f"failed: {latest_drill.failure}")
        if drill_age > drill_every:
            problems.append(f"{_seconds(drill_age)} old, cadence {_seconds(drill_every)}")
        if latest_drill.rto_seconds is not None and latest_drill.rto_seconds > rto.total_seconds():
            problems.append(f"RTO {latest_drill.rto_seconds:.1f}s over target {_seconds(rto)}")
        if newer_broken_drills:
            problems.append(f"newer drill record unreadable: {describe_all(newer_broken_drills)}")
        findings.append(Finding(
            DRILL_PASSED_WITHIN_CADENCE, not problems,
            f"drill {latest_drill.drill_id} from {latest_drill.source_store} of backup "
            f"{latest_drill.backup_id}: " + ("; ".join(problems) if problems else
                                            f"passed, RTO {latest_drill.rto_seconds:.1f}s")
            + (f"; older drill record unreadable: {describe_all(older_broken_drills)}"
               if older_broken_drills else ""),
        ))

    copies = sum(len(names) for names in held_by.values())
    findings.append(Finding(
        BACKUPS_ENCRYPTED, not unencrypted,
        f"{copies - len(unencrypted)} of {copies} stored copies encrypted client-side (envelope) "
        "with a named key version"
        + (f" ({', '.join(f'{v}: {n}' for v, n in sorted(key_versions.items()))})" if key_versions else "")
        + (f"; not encrypted: {', '.join(unencrypted[:5])}" + (" ..." if len(unencrypted) > 5 else "")
           if unencrypted else ""),
    ))
    if not requires_dynamic_credentials:
        findings.append(Finding(DYNAMIC_CREDENTIALS_USED, True,
                                f"the fleet gives {database} static credentials"))
    elif latest_id is None:
        findings.append(Finding(DYNAMIC_CREDENTIALS_USED, False, f"{database} has no backup to judge"))
    else:
        used = manifest_of[latest_id].credentials
        findings.append(Finding(
            DYNAMIC_CREDENTIALS_USED, used == "dynamic",
            f"latest backup {latest_id} connected with {used or 'unrecorded'} credentials; "
            "the fleet requires dynamic (Vault) credentials",
        ))

    restored_by: dict[str, list[str]] = {}
    for drill in drills.records:
        if drill.passed and drill.backup_id:
            restored_by.setdefault(drill.backup_id, []).append(drill.drill_id)
    evidence = [
        BackupEvidence(backup_id, manifest_of[backup_id].snapshot_at.isoformat(), sorted(held_by[backup_id]),
                       restored_by.get(backup_id, []), manifest_of[backup_id].snapshot_worker_time.isoformat())
        for backup_id in sorted(held_by, reverse=True)
    ]
    return DatabaseCompliance(
        database=database, policy=policy, findings=findings, latest_backup_id=latest_id,
        latest_backup_age_seconds=age.total_seconds() if age is not None else None,
        latest_drill_id=latest_drill.drill_id if latest_drill else None,
        latest_drill_rto_seconds=latest_drill.rto_seconds if latest_drill else None,
        backups=evidence, unreadable=broken_manifests + unreachable + list(drills.unreadable),
    )


@dataclass(frozen=True)
class ComplianceEvidence:
    """A compliance report recorded as evidence: what it says, under which key, and where it
    was written (stores that failed, with why)."""

    evidence_id: str
    key: str
    generated_at: datetime
    assessments: tuple[DatabaseCompliance, ...]
    stored_in: tuple[str, ...]
    failed_stores: dict[str, str]

    @property
    def compliant(self) -> int:
        return sum(a.passed for a in self.assessments)


def record_compliance(assessments: Sequence[DatabaseCompliance], stores: Sequence[ObjectStore], *,
                      now: datetime, fleet_file: str) -> ComplianceEvidence:
    """Build the compliance report document from `assessments` (made at `now`, the worker's
    clock) and write it to every one of `stores` under ``evidence/compliance/<evidence_id>.json``.
    Raises StoreError only if no store got it."""
    evidence_id = new_evidence_id(now)
    document = {
        "evidence_id": evidence_id,
        "generated_at": now.isoformat(),
        "fleet_file": fleet_file,
        "databases": [a.to_dict() for a in assessments],
    }
    recorded = record_everywhere(stores, evidence_key(evidence_id),
                                 json.dumps(document, indent=2, default=str).encode(),
                                 f"compliance evidence {evidence_id}")
    return ComplianceEvidence(evidence_id, recorded.key, now, tuple(assessments), recorded.stored_in,
                              recorded.failed)
