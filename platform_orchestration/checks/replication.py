"""Asset checks of standby clusters, per standby: the four findings of replication/compliance.py,
each on the asset it guards, from one assessment."""

import dagster as dg

from platform_orchestration.checks.steps import Finding, listed, partitioned_check_step
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.replication.status import (
    FAILOVER_DRILL_PASSED_WITHIN_CADENCE,
    REPLICATION_WITHIN_LAG,
    SLOT_WAL_WITHIN_LIMIT,
    STANDBY_STREAMING,
)
from platform_orchestration.protection import FleetProtection

_CHECKS = {
    REPLICATION_WITHIN_LAG: ("replication_lag", "Replay within the policy's max_lag_bytes and max_lag."),
    STANDBY_STREAMING: ("replication_lag", "The standby is in recovery and streams; the primary's walsender streams."),
    SLOT_WAL_WITHIN_LIMIT: ("replication_lag", "The standby's slot exists and keeps at most max_slot_wal on the "
                                               "primary (its disk is at risk otherwise)."),
    FAILOVER_DRILL_PASSED_WITHIN_CADENCE: ("failover_drills", "The last failover drill passed, within its cadence."),
}


def _assess_standby(protection: FleetProtection, standby: str) -> tuple[list[Finding], dict[str, str]]:
    assessment = protection.assess_standby(standby)
    return list(assessment.findings), {
        "standby": assessment.standby, "primary": assessment.primary, "policy": assessment.policy,
        "latest_failover_drill_id": assessment.latest_drill_id or "none",
        "unreadable": listed(assessment.unreadable)}


def build_replication_checks(assets_by_name: dict[str, dg.AssetsDefinition],
                             partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    return [partitioned_check_step(
        name="standby_replication_checks", checks=_CHECKS, assets_by_name=assets_by_name, partitions=partitions,
        op_tags=k8s_op_tags("standby_replication_checks"), assess=_assess_standby,
        description="The four findings of one standby, from both sides and its drill records.")]
