"""Asset checks: the policy's promises, evaluated per database from the stores.

They run after the assets they guard and can also be run alone from the UI; each
reports what it saw (ids, ages, stores) so a failure explains itself.
"""

import warnings

import dagster as dg

from platform_orchestration.backups.compliance import (
    BACKUP_WITHIN_RPO,
    BACKUPS_ENCRYPTED,
    COPIES_IN_REQUIRED_STORES,
    DRILL_PASSED_WITHIN_CADENCE,
    DYNAMIC_CREDENTIALS_USED,
)
from platform_orchestration.resources import FleetResource


def _finding_check(check_name: str, asset: dg.AssetsDefinition, description: str,
                   partitions: dg.StaticPartitionsDefinition) -> dg.AssetChecksDefinition:
    def _check(context: dg.AssetCheckExecutionContext, fleet: FleetResource) -> dg.AssetCheckResult:
        with fleet.protection() as protection:
            assessment = protection.assess(context.partition_key)
        finding = assessment.finding(check_name)
        return dg.AssetCheckResult(
            passed=finding.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=finding.detail,
            metadata={"database": assessment.database, "policy": assessment.policy,
                      "latest_backup_id": assessment.latest_backup_id or "none",
                      "latest_drill_id": assessment.latest_drill_id or "none"},
        )

    # Partitioned asset checks are a preview feature of the pinned dagster (1.13.27); we rely on
    # them deliberately (one verdict per database), so their PreviewWarning is not news.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        return dg.asset_check(asset=asset, name=check_name, description=description,
                              partitions_def=partitions)(_check)


def build_checks(assets_by_name: dict[str, dg.AssetsDefinition],
                 partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    return [
        _finding_check(BACKUP_WITHIN_RPO, assets_by_name["backups"],
                       "The newest backup is younger than the policy's RPO.", partitions),
        _finding_check(COPIES_IN_REQUIRED_STORES, assets_by_name["backup_copies"],
                       "The newest backup has a verified copy in every store the policy requires.",
                       partitions),
        _finding_check(DRILL_PASSED_WITHIN_CADENCE, assets_by_name["restore_drills"],
                       "The last restore drill passed, under the RTO target, within the drill cadence.",
                       partitions),
        _finding_check(BACKUPS_ENCRYPTED, assets_by_name["backups"],
                       "Every stored copy of every backup is encrypted and names its key version.",
                       partitions),
        _finding_check(DYNAMIC_CREDENTIALS_USED, assets_by_name["backups"],
                       "Where the fleet says dynamic (Vault) credentials, the backup used them.",
                       partitions),
    ]
