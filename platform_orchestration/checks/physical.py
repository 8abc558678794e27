"""Asset checks of physical protection, per cluster: the four findings of
physical/compliance.py, each on the asset it guards, from one assessment."""

import dagster as dg

from platform_orchestration.checks.steps import Finding, listed, partitioned_check_step
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.physical.compliance import (
    BACKUPS_ENCRYPTED,
    BASE_BACKUP_WITHIN_CADENCE,
    PHYSICAL_COPIES_WITHIN_LAG,
    PITR_DRILL_PASSED_WITHIN_CADENCE,
    PITR_WINDOW_COVERED,
    WAL_ARCHIVE_WITHIN_LAG,
)
from platform_orchestration.protection import FleetProtection

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


def _assess_cluster(protection: FleetProtection, cluster: str) -> tuple[list[Finding], dict[str, str]]:
    assessment = protection.assess_cluster(cluster)
    return list(assessment.findings), {
        "cluster": assessment.cluster, "policy": assessment.policy,
        "latest_base_backup_id": assessment.latest_base_backup_id or "none",
        "latest_pitr_drill_id": assessment.latest_drill_id or "none",
        "unreadable": listed(assessment.unreadable)}


def build_physical_checks(assets_by_name: dict[str, dg.AssetsDefinition],
                          partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    return [partitioned_check_step(
        name="cluster_physical_checks", checks=_CHECKS, assets_by_name=assets_by_name, partitions=partitions,
        op_tags=k8s_op_tags("cluster_physical_checks"), assess=_assess_cluster,
        description="The physical findings of one cluster, from its server and repository.")]
