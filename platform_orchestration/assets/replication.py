"""Standby clusters as assets, one partition per standby: primary cluster -> standby -> replication
lag -> failover drill -> replication compliance. Thin: FleetProtection does the work, these
only report it; the checks (checks/replication.py) judge it against the policy."""

import dagster as dg
from pydantic import Field

from platform_orchestration.assets import GROUP, OWNERS
from platform_orchestration.fleet.sizes import format_size
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.resources import FleetResource

TAGS = {"platform/protection": "replication"}


class StandbySeedConfig(dg.Config):
    """Seeding is an explicit act: without ``seed`` the asset only observes the standby."""

    seed: bool = Field(default=False, description="seed the standby on the run's host (its data directory must be empty)")
    method: str = Field(default="", description="auto, basebackup or repository (default: the fleet's standby.seed)")
    directory: str = Field(default="", description="where the server goes (default: the fleet's standby.directory)")


def standby_partitions(standby_names: list[str]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(standby_names)


def build_replication_assets(partitions: dg.StaticPartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=GROUP, kinds={"postgres"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("standby_clusters"), partitions_def=partitions,
              deps=["clusters"],
              description="A standby cluster in another cloud: observed (in recovery, version, replay point); "
                          "with config seed: true, seeded from its primary first (pg_basebackup with a slot, or "
                          "the primary's physical repository) and started streaming.")
    def standby_clusters(context: dg.AssetExecutionContext, config: StandbySeedConfig,
                         fleet: FleetResource) -> dg.MaterializeResult:
        name = context.partition_key
        metadata: dict = {}
        with fleet.protection() as protection:
            spec = protection.fleet.cluster(name)
            if config.seed:
                result = protection.seed_standby(name, method=config.method or None,  # type: ignore[arg-type]
                                                 directory=config.directory or None)  # type: ignore[arg-type]
                metadata.update(seeded_by=result.method, seed_seconds=dg.MetadataValue.float(round(result.seconds, 2)),
                                backup_id=result.backup_id or "none", data_dir=str(result.data_dir),
                                archive_fallback=result.archive_fallback)
            status = protection.replication_status(name)
        metadata.update(primary=spec.replicates or "", cloud=spec.cloud, region=spec.region, slot=status.slot,
                        in_recovery=str(status.in_recovery), server_version=status.standby_version or "unreachable",
                        replayed_lsn=status.standby_replay_lsn or "none",
                        unreachable=status.standby_unreachable or "no")
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(group_name=GROUP, kinds={"postgres"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("replication_lag"), partitions_def=partitions,
              deps=[standby_clusters],
              description="Replication of one standby seen from both sides: pg_stat_replication and the slot on "
                          "the primary, replay LSN and last replayed commit on the standby; lag in bytes and "
                          "seconds, state, WAL kept by the slot.")
    def replication_lag(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        name = context.partition_key
        with fleet.protection() as protection:
            status = protection.replication_status(name)
            problems = status.problems(protection.replication_objectives(name))
        for found in problems.values():
            for problem in found:
                context.log.warning(f"{name}: {problem}")
        return dg.MaterializeResult(metadata={
            "primary": status.primary, "state": status.state, "receiver_status": status.receiver_status or "none",
            "lag_bytes": dg.MetadataValue.int(status.lag_bytes if status.lag_bytes is not None else -1),
            "lag_seconds": dg.MetadataValue.float(round(status.lag_seconds, 3) if status.lag_seconds is not None else -1.0),
            "slot": status.slot, "slot_active": status.slot_active,
            "slot_kept_bytes": dg.MetadataValue.int(status.slot_kept_bytes if status.slot_kept_bytes is not None else -1),
            "slot_kept": format_size(status.slot_kept_bytes) if status.slot_kept_bytes is not None else "unknown",
            "primary_lsn": status.primary_lsn or "none", "standby_replay_lsn": status.standby_replay_lsn or "none",
            "problems": "; ".join(p for found in problems.values() for p in found) or "none",
        })

    @dg.asset(group_name=GROUP, kinds={"postgres"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("failover_drills"), partitions_def=partitions,
              deps=[replication_lag],
              description="A failover drill: a marker on the primary, a throwaway copy of the standby promoted, "
                          "marker checked on it; RTO (promote to first accepted write) and RPO recorded in every "
                          "store of the policy. Production is not touched.")
    def failover_drills(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            record = protection.failover_drill(context.partition_key)
        metadata = {
            "drill_id": record.drill_id, "primary": record.primary, "passed": record.passed,
            "marker_lsn": record.marker_lsn or "none", "marker_on_copy": str(record.marker_on_copy),
            "rto_seconds": dg.MetadataValue.float(round(record.rto_seconds or 0.0, 3)),
            "rto_target_seconds": dg.MetadataValue.float(record.rto_target_seconds),
            "rpo_seconds": dg.MetadataValue.float(round(record.rpo_seconds or 0.0, 3)),
            "rpo_target_seconds": dg.MetadataValue.float(record.rpo_target_seconds),
            "copy_seconds": dg.MetadataValue.float(round(record.copy_seconds or 0.0, 2)),
        }
        if not record.passed:
            raise dg.Failure(description=f"failover drill {record.drill_id} of {context.partition_key} failed: "
                                         f"{record.failure}", metadata=metadata)
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(group_name=GROUP, kinds={"json"}, owners=OWNERS, tags=TAGS,
              op_tags=k8s_op_tags("replication_compliance"), deps=[failover_drills],
              description="Every standby's four findings (lag, streaming, slot, failover drill within cadence) "
                          "written as evidence/replication/ID.json into the stores of their policies.")
    def replication_compliance(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.MaterializeResult:
        with fleet.protection() as protection:
            names = [c.name for c in protection.fleet.standby_clusters()]
            assessments = [protection.assess_standby(name) for name in names]
            recorded = protection.record_replication_compliance(assessments)
        rows = ["| standby | compliant | findings |", "|---|---|---|"]
        rows += [f"| {a.standby} | {'yes' if a.passed else '**no**'} | "
                 + "; ".join(f"{f.check}: {'ok' if f.passed else 'FAIL'}" for f in a.findings) + " |" for a in assessments]
        return dg.MaterializeResult(metadata={
            "evidence_key": recorded.key, "written_to": ", ".join(recorded.stored_in),
            "compliant": dg.MetadataValue.int(sum(a.passed for a in assessments)),
            "not_compliant": dg.MetadataValue.int(sum(not a.passed for a in assessments)),
            "standbys": dg.MetadataValue.md("\n".join(rows))})

    return [standby_clusters, replication_lag, failover_drills, replication_compliance]
