"""Is each standby ready to take over as its policy says? Findings in the shape of the logical and
physical ones (:class:`~platform_orchestration.backups.compliance.Finding`):

- ``replication_within_lag``: replay within ``max_lag_bytes`` and ``max_lag`` of the primary;
- ``standby_streaming``: the standby is in recovery, its walreceiver streams and the primary's
  walsender for it streams;
- ``slot_wal_within_limit``: its slot exists and keeps at most ``max_slot_wal`` on the primary;
- ``failover_drill_passed_within_cadence``: the latest failover drill passed and is younger than
  the policy's ``replication.drill_every`` (or ``drill.every``).

The fleet-wide document (:func:`record_replication_compliance`) is written as
``evidence/replication/ID.json`` into every given store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from platform_orchestration.backups.catalog import Recorded, record_everywhere
from platform_orchestration.backups.compliance import Finding
from platform_orchestration.backups.manifest import new_evidence_id
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.replication.drill import FailoverDrillRecord
from platform_orchestration.replication.status import (
    FAILOVER_DRILL_PASSED_WITHIN_CADENCE,
    STATUS_CHECKS,
    ReplicationStatus,
)
from platform_orchestration.replication.target import ReplicationObjectives
from platform_orchestration.storage import ObjectStore

REPLICATION_EVIDENCE_PREFIX = "evidence/replication/"


@dataclass(frozen=True)
class StandbyCompliance:
    standby: str
    primary: str
    policy: str
    findings: list[Finding]
    status: str
    latest_drill_id: str | None = None
    unreadable: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(finding.passed for finding in self.findings)


def assess_standby(*, standby: str, primary: str, policy: str, objectives: ReplicationObjectives,
                   status: ReplicationStatus, drills: Sequence[FailoverDrillRecord], now: datetime,
                   unreadable: Sequence[str] = ()) -> StandbyCompliance:
    problems = status.problems(objectives)
    findings = [Finding(name, not problems[name], "; ".join(problems[name]) or status.describe())
                for name in STATUS_CHECKS]
    every = timedelta(seconds=objectives.drill_every_seconds)
    if not drills:
        drill = Finding(FAILOVER_DRILL_PASSED_WITHIN_CADENCE, False, "no failover drill recorded")
    else:
        latest = drills[-1]
        age = max(timedelta(seconds=1), now - latest.finished_at)
        young = age <= every
        if not latest.passed:
            detail = f"latest failover drill {latest.drill_id} failed: {latest.failure}"
        else:
            detail = (f"latest failover drill {latest.drill_id} passed {format_duration(age)} ago, RTO "
                      f"{latest.rto_seconds or 0:.2f}s (target {objectives.failover_rto_seconds:.0f}s), RPO "
                      f"{latest.rpo_seconds or 0:.2f}s, cadence {format_duration(every)}")
            if not young:
                detail += "; too old"
        drill = Finding(FAILOVER_DRILL_PASSED_WITHIN_CADENCE, latest.passed and young, detail)
    if unreadable:
        drill = Finding(drill.check, False, drill.detail + f"; {len(unreadable)} drill record(s) unreadable")
    findings.append(drill)
    return StandbyCompliance(standby=standby, primary=primary, policy=policy, findings=findings,
                             status=status.describe(), latest_drill_id=drills[-1].drill_id if drills else None,
                             unreadable=list(unreadable))


def record_replication_compliance(assessments: Sequence[StandbyCompliance], stores: Sequence[ObjectStore], *,
                                  now: datetime, fleet_file: str) -> Recorded:
    """The standbys' findings as one evidence document, in every one of ``stores``."""
    evidence_id = new_evidence_id(now)
    document = {"evidence_id": evidence_id, "kind": "replication", "generated_at": now.isoformat(),
                "fleet_file": fleet_file, "compliant": sum(a.passed for a in assessments),
                "not_compliant": sum(not a.passed for a in assessments),
                "standbys": [asdict(a) | {"passed": a.passed} for a in assessments]}
    return record_everywhere(stores, f"{REPLICATION_EVIDENCE_PREFIX}{evidence_id}.json",
                             json.dumps(document, indent=2, default=str).encode(),
                             f"replication compliance {evidence_id}")
