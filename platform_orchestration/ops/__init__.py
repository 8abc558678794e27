"""Op jobs: operator actions that are not assets (a disaster-recovery restore)."""

import os

import dagster as dg
from pydantic import Field

from platform_orchestration.errors import PlatformError
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.protection import restore_target
from platform_orchestration.resources import FleetResource


class DisasterRestoreConfig(dg.Config):
    """Launchpad form of a disaster-recovery restore."""

    database: str = Field(description="database of the fleet whose backup to restore")
    backup_id: str = "latest"
    source_store: str = ""
    target_dsn: str = ""
    target_password_env: str = ""
    replace: bool = False
    jobs: int = 2
    # A group role to own what is restored, so a short-lived (Vault-issued) login owns nothing.
    restore_as: str = ""
    # Create the backup's roles, memberships and role settings on the target server first.
    with_globals: bool = False


def _target_connection(config: DisasterRestoreConfig) -> PgConnection:
    """The target as the core's one rule allows it (no password in the DSN), its password
    read from the environment variable the config names."""
    password = None
    if config.target_password_env:
        password = os.environ.get(config.target_password_env)
        if password is None:
            raise dg.Failure(description=f"target_password_env: environment variable "
                                         f"{config.target_password_env} is not set on the run worker")
    try:
        return restore_target(config.target_dsn, password)
    except PlatformError as exc:
        raise dg.Failure(description=f"target_dsn: {exc}") from None


@dg.op(description="Restore a backup (latest by default) from a store into a target database, "
                   "refusing a non-empty target unless replace is set; verifies row counts.",
       tags={"kind": "postgres", **k8s_op_tags("restore_from_backup")})
def restore_from_backup(context: dg.OpExecutionContext, config: DisasterRestoreConfig,
                     fleet: FleetResource) -> dg.Output[dict]:
    target = _target_connection(config)
    backup_id = None if config.backup_id in ("", "latest") else config.backup_id
    # An operator-facing error fails the step with its one line (FleetResource.protection).
    with fleet.protection() as protection:
        result = protection.restore(config.database, target, backup_id=backup_id,
                                    store_name=config.source_store or None, replace=config.replace,
                                    jobs=config.jobs, restore_as=config.restore_as or None,
                                    with_globals=config.with_globals)
    context.log.info(f"restored backup {result.backup_id} of {result.database} from {result.store} into "
                     f"{result.target} in {result.recovery_seconds:.1f}s")
    for broken in result.passed_over:
        context.log.warning(f"restore of {result.database}: passed over newer {broken}")
    summary = {"backup_id": result.backup_id, "store": result.store, "target": result.target,
               "recovery_seconds": round(result.recovery_seconds, 2),
               "tables_verified": result.tables_verified, "rows_verified": result.rows_verified,
               "passed_over": "; ".join(result.passed_over) or "none",
               "globals": result.globals.summary() if result.globals is not None else "not applied"}
    return dg.Output(summary, metadata={k: str(v) if isinstance(v, str) else v for k, v in summary.items()})


def build_disaster_restore_job(name: str, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags={"kind": "disaster-recovery"})
    def _job() -> None:
        restore_from_backup()

    return _job


@dg.op(description="Rewrap every backup's data key under the newest version of the key-encryption "
                   "key (after a rotation), in every store, without touching the backup data.",
       tags={"kind": "vault", **k8s_op_tags("rewrap_data_keys")})
def rewrap_data_keys(context: dg.OpExecutionContext, fleet: FleetResource) -> dg.Output[dict]:
    with fleet.protection() as protection:
        report = protection.rewrap_all()
    context.log.info(report.summary())
    counts = {outcome: len(report.with_outcome(outcome))
              for outcome in ("rewrapped", "current", "unencrypted", "failed")}
    if not report.ok:
        failed = "; ".join(f"{e.store} {e.backup_id}: {e.error}" for e in report.with_outcome("failed"))
        raise dg.Failure(description=f"rewrap left {counts['failed']} manifest(s) unchanged: {failed}",
                         metadata=counts)
    return dg.Output(counts, metadata={"key_service": report.key_service, **counts})


def build_rewrap_keys_job(name: str, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags={"kind": "key-rotation"})
    def _job() -> None:
        rewrap_data_keys()

    return _job
