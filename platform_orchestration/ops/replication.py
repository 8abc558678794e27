"""The runbook's promotion as an operator job: promote a standby (guarded by a confirmation that
must be its name), then optionally re-point the old primary as its standby."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.resources import FleetResource


class PromoteStandbyConfig(dg.Config):
    """Launchpad form of a real failover. Nothing happens unless ``confirm`` is the standby's name."""

    cluster: str = Field(description="the standby to promote (role: standby in the fleet file)")
    confirm: str = Field(default="", description="type the standby's name again to confirm the promotion")
    repoint_old_primary_dir: str = Field(
        default="", description="the old primary's directory (DIR/data) on the run's host: re-point it as a standby "
                                "of the new primary (pg_rewind where it applies, a re-seed otherwise); empty: skip")
    repoint_method: str = Field(default="auto", description="auto, rewind or reseed")
    old_primary_port: int = Field(default=0, description="port for the re-pointed old primary (0: its DSN's)")


@dg.op(description="Promote a standby to primary: refused unless confirm is its name, and while its primary "
                   "still accepts writes; then re-point the old primary if asked.",
       tags={"kind": "postgres", **k8s_op_tags("promote_standby")})
def promote_standby_op(context: dg.OpExecutionContext, config: PromoteStandbyConfig,
                       fleet: FleetResource) -> dg.Output[dict]:
    if config.repoint_method not in ("auto", "rewind", "reseed"):
        raise dg.Failure(description=f"repoint_method: expected auto, rewind or reseed, got {config.repoint_method!r}")
    with fleet.protection() as protection:
        result = protection.promote_standby(config.cluster, confirm=config.confirm)
        summary: dict = {"standby": result.standby, "timeline": result.timeline,
                         "rto_seconds": round(result.rto_seconds, 3), "replayed_lsn": result.replayed_lsn,
                         "repointed": "no"}
        context.log.info(f"promoted {result.standby} (timeline {result.timeline}); edit the fleet file: it is the primary")
        if config.repoint_old_primary_dir:
            repointed = protection.repoint_old_primary(config.cluster, Path(config.repoint_old_primary_dir),
                                                       port=config.old_primary_port or None,
                                                       method=config.repoint_method)  # type: ignore[arg-type]
            summary["repointed"] = f"{repointed.cluster} by {repointed.method} ({repointed.reason})"
    return dg.Output(summary, metadata={k: str(v) for k, v in summary.items()})


def build_promote_standby_job(name: str, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags={"kind": "failover"})
    def _job() -> None:
        promote_standby_op()

    return _job
