"""Asset checks of standby clusters, per standby: the four findings of replication/compliance.py,
each on the asset it guards, from one assessment."""

import warnings

import dagster as dg

from platform_orchestration.replication.status import (
    FAILOVER_DRILL_PASSED_WITHIN_CADENCE,
    REPLICATION_WITHIN_LAG,
    SLOT_WAL_WITHIN_LIMIT,
    STANDBY_STREAMING,
)
from platform_orchestration.resources import FleetResource

_CHECKS = {
    REPLICATION_WITHIN_LAG: ("replication_lag", "Replay within the policy's max_lag_bytes and max_lag."),
    STANDBY_STREAMING: ("replication_lag", "The standby is in recovery and streams; the primary's walsender streams."),
    SLOT_WAL_WITHIN_LIMIT: ("replication_lag", "The standby's slot exists and keeps at most max_slot_wal on the "
                                               "primary (its disk is at risk otherwise)."),
    FAILOVER_DRILL_PASSED_WITHIN_CADENCE: ("failover_drills", "The last failover drill passed, within its cadence."),
}


def build_replication_checks(assets_by_name: dict[str, dg.AssetsDefinition],
                             partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset=assets_by_name[asset], description=description,
                                   partitions_def=partitions)
                 for name, (asset, description) in _CHECKS.items()]

    @dg.multi_asset_check(specs=specs, can_subset=True, name="standby_replication_checks",
                          description="The four findings of one standby, from both sides and its drill records.")
    def standby_replication_checks(context: dg.AssetCheckExecutionContext, fleet: FleetResource):
        with fleet.protection() as protection:
            assessment = protection.assess_standby(context.partition_key)
        by_name = {finding.check: finding for finding in assessment.findings}
        metadata = {"standby": assessment.standby, "primary": assessment.primary, "policy": assessment.policy,
                    "latest_failover_drill_id": assessment.latest_drill_id or "none",
                    "unreadable": "; ".join(assessment.unreadable[:20]) or "none"}
        for spec in specs:
            if spec.key not in context.selected_asset_check_keys:
                continue
            finding = by_name[spec.name]
            yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, passed=finding.passed,
                                      severity=dg.AssetCheckSeverity.ERROR, description=finding.detail,
                                      metadata=metadata)

    return [standby_replication_checks]
