"""Asset checks of physical protection, per cluster: the four findings of
physical/compliance.py, each on the asset it guards, from one assessment."""

import warnings

import dagster as dg

from platform_orchestration.physical.compliance import (
    BACKUPS_ENCRYPTED,
    BASE_BACKUP_WITHIN_CADENCE,
    PHYSICAL_COPIES_WITHIN_LAG,
    PITR_DRILL_PASSED_WITHIN_CADENCE,
    PITR_WINDOW_COVERED,
    WAL_ARCHIVE_WITHIN_LAG,
)
from platform_orchestration.resources import FleetResource

_CHECKS = {
    WAL_ARCHIVE_WITHIN_LAG: ("wal_archiving", "WAL reaches the repository within the policy's wal_max_lag, "
                                              "archiving is not failing, and no segment is missing."),
    BASE_BACKUP_WITHIN_CADENCE: ("physical_base_backups", "The newest base backup is younger than base_backup."),
    PITR_WINDOW_COVERED: ("physical_base_backups", "Restores reach back the policy's pitr_window."),
    PITR_DRILL_PASSED_WITHIN_CADENCE: ("pitr_drills", "The last PITR drill passed, within the drill cadence."),
    PHYSICAL_COPIES_WITHIN_LAG: ("physical_copies", "Every copy of the repository in another object store is "
                                                    "within the policy's copy_max_lag."),
    BACKUPS_ENCRYPTED: ("physical_base_backups", "Every store holding the repository or a copy encrypts it at rest "
                                                 "(provider-side: S3 SSE read back per object, Azure/GCS keys as "
                                                 "declared)."),
}


def build_physical_checks(assets_by_name: dict[str, dg.AssetsDefinition],
                          partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset=assets_by_name[asset], description=description,
                                   partitions_def=partitions)
                 for name, (asset, description) in _CHECKS.items()]

    @dg.multi_asset_check(specs=specs, can_subset=True, name="cluster_physical_checks",
                          description="The physical findings of one cluster, from its server and repository.")
    def cluster_physical_checks(context: dg.AssetCheckExecutionContext, fleet: FleetResource):
        with fleet.protection() as protection:
            assessment = protection.assess_cluster(context.partition_key)
        by_name = {finding.check: finding for finding in assessment.findings}
        metadata = {"cluster": assessment.cluster, "policy": assessment.policy,
                    "latest_base_backup_id": assessment.latest_base_backup_id or "none",
                    "latest_pitr_drill_id": assessment.latest_drill_id or "none",
                    "unreadable": "; ".join(assessment.unreadable[:20]) or "none"}
        for spec in specs:
            if spec.key not in context.selected_asset_check_keys:
                continue
            finding = by_name[spec.name]
            yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, passed=finding.passed,
                                      severity=dg.AssetCheckSeverity.ERROR, description=finding.detail,
                                      metadata=metadata)

    return [cluster_physical_checks]
