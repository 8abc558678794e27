"""Physical protection as assets, one partition per physical cluster: WAL archiving observed,
base backups taken (barman-cloud-backup), PITR drills run. Thin: FleetProtection does the work,
these only report it; the checks (checks/physical.py) judge it against the policy."""

import dagster as dg

from platform_orchestration.assets import GROUP, OWNERS
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.resources import FleetResource

# The same group as the logical assets: one lineage page shows the fleet's whole protection
# (the physical assets are told apart by their tag and their cluster partitions).
PHYSICAL_GROUP = GROUP
TAGS = {"platform/protection": "physical"}


def cluster_partitions(cluster_names: list[str]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(cluster_names)


def build_physical_assets(partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=PHYSICAL_GROUP, kinds={"postgres", "s3"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("wal_archiving"), partitions_def=partitions,
              description="WAL archiving of one cluster: pg_stat_archiver against the segments in its "
                          "repository (lag, failures, missing segments).")
    def wal_archiving(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            status = protection.archive_status(context.partition_key)
            policy = protection.physical_repository(context.partition_key).policy
        problems = status.problems(policy.wal_max_lag) if policy else []
        for problem in problems:
            context.log.warning(f"{context.partition_key}: {problem}")
        return dg.MaterializeResult(metadata={
            "repository": status.repository, "current_wal": status.current_wal,
            "last_archived_wal": status.last_archived_wal or "none",
            "last_archived_at": str(status.last_archived_at or "never"),
            "archived_count": dg.MetadataValue.int(status.archived_count),
            "failed_count": dg.MetadataValue.int(status.failed_count),
            "newest_in_repository": status.newest_in_store or "none",
            "segments_in_repository": dg.MetadataValue.int(status.segments_in_store),
            "pending_segments": dg.MetadataValue.int(status.pending_segments),
            "lag_seconds": dg.MetadataValue.float(round(status.lag_seconds, 1)),
            "missing_segments": ", ".join(status.missing[:20]) or "none",
            "problems": "; ".join(problems) or "none",
        })

    @dg.asset(group_name=PHYSICAL_GROUP, kinds={"postgres", "s3"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("physical_base_backups"), partitions_def=partitions,
              deps=[wal_archiving],
              description="A base backup of one cluster (barman-cloud-backup) into its physical repository.")
    def physical_base_backups(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            outcome = protection.base_backup(context.partition_key)
        backup = outcome.backup
        return dg.MaterializeResult(metadata={
            "backup_id": backup.backup_id, "backup_name": backup.backup_name or "none",
            "repository": outcome.repository,
            "begin_lsn": backup.begin_lsn, "end_lsn": backup.end_lsn,
            "begin_wal": backup.begin_wal, "end_wal": backup.end_wal, "timeline": dg.MetadataValue.int(backup.timeline),
            "cluster_bytes": dg.MetadataValue.int(backup.cluster_bytes),
            "stored_bytes": dg.MetadataValue.int(backup.stored_bytes or 0),
            "seconds": dg.MetadataValue.float(round(outcome.seconds, 2)),
            "throughput_mib_s": dg.MetadataValue.float(round(outcome.throughput_mib_s, 1)),
            "server_version": dg.MetadataValue.int(backup.server_version),
        })

    @dg.asset(group_name=PHYSICAL_GROUP, kinds={"postgres"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("pitr_drills"), partitions_def=partitions,
              deps=[physical_base_backups],
              description="A PITR drill: a marker row on the source, archived, restored to just after it "
                          "in a new cluster, marker present and nothing after; RTO, RPO, point reached.")
    def pitr_drills(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            record = protection.pitr_drill(context.partition_key)
        metadata = {
            "drill_id": record.drill_id, "backup_id": record.backup_id or "none", "passed": record.passed,
            "source_store": record.source_store,
            "target_time": str(record.target_time or "none"), "reached_lsn": record.reached_lsn or "none",
            "rto_seconds": dg.MetadataValue.float(round(record.rto_seconds or 0.0, 2)),
            "rto_target_seconds": dg.MetadataValue.float(record.rto_target_seconds),
            "rpo_seconds": dg.MetadataValue.float(round(record.rpo_seconds or 0.0, 1)),
            "rpo_target_seconds": dg.MetadataValue.float(record.rpo_target_seconds),
        }
        if not record.passed:
            raise dg.Failure(description=f"PITR drill {record.drill_id} of {context.partition_key} failed: "
                                         f"{record.failure}", metadata=metadata)
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(group_name=PHYSICAL_GROUP, kinds={"postgres", "s3"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("physical_copies"), partitions_def=partitions,
              deps=[physical_base_backups],
              description="Copies of one cluster's physical repository (base backups and WAL, barman-cloud's "
                          "layout) in its policy's other object stores: only new objects, SHA-256 verified; "
                          "each copy's lag behind the repository.")
    def physical_copies(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            outcomes, failures = protection.copy_physical(context.partition_key)
        metadata: dict[str, object] = {
            "stores": ", ".join(o.destination_store for o in outcomes) or "none",
            "objects_copied": dg.MetadataValue.int(sum(len(o.copied) for o in outcomes)),
            "bytes_copied": dg.MetadataValue.int(sum(o.copied_bytes for o in outcomes)),
            "already_present": dg.MetadataValue.int(sum(o.already_present for o in outcomes)),
        }
        for o in outcomes:
            metadata[f"{o.destination_store}_lag_seconds"] = dg.MetadataValue.float(round(o.lag.lag_seconds, 1))
            metadata[f"{o.destination_store}_segments_behind"] = dg.MetadataValue.int(o.lag.segments_behind)
            metadata[f"{o.destination_store}_newest_wal"] = o.lag.newest_wal_copy or "none"
            metadata[f"{o.destination_store}_newest_base_backup"] = o.lag.newest_backup_copy or "none"
        if failures:
            raise dg.Failure(description=f"copies of {context.partition_key}'s physical repository failed: "
                                         + "; ".join(f"{store}: {why}" for store, why in failures.items()),
                             metadata=metadata)
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(group_name=PHYSICAL_GROUP, kinds={"postgres", "s3"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("physical_retention"), partitions_def=partitions,
              deps=[physical_copies],
              description="Retention of one cluster's base backups and WAL per the policy's pitr_window, in the "
                          "repository and every copy; the last drill-verified backup of each store is kept.")
    def physical_retention(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            plans = protection.prune_physical(context.partition_key)
        metadata: dict[str, object] = {}
        for plan in plans:
            metadata[f"{plan.store}_kept"] = ", ".join(plan.keep) or "none"
            metadata[f"{plan.store}_deleted"] = ", ".join(plan.delete) or "none"
            metadata[f"{plan.store}_wal_deleted"] = dg.MetadataValue.int(len(plan.wal_to_delete))
            if plan.kept_for_drill:
                metadata[f"{plan.store}_kept_for_drill"] = plan.protected or "none"
        return dg.MaterializeResult(metadata=metadata)

    return [wal_archiving, physical_base_backups, pitr_drills, physical_copies, physical_retention]
