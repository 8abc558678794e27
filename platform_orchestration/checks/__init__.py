"""Asset checks: the policy's promises, evaluated per database from the stores.

The five checks of a database are one step: it assesses the database once (one listing
of each store) and reports each finding on the asset it guards. It runs after the assets
it guards that the run materializes, and can also be run alone from the UI; each result
reports what it saw (ids, ages, stores, objects that could not be read) so a failure
explains itself.
"""

import dagster as dg

from platform_orchestration.backups.catalog import describe_all
from platform_orchestration.backups.compliance import (
    BACKUP_WITHIN_RPO,
    BACKUPS_ENCRYPTED,
    COPIES_IN_REQUIRED_STORES,
    DRILL_PASSED_WITHIN_CADENCE,
    DYNAMIC_CREDENTIALS_USED,
    DatabaseCompliance,
)
from platform_orchestration.checks.steps import Finding, partitioned_check_step
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.protection import FleetProtection

# check name -> (guarded asset, description), in the order of the flow (results are reported so)
_CHECKS = {
    BACKUP_WITHIN_RPO: ("backups", "The newest backup is younger than the policy's RPO."),
    BACKUPS_ENCRYPTED: ("backups", "Every stored copy of every backup is encrypted and names its key version."),
    DYNAMIC_CREDENTIALS_USED: ("backups", "Where the fleet says dynamic (Vault) credentials, the backup used them."),
    COPIES_IN_REQUIRED_STORES: (
        "backup_copies", "The newest backup has a verified copy in every store the policy requires."),
    DRILL_PASSED_WITHIN_CADENCE: (
        "restore_drills", "The last restore drill passed, under the RTO target, within the drill cadence."),
}


# The checks guarding each asset, for jobs (ops/batches.py) that report them themselves.
CHECKS_OF_ASSET: dict[str, list[tuple[str, str]]] = {}
for _name, (_asset, _description) in _CHECKS.items():
    CHECKS_OF_ASSET.setdefault(_asset, []).append((_name, _description))


def assessment_metadata(assessment: DatabaseCompliance) -> dict[str, str]:
    """What every check result of one database's assessment carries beside its verdict."""
    return {"database": assessment.database, "policy": assessment.policy,
            "latest_backup_id": assessment.latest_backup_id or "none",
            "latest_drill_id": assessment.latest_drill_id or "none",
            "unreadable": describe_all(assessment.unreadable, limit=20) or "none"}


def _assess_database(protection: FleetProtection, database: str) -> tuple[list[Finding], dict[str, str]]:
    assessment = protection.assess(database)
    return list(assessment.findings), assessment_metadata(assessment)


def build_checks(assets_by_name: dict[str, dg.AssetsDefinition],
                 partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    return [partitioned_check_step(
        name="database_protection_checks", checks=_CHECKS, assets_by_name=assets_by_name, partitions=partitions,
        assess=_assess_database, op_tags=k8s_op_tags("database_protection_checks"),
        description="The five findings of one database's assessment, from the stores.")]
