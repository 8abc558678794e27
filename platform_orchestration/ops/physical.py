"""The point-in-time restore as a Launchpad job: the same FleetProtection.restore_pitr the
CLI's ``platform-dr restore-pitr`` runs, with the same refusals in the same words (a target
directory in use, a listening port, a bad ``to``), and RTO in the step's metadata. The new
cluster is left running on the run worker's host, as the CLI leaves it."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.physical.pitr import RecoveryTarget
from platform_orchestration.resources import FleetResource


class RestorePitrConfig(dg.Config):
    """Launchpad form of ``platform-dr restore-pitr CLUSTER --to ... --target-dir ... [--store] [--port]``."""

    cluster: str = Field(description="physical cluster of the fleet whose repository to restore from")
    to: str = Field(default="latest", description="an ISO time with its zone (2026-12-01T19:36:56Z), an LSN "
                                                  "(0/3000060) or latest")
    store: str = Field(default="", description="store holding the repository (default: the cluster's repository store)")
    target_dir: str = Field(description="a new or empty directory for the new cluster, on the run worker's host")
    port: int = Field(default=0, description="port for the new cluster (0: a free one)")


@dg.op(description="Bring up a NEW cluster at a point in time (time, LSN or latest) from a cluster's physical "
                   "repository; never over an existing directory or a listening port; verifies the point reached "
                   "and reports RTO.",
       tags={"kind": "postgres", **k8s_op_tags("restore_to_point_in_time")})
def restore_to_point_in_time(context: dg.OpExecutionContext, config: RestorePitrConfig,
                             fleet: FleetResource) -> dg.Output[dict]:
    try:
        target = RecoveryTarget.parse(config.to)
    except PlatformError as exc:
        raise dg.Failure(description=one_line(exc)) from None
    with fleet.protection() as protection:
        result = protection.restore_pitr(config.cluster, target, Path(config.target_dir), port=config.port or None,
                                         store_name=config.store or None)
    context.log.info(f"restored cluster {result.cluster} to {result.target} from base backup {result.backup_id}: "
                     f"replayed to LSN {result.reached_lsn}; RTO {result.rto_seconds:.1f}s; running on "
                     f"127.0.0.1:{result.port}, data in {result.data_dir}")
    summary = {"cluster": result.cluster, "repository": result.repository, "backup_id": result.backup_id,
               "target": result.target, "reached_lsn": result.reached_lsn,
               "last_replayed_commit": str(result.last_replayed_commit or "none"),
               "stopped_at": result.stopped_at or "none", "server_version": result.server_version,
               "port": result.port, "data_dir": str(result.data_dir),
               "rto_seconds": round(result.rto_seconds, 2), "restore_seconds": round(result.restore_seconds, 2),
               "recovery_seconds": round(result.recovery_seconds, 2)}
    metadata = {k: dg.MetadataValue.float(v) if k.endswith("_seconds") else v for k, v in summary.items()}
    return dg.Output(summary, metadata=metadata)


def build_restore_pitr_job(name: str, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags={"kind": "disaster-recovery"})
    def _job() -> None:
        restore_to_point_in_time()

    return _job
