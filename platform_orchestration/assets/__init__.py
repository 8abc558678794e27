"""The fleet's protection as assets: cluster -> database -> backup -> copies -> drill -> compliance,
with retention as a side branch off the copies (pruning never feeds the drill or compliance).

Every asset reads and writes the stores through `FleetProtection`, the same API as the
break-glass CLI; the stores, not Dagster's storage, hold the backups and the evidence.
Per-database assets are partitioned by database name, so each database's history,
checks and failures are visible on their own.
"""

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dagster as dg

from platform_orchestration.backups.catalog import describe_all
from platform_orchestration.backups.compliance import DatabaseCompliance
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.protection import FleetProtection
from platform_orchestration.resources import FleetResource, MetricsResource

GROUP = "fleet_protection"
OWNERS = ["team:platform"]


class DrillConfig(dg.Config):
    """Which store to drill from; empty: the next one in rotation. The escalation sensor sets
    it to drill again from another store after a failed drill."""

    source_store: str = ""


def database_partitions(database_names: list[str]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(database_names)


def _markdown_table(header: list[str], rows: list[list[object]]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def compliance_table(assessments: list[DatabaseCompliance]) -> dg.MetadataValue:
    rows = []
    for a in assessments:
        rows.append([a.database, a.policy, "yes" if a.passed else "**no**"]
                    + [("ok" if f.passed else "FAIL") + f": {f.detail}" for f in a.findings])
    return _markdown_table(["database", "policy", "compliant", "RPO", "copies", "drill", "encrypted",
                            "credentials"], rows)


Metadata = dict[str, Any]


def database_metadata(protection: FleetProtection, name: str, log: logging.Logger) -> Metadata:
    spec = protection.fleet.database(name)
    observed = protection.observe_database(name)
    return {
        "cluster": spec.cluster, "policy": spec.policy, "server_version": observed.server_version,
        "size_bytes": dg.MetadataValue.int(observed.size_bytes), "tables": dg.MetadataValue.int(observed.tables),
        "connection": protection.connection_for(name).display(),
    }


def backup_metadata(protection: FleetProtection, name: str, log: logging.Logger) -> Metadata:
    outcome = protection.backup(name)
    manifest = outcome.manifest
    for store, reason in outcome.failed_stores.items():
        log.warning(f"backup {manifest.backup_id}: no copy in {store}: {reason}")
    return {
        "backup_id": manifest.backup_id,
        "lsn": manifest.lsn,
        "server_version": manifest.server.version,
        "dump_tool": manifest.dump.tool,
        "raw_bytes": dg.MetadataValue.int(manifest.dump.raw_bytes),
        "stored_bytes": dg.MetadataValue.int(manifest.dump.stored_bytes),
        "compression_ratio": dg.MetadataValue.float(
            round(manifest.dump.raw_bytes / max(manifest.dump.stored_bytes, 1), 2)),
        "seconds": dg.MetadataValue.float(round(outcome.seconds, 2)),
        "throughput_mib_s": dg.MetadataValue.float(
            round(manifest.dump.raw_bytes / 2**20 / max(outcome.seconds, 1e-6), 1)),
        "sha256": manifest.dump.sha256,
        "tables": dg.MetadataValue.int(len(manifest.row_counts)),
        "rows": dg.MetadataValue.int(sum(manifest.row_counts.values())),
        "stored_in": ", ".join(outcome.stored_in),
        "failed_stores": ", ".join(outcome.failed_stores) or "none",
        "encryption": (f"{manifest.encryption.scheme}, data key wrapped by {manifest.encryption.key_service} "
                       f"v{manifest.encryption.key_version}") if manifest.encryption else "none",
        "credentials": manifest.credentials or "unrecorded",
    }


def copies_metadata(protection: FleetProtection, name: str, log: logging.Logger) -> Metadata:
    report = protection.ensure_copies(name)
    if report.failed:
        raise dg.Failure(
            description=f"backup {report.backup_id} of {name}: copies failed: "
            + "; ".join(f"{store}: {reason}" for store, reason in report.failed.items()),
            metadata={"failed_stores": ", ".join(report.failed)},
        )
    return {
        "backup_id": report.backup_id,
        "already_present": ", ".join(report.already_present) or "none",
        "copied_now": ", ".join(report.copied) or "none",
        "verified_copies": dg.MetadataValue.int(len(report.already_present) + len(report.copied)),
    }


def drill_metadata(protection: FleetProtection, name: str, log: logging.Logger,
                   source_store: str | None = None) -> Metadata:
    record = protection.drill(name, source_store)
    for broken in record.passed_over:
        log.warning(f"drill {record.drill_id}: passed over newer {broken}")
    metadata = {
        "drill_id": record.drill_id, "backup_id": record.backup_id or "none",
        "source_store": record.source_store, "passed": record.passed,
        "rto_seconds": dg.MetadataValue.float(round(record.rto_seconds or 0.0, 2)),
        "rto_target_seconds": dg.MetadataValue.float(record.rto_target_seconds),
        "rpo_seconds": dg.MetadataValue.float(round(record.rpo_seconds or 0.0, 1)),
        "tables_verified": dg.MetadataValue.int(record.tables_verified),
        "rows_verified": dg.MetadataValue.int(record.rows_verified),
        "passed_over": "; ".join(record.passed_over) or "none",
    }
    if not record.passed:
        # The failed drill is already recorded as evidence in every store; failing the run
        # is what makes the failure sensor and the on-call hear about it.
        raise dg.Failure(description=f"restore drill {record.drill_id} of {name} "
                                     f"failed: {record.failure}", metadata=metadata)
    return metadata


def retention_metadata(protection: FleetProtection, name: str, log: logging.Logger) -> Metadata:
    report = protection.prune(name)
    for line in report.lines():
        log.info(line)
    rows = [[s.store, ", ".join(s.deleted) or "-", len(s.kept),
             "; ".join(lock.describe(s.store) for lock in s.locked) or "-",
             len(s.orphans_removed), "; ".join(s.failures) or "-"] for s in report.stores]
    metadata = {
        "deleted_count": dg.MetadataValue.int(report.deleted_count),
        "kept_count": dg.MetadataValue.int(report.kept_count),
        "locked_count": dg.MetadataValue.int(report.locked_count),
        "orphans_removed": dg.MetadataValue.int(report.orphans_removed_count),
        # Incomplete uploads and empty directories of killed writes, and the bytes they held.
        "leftovers_removed": dg.MetadataValue.int(report.uploads_discarded_count
                                                  + report.directories_removed_count),
        "leftover_bytes_removed": dg.MetadataValue.int(report.discarded_bytes),
        "drill_records_deleted": dg.MetadataValue.int(report.drills_deleted_count),
        # Throwaway servers and work directories of killed drills and restores on this worker.
        "abandoned_servers_stopped": dg.MetadataValue.int(len(report.machine.servers_stopped)
                                                          if report.machine else 0),
        "abandoned_bytes_removed": dg.MetadataValue.int(report.machine.bytes_freed if report.machine else 0),
        "kept_backups": ", ".join(report.plan.kept_ids) or "none",
        "stores": _markdown_table(["store", "deleted", "kept", "locked", "orphans removed", "errors"], rows),
    }
    if report.failures:
        # What could be pruned was; failing the run gets the rest in front of the on-call.
        raise dg.Failure(description=f"retention of {name}: " + "; ".join(report.failures), metadata=metadata)
    return metadata


MaterializeOne = Callable[[FleetProtection, str, logging.Logger], Metadata]

# What materialising one partition of each per-database asset does: shared by the assets
# (one run per database) and the batched jobs (ops/batches.py, one step per database).
PER_DATABASE: dict[str, MaterializeOne] = {
    "databases": database_metadata,
    "backups": backup_metadata,
    "backup_copies": copies_metadata,
    "restore_drills": drill_metadata,
    "retention": retention_metadata,
}


def _materialize(context: dg.AssetExecutionContext, fleet: FleetResource, body: MaterializeOne) -> dg.MaterializeResult:
    with fleet.protection() as protection:
        return dg.MaterializeResult(metadata=body(protection, context.partition_key, context.log))


def build_assets(partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=GROUP, kinds={"postgres"}, owners=OWNERS,
              op_tags=k8s_op_tags("clusters"),
              description="The fleet's PostgreSQL clusters, observed: reachable, server version, role.")
    def clusters(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            observations = protection.observe_clusters()
        for cluster in observations:
            if cluster.unreachable:
                context.log.warning(f"cluster {cluster.name}: {cluster.unreachable}")
        rows = [[c.name, c.cloud, c.region, c.declared_role, c.observed_role, c.version, ", ".join(c.databases)]
                for c in observations]
        return dg.MaterializeResult(metadata={
            "clusters": _markdown_table(["cluster", "cloud", "region", "declared role", "observed",
                                         "version", "databases"], rows),
            "cluster_count": len(rows),
            "unreachable": ", ".join(c.name for c in observations if c.unreachable) or "none",
        })

    @dg.asset(group_name=GROUP, kinds={"postgres"}, owners=OWNERS, partitions_def=partitions,
              op_tags=k8s_op_tags("databases"),
              deps=[clusters], description="One database of the fleet: size, tables, server.")
    def databases(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        return _materialize(context, fleet, database_metadata)

    @dg.asset(group_name=GROUP, kinds={"postgres", "zstd"}, owners=OWNERS, partitions_def=partitions,
              op_tags=k8s_op_tags("backups"),
              deps=[databases],
              description="A logical backup (pg_dump, zstd, SHA-256) written to every required store at once.")
    def backups(context: dg.AssetExecutionContext, fleet: FleetResource,
                metrics: MetricsResource) -> dg.MaterializeResult:
        result = _materialize(context, fleet, backup_metadata)
        metadata = result.metadata or {}
        metrics.push(context.log, database=context.partition_key, step="backup",
                     duration_seconds=metadata["seconds"].value, stored_bytes=metadata["stored_bytes"].value)
        return result

    @dg.asset(group_name=GROUP, kinds={"s3", "azure", "gcs"}, owners=OWNERS, partitions_def=partitions,
              op_tags=k8s_op_tags("backup_copies"),
              deps=[backups],
              description="A verified copy of the latest backup in every store the policy requires; "
                          "missing copies are made from a verified one.")
    def backup_copies(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        return _materialize(context, fleet, copies_metadata)

    @dg.asset(group_name=GROUP, kinds={"postgres"}, owners=OWNERS, partitions_def=partitions,
              op_tags=k8s_op_tags("restore_drills"),
              deps=[backup_copies],
              description="A restore drill: the latest backup from one store (rotating across clouds) "
                          "restored into a throwaway cluster, row counts checked, RTO and RPO measured.")
    def restore_drills(context: dg.AssetExecutionContext, fleet: FleetResource, metrics: MetricsResource,
                       config: DrillConfig) -> dg.MaterializeResult:
        result = _materialize(context, fleet, lambda protection, name, log: drill_metadata(
            protection, name, log, source_store=config.source_store or None))
        metrics.push(context.log, database=context.partition_key, step="drill",
                     duration_seconds=(result.metadata or {})["rto_seconds"].value)  # a failed drill raised
        return result

    @dg.asset(group_name=GROUP, kinds={"s3", "azure", "gcs"}, owners=OWNERS, partitions_def=partitions,
              op_tags=k8s_op_tags("retention"),
              deps=[backup_copies],
              description="The retention policy applied in every store of the policy: backups it no "
                          "longer keeps deleted (manifest first), the newest always kept, locked "
                          "(immutable) objects reported and kept, orphan dumps and leftovers of killed "
                          "writes swept, drill records past the policy's drill retention deleted, and "
                          "the servers and work directories of killed drills and restores on the "
                          "worker removed.")
    def retention(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        return _materialize(context, fleet, retention_metadata)

    # Dagster's freshness machinery fits here (one unpartitioned asset, refreshed hourly); the
    # per-database RPO is judged from the stores by the notice_stale_backups sensor (sensors/remedies.py).
    @dg.asset(group_name=GROUP, kinds={"json", "html"}, owners=OWNERS, deps=[restore_drills],
              op_tags=k8s_op_tags("compliance_report"),
              freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2),
                                                              warn_window=timedelta(minutes=90)),
              description="Compliance evidence for the whole fleet: per database, RPO, copies, drills, "
                          "and every backup tied to the drills that restored it; and the recoverability "
                          "report (HTML + JSON) people read. Written to every store.")
    def compliance_report(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            evidence = protection.record_compliance()
            report = protection.record_report(evidence, run_id=context.run.run_id)
        for store, reason in {**evidence.failed_stores, **report.failed_stores}.items():
            context.log.warning(f"compliance evidence {evidence.evidence_id}: not written to {store}: {reason}")
        links = {"report": dg.MetadataValue.url(report.locations[0])} if report.locations else {}
        return dg.MaterializeResult(metadata={
            **links,
            "report_html_key": report.html_key,
            "report_json_key": report.json_key,
            "report_stores": ", ".join(report.stored_in),
            "compliant_databases": dg.MetadataValue.int(evidence.compliant),
            "non_compliant_databases": dg.MetadataValue.int(len(evidence.assessments) - evidence.compliant),
            "evidence_key": evidence.key,
            "evidence_stores": ", ".join(evidence.stored_in),
            "evidence_failed_stores": ", ".join(evidence.failed_stores) or "none",
            "unreadable": describe_all([u for a in evidence.assessments for u in a.unreadable], limit=20)
                          or "none",
            "summary": compliance_table(list(evidence.assessments)),
        })

    return [clusters, databases, backups, backup_copies, restore_drills, retention, compliance_report]
