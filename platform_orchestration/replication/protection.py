"""The replication part of :class:`~platform_orchestration.protection.FleetProtection`: fleet entries
and secrets turned into :class:`StandbyTarget` values for the functions of this package.

A mixin, so that FleetProtection stays the one API the CLI and Dagster share while this code
lives beside the rest of replication (FleetProtection inherits it; nothing here is used alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

# Imported where used, as in protection.py: a command that does not touch standbys loads none of this
# package (nor psycopg through it).
from platform_orchestration.backups.catalog import Recorded
from platform_orchestration.errors import InvalidDeclaration
from platform_orchestration.fleet.model import Cluster, Policy
from platform_orchestration.postgres.connection import PgConnection, conninfo_to_dict, make_conninfo
from platform_orchestration.storage import ObjectStore

if TYPE_CHECKING:
    from platform_orchestration.protection import FleetProtection
    from platform_orchestration.replication.compliance import StandbyCompliance
    from platform_orchestration.replication.drill import FailoverDrillRecord
    from platform_orchestration.replication.promotion import PromotionResult, RepointResult
    from platform_orchestration.replication.seed import ArchiveFallback, SeedResult
    from platform_orchestration.replication.status import ReplicationStatus
    from platform_orchestration.replication.target import ReplicationObjectives, StandbyTarget


class ReplicationProtection:
    """Standby clusters: seed, observe, drill, assess, promote, re-point (methods of FleetProtection)."""

    def _standby(self: FleetProtection, name: str) -> tuple[Cluster, Cluster, Policy]:
        spec = self.fleet.cluster(name)
        if spec.standby is None or spec.replicates is None:
            raise InvalidDeclaration(f"cluster {name} is not a standby in {self.fleet.source} "
                                     "(role: standby, replicates: PRIMARY, standby: {...})")
        return spec, self.fleet.cluster(spec.replicates), self.fleet.policy(spec.standby.policy)

    def replication_objectives(self: FleetProtection, name: str) -> ReplicationObjectives:
        from platform_orchestration.replication.target import ReplicationObjectives

        _spec, _primary, policy = self._standby(name)
        replication = policy.replication
        if replication is None:
            raise InvalidDeclaration(f"policy {policy.name} has no replication section")
        every = replication.drill_every or policy.drill.every
        return ReplicationObjectives(
            max_lag_bytes=replication.max_lag_bytes, max_lag_seconds=replication.max_lag.total_seconds(),
            failover_rto_seconds=replication.failover_rto.total_seconds(),
            max_slot_wal_bytes=replication.max_slot_wal, drill_every_seconds=every.total_seconds())

    def standby_target(self: FleetProtection, name: str) -> StandbyTarget:
        """The standby ``name`` and its primary, every login's secret resolved (never log them)."""
        from platform_orchestration.replication.target import StandbyTarget

        spec, primary, _policy = self._standby(name)
        standby = spec.standby
        assert standby is not None
        if standby.primary_dsn is not None:
            primary_login = PgConnection.from_dsn(
                standby.primary_dsn, self.secrets.resolve(standby.primary_password) if standby.primary_password else None)
        elif primary.physical is not None:
            primary_login = self.physical_connection(primary.name)
        else:  # the fleet's validation refuses this; a Fleet built in code may not have been checked
            raise InvalidDeclaration(f"standby {name}: no primary_dsn and {primary.name} has no physical dsn")
        return StandbyTarget(
            name=spec.name, primary_name=primary.name, slot=spec.replication_slot or spec.name.replace("-", "_"),
            standby=PgConnection.from_dsn(standby.dsn, self.secrets.resolve(standby.password) if standby.password else None),
            primary=primary_login, stream_dsn=standby.primary_conninfo,
            stream_password=self.secrets.resolve(standby.replication_password) if standby.replication_password else None,
            directory=standby.directory, objectives=self.replication_objectives(name))

    def archive_fallback(self: FleetProtection, name: str) -> ArchiveFallback | None:
        """The primary's physical repository as the standby reads it (its restore_command, and a
        repository seed); None when the primary has none. A standby reads in its own cloud: the
        repository when it is there, else the repository's copy in a store of the primary's
        policy in the standby's cloud (as a CloudNativePG replica cluster bootstraps from its own
        cloud's object store), else, with no copy there, the repository across clouds."""
        from platform_orchestration.physical.tools import barman_tools
        from platform_orchestration.replication.seed import ArchiveFallback

        spec, primary, _policy = self._standby(name)
        if primary.physical is None:
            return None
        repository = self.physical_repository(primary.name)
        if self.fleet.store(primary.physical.store).cloud != spec.cloud:
            targets, _local = self.physical_copy_targets(primary.name)
            own_cloud = [store for store in targets if self.fleet.store(store).cloud == spec.cloud]
            if own_cloud:
                repository = self.physical_store_repository(primary.name, own_cloud[0])
        return ArchiveFallback(barman_tools(), repository)

    def seed_standby(self: FleetProtection, name: str, *, method: Literal["auto", "basebackup", "repository"] | None = None,
                     directory: Path | None = None) -> SeedResult:
        """Seed the standby ``name`` on this host into ``directory`` (default: its ``standby.directory``)
        and start it streaming. ``auto``: from the repository when the primary has one."""
        from platform_orchestration.kube.pod_storage import refuse_unless_kept
        from platform_orchestration.replication.seed import seed_by_basebackup, seed_from_repository

        spec, _primary, _policy = self._standby(name)
        target = self.standby_target(name)
        where = directory or target.directory
        if where is None:
            raise InvalidDeclaration(f"standby {name}: no directory to seed into (standby.directory in the fleet "
                                     "file, or --directory)")
        refuse_unless_kept(Path(where), f"seeding standby {name}", "standby_clusters")
        chosen = method or spec.standby.seed  # type: ignore[union-attr]
        fallback = self.archive_fallback(name)
        if chosen == "repository" or (chosen == "auto" and fallback is not None):
            if fallback is None:
                raise InvalidDeclaration(f"standby {name}: its primary has no physical repository to seed from")
            return seed_from_repository(target, Path(where), fallback)
        return seed_by_basebackup(target, Path(where), fallback=fallback)

    def replication_status(self: FleetProtection, name: str) -> ReplicationStatus:
        from platform_orchestration.replication.status import observe_replication

        return observe_replication(self.standby_target(name))

    def _replication_record_stores(self: FleetProtection, name: str) -> list[ObjectStore]:
        _spec, _primary, policy = self._standby(name)
        return [self.store(store) for store in policy.stores]

    def failover_drill(self: FleetProtection, name: str) -> FailoverDrillRecord:
        """One failover drill of the standby ``name`` on a throwaway copy, recorded in its policy's stores."""
        from platform_orchestration.replication.drill import run_failover_drill

        return run_failover_drill(self.standby_target(name), record_stores=self._replication_record_stores(name),
                                  clock=self.clock, workdir=self.workdir)

    def failover_drills(self: FleetProtection, name: str) -> tuple[list[FailoverDrillRecord], list[str]]:
        from platform_orchestration.replication.drill import failover_drill_history

        return failover_drill_history(self._replication_record_stores(name), name)

    def assess_standby(self: FleetProtection, name: str, now: datetime | None = None) -> StandbyCompliance:
        """The standby's four findings (replication/compliance.py)."""
        from platform_orchestration.replication.compliance import assess_standby

        spec, primary, policy = self._standby(name)
        drills, unreadable = self.failover_drills(name)
        return assess_standby(standby=name, primary=primary.name, policy=policy.name,
                              objectives=self.replication_objectives(name), status=self.replication_status(name),
                              drills=drills, now=now or self.clock(), unreadable=unreadable)

    def record_replication_compliance(self: FleetProtection,
                                      assessments: Sequence[StandbyCompliance] | None = None) -> Recorded:
        """Every standby's findings as evidence in every store of their policies."""
        from platform_orchestration.replication.compliance import record_replication_compliance

        now = self.clock()
        names = [c.name for c in self.fleet.standby_clusters()]
        if assessments is None:
            assessments = [self.assess_standby(name, now) for name in names]
        stores = list(dict.fromkeys(s for name in names for s in self._replication_record_stores(name)))
        if not stores:
            stores = self.all_stores()
        return record_replication_compliance(assessments, stores, now=now, fleet_file=str(self.fleet.source))

    def promote_standby(self: FleetProtection, name: str, *, confirm: str) -> PromotionResult:
        """Promote the standby ``name`` (``confirm`` must be its name; refused while its primary takes writes)."""
        from platform_orchestration.replication.promotion import promote

        return promote(self.standby_target(name), confirm=confirm)

    def repoint_old_primary(self: FleetProtection, name: str, old_primary_dir: Path, *, port: int | None = None,
                            method: Literal["auto", "rewind", "reseed"] = "auto") -> RepointResult:
        """After ``name`` was promoted: make its old primary (stopped, its data in ``old_primary_dir`` on
        this host) a standby of it, streaming with the same replication login."""
        from platform_orchestration.replication.promotion import repoint

        target = self.standby_target(name)
        standby_parts = conninfo_to_dict(target.standby.dsn)
        stream = make_conninfo(target.stream_dsn, host=standby_parts.get("host", "127.0.0.1"),
                               port=standby_parts.get("port", "5432"))
        old_port = port or int(conninfo_to_dict(target.primary.dsn).get("port") or 5432)
        return repoint(old_primary_dir=old_primary_dir, old_primary_name=target.primary_name,
                       new_primary_name=name, new_primary=target.standby, stream_dsn=stream,
                       stream_password=target.stream_password, port=old_port, method=method)
